//! SQLite (the embedded default) and PostgreSQL through sqlx's `Any` driver: one portable
//! schema (migrations/), one set of queries.

use super::{
    Appended, Conversation, ConversationStore, HistoryPage, HistoryQuery, MessageStore, NewMessage, StoreError,
};
use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use shared::event::{Message, ReceiptStatus};
use shared::{ConversationId, UserId};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};
use std::time::Duration;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How long a query waits for a pooled connection before the database counts as unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// The SQL store.
#[derive(Clone)]
pub struct SqlStore {
    pool: AnyPool,
    postgres: bool,
}

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error().is_some_and(|d| d.is_unique_violation())
}

fn time(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
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
            // The first message of a conversation nobody created (open and claims modes).
            sqlx::query(
                "INSERT INTO conversations (id, title, created_at, last_seq) VALUES ($1, NULL, $2, 0) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(&new.conversation_id.0)
            .bind(at)
            .execute(&self.pool)
            .await?;
        }
        let seq = seq.ok_or(sqlx::Error::RowNotFound)?;
        Ok(Message {
            id,
            conversation_id: new.conversation_id.clone(),
            sender_id: new.sender_id.clone(),
            content: new.content.clone(),
            kind: new.kind.clone(),
            attachments: new.attachments.clone(),
            temp_id: new.client_ref.clone(),
            seq,
            sent_at: time(at),
            metadata: new.metadata.clone(),
        })
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
        // No look-up first: a retry is rare, and the unique index catches it in the insert.
        match self.insert(&new).await {
            Ok(message) => Ok(Appended::Created(message)),
            // A retry (or a concurrent one that won the race): answer the stored message.
            Err(e) if is_unique_violation(&e) && new.client_ref.is_some() => self
                .existing(&new)
                .await?
                .map(Appended::Existing)
                .ok_or_else(|| unavailable(e)),
            Err(e) => Err(unavailable(e)),
        }
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
    use crate::store::tests::{conversations_conform, messages_conform};
    use std::sync::Arc;

    async fn conform(url: &str) -> Result<(), StoreError> {
        let store = SqlStore::connect(url).await?;
        store.migrate().await?;
        // Migrating twice is a no-op.
        store.migrate().await?;
        conversations_conform(&store).await?;
        messages_conform(Arc::new(store)).await
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
