//! Conversations and members (the REST API), and what a user's own channel hears of them.

use super::{Domain, DomainError};
use crate::auth::Identity;
use crate::config::AccessMode;
use crate::store::{Conversation, HistoryQuery};
use serde::Serialize;
use shared::event::Membership;
use shared::{ConversationId, Delivery, Event, Topic, UserId};

/// A conversation as a caller sees it, with their unread count.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConversationView {
    /// The conversation.
    #[serde(flatten)]
    pub conversation: Conversation,
    /// Messages of others the caller has not read; null for a server caller.
    pub unread: Option<i64>,
}

impl Domain {
    /// Creates a conversation; the id is generated when not given.
    pub async fn create_conversation(
        &self,
        id: Option<ConversationId>,
        title: Option<String>,
        members: Vec<UserId>,
    ) -> Result<Conversation, DomainError> {
        let id = id.unwrap_or_else(|| ConversationId::from(uuid::Uuid::now_v7().to_string()));
        let mut members = members;
        members.sort();
        members.dedup();
        Ok(self.conversations.create(&id, title.as_deref(), &members).await?)
    }

    /// A conversation; a user caller must have access to it.
    pub async fn conversation(
        &self,
        who: Option<&Identity>,
        id: &ConversationId,
    ) -> Result<ConversationView, DomainError> {
        self.access.check(who, id).await?;
        let mut conversation = self
            .conversations
            .get(id)
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("no conversation {id}")))?;
        // The message store owns the sequence (it may be MongoDB, beside the SQL row).
        let newest = HistoryQuery {
            before: None,
            after: None,
            limit: 1,
        };
        if let Some(last) = self.messages.history(id, newest).await?.messages.last() {
            conversation.last_seq = last.seq;
        }
        let unread = match who {
            Some(who) => Some(self.messages.unread(id, &who.user_id).await?),
            None => None,
        };
        Ok(ConversationView { conversation, unread })
    }

    /// The caller's unread messages in a conversation.
    pub async fn unread(&self, who: &Identity, conversation: &ConversationId) -> Result<i64, DomainError> {
        self.access.check(Some(who), conversation).await?;
        Ok(self.messages.unread(conversation, &who.user_id).await?)
    }

    /// Adds a member.
    pub async fn add_member(&self, id: &ConversationId, user: &UserId) -> Result<(), DomainError> {
        self.conversations.add_member(id, user).await?;
        Ok(())
    }

    /// Removes a member; in `members` mode their connections leave the conversation at once,
    /// on every node.
    pub async fn remove_member(&self, id: &ConversationId, user: &UserId) -> Result<(), DomainError> {
        self.conversations.remove_member(id, user).await?;
        // Before the event: its own delivery to this node may come later than this caller's
        // next request.
        self.access.memberships().forget(id, user);
        if self.access.mode() == AccessMode::Members {
            let event = Event::MemberRemoved(Membership {
                conversation_id: id.clone(),
                user_id: user.clone(),
            });
            self.bus.publish(Delivery::to(Topic::User(user.clone()), event)).await?;
        }
        Ok(())
    }
}
