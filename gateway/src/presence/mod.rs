//! Presence remembers who is connected where: connections, users, statuses, who is joined to
//! which conversation, and per-node counts.
//!
//! Contract, for every implementation:
//! - A user is online while at least one of their connections is registered on any node.
//! - A user whose status is `offline` (invisible) is shown offline in [`Presence::user`],
//!   [`Presence::online_users`] and [`Presence::conversation_online`].
//! - After the last connection of a user closes, the user lingers: a new connection within the
//!   offline grace is not a new arrival, and [`Presence::settle_offline`] decides afterwards
//!   whether the user really left.
//! - A user's contacts are the connected users who share a circle with them: a conversation
//!   either joined during their current connections, or an entry of the token's
//!   `conversations` claim (compared as written: two identical patterns match, a pattern does
//!   not expand).

mod memory;
mod redis;

pub use memory::MemoryPresence;
pub use redis::RedisPresence;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use shared::{ConnId, ConversationId, NodeId, Status, UserId};
use std::time::Duration;

/// A presence failure: nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    /// The backing store (Redis) is unreachable.
    #[error("presence unavailable: {0}")]
    Unavailable(String),
}

/// A connection being registered.
#[derive(Debug, Clone)]
pub struct ConnectionEntry {
    /// The connection.
    pub conn: ConnId,
    /// Its user.
    pub user: UserId,
    /// Circles known at connect time (the `conversations` claim).
    pub circles: Vec<String>,
}

/// What closing a connection changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnected {
    /// The connection's user.
    pub user: UserId,
    /// It was the user's last connection anywhere.
    pub last_connection: bool,
    /// Conversations this connection was joined to.
    pub joined: Vec<ConversationId>,
    /// Of those, the ones where it was the user's last joined connection.
    pub left: Vec<ConversationId>,
    /// The user was visible (status other than `offline`).
    pub was_visible: bool,
}

/// What a join or leave changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Change {
    /// The connection's membership changed (it was not joined before a join, or was before a leave).
    pub connection: bool,
    /// The user's membership changed: their first joined connection arrived, or their last left.
    pub user: bool,
}

/// A user whose connections died with their node, found by the reaper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Departure {
    /// The user.
    pub user: UserId,
    /// Conversations where that was the user's last joined connection.
    pub left: Vec<ConversationId>,
    /// When the user has no connection left anywhere and was visible: the contacts to tell.
    pub offline_contacts: Option<Vec<UserId>>,
}

/// A user's presence as others see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserPresence {
    /// The user.
    pub user_id: UserId,
    /// Connected and visible.
    pub online: bool,
    /// Shown status.
    pub status: Status,
    /// When last seen; null while online.
    pub last_seen: Option<DateTime<Utc>>,
    /// Open connections (0 while invisible).
    pub connections: usize,
}

/// One node's counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    /// The node.
    pub node_id: NodeId,
    /// Open connections with a user.
    pub connections: usize,
    /// Distinct users.
    pub users: usize,
    /// Conversations with at least one joined connection.
    pub rooms: usize,
    /// When the node started.
    pub started_at: DateTime<Utc>,
}

/// Counts for the whole cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterStats {
    /// One row per live node.
    pub nodes: Vec<NodeStats>,
    /// Total connections.
    pub connections: usize,
    /// Distinct users.
    pub users: usize,
    /// Distinct conversations with a joined connection.
    pub rooms: usize,
}

/// A page of online users, ordered by id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserPage {
    /// Online, visible users.
    pub users: Vec<UserId>,
    /// Pass as `cursor` to get the next page; null on the last.
    pub next_cursor: Option<String>,
}

/// Who is connected, where, and with which status.
#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Registers a connection; true when its user was not online or lingering before.
    async fn connect(&self, entry: ConnectionEntry) -> Result<bool, PresenceError>;
    /// Removes a connection and its joins; `None` when it was not registered.
    async fn disconnect(&self, conn: &ConnId) -> Result<Option<Disconnected>, PresenceError>;
    /// Joins a registered connection to a conversation.
    async fn join(&self, conn: &ConnId, conversation: &ConversationId) -> Result<Change, PresenceError>;
    /// Takes a connection out of a conversation.
    async fn leave(&self, conn: &ConnId, conversation: &ConversationId) -> Result<Change, PresenceError>;
    /// Sets a connected user's status.
    async fn set_status(&self, user: &UserId, status: Status) -> Result<(), PresenceError>;
    /// A user's presence as others see it (also for unknown users).
    async fn user(&self, user: &UserId) -> Result<UserPresence, PresenceError>;
    /// How many connections the user has anywhere, visible or not (for direct delivery).
    async fn connections(&self, user: &UserId) -> Result<usize, PresenceError>;
    /// After the offline grace: when the user still has no connection, forgets them and
    /// returns their contacts to announce the departure to; `None` when they came back.
    async fn settle_offline(&self, user: &UserId) -> Result<Option<Vec<UserId>>, PresenceError>;
    /// The connected users sharing a circle with `user`.
    async fn contacts(&self, user: &UserId) -> Result<Vec<UserId>, PresenceError>;
    /// Online, visible users with an id greater than `after`, at most `limit`.
    async fn online_users(&self, after: Option<&str>, limit: usize) -> Result<UserPage, PresenceError>;
    /// Visible users with a connection joined to the conversation.
    async fn conversation_online(&self, conversation: &ConversationId) -> Result<Vec<UserId>, PresenceError>;
    /// Per-node and total counts.
    async fn stats(&self) -> Result<ClusterStats, PresenceError>;
    /// How often [`Presence::maintain`] must run; `None` when there is nothing to maintain.
    fn heartbeat_interval(&self) -> Option<Duration> {
        None
    }
    /// Refreshes this node's heartbeat (registering its connections again if they were lost)
    /// and reaps nodes whose heartbeat expired, returning the departures to announce. Each dead
    /// node's departures are returned to exactly one caller in the cluster.
    async fn maintain(&self) -> Result<Vec<Departure>, PresenceError> {
        Ok(Vec::new())
    }
    /// Removes this node and whatever entries it still has (a polite exit), returning the
    /// departures to announce.
    async fn depart(&self) -> Result<Vec<Departure>, PresenceError> {
        Ok(Vec::new())
    }
}
