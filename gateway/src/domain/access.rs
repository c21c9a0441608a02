//! Who may join, read, type and send in a conversation (PROTOCOL.md 2.4).

use super::DomainError;
use crate::auth::Identity;
use crate::config::AccessMode;
use crate::store::ConversationStore;
use shared::ConversationId;
use std::sync::Arc;

/// The access rule of this deployment.
#[derive(Clone)]
pub struct Access {
    mode: AccessMode,
    conversations: Arc<dyn ConversationStore>,
}

impl Access {
    /// The rule for `mode`; `members` asks the conversation store.
    pub fn new(mode: AccessMode, conversations: Arc<dyn ConversationStore>) -> Self {
        Self { mode, conversations }
    }

    /// The deployment's mode.
    pub fn mode(&self) -> AccessMode {
        self.mode
    }

    /// Whether `who` may use `conversation`; `None` is the server, which, like an admin
    /// token, may use every conversation. In `members` mode a conversation that does not exist
    /// is `not_found`, for everyone.
    pub async fn check(&self, who: Option<&Identity>, conversation: &ConversationId) -> Result<(), DomainError> {
        let privileged = who.is_none_or(|w| w.admin);
        let allowed = match (self.mode, who) {
            (AccessMode::Members, _) => {
                let user = who.map(|w| w.user_id.clone()).unwrap_or_else(|| "".into());
                match self.conversations.is_member(conversation, &user).await? {
                    None => return Err(DomainError::NotFound(format!("no conversation {conversation}"))),
                    Some(member) => member || privileged,
                }
            }
            (AccessMode::Open, _) | (_, None) => true,
            (AccessMode::Claims, Some(who)) => {
                who.admin || who.conversations.as_ref().is_some_and(|c| c.allows(conversation))
            }
        };
        if allowed {
            Ok(())
        } else {
            Err(DomainError::Forbidden(format!(
                "no access to conversation {conversation}"
            )))
        }
    }
}
