//! The statements that store messages, per dialect: one message at a time, or a batch of
//! them (group commit, `batch`). Each takes the conversation's next seqs from
//! `conversations.last_seq` in the same statement or transaction that inserts the rows, so a
//! failed insert moves no counter and no seq is lost.

use super::super::idempotent::{self, Failed, Insert};
use super::{SqlStore, is_unique_violation};
use crate::store::{Appended, NewMessage, StoreError};
use chrono::Utc;
use serde::Serialize;
use shared::ConversationId;
use shared::event::Message;
use sqlx::Row;
use std::collections::HashMap;

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

/// A message with the values it is stored with.
struct Prepared<'a> {
    new: &'a NewMessage,
    id: String,
    attachments: String,
    metadata: Option<String>,
}

impl<'a> Prepared<'a> {
    fn new(new: &'a NewMessage) -> Self {
        Self {
            new,
            id: uuid::Uuid::now_v7().to_string(),
            attachments: serde_json::to_string(&new.attachments).unwrap_or_else(|_| "[]".into()),
            metadata: new.metadata.as_ref().map(|m| m.to_string()),
        }
    }

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

/// One message on PostgreSQL, in one statement, so one round trip: the UPDATE's row lock
/// queues concurrent appends to the conversation, and a failed INSERT (a racing retry) undoes
/// the increment with it. No row when the conversation row does not exist.
const INSERT_POSTGRES: &str = concat!(
    "WITH s AS (UPDATE conversations SET last_seq = last_seq + 1 WHERE id = $2 RETURNING last_seq) \
     INSERT INTO messages (",
    message_columns!(),
    ") SELECT $1, $2, s.last_seq, $3, $4, $5, $6, $7, $8, $9 FROM s RETURNING seq"
);

/// One message on SQLite, which cannot UPDATE inside a CTE: a transaction whose first
/// statement writes, so it takes the write lock at once and concurrent appends (also from
/// other processes) queue; then the INSERT with the seq it answered.
const RAISE_SQLITE: &str = "UPDATE conversations SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq";
const INSERT_SQLITE: &str = concat!(
    "INSERT INTO messages (",
    message_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
);

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
const BATCH_POSTGRES: &str = concat!(
    "WITH b AS (SELECT e->>'conversation_id' AS conversation_id, e->>'id' AS id, \
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
    INSERT INTO messages (",
    message_columns!(),
    ") SELECT f.id, f.conversation_id, s.last_seq - s.fresh + f.n, f.sender_id, f.content, f.kind, \
    f.attachments, f.metadata, f.client_ref, $2 FROM f JOIN s ON s.id = f.conversation_id \
    RETURNING id, seq"
);

/// The batch statements of SQLite, in one transaction under the write lock (the INSERT,
/// which writes, comes first, so the lock is held from the start): the same rows get the
/// same seqs as on PostgreSQL, then each conversation's `last_seq` rises by the number
/// stored (`$1`: a JSON array of {id, fresh}).
const BATCH_SQLITE_INSERT: &str = concat!(
    "INSERT INTO messages (",
    message_columns!(),
    ") SELECT b.id, b.conversation_id, c.last_seq + row_number() OVER (PARTITION BY b.conversation_id ORDER BY b.ord), \
    b.sender_id, b.content, b.kind, b.attachments, b.metadata, b.client_ref, $2 FROM ( \
      SELECT j.key AS ord, json_extract(j.value, '$.conversation_id') AS conversation_id, \
      json_extract(j.value, '$.id') AS id, json_extract(j.value, '$.sender_id') AS sender_id, \
      json_extract(j.value, '$.content') AS content, json_extract(j.value, '$.kind') AS kind, \
      json_extract(j.value, '$.attachments') AS attachments, json_extract(j.value, '$.metadata') AS metadata, \
      json_extract(j.value, '$.client_ref') AS client_ref FROM json_each($1) AS j) AS b \
    JOIN conversations c ON c.id = b.conversation_id \
    WHERE b.client_ref IS NULL OR NOT EXISTS (SELECT 1 FROM messages m \
      WHERE m.conversation_id = b.conversation_id AND m.sender_id = b.sender_id AND m.client_ref = b.client_ref) \
    RETURNING id, conversation_id, seq"
);
const BATCH_SQLITE_RAISE: &str = "\
    UPDATE conversations SET last_seq = last_seq + json_extract(j.value, '$.fresh') FROM json_each($1) AS j \
    WHERE conversations.id = json_extract(j.value, '$.id')";

impl Insert for SqlStore {
    type Error = sqlx::Error;

    async fn insert(&self, new: &NewMessage) -> Result<Message, sqlx::Error> {
        let at = Utc::now().timestamp_millis();
        let prepared = Prepared::new(new);
        let mut seq = None;
        for _ in 0..2 {
            seq = if self.postgres {
                self.insert_postgres(&prepared, at).await?
            } else {
                self.insert_sqlite(&prepared, at).await?
            };
            if seq.is_some() {
                break;
            }
            self.create_on_the_fly(&new.conversation_id, at).await?;
        }
        let seq = seq.ok_or(sqlx::Error::RowNotFound)?;
        Ok(prepared.message(seq, at))
    }

    async fn existing(&self, new: &NewMessage) -> Result<Option<Message>, StoreError> {
        SqlStore::existing(self, new).await
    }

    fn is_duplicate(e: &sqlx::Error) -> bool {
        is_unique_violation(e)
    }
}

impl SqlStore {
    /// One append on its own statement (PostgreSQL) or transaction (SQLite), as every append
    /// was before batches. The batch statement has skipped a stored client ref already, so
    /// there is no look-up first.
    pub(super) async fn append_one(&self, new: &NewMessage) -> Result<Appended, Failed<sqlx::Error>> {
        idempotent::insert_or_existing(self, new).await
    }

    /// The first message of a conversation nobody created (open and claims modes) creates its
    /// row.
    async fn create_on_the_fly(&self, conversation: &ConversationId, at: i64) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO conversations (id, title, created_at, last_seq) VALUES ($1, NULL, $2, 0) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(conversation.as_str())
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The seq [`INSERT_POSTGRES`] stored the message with; `None` when the conversation row
    /// does not exist.
    async fn insert_postgres(&self, p: &Prepared<'_>, at: i64) -> Result<Option<i64>, sqlx::Error> {
        let new = p.new;
        let row = sqlx::query(INSERT_POSTGRES)
            .bind(&p.id)
            .bind(new.conversation_id.as_str())
            .bind(new.sender_id.as_str())
            .bind(&new.content)
            .bind(&new.kind)
            .bind(&p.attachments)
            .bind(p.metadata.as_deref())
            .bind(&new.client_ref)
            .bind(at)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get(0)).transpose()
    }

    /// The seq [`RAISE_SQLITE`] gave the message [`INSERT_SQLITE`] stored; `None` when the
    /// conversation row does not exist.
    async fn insert_sqlite(&self, p: &Prepared<'_>, at: i64) -> Result<Option<i64>, sqlx::Error> {
        let new = p.new;
        let _writer = self.sqlite_writer.lock().await;
        let mut tx = self.pool.begin().await?;
        let Some(row) = sqlx::query(RAISE_SQLITE)
            .bind(new.conversation_id.as_str())
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        let seq: i64 = row.try_get(0)?;
        sqlx::query(INSERT_SQLITE)
            .bind(&p.id)
            .bind(new.conversation_id.as_str())
            .bind(seq)
            .bind(new.sender_id.as_str())
            .bind(&new.content)
            .bind(&new.kind)
            .bind(&p.attachments)
            .bind(p.metadata.as_deref())
            .bind(&new.client_ref)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(seq))
    }

    /// Stores the messages of a batch not stored before with their conversations' next seqs,
    /// in batch order, and answers the others (retries) with the stored message; `None` for a
    /// message that neither holds (its conversation has no row yet, or the look-up of the
    /// stored ones failed): it takes the one-message path. `Err` only when the batch statement
    /// failed, which stored nothing.
    pub(super) async fn insert_batch(&self, batch: &[&NewMessage]) -> Result<Vec<Option<Appended>>, sqlx::Error> {
        let at = Utc::now().timestamp_millis();
        let prepared: Vec<Prepared> = batch.iter().map(|new| Prepared::new(new)).collect();
        let rows: Vec<BatchRow> = prepared.iter().map(Prepared::row).collect();
        let rows = serde_json::to_string(&rows).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        let inserted = if self.postgres {
            self.insert_batch_postgres(&rows, at).await?
        } else {
            self.insert_batch_sqlite(&rows, at).await?
        };
        let skipped: Vec<&NewMessage> = prepared
            .iter()
            .filter(|p| !inserted.contains_key(&p.id))
            .map(|p| p.new)
            .collect();
        // The batch's own messages are stored whatever happens next: a failed look-up only
        // sends the skipped ones down the one-message path, which answers them too.
        let mut stored_before = self.existing_many(&skipped).await.unwrap_or_default();
        Ok(prepared
            .iter()
            .map(|p| match inserted.get(&p.id) {
                Some(&seq) => Some(Appended::Created(p.message(seq, at))),
                None => {
                    let new = p.new;
                    let key = new.client_ref.as_ref()?;
                    stored_before
                        .remove(&(new.conversation_id.clone(), new.sender_id.clone(), key.clone()))
                        .map(Appended::Existing)
                }
            })
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
