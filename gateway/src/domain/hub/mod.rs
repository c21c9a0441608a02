//! The hub: this node's one registry of local connections — by topic (a conversation, a user)
//! and by key — and the one place an event meets the sockets it goes to.
//!
//! Protocol adapters register an [`Outlet`] (a renderer: one per Socket.IO namespace, one for
//! Phoenix) and attach each socket as a [`Connection`]. The domain files connections under
//! topics and hands every event the bus brings to [`Hub::deliver`], which filters its audience
//! once (the author of a typing event, a socket whose join is still being answered, a message
//! it already has) and gives each outlet its share to render once and write.
//!
//! The hub also owns which topics the node receives: a topic is subscribed on the bus while it
//! has a local member, and [`Hub::sync`] puts the bus in line with the members after each
//! change, one topic at a time, so a join racing the last leave never leaves the node deaf.

mod contract;
mod keyed;

use keyed::{Keyed, push_small};

pub use contract::{Connection, Gone, Local, Outlet, Refused, Written};

use super::order::{Admitted, SeqOrder, seq_of};
use crate::bus::Bus;
use crate::metrics::METRICS;
use prometheus::{IntCounter, IntGauge};
use shared::event::Message;
use shared::{ConnId, ConversationId, Delivery, Event, Topic, UserId};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

/// A connection's key in the hub, unique on the node.
pub type ConnKey = u64;

/// Most events kept for a socket whose join is being answered; past it the socket is shed.
pub const MAX_PENDING: usize = 1024;

/// A registered outlet and the gauge of its open connections.
struct Registered {
    open: IntGauge,
    connects: IntCounter,
}

/// What a member of a topic receives.
enum State {
    /// Joined and answered: every event, and messages with a seq above `after`.
    Live { after: Option<i64> },
    /// Joined, the answer not written yet: events wait here, in order.
    Pending(Vec<Arc<Delivery>>),
    /// Too many events waited: the connection is shed when its join is answered.
    Overflowed,
}

struct Member {
    conn: Arc<dyn Connection>,
    state: State,
}

#[derive(Default)]
struct Entry {
    members: Keyed<Member>,
    /// Sockets whose user channel hears of this conversation's messages.
    watchers: Keyed<Arc<dyn Connection>>,
    order: SeqOrder,
}

impl Entry {
    fn is_empty(&self) -> bool {
        self.members.is_empty() && self.watchers.is_empty()
    }
}

struct Record {
    conn: Arc<dyn Connection>,
    topics: Vec<Topic>,
    watching: Vec<ConversationId>,
}

/// What a join changed.
#[derive(Debug, Clone, Copy)]
pub struct Filed {
    /// The connection was already a member (the join changes nothing here).
    pub already: bool,
    /// The topic's release order has no baseline yet: read the latest seq and [`Hub::settle`].
    pub unsettled: bool,
}

/// A message and the local sockets watching its conversation.
pub type Watched = (Arc<Delivery>, Vec<Arc<dyn Connection>>);

/// What a delivery left for the domain to do.
#[derive(Default)]
pub struct Delivered {
    /// A gap opened in this conversation's seqs: fill it after the wait.
    pub gap: Option<ConversationId>,
    /// Messages with their watchers on this node (unread counts to compute).
    pub watched: Vec<Watched>,
}

/// The node's local connections.
pub struct Hub {
    bus: Arc<dyn Bus>,
    outlets: RwLock<Vec<Arc<dyn Outlet>>>,
    gauges: RwLock<Vec<Registered>>,
    conns: Mutex<HashMap<ConnKey, Record>>,
    topics: RwLock<HashMap<Topic, Arc<Mutex<Entry>>>>,
    /// The topics the bus was last told to subscribe: changed only under the topic's lock.
    subscribed: Mutex<HashSet<Topic>>,
    /// A lock per topic being synced, so that its syncs run one at a time; dropped when
    /// nobody holds or waits for it (a lock per subscribed topic would cost every user).
    syncing: Mutex<HashMap<Topic, Arc<tokio::sync::Mutex<()>>>>,
    next_key: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Hub {
    /// An empty hub whose topics are received over `bus`.
    pub fn new(bus: Arc<dyn Bus>) -> Self {
        Self {
            bus,
            outlets: RwLock::default(),
            gauges: RwLock::default(),
            conns: Mutex::default(),
            topics: RwLock::default(),
            subscribed: Mutex::default(),
            syncing: Mutex::default(),
            next_key: AtomicU64::new(1),
        }
    }

    /// Registers a renderer; connections name it by the index returned.
    pub fn add_outlet(&self, outlet: Arc<dyn Outlet>) -> usize {
        let (protocol, namespace) = outlet.labels();
        let registered = Registered {
            open: METRICS.connections.with_label_values(&[protocol.label(), namespace]),
            connects: METRICS.connects[protocol.index()].clone(),
        };
        self.gauges
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(registered);
        let mut outlets = self.outlets.write().unwrap_or_else(PoisonError::into_inner);
        outlets.push(outlet);
        outlets.len() - 1
    }

    /// Runs `f` on the gauges of a connection's outlet.
    fn counted(&self, conn: &dyn Connection, f: impl FnOnce(&Registered)) {
        let gauges = self.gauges.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(r) = gauges.get(conn.outlet()) {
            f(r);
        }
    }

    /// A fresh key for a connection about to be attached.
    pub fn local(&self, id: ConnId) -> Local {
        Local {
            key: self.next_key.fetch_add(1, Ordering::Relaxed),
            id,
        }
    }

    /// Files a connection: from now on it hears broadcasts to everyone.
    pub fn attach(&self, local: &Local, conn: Arc<dyn Connection>) {
        self.counted(conn.as_ref(), |r| {
            r.open.inc();
            r.connects.inc();
        });
        let replaced = lock(&self.conns).insert(
            local.key,
            Record {
                conn,
                topics: Vec::new(),
                watching: Vec::new(),
            },
        );
        if let Some(old) = replaced {
            self.counted(old.conn.as_ref(), |r| r.open.dec());
        }
    }

    /// Unfiles a connection everywhere; returns the topics it was the last local member of.
    pub fn detach(&self, key: ConnKey) -> Vec<Topic> {
        let Some(record) = lock(&self.conns).remove(&key) else {
            return Vec::new();
        };
        self.counted(record.conn.as_ref(), |r| r.open.dec());
        let mut emptied = Vec::new();
        let mut topics = self.topics.write().unwrap_or_else(PoisonError::into_inner);
        let watched = record.watching.into_iter().map(Topic::Conversation);
        for topic in record.topics.into_iter().chain(watched) {
            if let Some(entry) = topics.get(&topic) {
                let mut e = lock(entry);
                e.members.remove(key);
                e.watchers.remove(key);
                if e.is_empty() {
                    drop(e);
                    topics.remove(&topic);
                    emptied.push(topic);
                }
            }
        }
        emptied
    }

    /// Files a connection under a topic. A `pending` member keeps the topic's events until
    /// [`Hub::activate`] (its join answer goes first). `cap` bounds a new membership, checked
    /// under the hub's lock: for a user topic, the user's local connections; for a
    /// conversation, the conversations the connection is filed under. Joining again what is
    /// joined always passes.
    pub fn join(&self, key: ConnKey, topic: &Topic, pending: bool, cap: usize) -> Result<Filed, Refused> {
        let mut conns = lock(&self.conns);
        let record = conns.get_mut(&key).ok_or(Gone)?;
        let mut topics = self.topics.write().unwrap_or_else(PoisonError::into_inner);
        let already = topics
            .get(topic)
            .is_some_and(|entry| lock(entry).members.contains_key(key));
        let held = match topic {
            Topic::Conversation(_) => record
                .topics
                .iter()
                .filter(|t| matches!(t, Topic::Conversation(_)))
                .count(),
            _ => topics.get(topic).map_or(0, |entry| lock(entry).members.len()),
        };
        if !already && held >= cap {
            return Err(Refused::Full);
        }
        let entry = topics.entry(topic.clone()).or_default().clone();
        let mut e = lock(&entry);
        if !already {
            push_small(&mut record.topics, topic.clone());
            let state = if pending {
                State::Pending(Vec::new())
            } else {
                State::Live { after: None }
            };
            e.members.insert(
                key,
                Member {
                    conn: record.conn.clone(),
                    state,
                },
            );
        }
        Ok(Filed {
            already,
            unsettled: matches!(topic, Topic::Conversation(_)) && e.order.unsettled(),
        })
    }

    /// A pending member's join was answered: what waited goes out (messages with a seq above
    /// `after` only: the answer had the rest), then it is live.
    pub fn activate(&self, key: ConnKey, topic: &Topic, after: Option<i64>) {
        let Some(entry) = self.entry(topic) else { return };
        let outlets = self.outlets.read().unwrap_or_else(PoisonError::into_inner);
        let mut e = lock(&entry);
        let Some(member) = e.members.get_mut(key) else { return };
        let waiting = match std::mem::replace(&mut member.state, State::Live { after }) {
            State::Pending(waiting) => waiting,
            State::Overflowed => {
                member.conn.shed();
                return;
            }
            live @ State::Live { .. } => {
                member.state = live;
                return;
            }
        };
        let Some(outlet) = outlets.get(member.conn.outlet()) else {
            return;
        };
        let mut written = Written::default();
        for d in waiting {
            if seq_of(&d).is_none_or(|seq| after.is_none_or(|a| seq > a)) {
                written += outlet.push(&d, &[member.conn.as_ref()]);
            }
        }
        written.count();
    }

    /// Takes a connection out of a topic; true when it was the topic's last local member.
    pub fn leave(&self, key: ConnKey, topic: &Topic) -> bool {
        let mut conns = lock(&self.conns);
        if let Some(record) = conns.get_mut(&key) {
            record.topics.retain(|t| t != topic);
        }
        let mut topics = self.topics.write().unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = topics.get(topic) else { return false };
        let mut e = lock(entry);
        if e.members.remove(key).is_none() || !e.is_empty() {
            return false;
        }
        drop(e);
        topics.remove(topic);
        true
    }

    /// Makes a connection's user channel hear of these conversations' messages.
    pub fn watch(&self, key: ConnKey, conversations: &[ConversationId]) -> Result<(), Gone> {
        let mut conns = lock(&self.conns);
        let record = conns.get_mut(&key).ok_or(Gone)?;
        let mut topics = self.topics.write().unwrap_or_else(PoisonError::into_inner);
        for c in conversations {
            if record.watching.contains(c) {
                continue;
            }
            push_small(&mut record.watching, c.clone());
            let entry = topics.entry(Topic::Conversation(c.clone())).or_default();
            lock(entry).watchers.insert(key, record.conn.clone());
        }
        Ok(())
    }

    /// Stops watching; returns the topics left without a local member.
    pub fn unwatch(&self, key: ConnKey, conversations: &[ConversationId]) -> Vec<Topic> {
        let mut conns = lock(&self.conns);
        if let Some(record) = conns.get_mut(&key) {
            record.watching.retain(|c| !conversations.contains(c));
        }
        let mut topics = self.topics.write().unwrap_or_else(PoisonError::into_inner);
        let mut emptied = Vec::new();
        for c in conversations {
            let topic = Topic::Conversation(c.clone());
            let Some(entry) = topics.get(&topic) else { continue };
            let mut e = lock(entry);
            if e.watchers.remove(key).is_some() && e.is_empty() {
                drop(e);
                topics.remove(&topic);
                emptied.push(topic);
            }
        }
        emptied
    }

    /// A removed member: their connections stop hearing the conversation at once (joined or
    /// watching); returns them, for each to leave in its own order, and whether the topic lost
    /// its last local member.
    pub fn expel(&self, conversation: &ConversationId, user: &UserId) -> (Vec<Arc<dyn Connection>>, bool) {
        let topic = Topic::Conversation(conversation.clone());
        let mut conns = lock(&self.conns);
        let mut topics = self.topics.write().unwrap_or_else(PoisonError::into_inner);
        let mut expelled = Vec::new();
        let Some(entry) = topics.get(&topic) else {
            return (expelled, false);
        };
        let mut e = lock(entry);
        let theirs = |c: &Arc<dyn Connection>| c.user() == Some(user);
        let keys: Vec<ConnKey> = e
            .members
            .iter()
            .filter(|(_, m)| theirs(&m.conn))
            .map(|(k, _)| k)
            .chain(e.watchers.iter().filter(|(_, c)| theirs(c)).map(|(k, _)| k))
            .collect();
        for key in keys {
            let member = e.members.remove(key).map(|m| m.conn);
            let watcher = e.watchers.remove(key);
            if let Some(conn) = member.or(watcher) {
                expelled.push(conn);
            }
            if let Some(record) = conns.get_mut(&key) {
                record.topics.retain(|t| *t != topic);
                record.watching.retain(|c| c != conversation);
            }
        }
        let emptied = e.is_empty();
        if emptied {
            drop(e);
            topics.remove(&topic);
        }
        (expelled, emptied)
    }

    /// Every local connection of a user.
    pub fn user_connections(&self, user: &UserId) -> Vec<Arc<dyn Connection>> {
        let Some(entry) = self.entry(&Topic::User(user.clone())) else {
            return Vec::new();
        };
        lock(&entry).members.values().map(|m| m.conn.clone()).collect()
    }

    /// Every local connection.
    pub fn connections(&self) -> Vec<Arc<dyn Connection>> {
        lock(&self.conns).values().map(|r| r.conn.clone()).collect()
    }

    /// Whether a topic has a local member.
    pub fn has_members(&self, topic: &Topic) -> bool {
        *topic == Topic::All || self.entry(topic).is_some()
    }

    fn entry(&self, topic: &Topic) -> Option<Arc<Mutex<Entry>>> {
        self.topics
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(topic)
            .cloned()
    }

    /// Sets the release baseline of a conversation: the latest seq stored when its first
    /// local member joined.
    pub fn settle(&self, conversation: &ConversationId, latest: i64) {
        let Some(entry) = self.entry(&Topic::Conversation(conversation.clone())) else {
            return;
        };
        let outlets = self.outlets.read().unwrap_or_else(PoisonError::into_inner);
        let mut e = lock(&entry);
        let ready = e.order.settle(latest);
        for d in ready {
            fan_out(&mut e, &outlets, &d);
        }
    }

    /// The seq after which a conversation's open gap starts.
    pub fn gap_after(&self, conversation: &ConversationId) -> Option<i64> {
        let entry = self.entry(&Topic::Conversation(conversation.clone()))?;
        lock(&entry).order.gap_after()
    }

    /// Conversations with a local member, and the last seq released in each (`None`: none yet).
    pub fn conversations(&self) -> Vec<(ConversationId, Option<i64>)> {
        let topics = self.topics.read().unwrap_or_else(PoisonError::into_inner);
        topics
            .iter()
            .filter_map(|(topic, entry)| match topic {
                Topic::Conversation(c) => Some((c.clone(), lock(entry).order.last())),
                _ => None,
            })
            .collect()
    }

    /// Fills a conversation's gap with what the store has (see [`SeqOrder::fill`]).
    pub fn fill_gap(&self, conversation: &ConversationId, found: Vec<Message>, last_try: bool) -> Delivered {
        let topic = Topic::Conversation(conversation.clone());
        let Some(entry) = self.entry(&topic) else {
            return Delivered::default();
        };
        let found = found
            .into_iter()
            .map(|m| Arc::new(Delivery::to(topic.clone(), Event::MessageCreated(m))))
            .collect();
        let outlets = self.outlets.read().unwrap_or_else(PoisonError::into_inner);
        let mut e = lock(&entry);
        let ready = e.order.fill(found, last_try);
        let mut delivered = Delivered::default();
        for d in ready {
            delivered.watched.extend(fan_out(&mut e, &outlets, &d));
        }
        delivered
    }

    /// Hands one event to the local connections of its topic.
    pub fn deliver(&self, delivery: Arc<Delivery>) -> Delivered {
        let outlets = self.outlets.read().unwrap_or_else(PoisonError::into_inner);
        if delivery.topic == Topic::All {
            let conns = self.connections();
            push_grouped(&outlets, &delivery, conns.iter().map(|c| c.as_ref()));
            return Delivered::default();
        }
        let Some(entry) = self.entry(&delivery.topic) else {
            return Delivered::default();
        };
        let mut e = lock(&entry);
        let Admitted { ready, gap_opened } = e.order.admit(delivery.clone());
        let mut delivered = Delivered::default();
        if gap_opened && let Topic::Conversation(c) = &delivery.topic {
            delivered.gap = Some(c.clone());
        }
        for d in ready {
            delivered.watched.extend(fan_out(&mut e, &outlets, &d));
        }
        delivered
    }

    /// Gives each outlet its watchers of a message, with their unread counts.
    pub fn push_watched(&self, message: &Message, to: &[(Arc<dyn Connection>, i64)]) {
        let outlets = self.outlets.read().unwrap_or_else(PoisonError::into_inner);
        for (n, outlet) in outlets.iter().enumerate() {
            let group: Vec<(&dyn Connection, i64)> = to
                .iter()
                .filter(|(c, _)| c.outlet() == n)
                .map(|(c, unread)| (c.as_ref(), *unread))
                .collect();
            if !group.is_empty() {
                outlet.push_watched(message, &group).count();
            }
        }
    }

    /// Puts the bus in line with the local members of `topic`. Serialized per topic: whatever
    /// raced, the last sync reads the final membership.
    pub async fn sync(&self, topic: &Topic) {
        if *topic == Topic::All {
            return;
        }
        let turn = lock(&self.syncing).entry(topic.clone()).or_default().clone();
        let held = turn.lock().await;
        let subscribed = lock(&self.subscribed).contains(topic);
        let wanted = self.has_members(topic);
        if wanted != subscribed {
            let done = if wanted {
                self.bus.subscribe(topic).await
            } else {
                self.bus.unsubscribe(topic).await
            };
            match done {
                Ok(()) if wanted => {
                    lock(&self.subscribed).insert(topic.clone());
                }
                Ok(()) => {
                    lock(&self.subscribed).remove(topic);
                }
                Err(e) => tracing::warn!(?topic, error = %e, "bus subscription not changed"),
            }
        }
        drop(held);
        let mut syncing = lock(&self.syncing);
        // Only this sync holds it (the map's copy and ours): nobody waits to use it.
        if syncing.get(topic).is_some_and(|t| Arc::strong_count(t) == 2) {
            syncing.remove(topic);
        }
    }
}

/// Writes one released event to a topic's members (waiting ones keep it); returns the
/// watchers to tell when it is a message.
fn fan_out(e: &mut Entry, outlets: &[Arc<dyn Outlet>], d: &Arc<Delivery>) -> Option<Watched> {
    let except = d.except_user.as_ref();
    let seq = seq_of(d);
    for m in e.members.values_mut() {
        if let State::Pending(waiting) = &mut m.state {
            if except.is_some() && m.conn.user() == except {
                continue;
            }
            if waiting.len() < MAX_PENDING {
                waiting.push(d.clone());
            } else {
                m.state = State::Overflowed;
            }
        }
    }
    let live = e.members.values().filter(|m| match m.state {
        State::Live { after } => {
            (except.is_none() || m.conn.user() != except) && seq.is_none_or(|s| after.is_none_or(|a| s > a))
        }
        _ => false,
    });
    push_grouped(outlets, d, live.map(|m| m.conn.as_ref()));
    if seq.is_some() && !e.watchers.is_empty() {
        return Some((d.clone(), e.watchers.values().cloned().collect()));
    }
    None
}

/// Gives each outlet its share of `conns`.
fn push_grouped<'a>(outlets: &[Arc<dyn Outlet>], d: &Delivery, conns: impl Iterator<Item = &'a dyn Connection>) {
    let mut groups: Vec<Vec<&dyn Connection>> = vec![Vec::new(); outlets.len()];
    for c in conns {
        if let Some(group) = groups.get_mut(c.outlet()) {
            group.push(c);
        }
    }
    let mut written = Written::default();
    for (outlet, group) in outlets.iter().zip(&groups) {
        if !group.is_empty() {
            written += outlet.push(d, group);
        }
    }
    written.count();
}

#[cfg(test)]
mod tests;
