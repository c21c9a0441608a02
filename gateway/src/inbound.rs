//! Inbound payloads of the camelCase protocols (Socket.IO events and REST bodies): the shapes
//! seed clients send, read leniently (ids as strings or numbers, bare values or objects) and
//! strictly (a wrong type is a `bad_request` naming the field).

use crate::domain::{DomainError, HistoryRequest, SendRequest};
use serde_json::{Map, Value};
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

fn object<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, DomainError> {
    v.as_object().ok_or_else(|| bad(format!("{what} must be an object")))
}

/// An optional non-negative integer field.
fn seq_field(map: &Map<String, Value>, field: &str) -> Result<Option<i64>, DomainError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .filter(|n| *n >= 0)
            .map(Some)
            .ok_or_else(|| bad(format!("{field} must be a non-negative integer"))),
        Some(_) => Err(bad(format!("{field} must be a non-negative integer"))),
    }
}

/// The `lastSeq` of a join payload, when it is an object.
pub fn last_seq(v: &Value) -> Result<Option<i64>, DomainError> {
    match v.as_object() {
        Some(map) => seq_field(map, "lastSeq"),
        None => Ok(None),
    }
}

/// `{ conversationId | roomId | bamId, content | text, type?, attachments?, tempId? | clientRandom?, metadata? }`.
pub fn send(v: &Value) -> Result<SendRequest, DomainError> {
    let map = object(v, "payload")?;
    let conversation_id = conversation(v)?;
    let content = match map.get("content").filter(|c| !c.is_null()).or_else(|| map.get("text")) {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) => return Err(bad("content is required")),
        Some(_) => return Err(bad("content must be a string")),
    };
    let kind = match map.get("type") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(bad("type must be a string")),
    };
    let attachments = match map.get("attachments") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("attachments must be strings"))?,
        Some(_) => return Err(bad("attachments must be an array of URLs")),
    };
    let client_ref = match map
        .get("tempId")
        .filter(|t| !t.is_null())
        .or_else(|| map.get("clientRandom"))
    {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => return Err(bad("tempId must be a string or a number")),
    };
    Ok(SendRequest {
        conversation_id,
        content,
        kind,
        attachments,
        client_ref,
        metadata: map.get("metadata").filter(|m| !m.is_null()).cloned(),
    })
}

/// `{ messageId }` or a bare id.
pub fn message_id(v: &Value) -> Result<String, DomainError> {
    match v {
        Value::Object(map) => scalar_id("messageId", map.get("messageId").unwrap_or(&Value::Null)),
        other => scalar_id("messageId", other),
    }
}

/// `{ messageId, reaction }`.
pub fn reaction(v: &Value) -> Result<(String, String), DomainError> {
    let map = object(v, "payload")?;
    let id = message_id(v)?;
    match map.get("reaction") {
        Some(Value::String(r)) => Ok((id, r.clone())),
        None | Some(Value::Null) => Err(bad("reaction is required")),
        Some(_) => Err(bad("reaction must be a string")),
    }
}

/// `{ conversationId }`, `{ conversationIds: [] }` or a bare id.
pub fn conversations(v: &Value) -> Result<Vec<ConversationId>, DomainError> {
    match v.get("conversationIds") {
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|i| scalar_id("conversationIds", i).map(ConversationId))
            .collect(),
        Some(Value::Array(_)) => Err(bad("conversationIds must not be empty")),
        Some(other) if !other.is_null() => Err(bad("conversationIds must be an array")),
        _ => conversation(v).map(|c| vec![c]),
    }
}

/// `{ conversationId, before?, after?, limit? }`.
pub fn history(v: &Value) -> Result<HistoryRequest, DomainError> {
    let conversation_id = conversation(v)?;
    let mut request = HistoryRequest {
        conversation_id,
        before: None,
        after: None,
        limit: None,
    };
    if let Some(map) = v.as_object() {
        request.before = seq_field(map, "before")?;
        request.after = seq_field(map, "after")?;
        request.limit = seq_field(map, "limit")?
            .map(|l| u32::try_from(l).map_err(|_| bad("limit is too large")))
            .transpose()?;
    }
    Ok(request)
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
