//! Keeping the cluster's view of presence true over time: this node's heartbeat and its
//! registration again after Redis forgot it, and reaping the connections of dead nodes.
//!
//! Every call here is bounded in Redis time whatever the cluster's size: registration and
//! reaping go a chunk per call, so Redis serves other nodes between chunks and no call comes
//! near the command timeout.

use super::values::{int, items, status, string, strings};
use super::{RedisPresence, SeqCst, unavailable};
use crate::presence::{CirclePage, Claim, Departure, Lingered, PresenceError, ReapChunk};
use shared::{ConnId, ConversationId, Status, UserId};

/// Connections per registration call.
const REGISTER_CHUNK_CONNS: usize = 200;
/// Arguments per registration call, for connections with many joins or circles.
const REGISTER_CHUNK_ARGS: usize = 4000;
/// Dead nodes claimed per call; the rest wait for the next pass.
const CLAIM_LIMIT: usize = 16;

/// A local connection, copied out of the lock to register it again.
struct Registration {
    conn: ConnId,
    user: UserId,
    status: Status,
    circles: Vec<String>,
    joined: Vec<(ConversationId, i64)>,
}

impl Registration {
    fn push_args(&self, args: &mut Vec<String>) {
        args.push(self.conn.0.to_string());
        args.push(self.user.0.to_string());
        args.push(self.status.as_str().to_owned());
        args.push(self.circles.len().to_string());
        args.extend(self.circles.iter().cloned());
        args.push(self.joined.len().to_string());
        for (conv, since) in &self.joined {
            args.push(conv.0.to_string());
            args.push(since.to_string());
        }
    }
}

impl RedisPresence {
    /// Full registrations sent since start.
    #[cfg(test)]
    pub(crate) fn registrations(&self) -> u64 {
        self.registrations.load(SeqCst)
    }

    /// Refreshes this node's expiry; registers everything again only when Redis no longer holds
    /// this process's registration (not merely because a heartbeat failed).
    pub(super) async fn beat(&self) -> Result<(), PresenceError> {
        if self.departed.load(SeqCst) {
            return Ok(());
        }
        let started = self.started_at.to_rfc3339();
        let ttl = self.ttl_ms();
        let args = [self.node_id.as_str(), &self.incarnation, &ttl, &started];
        if int(&self.call("sb_heartbeat", &args).await?) == 1 {
            self.register_again().await?;
        }
        self.retry_pending().await;
        Ok(())
    }

    fn snapshot(&self, only: Option<&ConnId>) -> Vec<Registration> {
        let local = self.local();
        local
            .conns
            .iter()
            .filter(|(id, _)| only.is_none_or(|o| o == *id))
            .map(|(id, c)| Registration {
                conn: id.clone(),
                user: c.user.clone(),
                status: local.statuses.get(&c.user).copied().unwrap_or_default(),
                circles: c.circles.clone(),
                joined: c.joined.iter().map(|(conv, since)| (conv.clone(), *since)).collect(),
            })
            .collect()
    }

    /// Registers every local connection, its joins and its user's status again, in chunks that
    /// each extend this node's expiry. An attempt interrupted by another loss is void and the
    /// next heartbeat starts over.
    async fn register_again(&self) -> Result<(), PresenceError> {
        self.registrations.fetch_add(1, SeqCst);
        let conns = self.snapshot(None);
        tracing::info!(connections = conns.len(), "registering this node's presence again");
        let token = uuid::Uuid::new_v4().simple().to_string();
        self.call("sb_register_begin", &[&self.node_id.0, &token]).await?;
        self.register_chunks(&token, &conns).await?;
        let end = self
            .call("sb_register_end", &[&self.node_id.0, &token, &self.incarnation])
            .await?;
        if int(&end) != 1 {
            return Err(unavailable("registration interrupted: Redis lost it again"));
        }
        // A connection closed while its chunk was on the way may have been registered again
        // after its disconnect: drop it once more.
        let mut local = self.local();
        let gone: Vec<ConnId> = conns
            .into_iter()
            .filter(|r| !local.conns.contains_key(&r.conn))
            .map(|r| r.conn)
            .collect();
        local.pending_drops.extend(gone);
        Ok(())
    }

    async fn register_chunks(&self, token: &str, conns: &[Registration]) -> Result<(), PresenceError> {
        let ttl = self.ttl_ms();
        let mut start = 0;
        while start < conns.len() {
            let mut body = Vec::new();
            let mut count = 0;
            while start + count < conns.len() && count < REGISTER_CHUNK_CONNS && body.len() < REGISTER_CHUNK_ARGS {
                conns[start + count].push_args(&mut body);
                count += 1;
            }
            let count_arg = count.to_string();
            let mut args: Vec<&str> = vec![&self.node_id.0, token, &ttl, &count_arg];
            args.extend(body.iter().map(String::as_str));
            if int(&self.call("sb_register", &args).await?) != 1 {
                return Err(unavailable("registration interrupted: Redis lost it again"));
            }
            start += count;
        }
        Ok(())
    }

    /// Registers one local connection that Redis lost, outside a full registration.
    pub(super) async fn register_one(&self, conn: &ConnId) -> Result<(), PresenceError> {
        // Plain calls, not a registration chunk: a full registration may be under way, and its
        // token must stay the only one.
        let conns = self.snapshot(Some(conn));
        for r in conns {
            let mut args: Vec<&str> = vec![&self.node_id.0, &r.conn.0, &r.user.0];
            args.extend(r.circles.iter().map(String::as_str));
            self.call("sb_connect", &args).await?;
            for (conv, since) in &r.joined {
                let since = since.to_string();
                self.call("sb_join", &[&self.node_id.0, &r.conn.0, &conv.0, &since])
                    .await?;
            }
        }
        Ok(())
    }

    /// Undoes what Redis may have applied after answering too late, and retries disconnects.
    async fn retry_pending(&self) {
        let (drops, leaves) = {
            let mut local = self.local();
            (
                std::mem::take(&mut local.pending_drops),
                std::mem::take(&mut local.pending_leaves),
            )
        };
        let linger = self.linger_ms.load(SeqCst).to_string();
        for conn in drops {
            // Reconnected under the same id since (a retried connect): it is live, keep it.
            if self.local().conns.contains_key(&conn) {
                continue;
            }
            let args = [self.node_id.as_str(), &conn.0, &linger];
            if self.call("sb_disconnect", &args).await.is_err() {
                self.local().pending_drops.push(conn);
            }
        }
        for (conn, conv) in leaves {
            let joined = self
                .local()
                .conns
                .get(&conn)
                .is_some_and(|c| c.joined.iter().any(|(joined, _)| *joined == conv));
            if joined {
                continue;
            }
            let args = [self.node_id.as_str(), &conn.0, &conv.0];
            if self.call("sb_leave", &args).await.is_err() {
                self.local().pending_leaves.push((conn, conv));
            }
        }
    }

    fn lease_ms(&self) -> String {
        (self.ttl * 2).as_millis().to_string()
    }

    pub(super) async fn claim(&self) -> Result<Vec<Claim>, PresenceError> {
        let limit = CLAIM_LIMIT.to_string();
        let args = [self.node_id.as_str(), &self.lease_ms(), &limit];
        Ok(strings::<String>(self.call("sb_claim", &args).await?)
            .into_iter()
            .map(Claim)
            .collect())
    }

    pub(super) async fn reap_chunk(&self, claim: &Claim, limit: usize) -> Result<ReapChunk, PresenceError> {
        let limit = limit.max(1).to_string();
        let v = self.call("sb_reap", &[&claim.0, &self.lease_ms(), &limit]).await?;
        let mut v = items(v).into_iter();
        let done = v.next().map(|d| int(&d)) == Some(1);
        let departures = v
            .next()
            .map(items)
            .unwrap_or_default()
            .into_iter()
            .map(|row| {
                let mut row = items(row).into_iter();
                let user = UserId::from(row.next().map(|u| string(&u)).unwrap_or_default());
                let left = row.next().map(strings).unwrap_or_default();
                let offline = row.next().map(|o| int(&o)) == Some(1);
                let circles = row.next().map(strings).unwrap_or_default();
                let conn = ConnId::from(row.next().map(|c| string(&c)).unwrap_or_default());
                let joined = row.next().map(strings).unwrap_or_default();
                let status = row.next().map(|s| status(&s)).unwrap_or_default();
                Departure {
                    user,
                    left,
                    offline_circles: offline.then_some(circles),
                    conn,
                    joined,
                    status,
                }
            })
            .collect();
        Ok(ReapChunk { departures, done })
    }

    pub(super) async fn circle(
        &self,
        circle: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<CirclePage, PresenceError> {
        let limit = limit.max(1).to_string();
        let v = self
            .call("sb_circle_page", &[circle, cursor.unwrap_or("0"), &limit])
            .await?;
        let mut v = items(v).into_iter();
        let next = v.next().map(|c| string(&c)).filter(|c| c != "0");
        let members = v.next().map(strings).unwrap_or_default();
        Ok(CirclePage { members, next })
    }

    pub(super) async fn sweep(&self, limit: usize) -> Result<Vec<Lingered>, PresenceError> {
        let limit = limit.max(1).to_string();
        let rows = items(self.call("sb_sweep", &[&limit]).await?);
        Ok(rows
            .into_iter()
            .map(|row| {
                let mut row = items(row).into_iter();
                Lingered {
                    user: UserId::from(row.next().map(|u| string(&u)).unwrap_or_default()),
                    visible: row.next().map(|v| int(&v)) == Some(1),
                    circles: row.next().map(strings).unwrap_or_default(),
                }
            })
            .collect())
    }

    pub(super) async fn leave_cluster(&self) -> Result<Vec<Claim>, PresenceError> {
        self.departed.store(true, SeqCst);
        let id = string(&self.call("sb_depart", &[&self.node_id.0, &self.lease_ms()]).await?);
        Ok(if id.is_empty() { Vec::new() } else { vec![Claim(id)] })
    }
}
