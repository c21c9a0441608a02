//! Messages, receipts, read marks and reactions in MongoDB (`--mongodb-url`), through the
//! official driver; conversations and members stay in SQL ([`super::SqlStore`]).
//!
//! Collections (created with their indexes by [`MongoStore::connect`]):
//! - `messages`: `{_id, conversation_id, seq, sender_id, content, kind, attachments,
//!   metadata?, client_ref?, sent_at}`; unique `{conversation_id, seq}`, and unique
//!   `{conversation_id, sender_id, client_ref}` where `client_ref` exists (idempotency).
//!   `metadata` is kept as JSON text, exactly as given, as in SQL.
//! - `counters`: `{_id: conversation_id, last_seq}`, the newest seq of each conversation
//!   (the seq authority with transactions).
//! - `receipts`: unique `{message_id, user_id, status}`, with `at`.
//! - `read_marks`: unique `{conversation_id, user_id}`, with `read_seq` and `at`.
//! - `reactions`: unique `{message_id, user_id, reaction}`, with `at`.
//!
//! Seq, with transactions (a replica set or a sharded cluster): an append increments the
//! conversation's counter (`findOneAndUpdate` `$inc`) and inserts the message in one
//! transaction, so a failed insert rolls the increment back and seqs stay contiguous.
//! Concurrent appends to one conversation conflict on the counter document; the loser's
//! transaction is retried after a short random backoff. A new conversation's counter starts
//! at its newest stored seq (0 when it has none).
//!
//! Seq, without transactions (a standalone `mongod`): an append reads the conversation's
//! newest seq and inserts the message with the next one; the unique `{conversation_id, seq}`
//! index refuses the loser of a race, which reads again and retries. A message gets a seq
//! only by being stored, so there is no gap either; the counter is then raised to it
//! (`$max`), so that the counters are right if the server later becomes a replica set.
//!
//! A counter behind the stored messages (restored from an older backup, or not raised during
//! a standalone period) would give a seq that is taken: the unique `{conversation_id, seq}`
//! index refuses the insert, and the append raises the counter to the newest stored seq and
//! tries again (a bounded number of times), so the store repairs itself.
//!
//! Files: `append` takes the seq and inserts; this file connects, reads and records the rest.

use super::idempotent;
use super::paging::Window;
use super::{Appended, HistoryPage, HistoryQuery, MessageStore, NewMessage, StoreError, time};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::bson::{self, Bson, Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{Acknowledgment, ClientOptions, IndexOptions, WriteConcern};
use mongodb::{Client, ClientSession, Collection, Database, IndexModel};
use serde::{Deserialize, Serialize};
use shared::event::{Message, ReceiptStatus};
use shared::{ConversationId, UserId};
use std::future::Future;
use std::time::Duration;

mod append;
#[cfg(test)]
pub(crate) mod test_server;
#[cfg(test)]
mod tests;

/// How long the driver looks for a usable server before the database counts as unavailable.
const SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(3);
/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The bound of every store operation, retries included.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);
/// The bound of a ping (readiness answers quickly).
const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// The database when the URL names none.
const DEFAULT_DATABASE: &str = "switchboard";
/// MongoDB's duplicate key error codes.
const DUPLICATE_KEY: [i32; 2] = [11000, 11001];

/// The MongoDB message store.
#[derive(Clone)]
pub struct MongoStore {
    db: Database,
    messages: Collection<MessageDoc>,
    counters: Collection<Document>,
    receipts: Collection<Document>,
    read_marks: Collection<Document>,
    reactions: Collection<Document>,
    /// The server runs transactions (a replica set member or mongos).
    transactions: bool,
}

/// A stored message.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MessageDoc {
    #[serde(rename = "_id")]
    id: String,
    conversation_id: String,
    seq: i64,
    sender_id: String,
    content: String,
    kind: String,
    attachments: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metadata: Option<String>,
    /// Absent (not null) without a client ref, so that the partial unique index skips it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_ref: Option<String>,
    sent_at: bson::DateTime,
}

impl MessageDoc {
    fn into_message(self) -> Message {
        Message {
            id: self.id,
            conversation_id: ConversationId::from(self.conversation_id),
            sender_id: UserId::from(self.sender_id),
            content: self.content,
            kind: self.kind,
            attachments: self.attachments,
            temp_id: self.client_ref,
            seq: self.seq,
            sent_at: time(self.sent_at.timestamp_millis()),
            metadata: self.metadata.and_then(|m| serde_json::from_str(&m).ok()),
        }
    }
}

fn unavailable(e: mongodb::error::Error) -> StoreError {
    match e.get_custom::<String>() {
        Some(message) => StoreError::Unavailable(message.clone()),
        None => StoreError::Unavailable(e.kind.to_string()),
    }
}

/// The server's error code, when the server answered with one.
fn error_code(e: &mongodb::error::Error) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => Some(w.code),
        ErrorKind::InsertMany(m) => m.write_errors.as_ref().and_then(|w| w.first()).map(|w| w.code),
        _ => None,
    }
}

fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    error_code(e).is_some_and(|c| DUPLICATE_KEY.contains(&c))
}

/// Bounds an operation: a server that accepts connections but does not answer is unavailable.
async fn bounded<T>(work: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    bounded_by(OPERATION_TIMEOUT, work).await
}

async fn bounded_by<T>(limit: Duration, work: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
        Err(StoreError::Unavailable(format!(
            "no answer from the database within {limit:?}"
        )))
    })
}

fn as_i64(value: Option<&Bson>) -> Option<i64> {
    match value? {
        Bson::Int64(n) => Some(*n),
        Bson::Int32(n) => Some(i64::from(*n)),
        Bson::Double(n) if n.fract() == 0.0 => Some(*n as i64),
        _ => None,
    }
}

fn unique(keys: Document, name: &str) -> IndexModel {
    IndexModel::builder()
        .keys(keys)
        .options(IndexOptions::builder().unique(true).name(name.to_owned()).build())
        .build()
}

impl MongoStore {
    /// Connects to `mongodb://…` (or `mongodb+srv://…`), checks that the server answers and
    /// creates the collections' indexes. The database is the URL's path (`switchboard` when
    /// it has none).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        bounded(Self::open(url)).await
    }

    async fn open(url: &str) -> Result<Self, StoreError> {
        let mut options = ClientOptions::parse(url).await.map_err(unavailable)?;
        options.server_selection_timeout.get_or_insert(SERVER_SELECTION_TIMEOUT);
        options.connect_timeout.get_or_insert(CONNECT_TIMEOUT);
        options.app_name.get_or_insert_with(|| "switchboard".into());
        // A message is acknowledged once it is durable (MongoDB's default on replica sets
        // since 5.0, spelled out for older servers); the URL may choose otherwise.
        options.write_concern.get_or_insert_with(|| {
            WriteConcern::builder()
                .w(Acknowledgment::Majority)
                .journal(true)
                .build()
        });
        let name = options
            .default_database
            .clone()
            .unwrap_or_else(|| DEFAULT_DATABASE.into());
        let client = Client::with_options(options).map_err(unavailable)?;
        let db = client.database(&name);
        let hello = match db.run_command(doc! { "hello": 1 }).await {
            // Servers before 4.4.2 only know the older name.
            Err(e) if error_code(&e).is_some() => db.run_command(doc! { "isMaster": 1 }).await,
            hello => hello,
        }
        .map_err(unavailable)?;
        let transactions = hello.contains_key("setName") || hello.get_str("msg").is_ok_and(|m| m == "isdbgrid");
        if !transactions {
            tracing::info!(
                "MongoDB is a standalone server without transactions: message seqs are taken by inserting after \
                 the newest one and retrying on conflict"
            );
        }
        let store = Self {
            messages: db.collection("messages"),
            counters: db.collection("counters"),
            receipts: db.collection("receipts"),
            read_marks: db.collection("read_marks"),
            reactions: db.collection("reactions"),
            db,
            transactions,
        };
        store.create_indexes().await?;
        Ok(store)
    }

    async fn create_indexes(&self) -> Result<(), StoreError> {
        self.messages
            .create_index(unique(doc! { "conversation_id": 1, "seq": 1 }, "conversation_seq"))
            .await
            .map_err(unavailable)?;
        let by_client_ref = IndexModel::builder()
            .keys(doc! { "conversation_id": 1, "sender_id": 1, "client_ref": 1 })
            .options(
                IndexOptions::builder()
                    .unique(true)
                    .name("conversation_sender_client_ref".to_owned())
                    .partial_filter_expression(doc! { "client_ref": { "$exists": true } })
                    .build(),
            )
            .build();
        self.messages.create_index(by_client_ref).await.map_err(unavailable)?;
        self.receipts
            .create_index(unique(
                doc! { "message_id": 1, "user_id": 1, "status": 1 },
                "message_user_status",
            ))
            .await
            .map_err(unavailable)?;
        self.read_marks
            .create_index(unique(doc! { "conversation_id": 1, "user_id": 1 }, "conversation_user"))
            .await
            .map_err(unavailable)?;
        self.reactions
            .create_index(unique(
                doc! { "message_id": 1, "user_id": 1, "reaction": 1 },
                "message_user_reaction",
            ))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// The seq of the conversation's newest stored message, 0 when it has none.
    async fn newest_seq(
        &self,
        session: Option<&mut ClientSession>,
        conversation: &str,
    ) -> Result<i64, mongodb::error::Error> {
        let messages = self.messages.clone_with_type::<Document>();
        let find = messages
            .find_one(doc! { "conversation_id": conversation })
            .sort(doc! { "seq": -1 })
            .projection(doc! { "seq": 1, "_id": 0 });
        let newest = match session {
            Some(session) => find.session(session).await?,
            None => find.await?,
        };
        Ok(as_i64(newest.as_ref().and_then(|m| m.get("seq"))).unwrap_or(0))
    }

    /// Moves a read mark forward, never back.
    async fn raise_read_mark(
        &self,
        conversation: &ConversationId,
        user: &UserId,
        seq: i64,
        at: i64,
    ) -> Result<(), StoreError> {
        let filter = doc! { "conversation_id": conversation.as_str(), "user_id": user.as_str() };
        let update = doc! { "$max": { "read_seq": seq }, "$set": { "at": at } };
        match self
            .read_marks
            .update_one(filter.clone(), update.clone())
            .upsert(true)
            .await
        {
            Ok(_) => Ok(()),
            // Two first marks raced to insert: the second one is an update now.
            Err(e) if is_duplicate_key(&e) => self
                .read_marks
                .update_one(filter, update)
                .await
                .map(|_| ())
                .map_err(unavailable),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Inserts a document unless one with the same key exists; true when inserted.
    async fn insert_once(collection: &Collection<Document>, key: Document, at: i64) -> Result<bool, StoreError> {
        match collection
            .update_one(key, doc! { "$setOnInsert": { "at": at } })
            .upsert(true)
            .await
        {
            Ok(done) => Ok(done.upserted_id.is_some()),
            // A concurrent insert of the same key won.
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(unavailable(e)),
        }
    }
}

#[async_trait]
impl MessageStore for MongoStore {
    async fn append(&self, new: NewMessage) -> Result<Appended, StoreError> {
        bounded(async {
            idempotent::append(self, &new)
                .await
                .map_err(|failed| failed.into_store(unavailable))
        })
        .await
    }

    async fn message(&self, id: &str) -> Result<Option<Message>, StoreError> {
        bounded(async {
            let found = self.messages.find_one(doc! { "_id": id }).await.map_err(unavailable)?;
            Ok(found.map(MessageDoc::into_message))
        })
        .await
    }

    async fn history(&self, conversation: &ConversationId, q: HistoryQuery) -> Result<HistoryPage, StoreError> {
        bounded(async {
            let window = Window::of(q);
            let found: Vec<MessageDoc> = self
                .messages
                .find(doc! {
                    "conversation_id": conversation.as_str(),
                    "seq": { "$gt": window.after, "$lt": window.before },
                })
                .sort(doc! { "seq": if window.forward { 1 } else { -1 } })
                .limit(window.fetch())
                .await
                .map_err(unavailable)?
                .try_collect()
                .await
                .map_err(unavailable)?;
            window.page(found, |doc| Ok(doc.into_message()))
        })
        .await
    }

    async fn record_receipt(
        &self,
        message: &Message,
        user: &UserId,
        status: ReceiptStatus,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        bounded(async {
            let at = at.timestamp_millis();
            let key = doc! { "message_id": &message.id, "user_id": user.as_str(), "status": status.as_str() };
            let recorded = Self::insert_once(&self.receipts, key, at).await?;
            if status == ReceiptStatus::Read {
                self.raise_read_mark(&message.conversation_id, user, message.seq, at)
                    .await?;
            }
            Ok(recorded)
        })
        .await
    }

    async fn mark_all_read(&self, conversation: &ConversationId, user: &UserId) -> Result<(), StoreError> {
        bounded(async {
            // The newest stored seq is the counter's value (they commit together), also
            // without transactions.
            let last = self.newest_seq(None, &conversation.0).await.map_err(unavailable)?;
            if last > 0 {
                self.raise_read_mark(conversation, user, last, Utc::now().timestamp_millis())
                    .await?;
            }
            Ok(())
        })
        .await
    }

    async fn unread(&self, conversation: &ConversationId, user: &UserId) -> Result<i64, StoreError> {
        bounded(async {
            let mark = self
                .read_marks
                .find_one(doc! { "conversation_id": conversation.as_str(), "user_id": user.as_str() })
                .await
                .map_err(unavailable)?;
            let read_seq = as_i64(mark.as_ref().and_then(|m| m.get("read_seq"))).unwrap_or(0);
            let count = self
                .messages
                .count_documents(doc! {
                    "conversation_id": conversation.as_str(),
                    "sender_id": { "$ne": user.as_str() },
                    "seq": { "$gt": read_seq },
                })
                .await
                .map_err(unavailable)?;
            i64::try_from(count).map_err(|e| StoreError::Unavailable(e.to_string()))
        })
        .await
    }

    async fn react(&self, message: &Message, user: &UserId, reaction: &str, add: bool) -> Result<bool, StoreError> {
        bounded(async {
            let key = doc! { "message_id": &message.id, "user_id": user.as_str(), "reaction": reaction };
            if add {
                Self::insert_once(&self.reactions, key, Utc::now().timestamp_millis()).await
            } else {
                let done = self.reactions.delete_one(key).await.map_err(unavailable)?;
                Ok(done.deleted_count > 0)
            }
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        bounded_by(PING_TIMEOUT, async {
            self.db.run_command(doc! { "ping": 1 }).await.map_err(unavailable)?;
            Ok(())
        })
        .await
    }
}
