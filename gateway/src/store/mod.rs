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

mod breaker;
mod mongo;
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize)]
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

#[cfg(test)]
pub(crate) mod tests {
    //! The store conformance suites, run against every implementation.
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;

    pub(crate) fn new_message(conversation: &str, sender: &str, content: &str, client_ref: Option<&str>) -> NewMessage {
        NewMessage {
            conversation_id: conversation.into(),
            sender_id: sender.into(),
            content: content.into(),
            kind: "text".into(),
            attachments: vec!["https://example.com/a.png".into()],
            client_ref: client_ref.map(str::to_owned),
            metadata: None,
        }
    }

    /// Runs the message store contract against `store` (which must be empty).
    pub(crate) async fn messages_conform(store: Arc<dyn MessageStore>) -> Result<(), StoreError> {
        store.ping().await?;
        // Concurrent senders: seqs 1..=N, no gap, no duplicate.
        let mut tasks = Vec::new();
        for sender in 0..8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                for n in 0..25 {
                    let m = new_message("busy", &format!("u{sender}"), &format!("m{n}"), None);
                    seqs.push(store.append(m).await?.message().seq);
                }
                Ok::<_, StoreError>(seqs)
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.map_err(|e| StoreError::Unavailable(e.to_string()))??);
        }
        all.sort_unstable();
        assert_eq!(all, (1..=200).collect::<Vec<i64>>());

        // Idempotency, also when retries race each other.
        let first = store.append(new_message("c", "alice", "hello", Some("t1"))).await?;
        let Appended::Created(first) = first else {
            panic!("first append must create")
        };
        assert_eq!(first.seq, 1);
        assert_eq!(first.temp_id.as_deref(), Some("t1"));
        let again = store.append(new_message("c", "alice", "hello", Some("t1"))).await?;
        assert_eq!(again, Appended::Existing(first.clone()));
        let mut racers = Vec::new();
        for _ in 0..6 {
            let store = store.clone();
            racers.push(tokio::spawn(async move {
                store.append(new_message("c", "bob", "race", Some("same"))).await
            }));
        }
        let mut ids = HashSet::new();
        let mut created = 0;
        for racer in racers {
            let appended = racer.await.map_err(|e| StoreError::Unavailable(e.to_string()))??;
            created += usize::from(matches!(appended, Appended::Created(_)));
            ids.insert(appended.message().id.clone());
        }
        assert_eq!((created, ids.len()), (1, 1));
        // Another sender may reuse the same client ref.
        let other = store.append(new_message("c", "carol", "hi", Some("t1"))).await?;
        assert!(matches!(other, Appended::Created(ref m) if m.seq == 3));
        assert_eq!(store.message(&first.id).await?, Some(first.clone()));
        assert_eq!(store.message("no-such-id").await?, None);

        // History: pages by seq, oldest first.
        for n in 4..=10 {
            store.append(new_message("c", "dave", &format!("n{n}"), None)).await?;
        }
        let seqs = |p: &HistoryPage| p.messages.iter().map(|m| m.seq).collect::<Vec<_>>();
        let q = |before, after, limit| HistoryQuery { before, after, limit };
        let newest = store.history(&"c".into(), q(None, None, 3)).await?;
        assert_eq!((seqs(&newest), newest.has_more), (vec![8, 9, 10], true));
        let older = store.history(&"c".into(), q(Some(8), None, 5)).await?;
        assert_eq!((seqs(&older), older.has_more), (vec![3, 4, 5, 6, 7], true));
        let oldest = store.history(&"c".into(), q(Some(3), None, 5)).await?;
        assert_eq!((seqs(&oldest), oldest.has_more), (vec![1, 2], false));
        let after = store.history(&"c".into(), q(None, Some(7), 2)).await?;
        assert_eq!((seqs(&after), after.has_more), (vec![8, 9], true));
        let rest = store.history(&"c".into(), q(None, Some(9), 50)).await?;
        assert_eq!((seqs(&rest), rest.has_more), (vec![10], false));
        let empty = store.history(&"nothing".into(), q(None, None, 50)).await?;
        assert_eq!((empty.messages.len(), empty.has_more), (0, false));
        assert_eq!(
            newest.messages[0].attachments,
            vec!["https://example.com/a.png".to_owned()]
        );

        // Receipts are idempotent; reads move the read mark; unread counts others' messages.
        let now = chrono::Utc::now();
        assert_eq!(store.unread(&"c".into(), &"alice".into()).await?, 9);
        assert!(
            store
                .record_receipt(&first, &"bob".into(), ReceiptStatus::Delivered, now)
                .await?
        );
        assert!(
            !store
                .record_receipt(&first, &"bob".into(), ReceiptStatus::Delivered, now)
                .await?
        );
        let fifth = store.history(&"c".into(), q(Some(6), Some(4), 1)).await?;
        let fifth = fifth
            .messages
            .first()
            .cloned()
            .ok_or(StoreError::Unavailable("no seq 5".into()))?;
        assert!(
            store
                .record_receipt(&fifth, &"alice".into(), ReceiptStatus::Read, now)
                .await?
        );
        // Others' messages with seq 6..=10 remain unread.
        assert_eq!(store.unread(&"c".into(), &"alice".into()).await?, 5);
        // A read of an older message does not move the mark back.
        store
            .record_receipt(&first, &"alice".into(), ReceiptStatus::Read, now)
            .await?;
        assert_eq!(store.unread(&"c".into(), &"alice".into()).await?, 5);
        store.mark_all_read(&"c".into(), &"alice".into()).await?;
        assert_eq!(store.unread(&"c".into(), &"alice".into()).await?, 0);

        // Reactions: one per (message, user, reaction).
        assert!(store.react(&first, &"bob".into(), "👍", true).await?);
        assert!(!store.react(&first, &"bob".into(), "👍", true).await?);
        assert!(store.react(&first, &"carol".into(), "👍", true).await?);
        assert!(store.react(&first, &"bob".into(), "👍", false).await?);
        assert!(!store.react(&first, &"bob".into(), "👍", false).await?);
        Ok(())
    }

    /// Runs the conversation store contract against `store` (which must be empty).
    pub(crate) async fn conversations_conform(store: &dyn ConversationStore) -> Result<(), StoreError> {
        let members = [UserId::from("bob"), UserId::from("alice")];
        let created = store.create(&"room".into(), Some("Room"), &members).await?;
        assert_eq!(created.members, vec![UserId::from("alice"), UserId::from("bob")]);
        assert_eq!((created.title.as_deref(), created.last_seq), (Some("Room"), 0));
        assert!(matches!(
            store.create(&"room".into(), None, &[]).await,
            Err(StoreError::Exists(_))
        ));
        assert_eq!(store.is_member(&"room".into(), &"alice".into()).await?, Some(true));
        assert_eq!(store.is_member(&"room".into(), &"eve".into()).await?, Some(false));
        assert_eq!(store.is_member(&"nowhere".into(), &"alice".into()).await?, None);
        assert!(store.add_member(&"room".into(), &"eve".into()).await?);
        assert!(!store.add_member(&"room".into(), &"eve".into()).await?);
        assert!(store.remove_member(&"room".into(), &"bob".into()).await?);
        assert!(!store.remove_member(&"room".into(), &"bob".into()).await?);
        assert!(matches!(
            store.add_member(&"nowhere".into(), &"eve".into()).await,
            Err(StoreError::NoConversation(_))
        ));
        store.create(&"other".into(), None, &[UserId::from("eve")]).await?;
        assert_eq!(
            store.conversations_of(&"eve".into()).await?,
            vec![ConversationId::from("other"), ConversationId::from("room")]
        );
        let got = store.get(&"room".into()).await?.map(|c| c.members);
        assert_eq!(got, Some(vec![UserId::from("alice"), UserId::from("eve")]));
        assert_eq!(store.get(&"nowhere".into()).await?, None);
        Ok(())
    }
}
