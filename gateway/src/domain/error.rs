//! The domain's error: what went wrong, in terms every protocol maps to its own reply.

use crate::bus::BusError;
use crate::presence::PresenceError;
use crate::store::StoreError;
use shared::ErrorCode;

/// A refused or failed command. The message is safe to show to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// A missing or wrongly typed field.
    #[error("{0}")]
    BadRequest(String),
    /// No identity where one is needed.
    #[error("{0}")]
    Unauthorized(String),
    /// Not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// No such thing.
    #[error("{0}")]
    NotFound(String),
    /// Over the rate limit.
    #[error("rate limit exceeded")]
    RateLimited,
    /// Over a size limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// A backend is down; nothing was done.
    #[error("{0}")]
    Unavailable(String),
    /// A bug.
    #[error("internal error")]
    Internal,
}

impl DomainError {
    /// The wire code (PROTOCOL.md 2.2).
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadRequest(_) => ErrorCode::BadRequest,
            Self::Unauthorized(_) => ErrorCode::Unauthorized,
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::RateLimited => ErrorCode::RateLimited,
            Self::PayloadTooLarge(_) => ErrorCode::PayloadTooLarge,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::Internal => ErrorCode::Internal,
        }
    }
}

impl From<PresenceError> for DomainError {
    fn from(e: PresenceError) -> Self {
        tracing::warn!(error = %e, "presence failure");
        Self::Unavailable("presence is unavailable, try again".into())
    }
}

impl From<StoreError> for DomainError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(reason) => {
                tracing::warn!(%reason, "store failure");
                Self::Unavailable("database unavailable: nothing was stored, try again".into())
            }
            StoreError::Exists(id) => Self::BadRequest(format!("conversation {id} exists already")),
            StoreError::NoConversation(id) => Self::NotFound(format!("no conversation {id}")),
        }
    }
}

impl From<BusError> for DomainError {
    fn from(e: BusError) -> Self {
        tracing::warn!(error = %e, "bus failure");
        Self::Unavailable("event bus is unavailable, try again".into())
    }
}
