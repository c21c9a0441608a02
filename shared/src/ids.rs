//! Identifiers. Every id is a string on the wire, even where a client sends a number.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// Shared, not copied: a connection's ids are held in several places of a node (the
        /// hub, presence, the socket, each topic), and a clone is a reference count.
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(transparent)]
        #[schema(value_type = String)]
        pub struct $name(pub Arc<str>);

        impl $name {
            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(Arc::from(s))
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(Arc::from(s))
            }
        }
    };
}

string_id!(
    /// A user: the JWT claim named by `--jwt-user-claim`, or the id given to `register`.
    UserId
);
string_id!(
    /// A conversation (room, BAM).
    ConversationId
);
string_id!(
    /// One client connection, unique across the cluster.
    ConnId
);
string_id!(
    /// One gateway node.
    NodeId
);

/// Longest id accepted (user, conversation or message), in bytes, after trimming.
pub const MAX_ID_BYTES: usize = 256;

/// Why a text is not an id ([`check_id`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Nothing left after trimming.
    #[error("must not be empty")]
    Empty,
    /// Longer than [`MAX_ID_BYTES`] after trimming.
    #[error("is longer than {MAX_ID_BYTES} bytes")]
    TooLong,
    /// A control character (U+0000–U+001F, U+007F–U+009F) inside.
    #[error("must not contain control characters")]
    Control,
}

/// The one id rule of every entry point (REST paths and bodies, Socket.IO and Phoenix
/// payloads, Phoenix topics, the JWT user claim): the text trimmed of surrounding whitespace,
/// 1 to [`MAX_ID_BYTES`] bytes, without control characters. Returns the trimmed text.
pub fn check_id(raw: &str) -> Result<&str, IdError> {
    let id = raw.trim();
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id.len() > MAX_ID_BYTES {
        return Err(IdError::TooLong);
    }
    if id.chars().any(char::is_control) {
        return Err(IdError::Control);
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_rule() {
        assert_eq!(check_id(" 42 "), Ok("42"));
        assert_eq!(check_id("é".repeat(128).as_str()).map(str::len), Ok(256));
        assert_eq!(check_id("   "), Err(IdError::Empty));
        assert_eq!(check_id(""), Err(IdError::Empty));
        assert_eq!(check_id(&"x".repeat(257)), Err(IdError::TooLong));
        assert_eq!(check_id(&format!("  {}  ", "x".repeat(256))).map(str::len), Ok(256));
        assert_eq!(check_id("a\u{0}b"), Err(IdError::Control));
        assert_eq!(check_id("a\nb"), Err(IdError::Control));
        assert_eq!(check_id("a\u{85}b"), Err(IdError::Control));
    }
}
