//! Cluster presence in Redis: every change is one call of the `switchboard_presence` function
//! library (presence.lua), so it is atomic. Entries belong to their node, whose heartbeat keeps
//! them alive; a surviving node reaps a node whose heartbeat expired, a chunk at a time.
//!
//! The node also keeps its own connections in memory. That record is the truth for them: it
//! registers them again when Redis lost them (a restart without persistence, a reap of a live
//! node), and subscriptions are released from it, never from what Redis reports.

mod upkeep;
mod values;

use super::{
    Change, CirclePage, Claim, ClusterStats, ConnectionEntry, ConversationPage, Disconnected, Lingered, NodeStats,
    Presence, PresenceError, ReapChunk, RosterEntry, UserPage, UserPresence,
};
use crate::metrics::METRICS;
use crate::redis::{COMMAND_TIMEOUT, Redis};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use fred::prelude::*;
use fred::types::Value;
use shared::{ConnId, ConversationId, NodeId, Status, UserId};
use std::collections::HashMap;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use values::{int, items, status, string, strings, time_ms};

const LIBRARY: &str = include_str!("presence.lua");

/// Presence shared by every node through Redis.
pub struct RedisPresence {
    redis: Redis,
    node_id: NodeId,
    ttl: Duration,
    started_at: DateTime<Utc>,
    /// Tells this process apart from an earlier one with the same node id, whose connections
    /// must be reaped rather than adopted.
    incarnation: String,
    local: Mutex<Local>,
    /// Set once the node left the cluster: the heartbeat must not register it again.
    departed: AtomicBool,
    /// How long a departed user may stay unsettled before any node's sweeper settles them.
    linger_ms: AtomicU64,
    /// Full registrations since start.
    registrations: AtomicU64,
}

/// This node's own connections, to register again when Redis lost them.
#[derive(Default)]
struct Local {
    conns: HashMap<ConnId, LocalConn>,
    statuses: HashMap<UserId, Status>,
    /// Disconnects Redis did not take (or connects it may take late); retried every heartbeat.
    pending_drops: Vec<ConnId>,
    /// Joins that failed but may still be applied late: left again unless joined since.
    pending_leaves: Vec<(ConnId, ConversationId)>,
}

struct LocalConn {
    user: UserId,
    circles: Vec<String>,
    /// Conversation → when this connection joined it (ms), so that registering again keeps the
    /// roster's `since`. A vector: a connection joins a few (a map's table cost more).
    joined: Vec<(ConversationId, i64)>,
}

fn unavailable(e: impl std::fmt::Display) -> PresenceError {
    PresenceError::Unavailable(e.to_string())
}

/// Long enough that the domain's own settle after the grace always comes first.
fn linger_ms(grace: Duration, ttl: Duration) -> u64 {
    (grace + ttl).as_millis().try_into().unwrap_or(u64::MAX)
}

impl RedisPresence {
    /// Loads the function library and registers this node, setting aside for reaping whatever
    /// a previous process with the same node id left behind.
    pub async fn start(redis: Redis, node_id: NodeId, ttl: Duration) -> Result<Self, PresenceError> {
        let presence = Self {
            redis,
            node_id,
            ttl,
            started_at: Utc::now(),
            incarnation: uuid::Uuid::new_v4().simple().to_string(),
            local: Mutex::new(Local::default()),
            departed: AtomicBool::new(false),
            linger_ms: AtomicU64::new(linger_ms(Duration::from_secs(3), ttl)),
            registrations: AtomicU64::new(0),
        };
        presence.load().await?;
        let started = presence.started_at.to_rfc3339();
        let ttl_ms = presence.ttl_ms();
        let args = [presence.node_id.as_str(), &presence.incarnation, &ttl_ms, &started];
        let previous = int(&presence.call("sb_start", &args).await?);
        if previous > 0 {
            tracing::warn!(
                connections = previous,
                "a previous process with this node id left connections; they are reaped"
            );
        }
        Ok(presence)
    }

    fn ttl_ms(&self) -> String {
        self.ttl.as_millis().to_string()
    }

    fn local(&self) -> MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn load(&self) -> Result<(), PresenceError> {
        let loaded = tokio::time::timeout(
            COMMAND_TIMEOUT,
            self.redis.client.function_load::<Value, _>(true, LIBRARY),
        )
        .await;
        match loaded {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(unavailable(format!("cannot load presence functions: {e}"))),
            Err(_) => Err(unavailable("loading presence functions timed out")),
        }
    }

    /// Calls a library function with the key prefix as first argument; loads the library again
    /// when Redis lost it (a restart) and retries once.
    async fn call(&self, function: &str, args: &[&str]) -> Result<Value, PresenceError> {
        let mut argv: Vec<&str> = Vec::with_capacity(args.len() + 1);
        argv.push(&self.redis.prefix);
        argv.extend_from_slice(args);
        let seconds = METRICS.redis_duration.with_label_values(&[function]);
        for attempt in 0..2 {
            let started = std::time::Instant::now();
            let called = tokio::time::timeout(
                COMMAND_TIMEOUT,
                self.redis
                    .client
                    .fcall::<Value, _, _, _>(function, Vec::<String>::new(), argv.clone()),
            )
            .await;
            seconds.observe(started.elapsed().as_secs_f64());
            match called {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if attempt == 0 && e.details().contains("Function not found") => self.load().await?,
                Ok(Err(e)) => return Err(unavailable(e)),
                Err(_) => return Err(unavailable(format!("{function} timed out"))),
            }
        }
        Err(unavailable(format!("{function} failed")))
    }

    /// `sb_join`, answering the change and whether Redis knew the connection. A failed call
    /// may still be applied later: the next heartbeat leaves again unless joined since.
    async fn call_join(
        &self,
        conn: &ConnId,
        conversation: &ConversationId,
        args: &[&str],
    ) -> Result<(Change, bool), PresenceError> {
        match self.call("sb_join", args).await {
            Ok(v) => {
                let known = items(v.clone()).get(3).map(int) != Some(0);
                Ok((Self::parse_change(v), known))
            }
            Err(e) => {
                self.local().pending_leaves.push((conn.clone(), conversation.clone()));
                Err(e)
            }
        }
    }

    fn parse_change(v: Value) -> Change {
        let v = items(v);
        Change {
            connection: v.first().map(int) == Some(1),
            user: v.get(1).map(int) == Some(1),
            status: v.get(2).map(status).unwrap_or_default(),
        }
    }
}

#[async_trait]
impl Presence for RedisPresence {
    async fn connect(&self, entry: ConnectionEntry) -> Result<bool, PresenceError> {
        let mut args: Vec<&str> = vec![&self.node_id.0, &entry.conn.0, &entry.user.0];
        args.extend(entry.circles.iter().map(String::as_str));
        let arrived = match self.call("sb_connect", &args).await {
            Ok(arrived) => int(&arrived) == 1,
            Err(e) => {
                // A call that timed out may still run later: undo it on the next heartbeat
                // (a disconnect of an unknown connection changes nothing), or a ghost stays.
                self.local().pending_drops.push(entry.conn);
                return Err(e);
            }
        };
        self.local().conns.insert(
            entry.conn,
            LocalConn {
                user: entry.user,
                circles: entry.circles,
                joined: Vec::new(),
            },
        );
        Ok(arrived)
    }

    async fn disconnect(&self, conn: &ConnId) -> Result<Option<Disconnected>, PresenceError> {
        let (user, joined, local_status) = {
            let mut local = self.local();
            let Some(gone) = local.conns.remove(conn) else {
                return Ok(None);
            };
            let local_status = local.statuses.get(&gone.user).copied().unwrap_or_default();
            if !local.conns.values().any(|c| c.user == gone.user) {
                local.statuses.remove(&gone.user);
            }
            (gone.user, gone.joined, local_status)
        };
        // The node's own record says what it subscribed to: that is what is released, whatever
        // Redis answers (it may have lost the connection, or applied a timed-out join late).
        let joined: Vec<ConversationId> = joined.into_iter().map(|(conv, _)| conv).collect();
        let unknown = Disconnected {
            user,
            last_connection: false,
            joined,
            left: Vec::new(),
            was_visible: false,
            // This node's last word on it; another node may have changed it since.
            status: local_status,
        };
        let linger = self.linger_ms.load(SeqCst).to_string();
        let v = match self.call("sb_disconnect", &[&self.node_id.0, &conn.0, &linger]).await {
            Ok(v) => v,
            Err(e) => {
                // Without Redis nobody can tell whether it was the user's last, so nothing is
                // announced; Redis forgets the connection on a later heartbeat.
                tracing::warn!(error = %e, "disconnect queued until Redis answers");
                self.local().pending_drops.push(conn.clone());
                return Ok(Some(unknown));
            }
        };
        let mut v = items(v).into_iter();
        let (Some(_), Some(last), Some(visible), Some(_), Some(left)) =
            (v.next(), v.next(), v.next(), v.next(), v.next())
        else {
            return Ok(Some(unknown));
        };
        Ok(Some(Disconnected {
            last_connection: int(&last) == 1,
            left: strings(left),
            was_visible: int(&visible) == 1,
            status: v.next().map(|s| status(&s)).unwrap_or_default(),
            ..unknown
        }))
    }

    async fn join(
        &self,
        conn: &ConnId,
        conversation: &ConversationId,
        at: DateTime<Utc>,
    ) -> Result<Change, PresenceError> {
        let since = at.timestamp_millis().to_string();
        let args = [self.node_id.as_str(), &conn.0, &conversation.0, &since];
        let mut answer = self.call_join(conn, conversation, &args).await?;
        if !answer.1 && self.local().conns.contains_key(conn) {
            // Redis lost this live connection (a flush before the next heartbeat): register it
            // again from the local record rather than refuse the join.
            self.register_one(conn).await?;
            answer = self.call_join(conn, conversation, &args).await?;
        }
        let change = answer.0;
        if change.connection
            && let Some(c) = self.local().conns.get_mut(conn)
        {
            let since = at.timestamp_millis();
            match c.joined.iter_mut().find(|(conv, _)| conv == conversation) {
                Some((_, at)) => *at = since,
                None => {
                    if c.joined.capacity() == 0 {
                        c.joined.reserve_exact(1);
                    }
                    c.joined.push((conversation.clone(), since));
                }
            }
        }
        Ok(change)
    }

    async fn leave(&self, conn: &ConnId, conversation: &ConversationId) -> Result<Change, PresenceError> {
        let change = Self::parse_change(
            self.call("sb_leave", &[&self.node_id.0, &conn.0, &conversation.0])
                .await?,
        );
        if let Some(c) = self.local().conns.get_mut(conn) {
            c.joined.retain(|(conv, _)| conv != conversation);
        }
        Ok(change)
    }

    async fn set_status(&self, user: &UserId, new: Status) -> Result<Status, PresenceError> {
        let previous = status(&self.call("sb_status", &[&user.0, new.as_str()]).await?);
        let mut local = self.local();
        if local.conns.values().any(|c| &c.user == user) {
            local.statuses.insert(user.clone(), new);
        }
        Ok(previous)
    }

    async fn user(&self, user: &UserId) -> Result<UserPresence, PresenceError> {
        let v = items(self.call("sb_user", &[&user.0]).await?);
        let connections = v.first().map(int).unwrap_or(0) as usize;
        let status = v.get(1).map(string).and_then(|s| s.parse::<Status>().ok());
        let seen = v.get(2).map(int).filter(|ms| *ms > 0).and_then(time_ms);
        let online = connections > 0 && status != Some(Status::Offline);
        Ok(if online {
            UserPresence {
                user_id: user.clone(),
                online,
                status: status.unwrap_or(Status::Online),
                last_seen: None,
                connections,
            }
        } else {
            UserPresence {
                user_id: user.clone(),
                online,
                status: Status::Offline,
                last_seen: seen,
                connections: 0,
            }
        })
    }

    async fn connections(&self, user: &UserId) -> Result<usize, PresenceError> {
        let key = format!("{}:uc:{}", self.redis.prefix, user);
        match tokio::time::timeout(COMMAND_TIMEOUT, self.redis.client.hlen::<i64, _>(key)).await {
            Ok(Ok(n)) => Ok(n.max(0) as usize),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(unavailable("HLEN timed out")),
        }
    }

    async fn settle_offline(&self, user: &UserId) -> Result<Option<Vec<UserId>>, PresenceError> {
        let mut v = items(self.call("sb_settle", &[&user.0]).await?).into_iter();
        match (v.next().map(|w| int(&w)), v.next()) {
            (Some(1), Some(contacts)) => Ok(Some(strings(contacts))),
            _ => Ok(None),
        }
    }

    async fn contacts(&self, user: &UserId) -> Result<Vec<UserId>, PresenceError> {
        Ok(strings(self.call("sb_contacts", &[&user.0]).await?))
    }

    async fn online_users(&self, after: Option<&str>, limit: usize) -> Result<UserPage, PresenceError> {
        let limit = limit.to_string();
        let mut v = items(self.call("sb_online_page", &[after.unwrap_or(""), &limit]).await?).into_iter();
        let users = v.next().map(strings).unwrap_or_default();
        let next = v.next().map(|n| string(&n)).filter(|n| !n.is_empty());
        Ok(UserPage {
            users,
            next_cursor: next,
        })
    }

    async fn active_conversations(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<ConversationPage, PresenceError> {
        let limit = limit.to_string();
        let mut v = items(self.call("sb_rooms_page", &[cursor.unwrap_or("0"), &limit]).await?).into_iter();
        let next = v.next().map(|n| string(&n)).filter(|n| n != "0");
        Ok(ConversationPage {
            conversations: v.next().map(strings).unwrap_or_default(),
            next_cursor: next,
        })
    }

    async fn conversation_online(&self, conversation: &ConversationId) -> Result<Vec<UserId>, PresenceError> {
        Ok(strings(self.call("sb_conversation_online", &[&conversation.0]).await?))
    }

    async fn roster(&self, conversation: &ConversationId) -> Result<Vec<RosterEntry>, PresenceError> {
        let rows = items(self.call("sb_roster", &[&conversation.0]).await?);
        let mut entries: Vec<RosterEntry> = rows
            .into_iter()
            .filter_map(|row| {
                let row = items(row);
                Some(RosterEntry {
                    conn_id: ConnId::from(string(row.first()?)),
                    user_id: UserId::from(string(row.get(1)?)),
                    status: status(row.get(2)?),
                    since: time_ms(int(row.get(3)?))?,
                })
            })
            .collect();
        entries.sort_by(|a, b| (&a.user_id, &a.conn_id).cmp(&(&b.user_id, &b.conn_id)));
        Ok(entries)
    }

    async fn user_roster(&self, user: &UserId) -> Result<Vec<(ConversationId, RosterEntry)>, PresenceError> {
        let mut v = items(self.call("sb_user_roster", &[&user.0]).await?).into_iter();
        let shown = v.next().map(|s| status(&s)).unwrap_or_default();
        let mut entries: Vec<(ConversationId, RosterEntry)> = v
            .next()
            .map(items)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|row| {
                let row = items(row);
                let entry = RosterEntry {
                    conn_id: ConnId::from(string(row.get(1)?)),
                    user_id: user.clone(),
                    status: shown,
                    since: time_ms(int(row.get(2)?))?,
                };
                Some((ConversationId::from(string(row.first()?)), entry))
            })
            .collect();
        entries.sort_by(|(a, x), (b, y)| (a, &x.conn_id).cmp(&(b, &y.conn_id)));
        Ok(entries)
    }

    async fn stats(&self) -> Result<ClusterStats, PresenceError> {
        let mut v = items(self.call("sb_stats", &[]).await?).into_iter();
        let nodes: Vec<NodeStats> = v
            .next()
            .map(items)
            .unwrap_or_default()
            .into_iter()
            .map(|row| {
                let row = items(row);
                let get = |i: usize| row.get(i).map(int).unwrap_or(0).max(0) as usize;
                NodeStats {
                    node_id: NodeId::from(row.first().map(string).unwrap_or_default()),
                    connections: get(1),
                    users: get(2),
                    rooms: get(3),
                    started_at: row
                        .get(4)
                        .map(string)
                        .and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
                        .map(|t| t.with_timezone(&Utc))
                        .unwrap_or(self.started_at),
                }
            })
            .collect();
        let users = v.next().map(|u| int(&u)).unwrap_or(0).max(0) as usize;
        let rooms = v.next().map(|r| int(&r)).unwrap_or(0).max(0) as usize;
        Ok(ClusterStats {
            connections: nodes.iter().map(|n| n.connections).sum(),
            users,
            rooms,
            nodes,
        })
    }

    fn heartbeat_interval(&self) -> Option<Duration> {
        Some(self.ttl / 3)
    }

    fn set_offline_grace(&self, grace: Duration) {
        self.linger_ms.store(linger_ms(grace, self.ttl), SeqCst);
    }

    async fn heartbeat(&self) -> Result<(), PresenceError> {
        self.beat().await
    }

    async fn claim_dead(&self) -> Result<Vec<Claim>, PresenceError> {
        self.claim().await
    }

    async fn reap(&self, claim: &Claim, limit: usize) -> Result<ReapChunk, PresenceError> {
        self.reap_chunk(claim, limit).await
    }

    async fn circle_page(&self, circle: &str, cursor: Option<&str>, limit: usize) -> Result<CirclePage, PresenceError> {
        self.circle(circle, cursor, limit).await
    }

    async fn sweep_lingering(&self, limit: usize) -> Result<Vec<Lingered>, PresenceError> {
        self.sweep(limit).await
    }

    async fn depart(&self) -> Result<Vec<Claim>, PresenceError> {
        self.leave_cluster().await
    }
}

#[cfg(test)]
mod tests;
