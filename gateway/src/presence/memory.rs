//! In-process presence of a single node.

use super::{
    Change, ClusterStats, ConnectionEntry, ConversationPage, Disconnected, NodeStats, Presence, PresenceError,
    RosterEntry, UserPage, UserPresence,
};
use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use shared::{ConnId, ConversationId, NodeId, Status, UserId};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Last-seen times kept for users who left; beyond this many, the oldest are forgotten.
const LAST_SEEN_CAP: usize = 100_000;

/// Presence held in this process, behind one short-held lock.
pub struct MemoryPresence {
    node_id: NodeId,
    started_at: DateTime<Utc>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    conns: HashMap<ConnId, ConnState>,
    users: HashMap<UserId, UserState>,
    circles: HashMap<String, HashSet<UserId>>,
    /// Per conversation, its joined connections keyed in the order a roster lists them, with
    /// the time each joined. The one record of who is joined where: a user is joined to a
    /// conversation while one of their connections is in its roster (no second index to keep
    /// per connection).
    rosters: HashMap<ConversationId, Roster>,
    last_seen: HashMap<UserId, DateTime<Utc>>,
}

type Roster = BTreeMap<(UserId, ConnId), DateTime<Utc>>;

struct ConnState {
    user: UserId,
    /// Conversation → when this connection joined it; a few at most, mostly one: a vector
    /// costs a fraction of a map's memory.
    joined: Vec<(ConversationId, DateTime<Utc>)>,
}

#[derive(Default)]
struct UserState {
    /// A user's connections: a few at most (`--max-connections-per-user` per node).
    conns: Vec<ConnId>,
    status: Status,
    circles: HashSet<String>,
}

/// Appends to a vector that most often holds one item: the first takes room for one only.
fn push_small<T>(v: &mut Vec<T>, item: T) {
    if v.capacity() == 0 {
        v.reserve_exact(1);
    }
    v.push(item);
}

/// Whether `user` has a connection in `roster`: its keys start with the user.
fn has_user(roster: &Roster, user: &UserId) -> bool {
    let from = (user.clone(), ConnId::from(String::new()));
    roster
        .range((Bound::Included(from), Bound::Unbounded))
        .next()
        .is_some_and(|((u, _), _)| u == user)
}

impl UserState {
    fn visible(&self) -> bool {
        !self.conns.is_empty() && self.status != Status::Offline
    }
}

impl MemoryPresence {
    /// Presence for the single node `node_id`.
    pub fn new(node_id: NodeId) -> Self {
        Self {
            node_id,
            started_at: Utc::now(),
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    fn add_circle(&mut self, user: &UserId, circle: String) {
        if let Some(u) = self.users.get_mut(user)
            && u.circles.insert(circle.clone())
        {
            self.circles.entry(circle).or_default().insert(user.clone());
        }
    }

    fn contacts(&self, user: &UserId) -> Vec<UserId> {
        let Some(u) = self.users.get(user) else {
            return Vec::new();
        };
        let mut out: BTreeSet<&UserId> = BTreeSet::new();
        for circle in &u.circles {
            for other in self.circles.get(circle).into_iter().flatten() {
                if other != user && self.users.get(other).is_some_and(|o| !o.conns.is_empty()) {
                    out.insert(other);
                }
            }
        }
        out.into_iter().cloned().collect()
    }

    fn remember_last_seen(&mut self, user: &UserId, at: DateTime<Utc>) {
        if self.last_seen.len() >= LAST_SEEN_CAP
            && !self.last_seen.contains_key(user)
            && let Some(oldest) = self.last_seen.iter().min_by_key(|(_, t)| **t).map(|(u, _)| u.clone())
        {
            self.last_seen.remove(&oldest);
        }
        self.last_seen.insert(user.clone(), at);
    }

    fn status(&self, user: &UserId) -> Status {
        self.users.get(user).map(|u| u.status).unwrap_or_default()
    }

    /// Takes a connection out of a roster; true when that was the user's last connection in it.
    fn unroster(&mut self, conversation: &ConversationId, user: &UserId, conn: &ConnId) -> bool {
        let Some(roster) = self.rosters.get_mut(conversation) else {
            return false;
        };
        if roster.remove(&(user.clone(), conn.clone())).is_none() {
            return false;
        }
        let last = !has_user(roster, user);
        if roster.is_empty() {
            self.rosters.remove(conversation);
        }
        last
    }
}

#[async_trait]
impl Presence for MemoryPresence {
    async fn connect(&self, entry: ConnectionEntry) -> Result<bool, PresenceError> {
        let mut s = self.state();
        let arrived = !s.users.contains_key(&entry.user);
        let conns = &mut s.users.entry(entry.user.clone()).or_default().conns;
        if !conns.contains(&entry.conn) {
            push_small(conns, entry.conn.clone());
        }
        for circle in entry.circles {
            s.add_circle(&entry.user, circle);
        }
        s.conns.insert(
            entry.conn,
            ConnState {
                user: entry.user,
                joined: Vec::new(),
            },
        );
        Ok(arrived)
    }

    async fn disconnect(&self, conn: &ConnId) -> Result<Option<Disconnected>, PresenceError> {
        let mut s = self.state();
        let Some(c) = s.conns.remove(conn) else {
            return Ok(None);
        };
        let mut left = Vec::new();
        let Some(u) = s.users.get_mut(&c.user) else {
            return Ok(None);
        };
        let was_visible = u.visible();
        let status = u.status;
        u.conns.retain(|other| other != conn);
        let last_connection = u.conns.is_empty();
        for (conv, _) in &c.joined {
            if s.unroster(conv, &c.user, conn) {
                left.push(conv.clone());
            }
        }
        if last_connection {
            s.remember_last_seen(&c.user, Utc::now());
        }
        Ok(Some(Disconnected {
            user: c.user,
            last_connection,
            joined: c.joined.into_iter().map(|(conv, _)| conv).collect(),
            left,
            was_visible,
            status,
        }))
    }

    async fn join(
        &self,
        conn: &ConnId,
        conversation: &ConversationId,
        at: DateTime<Utc>,
    ) -> Result<Change, PresenceError> {
        let mut s = self.state();
        let Some(c) = s.conns.get_mut(conn) else {
            return Ok(Change::default());
        };
        let user = c.user.clone();
        if c.joined.iter().any(|(conv, _)| conv == conversation) {
            return Ok(Change {
                status: s.status(&user),
                ..Change::default()
            });
        }
        // Redis keeps milliseconds; so does this, for both to list the same `since`.
        let since = at.trunc_subsecs(3);
        push_small(&mut c.joined, (conversation.clone(), since));
        let roster = s.rosters.entry(conversation.clone()).or_default();
        let first = !has_user(roster, &user);
        roster.insert((user.clone(), conn.clone()), since);
        s.add_circle(&user, conversation.0.to_string());
        Ok(Change {
            connection: true,
            user: first,
            status: s.status(&user),
        })
    }

    async fn leave(&self, conn: &ConnId, conversation: &ConversationId) -> Result<Change, PresenceError> {
        let mut s = self.state();
        let Some(c) = s.conns.get_mut(conn) else {
            return Ok(Change::default());
        };
        let user = c.user.clone();
        let Some(at) = c.joined.iter().position(|(conv, _)| conv == conversation) else {
            return Ok(Change {
                status: s.status(&user),
                ..Change::default()
            });
        };
        c.joined.swap_remove(at);
        let last = s.unroster(conversation, &user, conn);
        Ok(Change {
            connection: true,
            user: last,
            status: s.status(&user),
        })
    }

    async fn set_status(&self, user: &UserId, status: Status) -> Result<Status, PresenceError> {
        let mut s = self.state();
        let Some(u) = s.users.get_mut(user).filter(|u| !u.conns.is_empty()) else {
            return Ok(Status::Online);
        };
        let previous = std::mem::replace(&mut u.status, status);
        if status == Status::Offline {
            s.remember_last_seen(user, Utc::now());
        }
        Ok(previous)
    }

    async fn user(&self, user: &UserId) -> Result<UserPresence, PresenceError> {
        let s = self.state();
        Ok(match s.users.get(user).filter(|u| u.visible()) {
            Some(u) => UserPresence {
                user_id: user.clone(),
                online: true,
                status: u.status,
                last_seen: None,
                connections: u.conns.len(),
            },
            None => UserPresence {
                user_id: user.clone(),
                online: false,
                status: Status::Offline,
                last_seen: s.last_seen.get(user).copied(),
                connections: 0,
            },
        })
    }

    async fn connections(&self, user: &UserId) -> Result<usize, PresenceError> {
        Ok(self.state().users.get(user).map_or(0, |u| u.conns.len()))
    }

    async fn settle_offline(&self, user: &UserId) -> Result<Option<Vec<UserId>>, PresenceError> {
        let mut s = self.state();
        match s.users.get(user) {
            Some(u) if u.conns.is_empty() => {}
            _ => return Ok(None),
        }
        let contacts = s.contacts(user);
        if let Some(u) = s.users.remove(user) {
            for circle in u.circles {
                if let Some(members) = s.circles.get_mut(&circle) {
                    members.remove(user);
                    if members.is_empty() {
                        s.circles.remove(&circle);
                    }
                }
            }
        }
        Ok(Some(contacts))
    }

    async fn contacts(&self, user: &UserId) -> Result<Vec<UserId>, PresenceError> {
        Ok(self.state().contacts(user))
    }

    async fn online_users(&self, after: Option<&str>, limit: usize) -> Result<UserPage, PresenceError> {
        let s = self.state();
        let visible = s.users.iter().filter(|(_, u)| u.visible()).map(|(id, _)| id);
        let (users, next_cursor) = page_after(visible, UserId::as_str, after, limit);
        Ok(UserPage { users, next_cursor })
    }

    async fn active_conversations(&self, after: Option<&str>, limit: usize) -> Result<ConversationPage, PresenceError> {
        let s = self.state();
        let (conversations, next_cursor) = page_after(s.rosters.keys(), ConversationId::as_str, after, limit);
        Ok(ConversationPage {
            conversations,
            next_cursor,
        })
    }

    async fn conversation_online(&self, conversation: &ConversationId) -> Result<Vec<UserId>, PresenceError> {
        let s = self.state();
        let mut online: Vec<UserId> = Vec::new();
        // A roster's keys are in user order: a user's connections are next to each other.
        for (user, _) in s.rosters.get(conversation).into_iter().flat_map(BTreeMap::keys) {
            if online.last() != Some(user) && s.users.get(user).is_some_and(UserState::visible) {
                online.push(user.clone());
            }
        }
        Ok(online)
    }

    async fn roster(&self, conversation: &ConversationId) -> Result<Vec<RosterEntry>, PresenceError> {
        let s = self.state();
        Ok(s.rosters
            .get(conversation)
            .into_iter()
            .flatten()
            .filter_map(|((user, conn), since)| {
                let u = s.users.get(user).filter(|u| u.visible())?;
                Some(RosterEntry {
                    conn_id: conn.clone(),
                    user_id: user.clone(),
                    status: u.status,
                    since: *since,
                })
            })
            .collect())
    }

    async fn user_roster(&self, user: &UserId) -> Result<Vec<(ConversationId, RosterEntry)>, PresenceError> {
        let s = self.state();
        let Some(u) = s.users.get(user) else {
            return Ok(Vec::new());
        };
        let mut out: Vec<(ConversationId, RosterEntry)> = u
            .conns
            .iter()
            .filter_map(|conn| s.conns.get(conn).map(|c| (conn, c)))
            .flat_map(|(conn, c)| {
                c.joined.iter().map(move |(conv, since)| {
                    let entry = RosterEntry {
                        conn_id: conn.clone(),
                        user_id: user.clone(),
                        status: u.status,
                        since: *since,
                    };
                    (conv.clone(), entry)
                })
            })
            .collect();
        out.sort_by(|(a, x), (b, y)| (a, &x.conn_id).cmp(&(b, &y.conn_id)));
        Ok(out)
    }

    async fn stats(&self) -> Result<ClusterStats, PresenceError> {
        let s = self.state();
        let node = NodeStats {
            node_id: self.node_id.clone(),
            connections: s.conns.len(),
            users: s.users.values().filter(|u| !u.conns.is_empty()).count(),
            rooms: s.rosters.len(),
            started_at: self.started_at,
        };
        Ok(ClusterStats {
            connections: node.connections,
            users: node.users,
            rooms: node.rooms,
            nodes: vec![node],
        })
    }
}

/// One page of ids sorted by id (`key`), those after `after`, at most `limit`; the cursor of
/// the next page (the last id listed) when more follow.
fn page_after<'a, T: Ord + Clone + 'a>(
    ids: impl Iterator<Item = &'a T>,
    key: impl Fn(&T) -> &str,
    after: Option<&str>,
    limit: usize,
) -> (Vec<T>, Option<String>) {
    let mut page: Vec<&T> = ids.filter(|id| after.is_none_or(|a| key(id) > a)).collect();
    page.sort_unstable();
    let more = page.len() > limit;
    page.truncate(limit);
    let next = more.then(|| page.last().map(|id| key(id).to_owned())).flatten();
    (page.into_iter().cloned().collect(), next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::tests::conformance;

    #[tokio::test]
    async fn memory_presence_conforms() -> Result<(), PresenceError> {
        conformance(&MemoryPresence::new("n1".into())).await
    }
}
