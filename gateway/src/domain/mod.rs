//! The domain service owns the rules: access, presence status, typing expiry, who hears about
//! whom. It knows nothing of sockets or wire formats: adapters call it with commands and render
//! the events it publishes on the bus.

mod access;
mod cluster;
mod connections;
mod conversations;
mod departures;
mod error;
pub mod hub;
mod messages;
mod order;
mod rate;
mod receive;
mod typing;

pub use access::{Access, Memberships};
pub use cluster::{
    Health, MAX_PRESENCE_PAGE, MAX_ROOMS_PAGE, NodeView, Nodes, PresencePage, REPORT_EVERY, Room, RoomPage,
};
pub use connections::{Joined, Live, MAX_MISSED};
pub use conversations::ConversationView;
pub use error::DomainError;
pub use hub::{ConnKey, Connection, Local, Outlet, Written};
pub use messages::{HistoryRequest, MAX_ATTACHMENTS, SendRequest, Sent};
pub use rate::RateLimiter;
pub use typing::{TYPING_TIMEOUT, TypingTimers};
// What the domain answers with, named here for the adapters (they import no backend module).
pub use crate::presence::{ClusterStats, NodeStats, UserPage, UserPresence};
pub use crate::store::{Conversation, HistoryPage};

use crate::auth::Identity;
use crate::bus::Bus;
use crate::config::{AccessMode, Limits, RateLimit};
use crate::presence::Presence;
use crate::store::{ConversationStore, MessageStore};
use chrono::{DateTime, Utc};
use shared::event::{Direct, Notification, PresenceInfo, RosterDiff, RosterEntry, Typing, UserRef};
use shared::{ConnId, ConversationId, Delivery, Event, Status, Topic, UserId};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What the REST API may ask for at most in one page of users.
pub const MAX_USERS_PAGE: usize = 1000;

/// The backends a domain works with.
pub struct Backends {
    /// Carries events between nodes.
    pub bus: Arc<dyn Bus>,
    /// Who is connected where.
    pub presence: Arc<dyn Presence>,
    /// Conversations and members.
    pub conversations: Arc<dyn ConversationStore>,
    /// Messages, receipts and reactions.
    pub messages: Arc<dyn MessageStore>,
}

/// Tunable rules.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Who may use a conversation.
    pub access: AccessMode,
    /// Delay before announcing a user offline.
    pub offline_grace: Duration,
    /// Largest stored message (content and metadata), in bytes.
    pub max_message_bytes: u64,
    /// Per-client bounds: pages, rooms, connections, rates.
    pub limits: Limits,
}

/// A notification as a caller asks for it.
#[derive(Debug, Clone, Default)]
pub struct NotificationRequest {
    /// Free-form kind.
    pub kind: Option<String>,
    /// Title.
    pub title: Option<String>,
    /// Body.
    pub body: Option<String>,
    /// Arbitrary JSON.
    pub data: Option<serde_json::Value>,
}

/// The domain service of one node.
pub struct Domain {
    access: Access,
    hub: Arc<hub::Hub>,
    /// Messages for the watcher task (unread counts).
    watched: tokio::sync::mpsc::Sender<hub::Watched>,
    bus: Arc<dyn Bus>,
    presence: Arc<dyn Presence>,
    conversations: Arc<dyn ConversationStore>,
    messages: Arc<dyn MessageStore>,
    in_doubt: messages::InDoubt,
    typing: TypingTimers,
    rules: Rules,
    user_rates: rate::UserBuckets,
    rest_rates: rate::UserBuckets,
    reports: cluster::Reports,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Domain {
    /// A domain over its backends; its background tasks live in `tasks` and stop with
    /// `shutdown`.
    pub fn new(backends: Backends, rules: Rules, tasks: TaskTracker, shutdown: CancellationToken) -> Self {
        let Backends {
            bus,
            presence,
            conversations,
            messages,
        } = backends;
        let typing = TypingTimers::spawn(bus.clone(), shutdown.clone(), &tasks);
        let hub = Arc::new(hub::Hub::new(bus.clone()));
        let (watched, queue) = tokio::sync::mpsc::channel(receive::WATCH_QUEUE);
        tasks.spawn(receive::tell_watchers(
            hub.clone(),
            messages.clone(),
            queue,
            shutdown.clone(),
        ));
        let domain = Self {
            access: Access::new(rules.access, conversations.clone()),
            hub,
            watched,
            bus,
            presence,
            conversations,
            messages,
            in_doubt: messages::InDoubt::default(),
            typing,
            rules,
            user_rates: rate::UserBuckets::new(rules.limits.user_rate_limit),
            rest_rates: rate::UserBuckets::new(rules.limits.rest_rate_limit),
            reports: cluster::Reports::default(),
            tasks,
            shutdown,
        };
        domain.presence.set_offline_grace(rules.offline_grace);
        if let Some(every) = domain.presence.heartbeat_interval() {
            departures::spawn(
                domain.presence.clone(),
                domain.bus.clone(),
                every,
                &domain.tasks,
                domain.shutdown.clone(),
            );
        }
        domain
    }

    /// Registers a protocol adapter's renderer; its connections name it by the index returned.
    pub fn add_outlet(&self, outlet: Arc<dyn Outlet>) -> usize {
        self.hub.add_outlet(outlet)
    }

    /// Runs `task` among the node's tasks: a stopping node waits for it (within a bound)
    /// instead of leaving it detached.
    pub fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    /// Runs `task` among the node's tasks until it ends or the node stops: for an adapter's
    /// periodic upkeep.
    pub fn spawn_until_shutdown<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                () = task => {}
                () = shutdown.cancelled() => {}
            }
        });
    }

    /// A new connection's inbound limit: its own bucket (`own`, the adapter's), and its
    /// user's, which all their connections share and which outlives each of them.
    pub fn rate_limiter(&self, own: RateLimit, user: Option<&UserId>) -> RateLimiter {
        self.user_rates.limiter(own, user)
    }

    /// One REST request of a user token: `rate_limited` beyond `--rest-rate-limit`.
    pub fn allow_rest(&self, user: &UserId) -> Result<(), DomainError> {
        if self.rest_rates.allow(user) {
            Ok(())
        } else {
            Err(DomainError::RateLimited)
        }
    }

    /// Local connections, for the drain.
    pub fn local_connections(&self) -> Vec<Arc<dyn Connection>> {
        self.hub.connections()
    }

    /// A typing start or stop, shown to the others in the conversation.
    pub async fn typing(
        &self,
        who: &Identity,
        conversation: &ConversationId,
        is_typing: bool,
    ) -> Result<(), DomainError> {
        self.access.check(Some(who), conversation).await?;
        if is_typing {
            self.typing.start(conversation.clone(), who.user_id.clone());
        } else {
            self.typing.cancel(conversation.clone(), who.user_id.clone());
        }
        let event = Event::Typing(Typing {
            conversation_id: conversation.clone(),
            user_id: who.user_id.clone(),
            is_typing,
        });
        let delivery = Delivery::to(Topic::Conversation(conversation.clone()), event).except(who.user_id.clone());
        self.bus.publish(delivery).await?;
        Ok(())
    }

    /// Sets the caller's status; `offline` makes them invisible while connected.
    pub async fn set_status(&self, who: &Identity, status: Status) -> Result<Status, DomainError> {
        let previous = self.presence.set_status(&who.user_id, status).await?;
        let info = PresenceInfo {
            user_id: who.user_id.clone(),
            status,
            last_seen: (status == Status::Offline).then(Utc::now),
        };
        self.tell_contacts(&who.user_id, Event::PresenceChanged(info)).await?;
        if previous != status {
            // In presence lists, each of the user's connections leaves with its old status and
            // joins with the new one.
            let mut by_conversation: Vec<(ConversationId, Vec<RosterEntry>, Vec<RosterEntry>)> = Vec::new();
            for (conversation, entry) in self.presence.user_roster(&who.user_id).await? {
                let old = RosterEntry {
                    status: previous,
                    ..entry.clone()
                };
                let new = RosterEntry { status, ..entry };
                match by_conversation.iter_mut().find(|(c, _, _)| *c == conversation) {
                    Some((_, joins, leaves)) => {
                        joins.push(new);
                        leaves.push(old);
                    }
                    None => by_conversation.push((conversation, vec![new], vec![old])),
                }
            }
            for (conversation, joins, leaves) in by_conversation {
                publish_roster(self.bus.as_ref(), &conversation, joins, leaves).await;
            }
        }
        Ok(status)
    }

    async fn tell_contacts(&self, user: &UserId, event: Event) -> Result<(), DomainError> {
        let deliveries = (self.presence.contacts(user).await?)
            .into_iter()
            .map(|contact| Delivery::to(Topic::User(contact), event.clone()))
            .collect();
        departures::publish_all(self.bus.as_ref(), deliveries).await?;
        Ok(())
    }

    /// Users online in a conversation; `who` is `None` for a server caller, which sees all.
    pub async fn conversation_online(
        &self,
        who: Option<&Identity>,
        conversation: &ConversationId,
    ) -> Result<Vec<UserId>, DomainError> {
        self.access.check(who, conversation).await?;
        Ok(self.presence.conversation_online(conversation).await?)
    }

    /// The visible connections joined to a conversation, cluster-wide: one entry per connection
    /// (a presence list); `who` is `None` for a server caller.
    pub async fn roster(
        &self,
        who: Option<&Identity>,
        conversation: &ConversationId,
    ) -> Result<Vec<RosterEntry>, DomainError> {
        self.access.check(who, conversation).await?;
        Ok(self.presence.roster(conversation).await?)
    }

    /// An event to every connection of a user; `not_found` when they are connected nowhere.
    pub async fn send_to_user(&self, user: &UserId, event: String, data: serde_json::Value) -> Result<(), DomainError> {
        self.require_connected(user).await?;
        self.bus
            .publish(Delivery::to(
                Topic::User(user.clone()),
                Event::Direct(Direct { event, data }),
            ))
            .await?;
        Ok(())
    }

    /// A notification to every connection of a user; `not_found` when they are connected nowhere.
    pub async fn notify(&self, user: &UserId, request: NotificationRequest) -> Result<Notification, DomainError> {
        self.require_connected(user).await?;
        let notification = Notification {
            id: uuid::Uuid::new_v4().to_string(),
            kind: request.kind,
            title: request.title,
            body: request.body,
            data: request.data,
            at: Utc::now(),
        };
        let event = Event::Notification(notification.clone());
        self.bus.publish(Delivery::to(Topic::User(user.clone()), event)).await?;
        Ok(notification)
    }

    /// An event to every connection.
    pub async fn broadcast(&self, event: String, data: serde_json::Value) -> Result<(), DomainError> {
        self.bus
            .publish(Delivery::to(Topic::All, Event::Direct(Direct { event, data })))
            .await?;
        Ok(())
    }

    /// An event to every connection joined to a conversation; nothing is stored.
    pub async fn emit_to_conversation(
        &self,
        conversation: &ConversationId,
        event: String,
        data: serde_json::Value,
    ) -> Result<(), DomainError> {
        let topic = Topic::Conversation(conversation.clone());
        self.bus
            .publish(Delivery::to(topic, Event::Direct(Direct { event, data })))
            .await?;
        Ok(())
    }

    /// Closes every connection of a user; returns how many there were.
    pub async fn disconnect_user(&self, user: &UserId) -> Result<usize, DomainError> {
        let connections = self.presence.connections(user).await?;
        if connections > 0 {
            let event = Event::Disconnect(UserRef { user_id: user.clone() });
            self.bus.publish(Delivery::to(Topic::User(user.clone()), event)).await?;
        }
        Ok(connections)
    }

    async fn require_connected(&self, user: &UserId) -> Result<(), DomainError> {
        if self.presence.connections(user).await? == 0 {
            return Err(DomainError::NotFound("User not connected".into()));
        }
        Ok(())
    }

    /// A user's presence as others see it.
    pub async fn presence_of(&self, user: &UserId) -> Result<UserPresence, DomainError> {
        Ok(self.presence.user(user).await?)
    }

    /// A page of online users.
    pub async fn online_users(&self, cursor: Option<&str>, limit: usize) -> Result<UserPage, DomainError> {
        Ok(self
            .presence
            .online_users(cursor, limit.clamp(1, MAX_USERS_PAGE))
            .await?)
    }

    /// Per-node and total counts.
    pub async fn stats(&self) -> Result<ClusterStats, DomainError> {
        Ok(self.presence.stats().await?)
    }
}

pub(super) async fn publish_member_left(bus: &dyn Bus, conversation: ConversationId, user: UserId) {
    if let Err(e) = bus.publish(departures::member_left(conversation, user)).await {
        tracing::debug!(error = %e, "member left not published");
    }
}

pub(super) fn roster_entry(conn: &ConnId, user: &UserId, status: Status, since: DateTime<Utc>) -> RosterEntry {
    RosterEntry {
        user_id: user.clone(),
        conn_id: conn.clone(),
        status,
        since,
    }
}

/// Publishes a change of a conversation's presence list. Invisible users are not listed, so
/// their entries are left out of both halves.
pub(super) async fn publish_roster(
    bus: &dyn Bus,
    conversation: &ConversationId,
    mut joins: Vec<RosterEntry>,
    mut leaves: Vec<RosterEntry>,
) {
    joins.retain(|e| e.status != Status::Offline);
    leaves.retain(|e| e.status != Status::Offline);
    if joins.is_empty() && leaves.is_empty() {
        return;
    }
    let event = Event::RosterChanged(RosterDiff {
        conversation_id: conversation.clone(),
        joins,
        leaves,
    });
    if let Err(e) = bus
        .publish(Delivery::to(Topic::Conversation(conversation.clone()), event))
        .await
    {
        tracing::debug!(error = %e, "presence list change not published");
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::auth::ConversationClaim;
    use crate::bus::MemoryBus;
    use crate::bus::tests::Recorder;
    use crate::config::AccessMode;
    use crate::presence::MemoryPresence;
    use crate::store::{HistoryPage, HistoryQuery, SqlStore, StoreError};
    use tokio::sync::mpsc;

    /// A socket that is only filed.
    struct Quiet(UserId);

    impl Connection for Quiet {
        fn outlet(&self) -> usize {
            0
        }
        fn user(&self) -> Option<&UserId> {
            Some(&self.0)
        }
        fn kick(&self) {}
        fn shed(&self) {}
        fn removed(&self, _: &ConversationId) {}
    }

    /// A domain in `claims` mode over `bus` and `presence`, with an in-memory SQLite store.
    pub(crate) async fn claims_domain(
        bus: Arc<dyn Bus>,
        presence: Arc<dyn Presence>,
        offline_grace: Duration,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Domain, StoreError> {
        let store = Arc::new(SqlStore::connect("sqlite::memory:").await?);
        store.migrate().await?;
        let backends = Backends {
            bus,
            presence,
            conversations: store.clone(),
            messages: store,
        };
        let rules = Rules {
            access: AccessMode::Claims,
            offline_grace,
            max_message_bytes: 8192,
            limits: Limits::default(),
        };
        Ok(Domain::new(backends, rules, tasks, shutdown))
    }

    pub(crate) fn attached(domain: &Domain, id: &str, user: &str) -> Local {
        let local = domain.local(ConnId(id.into()));
        domain.attach(&local, Arc::new(Quiet(user.into())));
        local
    }

    pub(crate) fn who(user: &str) -> Identity {
        Identity {
            user_id: user.into(),
            admin: false,
            conversations: Some(Arc::new(ConversationClaim::new(vec!["team".into()]))),
        }
    }

    #[tokio::test]
    async fn a_reload_within_the_grace_announces_nothing_and_a_departure_once() -> Result<(), DomainError> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new(Arc::new(Recorder(tx))));
        let presence: Arc<dyn Presence> = Arc::new(MemoryPresence::new("n1".into()));
        let grace = Duration::from_secs(3);
        let tasks = TaskTracker::new();
        let domain = claims_domain(bus, presence, grace, tasks.clone(), CancellationToken::new()).await?;
        // The store is set up on the real clock; the grace runs on a paused one.
        tokio::time::pause();
        let (b1, a1, a2) = (
            attached(&domain, "b1", "bob"),
            attached(&domain, "a1", "alice"),
            attached(&domain, "a2", "alice"),
        );
        domain.connect(&b1, &who("bob")).await?;
        domain.connect(&a1, &who("alice")).await?;
        let online = rx.try_recv().map(|d| d.event.clone()).ok();
        assert!(matches!(online, Some(Event::UserOnline(p)) if p.user_id.as_str() == "alice"));

        // A reload: the last connection closes and a new one opens within the grace.
        domain.disconnect(&a1).await;
        tokio::time::sleep(grace / 2).await;
        domain.connect(&a2, &who("alice")).await?;
        tokio::time::sleep(grace * 2).await;
        assert!(rx.try_recv().is_err(), "a reload announced something");

        // A real departure: one offline, after the grace, to bob.
        domain.disconnect(&a2).await;
        tokio::time::sleep(grace - Duration::from_millis(100)).await;
        assert!(rx.try_recv().is_err(), "offline announced before the grace ran out");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let offline = rx.try_recv().ok();
        assert!(
            matches!(offline.as_deref(), Some(Delivery { topic: Topic::User(u), event: Event::UserOffline(p), .. })
                if u.as_str() == "bob" && p.user_id.as_str() == "alice")
        );
        tokio::time::sleep(grace * 2).await;
        assert!(rx.try_recv().is_err(), "offline announced twice");
        Ok(())
    }

    /// A message store whose first append stores the message and then loses the answer, as a
    /// connection cut between the commit and its reply does.
    struct LosesFirstAnswer {
        store: Arc<SqlStore>,
        lost: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl MessageStore for LosesFirstAnswer {
        async fn append(&self, message: crate::store::NewMessage) -> Result<crate::store::Appended, StoreError> {
            let appended = self.store.append(message).await?;
            if !self.lost.swap(true, std::sync::atomic::Ordering::SeqCst) {
                return Err(StoreError::Unavailable("connection lost".into()));
            }
            Ok(appended)
        }
        async fn message(&self, id: &str) -> Result<Option<shared::event::Message>, StoreError> {
            self.store.message(id).await
        }
        async fn history(&self, c: &ConversationId, q: HistoryQuery) -> Result<HistoryPage, StoreError> {
            self.store.history(c, q).await
        }
        async fn record_receipt(
            &self,
            m: &shared::event::Message,
            u: &UserId,
            s: shared::event::ReceiptStatus,
            at: DateTime<Utc>,
        ) -> Result<bool, StoreError> {
            self.store.record_receipt(m, u, s, at).await
        }
        async fn mark_all_read(&self, c: &ConversationId, u: &UserId) -> Result<(), StoreError> {
            self.store.mark_all_read(c, u).await
        }
        async fn unread(&self, c: &ConversationId, u: &UserId) -> Result<i64, StoreError> {
            self.store.unread(c, u).await
        }
        async fn react(&self, m: &shared::event::Message, u: &UserId, r: &str, add: bool) -> Result<bool, StoreError> {
            self.store.react(m, u, r, add).await
        }
        async fn ping(&self) -> Result<(), StoreError> {
            MessageStore::ping(self.store.as_ref()).await
        }
    }

    fn created_events(rx: &mut mpsc::UnboundedReceiver<Arc<Delivery>>) -> Vec<i64> {
        let mut seqs = Vec::new();
        while let Ok(d) = rx.try_recv() {
            if let Event::MessageCreated(m) = &d.event {
                seqs.push(m.seq);
            }
        }
        seqs
    }

    /// A send whose answer was lost is fanned out by its retry, once; a retry of an
    /// acknowledged send is fanned out by nobody. In members mode a removal takes effect at
    /// once on the node, remembered memberships notwithstanding.
    #[tokio::test]
    async fn a_lost_answer_is_fanned_out_by_the_retry_and_a_removal_is_not_remembered_away() -> Result<(), DomainError>
    {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new(Arc::new(Recorder(tx))));
        bus.subscribe(&Topic::Conversation("c".into())).await?;
        let store = Arc::new(SqlStore::connect("sqlite::memory:").await?);
        store.migrate().await?;
        let backends = Backends {
            bus,
            presence: Arc::new(MemoryPresence::new("n1".into())),
            conversations: store.clone(),
            messages: Arc::new(LosesFirstAnswer {
                store,
                lost: false.into(),
            }),
        };
        let rules = Rules {
            access: AccessMode::Members,
            offline_grace: Duration::from_secs(1),
            max_message_bytes: 8192,
            limits: Limits::default(),
        };
        let domain = Domain::new(backends, rules, TaskTracker::new(), CancellationToken::new());
        domain
            .create_conversation(Some("c".into()), None, vec!["alice".into(), "bob".into()])
            .await?;
        let send = |client_ref: &str| SendRequest {
            conversation_id: "c".into(),
            content: "hi".into(),
            kind: None,
            attachments: Vec::new(),
            client_ref: Some(client_ref.into()),
            metadata: None,
        };
        let alice = Identity {
            user_id: "alice".into(),
            admin: false,
            conversations: None,
        };
        assert!(matches!(
            domain.send(&alice, send("t1")).await,
            Err(DomainError::Unavailable(_))
        ));
        assert_eq!(created_events(&mut rx), Vec::<i64>::new());
        let retried = domain.send(&alice, send("t1")).await?;
        assert_eq!((retried.message.seq, retried.created), (1, false));
        assert_eq!(created_events(&mut rx), vec![1]);
        domain.send(&alice, send("t1")).await?;
        assert_eq!(created_events(&mut rx), Vec::<i64>::new());
        let second = domain.send(&alice, send("t2")).await?;
        assert_eq!((second.message.seq, second.created), (2, true));
        domain.send(&alice, send("t2")).await?;
        assert_eq!(created_events(&mut rx), vec![2]);

        // Alice's membership is remembered by now; her removal is not.
        domain.remove_member(&"c".into(), &"alice".into()).await?;
        assert!(matches!(
            domain.send(&alice, send("t3")).await,
            Err(DomainError::Forbidden(_))
        ));
        Ok(())
    }
}
