//! Inbound payloads of the camelCase protocols (Socket.IO events and REST bodies): the shapes
//! seed clients send, read leniently (ids as strings or numbers, bare values or objects) and
//! strictly (a wrong type is a `bad_request` naming the field).

use crate::domain::{DomainError, HistoryRequest, MAX_ATTACHMENTS, SendRequest};
use serde_json::{Map, Value};
use shared::{ConversationId, Status, UserId, check_id};

/// Most conversation ids one `conversation:read` (`mark_all_read`) names.
pub const MAX_READ_CONVERSATIONS: usize = 100;
/// Most members one `POST /api/conversations` names.
pub const MAX_MEMBERS: usize = 1000;

fn bad(msg: impl Into<String>) -> DomainError {
    DomainError::BadRequest(msg.into())
}

/// An id given as text (a REST path segment, a Phoenix topic's id), by the one id rule
/// ([`check_id`]): trimmed, 1 to 256 bytes, no control characters; the error names `field`.
pub fn id(field: &str, raw: &str) -> Result<String, DomainError> {
    check_id(raw)
        .map(str::to_owned)
        .map_err(|e| bad(format!("{field} {e}")))
}

/// Largest magnitude below which every integral `f64` is an exact `i64` (2^63).
const EXACT_I64: f64 = 9_223_372_036_854_775_808.0;

/// A scalar id: a string (by the id rule) or an integer, also written `7.0` or `7e0` (the same
/// JSON number as `7`, as some JSON encoders write it): the integer's decimal text.
fn scalar_id(field: &str, v: &Value) -> Result<String, DomainError> {
    match v {
        Value::String(s) => id(field, s),
        Value::Number(n) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < EXACT_I64 => Ok((f as i64).to_string()),
            _ => Err(bad(format!("{field} must be a string or an integer"))),
        },
        Value::Null => Err(bad(format!("{field} is required"))),
        _ => Err(bad(format!("{field} must be a string or an integer"))),
    }
}

/// A conversation id given as text (a REST path, a Phoenix topic).
pub fn conversation_id(raw: &str) -> Result<ConversationId, DomainError> {
    id("conversationId", raw).map(ConversationId::from)
}

/// A user id given as text (a REST path).
pub fn user_id(raw: &str) -> Result<UserId, DomainError> {
    id("userId", raw).map(UserId::from)
}

/// A user id given as a JSON value (a REST body's `userId`, `senderId`, `members`).
pub fn user_value(field: &str, v: &Value) -> Result<UserId, DomainError> {
    scalar_id(field, v).map(UserId::from)
}

/// A conversation id given as a JSON value (`POST /api/conversations`' `id`).
pub fn conversation_value(field: &str, v: &Value) -> Result<ConversationId, DomainError> {
    scalar_id(field, v).map(ConversationId::from)
}

/// The `members` of a new conversation: at most [`MAX_MEMBERS`] user ids.
pub fn members(values: &[Value]) -> Result<Vec<UserId>, DomainError> {
    if values.len() > MAX_MEMBERS {
        return Err(bad(format!("at most {MAX_MEMBERS} members")));
    }
    values.iter().map(|m| user_value("members", m)).collect()
}

/// `{ conversationId }`, `{ roomId }`, `{ bamId }` or a bare id.
pub fn conversation(v: &Value) -> Result<ConversationId, DomainError> {
    match v {
        Value::Object(map) => {
            let field = ["conversationId", "roomId", "bamId"]
                .into_iter()
                .find(|k| map.get(*k).is_some_and(|v| !v.is_null()))
                .unwrap_or("conversationId");
            scalar_id(field, map.get(field).unwrap_or(&Value::Null)).map(ConversationId::from)
        }
        other => scalar_id("conversationId", other).map(ConversationId::from),
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
    .map(UserId::from)
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
        Some(Value::Array(items)) if items.len() > MAX_ATTACHMENTS => {
            return Err(bad(format!("at most {MAX_ATTACHMENTS} attachments")));
        }
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

/// `{ conversationId }`, `{ conversationIds: [] }` (1 to [`MAX_READ_CONVERSATIONS`]) or a
/// bare id. The length is checked before any id is read.
pub fn conversations(v: &Value) -> Result<Vec<ConversationId>, DomainError> {
    match v.get("conversationIds") {
        Some(Value::Array(items)) if items.len() > MAX_READ_CONVERSATIONS => {
            Err(bad(format!("at most {MAX_READ_CONVERSATIONS} conversationIds")))
        }
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|i| scalar_id("conversationIds", i).map(ConversationId::from))
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

/// The property `fuzz/fuzz_targets/inbound.rs` checks on any input, and `cargo test` on its
/// stored corpus: every payload reader answers a value or a `bad_request`, never a panic, and
/// what it answers keeps the bounds (ids by the id rule, arrays within their maximums).
#[doc(hidden)]
pub fn fuzz_read(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(raw) = id("id", text) {
        assert_eq!(check_id(&raw), Ok(raw.as_str()), "{raw:?}");
    }
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return;
    };
    let valid = |id: &str| assert!(check_id(id) == Ok(id), "id {id:?} from {text:?}");
    if let Ok(c) = conversation(&v) {
        valid(c.as_str());
    }
    if let Ok((c, _)) = typing(&v) {
        valid(c.as_str());
    }
    let _ = status(&v);
    if let Ok(u) = user(&v) {
        valid(u.as_str());
    }
    let _ = last_seq(&v).map(|n| assert!(n.is_none_or(|n| n >= 0)));
    if let Ok(send) = send(&v) {
        valid(send.conversation_id.as_str());
        assert!(send.attachments.len() <= MAX_ATTACHMENTS);
    }
    if let Ok(m) = message_id(&v) {
        valid(&m);
    }
    if let Ok((m, _)) = reaction(&v) {
        valid(&m);
    }
    if let Ok(cs) = conversations(&v) {
        assert!((1..=MAX_READ_CONVERSATIONS).contains(&cs.len()));
        cs.iter().for_each(|c| valid(c.as_str()));
    }
    if let Ok(h) = history(&v) {
        valid(h.conversation_id.as_str());
        assert!(h.before.is_none_or(|n| n >= 0) && h.after.is_none_or(|n| n >= 0));
    }
    if let Some(items) = v.as_array()
        && let Ok(ms) = members(items)
    {
        assert!(ms.len() <= MAX_MEMBERS);
        ms.iter().for_each(|m| valid(m.as_str()));
    }
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
            json!({"conversationId": 7.0}),
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

    /// Issue 12, item 7: the one id rule, whatever the shape.
    #[test]
    fn ids_follow_the_one_rule() {
        let refused = [
            json!("   "),
            json!({"roomId": " \t "}),
            json!("x".repeat(257)),
            json!("x".repeat(490)),
            json!("a\u{1}b"),
            json!({"conversationId": "a\nb"}),
        ];
        for v in refused {
            assert!(matches!(conversation(&v), Err(DomainError::BadRequest(_))), "{v}");
        }
        assert_eq!(conversation(&json!("  42 ")).ok(), Some(ConversationId::from("42")));
        assert_eq!(conversation(&json!("x".repeat(256))).map(|c| c.0.len()).ok(), Some(256));
        assert!(user(&json!("x".repeat(600_000))).is_err());
        assert!(conversation_id("   ").is_err());
        assert!(user_id(&"u".repeat(300)).is_err());
        assert_eq!(conversation_id(" a ").ok(), Some(ConversationId::from("a")));
    }

    /// Issue 12, item 8: arrays over their bound are refused before any element is read.
    #[test]
    fn arrays_are_bounded() {
        let ids: Vec<Value> = (0..60_000).map(|n| json!(n.to_string())).collect();
        let err = conversations(&json!({ "conversationIds": ids })).err();
        assert_eq!(
            err,
            Some(DomainError::BadRequest(format!(
                "at most {MAX_READ_CONVERSATIONS} conversationIds"
            )))
        );
        let ok: Vec<Value> = (0..MAX_READ_CONVERSATIONS).map(|n| json!(n)).collect();
        assert_eq!(
            conversations(&json!({ "conversationIds": ok })).map(|c| c.len()).ok(),
            Some(100)
        );
        let urls: Vec<Value> = (0..60_000).map(|_| json!(5)).collect();
        let err = send(&json!({"conversationId": "c", "content": "x", "attachments": urls})).err();
        assert_eq!(
            err,
            Some(DomainError::BadRequest(format!(
                "at most {MAX_ATTACHMENTS} attachments"
            )))
        );
        let many: Vec<Value> = (0..=MAX_MEMBERS).map(|n| json!(n)).collect();
        assert!(members(&many).is_err());
        assert_eq!(members(&many[..MAX_MEMBERS]).map(|m| m.len()).ok(), Some(MAX_MEMBERS));
    }
}
