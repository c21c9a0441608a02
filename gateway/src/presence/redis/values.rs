//! Reading the values the presence functions answer: fred hands back loosely typed `Value`s,
//! and a missing or odd field reads as empty rather than failing the whole answer.

use chrono::{DateTime, TimeZone, Utc};
use fred::types::Value;
use shared::Status;

pub(super) fn int(v: &Value) -> i64 {
    match v {
        Value::Integer(i) => *i,
        other => other.as_str().and_then(|s| s.parse().ok()).unwrap_or(0),
    }
}

pub(super) fn string(v: &Value) -> String {
    v.as_str().map(|s| s.to_string()).unwrap_or_default()
}

pub(super) fn items(v: Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items,
        _ => Vec::new(),
    }
}

pub(super) fn strings<T: From<String>>(v: Value) -> Vec<T> {
    items(v).iter().map(|i| T::from(string(i))).collect()
}

pub(super) fn time_ms(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}

/// A status as Redis answers it; `online` for anything else (no field means `online`).
pub(super) fn status(v: &Value) -> Status {
    v.as_str().and_then(|s| s.parse().ok()).unwrap_or_default()
}
