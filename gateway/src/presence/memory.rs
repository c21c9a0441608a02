//! In-process presence of a single node.

use super::{
    Change, ClusterStats, ConnectionEntry, ConversationPage, Disconnected, NodeStats, Presence, PresenceError,
    RosterEntry, UserPage, UserPresence,
};
use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use shared::{ConnId, ConversationId, NodeId, Status, UserId};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
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
    rooms: HashMap<ConversationId, BTreeSet<UserId>>,
    /// Per conversation, its joined connections keyed in the order a roster lists them, with
    /// the time each joined.
    rosters: HashMap<ConversationId, BTreeMap<(UserId, ConnId), DateTime<Utc>>>,
    last_seen: HashMap<UserId, DateTime<Utc>>,
}

struct ConnState {
    user: UserId,
    /// Conversation → when this connection joined it.
    joined: HashMap<ConversationId, DateTime<Utc>>,
}

#[derive(Default)]
struct UserState {
    conns: BTreeSet<ConnId>,
    status: Status,
    circles: HashSet<String>,
    joined: HashMap<ConversationId, usize>,
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

    fn unroster(&mut self, conversation: &ConversationId, user: &UserId, conn: &ConnId) {
        if let Some(roster) = self.rosters.get_mut(conversation) {
            roster.remove(&(user.clone(), conn.clone()));
            if roster.is_empty() {
                self.rosters.remove(conversation);
            }
        }
    }
}

#[async_trait]
impl Presence for MemoryPresence {
    async fn connect(&self, entry: ConnectionEntry) -> Result<bool, PresenceError> {
        let mut s = self.state();
        let arrived = !s.users.contains_key(&entry.user);
        s.users
            .entry(entry.user.clone())
            .or_default()
            .conns
            .insert(entry.conn.clone());
        for circle in entry.circles {
            s.add_circle(&entry.user, circle);
        }
        s.conns.insert(
            entry.conn,
            ConnState {
                user: entry.user,
                joined: HashMap::new(),
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
        let mut emptied_rooms = Vec::new();
        let Some(u) = s.users.get_mut(&c.user) else {
            return Ok(None);
        };
        let was_visible = u.visible();
        let status = u.status;
        for conv in c.joined.keys() {
            if let Some(n) = u.joined.get_mut(conv) {
                *n -= 1;
                if *n == 0 {
                    u.joined.remove(conv);
                    left.push(conv.clone());
                }
            }
        }
        u.conns.remove(conn);
        let last_connection = u.conns.is_empty();
        for conv in &left {
            if let Some(room) = s.rooms.get_mut(conv) {
                room.remove(&c.user);
                if room.is_empty() {
                    emptied_rooms.push(conv.clone());
                }
            }
        }
        for conv in emptied_rooms {
            s.rooms.remove(&conv);
        }
        for conv in c.joined.keys() {
            s.unroster(conv, &c.user, conn);
        }
        if last_connection {
            s.remember_last_seen(&c.user, Utc::now());
        }
        Ok(Some(Disconnected {
            user: c.user,
            last_connection,
            joined: c.joined.into_keys().collect(),
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
        if c.joined.contains_key(conversation) {
            return Ok(Change {
                status: s.status(&user),
                ..Change::default()
            });
        }
        // Redis keeps milliseconds; so does this, for both to list the same `since`.
        let since = at.trunc_subsecs(3);
        c.joined.insert(conversation.clone(), since);
        let first = match s.users.get_mut(&user) {
            Some(u) => {
                let n = u.joined.entry(conversation.clone()).or_insert(0);
                *n += 1;
                *n == 1
            }
            None => false,
        };
        s.rooms.entry(conversation.clone()).or_default().insert(user.clone());
        s.rosters
            .entry(conversation.clone())
            .or_default()
            .insert((user.clone(), conn.clone()), since);
        s.add_circle(&user, conversation.0.clone());
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
        if c.joined.remove(conversation).is_none() {
            return Ok(Change {
                status: s.status(&user),
                ..Change::default()
            });
        }
        let last = match s.users.get_mut(&user) {
            Some(u) => match u.joined.get_mut(conversation) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    u.joined.remove(conversation);
                    true
                }
                None => false,
            },
            None => false,
        };
        if last && let Some(room) = s.rooms.get_mut(conversation) {
            room.remove(&user);
            if room.is_empty() {
                s.rooms.remove(conversation);
            }
        }
        s.unroster(conversation, &user, conn);
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
        let mut users: Vec<&UserId> = s
            .users
            .iter()
            .filter(|(id, u)| u.visible() && after.is_none_or(|a| id.as_str() > a))
            .map(|(id, _)| id)
            .collect();
        users.sort_unstable();
        let more = users.len() > limit;
        users.truncate(limit);
        Ok(UserPage {
            next_cursor: more.then(|| users.last().map(|u| u.0.clone())).flatten(),
            users: users.into_iter().cloned().collect(),
        })
    }

    async fn active_conversations(&self, after: Option<&str>, limit: usize) -> Result<ConversationPage, PresenceError> {
        let s = self.state();
        let mut rooms: Vec<&ConversationId> = s
            .rooms
            .keys()
            .filter(|id| after.is_none_or(|a| id.as_str() > a))
            .collect();
        rooms.sort_unstable();
        let more = rooms.len() > limit;
        rooms.truncate(limit);
        Ok(ConversationPage {
            next_cursor: more.then(|| rooms.last().map(|c| c.0.clone())).flatten(),
            conversations: rooms.into_iter().cloned().collect(),
        })
    }

    async fn conversation_online(&self, conversation: &ConversationId) -> Result<Vec<UserId>, PresenceError> {
        let s = self.state();
        Ok(s.rooms
            .get(conversation)
            .into_iter()
            .flatten()
            .filter(|u| s.users.get(*u).is_some_and(UserState::visible))
            .cloned()
            .collect())
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
            rooms: s.rooms.len(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::tests::conformance;

    #[tokio::test]
    async fn memory_presence_conforms() -> Result<(), PresenceError> {
        conformance(&MemoryPresence::new("n1".into())).await
    }
}
