//! Domain events in the vocabulary of seed 004's Phoenix channels (PROTOCOL.md section 3):
//! event names, snake_case payloads, and Phoenix.Presence metas.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::value::{RawValue, to_raw_value};
use sha2::{Digest, Sha256};
use shared::event::{Direct, Membership, Message, PresenceInfo, Reaction, ReceiptStatus, RosterEntry, Typing};
use shared::{ConnId, ConversationId, Event, Status, UserId};
use std::collections::BTreeMap;

/// The channel a rendered event goes out on, for a socket of the delivery's audience.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel {
    /// `conversation:{id}`.
    Conversation(ConversationId),
    /// `user:{id}` of the receiving socket's user.
    OwnUser,
    /// `conversation:{id}` when the socket joined it, else its `user:{id}`.
    ConversationOrUser(ConversationId),
}

/// What an event becomes for Phoenix sockets: a push on a channel. (A REST disconnect and a
/// removal are not rendered: the domain closes the sockets and their channels.)
#[derive(Debug)]
pub struct Rendered {
    /// Where.
    pub channel: Channel,
    /// The event name.
    pub event: String,
    /// The payload, serialised once.
    pub payload: Box<RawValue>,
}

/// A message: `{id, conversation_id, sender_id, content, message_type, attachments, metadata,
/// client_random, seq, sent_at, inserted_at}`.
#[derive(Debug, Serialize)]
pub struct PhxMessage<'a> {
    id: &'a str,
    conversation_id: &'a ConversationId,
    sender_id: &'a UserId,
    content: &'a str,
    message_type: &'a str,
    attachments: &'a [String],
    metadata: Option<&'a serde_json::Value>,
    client_random: Option<&'a str>,
    seq: i64,
    sent_at: DateTime<Utc>,
    /// Ecto's name for the same time, which Phoenix front ends usually read.
    inserted_at: DateTime<Utc>,
}

impl<'a> From<&'a Message> for PhxMessage<'a> {
    fn from(m: &'a Message) -> Self {
        Self {
            id: &m.id,
            conversation_id: &m.conversation_id,
            sender_id: &m.sender_id,
            content: &m.content,
            message_type: &m.kind,
            attachments: &m.attachments,
            metadata: m.metadata.as_ref(),
            client_random: m.temp_id.as_deref(),
            seq: m.seq,
            sent_at: m.sent_at,
            inserted_at: m.sent_at,
        }
    }
}

/// `conversation_updated` on `user:{id}`: a conversation of the user has a new message.
#[derive(Serialize)]
pub struct ConversationUpdated<'a> {
    /// The conversation.
    pub conversation_id: &'a ConversationId,
    /// Its newest message.
    pub last_message: PhxMessage<'a>,
    /// The receiving user's unread messages in it.
    pub unread_count: i64,
}

#[derive(Serialize)]
struct TypingIndicator<'a> {
    user_id: &'a UserId,
    conversation_id: &'a ConversationId,
    action: &'static str,
}

#[derive(Serialize)]
struct ReadReceipt<'a> {
    message_id: &'a str,
    conversation_id: &'a ConversationId,
    user_id: &'a UserId,
    read_at: DateTime<Utc>,
}

#[derive(Serialize)]
struct ReactionBody<'a> {
    message_id: &'a str,
    conversation_id: &'a ConversationId,
    user_id: &'a UserId,
    reaction: &'a str,
}

#[derive(Serialize)]
struct UserBody<'a> {
    user_id: &'a UserId,
    conversation_id: &'a ConversationId,
}

#[derive(Serialize)]
struct PresenceChanged<'a> {
    user_id: &'a UserId,
    status: Status,
    last_seen: Option<DateTime<Utc>>,
}

/// Phoenix.Presence meta: one per connection.
#[derive(Debug, Serialize)]
pub struct Meta {
    phx_ref: String,
    status: Status,
    online_at: DateTime<Utc>,
}

/// `{user_id: {metas: [...]}}`, as `presence_state` and both halves of `presence_diff` are.
pub type PresenceMap = BTreeMap<UserId, Metas>;

/// The metas of one user.
#[derive(Debug, Default, Serialize)]
pub struct Metas {
    metas: Vec<Meta>,
}

#[derive(Serialize)]
struct PresenceDiff {
    joins: PresenceMap,
    leaves: PresenceMap,
}

/// A connection's `phx_ref`: unique per connection and status, the same on every node, so that
/// a status change is a new ref (the client would drop a user whose join and leave share a
/// ref). Hashed so that clients never see connection ids.
fn phx_ref(conn: &ConnId, status: Status) -> String {
    let digest = Sha256::new()
        .chain_update(conn.0.as_bytes())
        .chain_update([0])
        .chain_update(status.as_str().as_bytes())
        .finalize();
    URL_SAFE_NO_PAD.encode(&digest[..12])
}

/// Groups roster entries by user, one meta each.
pub fn presence_map<'a>(entries: impl IntoIterator<Item = &'a RosterEntry>) -> PresenceMap {
    let mut map = PresenceMap::new();
    for e in entries {
        map.entry(e.user_id.clone()).or_default().metas.push(Meta {
            phx_ref: phx_ref(&e.conn_id, e.status),
            status: e.status,
            online_at: e.since,
        });
    }
    map
}

fn raw<T: Serialize>(value: &T) -> Option<Box<RawValue>> {
    to_raw_value(value)
        .inspect_err(|e| tracing::warn!(error = %e, "event not rendered"))
        .ok()
}

fn push<T: Serialize>(channel: Channel, event: &str, payload: &T) -> Option<Rendered> {
    Some(Rendered {
        channel,
        event: event.to_owned(),
        payload: raw(payload)?,
    })
}

fn conversation(id: &ConversationId) -> Channel {
    Channel::Conversation(id.clone())
}

fn membership(event: &str, m: &Membership) -> Option<Rendered> {
    let body = UserBody {
        user_id: &m.user_id,
        conversation_id: &m.conversation_id,
    };
    push(conversation(&m.conversation_id), event, &body)
}

fn presence_changed(p: &PresenceInfo) -> Option<Rendered> {
    let body = PresenceChanged {
        user_id: &p.user_id,
        status: p.status,
        last_seen: p.last_seen,
    };
    push(Channel::OwnUser, "user_presence_changed", &body)
}

/// Renders a domain event for Phoenix sockets; `None` for events they do not get.
/// `direct_on` is the channel of a pass-through event: the conversation for an emit to a
/// conversation, the user's own channel otherwise.
pub fn render(event: &Event, direct_on: Channel) -> Option<Rendered> {
    match event {
        Event::MessageCreated(m) => push(conversation(&m.conversation_id), "new_message", &PhxMessage::from(m)),
        Event::Typing(t) => {
            let Typing {
                conversation_id,
                user_id,
                is_typing,
            } = t;
            let body = TypingIndicator {
                user_id,
                conversation_id,
                action: if *is_typing { "start" } else { "stop" },
            };
            push(conversation(conversation_id), "typing_indicator", &body)
        }
        Event::MessageStatus(s) if s.status == ReceiptStatus::Read => {
            let body = ReadReceipt {
                message_id: &s.message_id,
                conversation_id: &s.conversation_id,
                user_id: &s.user_id,
                read_at: s.at,
            };
            push(
                Channel::ConversationOrUser(s.conversation_id.clone()),
                "read_receipt",
                &body,
            )
        }
        // Seed 004 has no delivery receipts.
        Event::MessageStatus(_) => None,
        Event::ReactionAdded(r) | Event::ReactionRemoved(r) => {
            let Reaction {
                message_id,
                conversation_id,
                user_id,
                reaction,
            } = r;
            let name = match event {
                Event::ReactionAdded(_) => "reaction_added",
                _ => "reaction_removed",
            };
            let body = ReactionBody {
                message_id,
                conversation_id,
                user_id,
                reaction,
            };
            push(conversation(conversation_id), name, &body)
        }
        Event::MemberJoined(m) => membership("user_joined", m),
        Event::MemberLeft(m) => membership("user_left", m),
        Event::RosterChanged(diff) => {
            let body = PresenceDiff {
                joins: presence_map(&diff.joins),
                leaves: presence_map(&diff.leaves),
            };
            push(conversation(&diff.conversation_id), "presence_diff", &body)
        }
        Event::UserOnline(p) | Event::UserOffline(p) | Event::PresenceChanged(p) => presence_changed(p),
        Event::Notification(n) => push(Channel::OwnUser, "notification", n),
        Event::Direct(Direct { event, data }) => {
            // Phoenix payloads are objects; anything else travels under `data`.
            if data.is_object() {
                push(direct_on, event, data)
            } else {
                push(direct_on, event, &serde_json::json!({ "data": data }))
            }
        }
        Event::Disconnect(_) | Event::MemberRemoved(_) | Event::NodeReport(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::event::RosterDiff;

    fn entry(user: &str, conn: &str, status: Status) -> RosterEntry {
        RosterEntry {
            user_id: user.into(),
            conn_id: conn.into(),
            status,
            since: DateTime::UNIX_EPOCH,
        }
    }

    fn payload(r: Option<Rendered>) -> serde_json::Value {
        match r {
            Some(Rendered { payload, .. }) => serde_json::from_str(payload.get()).unwrap_or_default(),
            _ => serde_json::Value::Null,
        }
    }

    #[test]
    fn a_status_change_is_a_new_ref_and_devices_are_separate_metas() {
        let diff = Event::RosterChanged(RosterDiff {
            conversation_id: "c".into(),
            joins: vec![
                entry("u", "n1:phx:1", Status::Away),
                entry("u", "n2:phx:9", Status::Away),
            ],
            leaves: vec![entry("u", "n1:phx:1", Status::Online)],
        });
        let body = payload(render(&diff, Channel::OwnUser));
        let joins = &body["joins"]["u"]["metas"];
        let leaves = &body["leaves"]["u"]["metas"];
        assert_eq!(joins.as_array().map(Vec::len), Some(2));
        assert_ne!(joins[0]["phx_ref"], joins[1]["phx_ref"]);
        assert_ne!(joins[0]["phx_ref"], leaves[0]["phx_ref"]);
        assert_eq!(joins[0]["status"], "away");
        // The same connection and status give the same ref on every node.
        assert_eq!(
            phx_ref(&"n1:phx:1".into(), Status::Online),
            leaves[0]["phx_ref"].as_str().unwrap_or_default()
        );
    }

    #[test]
    fn messages_are_flat_and_snake_case() {
        let m = Message {
            id: "m1".into(),
            conversation_id: "c".into(),
            sender_id: "u".into(),
            content: "hi".into(),
            kind: "text".into(),
            attachments: vec![],
            temp_id: Some("42".into()),
            seq: 3,
            sent_at: DateTime::UNIX_EPOCH,
            metadata: None,
        };
        let body = payload(render(&Event::MessageCreated(m), Channel::OwnUser));
        assert_eq!(body["message_type"], "text");
        assert_eq!(body["client_random"], "42");
        assert_eq!(body["conversation_id"], "c");
        assert_eq!(body["seq"], 3);
    }

    #[test]
    fn pass_through_payloads_are_always_objects() {
        let direct = Event::Direct(Direct {
            event: "message".into(),
            data: serde_json::json!("hello"),
        });
        assert_eq!(
            payload(render(&direct, Channel::OwnUser)),
            serde_json::json!({"data": "hello"})
        );
    }
}
