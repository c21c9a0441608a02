//! A local connection's life in the cluster: connect, join, leave, watch, disconnect. Each
//! step changes the hub (what this node delivers to the socket), the bus subscriptions that
//! follow it, and presence (what the cluster knows) — in that order, so that nothing
//! published after a step is missed, and undone in reverse when a later step fails.

use super::hub::{Connection, Gone, Local, Refused};
use super::{Domain, DomainError, publish_member_left, publish_roster, roster_entry};
use crate::auth::Identity;
use crate::config::AccessMode;
use crate::presence::ConnectionEntry;
use crate::store::HistoryQuery;
use chrono::Utc;
use shared::event::{Membership, PresenceInfo};
use shared::{ConnId, ConversationId, Delivery, Event, Status, Topic, UserId};
use std::sync::Arc;

/// Most messages a join with `lastSeq` returns; the client pages the rest with history.
pub const MAX_MISSED: u32 = 100;

impl From<Gone> for DomainError {
    fn from(_: Gone) -> Self {
        DomainError::Unavailable("connection closed".into())
    }
}

/// The answer to a successful join.
pub struct Joined {
    /// Users with a connection joined to the conversation, cluster-wide, the joiner included.
    pub online_users: Vec<UserId>,
    /// With a `lastSeq`: the messages after it (at most [`MAX_MISSED`]), and whether more exist.
    pub missed: Option<crate::store::HistoryPage>,
    /// Starts live delivery when dropped: drop it after writing the answer, so the events
    /// that arrived meanwhile follow the answer, without the messages it already holds.
    pub live: Live,
}

/// Holds a joined socket's events until the join's answer is written.
pub struct Live {
    hub: Arc<super::hub::Hub>,
    key: u64,
    topic: Topic,
    after: Option<i64>,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.hub.activate(self.key, &self.topic, self.after);
    }
}

impl Domain {
    /// A key for a new local connection with cluster-wide id `id`.
    pub fn local(&self, id: ConnId) -> Local {
        self.hub.local(id)
    }

    /// Files a new socket on this node: it hears broadcasts from now on.
    pub fn attach(&self, local: &Local, conn: Arc<dyn Connection>) {
        self.hub.attach(local, conn);
    }

    /// Unfiles a socket at once (no event reaches it after this); [`Domain::disconnect`]
    /// still tells the cluster.
    pub async fn detach(&self, local: &Local) {
        for topic in self.hub.detach(local.key) {
            self.hub.sync(&topic).await;
        }
    }

    /// Registers an authenticated connection: it receives everything sent to its user, and
    /// the user's contacts hear that they came online when it is their first connection.
    pub async fn connect(&self, local: &Local, who: &Identity) -> Result<(), DomainError> {
        let circles = match self.access.mode() {
            AccessMode::Members => self
                .conversations
                .conversations_of(&who.user_id)
                .await?
                .into_iter()
                .map(|c| c.0.to_string())
                .collect(),
            _ => who
                .conversations
                .as_ref()
                .map(|c| c.entries().to_vec())
                .unwrap_or_default(),
        };
        let topic = Topic::User(who.user_id.clone());
        let cap = self.rules.limits.max_connections_per_user;
        self.hub.join(local.key, &topic, false, cap).map_err(|e| match e {
            Refused::Gone => DomainError::from(Gone),
            Refused::Full => DomainError::Forbidden(format!(
                "too many connections for this user on this node (at most {cap})"
            )),
        })?;
        self.hub.sync(&topic).await;
        let entry = ConnectionEntry {
            conn: local.id.clone(),
            user: who.user_id.clone(),
            circles,
        };
        let registered = match self.presence.connect(entry).await {
            Ok(arrived) => Ok(arrived),
            Err(e) => {
                // The call may still be applied after its timeout: undo it, idempotently.
                self.presence.disconnect(&local.id).await.ok();
                Err(DomainError::from(e))
            }
        };
        let registered_ok = registered.is_ok();
        let told = match registered {
            Ok(true) => {
                let info = PresenceInfo {
                    user_id: who.user_id.clone(),
                    status: Status::Online,
                    last_seen: None,
                };
                self.tell_contacts(&who.user_id, Event::UserOnline(info)).await
            }
            other => other.map(|_| ()),
        };
        if let Err(e) = told {
            // A refused connection leaves no trace: not online, not subscribed.
            if registered_ok {
                self.presence.disconnect(&local.id).await.ok();
            }
            self.unfile(local.key, &topic).await;
            return Err(e);
        }
        Ok(())
    }

    /// Forgets a closed connection: member-left for conversations it was the user's last in,
    /// and, after the offline grace, user-offline if the user did not come back. The hub, not
    /// presence, says what the node stops receiving: Redis may have forgotten the connection.
    pub async fn disconnect(&self, local: &Local) {
        self.detach(local).await;
        let gone = match self.presence.disconnect(&local.id).await {
            Ok(Some(gone)) => gone,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "presence lost a disconnect; its entries expire with their TTL");
                return;
            }
        };
        for conversation in &gone.joined {
            let entry = roster_entry(&local.id, &gone.user, gone.status, Utc::now());
            publish_roster(self.bus.as_ref(), conversation, Vec::new(), vec![entry]).await;
        }
        for conversation in gone.left {
            self.member_left(conversation, gone.user.clone()).await;
        }
        if gone.last_connection {
            self.settle_after_grace(gone.user, gone.was_visible);
        }
    }

    /// Joins a connection to a conversation so it receives its events; with `last_seq`, also
    /// answers the messages stored after it. Every message with a seq above `last_seq` reaches
    /// the socket once, in order: in the answer, or live after it.
    pub async fn join(
        &self,
        local: &Local,
        who: &Identity,
        conversation: &ConversationId,
        last_seq: Option<i64>,
    ) -> Result<Joined, DomainError> {
        self.access.check(Some(who), conversation).await?;
        let topic = Topic::Conversation(conversation.clone());
        // Filed (waiting) and subscribed before anything is read, so that nothing stored from
        // now on is missed; what arrives meanwhile waits for the answer.
        let cap = self.rules.limits.max_rooms_per_connection;
        let filed = self.hub.join(local.key, &topic, true, cap).map_err(|e| match e {
            Refused::Gone => DomainError::from(Gone),
            Refused::Full => DomainError::Forbidden(format!(
                "at most {cap} conversations joined per connection: leave one first"
            )),
        })?;
        self.hub.sync(&topic).await;
        if filed.unsettled {
            self.settle(conversation).await;
        }
        let at = Utc::now();
        let change = match self.presence.join(&local.id, conversation, at).await {
            Ok(change) => change,
            Err(e) => {
                // A timed-out join may still be applied: take it back, idempotently.
                self.presence.leave(&local.id, conversation).await.ok();
                if !filed.already {
                    self.unfile(local.key, &topic).await;
                }
                return Err(e.into());
            }
        };
        let answer = async {
            let online_users = self.presence.conversation_online(conversation).await?;
            let missed = match last_seq {
                Some(after) => {
                    let query = HistoryQuery {
                        before: None,
                        after: Some(after),
                        limit: MAX_MISSED,
                    };
                    let page = self.messages.history(conversation, query).await?;
                    Some(super::messages::bound_page(
                        page,
                        true,
                        self.rules.limits.max_page_bytes,
                    ))
                }
                None => None,
            };
            Ok::<_, DomainError>((online_users, missed))
        }
        .await;
        let (online_users, missed) = match answer {
            Ok(answer) => answer,
            Err(e) => {
                if change.connection {
                    self.presence.leave(&local.id, conversation).await.ok();
                }
                if !filed.already {
                    self.unfile(local.key, &topic).await;
                }
                return Err(e);
            }
        };
        if change.connection {
            let entry = roster_entry(&local.id, &who.user_id, change.status, at);
            publish_roster(self.bus.as_ref(), conversation, vec![entry], Vec::new()).await;
        }
        if change.user {
            let event = Event::MemberJoined(Membership {
                conversation_id: conversation.clone(),
                user_id: who.user_id.clone(),
            });
            if let Err(e) = self
                .bus
                .publish(Delivery::to(topic.clone(), event).except(who.user_id.clone()))
                .await
            {
                tracing::warn!(error = %e, "member joined not published");
            }
        }
        let after = last_seq.map(|n| {
            missed
                .as_ref()
                .and_then(|page| page.messages.last())
                .map_or(n, |m| m.seq.max(n))
        });
        Ok(Joined {
            online_users,
            missed,
            live: Live {
                hub: self.hub.clone(),
                key: local.key,
                topic,
                after,
            },
        })
    }

    /// Takes a connection out of a topic here; the bus follows when it was the last member.
    async fn unfile(&self, key: u64, topic: &Topic) {
        if self.hub.leave(key, topic) {
            self.hub.sync(topic).await;
        }
    }

    /// The latest seq stored in a conversation, as the baseline of its release order here.
    async fn settle(&self, conversation: &ConversationId) {
        let query = HistoryQuery {
            before: None,
            after: None,
            limit: 1,
        };
        match self.messages.history(conversation, query).await {
            Ok(page) => {
                let latest = page.messages.last().map_or(0, |m| m.seq);
                self.hub.settle(conversation, latest);
            }
            Err(e) => tracing::debug!(error = %e, "no release baseline; the first message sets it"),
        }
    }

    /// Takes a connection out of a conversation.
    pub async fn leave(&self, local: &Local, who: &Identity, conversation: &ConversationId) -> Result<(), DomainError> {
        self.unfile(local.key, &Topic::Conversation(conversation.clone())).await;
        let change = self.presence.leave(&local.id, conversation).await?;
        if change.connection {
            let entry = roster_entry(&local.id, &who.user_id, change.status, Utc::now());
            publish_roster(self.bus.as_ref(), conversation, Vec::new(), vec![entry]).await;
        }
        if change.user {
            self.member_left(conversation.clone(), who.user_id.clone()).await;
        }
        Ok(())
    }

    pub(super) async fn member_left(&self, conversation: ConversationId, user: UserId) {
        self.typing.finish(conversation.clone(), user.clone());
        publish_member_left(self.bus.as_ref(), conversation, user).await;
    }

    /// The conversations whose messages a user's own channel hears of (seed 004's `user:{id}`):
    /// their conversations in `members` mode, the plain ids of their claim in `claims` mode
    /// (patterns name no conversation), none in `open` mode. The connection hears of their
    /// messages until [`Domain::unwatch`]; conversations the user joins later are heard of
    /// from the next watch. Only `user` may watch their own conversations.
    pub async fn watch(
        &self,
        local: &Local,
        who: &Identity,
        user: &UserId,
    ) -> Result<Vec<ConversationId>, DomainError> {
        if who.user_id != *user {
            return Err(DomainError::Forbidden("only that user may join".into()));
        }
        let conversations: Vec<ConversationId> = match self.access.mode() {
            AccessMode::Members => self.conversations.conversations_of(&who.user_id).await?,
            AccessMode::Claims => who
                .conversations
                .iter()
                .flat_map(|claim| claim.entries())
                .filter(|e| !e.contains(['*', '?', '[', '{']))
                .map(|e| ConversationId::from(e.clone()))
                .collect(),
            AccessMode::Open => Vec::new(),
        };
        self.hub.watch(local.key, &conversations)?;
        for conversation in &conversations {
            self.hub.sync(&Topic::Conversation(conversation.clone())).await;
        }
        Ok(conversations)
    }

    /// Stops what [`Domain::watch`] started.
    pub async fn unwatch(&self, local: &Local, conversations: &[ConversationId]) {
        for topic in self.hub.unwatch(local.key, conversations) {
            self.hub.sync(&topic).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{Bus, BusError, MemoryBus};
    use crate::domain::tests::{attached, claims_domain, who};
    use crate::presence::{MemoryPresence, Presence};
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    /// A bus that refuses to publish while `down` is set.
    struct Flaky {
        inner: MemoryBus,
        down: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl Bus for Flaky {
        async fn publish(&self, delivery: Delivery) -> Result<(), BusError> {
            if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(BusError::Unavailable("down".into()));
            }
            self.inner.publish(delivery).await
        }
        async fn subscribe(&self, topic: &Topic) -> Result<(), BusError> {
            self.inner.subscribe(topic).await
        }
        async fn unsubscribe(&self, topic: &Topic) -> Result<(), BusError> {
            self.inner.unsubscribe(topic).await
        }
    }

    /// Issue 11, finding 5: a connect refused after presence registered it (telling the
    /// contacts failed) leaves the user neither online nor subscribed.
    #[tokio::test]
    async fn a_connect_refused_after_registration_leaves_no_trace() -> Result<(), Box<dyn std::error::Error>> {
        let bus = Arc::new(Flaky {
            inner: MemoryBus::new(Arc::new(crate::bus::Inlet::default())),
            down: false.into(),
        });
        let presence: Arc<dyn Presence> = Arc::new(MemoryPresence::new("n1".into()));
        let domain = claims_domain(
            bus.clone(),
            presence.clone(),
            std::time::Duration::from_secs(1),
            TaskTracker::new(),
            CancellationToken::new(),
        )
        .await?;
        let bob = attached(&domain, "b1", "bob");
        domain.connect(&bob, &who("bob")).await?;
        bus.down.store(true, std::sync::atomic::Ordering::SeqCst);
        let alice = attached(&domain, "a1", "alice");
        assert!(domain.connect(&alice, &who("alice")).await.is_err());
        assert_eq!(
            presence.connections(&"alice".into()).await?,
            0,
            "a refused client is online"
        );
        assert!(
            !domain.hub.has_members(&Topic::User("alice".into())),
            "the node still receives the refused user's events"
        );
        assert_eq!(presence.connections(&"bob".into()).await?, 1);
        Ok(())
    }

    /// A domain in `open` mode with these limits and 64-byte messages.
    async fn limited(limits: crate::config::Limits) -> Result<Domain, Box<dyn std::error::Error>> {
        let store = Arc::new(crate::store::SqlStore::connect("sqlite::memory:").await?);
        store.migrate().await?;
        let backends = crate::domain::Backends {
            bus: Arc::new(MemoryBus::new(Arc::new(crate::bus::Inlet::default()))),
            presence: Arc::new(MemoryPresence::new("n1".into())),
            conversations: store.clone(),
            messages: store,
        };
        let rules = crate::domain::Rules {
            access: AccessMode::Open,
            offline_grace: std::time::Duration::from_secs(1),
            max_message_bytes: 64,
            limits,
        };
        Ok(Domain::new(
            backends,
            rules,
            TaskTracker::new(),
            CancellationToken::new(),
        ))
    }

    /// Issue 12, item 8: connections per user (per node) and conversations per connection.
    #[tokio::test]
    async fn connections_per_user_and_rooms_per_connection_are_capped() -> Result<(), Box<dyn std::error::Error>> {
        let domain = limited(crate::config::Limits {
            max_connections_per_user: 2,
            max_rooms_per_connection: 2,
            ..Default::default()
        })
        .await?;
        let (a1, a2, a3) = (
            attached(&domain, "a1", "alice"),
            attached(&domain, "a2", "alice"),
            attached(&domain, "a3", "alice"),
        );
        domain.connect(&a1, &who("alice")).await?;
        domain.connect(&a2, &who("alice")).await?;
        assert!(matches!(
            domain.connect(&a3, &who("alice")).await,
            Err(DomainError::Forbidden(_))
        ));
        let b1 = attached(&domain, "b1", "bob");
        domain.connect(&b1, &who("bob")).await?;
        domain.disconnect(&a2).await;
        domain.connect(&a3, &who("alice")).await?;

        let (c1, c2, c3) = (
            ConversationId::from("c1"),
            ConversationId::from("c2"),
            ConversationId::from("c3"),
        );
        drop(domain.join(&a1, &who("alice"), &c1, None).await?);
        drop(domain.join(&a1, &who("alice"), &c2, None).await?);
        let third = domain.join(&a1, &who("alice"), &c3, None).await;
        assert!(matches!(third, Err(DomainError::Forbidden(ref m)) if m.contains("at most 2")));
        // Joining again what is joined passes; a leave makes room; another connection has its own.
        drop(domain.join(&a1, &who("alice"), &c1, None).await?);
        drop(domain.join(&a3, &who("alice"), &c3, None).await?);
        domain.leave(&a1, &who("alice"), &c1).await?;
        drop(domain.join(&a1, &who("alice"), &c3, None).await?);
        Ok(())
    }

    /// Issue 12, item 8: the whole stored message is bounded (metadata included), and a page
    /// of history or a join's recovery is bounded in bytes as well as in messages.
    #[tokio::test]
    async fn metadata_and_pages_are_bounded_in_bytes() -> Result<(), Box<dyn std::error::Error>> {
        let domain = limited(crate::config::Limits {
            max_page_bytes: 1100,
            ..Default::default()
        })
        .await?;
        let c = ConversationId::from("c");
        let request = |content: &str, metadata: Option<serde_json::Value>| crate::domain::SendRequest {
            conversation_id: c.clone(),
            content: content.into(),
            kind: None,
            attachments: Vec::new(),
            client_ref: None,
            metadata,
        };
        let big = serde_json::Value::String("m".repeat(900_000));
        let refused = domain.send(&who("alice"), request("hi", Some(big))).await;
        assert!(matches!(refused, Err(DomainError::PayloadTooLarge(ref m)) if m.contains("metadata")));
        let edge = serde_json::json!({"k": "v".repeat(70)});
        assert!(domain.send(&who("alice"), request("hi", Some(edge))).await.is_err());
        domain
            .send(&who("alice"), request("hi", Some(serde_json::json!({"k": 1}))))
            .await?;
        for _ in 0..9 {
            domain.send(&who("alice"), request(&"x".repeat(60), None)).await?;
        }
        // About 360 bytes a message: a 1,100-byte page holds 3 of the 10.
        let seqs = |page: &crate::store::HistoryPage| page.messages.iter().map(|m| m.seq).collect::<Vec<_>>();
        let newest = crate::domain::HistoryRequest {
            conversation_id: c.clone(),
            before: None,
            after: None,
            limit: None,
        };
        let page = domain.history(None, newest.clone()).await?;
        assert_eq!((seqs(&page), page.has_more), (vec![8, 9, 10], true));
        let forward = crate::domain::HistoryRequest {
            after: Some(0),
            ..newest
        };
        let page = domain.history(None, forward).await?;
        assert_eq!((seqs(&page), page.has_more), (vec![1, 2, 3], true));
        let a1 = attached(&domain, "a1", "alice");
        domain.connect(&a1, &who("alice")).await?;
        let joined = domain.join(&a1, &who("alice"), &c, Some(0)).await?;
        let missed = joined.missed.as_ref().ok_or("no missed page")?;
        assert_eq!((seqs(missed), missed.has_more), (vec![1, 2, 3], true));
        Ok(())
    }
}
