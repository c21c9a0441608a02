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

use super::{Appended, HistoryPage, HistoryQuery, MessageStore, NewMessage, StoreError, time};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::bson::{self, Bson, Document, doc};
use mongodb::error::{ErrorKind, TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT, WriteFailure};
use mongodb::options::{Acknowledgment, ClientOptions, IndexOptions, ReturnDocument, WriteConcern};
use mongodb::{Client, ClientSession, Collection, Database, IndexModel};
use serde::{Deserialize, Serialize};
use shared::event::{Message, ReceiptStatus};
use shared::{ConversationId, UserId};
use std::future::Future;
use std::time::Duration;

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
            conversation_id: ConversationId(self.conversation_id),
            sender_id: UserId(self.sender_id),
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

/// How one transaction attempt of an append failed.
enum Attempt {
    /// It lost a race the server reported (a write conflict on the counter): run it again.
    Retry,
    /// Give up.
    Fail(mongodb::error::Error),
}

impl Attempt {
    /// Network and server selection errors also carry the transient label, but retrying them
    /// would only delay the `unavailable` answer: only conflicts the server reported are retried.
    fn new(e: mongodb::error::Error) -> Self {
        if e.contains_label(TRANSIENT_TRANSACTION_ERROR) && error_code(&e).is_some() {
            Self::Retry
        } else {
            Self::Fail(e)
        }
    }
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

/// A short random pause before retrying a lost race, growing with the attempts.
async fn backoff(attempt: u32) {
    let ceiling = u64::from(attempt.min(10)) * 4;
    tokio::time::sleep(Duration::from_millis(1 + rand::random_range(0..=ceiling))).await;
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

    async fn existing(&self, message: &NewMessage) -> Result<Option<Message>, StoreError> {
        let found = self.find_existing(message).await.map_err(unavailable)?;
        Ok(found.map(MessageDoc::into_message))
    }

    async fn find_existing(&self, message: &NewMessage) -> Result<Option<MessageDoc>, mongodb::error::Error> {
        let Some(client_ref) = &message.client_ref else {
            return Ok(None);
        };
        self.messages
            .find_one(doc! {
                "conversation_id": &message.conversation_id.0,
                "sender_id": &message.sender_id.0,
                "client_ref": client_ref,
            })
            .await
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

    async fn insert(&self, new: &NewMessage) -> Result<Message, mongodb::error::Error> {
        let at = Utc::now().timestamp_millis();
        let mut message = MessageDoc {
            id: uuid::Uuid::now_v7().to_string(),
            conversation_id: new.conversation_id.0.clone(),
            seq: 0,
            sender_id: new.sender_id.0.clone(),
            content: new.content.clone(),
            kind: new.kind.clone(),
            attachments: new.attachments.clone(),
            metadata: new.metadata.as_ref().map(|m| m.to_string()),
            client_ref: new.client_ref.clone(),
            sent_at: bson::DateTime::from_millis(at),
        };
        if self.transactions {
            let mut attempt: u32 = 0;
            loop {
                let mut session = self.db.client().start_session().await?;
                match self.insert_in_transaction(&mut session, &mut message).await {
                    Ok(()) => break,
                    Err(Attempt::Retry) => {
                        // Bounded by the caller's OPERATION_TIMEOUT.
                        attempt = attempt.saturating_add(1);
                        backoff(attempt).await;
                    }
                    Err(Attempt::Fail(e)) => return Err(e),
                }
            }
        } else {
            self.insert_after_newest(new, &mut message).await?;
        }
        Ok(new.stored(message.id, message.seq, at))
    }

    /// Takes the next seq and inserts the message in one transaction; on any error the
    /// transaction is aborted, so the counter is not moved.
    async fn insert_in_transaction(
        &self,
        session: &mut ClientSession,
        message: &mut MessageDoc,
    ) -> Result<(), Attempt> {
        session.start_transaction().await.map_err(Attempt::Fail)?;
        let written = async {
            message.seq = match self.next_seq(&mut *session, &message.conversation_id).await {
                // Two first appends to a conversation raced to create its counter.
                Err(e) if is_duplicate_key(&e) => return Err(Attempt::Retry),
                seq => seq.map_err(Attempt::new)?,
            };
            self.messages
                .insert_one(&*message)
                .session(&mut *session)
                .await
                .map_err(Attempt::new)?;
            Ok(())
        }
        .await;
        if let Err(e) = written {
            // The server aborts a transaction whose write failed; this only tells it so when
            // it did not (and is harmless when it did).
            let _ = session.abort_transaction().await;
            return Err(e);
        }
        let mut commits = 0;
        loop {
            match session.commit_transaction().await {
                Ok(()) => return Ok(()),
                // The commit's outcome is unknown but the server answered: committing again
                // is safe and tells which it was.
                Err(e)
                    if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT)
                        && error_code(&e).is_some()
                        && commits < 3 =>
                {
                    commits += 1;
                }
                Err(e) => return Err(Attempt::new(e)),
            }
        }
    }

    /// Without transactions: inserts the message with the seq after the newest stored one,
    /// again after a fresh read when a concurrent append took that seq first.
    async fn insert_after_newest(
        &self,
        new: &NewMessage,
        message: &mut MessageDoc,
    ) -> Result<(), mongodb::error::Error> {
        let mut attempt: u32 = 0;
        loop {
            message.seq = self.newest_seq(None, &message.conversation_id).await? + 1;
            match self.messages.insert_one(&*message).await {
                Ok(_) => break,
                Err(e) if is_duplicate_key(&e) => {
                    // The same client ref stored meanwhile: the caller answers that message.
                    if self.find_existing(new).await?.is_some() {
                        return Err(e);
                    }
                    // Bounded by the caller's OPERATION_TIMEOUT.
                    attempt = attempt.saturating_add(1);
                    backoff(attempt).await;
                }
                Err(e) => return Err(e),
            }
        }
        let raised = self
            .counters
            .update_one(
                doc! { "_id": &message.conversation_id },
                doc! { "$max": { "last_seq": message.seq } },
            )
            .upsert(true)
            .await;
        if let Err(e) = raised
            && !is_duplicate_key(&e)
        {
            // The message is stored: only a later switch to transactions needs the counter,
            // and it repairs a missing one from the messages.
            tracing::warn!(conversation = %message.conversation_id, "cannot raise the seq counter: {}", e.kind);
        }
        Ok(())
    }

    /// In a transaction: increments the conversation's counter and answers its new value. A
    /// missing counter is created first at the conversation's newest stored seq, by an upsert
    /// that increments nothing (the increment itself is never an upsert, whose answer some
    /// servers lose when two race); two such creations conflict and the caller retries.
    async fn next_seq(&self, session: &mut ClientSession, conversation: &str) -> Result<i64, mongodb::error::Error> {
        let id = doc! { "_id": conversation };
        for _ in 0..2 {
            let counter = self
                .counters
                .find_one_and_update(id.clone(), doc! { "$inc": { "last_seq": 1_i64 } })
                .return_document(ReturnDocument::After)
                .session(&mut *session)
                .await?;
            if let Some(seq) = as_i64(counter.as_ref().and_then(|c| c.get("last_seq"))) {
                return Ok(seq);
            }
            let newest = self.newest_seq(Some(&mut *session), conversation).await?;
            self.counters
                .update_one(id.clone(), doc! { "$setOnInsert": { "last_seq": newest } })
                .upsert(true)
                .session(&mut *session)
                .await?;
        }
        Err(mongodb::error::Error::custom(format!(
            "no seq counter for conversation {conversation}"
        )))
    }

    /// Moves a read mark forward, never back.
    async fn raise_read_mark(
        &self,
        conversation: &ConversationId,
        user: &UserId,
        seq: i64,
        at: i64,
    ) -> Result<(), StoreError> {
        let filter = doc! { "conversation_id": &conversation.0, "user_id": &user.0 };
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
            if let Some(existing) = self.existing(&new).await? {
                return Ok(Appended::Existing(existing));
            }
            match self.insert(&new).await {
                Ok(message) => Ok(Appended::Created(message)),
                // A concurrent retry with the same client ref won the race: answer its message.
                Err(e) if is_duplicate_key(&e) && new.client_ref.is_some() => self
                    .existing(&new)
                    .await?
                    .map(Appended::Existing)
                    .ok_or_else(|| unavailable(e)),
                Err(e) => Err(unavailable(e)),
            }
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
            let limit = i64::from(q.limit.max(1));
            // With `after` the page grows forward from it; otherwise backward from `before` (or
            // the newest message).
            let forward = q.after.is_some();
            let found: Vec<MessageDoc> = self
                .messages
                .find(doc! {
                    "conversation_id": &conversation.0,
                    "seq": { "$gt": q.after.unwrap_or(0), "$lt": q.before.unwrap_or(i64::MAX) },
                })
                .sort(doc! { "seq": if forward { 1 } else { -1 } })
                .limit(limit + 1)
                .await
                .map_err(unavailable)?
                .try_collect()
                .await
                .map_err(unavailable)?;
            let has_more = found.len() as i64 > limit;
            let mut messages: Vec<Message> = found
                .into_iter()
                .take(limit as usize)
                .map(MessageDoc::into_message)
                .collect();
            if !forward {
                messages.reverse();
            }
            Ok(HistoryPage { messages, has_more })
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
            let key = doc! { "message_id": &message.id, "user_id": &user.0, "status": status.as_str() };
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
                .find_one(doc! { "conversation_id": &conversation.0, "user_id": &user.0 })
                .await
                .map_err(unavailable)?;
            let read_seq = as_i64(mark.as_ref().and_then(|m| m.get("read_seq"))).unwrap_or(0);
            let count = self
                .messages
                .count_documents(doc! {
                    "conversation_id": &conversation.0,
                    "sender_id": { "$ne": &user.0 },
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
            let key = doc! { "message_id": &message.id, "user_id": &user.0, "reaction": reaction };
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

#[cfg(test)]
pub(crate) mod test_server {
    //! A private `secantusd-py` (a MongoDB wire-protocol server; MongoDB itself is not
    //! installable here) on a free port, for tests that need a real server. scripts/test
    //! installs it; `SECANTUSD_PY` names the executable when it is not on `PATH`.
    use std::net::TcpListener;
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    /// A running server, killed (and its data removed) on drop.
    pub(crate) struct TestMongo {
        child: Option<Child>,
        port: u16,
        dir: PathBuf,
        standalone: bool,
        /// `mongodb://127.0.0.1:PORT/DB`.
        pub(crate) url: String,
    }

    fn executable() -> String {
        std::env::var("SECANTUSD_PY").unwrap_or_else(|_| "secantusd-py".into())
    }

    impl TestMongo {
        /// A single-node replica set (transactions available), database `db`.
        pub(crate) async fn start(db: &str) -> Result<Self, String> {
            Self::start_with(db, false).await
        }

        /// A standalone server: the driver sees no replica set, so no transactions.
        pub(crate) async fn start_standalone(db: &str) -> Result<Self, String> {
            Self::start_with(db, true).await
        }

        async fn start_with(db: &str, standalone: bool) -> Result<Self, String> {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| e.to_string())?
                .port();
            let dir = std::env::temp_dir().join(format!("switchboard-mongo-{}-{port}", std::process::id()));
            let mut server = Self {
                child: None,
                port,
                dir,
                standalone,
                url: format!("mongodb://127.0.0.1:{port}/{db}"),
            };
            server.restart().await?;
            Ok(server)
        }

        /// Starts the server (again) on the same port and data directory.
        pub(crate) async fn restart(&mut self) -> Result<(), String> {
            std::fs::create_dir_all(&self.dir).map_err(|e| e.to_string())?;
            let mut command = Command::new(executable());
            command
                .args([
                    "--host",
                    "127.0.0.1",
                    "--port",
                    &self.port.to_string(),
                    "--log-level",
                    "WARNING",
                    // Acknowledged writes survive a SIGKILL, as with a journaled mongod.
                    "--sync-on-commit",
                    // configureFailPoint, to make the server fail chosen commands.
                    "--enable-test-commands",
                ])
                .arg("--storage-path")
                .arg(&self.dir)
                .stdout(Stdio::null());
            if self.standalone {
                command.arg("--standalone");
            }
            let child = command.spawn().map_err(|e| {
                format!(
                    "cannot start {} (scripts/test installs it: pip install secantusdb==0.7.0b3): {e}",
                    executable()
                )
            })?;
            self.child = Some(child);
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(60) {
                if let Some(child) = self.child.as_mut()
                    && let Ok(Some(status)) = child.try_wait()
                {
                    return Err(format!("{} exited at start: {status}", executable()));
                }
                if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(format!(
                "{} did not listen on port {} within 60 s",
                executable(),
                self.port
            ))
        }

        /// Freezes (SIGSTOP) or thaws (SIGCONT) the server: it keeps its connections but
        /// answers nothing while frozen.
        pub(crate) fn freeze(&self, frozen: bool) -> Result<(), String> {
            let pid = self.child.as_ref().ok_or("the server is not running")?.id();
            let status = Command::new("kill")
                .args([if frozen { "-STOP" } else { "-CONT" }, &pid.to_string()])
                .status()
                .map_err(|e| e.to_string())?;
            if !status.success() {
                return Err(format!("kill failed: {status}"));
            }
            // The signal takes effect asynchronously: wait until every thread is stopped.
            let stopped = |status: &str| status.lines().any(|l| l.starts_with("State:") && l.contains("stopped"));
            for _ in 0..200 {
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
                if stopped(&status) == frozen {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(format!(
                "the server did not {}",
                if frozen { "stop" } else { "continue" }
            ))
        }

        /// Kills the server at once (SIGKILL), keeping its data directory.
        pub(crate) fn kill(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    impl Drop for TestMongo {
        fn drop(&mut self) {
            self.kill();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_server::TestMongo;
    use super::*;
    use crate::store::tests::messages_conform;
    use std::collections::BTreeSet;
    use std::sync::Arc;
    use std::time::Instant;

    type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

    fn new_message(conversation: &str, sender: &str, client_ref: Option<&str>) -> NewMessage {
        NewMessage {
            conversation_id: ConversationId(conversation.into()),
            sender_id: UserId(sender.into()),
            content: format!("hello from {sender}"),
            kind: "text".into(),
            attachments: vec![],
            client_ref: client_ref.map(Into::into),
            metadata: None,
        }
    }

    fn created(appended: Appended) -> Result<Message, String> {
        match appended {
            Appended::Created(m) => Ok(m),
            Appended::Existing(m) => Err(format!("expected a new message, got existing seq {}", m.seq)),
        }
    }

    async fn all_seqs(store: &dyn MessageStore, conversation: &str) -> Result<Vec<i64>, StoreError> {
        let mut seqs = vec![];
        let mut after = 0;
        loop {
            let page = store
                .history(
                    &ConversationId(conversation.into()),
                    HistoryQuery {
                        before: None,
                        after: Some(after),
                        limit: 100,
                    },
                )
                .await?;
            seqs.extend(page.messages.iter().map(|m| m.seq));
            match page.messages.last() {
                Some(last) if page.has_more => after = last.seq,
                _ => return Ok(seqs),
            }
        }
    }

    /// `senders` tasks each append `per_sender` messages to one conversation at once: the
    /// seqs are 1..=n, without gap or duplicate, in the acks and in history.
    async fn check_contiguous_seqs(store: Arc<dyn MessageStore>, senders: usize, per_sender: usize) -> TestResult {
        let conversation = "seq-race";
        let mut tasks = vec![];
        for s in 0..senders {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut seqs = vec![];
                for i in 0..per_sender {
                    let tag = format!("s{s}-{i}");
                    let message = created(
                        store
                            .append(new_message(conversation, &format!("user{s}"), Some(&tag)))
                            .await
                            .map_err(|e| e.to_string())?,
                    )?;
                    seqs.push(message.seq);
                }
                Ok::<_, String>(seqs)
            }));
        }
        let mut acked = vec![];
        for task in tasks {
            acked.extend(task.await??);
        }
        acked.sort_unstable();
        let expected: Vec<i64> = (1..=(senders * per_sender) as i64).collect();
        assert_eq!(acked, expected, "acked seqs are 1..=n");
        assert_eq!(
            all_seqs(store.as_ref(), conversation).await?,
            expected,
            "stored seqs are 1..=n"
        );
        Ok(())
    }

    /// A retry answers the first message and stores nothing, also when retries race.
    async fn check_idempotency(store: Arc<dyn MessageStore>) -> TestResult {
        let conversation = "idem";
        let first = created(store.append(new_message(conversation, "alice", Some("t1"))).await?)?;
        let Appended::Existing(again) = store.append(new_message(conversation, "alice", Some("t1"))).await? else {
            return Err("a retry was stored again".into());
        };
        assert_eq!((again.id.as_str(), again.seq), (first.id.as_str(), first.seq));
        assert_eq!(again, first);
        // The key is (conversation, sender, client ref).
        let other_sender = created(store.append(new_message(conversation, "bob", Some("t1"))).await?)?;
        let other_conversation = created(store.append(new_message("idem-2", "alice", Some("t1"))).await?)?;
        assert_eq!((other_sender.seq, other_conversation.seq), (2, 1));
        // Without a client ref nothing is deduplicated.
        let a = created(store.append(new_message(conversation, "alice", None)).await?)?;
        let b = created(store.append(new_message(conversation, "alice", None)).await?)?;
        assert_eq!((a.seq, b.seq, a.temp_id.clone()), (3, 4, None));
        // Racing retries: one stored, all answer it.
        let racers: Vec<_> = (0..6)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.append(new_message(conversation, "carol", Some("race"))).await })
            })
            .collect();
        let mut ids = BTreeSet::new();
        let mut created_count = 0;
        for racer in racers {
            let appended = racer.await??;
            if matches!(appended, Appended::Created(_)) {
                created_count += 1;
            }
            ids.insert(appended.message().id.clone());
        }
        assert_eq!(
            (created_count, ids.len()),
            (1, 1),
            "one racer stored, all got its message"
        );
        assert_eq!(all_seqs(store.as_ref(), conversation).await?, vec![1, 2, 3, 4, 5]);
        Ok(())
    }

    async fn check_history(store: &dyn MessageStore) -> TestResult {
        let conversation = ConversationId("history".into());
        let started = Utc::now();
        let mut sent = vec![];
        for i in 1..=10 {
            let mut new = new_message(&conversation.0, if i % 2 == 0 { "alice" } else { "bob" }, None);
            new.content = format!("message {i}");
            if i == 1 {
                new.kind = "image".into();
                new.attachments = vec!["https://example.com/a.png".into(), "https://example.com/b.png".into()];
                new.client_ref = Some("first".into());
                new.metadata = Some(serde_json::json!({"a": [1, 2.5, "x", null], "$b": {"c.d": true}}));
            }
            sent.push(created(store.append(new).await?)?);
        }
        let first = &sent[0];
        assert_eq!(first.attachments.len(), 2);
        assert_eq!(first.temp_id.as_deref(), Some("first"));
        assert!(first.sent_at >= started - chrono::Duration::seconds(1) && first.sent_at <= Utc::now());
        // Stored exactly as acked.
        assert_eq!(store.message(&first.id).await?.as_ref(), Some(first));
        assert_eq!(store.message("no-such-message").await?, None);

        let page = |before: Option<i64>, after: Option<i64>, limit: u32| HistoryQuery { before, after, limit };
        let seqs = |p: &HistoryPage| p.messages.iter().map(|m| m.seq).collect::<Vec<_>>();
        let newest = store.history(&conversation, page(None, None, 3)).await?;
        assert_eq!((seqs(&newest), newest.has_more), (vec![8, 9, 10], true));
        assert_eq!(newest.messages[2], sent[9]);
        let older = store.history(&conversation, page(Some(8), None, 3)).await?;
        assert_eq!((seqs(&older), older.has_more), (vec![5, 6, 7], true));
        let oldest = store.history(&conversation, page(Some(3), None, 5)).await?;
        assert_eq!((seqs(&oldest), oldest.has_more), (vec![1, 2], false));
        assert_eq!(oldest.messages[0], sent[0]);
        let from_start = store.history(&conversation, page(None, Some(0), 4)).await?;
        assert_eq!((seqs(&from_start), from_start.has_more), (vec![1, 2, 3, 4], true));
        let missed = store.history(&conversation, page(None, Some(8), 5)).await?;
        assert_eq!((seqs(&missed), missed.has_more), (vec![9, 10], false));
        let between = store.history(&conversation, page(Some(6), Some(2), 10)).await?;
        assert_eq!((seqs(&between), between.has_more), (vec![3, 4, 5], false));
        let exact = store.history(&conversation, page(None, Some(7), 3)).await?;
        assert_eq!((seqs(&exact), exact.has_more), (vec![8, 9, 10], false));
        let up_to_date = store.history(&conversation, page(None, Some(10), 5)).await?;
        assert_eq!((seqs(&up_to_date), up_to_date.has_more), (vec![], false));
        // A zero limit counts as one.
        let one = store.history(&conversation, page(None, None, 0)).await?;
        assert_eq!((seqs(&one), one.has_more), (vec![10], true));
        let empty = store
            .history(&ConversationId("no-such-conversation".into()), page(None, None, 10))
            .await?;
        assert_eq!((empty.messages.len(), empty.has_more), (0, false));
        Ok(())
    }

    async fn check_receipts_and_unread(store: &dyn MessageStore) -> TestResult {
        let conversation = ConversationId("receipts".into());
        let (alice, bob, carol) = (UserId("alice".into()), UserId("bob".into()), UserId("carol".into()));
        let mut sent = vec![];
        for sender in ["alice", "alice", "bob", "alice", "alice", "bob", "alice"] {
            sent.push(created(
                store.append(new_message(&conversation.0, sender, None)).await?,
            )?);
        }
        assert_eq!(store.unread(&conversation, &bob).await?, 5, "alice's five");
        assert_eq!(store.unread(&conversation, &alice).await?, 2, "bob's two");
        assert_eq!(store.unread(&conversation, &carol).await?, 7, "everything");
        assert_eq!(store.unread(&ConversationId("nothing".into()), &bob).await?, 0);

        let now = Utc::now();
        let third = &sent[2];
        assert!(
            store
                .record_receipt(third, &carol, ReceiptStatus::Delivered, now)
                .await?
        );
        assert!(
            !store
                .record_receipt(third, &carol, ReceiptStatus::Delivered, now)
                .await?
        );
        assert_eq!(store.unread(&conversation, &carol).await?, 7, "delivered is not read");
        assert!(store.record_receipt(third, &carol, ReceiptStatus::Read, now).await?);
        assert!(!store.record_receipt(third, &carol, ReceiptStatus::Read, now).await?);
        assert_eq!(store.unread(&conversation, &carol).await?, 4, "seqs 4..=7");
        // Reading an older message never lowers the mark.
        assert!(store.record_receipt(&sent[0], &carol, ReceiptStatus::Read, now).await?);
        assert_eq!(store.unread(&conversation, &carol).await?, 4);
        assert!(store.record_receipt(&sent[4], &bob, ReceiptStatus::Read, now).await?);
        assert_eq!(store.unread(&conversation, &bob).await?, 1, "alice's seq 7");
        // Up to now, for a reader with and without a mark.
        store.mark_all_read(&conversation, &bob).await?;
        store.mark_all_read(&conversation, &alice).await?;
        assert_eq!(store.unread(&conversation, &bob).await?, 0);
        assert_eq!(store.unread(&conversation, &alice).await?, 0);
        // A new message counts again, for the others only.
        created(store.append(new_message(&conversation.0, "alice", None)).await?)?;
        assert_eq!(store.unread(&conversation, &bob).await?, 1);
        assert_eq!(store.unread(&conversation, &alice).await?, 0);
        // mark_all_read never lowers a mark either, and is harmless on an unknown conversation.
        assert!(store.record_receipt(&sent[6], &carol, ReceiptStatus::Read, now).await?);
        store.mark_all_read(&ConversationId("nothing".into()), &carol).await?;
        assert_eq!(store.unread(&conversation, &carol).await?, 1);
        Ok(())
    }

    async fn check_reactions(store: &dyn MessageStore) -> TestResult {
        let message = created(store.append(new_message("reactions", "alice", None)).await?)?;
        let bob = UserId("bob".into());
        assert!(store.react(&message, &bob, "👍", true).await?);
        assert!(!store.react(&message, &bob, "👍", true).await?, "added twice");
        assert!(store.react(&message, &bob, "🎉", true).await?, "another reaction");
        assert!(
            store.react(&message, &UserId("carol".into()), "👍", true).await?,
            "another user"
        );
        assert!(store.react(&message, &bob, "👍", false).await?);
        assert!(!store.react(&message, &bob, "👍", false).await?, "removed twice");
        assert!(!store.react(&message, &bob, "❤️", false).await?, "never added");
        assert!(
            store.react(&message, &bob, "👍", true).await?,
            "added again after removal"
        );
        Ok(())
    }

    async fn check_all(store: Arc<dyn MessageStore>, senders: usize, per_sender: usize) -> TestResult {
        store.ping().await?;
        check_contiguous_seqs(store.clone(), senders, per_sender).await?;
        check_idempotency(store.clone()).await?;
        check_history(store.as_ref()).await?;
        check_receipts_and_unread(store.as_ref()).await?;
        check_reactions(store.as_ref()).await?;
        Ok(())
    }

    /// The suite every store runs (store/mod.rs), on a replica set and on a standalone server.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn conforms() -> TestResult {
        let server = TestMongo::start("conformance").await?;
        messages_conform(Arc::new(MongoStore::connect(&server.url).await?)).await?;
        let standalone = TestMongo::start_standalone("conformance").await?;
        messages_conform(Arc::new(MongoStore::connect(&standalone.url).await?)).await?;
        Ok(())
    }

    // The checks below go further than the shared suite: more senders, metadata and
    // attachments round trips, failed writes, a server that goes away.

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn message_store_contract_on_a_replica_set() -> TestResult {
        let server = TestMongo::start("contract").await?;
        let store = MongoStore::connect(&server.url).await?;
        assert!(store.transactions, "secantusd advertises a single-node replica set");
        check_all(Arc::new(store), 8, 50).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn message_store_contract_on_a_standalone_server() -> TestResult {
        let server = TestMongo::start_standalone("standalone").await?;
        let store = MongoStore::connect(&server.url).await?;
        assert!(!store.transactions, "a standalone server runs no transactions");
        check_all(Arc::new(store), 4, 25).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connect_creates_the_indexes_once_and_reads_the_database_from_the_url() -> TestResult {
        let server = TestMongo::start("named").await?;
        let store = MongoStore::connect(&server.url).await?;
        // Connecting again (a second node, a restart) finds the indexes there.
        let again = MongoStore::connect(&server.url).await?;
        created(store.append(new_message("c", "alice", Some("x"))).await?)?;
        assert!(matches!(
            again.append(new_message("c", "alice", Some("x"))).await?,
            Appended::Existing(_)
        ));
        assert_eq!(store.db.name(), "named");
        let names = store.messages.list_index_names().await?;
        for name in ["conversation_seq", "conversation_sender_client_ref"] {
            assert!(names.iter().any(|n| n == name), "index {name} in {names:?}");
        }
        // A lost counter starts again from the newest stored message (with transactions, as
        // here, and after a standalone period, whose appends do not need it).
        created(store.append(new_message("c", "bob", None)).await?)?;
        store.counters.delete_many(doc! {}).await?;
        assert_eq!(created(store.append(new_message("c", "bob", None)).await?)?.seq, 3);
        let default = MongoStore::connect(&server.url.replace("/named", "/")).await?;
        assert_eq!(default.db.name(), DEFAULT_DATABASE);
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conflicts_are_retried_and_a_failed_insert_leaves_no_gap() -> TestResult {
        let server = TestMongo::start("failpoints").await?;
        let store = MongoStore::connect(&server.url).await?;
        let fail = |command: &str, times: i32, code: i32, labels: Vec<&str>| {
            doc! {
                "configureFailPoint": "failCommand",
                "mode": { "times": times },
                "data": { "failCommands": [command], "errorCode": code, "errorLabels": labels },
            }
        };
        let admin = store.db.client().database("admin");
        assert_eq!(created(store.append(new_message("c", "alice", None)).await?)?.seq, 1);
        // A write conflict on the counter (what concurrent appends meet on MongoDB): retried.
        admin
            .run_command(fail("findAndModify", 3, 112, vec![TRANSIENT_TRANSACTION_ERROR]))
            .await?;
        assert_eq!(
            created(store.append(new_message("c", "alice", Some("t"))).await?)?.seq,
            2
        );
        // An insert that fails after the counter moved: the transaction takes the move back.
        admin.run_command(fail("insert", 1, 2, vec![])).await?;
        let failed = store.append(new_message("c", "alice", Some("u"))).await;
        assert!(matches!(failed, Err(StoreError::Unavailable(_))), "{failed:?}");
        assert_eq!(
            created(store.append(new_message("c", "alice", Some("u"))).await?)?.seq,
            3
        );
        // So does a failed commit.
        admin.run_command(fail("commitTransaction", 1, 2, vec![])).await?;
        let failed = store.append(new_message("c", "bob", None)).await;
        assert!(matches!(failed, Err(StoreError::Unavailable(_))), "{failed:?}");
        assert_eq!(created(store.append(new_message("c", "bob", None)).await?)?.seq, 4);
        assert_eq!(all_seqs(&store, "c").await?, vec![1, 2, 3, 4]);
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_that_does_not_answer_is_unavailable_within_the_bounds() -> TestResult {
        let server = TestMongo::start("frozen").await?;
        let store = MongoStore::connect(&server.url).await?;
        let stored = created(store.append(new_message("c", "alice", None)).await?)?;
        server.freeze(true)?;
        let started = Instant::now();
        let ping = store.ping().await;
        let ping_took = started.elapsed();
        let started = Instant::now();
        let read = store.message(&stored.id).await;
        let read_took = started.elapsed();
        server.freeze(false)?;
        assert!(matches!(ping, Err(StoreError::Unavailable(_))), "ping: {ping:?}");
        assert!(
            ping_took < PING_TIMEOUT + Duration::from_secs(2),
            "ping took {ping_took:?}"
        );
        assert!(matches!(read, Err(StoreError::Unavailable(_))), "read: {read:?}");
        assert!(
            read_took < OPERATION_TIMEOUT + Duration::from_secs(2),
            "read took {read_took:?}"
        );
        // Thawed, it answers again.
        let started = Instant::now();
        while store.ping().await.is_err() {
            assert!(started.elapsed() < Duration::from_secs(30), "the store did not recover");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(store.message(&stored.id).await?, Some(stored));
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_down_server_answers_unavailable_quickly_and_the_store_recovers() -> TestResult {
        let mut server = TestMongo::start("faults").await?;
        let store = MongoStore::connect(&server.url).await?;
        let stored = created(store.append(new_message("c", "alice", Some("before"))).await?)?;
        server.kill();

        // Each call fails within the server selection timeout (3 s), with room for a slow machine.
        let quick = Duration::from_secs(6);
        let started = Instant::now();
        let ping = store.ping().await;
        assert!(matches!(ping, Err(StoreError::Unavailable(_))), "ping: {ping:?}");
        assert!(started.elapsed() < quick, "ping took {:?}", started.elapsed());
        let started = Instant::now();
        let append = store.append(new_message("c", "alice", Some("during"))).await;
        assert!(matches!(append, Err(StoreError::Unavailable(_))), "append: {append:?}");
        assert!(started.elapsed() < quick, "append took {:?}", started.elapsed());
        let started = Instant::now();
        let query = HistoryQuery {
            before: None,
            after: None,
            limit: 10,
        };
        let history = store.history(&ConversationId("c".into()), query).await;
        assert!(
            matches!(history, Err(StoreError::Unavailable(_))),
            "history: {history:?}"
        );
        assert!(started.elapsed() < quick, "history took {:?}", started.elapsed());

        // Nothing listens: connecting fails, quickly.
        let started = Instant::now();
        let refused = MongoStore::connect(&server.url).await;
        assert!(matches!(refused, Err(StoreError::Unavailable(_))));
        assert!(started.elapsed() < quick, "connect took {:?}", started.elapsed());

        // The server returns with its data: the same store answers again by itself.
        server.restart().await?;
        let started = Instant::now();
        while store.ping().await.is_err() {
            assert!(started.elapsed() < Duration::from_secs(30), "the store did not recover");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(store.message(&stored.id).await?, Some(stored.clone()));
        let Appended::Existing(retried) = store.append(new_message("c", "alice", Some("before"))).await? else {
            return Err("a retry after the restart was stored again".into());
        };
        assert_eq!(retried.id, stored.id);
        let next = created(store.append(new_message("c", "alice", Some("after"))).await?)?;
        assert_eq!(next.seq, 2, "no gap from the failed append");
        Ok(())
    }
}
