//! Fail fast while the database is known to be down. A connection's events run one after the
//! other, so without this each queued send would wait out the pool's acquire timeout in turn
//! (the tenth one 30 s later); with it, everything after the first failure is answered at once
//! until the database has had a moment, then one request probes it again.

use super::{
    Appended, Conversation, ConversationStore, HistoryPage, HistoryQuery, MessageStore, NewMessage, StoreError,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use shared::event::{Message, ReceiptStatus};
use shared::{ConversationId, UserId};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
pub struct Guarded<S> {
    inner: S,
    breaker: Breaker,
}

impl<S> Guarded<S> {
    /// Guards `inner`.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            breaker: Breaker::default(),
        }
    }
}

macro_rules! guarded {
    ($self:ident, $call:expr) => {{
        $self.breaker.check()?;
        $self.breaker.record($call.await)
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
        guarded!(self, self.inner.create(id, title, members))
    }
    async fn get(&self, id: &ConversationId) -> Result<Option<Conversation>, StoreError> {
        guarded!(self, self.inner.get(id))
    }
    async fn is_member(&self, id: &ConversationId, user: &UserId) -> Result<Option<bool>, StoreError> {
        guarded!(self, self.inner.is_member(id, user))
    }
    async fn add_member(&self, id: &ConversationId, user: &UserId) -> Result<bool, StoreError> {
        guarded!(self, self.inner.add_member(id, user))
    }
    async fn remove_member(&self, id: &ConversationId, user: &UserId) -> Result<bool, StoreError> {
        guarded!(self, self.inner.remove_member(id, user))
    }
    async fn conversations_of(&self, user: &UserId) -> Result<Vec<ConversationId>, StoreError> {
        guarded!(self, self.inner.conversations_of(user))
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.breaker.record(ConversationStore::ping(&self.inner).await)
    }
}

#[async_trait]
impl<S: MessageStore> MessageStore for Guarded<S> {
    async fn append(&self, message: NewMessage) -> Result<Appended, StoreError> {
        guarded!(self, self.inner.append(message))
    }
    async fn message(&self, id: &str) -> Result<Option<Message>, StoreError> {
        guarded!(self, self.inner.message(id))
    }
    async fn history(&self, conversation: &ConversationId, query: HistoryQuery) -> Result<HistoryPage, StoreError> {
        guarded!(self, self.inner.history(conversation, query))
    }
    async fn record_receipt(
        &self,
        message: &Message,
        user: &UserId,
        status: ReceiptStatus,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        guarded!(self, self.inner.record_receipt(message, user, status, at))
    }
    async fn mark_all_read(&self, conversation: &ConversationId, user: &UserId) -> Result<(), StoreError> {
        guarded!(self, self.inner.mark_all_read(conversation, user))
    }
    async fn unread(&self, conversation: &ConversationId, user: &UserId) -> Result<i64, StoreError> {
        guarded!(self, self.inner.unread(conversation, user))
    }
    async fn react(&self, message: &Message, user: &UserId, reaction: &str, add: bool) -> Result<bool, StoreError> {
        guarded!(self, self.inner.react(message, user, reaction, add))
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.breaker.record(MessageStore::ping(&self.inner).await)
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
