//! Cluster presence in Redis: every change is one call of the `switchboard_presence` function
//! library (presence.lua), so it is atomic. Entries belong to their node, whose heartbeat keeps
//! them alive; a surviving node reaps a node whose heartbeat expired.
//!
//! The node also keeps its own connections in memory, so that it can register them again when
//! Redis comes back empty (a restart without persistence) or after it was reaped by mistake.

use super::{
    Change, ClusterStats, ConnectionEntry, Departure, Disconnected, NodeStats, Presence, PresenceError, RosterEntry,
    UserPage, UserPresence,
};
use crate::redis::{COMMAND_TIMEOUT, Redis};
use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use fred::prelude::*;
use fred::types::Value;
use shared::{ConnId, ConversationId, NodeId, Status, UserId};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

const LIBRARY: &str = include_str!("presence.lua");

/// Presence shared by every node through Redis.
pub struct RedisPresence {
    redis: Redis,
    node_id: NodeId,
    ttl: Duration,
    started_at: DateTime<Utc>,
    local: Mutex<Local>,
    /// Set once the node left the cluster: the heartbeat must not register it again.
    departed: std::sync::atomic::AtomicBool,
    /// Set when a heartbeat failed: Redis may have lost this node's entries meanwhile (and a
    /// late heartbeat may have re-added the node alone), so the next heartbeat registers every
    /// local connection again whatever ZADD says.
    suspect: std::sync::atomic::AtomicBool,
}

/// This node's own connections, to register again when Redis lost them.
#[derive(Default)]
struct Local {
    conns: HashMap<ConnId, LocalConn>,
    statuses: HashMap<UserId, Status>,
    /// Disconnects Redis did not take; retried on every heartbeat.
    pending_drops: Vec<ConnId>,
}

/// A local connection, copied out of the lock to register it again.
struct Registration {
    conn: ConnId,
    user: UserId,
    circles: Vec<String>,
    joined: Vec<(ConversationId, i64)>,
}

struct LocalConn {
    user: UserId,
    circles: Vec<String>,
    /// Conversation → when this connection joined it (ms), so that registering again keeps the
    /// roster's `since`.
    joined: HashMap<ConversationId, i64>,
}

fn unavailable(e: impl std::fmt::Display) -> PresenceError {
    PresenceError::Unavailable(e.to_string())
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Integer(i) => *i,
        other => other.as_str().and_then(|s| s.parse().ok()).unwrap_or(0),
    }
}

fn string(v: &Value) -> String {
    v.as_str().map(|s| s.to_string()).unwrap_or_default()
}

fn items(v: Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items,
        _ => Vec::new(),
    }
}

fn strings<T: From<String>>(v: Value) -> Vec<T> {
    items(v).iter().map(|i| T::from(string(i))).collect()
}

fn time_ms(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}

/// A status as Redis answers it; `online` for anything else (no field means `online`).
fn status(v: &Value) -> Status {
    v.as_str().and_then(|s| s.parse().ok()).unwrap_or_default()
}

impl RedisPresence {
    /// Loads the function library and registers this node.
    pub async fn start(redis: Redis, node_id: NodeId, ttl: Duration) -> Result<Self, PresenceError> {
        let presence = Self {
            redis,
            node_id,
            ttl,
            started_at: Utc::now(),
            local: Mutex::new(Local::default()),
            departed: std::sync::atomic::AtomicBool::new(false),
            suspect: std::sync::atomic::AtomicBool::new(false),
        };
        presence.load().await?;
        presence.heartbeat().await?;
        Ok(presence)
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
        for attempt in 0..2 {
            let called = tokio::time::timeout(
                COMMAND_TIMEOUT,
                self.redis
                    .client
                    .fcall::<Value, _, _, _>(function, Vec::<String>::new(), argv.clone()),
            )
            .await;
            match called {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if attempt == 0 && e.details().contains("Function not found") => self.load().await?,
                Ok(Err(e)) => return Err(unavailable(e)),
                Err(_) => return Err(unavailable(format!("{function} timed out"))),
            }
        }
        Err(unavailable(format!("{function} failed")))
    }

    async fn heartbeat(&self) -> Result<(), PresenceError> {
        let expires = (now_ms() + self.ttl.as_millis() as i64).to_string();
        let started = self.started_at.to_rfc3339();
        use std::sync::atomic::Ordering::SeqCst;
        let added = match self.call("sb_heartbeat", &[&self.node_id.0, &expires, &started]).await {
            Ok(added) => added,
            Err(e) => {
                self.suspect.store(true, SeqCst);
                return Err(e);
            }
        };
        if int(&added) == 1 || self.suspect.load(SeqCst) {
            if let Err(e) = self.register_again().await {
                self.suspect.store(true, SeqCst);
                return Err(e);
            }
            self.suspect.store(false, SeqCst);
        }
        let pending = std::mem::take(&mut self.local().pending_drops);
        for conn in pending {
            let now = now_ms().to_string();
            if self
                .call("sb_disconnect", &[&self.node_id.0, &conn.0, &now])
                .await
                .is_err()
            {
                self.local().pending_drops.push(conn);
            }
        }
        Ok(())
    }

    /// Registers every local connection, its joins and its user's status again.
    async fn register_again(&self) -> Result<(), PresenceError> {
        let (conns, statuses) = {
            let local = self.local();
            let conns: Vec<Registration> = local
                .conns
                .iter()
                .map(|(id, c)| Registration {
                    conn: id.clone(),
                    user: c.user.clone(),
                    circles: c.circles.clone(),
                    joined: c.joined.iter().map(|(conv, since)| (conv.clone(), *since)).collect(),
                })
                .collect();
            let statuses: Vec<(UserId, Status)> = local.statuses.iter().map(|(u, s)| (u.clone(), *s)).collect();
            (conns, statuses)
        };
        if conns.is_empty() {
            return Ok(());
        }
        tracing::info!(connections = conns.len(), "registering this node's presence again");
        for r in conns {
            let mut args: Vec<&str> = vec![&self.node_id.0, &r.conn.0, &r.user.0];
            args.extend(r.circles.iter().map(String::as_str));
            self.call("sb_connect", &args).await?;
            for (conv, since) in r.joined {
                let since = since.to_string();
                self.call("sb_join", &[&self.node_id.0, &r.conn.0, &conv.0, &since])
                    .await?;
            }
        }
        for (user, status) in statuses {
            let now = now_ms().to_string();
            self.call("sb_status", &[&user.0, status.as_str(), &now]).await?;
        }
        Ok(())
    }

    /// Reaps every node whose heartbeat expired; the departures are this caller's to announce.
    async fn reap(&self) -> Result<Vec<Departure>, PresenceError> {
        let now = now_ms().to_string();
        let reaped = items(self.call("sb_reap", &[&now]).await?);
        Ok(reaped
            .into_iter()
            .map(|row| {
                let mut row = items(row).into_iter();
                let user = UserId(row.next().map(|u| string(&u)).unwrap_or_default());
                let left = row.next().map(strings).unwrap_or_default();
                let offline = row.next().map(|o| int(&o)) == Some(1);
                let contacts = row.next().map(strings).unwrap_or_default();
                let conn = ConnId(row.next().map(|c| string(&c)).unwrap_or_default());
                let joined = row.next().map(strings).unwrap_or_default();
                let status = row.next().map(|s| status(&s)).unwrap_or_default();
                Departure {
                    user,
                    left,
                    offline_contacts: offline.then_some(contacts),
                    conn,
                    joined,
                    status,
                }
            })
            .collect())
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
        let arrived = int(&self.call("sb_connect", &args).await?) == 1;
        self.local().conns.insert(
            entry.conn,
            LocalConn {
                user: entry.user,
                circles: entry.circles,
                joined: HashMap::new(),
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
        let now = now_ms().to_string();
        let v = match self.call("sb_disconnect", &[&self.node_id.0, &conn.0, &now]).await {
            Ok(v) => v,
            Err(e) => {
                // The connection is gone here; Redis forgets it on a later heartbeat. Without
                // Redis nobody can tell whether it was the user's last, so nothing is announced.
                tracing::warn!(error = %e, "disconnect queued until Redis answers");
                self.local().pending_drops.push(conn.clone());
                return Ok(Some(Disconnected {
                    user,
                    last_connection: false,
                    joined: joined.into_keys().collect(),
                    left: Vec::new(),
                    was_visible: false,
                    // This node's last word on it; another node may have changed it since.
                    status: local_status,
                }));
            }
        };
        let mut v = items(v).into_iter();
        let (Some(_), Some(last), Some(visible), Some(joined), Some(left)) =
            (v.next(), v.next(), v.next(), v.next(), v.next())
        else {
            return Ok(None);
        };
        Ok(Some(Disconnected {
            user,
            last_connection: int(&last) == 1,
            joined: strings(joined),
            left: strings(left),
            was_visible: int(&visible) == 1,
            status: v.next().map(|s| status(&s)).unwrap_or_default(),
        }))
    }

    async fn join(
        &self,
        conn: &ConnId,
        conversation: &ConversationId,
        at: DateTime<Utc>,
    ) -> Result<Change, PresenceError> {
        let since = at.timestamp_millis();
        let change = Self::parse_change(
            self.call(
                "sb_join",
                &[&self.node_id.0, &conn.0, &conversation.0, &since.to_string()],
            )
            .await?,
        );
        if change.connection
            && let Some(c) = self.local().conns.get_mut(conn)
        {
            c.joined.insert(conversation.clone(), since);
        }
        Ok(change)
    }

    async fn leave(&self, conn: &ConnId, conversation: &ConversationId) -> Result<Change, PresenceError> {
        let change = Self::parse_change(
            self.call("sb_leave", &[&self.node_id.0, &conn.0, &conversation.0])
                .await?,
        );
        if let Some(c) = self.local().conns.get_mut(conn) {
            c.joined.remove(conversation);
        }
        Ok(change)
    }

    async fn set_status(&self, user: &UserId, new: Status) -> Result<Status, PresenceError> {
        let now = now_ms().to_string();
        let previous = status(&self.call("sb_status", &[&user.0, new.as_str(), &now]).await?);
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
                    conn_id: ConnId(string(row.first()?)),
                    user_id: UserId(string(row.get(1)?)),
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
                    conn_id: ConnId(string(row.get(1)?)),
                    user_id: user.clone(),
                    status: shown,
                    since: time_ms(int(row.get(2)?))?,
                };
                Some((ConversationId(string(row.first()?)), entry))
            })
            .collect();
        entries.sort_by(|(a, x), (b, y)| (a, &x.conn_id).cmp(&(b, &y.conn_id)));
        Ok(entries)
    }

    async fn stats(&self) -> Result<ClusterStats, PresenceError> {
        let now = now_ms().to_string();
        let mut v = items(self.call("sb_stats", &[&now]).await?).into_iter();
        let nodes: Vec<NodeStats> = v
            .next()
            .map(items)
            .unwrap_or_default()
            .into_iter()
            .map(|row| {
                let row = items(row);
                let get = |i: usize| row.get(i).map(int).unwrap_or(0).max(0) as usize;
                NodeStats {
                    node_id: NodeId(row.first().map(string).unwrap_or_default()),
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

    async fn maintain(&self) -> Result<Vec<Departure>, PresenceError> {
        if self.departed.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(Vec::new());
        }
        self.heartbeat().await?;
        self.reap().await
    }

    async fn depart(&self) -> Result<Vec<Departure>, PresenceError> {
        self.departed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.call("sb_depart", &[&self.node_id.0]).await?;
        self.reap().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::tests::conformance;
    use crate::redis::test_server::TestRedis;

    #[tokio::test]
    async fn redis_presence_conforms() -> Result<(), Box<dyn std::error::Error>> {
        let server = TestRedis::start().await?;
        let redis = Redis::connect(&server.url, "conformance", Duration::from_secs(5)).await?;
        let presence = RedisPresence::start(redis, "n1".into(), Duration::from_secs(30)).await?;
        conformance(&presence).await?;
        Ok(())
    }

    #[tokio::test]
    async fn a_dead_node_is_reaped_once_and_a_lost_node_registers_again() -> Result<(), Box<dyn std::error::Error>> {
        let server = TestRedis::start().await?;
        let connect = || Redis::connect(&server.url, "reap", Duration::from_secs(5));
        let ttl = Duration::from_millis(300);
        let dead = RedisPresence::start(connect().await?, "dead".into(), ttl).await?;
        let a = RedisPresence::start(connect().await?, "a".into(), Duration::from_secs(30)).await?;
        let b = RedisPresence::start(connect().await?, "b".into(), Duration::from_secs(30)).await?;
        let entry = |conn: &str, user: &str| ConnectionEntry {
            conn: conn.into(),
            user: user.into(),
            circles: vec!["team".into()],
        };
        let joined_at = Utc.timestamp_millis_opt(1_700_000_000_000).single().ok_or("bad time")?;
        dead.connect(entry("d1", "dora")).await?;
        dead.join(&"d1".into(), &"room".into(), joined_at).await?;
        dead.join(&"d1".into(), &"side".into(), joined_at).await?;
        dead.set_status(&"dora".into(), Status::Busy).await?;
        a.connect(entry("a1", "amy")).await?;
        a.join(&"a1".into(), &"room".into(), joined_at).await?;
        assert_eq!(a.roster(&"room".into()).await?.len(), 2);
        assert_eq!(a.stats().await?.nodes.len(), 3);
        // `dead` stops heartbeating; after its TTL exactly one survivor reaps it.
        tokio::time::sleep(ttl + Duration::from_millis(100)).await;
        let (from_a, from_b) = (a.maintain().await?, b.maintain().await?);
        let mut reaped: Vec<_> = from_a.into_iter().chain(from_b).collect();
        for d in &mut reaped {
            d.left.sort();
            d.joined.sort();
        }
        assert_eq!(
            reaped,
            vec![Departure {
                user: "dora".into(),
                left: vec!["room".into(), "side".into()],
                offline_contacts: Some(vec!["amy".into()]),
                conn: "d1".into(),
                joined: vec!["room".into(), "side".into()],
                status: Status::Busy,
            }]
        );
        assert_eq!(a.connections(&"dora".into()).await?, 0);
        assert_eq!(a.conversation_online(&"room".into()).await?, vec![UserId::from("amy")]);
        assert_eq!(
            a.roster(&"room".into()).await?,
            vec![RosterEntry {
                conn_id: "a1".into(),
                user_id: "amy".into(),
                status: Status::Online,
                since: joined_at,
            }]
        );
        assert!(a.roster(&"side".into()).await?.is_empty());
        assert!(a.user_roster(&"dora".into()).await?.is_empty());
        assert_eq!(a.stats().await?.nodes.len(), 2);

        // A node whose entries vanished (a Redis restart) registers its connections again.
        let flush: Value = a.redis.client.flushall(false).await?;
        drop(flush);
        assert_eq!(a.connections(&"amy".into()).await?, 0);
        assert!(b.roster(&"room".into()).await?.is_empty());
        a.maintain().await?;
        assert_eq!(a.connections(&"amy".into()).await?, 1);
        assert_eq!(b.online_users(None, 10).await?.users, vec![UserId::from("amy")]);
        // Its roster entries come back with their original `since`.
        let amy = RosterEntry {
            conn_id: "a1".into(),
            user_id: "amy".into(),
            status: Status::Online,
            since: joined_at,
        };
        assert_eq!(b.roster(&"room".into()).await?, vec![amy.clone()]);
        assert_eq!(b.user_roster(&"amy".into()).await?, vec![("room".into(), amy)]);
        Ok(())
    }
}
