//! Conversations and their members.

use super::{SqlStore, is_unique_violation, unavailable};
use crate::store::{Conversation, ConversationStore, StoreError, time};
use async_trait::async_trait;
use chrono::Utc;
use shared::{ConversationId, UserId};
use sqlx::Row;

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
            .bind(id.as_str())
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
            .bind(id.as_str())
            .bind(user.as_str())
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
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?
        else {
            return Ok(None);
        };
        let members = sqlx::query("SELECT user_id FROM members WHERE conversation_id = $1 ORDER BY user_id")
            .bind(id.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?
            .iter()
            .filter_map(|r| r.try_get::<String, _>(0).ok().map(UserId::from))
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
        .bind(id.as_str())
        .bind(user.as_str())
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
        .bind(id.as_str())
        .bind(user.as_str())
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
            .bind(id.as_str())
            .bind(user.as_str())
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(done.rows_affected() > 0)
    }

    async fn conversations_of(&self, user: &UserId) -> Result<Vec<ConversationId>, StoreError> {
        Ok(
            sqlx::query("SELECT conversation_id FROM members WHERE user_id = $1 ORDER BY conversation_id")
                .bind(user.as_str())
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?
                .iter()
                .filter_map(|r| r.try_get::<String, _>(0).ok().map(ConversationId::from))
                .collect(),
        )
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(unavailable)?;
        Ok(())
    }
}
