//! What the node does with each event the bus brings: control events are applied here, once
//! (a kick closes the user's sockets, a removal takes them out of the conversation), the rest
//! go to the hub; gaps in a conversation's seqs are filled from the store, and the watchers of
//! a message get its unread counts, computed once per user.

use super::Domain;
use super::hub::{Connection, Delivered, Hub, Watched};
use super::order::{GAP_WAIT, MAX_FILLS};
use crate::bus::LocalSink;
use crate::metrics::METRICS;
use crate::store::{HistoryQuery, MessageStore, StoreError};
use async_trait::async_trait;
use shared::event::Message;
use shared::{ConversationId, Delivery, Event, Topic, UserId};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Messages whose watchers wait for unread counts; past it they are dropped (counted).
pub(super) const WATCH_QUEUE: usize = 4096;

#[async_trait]
impl LocalSink for Domain {
    async fn deliver(&self, delivery: Arc<Delivery>) {
        match &delivery.event {
            Event::Disconnect(user) => {
                for conn in self.hub.user_connections(&user.user_id) {
                    conn.kick();
                }
            }
            Event::MemberRemoved(removed) => {
                // The answer may be remembered here: forget it before the sockets leave.
                self.access
                    .memberships()
                    .forget(&removed.conversation_id, &removed.user_id);
                let (expelled, emptied) = self.hub.expel(&removed.conversation_id, &removed.user_id);
                if emptied {
                    self.hub
                        .sync(&Topic::Conversation(removed.conversation_id.clone()))
                        .await;
                }
                for conn in expelled {
                    conn.removed(&removed.conversation_id);
                }
            }
            Event::NodeReport(report) => self.reports.record(report.clone()),
            _ => {
                let delivered = self.hub.deliver(delivery);
                self.after_delivery(delivered);
            }
        }
    }

    /// Messages published while the bus was cut off never reach this node: each conversation
    /// with a local member reads what was stored after the last seq it released, and releases
    /// it in order (other events of the outage are lost: they are not recorded).
    async fn resumed(&self) {
        let conversations = self.hub.conversations();
        tracing::info!(
            conversations = conversations.len(),
            "bus resumed: reading missed messages from the store"
        );
        for (conversation, last) in conversations {
            let Some(after) = last else { continue };
            match stored_after(self.messages.as_ref(), &conversation, after).await {
                Ok(found) if !found.is_empty() => {
                    METRICS.bus_recovered.inc_by(found.len() as u64);
                    let delivered = self.hub.fill_gap(&conversation, found, false);
                    self.after_delivery(delivered);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(%conversation, error = %e, "missed messages not read after the bus resumed"),
            }
        }
    }
}

impl Domain {
    fn after_delivery(&self, delivered: Delivered) {
        if let Some(conversation) = delivered.gap {
            let (hub, messages, watched) = (self.hub.clone(), self.messages.clone(), self.watched.clone());
            self.tasks
                .spawn(fill_gap(hub, messages, watched, conversation, self.shutdown.clone()));
        }
        queue_watched(&self.watched, delivered.watched);
    }
}

/// What the store has of a conversation after `after`, a page at most.
async fn stored_after(
    messages: &dyn MessageStore,
    conversation: &ConversationId,
    after: i64,
) -> Result<Vec<Message>, StoreError> {
    let query = HistoryQuery {
        before: None,
        after: Some(after),
        limit: crate::domain::messages::MAX_PAGE,
    };
    Ok(messages.history(conversation, query).await?.messages)
}

/// Hands messages with watchers to the watcher task; a full queue drops them (counted).
fn queue_watched(queue: &mpsc::Sender<Watched>, watched: Vec<Watched>) {
    for w in watched {
        if queue.try_send(w).is_err() {
            METRICS.outbound_dropped.inc();
        }
    }
}

/// While a conversation has a gap: waits [`GAP_WAIT`], reads the gap from the store and
/// releases what it can; the last try releases everything held.
async fn fill_gap(
    hub: Arc<Hub>,
    messages: Arc<dyn MessageStore>,
    watched: mpsc::Sender<Watched>,
    conversation: ConversationId,
    shutdown: CancellationToken,
) {
    for attempt in 1..=MAX_FILLS {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(GAP_WAIT) => {}
        }
        let Some(after) = hub.gap_after(&conversation) else {
            return;
        };
        let (found, last_try) = match stored_after(messages.as_ref(), &conversation, after).await {
            Ok(found) => (found, attempt == MAX_FILLS),
            Err(e) => {
                tracing::warn!(%conversation, error = %e, "gap not read from the store; skipped");
                (Vec::new(), true)
            }
        };
        tracing::debug!(%conversation, after, found = found.len(), attempt, "seq gap read from the store");
        queue_watched(&watched, hub.fill_gap(&conversation, found, last_try).watched);
        if last_try {
            // Ends the fill (nothing is held any more) so that a new gap schedules a new one.
            hub.gap_after(&conversation);
            return;
        }
    }
}

/// Tells watching sockets of each message, with their user's unread count: one count per
/// message and user, however many of their sockets watch. One task, in message order.
pub(super) async fn tell_watchers(
    hub: Arc<Hub>,
    messages: Arc<dyn MessageStore>,
    mut queue: mpsc::Receiver<Watched>,
    shutdown: CancellationToken,
) {
    loop {
        let (delivery, watchers) = tokio::select! {
            () = shutdown.cancelled() => return,
            next = queue.recv() => match next {
                Some(next) => next,
                None => return,
            },
        };
        let Event::MessageCreated(message) = &delivery.event else {
            continue;
        };
        let mut by_user: HashMap<UserId, Vec<Arc<dyn Connection>>> = HashMap::new();
        for conn in watchers {
            if let Some(user) = conn.user() {
                by_user.entry(user.clone()).or_default().push(conn);
            }
        }
        let mut told: Vec<(Arc<dyn Connection>, i64)> = Vec::new();
        for (user, conns) in by_user {
            match messages.unread(&message.conversation_id, &user).await {
                Ok(unread) => told.extend(conns.into_iter().map(|c| (c, unread))),
                Err(e) => tracing::debug!(error = %e, "conversation_updated not sent"),
            }
        }
        hub.push_watched(message, &told);
    }
}
