//! Messages read back (the one mapping of a `messages` row), receipts, read marks and
//! reactions.

use super::batch::RefKey;
use super::{SqlStore, unavailable};
use crate::store::paging::Window;
use crate::store::{
    Appended, ConversationStore, HistoryPage, HistoryQuery, MessageStore, NewMessage, StoreError, time,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use shared::event::{Message, ReceiptStatus};
use shared::{ConversationId, UserId};
use sqlx::Row;
use sqlx::any::AnyRow;
use std::collections::HashMap;
use std::sync::LazyLock;

const MESSAGE_BY_ID: &str = concat!("SELECT ", message_columns!(), " FROM messages WHERE id = $1");

const MESSAGE_BY_CLIENT_REF: &str = concat!(
    "SELECT ",
    message_columns!(),
    " FROM messages WHERE conversation_id = $1 AND sender_id = $2 AND client_ref = $3"
);

/// A history window (see [`Window`]): `$1` the conversation, `$2` after, `$3` before, `$4`
/// how many; oldest first, or newest first.
const HISTORY_FORWARD: &str = concat!(
    "SELECT ",
    message_columns!(),
    " FROM messages WHERE conversation_id = $1 AND seq > $2 AND seq < $3 ORDER BY seq ASC LIMIT $4"
);
const HISTORY_BACKWARD: &str = concat!(
    "SELECT ",
    message_columns!(),
    " FROM messages WHERE conversation_id = $1 AND seq > $2 AND seq < $3 ORDER BY seq DESC LIMIT $4"
);

/// The stored messages of several (conversation, sender, client ref) keys, `$1` a JSON array
/// of them. One index probe per key on both: LATERAL … LIMIT 1 on PostgreSQL (see the batch
/// statement), and the JSON table first on SQLite (CROSS JOIN keeps that order).
const MESSAGES_BY_CLIENT_REFS_POSTGRES: &str = concat!(
    "SELECT m.* FROM jsonb_array_elements($1::jsonb) AS e CROSS JOIN LATERAL (SELECT ",
    message_columns!(),
    " FROM messages WHERE conversation_id = e->>'conversation_id' AND sender_id = e->>'sender_id' \
     AND client_ref = e->>'client_ref' LIMIT 1) AS m"
);
/// SQLite's, whose columns need the table's name: `json_each` has an `id` column too.
static MESSAGES_BY_CLIENT_REFS_SQLITE: LazyLock<String> = LazyLock::new(|| {
    let columns: Vec<String> = message_columns!().split(", ").map(|c| format!("m.{c}")).collect();
    format!(
        "SELECT {} FROM json_each($1) AS j CROSS JOIN messages AS m \
         WHERE m.conversation_id = json_extract(j.value, '$.conversation_id') \
         AND m.sender_id = json_extract(j.value, '$.sender_id') \
         AND m.client_ref = json_extract(j.value, '$.client_ref')",
        columns.join(", ")
    )
});

/// A row of [`message_columns!`] as the message it holds.
fn message_row(row: &AnyRow) -> Result<Message, StoreError> {
    let get_err = |e: sqlx::Error| StoreError::Unavailable(format!("unreadable message row: {e}"));
    let attachments: String = row.try_get("attachments").map_err(get_err)?;
    let metadata: Option<String> = row.try_get("metadata").map_err(get_err)?;
    Ok(Message {
        id: row.try_get("id").map_err(get_err)?,
        conversation_id: ConversationId::from(row.try_get::<String, _>("conversation_id").map_err(get_err)?),
        sender_id: UserId::from(row.try_get::<String, _>("sender_id").map_err(get_err)?),
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
    /// The message stored under `message`'s (conversation, sender, client ref).
    pub(super) async fn existing(&self, message: &NewMessage) -> Result<Option<Message>, StoreError> {
        let Some(client_ref) = &message.client_ref else {
            return Ok(None);
        };
        let row = sqlx::query(MESSAGE_BY_CLIENT_REF)
            .bind(message.conversation_id.as_str())
            .bind(message.sender_id.as_str())
            .bind(client_ref)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(message_row).transpose()
    }

    /// The stored messages of several appends' (conversation, sender, client ref), in one
    /// query: the retries found in a batch.
    pub(super) async fn existing_many(&self, news: &[&NewMessage]) -> Result<HashMap<RefKey, Message>, StoreError> {
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
        let sql = if self.postgres {
            MESSAGES_BY_CLIENT_REFS_POSTGRES
        } else {
            MESSAGES_BY_CLIENT_REFS_SQLITE.as_str()
        };
        let rows = sqlx::query(sql)
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
        .bind(conversation.as_str())
        .bind(user.as_str())
        .bind(seq)
        .bind(at)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }
}

#[async_trait]
impl MessageStore for SqlStore {
    async fn append(&self, new: NewMessage) -> Result<Appended, StoreError> {
        self.append_batched(new).await
    }

    async fn message(&self, id: &str) -> Result<Option<Message>, StoreError> {
        let row = sqlx::query(MESSAGE_BY_ID)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(message_row).transpose()
    }

    async fn history(&self, conversation: &ConversationId, q: HistoryQuery) -> Result<HistoryPage, StoreError> {
        let window = Window::of(q);
        let rows = sqlx::query(if window.forward {
            HISTORY_FORWARD
        } else {
            HISTORY_BACKWARD
        })
        .bind(conversation.as_str())
        .bind(window.after)
        .bind(window.before)
        .bind(window.fetch())
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        window.page(rows, |row| message_row(&row))
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
        .bind(user.as_str())
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
            .bind(conversation.as_str())
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
        .bind(conversation.as_str())
        .bind(user.as_str())
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
            .bind(user.as_str())
            .bind(reaction)
            .bind(Utc::now().timestamp_millis())
        } else {
            sqlx::query("DELETE FROM reactions WHERE message_id = $1 AND user_id = $2 AND reaction = $3")
                .bind(&message.id)
                .bind(user.as_str())
                .bind(reaction)
        };
        let done = query.execute(&self.pool).await.map_err(unavailable)?;
        Ok(done.rows_affected() > 0)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        ConversationStore::ping(self).await
    }
}
