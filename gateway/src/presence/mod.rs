//! Presence remembers who is connected where: connections, users, statuses, who is joined to
//! which conversation (per user, and per connection with the time it joined), and per-node counts.
//!
//! Contract, for every implementation:
//! - A user is online while at least one of their connections is registered on any node.
//! - A user whose status is `offline` (invisible) is shown offline in [`Presence::user`],
//!   [`Presence::online_users`], [`Presence::conversation_online`] and [`Presence::roster`].
//! - After the last connection of a user closes, the user lingers: a new connection within the
//!   offline grace is not a new arrival, and [`Presence::settle_offline`] decides afterwards
//!   whether the user really left.
//! - A user's contacts are the connected users who share a circle with them: a conversation
//!   either joined during their current connections, or an entry of the token's
//!   `conversations` claim (compared as written: two identical patterns match, a pattern does
//!   not expand).

mod memory;
mod redis;

pub use self::redis::RedisPresence;
pub use memory::MemoryPresence;

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
    /// The user's status when the connection closed.
    pub status: Status,
}

/// What a join or leave changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Change {
    /// The connection's membership changed (it was not joined before a join, or was before a leave).
    pub connection: bool,
    /// The user's membership changed: their first joined connection arrived, or their last left.
    pub user: bool,
    /// The user's status at the time (`online` for an unknown connection).
    pub status: Status,
}

/// One connection joined to a conversation, as a presence list shows it (the domain event
/// type, so that lists travel as they are read).
pub use shared::event::RosterEntry;

/// A connection that died with its node, found by the reaper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Departure {
    /// The user.
    pub user: UserId,
    /// Conversations where that was the user's last joined connection.
    pub left: Vec<ConversationId>,
    /// When the user has no connection left anywhere and was visible: their circles, whose
    /// connected members are the contacts to tell (read once per circle, not per departure).
    pub offline_circles: Option<Vec<String>>,
    /// The dead connection.
    pub conn: ConnId,
    /// Every conversation it was joined to.
    pub joined: Vec<ConversationId>,
    /// The user's status at the time.
    pub status: Status,
}

/// A dead node's connections (or a previous incarnation's), claimed by this node to reap a
/// chunk at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim(pub String);

/// One chunk of a reap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReapChunk {
    /// The connections dropped by this chunk.
    pub departures: Vec<Departure>,
    /// Nothing is left to reap under this claim.
    pub done: bool,
}

/// A user whose departure nobody settled in time (their node died during the offline grace),
/// settled by the sweeper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lingered {
    /// The user.
    pub user: UserId,
    /// The user was visible: contacts are told.
    pub visible: bool,
    /// Their circles, whose connected members are the contacts.
    pub circles: Vec<String>,
}

/// A page of a circle's connected members.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CirclePage {
    /// Connected members on this page.
    pub members: Vec<UserId>,
    /// Pass back for the next page; `None` after the last.
    pub next: Option<String>,
}

/// A user's presence as others see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserPage {
    /// Online, visible users.
    pub users: Vec<UserId>,
    /// Pass as `cursor` to get the next page; null on the last.
    pub next_cursor: Option<String>,
}

/// A page of conversations with a joined connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationPage {
    /// Conversations with a connection joined on some node.
    pub conversations: Vec<ConversationId>,
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
    /// Joins a registered connection to a conversation; `at` becomes its roster entry's `since`
    /// (a connection already joined keeps its first `since`).
    async fn join(
        &self,
        conn: &ConnId,
        conversation: &ConversationId,
        at: DateTime<Utc>,
    ) -> Result<Change, PresenceError>;
    /// Takes a connection out of a conversation.
    async fn leave(&self, conn: &ConnId, conversation: &ConversationId) -> Result<Change, PresenceError>;
    /// Sets a connected user's status; returns the previous one (`online` when none was set, or
    /// when the user is not connected, in which case nothing changes).
    async fn set_status(&self, user: &UserId, status: Status) -> Result<Status, PresenceError>;
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
    /// Conversations with a connection joined on some node, a page at a time: `cursor` is
    /// the opaque `next_cursor` of the page before; the order is the backend's.
    async fn active_conversations(&self, cursor: Option<&str>, limit: usize)
    -> Result<ConversationPage, PresenceError>;
    /// Visible users with a connection joined to the conversation.
    async fn conversation_online(&self, conversation: &ConversationId) -> Result<Vec<UserId>, PresenceError>;
    /// The visible connections joined to the conversation on every node, one entry per
    /// connection, sorted by (user, conn).
    async fn roster(&self, conversation: &ConversationId) -> Result<Vec<RosterEntry>, PresenceError>;
    /// Every connection of the user joined to a conversation, on every node and whatever the
    /// status, sorted by (conversation, conn).
    async fn user_roster(&self, user: &UserId) -> Result<Vec<(ConversationId, RosterEntry)>, PresenceError>;
    /// Per-node and total counts.
    async fn stats(&self) -> Result<ClusterStats, PresenceError>;
    /// How often [`Presence::heartbeat`] and the reaper must run; `None` when there is nothing
    /// to maintain (a single node).
    fn heartbeat_interval(&self) -> Option<Duration> {
        None
    }
    /// Tells presence how long the domain waits before settling a departure, so that a
    /// departure nobody settles (its node died meanwhile) is swept only after that.
    fn set_offline_grace(&self, _grace: Duration) {}
    /// Refreshes this node's heartbeat, registering its connections again (in bounded chunks)
    /// when Redis no longer holds them.
    async fn heartbeat(&self) -> Result<(), PresenceError> {
        Ok(())
    }
    /// Claims the connections of nodes whose heartbeat expired (never this node's own live
    /// ones) and of reaps abandoned by their reaper. Each connection is then returned by
    /// [`Presence::reap`] to exactly one caller in the cluster.
    async fn claim_dead(&self) -> Result<Vec<Claim>, PresenceError> {
        Ok(Vec::new())
    }
    /// Drops at most `limit` connections of a claim; the cost in Redis is bounded by `limit`.
    async fn reap(&self, _claim: &Claim, _limit: usize) -> Result<ReapChunk, PresenceError> {
        Ok(ReapChunk {
            departures: Vec::new(),
            done: true,
        })
    }
    /// One page of the connected members of a circle (`cursor` `None` for the first page).
    async fn circle_page(
        &self,
        _circle: &str,
        _cursor: Option<&str>,
        _limit: usize,
    ) -> Result<CirclePage, PresenceError> {
        Ok(CirclePage::default())
    }
    /// Settles at most `limit` departures that nobody settled within their linger time.
    async fn sweep_lingering(&self, _limit: usize) -> Result<Vec<Lingered>, PresenceError> {
        Ok(Vec::new())
    }
    /// Leaves the cluster politely: this node stops heartbeating, and its remaining entries
    /// are claimed for the caller to reap.
    async fn depart(&self) -> Result<Vec<Claim>, PresenceError> {
        Ok(Vec::new())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! The presence conformance suite, run against every implementation. `p` must be empty and
    //! be node `n1`.
    use super::*;

    fn entry(conn: &str, user: &str, circles: &[&str]) -> ConnectionEntry {
        ConnectionEntry {
            conn: conn.into(),
            user: user.into(),
            circles: circles.iter().map(|c| c.to_string()).collect(),
        }
    }

    fn users(ids: &[&str]) -> Vec<UserId> {
        ids.iter().map(|u| UserId::from(*u)).collect()
    }

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(ms).unwrap_or_default()
    }

    fn listed(conn: &str, user: &str, status: Status, since: DateTime<Utc>) -> RosterEntry {
        RosterEntry {
            conn_id: conn.into(),
            user_id: user.into(),
            status,
            since,
        }
    }

    pub(crate) async fn conformance(p: &dyn Presence) -> Result<(), PresenceError> {
        users_come_and_go_with_their_last_connection(p).await?;
        contacts_share_a_circle_and_invisible_users_hide(p).await?;
        rosters_list_each_joined_connection(p).await?;
        active_conversations_are_paged(p).await?;
        stats_count_this_node(p).await
    }

    async fn active_conversations_are_paged(p: &dyn Presence) -> Result<(), PresenceError> {
        p.connect(entry("ac1", "amy", &[])).await?;
        for n in 0..25 {
            p.join(&"ac1".into(), &format!("room-{n:02}").as_str().into(), at(1_000))
                .await?;
        }
        let (mut seen, mut cursor) = (Vec::new(), None::<String>);
        for _ in 0..100 {
            let page = p.active_conversations(cursor.as_deref(), 10).await?;
            seen.extend(page.conversations);
            cursor = page.next_cursor;
            if cursor.is_none() {
                break;
            }
        }
        seen.sort();
        seen.dedup();
        let rooms: Vec<String> = seen
            .into_iter()
            .map(|c| c.0.to_string())
            .filter(|c| c.starts_with("room-"))
            .collect();
        assert_eq!(rooms, (0..25).map(|n| format!("room-{n:02}")).collect::<Vec<_>>());
        p.disconnect(&"ac1".into()).await?;
        let left = p.active_conversations(None, 1000).await?;
        assert!(
            left.conversations.iter().all(|c| !c.0.starts_with("room-")),
            "an emptied conversation is still listed: {left:?}"
        );
        Ok(())
    }

    async fn users_come_and_go_with_their_last_connection(p: &dyn Presence) -> Result<(), PresenceError> {
        assert!(p.connect(entry("a1", "alice", &[])).await?);
        assert!(!p.connect(entry("a2", "alice", &[])).await?);
        assert_eq!(p.connections(&"alice".into()).await?, 2);
        assert!(p.join(&"a1".into(), &"c".into(), at(0)).await?.user);
        let again = p.join(&"a2".into(), &"c".into(), at(0)).await?;
        assert!(again.connection && !again.user);
        assert_eq!(p.join(&"a2".into(), &"c".into(), at(0)).await?, Change::default());
        assert_eq!(p.join(&"nobody".into(), &"c".into(), at(0)).await?, Change::default());
        assert_eq!(p.conversation_online(&"c".into()).await?, users(&["alice"]));
        assert!(!p.leave(&"a1".into(), &"c".into()).await?.user);
        assert_eq!(p.leave(&"a1".into(), &"c".into()).await?, Change::default());
        let d = p.disconnect(&"a1".into()).await?;
        assert_eq!(d.map(|d| d.last_connection), Some(false));
        let d = p.disconnect(&"a2".into()).await?;
        assert_eq!(
            d.map(|d| (d.last_connection, d.left, d.was_visible)),
            Some((true, vec![ConversationId::from("c")], true))
        );
        assert_eq!(p.disconnect(&"a2".into()).await?, None);
        assert!(p.conversation_online(&"c".into()).await?.is_empty());
        assert_eq!(p.connections(&"alice".into()).await?, 0);
        // Back within the grace: not a new arrival, and settling finds them present.
        assert!(!p.connect(entry("a3", "alice", &[])).await?);
        assert_eq!(p.settle_offline(&"alice".into()).await?, None);
        p.disconnect(&"a3".into()).await?;
        assert_eq!(p.settle_offline(&"alice".into()).await?, Some(vec![]));
        // Settled once only.
        assert_eq!(p.settle_offline(&"alice".into()).await?, None);
        let view = p.user(&"alice".into()).await?;
        assert!(!view.online && view.last_seen.is_some() && view.connections == 0);
        assert!(p.connect(entry("a4", "alice", &[])).await?);
        p.disconnect(&"a4".into()).await?;
        p.settle_offline(&"alice".into()).await?;
        Ok(())
    }

    async fn contacts_share_a_circle_and_invisible_users_hide(p: &dyn Presence) -> Result<(), PresenceError> {
        p.connect(entry("a", "alice", &["team-*"])).await?;
        p.connect(entry("b", "bob", &["team-*"])).await?;
        p.connect(entry("c", "carol", &[])).await?;
        p.join(&"c".into(), &"room".into(), at(0)).await?;
        p.join(&"a".into(), &"room".into(), at(0)).await?;
        assert_eq!(p.contacts(&"alice".into()).await?, users(&["bob", "carol"]));
        assert_eq!(p.contacts(&"bob".into()).await?, users(&["alice"]));
        p.set_status(&"bob".into(), Status::Busy).await?;
        let bob = p.user(&"bob".into()).await?;
        assert_eq!(
            (bob.online, bob.status, bob.last_seen, bob.connections),
            (true, Status::Busy, None, 1)
        );
        p.set_status(&"alice".into(), Status::Offline).await?;
        let alice = p.user(&"alice".into()).await?;
        assert_eq!(
            (alice.online, alice.status, alice.connections),
            (false, Status::Offline, 0)
        );
        assert_eq!(p.connections(&"alice".into()).await?, 1);
        assert_eq!(p.conversation_online(&"room".into()).await?, users(&["carol"]));
        let page = p.online_users(None, 1).await?;
        assert_eq!(page.users, users(&["bob"]));
        let next = p.online_users(page.next_cursor.as_deref(), 1).await?;
        assert_eq!((next.users, next.next_cursor), (users(&["carol"]), None));
        let all = p.online_users(None, 10).await?;
        assert_eq!((all.users, all.next_cursor), (users(&["bob", "carol"]), None));
        // Invisible users disconnect without being shown leaving.
        let gone = p.disconnect(&"a".into()).await?;
        assert_eq!(gone.map(|d| d.was_visible), Some(false));
        assert_eq!(p.settle_offline(&"alice".into()).await?, Some(users(&["bob", "carol"])));
        for conn in ["b", "c"] {
            p.disconnect(&conn.into()).await?;
        }
        for user in ["bob", "carol"] {
            p.settle_offline(&user.into()).await?;
        }
        Ok(())
    }

    async fn rosters_list_each_joined_connection(p: &dyn Presence) -> Result<(), PresenceError> {
        for (conn, user) in [("n1", "ann"), ("n2", "ann"), ("b1", "ben")] {
            p.connect(entry(conn, user, &[])).await?;
        }
        // `since` keeps milliseconds only.
        let first = at(1_700_000_000_123) + chrono::Duration::microseconds(456);
        let joined = p.join(&"b1".into(), &"hall".into(), first).await?;
        assert_eq!(
            joined,
            Change {
                connection: true,
                user: true,
                status: Status::Online
            }
        );
        p.join(&"n2".into(), &"hall".into(), at(2_000)).await?;
        p.join(&"n1".into(), &"hall".into(), at(3_000)).await?;
        p.join(&"n1".into(), &"lobby".into(), at(4_000)).await?;
        // Joining again changes nothing, not even `since`.
        assert_eq!(
            p.join(&"n1".into(), &"hall".into(), at(9_000)).await?,
            Change::default()
        );
        let since_first = at(1_700_000_000_123);
        // One entry per connection, sorted by user then connection.
        assert_eq!(
            p.roster(&"hall".into()).await?,
            vec![
                listed("n1", "ann", Status::Online, at(3_000)),
                listed("n2", "ann", Status::Online, at(2_000)),
                listed("b1", "ben", Status::Online, since_first),
            ]
        );
        assert!(p.roster(&"nowhere".into()).await?.is_empty());

        // set_status answers the previous status; every connection shows the new one.
        assert_eq!(p.set_status(&"ann".into(), Status::Busy).await?, Status::Online);
        assert_eq!(p.set_status(&"ann".into(), Status::Away).await?, Status::Busy);
        assert_eq!(p.set_status(&"nobody".into(), Status::Busy).await?, Status::Online);
        assert_eq!(p.user(&"nobody".into()).await?.status, Status::Offline);
        let left = p.leave(&"n2".into(), &"hall".into()).await?;
        assert_eq!(
            left,
            Change {
                connection: true,
                user: false,
                status: Status::Away
            }
        );
        assert_eq!(
            p.roster(&"hall".into()).await?,
            vec![
                listed("n1", "ann", Status::Away, at(3_000)),
                listed("b1", "ben", Status::Online, since_first),
            ]
        );
        assert_eq!(
            p.user_roster(&"ann".into()).await?,
            vec![
                ("hall".into(), listed("n1", "ann", Status::Away, at(3_000))),
                ("lobby".into(), listed("n1", "ann", Status::Away, at(4_000))),
            ]
        );

        // Invisible users are left out of rosters, but not out of their own.
        assert_eq!(p.set_status(&"ben".into(), Status::Offline).await?, Status::Online);
        assert_eq!(
            p.roster(&"hall".into()).await?,
            vec![listed("n1", "ann", Status::Away, at(3_000))]
        );
        assert_eq!(
            p.user_roster(&"ben".into()).await?,
            vec![("hall".into(), listed("b1", "ben", Status::Offline, since_first))]
        );

        // Disconnecting removes every entry of the connection.
        let gone = p.disconnect(&"n1".into()).await?;
        assert_eq!(gone.map(|d| (d.last_connection, d.status)), Some((false, Status::Away)));
        assert!(p.roster(&"hall".into()).await?.is_empty());
        assert!(p.roster(&"lobby".into()).await?.is_empty());
        assert!(p.user_roster(&"ann".into()).await?.is_empty());
        let gone = p.disconnect(&"b1".into()).await?;
        assert_eq!(
            gone.map(|d| (d.last_connection, d.was_visible, d.status)),
            Some((true, false, Status::Offline))
        );
        assert!(p.user_roster(&"ben".into()).await?.is_empty());
        // Lingering is not connected: nothing changes.
        assert_eq!(p.set_status(&"ben".into(), Status::Busy).await?, Status::Online);
        assert!(p.roster(&"hall".into()).await?.is_empty());
        p.disconnect(&"n2".into()).await?;
        for user in ["ann", "ben"] {
            p.settle_offline(&user.into()).await?;
        }
        Ok(())
    }

    async fn stats_count_this_node(p: &dyn Presence) -> Result<(), PresenceError> {
        p.connect(entry("x1", "xavier", &[])).await?;
        p.connect(entry("x2", "xavier", &[])).await?;
        p.connect(entry("y1", "yvonne", &[])).await?;
        p.join(&"x1".into(), &"r1".into(), at(0)).await?;
        p.join(&"y1".into(), &"r2".into(), at(0)).await?;
        let stats = p.stats().await?;
        assert_eq!((stats.connections, stats.users, stats.rooms), (3, 2, 2));
        let node = stats.nodes.iter().find(|n| n.node_id.as_str() == "n1");
        assert_eq!(node.map(|n| (n.connections, n.users, n.rooms)), Some((3, 2, 2)));
        Ok(())
    }
}
