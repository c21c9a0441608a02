//! The store remembers conversations, members and messages: the database is the record, and a
//! message is stored before anyone is told about it.
//!
//! Contract, for every implementation:
//! - [`MessageStore::append`] gives each stored message of a conversation the next `seq`
//!   (1, 2, 3… with no gap and no duplicate, whatever the number of concurrent senders and
//!   nodes), and stores at most one message per (conversation, sender, client ref): a retry
//!   returns the first message as [`Appended::Existing`].
//! - Receipts and reactions are idempotent: recording one twice changes nothing the second
//!   time and says so.
//! - History is paged by `seq`, oldest first within a page.
//! - A backend that cannot be reached answers [`StoreError::Unavailable`]: nothing was done.
//!
//! The parts of the contract that are an algorithm rather than a query live here once, for
//! every store: how a [`HistoryQuery`] becomes a page (`paging`), and the idempotent append
//! (`idempotent`). One conformance suite (`conformance`) runs against every store.

mod breaker;
#[cfg(test)]
mod conformance;
mod idempotent;
mod mongo;
mod paging;
mod sql;

pub use breaker::Guarded;

pub use mongo::MongoStore;
pub use sql::SqlStore;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;
use shared::event::{Message, ReceiptStatus};
use shared::{ConversationId, UserId};

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached; nothing was done.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The conversation exists already.
    #[error("conversation {0} exists already")]
    Exists(ConversationId),
    /// No such conversation.
    #[error("no conversation {0}")]
    NoConversation(ConversationId),
}

/// A conversation with its members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Conversation {
    /// The id.
    pub id: ConversationId,
    /// Optional title.
    pub title: Option<String>,
    /// Members, sorted.
    pub members: Vec<UserId>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// The newest message's seq (0 when empty).
    pub last_seq: i64,
}

/// A message about to be stored.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// The conversation (it must exist in `members` mode; it is created on the fly otherwise).
    pub conversation_id: ConversationId,
    /// The author.
    pub sender_id: UserId,
    /// Validated content.
    pub content: String,
    /// Validated type.
    pub kind: String,
    /// Validated attachment URLs.
    pub attachments: Vec<String>,
    /// The sender's idempotency key.
    pub client_ref: Option<String>,
    /// Free-form metadata.
    pub metadata: Option<serde_json::Value>,
}

impl NewMessage {
    /// The message as stored, with the id, seq and time the store gave it.
    pub(crate) fn stored(&self, id: String, seq: i64, sent_at_ms: i64) -> Message {
        Message {
            id,
            conversation_id: self.conversation_id.clone(),
            sender_id: self.sender_id.clone(),
            content: self.content.clone(),
            kind: self.kind.clone(),
            attachments: self.attachments.clone(),
            temp_id: self.client_ref.clone(),
            seq,
            sent_at: time(sent_at_ms),
            metadata: self.metadata.clone(),
        }
    }
}

/// A stored time (milliseconds since the epoch) as a timestamp.
pub(crate) fn time(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// The outcome of an append.
#[derive(Debug, Clone, PartialEq)]
pub enum Appended {
    /// Stored now.
    Created(Message),
    /// Stored before with the same client ref: nothing was stored now.
    Existing(Message),
}

impl Appended {
    /// The stored message either way.
    pub fn message(&self) -> &Message {
        match self {
            Appended::Created(m) | Appended::Existing(m) => m,
        }
    }
}

/// Which page of history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Only messages with a smaller seq (the newest of them).
    pub before: Option<i64>,
    /// Only messages with a greater seq (the oldest of them).
    pub after: Option<i64>,
    /// At most this many.
    pub limit: u32,
}

/// A page of history.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryPage {
    /// Oldest first.
    pub messages: Vec<Message>,
    /// More exist in the direction asked.
    pub has_more: bool,
}

/// Conversations and their members (always in the SQL database).
#[async_trait]
pub trait ConversationStore: Send + Sync + 'static {
    /// Creates a conversation with its members.
    async fn create(
        &self,
        id: &ConversationId,
        title: Option<&str>,
        members: &[UserId],
    ) -> Result<Conversation, StoreError>;
    /// A conversation, if it exists.
    async fn get(&self, id: &ConversationId) -> Result<Option<Conversation>, StoreError>;
    /// Whether `user` is a member; `None` when the conversation does not exist.
    async fn is_member(&self, id: &ConversationId, user: &UserId) -> Result<Option<bool>, StoreError>;
    /// Adds a member; false when they were one already.
    async fn add_member(&self, id: &ConversationId, user: &UserId) -> Result<bool, StoreError>;
    /// Removes a member; false when they were not one.
    async fn remove_member(&self, id: &ConversationId, user: &UserId) -> Result<bool, StoreError>;
    /// The conversations a user is a member of.
    async fn conversations_of(&self, user: &UserId) -> Result<Vec<ConversationId>, StoreError>;
    /// Whether the database answers.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// Messages, receipts, read marks and reactions.
#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Stores a message with the conversation's next seq (see the module contract).
    async fn append(&self, message: NewMessage) -> Result<Appended, StoreError>;
    /// One message by id.
    async fn message(&self, id: &str) -> Result<Option<Message>, StoreError>;
    /// A page of a conversation's history.
    async fn history(&self, conversation: &ConversationId, query: HistoryQuery) -> Result<HistoryPage, StoreError>;
    /// Records a receipt; false when it was recorded before. A read also moves the user's
    /// read mark up to the message.
    async fn record_receipt(
        &self,
        message: &Message,
        user: &UserId,
        status: ReceiptStatus,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Marks everything in the conversation read by `user` up to now.
    async fn mark_all_read(&self, conversation: &ConversationId, user: &UserId) -> Result<(), StoreError>;
    /// Messages of others after the user's read mark.
    async fn unread(&self, conversation: &ConversationId, user: &UserId) -> Result<i64, StoreError>;
    /// Adds (`add`) or removes a reaction; false when nothing changed.
    async fn react(&self, message: &Message, user: &UserId, reaction: &str, add: bool) -> Result<bool, StoreError>;
    /// Whether the database answers.
    async fn ping(&self) -> Result<(), StoreError>;
}
