//! SQLite (the embedded default) and PostgreSQL through sqlx's `Any` driver: one portable
//! schema (migrations/), one set of queries.

use super::{
    Appended, Conversation, ConversationStore, HistoryPage, HistoryQuery, MessageStore, NewMessage, StoreError, time,
};
use crate::metrics::METRICS;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use shared::event::{Message, ReceiptStatus};
use shared::{ConversationId, UserId};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::oneshot;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How long a query waits for a pooled connection before the database counts as unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Most appends one batch stores (one statement on PostgreSQL, one transaction on SQLite).
const MAX_BATCH: usize = 256;

/// The SQL store.
#[derive(Clone)]
pub struct SqlStore {
    pool: AnyPool,
    postgres: bool,
    batches: Arc<Batches>,
    /// SQLite has one writer at a time: writers of this process queue here rather than in
    /// SQLite's busy handler, which sleeps (1, 2, 5, 10… ms) between attempts.
    sqlite_writer: Arc<tokio::sync::Mutex<()>>,
}

/// An append waiting for the next batch.
struct Pending {
    new: NewMessage,
    done: oneshot::Sender<Result<Appended, StoreError>>,
}

/// Group commit for the node: the appends that arrive while one batch is being stored wait,
/// and the next batch stores them all, whatever their conversations, with one statement
/// (PostgreSQL) or transaction (SQLite) and one commit, rather than one per message.
#[derive(Default)]
struct Batches {
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Pending>,
    /// A flusher task is serving the queue.
    flushing: bool,
}

impl Batches {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues an append; true when no flusher serves the queue yet (the caller starts one).
    fn push(&self, pending: Pending) -> bool {
        let mut queue = self.lock();
        queue.waiting.push_back(pending);
        !std::mem::replace(&mut queue.flushing, true)
    }

    /// The next batch, oldest first; `None` (and the flusher's end) when nothing waits. A
    /// second append with the same (conversation, sender, client ref) as one in the batch waits
    /// for the next batch, where it finds the first stored.
    fn take(&self) -> Option<Vec<Pending>> {
        let mut queue = self.lock();
        if queue.waiting.is_empty() {
            queue.flushing = false;
            return None;
        }
        let mut batch = Vec::with_capacity(queue.waiting.len().min(MAX_BATCH));
        let mut refs: HashSet<RefKey> = HashSet::new();
        let mut later = VecDeque::new();
        while let Some(pending) = queue.waiting.pop_front() {
            if batch.len() == MAX_BATCH {
                later.push_back(pending);
                later.append(&mut queue.waiting);
                break;
            }
            let new = &pending.new;
            let fresh = match &new.client_ref {
                Some(r) => refs.insert((new.conversation_id.clone(), new.sender_id.clone(), r.clone())),
                None => true,
            };
            if fresh {
                batch.push(pending);
            } else {
                later.push_back(pending);
            }
        }
        queue.waiting = later;
        Some(batch)
    }

    /// Every waiting append, taken out of the queue.
    fn drain(&self) -> VecDeque<Pending> {
        std::mem::take(&mut self.lock().waiting)
    }

    /// After a flusher died: its waiting appends are answered `unavailable` (their senders
    /// dropped), and the next append starts a new flusher.
    fn abandon(&self) {
        let mut queue = self.lock();
        queue.waiting.clear();
        queue.flushing = false;
    }
}

/// Frees the queue if its flusher ends without emptying it (a panic): otherwise every later
/// append would wait for a flusher that never comes.
struct FlusherGuard<'a> {
    batches: &'a Batches,
    finished: bool,
}

impl Drop for FlusherGuard<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.batches.abandon();
        }
    }
}

/// Whether a text the batch statements read from JSON holds a NUL (attachments and metadata
/// travel as JSON text already, their NULs escaped).
fn has_nul(new: &NewMessage) -> bool {
    let text = |s: &str| s.contains('\0');
    text(&new.conversation_id.0)
        || text(&new.sender_id.0)
        || text(&new.content)
        || text(&new.kind)
        || new.client_ref.as_deref().is_some_and(text)
}

/// What makes an append a retry: (conversation, sender, client ref).
type RefKey = (ConversationId, UserId, String);

/// One row of a batch as the batch statement reads it (a JSON array of these).
#[derive(Serialize)]
struct BatchRow<'a> {
    conversation_id: &'a str,
    id: &'a str,
    sender_id: &'a str,
    content: &'a str,
    kind: &'a str,
    attachments: &'a str,
    metadata: Option<&'a str>,
    client_ref: Option<&'a str>,
}

/// A message of a batch with the values it is stored with.
struct Prepared<'a> {
    new: &'a NewMessage,
    id: String,
    attachments: String,
    metadata: Option<String>,
}

impl Prepared<'_> {
    fn row(&self) -> BatchRow<'_> {
        BatchRow {
            conversation_id: &self.new.conversation_id.0,
            id: &self.id,
            sender_id: &self.new.sender_id.0,
            content: &self.new.content,
            kind: &self.new.kind,
            attachments: &self.attachments,
            metadata: self.metadata.as_deref(),
            client_ref: self.new.client_ref.as_deref(),
        }
    }

    fn message(&self, seq: i64, at: i64) -> Message {
        self.new.stored(self.id.clone(), seq, at)
    }
}

/// The batch statement of PostgreSQL: `$1` the rows (a JSON array of [`BatchRow`]), `$2` the
/// time. Per conversation of the batch, the rows not stored before (`f`: no client ref, or a
/// (sender, client ref) the conversation does not hold — a retry is skipped here and answered
/// from the table afterwards) get the next seqs in batch order, and `last_seq` rises by their
/// number under the row lock; a failed INSERT undoes it all.
///
/// `l` locks the batch's conversation rows in id order before anything else touches them:
/// nodes whose batches share conversations then queue instead of deadlocking. The look-up is
/// a LATERAL … LIMIT 1, not NOT EXISTS: PostgreSQL turns NOT EXISTS into a hashed subplan
/// over every message of the conversation (it guesses 100 batch rows), which grows with the
/// conversation; this stays one index probe per row.
const BATCH_POSTGRES: &str = "\
    WITH b AS (SELECT e->>'conversation_id' AS conversation_id, e->>'id' AS id, \
          e->>'sender_id' AS sender_id, e->>'content' AS content, e->>'kind' AS kind, \
          e->>'attachments' AS attachments, e->>'metadata' AS metadata, e->>'client_ref' AS client_ref, ord \
          FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS t(e, ord)), \
    l AS MATERIALIZED (SELECT id FROM conversations WHERE id IN (SELECT conversation_id FROM b) \
          ORDER BY id FOR UPDATE), \
    f AS (SELECT b.*, row_number() OVER (PARTITION BY b.conversation_id ORDER BY ord) AS n FROM b \
          LEFT JOIN LATERAL (SELECT 1 AS found FROM messages m WHERE m.conversation_id = b.conversation_id \
          AND m.sender_id = b.sender_id AND m.client_ref = b.client_ref LIMIT 1) x ON true \
          WHERE x.found IS NULL), \
    k AS (SELECT conversation_id, count(*) AS fresh FROM f GROUP BY conversation_id), \
    s AS (UPDATE conversations c SET last_seq = c.last_seq + k.fresh FROM l JOIN k ON k.conversation_id = l.id \
          WHERE c.id = l.id RETURNING c.id, c.last_seq, k.fresh) \
    INSERT INTO messages (id, conversation_id, seq, sender_id, content, kind, attachments, metadata, \
    client_ref, sent_at) \
    SELECT f.id, f.conversation_id, s.last_seq - s.fresh + f.n, f.sender_id, f.content, f.kind, \
    f.attachments, f.metadata, f.client_ref, $2 FROM f JOIN s ON s.id = f.conversation_id \
    RETURNING id, seq";

/// The batch statements of SQLite, in one transaction under the write lock (the INSERT,
/// which writes, comes first, so the lock is held from the start): the same rows get the
/// same seqs as on PostgreSQL, then each conversation's `last_seq` rises by the number
/// stored (`$1`: a JSON array of {id, fresh}).
const BATCH_SQLITE_INSERT: &str = "\
    INSERT INTO messages (id, conversation_id, seq, sender_id, content, kind, attachments, metadata, \
    client_ref, sent_at) \
    SELECT b.id, b.conversation_id, c.last_seq + row_number() OVER (PARTITION BY b.conversation_id ORDER BY b.ord), \
    b.sender_id, b.content, b.kind, b.attachments, b.metadata, b.client_ref, $2 FROM ( \
      SELECT j.key AS ord, json_extract(j.value, '$.conversation_id') AS conversation_id, \
      json_extract(j.value, '$.id') AS id, json_extract(j.value, '$.sender_id') AS sender_id, \
      json_extract(j.value, '$.content') AS content, json_extract(j.value, '$.kind') AS kind, \
      json_extract(j.value, '$.attachments') AS attachments, json_extract(j.value, '$.metadata') AS metadata, \
      json_extract(j.value, '$.client_ref') AS client_ref FROM json_each($1) AS j) AS b \
    JOIN conversations c ON c.id = b.conversation_id \
    WHERE b.client_ref IS NULL OR NOT EXISTS (SELECT 1 FROM messages m \
      WHERE m.conversation_id = b.conversation_id AND m.sender_id = b.sender_id AND m.client_ref = b.client_ref) \
    RETURNING id, conversation_id, seq";
const BATCH_SQLITE_RAISE: &str = "\
    UPDATE conversations SET last_seq = last_seq + json_extract(j.value, '$.fresh') FROM json_each($1) AS j \
    WHERE conversations.id = json_extract(j.value, '$.id')";

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error().is_some_and(|d| d.is_unique_violation())
}

const MESSAGE_COLUMNS: &str =
    "id, conversation_id, seq, sender_id, content, kind, attachments, metadata, client_ref, sent_at";

fn message_row(row: &AnyRow) -> Result<Message, StoreError> {
    let get_err = |e: sqlx::Error| StoreError::Unavailable(format!("unreadable message row: {e}"));
    let attachments: String = row.try_get("attachments").map_err(get_err)?;
    let metadata: Option<String> = row.try_get("metadata").map_err(get_err)?;
    Ok(Message {
        id: row.try_get("id").map_err(get_err)?,
        conversation_id: ConversationId(row.try_get("conversation_id").map_err(get_err)?),
        sender_id: UserId(row.try_get("sender_id").map_err(get_err)?),
        content: row.try_get("content").map_err(get_err)?,
        kind: row.try_get("kind").map_err(get_err)?,
        attachments: serde_json::from_str(&attachments).unwrap_or_default(),
        temp_id: row.try_get("client_ref").map_err(get_err)?,
        seq: row.try_get("seq").map_err(get_err)?,
        sent_at: time(row.try_get("sent_at").map_err(get_err)?),
        metadata: metadata.and_then(|m| serde_json::from_str(&m).ok()),
    })
}

impl SqlStore {
    /// Connects to `sqlite://FILE` (created when missing), `sqlite::memory:` or
    /// `postgres://…`, without migrating.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let memory = url.contains(":memory:");
        let url = if sqlite && !memory && !url.contains("mode=") {
            format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' })
        } else {
            url.to_owned()
        };
        let pool = AnyPoolOptions::new()
            // An in-memory SQLite database lives in its one connection.
            .max_connections(if memory {
                1
            } else if sqlite {
                4
            } else {
                16
            })
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        // WAL lets readers work beside the writer; the busy timeout lets two
                        // processes share the file.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA busy_timeout = 5000").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(unavailable)?;
        Ok(Self {
            pool,
            postgres: !sqlite,
            batches: Arc::default(),
            sqlite_writer: Arc::default(),
        })
    }

    /// Applies the migrations not applied yet. PostgreSQL serialises concurrent migrators
    /// with a lock; SQLite does not, so nodes starting together on a fresh file may collide:
    /// the loser tries again and finds the work done.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut attempts = 0;
        loop {
            match MIGRATOR.run(&self.pool).await {
                Ok(()) => return Ok(()),
                Err(e) if attempts < 5 => {
                    attempts += 1;
                    tracing::debug!(error = %e, attempts, "migration collided, retrying");
                    tokio::time::sleep(Duration::from_millis(200 * attempts)).await;
                }
                Err(e) => return Err(StoreError::Unavailable(format!("migration failed: {e}"))),
            }
        }
    }

    async fn existing(&self, message: &NewMessage) -> Result<Option<Message>, StoreError> {
        let Some(client_ref) = &message.client_ref else {
            return Ok(None);
        };
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = $1 AND sender_id = $2 AND client_ref = $3"
        );
        let row = sqlx::query(&sql)
            .bind(&message.conversation_id.0)
            .bind(&message.sender_id.0)
            .bind(client_ref)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(message_row).transpose()
    }

    /// The stored messages of several appends' (conversation, sender, client ref), in one
    /// query: the retries found in a batch.
    async fn existing_many(&self, news: &[&NewMessage]) -> Result<HashMap<RefKey, Message>, StoreError> {
        #[derive(Serialize)]
        struct Key<'a> {
            conversation_id: &'a str,
            sender_id: &'a str,
            client_ref: &'a str,
        }
        let keys: Vec<Key> = news
            .iter()
            .filter_map(|n| {
                Some(Key {
                    conversation_id: &n.conversation_id.0,
                    sender_id: &n.sender_id.0,
                    client_ref: n.client_ref.as_deref()?,
                })
            })
            .collect();
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let keys = serde_json::to_string(&keys).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        // One index probe per key on both: LATERAL … LIMIT 1 on PostgreSQL (see
        // BATCH_POSTGRES), and the JSON table first on SQLite (CROSS JOIN keeps that order).
        let sql = if self.postgres {
            format!(
                "SELECT m.* FROM jsonb_array_elements($1::jsonb) AS e CROSS JOIN LATERAL \
                 (SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = e->>'conversation_id' \
                 AND sender_id = e->>'sender_id' AND client_ref = e->>'client_ref' LIMIT 1) AS m"
            )
        } else {
            let columns: Vec<String> = MESSAGE_COLUMNS.split(", ").map(|c| format!("m.{c}")).collect();
            format!(
                "SELECT {} FROM json_each($1) AS j CROSS JOIN messages AS m \
                 WHERE m.conversation_id = json_extract(j.value, '$.conversation_id') \
                 AND m.sender_id = json_extract(j.value, '$.sender_id') \
                 AND m.client_ref = json_extract(j.value, '$.client_ref')",
                columns.join(", ")
            )
        };
        let rows = sqlx::query(&sql)
            .bind(keys)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        let mut found = HashMap::with_capacity(rows.len());
        for row in &rows {
            let message = message_row(row)?;
            if let Some(client_ref) = &message.temp_id {
                found.insert(
                    (
                        message.conversation_id.clone(),
                        message.sender_id.clone(),
                        client_ref.clone(),
                    ),
                    message,
                );
            }
        }
        Ok(found)
    }

    async fn insert(&self, new: &NewMessage) -> Result<Message, sqlx::Error> {
        let at = Utc::now().timestamp_millis();
        let id = uuid::Uuid::now_v7().to_string();
        let attachments = serde_json::to_string(&new.attachments).unwrap_or_else(|_| "[]".into());
        let metadata = new.metadata.as_ref().map(|m| m.to_string());
        let mut seq = None;
        for _ in 0..2 {
            seq = if self.postgres {
                self.insert_postgres(new, &id, &attachments, metadata.as_deref(), at)
                    .await?
            } else {
                self.insert_sqlite(new, &id, &attachments, metadata.as_deref(), at)
                    .await?
            };
            if seq.is_some() {
                break;
            }
            self.create_on_the_fly(&new.conversation_id, at).await?;
        }
        let seq = seq.ok_or(sqlx::Error::RowNotFound)?;
        Ok(new.stored(id, seq, at))
    }

    /// The first message of a conversation nobody created (open and claims modes) creates its
    /// row.
    async fn create_on_the_fly(&self, conversation: &ConversationId, at: i64) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO conversations (id, title, created_at, last_seq) VALUES ($1, NULL, $2, 0) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&conversation.0)
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// One statement, so one round trip: the UPDATE's row lock queues concurrent appends to the
    /// conversation, and a failed INSERT (a racing retry) undoes the increment with it.
    /// `None` when the conversation row does not exist.
    async fn insert_postgres(
        &self,
        new: &NewMessage,
        id: &str,
        attachments: &str,
        metadata: Option<&str>,
        at: i64,
    ) -> Result<Option<i64>, sqlx::Error> {
        let row = sqlx::query(
            "WITH s AS (UPDATE conversations SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq) \
             INSERT INTO messages (id, conversation_id, seq, sender_id, content, kind, attachments, metadata, \
             client_ref, sent_at) SELECT $2, $1, s.last_seq, $3, $4, $5, $6, $7, $8, $9 FROM s RETURNING seq",
        )
        .bind(&new.conversation_id.0)
        .bind(id)
        .bind(&new.sender_id.0)
        .bind(&new.content)
        .bind(&new.kind)
        .bind(attachments)
        .bind(metadata)
        .bind(&new.client_ref)
        .bind(at)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| r.try_get(0)).transpose()
    }

    /// SQLite cannot UPDATE inside a CTE: a transaction whose first statement writes, so it
    /// takes the write lock at once and concurrent appends (also from other processes) queue.
    async fn insert_sqlite(
        &self,
        new: &NewMessage,
        id: &str,
        attachments: &str,
        metadata: Option<&str>,
        at: i64,
    ) -> Result<Option<i64>, sqlx::Error> {
        let _writer = self.sqlite_writer.lock().await;
        let mut tx = self.pool.begin().await?;
        let Some(row) =
            sqlx::query("UPDATE conversations SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq")
                .bind(&new.conversation_id.0)
                .fetch_optional(&mut *tx)
                .await?
        else {
            return Ok(None);
        };
        let seq: i64 = row.try_get(0)?;
        sqlx::query(
            "INSERT INTO messages (id, conversation_id, seq, sender_id, content, kind, attachments, metadata, \
             client_ref, sent_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(id)
        .bind(&new.conversation_id.0)
        .bind(seq)
        .bind(&new.sender_id.0)
        .bind(&new.content)
        .bind(&new.kind)
        .bind(attachments)
        .bind(metadata)
        .bind(&new.client_ref)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(seq))
    }

    /// One append as it always was: its own statement (PostgreSQL) or transaction (SQLite).
    async fn append_one(&self, new: &NewMessage) -> Result<Appended, StoreError> {
        match self.insert(new).await {
            Ok(message) => Ok(Appended::Created(message)),
            // A retry (or a concurrent one that won the race): answer the stored message.
            Err(e) if is_unique_violation(&e) && new.client_ref.is_some() => self
                .existing(new)
                .await?
                .map(Appended::Existing)
                .ok_or_else(|| unavailable(e)),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Serves the queue until it is empty.
    async fn flush(self) {
        let mut guard = FlusherGuard {
            batches: &self.batches,
            finished: false,
        };
        while let Some(batch) = self.batches.take() {
            let news: Vec<&NewMessage> = batch.iter().map(|p| &p.new).collect();
            match self.append_batch(&news).await {
                Ok(answers) => {
                    for (pending, answer) in batch.into_iter().zip(answers) {
                        // The sender may have gone; its message is stored all the same.
                        let _ = pending.done.send(answer);
                    }
                }
                // The appends queued behind this batch would each wait out the pool's timeout
                // in turn: they fail now, as the breaker in front of the store would make
                // them.
                Err(e) => {
                    for pending in batch.into_iter().chain(self.batches.drain()) {
                        let _ = pending.done.send(Err(StoreError::Unavailable(e.clone())));
                    }
                }
            }
        }
        guard.finished = true;
    }

    /// Stores a batch; one answer per message, in order. `Err` when the database could not
    /// be reached (nothing of the batch is stored).
    async fn append_batch(&self, batch: &[&NewMessage]) -> Result<Vec<Result<Appended, StoreError>>, String> {
        METRICS.append_batches.inc();
        METRICS.appends_batched.inc_by(batch.len() as u64);
        // JSON cannot carry a NUL into the batch statements (PostgreSQL's jsonb refuses it,
        // SQLite's json_extract stops at it): such a message is stored (SQLite) or refused
        // (PostgreSQL) on its own, as any message was before batches.
        let (alone, together): (Vec<usize>, Vec<usize>) = (0..batch.len()).partition(|&i| has_nul(batch[i]));
        let mut answers: Vec<Option<Result<Appended, StoreError>>> = batch.iter().map(|_| None).collect();
        if together.len() == 1 {
            answers[together[0]] = Some(self.append_one(batch[together[0]]).await);
        } else if !together.is_empty() {
            let news: Vec<&NewMessage> = together.iter().map(|&i| batch[i]).collect();
            match self.insert_batch(&news).await {
                Ok(stored) => {
                    for (&i, answer) in together.iter().zip(stored) {
                        answers[i] = Some(answer);
                    }
                }
                // The database answered, but refused the statement (a retry racing its
                // original past the batch's check, or a value it cannot take), or the batch
                // could not be encoded: nothing of it is stored, so take the messages one by
                // one, and only the culprit fails.
                Err(e @ (sqlx::Error::Database(_) | sqlx::Error::Encode(_))) => {
                    tracing::debug!(error = %e, "batch refused, storing its messages one by one");
                    for &i in &together {
                        answers[i] = Some(self.append_one(batch[i]).await);
                    }
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        for i in alone {
            answers[i] = Some(self.append_one(batch[i]).await);
        }
        Ok(answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| Err(StoreError::Unavailable("batch answer missing".into()))))
            .collect())
    }

    /// Stores the messages of a batch not stored before with their conversations' next seqs,
    /// in batch order; the others (retries) are answered with the stored message. `Err` only
    /// when the batch statement failed, which stored nothing.
    async fn insert_batch(&self, batch: &[&NewMessage]) -> Result<Vec<Result<Appended, StoreError>>, sqlx::Error> {
        let at = Utc::now().timestamp_millis();
        let prepared: Vec<Prepared> = batch
            .iter()
            .map(|new| Prepared {
                new,
                id: uuid::Uuid::now_v7().to_string(),
                attachments: serde_json::to_string(&new.attachments).unwrap_or_else(|_| "[]".into()),
                metadata: new.metadata.as_ref().map(|m| m.to_string()),
            })
            .collect();
        let rows: Vec<BatchRow> = prepared.iter().map(Prepared::row).collect();
        let rows = serde_json::to_string(&rows).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        let inserted = if self.postgres {
            self.insert_batch_postgres(&rows, at).await?
        } else {
            self.insert_batch_sqlite(&rows, at).await?
        };
        let mut answers: Vec<Option<Result<Appended, StoreError>>> = Vec::with_capacity(prepared.len());
        let mut skipped = Vec::new();
        for (i, p) in prepared.iter().enumerate() {
            match inserted.get(&p.id) {
                Some(&seq) => answers.push(Some(Ok(Appended::Created(p.message(seq, at))))),
                None => {
                    answers.push(None);
                    skipped.push(i);
                }
            }
        }
        // Skipped: stored before (a retry), or its conversation has no row yet. The stored ones
        // are looked up together; whatever remains (or all, if that look-up fails: the batch's
        // own messages are stored, whatever happens next) takes the one-message path, which
        // also creates a missing conversation row.
        let skipped_news: Vec<&NewMessage> = skipped.iter().map(|&i| prepared[i].new).collect();
        let mut stored_before = self.existing_many(&skipped_news).await.unwrap_or_default();
        for i in skipped {
            let new = prepared[i].new;
            let key = new
                .client_ref
                .as_ref()
                .map(|r| (new.conversation_id.clone(), new.sender_id.clone(), r.clone()));
            answers[i] = Some(match key.and_then(|k| stored_before.remove(&k)) {
                Some(message) => Ok(Appended::Existing(message)),
                None => self.append_one(new).await,
            });
        }
        Ok(answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| Err(StoreError::Unavailable("batch answer missing".into()))))
            .collect())
    }

    /// The ids and seqs stored by [`BATCH_POSTGRES`].
    async fn insert_batch_postgres(&self, rows: &str, at: i64) -> Result<HashMap<String, i64>, sqlx::Error> {
        sqlx::query(BATCH_POSTGRES)
            .bind(rows)
            .bind(at)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// The ids and seqs stored by [`BATCH_SQLITE_INSERT`].
    async fn insert_batch_sqlite(&self, rows: &str, at: i64) -> Result<HashMap<String, i64>, sqlx::Error> {
        let _writer = self.sqlite_writer.lock().await;
        let mut tx = self.pool.begin().await?;
        let stored = sqlx::query(BATCH_SQLITE_INSERT)
            .bind(rows)
            .bind(at)
            .fetch_all(&mut *tx)
            .await?;
        let mut inserted = HashMap::with_capacity(stored.len());
        let mut fresh: HashMap<String, i64> = HashMap::new();
        for row in &stored {
            inserted.insert(row.try_get::<String, _>(0)?, row.try_get::<i64, _>(2)?);
            *fresh.entry(row.try_get::<String, _>(1)?).or_default() += 1;
        }
        if !fresh.is_empty() {
            let counts: Vec<serde_json::Value> = fresh
                .into_iter()
                .map(|(id, n)| serde_json::json!({ "id": id, "fresh": n }))
                .collect();
            sqlx::query(BATCH_SQLITE_RAISE)
                .bind(serde_json::Value::Array(counts).to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(inserted)
    }
}

#[async_trait]
impl ConversationStore for SqlStore {
    async fn create(
        &self,
        id: &ConversationId,
        title: Option<&str>,
        members: &[UserId],
    ) -> Result<Conversation, StoreError> {
        let at = Utc::now().timestamp_millis();
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        let created = sqlx::query("INSERT INTO conversations (id, title, created_at, last_seq) VALUES ($1, $2, $3, 0)")
            .bind(&id.0)
            .bind(title)
            .bind(at)
            .execute(&mut *tx)
            .await;
        match created {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Err(StoreError::Exists(id.clone())),
            Err(e) => return Err(unavailable(e)),
        }
        for user in members {
            sqlx::query(
                "INSERT INTO members (conversation_id, user_id, added_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (conversation_id, user_id) DO NOTHING",
            )
            .bind(&id.0)
            .bind(&user.0)
            .bind(at)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)?;
        self.get(id)
            .await?
            .ok_or_else(|| StoreError::NoConversation(id.clone()))
    }

    async fn get(&self, id: &ConversationId) -> Result<Option<Conversation>, StoreError> {
        let Some(row) = sqlx::query("SELECT id, title, created_at, last_seq FROM conversations WHERE id = $1")
            .bind(&id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?
        else {
            return Ok(None);
        };
        let members = sqlx::query("SELECT user_id FROM members WHERE conversation_id = $1 ORDER BY user_id")
            .bind(&id.0)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?
            .iter()
            .filter_map(|r| r.try_get::<String, _>(0).ok().map(UserId))
            .collect();
        let read = |e: sqlx::Error| StoreError::Unavailable(format!("unreadable conversation row: {e}"));
        Ok(Some(Conversation {
            id: id.clone(),
            title: row.try_get("title").map_err(read)?,
            members,
            created_at: time(row.try_get("created_at").map_err(read)?),
            last_seq: row.try_get("last_seq").map_err(read)?,
        }))
    }

    async fn is_member(&self, id: &ConversationId, user: &UserId) -> Result<Option<bool>, StoreError> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM conversations WHERE id = $1), \
             (SELECT COUNT(*) FROM members WHERE conversation_id = $1 AND user_id = $2)",
        )
        .bind(&id.0)
        .bind(&user.0)
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)?;
        let exists: i64 = row.try_get(0).map_err(unavailable)?;
        let member: i64 = row.try_get(1).map_err(unavailable)?;
        Ok((exists > 0).then_some(member > 0))
    }

    async fn add_member(&self, id: &ConversationId, user: &UserId) -> Result<bool, StoreError> {
        if self.is_member(id, user).await?.is_none() {
            return Err(StoreError::NoConversation(id.clone()));
        }
        let done = sqlx::query(
            "INSERT INTO members (conversation_id, user_id, added_at) VALUES ($1, $2, $3) \
             ON CONFLICT (conversation_id, user_id) DO NOTHING",
        )
        .bind(&id.0)
        .bind(&user.0)
        .bind(Utc::now().timestamp_millis())
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(done.rows_affected() > 0)
    }

    async fn remove_member(&self, id: &ConversationId, user: &UserId) -> Result<bool, StoreError> {
        if self.is_member(id, user).await?.is_none() {
            return Err(StoreError::NoConversation(id.clone()));
        }
        let done = sqlx::query("DELETE FROM members WHERE conversation_id = $1 AND user_id = $2")
            .bind(&id.0)
            .bind(&user.0)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(done.rows_affected() > 0)
    }

    async fn conversations_of(&self, user: &UserId) -> Result<Vec<ConversationId>, StoreError> {
        Ok(
            sqlx::query("SELECT conversation_id FROM members WHERE user_id = $1 ORDER BY conversation_id")
                .bind(&user.0)
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?
                .iter()
                .filter_map(|r| r.try_get::<String, _>(0).ok().map(ConversationId))
                .collect(),
        )
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(unavailable)?;
        Ok(())
    }
}

#[async_trait]
impl MessageStore for SqlStore {
    async fn append(&self, new: NewMessage) -> Result<Appended, StoreError> {
        let (done, answer) = oneshot::channel();
        if self.batches.push(Pending { new, done }) {
            // A task rather than this caller: the batch must not be dropped half-way with its
            // caller (a closed connection) while it also carries other senders' messages.
            tokio::spawn(self.clone().flush());
        }
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the append's batch was abandoned".into()))?
    }

    async fn message(&self, id: &str) -> Result<Option<Message>, StoreError> {
        let sql = format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(message_row).transpose()
    }

    async fn history(&self, conversation: &ConversationId, q: HistoryQuery) -> Result<HistoryPage, StoreError> {
        let limit = i64::from(q.limit.max(1));
        // With `after` the page grows forward from it; otherwise backward from `before` (or
        // the newest message).
        let forward = q.after.is_some();
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = $1 AND seq > $2 AND seq < $3 \
             ORDER BY seq {} LIMIT $4",
            if forward { "ASC" } else { "DESC" }
        );
        let rows = sqlx::query(&sql)
            .bind(&conversation.0)
            .bind(q.after.unwrap_or(0))
            .bind(q.before.unwrap_or(i64::MAX))
            .bind(limit + 1)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        let has_more = rows.len() as i64 > limit;
        let mut messages = rows
            .iter()
            .take(limit as usize)
            .map(message_row)
            .collect::<Result<Vec<_>, _>>()?;
        if !forward {
            messages.reverse();
        }
        Ok(HistoryPage { messages, has_more })
    }

    async fn record_receipt(
        &self,
        message: &Message,
        user: &UserId,
        status: ReceiptStatus,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let at = at.timestamp_millis();
        let done = sqlx::query(
            "INSERT INTO receipts (message_id, user_id, status, at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (message_id, user_id, status) DO NOTHING",
        )
        .bind(&message.id)
        .bind(&user.0)
        .bind(status.as_str())
        .bind(at)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        if status == ReceiptStatus::Read {
            self.raise_read_mark(&message.conversation_id, user, message.seq, at)
                .await?;
        }
        Ok(done.rows_affected() > 0)
    }

    async fn mark_all_read(&self, conversation: &ConversationId, user: &UserId) -> Result<(), StoreError> {
        let last: Option<i64> = sqlx::query("SELECT last_seq FROM conversations WHERE id = $1")
            .bind(&conversation.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?
            .and_then(|r| r.try_get(0).ok());
        if let Some(last) = last {
            self.raise_read_mark(conversation, user, last, Utc::now().timestamp_millis())
                .await?;
        }
        Ok(())
    }

    async fn unread(&self, conversation: &ConversationId, user: &UserId) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) FROM messages WHERE conversation_id = $1 AND sender_id <> $2 AND seq > \
             COALESCE((SELECT read_seq FROM read_marks WHERE conversation_id = $1 AND user_id = $2), 0)",
        )
        .bind(&conversation.0)
        .bind(&user.0)
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)?;
        row.try_get(0).map_err(unavailable)
    }

    async fn react(&self, message: &Message, user: &UserId, reaction: &str, add: bool) -> Result<bool, StoreError> {
        let query = if add {
            sqlx::query(
                "INSERT INTO reactions (message_id, user_id, reaction, at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (message_id, user_id, reaction) DO NOTHING",
            )
            .bind(&message.id)
            .bind(&user.0)
            .bind(reaction)
            .bind(Utc::now().timestamp_millis())
        } else {
            sqlx::query("DELETE FROM reactions WHERE message_id = $1 AND user_id = $2 AND reaction = $3")
                .bind(&message.id)
                .bind(&user.0)
                .bind(reaction)
        };
        let done = query.execute(&self.pool).await.map_err(unavailable)?;
        Ok(done.rows_affected() > 0)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        ConversationStore::ping(self).await
    }
}

impl SqlStore {
    /// Moves a read mark forward, never back.
    async fn raise_read_mark(
        &self,
        conversation: &ConversationId,
        user: &UserId,
        seq: i64,
        at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO read_marks (conversation_id, user_id, read_seq, at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (conversation_id, user_id) DO UPDATE SET \
             read_seq = CASE WHEN read_marks.read_seq < excluded.read_seq THEN excluded.read_seq ELSE read_marks.read_seq END, \
             at = excluded.at",
        )
        .bind(&conversation.0)
        .bind(&user.0)
        .bind(seq)
        .bind(at)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::HistoryQuery;
    use crate::store::tests::{conversations_conform, messages_conform, new_message};
    use std::sync::Arc;

    async fn conform(url: &str) -> Result<(), StoreError> {
        let store = SqlStore::connect(url).await?;
        store.migrate().await?;
        // Migrating twice is a no-op.
        store.migrate().await?;
        conversations_conform(&store).await?;
        messages_conform(Arc::new(store.clone())).await?;
        // An in-memory database cannot be shared: there, the second "node" is the same store.
        let other = if url.contains(":memory:") {
            store.clone()
        } else {
            SqlStore::connect(url).await?
        };
        batches_conform(&store, &other).await
    }

    fn seqs_of(answers: &[Result<Appended, StoreError>]) -> Vec<Option<(bool, i64)>> {
        answers
            .iter()
            .map(|a| {
                a.as_ref()
                    .ok()
                    .map(|a| (matches!(a, Appended::Created(_)), a.message().seq))
            })
            .collect()
    }

    /// Group commit, on two stores sharing one database (two nodes): batches built by hand
    /// (two conversations interleaved, retries of stored messages, a duplicate inside the
    /// batch, conversations without a row), then bursts of concurrent senders in three
    /// conversations whose every message is sent twice at once, on both nodes. Seqs stay
    /// 1..=N per conversation with no gap, and every retry answers the first message.
    async fn batches_conform(a: &SqlStore, b: &SqlStore) -> Result<(), StoreError> {
        let m = |sender: &str, client_ref: Option<&str>| new_message("batched", sender, "hi", client_ref);
        let o = |sender: &str, client_ref: Option<&str>| new_message("other", sender, "hi", client_ref);
        // The first batch also creates both conversations' rows.
        let (m1, m2, m3) = (m("u1", Some("r1")), m("u2", Some("r1")), m("u1", None));
        let (o1, o2) = (o("u1", Some("r1")), o("u2", None));
        let answers = a
            .append_batch(&[&m1, &o1, &m2, &m3, &o2])
            .await
            .map_err(StoreError::Unavailable)?;
        assert_eq!(
            seqs_of(&answers),
            vec![
                Some((true, 1)),
                Some((true, 1)),
                Some((true, 2)),
                Some((true, 3)),
                Some((true, 2))
            ]
        );
        // Retries of stored messages are skipped; the fresh ones get the next seqs.
        let (m4, m5, o3) = (m("u3", Some("r1")), m("u1", None), o("u3", Some("r9")));
        let answers = b
            .append_batch(&[&m1, &m4, &o1, &m2, &o3, &m5])
            .await
            .map_err(StoreError::Unavailable)?;
        assert_eq!(
            seqs_of(&answers),
            vec![
                Some((false, 1)),
                Some((true, 4)),
                Some((false, 1)),
                Some((false, 2)),
                Some((true, 3)),
                Some((true, 5))
            ]
        );
        // Only retries: nothing stored.
        let answers = a
            .append_batch(&[&m2, &o3, &m4])
            .await
            .map_err(StoreError::Unavailable)?;
        assert_eq!(
            seqs_of(&answers),
            vec![Some((false, 2)), Some((false, 3)), Some((false, 4))]
        );
        // The same message twice in one batch (`take` keeps them apart; the fallback copes).
        let m6 = m("u4", Some("r1"));
        let answers = a
            .append_batch(&[&m6, &o2, &m6])
            .await
            .map_err(StoreError::Unavailable)?;
        assert_eq!(
            seqs_of(&answers),
            vec![Some((true, 6)), Some((true, 4)), Some((false, 6))]
        );

        // What a batch stores is what it answers, odd text included; a NUL (which JSON cannot
        // carry to the batch statements) is stored alone after the batch on SQLite and refused
        // alone on PostgreSQL, while the rest of its batch is stored.
        let mut odd = m("u5", Some("odd \"ref\" \\ ☃"));
        odd.content = "quotes \" and \\ backslashes, emoji 😀, new\nline, \u{2028}, tab\t".into();
        odd.kind = "image".into();
        odd.attachments = vec!["https://example.com/a?b=\"c\"".into(), "https://example.com/é".into()];
        odd.metadata = Some(serde_json::json!({ "nested": { "n": 1.5, "s": "\u{0}x" }, "list": [1, null] }));
        let mut nul = o("u5", Some("nul"));
        nul.content = "before\0after".into();
        let plain = o("u5", None);
        let answers = a
            .append_batch(&[&odd, &nul, &plain])
            .await
            .map_err(StoreError::Unavailable)?;
        let [
            Ok(Appended::Created(odd_stored)),
            nul_answer,
            Ok(Appended::Created(plain_stored)),
        ] = &answers[..]
        else {
            panic!("unexpected answers {answers:?}");
        };
        assert_eq!(
            (odd_stored.content.as_str(), odd_stored.seq, plain_stored.seq),
            (odd.content.as_str(), 7, 5)
        );
        assert_eq!(b.message(&odd_stored.id).await?.as_ref(), Some(odd_stored));
        assert_eq!(b.message(&plain_stored.id).await?.as_ref(), Some(plain_stored));
        match nul_answer {
            Ok(Appended::Created(m)) if !a.postgres => {
                assert_eq!((m.content.as_str(), m.seq), ("before\0after", 6));
                assert_eq!(b.message(&m.id).await?.as_ref(), Some(m));
            }
            Err(StoreError::Unavailable(_)) if a.postgres => {}
            other => panic!("NUL message answered {other:?}"),
        }

        let mut tasks = Vec::new();
        for sender in 0..12 {
            for store in [a.clone(), b.clone()] {
                tasks.push(tokio::spawn(async move {
                    let mut answers = Vec::new();
                    for n in 0..10 {
                        let client_ref = format!("r{n}");
                        let conversation = format!("burst{}", sender % 3);
                        let new = new_message(&conversation, &format!("s{sender}"), "x", Some(&client_ref));
                        let (first, second) = tokio::join!(store.append(new.clone()), store.append(new));
                        answers.push((n, first?));
                        answers.push((n, second?));
                    }
                    Ok::<_, StoreError>((sender, answers))
                }));
            }
        }
        let mut by_ref: HashMap<(i32, i32), Vec<Appended>> = HashMap::new();
        for task in tasks {
            let (sender, answers) = task.await.map_err(|e| StoreError::Unavailable(e.to_string()))??;
            for (n, answer) in answers {
                by_ref.entry((sender, n)).or_default().push(answer);
            }
        }
        let mut seqs: HashMap<i32, Vec<i64>> = HashMap::new();
        for ((sender, _), answers) in &by_ref {
            let created = answers.iter().filter(|a| matches!(a, Appended::Created(_))).count();
            let ids: HashSet<&str> = answers.iter().map(|a| a.message().id.as_str()).collect();
            assert_eq!((answers.len(), created, ids.len()), (4, 1, 1));
            seqs.entry(sender % 3).or_default().push(answers[0].message().seq);
        }
        for (c, mut seqs) in seqs {
            seqs.sort_unstable();
            assert_eq!(seqs, (1..=40).collect::<Vec<i64>>());
            let conversation = ConversationId(format!("burst{c}"));
            let page = a
                .history(
                    &conversation,
                    HistoryQuery {
                        before: None,
                        after: None,
                        limit: 200,
                    },
                )
                .await?;
            assert_eq!(
                page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
                (1..=40).collect::<Vec<i64>>()
            );
        }

        // Batches of both nodes spanning the same conversations, met in opposite orders: the
        // row locks are taken in id order, so they queue instead of deadlocking.
        let mut tasks = Vec::new();
        for sender in 0..16 {
            for (node, store) in [a.clone(), b.clone()].into_iter().enumerate() {
                tasks.push(tokio::spawn(async move {
                    for n in 0..14 {
                        let c = if node == 0 {
                            (sender + n) % 7
                        } else {
                            6 - (sender + n) % 7
                        };
                        store
                            .append(new_message(&format!("ring{c}"), &format!("s{sender}"), "x", None))
                            .await?;
                    }
                    Ok::<_, StoreError>(())
                }));
            }
        }
        for task in tasks {
            task.await.map_err(|e| StoreError::Unavailable(e.to_string()))??;
        }
        let mut total = 0;
        for c in 0..7 {
            let page = a
                .history(
                    &ConversationId(format!("ring{c}")),
                    HistoryQuery {
                        before: None,
                        after: None,
                        limit: 200,
                    },
                )
                .await?;
            let seqs: Vec<i64> = page.messages.iter().map(|m| m.seq).collect();
            assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<i64>>());
            total += seqs.len();
        }
        assert_eq!(total, 16 * 2 * 14);
        Ok(())
    }

    #[tokio::test]
    async fn sqlite_file_conforms() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("sb-store-{}-{}", std::process::id(), uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir)?;
        conform(&format!("sqlite://{}", dir.join("conformance.db").display())).await?;
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[tokio::test]
    async fn sqlite_memory_conforms() -> Result<(), StoreError> {
        conform("sqlite::memory:").await
    }

    /// Against the PostgreSQL of `SWITCHBOARD_TEST_POSTGRES` (default: the machine's, trust
    /// auth), in a fresh database created and dropped by the test.
    #[tokio::test]
    async fn postgres_conforms() -> Result<(), Box<dyn std::error::Error>> {
        let server =
            std::env::var("SWITCHBOARD_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
        let admin = SqlStore::connect(&format!("{server}/postgres")).await?;
        let name = format!("sb_conformance_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin.pool)
            .await?;
        let result = conform(&format!("{server}/{name}")).await;
        sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .execute(&admin.pool)
            .await?;
        Ok(result?)
    }
}
