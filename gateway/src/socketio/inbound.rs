//! Inbound payloads: the shapes seed clients send, read leniently (ids as strings or numbers,
//! bare values or objects) and strictly (a wrong type is a `bad_request` naming the field).

use crate::domain::DomainError;
use serde_json::Value;
use shared::{ConversationId, Status, UserId};

/// Longest id accepted, in bytes.
pub const MAX_ID_BYTES: usize = 256;

fn bad(msg: impl Into<String>) -> DomainError {
    DomainError::BadRequest(msg.into())
}

/// A scalar id: a non-empty string or an integer.
fn scalar_id(field: &str, v: &Value) -> Result<String, DomainError> {
    let id = match v {
        Value::String(s) => s.trim().to_owned(),
        Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
        Value::Null => return Err(bad(format!("{field} is required"))),
        _ => return Err(bad(format!("{field} must be a string or an integer"))),
    };
    if id.is_empty() {
        return Err(bad(format!("{field} must not be empty")));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(bad(format!("{field} is longer than {MAX_ID_BYTES} bytes")));
    }
    Ok(id)
}

/// `{ conversationId }`, `{ roomId }`, `{ bamId }` or a bare id.
pub fn conversation(v: &Value) -> Result<ConversationId, DomainError> {
    match v {
        Value::Object(map) => {
            let field = ["conversationId", "roomId", "bamId"]
                .into_iter()
                .find(|k| map.get(*k).is_some_and(|v| !v.is_null()))
                .unwrap_or("conversationId");
            scalar_id(field, map.get(field).unwrap_or(&Value::Null)).map(ConversationId)
        }
        other => scalar_id("conversationId", other).map(ConversationId),
    }
}

/// `{ conversationId, isTyping }`.
pub fn typing(v: &Value) -> Result<(ConversationId, bool), DomainError> {
    let conversation = conversation(v)?;
    match v.get("isTyping") {
        Some(Value::Bool(b)) => Ok((conversation, *b)),
        None | Some(Value::Null) => Err(bad("isTyping is required")),
        Some(_) => Err(bad("isTyping must be a boolean")),
    }
}

/// `{ status }` or a bare status.
pub fn status(v: &Value) -> Result<Status, DomainError> {
    let raw = match v {
        Value::Object(map) => map.get("status").unwrap_or(&Value::Null),
        other => other,
    };
    match raw {
        Value::String(s) => s
            .parse()
            .map_err(|_| bad(format!("unknown status '{s}': expected online, away, busy or offline"))),
        Value::Null => Err(bad("status is required")),
        _ => Err(bad("status must be a string")),
    }
}

/// `userId` or `{ userId }`.
pub fn user(v: &Value) -> Result<UserId, DomainError> {
    match v {
        Value::Object(map) => scalar_id("userId", map.get("userId").unwrap_or(&Value::Null)),
        other => scalar_id("userId", other),
    }
    .map(UserId)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn conversation_ids_in_every_accepted_shape() {
        for v in [
            json!({"roomId": "7"}),
            json!({"conversationId": 7}),
            json!({"bamId": "7"}),
            json!(7),
            json!("7"),
        ] {
            assert_eq!(conversation(&v).ok(), Some(ConversationId::from("7")), "{v}");
        }
    }

    #[test]
    fn wrong_shapes_are_bad_requests_naming_the_field() {
        let cases = [
            (json!({}), "conversationId is required"),
            (json!(null), "conversationId is required"),
            (json!({"conversationId": true}), "conversationId must be"),
            (json!({"roomId": {"a": 1}}), "roomId must be"),
            (json!([1]), "conversationId must be"),
            (json!(""), "must not be empty"),
            (json!(1.5), "conversationId must be"),
        ];
        for (v, msg) in cases {
            let err = conversation(&v).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(msg), "{v}: {err}");
        }
        assert!(status(&json!({"status": "sleeping"})).is_err());
        assert_eq!(status(&json!("busy")).ok(), Some(Status::Busy));
        assert!(typing(&json!({"conversationId": 1, "isTyping": "yes"})).is_err());
        assert!(user(&json!({"userId": {"x": 1}})).is_err());
    }
}
