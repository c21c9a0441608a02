//! Fail fast while the database is known to be down. A connection's events run one after the
//! other, so without this each queued send would wait out the pool's acquire timeout in turn
//! (the tenth one 30 s later); with it, everything after the first failure is answered at once
//! until the database has had a moment, then one request probes it again.

use super::{
    Appended, Conversation, ConversationStore, HistoryPage, HistoryQuery, MessageStore, NewMessage, StoreError,
};
use crate::metrics::METRICS;
use crate::telemetry;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use prometheus::{Histogram, IntGauge};
use shared::event::{Message, ReceiptStatus};
use shared::{ConversationId, UserId};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// How long after a failure requests are refused without trying.
const COOL_DOWN: Duration = Duration::from_secs(1);

/// Remembers the last failure.
#[derive(Debug, Default)]
pub(crate) struct Breaker {
    failed_at: Mutex<Option<Instant>>,
}

impl Breaker {
    /// Refuses at once within the cool-down after a failure.
    pub(crate) fn check(&self) -> Result<(), StoreError> {
        let failed_at = *self.failed_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match failed_at {
            Some(at) if at.elapsed() < COOL_DOWN => {
                Err(StoreError::Unavailable("database unreachable (recent failure)".into()))
            }
            _ => Ok(()),
        }
    }

    /// Records the outcome of a request that reached for the database.
    pub(crate) fn record<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        let mut failed_at = self.failed_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match &result {
            Err(StoreError::Unavailable(_)) => *failed_at = Some(Instant::now()),
            _ => *failed_at = None,
        }
        result
    }
}

/// A store behind a [`Breaker`]: while the database is known to be down, its calls answer
/// `unavailable` at once. `ping` always reaches the database (readiness and recovery need it).
/// Every call is timed by operation and result (`store_operation_duration_seconds`).
pub struct Guarded<S> {
    inner: S,
    breaker: Breaker,
    /// One histogram per operation and result, in [`OPS`] × [`RESULTS`] order.
    seconds: Vec<Histogram>,
    open: IntGauge,
}

/// The operations, as labels.
const OPS: [&str; 14] = [
    "create",
    "get",
    "is_member",
    "add_member",
    "remove_member",
    "conversations_of",
    "append",
    "message",
    "history",
    "record_receipt",
    "mark_all_read",
    "unread",
    "react",
    "ping",
];
/// Their results: done, failed otherwise, database unreachable, refused by the breaker.
const RESULTS: [&str; 4] = ["ok", "error", "unavailable", "refused"];
const REFUSED: usize = 3;

impl<S> Guarded<S> {
    /// Guards `inner`; `name` labels its breaker gauge (`sql`, `mongodb`).
    pub fn new(inner: S, name: &str) -> Self {
        let seconds = OPS
            .iter()
            .flat_map(|op| {
                RESULTS
                    .iter()
                    .map(move |r| METRICS.store_duration.with_label_values(&[op, r]))
            })
            .collect();
        let open = METRICS.store_breaker_open.with_label_values(&[name]);
        open.set(0);
        Self {
            inner,
            breaker: Breaker::default(),
            seconds,
            open,
        }
    }

    fn observe(&self, op: usize, result: usize, started: Instant) {
        if let Some(h) = self.seconds.get(op * RESULTS.len() + result) {
            h.observe(started.elapsed().as_secs_f64());
        }
    }

    fn outcome<T>(&self, op: usize, started: Instant, result: &Result<T, StoreError>) {
        let unavailable = matches!(result, Err(StoreError::Unavailable(_)));
        let index = match result {
            Ok(_) => 0,
            Err(_) if unavailable => 2,
            Err(_) => 1,
        };
        self.observe(op, index, started);
        self.open.set(i64::from(unavailable));
    }
}

macro_rules! guarded {
    ($self:ident, $op:expr, $call:expr) => {{
        let started = Instant::now();
        if let Err(e) = $self.breaker.check() {
            $self.observe($op, REFUSED, started);
            return Err(e);
        }
        let result = $self.breaker.record($call.await);
        $self.outcome($op, started, &result);
        result
    }};
}

#[async_trait]
impl<S: ConversationStore> ConversationStore for Guarded<S> {
    async fn create(
        &self,
        id: &ConversationId,
        title: Option<&str>,
        members: &[UserId],
    ) -> Result<Conversation, StoreError> {
        guarded!(self, 0, self.inner.create(id, title, members))
    }
    async fn get(&self, id: &ConversationId) -> Result<Option<Conversation>, StoreError> {
        guarded!(self, 1, self.inner.get(id))
    }
    async fn is_member(&self, id: &ConversationId, user: &UserId) -> Result<Option<bool>, StoreError> {
        guarded!(self, 2, self.inner.is_member(id, user))
    }
    async fn add_member(&self, id: &ConversationId, user: &UserId) -> Result<bool, StoreError> {
        guarded!(self, 3, self.inner.add_member(id, user))
    }
    async fn remove_member(&self, id: &ConversationId, user: &UserId) -> Result<bool, StoreError> {
        guarded!(self, 4, self.inner.remove_member(id, user))
    }
    async fn conversations_of(&self, user: &UserId) -> Result<Vec<ConversationId>, StoreError> {
        guarded!(self, 5, self.inner.conversations_of(user))
    }
    async fn ping(&self) -> Result<(), StoreError> {
        let started = Instant::now();
        let result = self.breaker.record(ConversationStore::ping(&self.inner).await);
        self.outcome(13, started, &result);
        result
    }
}

#[async_trait]
impl<S: MessageStore> MessageStore for Guarded<S> {
    async fn append(&self, message: NewMessage) -> Result<Appended, StoreError> {
        let span = if telemetry::enabled() {
            tracing::info_span!("store.append")
        } else {
            tracing::Span::none()
        };
        guarded!(self, 6, self.inner.append(message).instrument(span))
    }
    async fn message(&self, id: &str) -> Result<Option<Message>, StoreError> {
        guarded!(self, 7, self.inner.message(id))
    }
    async fn history(&self, conversation: &ConversationId, query: HistoryQuery) -> Result<HistoryPage, StoreError> {
        guarded!(self, 8, self.inner.history(conversation, query))
    }
    async fn record_receipt(
        &self,
        message: &Message,
        user: &UserId,
        status: ReceiptStatus,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        guarded!(self, 9, self.inner.record_receipt(message, user, status, at))
    }
    async fn mark_all_read(&self, conversation: &ConversationId, user: &UserId) -> Result<(), StoreError> {
        guarded!(self, 10, self.inner.mark_all_read(conversation, user))
    }
    async fn unread(&self, conversation: &ConversationId, user: &UserId) -> Result<i64, StoreError> {
        guarded!(self, 11, self.inner.unread(conversation, user))
    }
    async fn react(&self, message: &Message, user: &UserId, reaction: &str, add: bool) -> Result<bool, StoreError> {
        guarded!(self, 12, self.inner.react(message, user, reaction, add))
    }
    async fn ping(&self) -> Result<(), StoreError> {
        let started = Instant::now();
        let result = self.breaker.record(MessageStore::ping(&self.inner).await);
        self.outcome(13, started, &result);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_during_the_cool_down_only() {
        let b = Breaker::default();
        assert!(b.check().is_ok());
        let failed: Result<(), StoreError> = Err(StoreError::Unavailable("down".into()));
        assert!(b.record(failed).is_err());
        assert!(b.check().is_err());
        *b.failed_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now() - COOL_DOWN);
        assert!(b.check().is_ok());
        assert!(b.record(Ok(())).is_ok());
        assert!(b.check().is_ok());
    }
}
