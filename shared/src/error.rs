//! Error codes reported to clients (PROTOCOL.md 2.2), the same in every protocol.

use serde::{Deserialize, Serialize};

/// What went wrong, as a client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// A missing or wrongly typed field.
    BadRequest,
    /// No or bad credentials.
    Unauthorized,
    /// No access to that conversation, or not allowed by the token.
    Forbidden,
    /// No such thing (or, for direct messages, the user is connected nowhere).
    NotFound,
    /// Over the per-connection rate limit.
    RateLimited,
    /// Over a size limit.
    PayloadTooLarge,
    /// A store or Redis is down: nothing was done.
    Unavailable,
    /// A bug on our side.
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::RateLimited => "rate_limited",
            Self::PayloadTooLarge => "payload_too_large",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }
}
