//! Who may join, read, type and send in a conversation (PROTOCOL.md 2.4).

use super::DomainError;
use crate::auth::Identity;
use crate::config::AccessMode;
use shared::ConversationId;

/// The access rule of this deployment.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    mode: AccessMode,
}

impl Access {
    /// The rule for `mode`. `members` needs stored membership and is refused at start-up
    /// until a store exists, so it never reaches here.
    pub fn new(mode: AccessMode) -> Self {
        Self { mode }
    }

    /// Whether `who` may use `conversation`; an admin token may use every conversation.
    pub fn check(&self, who: &Identity, conversation: &ConversationId) -> Result<(), DomainError> {
        if who.admin {
            return Ok(());
        }
        let allowed = match self.mode {
            AccessMode::Open => true,
            AccessMode::Claims => who.conversations.as_ref().is_some_and(|c| c.allows(conversation)),
            AccessMode::Members => false,
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
