//! Domain events: what the domain publishes on the bus and every protocol adapter renders.
//!
//! Payload structs serialise to the camelCase shapes of PROTOCOL.md 2.3, which the Socket.IO
//! adapter sends as they are; other adapters map them to their own vocabulary.

use crate::{ConnId, ConversationId, Status, UserId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Where an event goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Topic {
    /// Every connection joined to the conversation.
    Conversation(ConversationId),
    /// Every connection of the user.
    User(UserId),
    /// Every connection.
    All,
}

/// One event addressed to a topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// Who receives it.
    pub topic: Topic,
    /// Connections of this user are skipped (typing and member events skip their author).
    pub except_user: Option<UserId>,
    /// What happened.
    pub event: Event,
}

impl Delivery {
    /// An event for everyone subscribed to `topic`.
    pub fn to(topic: Topic, event: Event) -> Self {
        Self {
            topic,
            except_user: None,
            event,
        }
    }

    /// The same delivery, skipping the connections of `user`.
    pub fn except(mut self, user: UserId) -> Self {
        self.except_user = Some(user);
        self
    }
}

/// A domain event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
pub enum Event {
    /// A user's first connection joined the conversation.
    MemberJoined(Membership),
    /// A user's last connection left the conversation.
    MemberLeft(Membership),
    /// A user started or stopped typing.
    Typing(Typing),
    /// A user's first connection anywhere opened.
    UserOnline(PresenceInfo),
    /// A user's last connection closed (after the grace), or died with its node.
    UserOffline(PresenceInfo),
    /// A connected user changed status.
    PresenceChanged(PresenceInfo),
    /// A notification for a user (REST `/api/notify`).
    Notification(Notification),
    /// An event name and payload passed through as given (REST messages, broadcasts, emits).
    Direct(Direct),
    /// Close the connections of a user (REST disconnect).
    Disconnect(UserRef),
    /// A message was stored.
    MessageCreated(Message),
    /// A message was delivered to or read by a user (sent to the message's sender).
    MessageStatus(MessageStatus),
    /// A reaction was added to a message.
    ReactionAdded(Reaction),
    /// A reaction was removed from a message.
    ReactionRemoved(Reaction),
    /// A member was removed from a conversation: that user's connections leave it at once.
    MemberRemoved(Membership),
    /// Connections joined or left a conversation, or changed status in it (one entry per
    /// connection: what per-device presence lists such as Phoenix.Presence are built from).
    RosterChanged(RosterDiff),
    /// A node's periodic report about itself (to every node; no client hears it).
    NodeReport(crate::node::NodeReport),
}

impl Event {
    /// Every event kind's wire name (the envelope's `kind`), in [`Event::kind_index`] order:
    /// a small fixed set, fit for metric labels.
    pub const KINDS: [&'static str; 16] = [
        "member_joined",
        "member_left",
        "typing",
        "user_online",
        "user_offline",
        "presence_changed",
        "notification",
        "direct",
        "disconnect",
        "message_created",
        "message_status",
        "reaction_added",
        "reaction_removed",
        "member_removed",
        "roster_changed",
        "node_report",
    ];

    /// This event's position in [`Event::KINDS`].
    pub fn kind_index(&self) -> usize {
        match self {
            Event::MemberJoined(_) => 0,
            Event::MemberLeft(_) => 1,
            Event::Typing(_) => 2,
            Event::UserOnline(_) => 3,
            Event::UserOffline(_) => 4,
            Event::PresenceChanged(_) => 5,
            Event::Notification(_) => 6,
            Event::Direct(_) => 7,
            Event::Disconnect(_) => 8,
            Event::MessageCreated(_) => 9,
            Event::MessageStatus(_) => 10,
            Event::ReactionAdded(_) => 11,
            Event::ReactionRemoved(_) => 12,
            Event::MemberRemoved(_) => 13,
            Event::RosterChanged(_) => 14,
            Event::NodeReport(_) => 15,
        }
    }

    /// This event's wire name (the envelope's `kind`).
    pub fn kind(&self) -> &'static str {
        Self::KINDS[self.kind_index()]
    }

    /// Whether its publication and deliveries are traced: not the nodes' periodic reports,
    /// which would add a trace per node every few seconds and tell nothing of a user's request.
    pub fn traced(&self) -> bool {
        !matches!(self, Event::NodeReport(_))
    }
}

/// A stored message: `{ id, conversationId, senderId, content, type, attachments, tempId, seq, sentAt }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    /// Unique id given by the gateway.
    pub id: String,
    /// The conversation.
    pub conversation_id: ConversationId,
    /// The author.
    pub sender_id: UserId,
    /// The text.
    pub content: String,
    /// `text`, `image`, `file`, `audio`, `video` or `system`.
    #[serde(rename = "type")]
    pub kind: String,
    /// http(s) URLs.
    pub attachments: Vec<String>,
    /// The sender's `tempId` / `clientRandom`, when given.
    pub temp_id: Option<String>,
    /// Position in the conversation: 1, 2, 3… without gap.
    pub seq: i64,
    /// When it was stored.
    pub sent_at: DateTime<Utc>,
    /// Free-form metadata (Phoenix clients send it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
}

/// Delivered or read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptStatus {
    /// Reached a device of the user.
    Delivered,
    /// Read by the user.
    Read,
}

impl ReceiptStatus {
    /// The status as stored and sent.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Read => "read",
        }
    }
}

/// Message status: `{ messageId, conversationId, userId, status, at, readBy? }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageStatus {
    /// The message.
    pub message_id: String,
    /// Its conversation.
    pub conversation_id: ConversationId,
    /// Who received or read it.
    pub user_id: UserId,
    /// Delivered or read.
    pub status: ReceiptStatus,
    /// When.
    pub at: DateTime<Utc>,
    /// The reader, when the status is `read` (seed 002's clients read this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_by: Option<UserId>,
}

/// Reaction: `{ messageId, conversationId, userId, reaction }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reaction {
    /// The message.
    pub message_id: String,
    /// Its conversation.
    pub conversation_id: ConversationId,
    /// Who reacted.
    pub user_id: UserId,
    /// An emoji or short string, at most 32 bytes.
    pub reaction: String,
}

/// Member joined / left: `{ conversationId, userId }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Membership {
    /// The conversation.
    pub conversation_id: ConversationId,
    /// The member.
    pub user_id: UserId,
}

/// One connection in a conversation's presence list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RosterEntry {
    /// The connection's user.
    pub user_id: UserId,
    /// The connection.
    pub conn_id: ConnId,
    /// The user's status.
    pub status: Status,
    /// When the connection joined the conversation.
    pub since: DateTime<Utc>,
}

/// What changed in a conversation's presence list. A status change is the same connection
/// leaving with its old status and joining with its new one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RosterDiff {
    /// The conversation.
    pub conversation_id: ConversationId,
    /// Connections now listed.
    pub joins: Vec<RosterEntry>,
    /// Connections no longer listed (as they were listed).
    pub leaves: Vec<RosterEntry>,
}

/// Typing: `{ conversationId, userId, isTyping }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Typing {
    /// The conversation.
    pub conversation_id: ConversationId,
    /// Who types.
    pub user_id: UserId,
    /// Started (true) or stopped (false).
    pub is_typing: bool,
}

/// Online / offline / presence changed: `{ userId, status, lastSeen }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceInfo {
    /// The user.
    pub user_id: UserId,
    /// The status others see.
    pub status: Status,
    /// When the user was last connected; null while online.
    pub last_seen: Option<DateTime<Utc>>,
}

/// A notification: `{ id, type, title, body, data, at }`; absent fields are null.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Unique id given by the gateway.
    pub id: String,
    /// Free-form kind chosen by the caller.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Title.
    pub title: Option<String>,
    /// Body.
    pub body: Option<String>,
    /// Arbitrary JSON.
    pub data: Option<serde_json::Value>,
    /// When it was sent.
    pub at: DateTime<Utc>,
}

/// An event passed through by name with an arbitrary JSON payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Direct {
    /// The event name clients listen to.
    pub event: String,
    /// The payload, exactly as posted.
    pub data: serde_json::Value,
}

/// A user, for control events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserRef {
    /// The user.
    pub user_id: UserId,
}

/// Version of the bus envelope format. The rule that lets version N and N+1 of Switchboard
/// run side by side during a rolling deploy (docs/cluster.md, "Rolling upgrades"):
/// - an additive change (a new optional field anywhere, a new event kind) keeps the version:
///   older nodes ignore fields they do not know and drop, counted, event kinds they do not know;
/// - a breaking change bumps it: a node reads its own version and older ones, and drops newer
///   ones, counted; so a breaking change ships in two deploys — nodes that read the new version,
///   then nodes that write it.
pub const ENVELOPE_VERSION: u8 = 1;

/// What a node makes of an envelope it received.
#[derive(Debug)]
pub enum Received {
    /// An envelope this node reads.
    Envelope(Box<Envelope>),
    /// A newer, incompatible version: dropped until every node reads it.
    Newer(u8),
    /// An event kind this version does not know (published by a newer node): dropped.
    UnknownKind(String),
}

/// Just the version, read before the rest.
#[derive(Deserialize)]
struct Version {
    v: u8,
}

/// One domain event as it travels between nodes, encoded with MessagePack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Format version ([`ENVELOPE_VERSION`]).
    pub v: u8,
    /// The node that published it (which delivered it to its own sockets already).
    pub origin: crate::NodeId,
    /// Publication time, milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// W3C trace context of the publishing span, when tracing is on.
    pub trace: Option<String>,
    /// The event and where it goes.
    pub delivery: Delivery,
}

impl Envelope {
    /// Encodes as MessagePack with field names, so that fields can be added compatibly.
    pub fn encode(&self) -> Result<Vec<u8>, rmp_serde::encode::Error> {
        rmp_serde::to_vec_named(self)
    }

    /// Decodes an envelope; see [`Envelope::v`] for the version check.
    pub fn decode(bytes: &[u8]) -> Result<Self, rmp_serde::decode::Error> {
        rmp_serde::from_slice(bytes)
    }

    /// Decodes an envelope under the compatibility rule of [`ENVELOPE_VERSION`]; an error is
    /// an envelope that is not one.
    pub fn receive(bytes: &[u8]) -> Result<Received, rmp_serde::decode::Error> {
        let Version { v } = rmp_serde::from_slice(bytes)?;
        if v > ENVELOPE_VERSION {
            return Ok(Received::Newer(v));
        }
        match Self::decode(bytes) {
            Ok(envelope) => Ok(Received::Envelope(Box::new(envelope))),
            Err(e) if e.to_string().contains("unknown variant") => Ok(Received::UnknownKind(e.to_string())),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_with_arbitrary_json() -> Result<(), Box<dyn std::error::Error>> {
        let events = [
            Event::Direct(Direct {
                event: "custom".into(),
                data: serde_json::json!({"a": [1, 2.5, "x", null, {"b": true}]}),
            }),
            Event::Typing(Typing {
                conversation_id: "c".into(),
                user_id: "u".into(),
                is_typing: true,
            }),
            Event::Disconnect(UserRef { user_id: "u".into() }),
        ];
        for event in events {
            let envelope = Envelope {
                v: ENVELOPE_VERSION,
                origin: "n1".into(),
                ts_ms: 1,
                trace: None,
                delivery: Delivery::to(Topic::User("u".into()), event).except("x".into()),
            };
            assert_eq!(Envelope::decode(&envelope.encode()?)?, envelope);
        }
        Ok(())
    }

    #[test]
    fn node_reports_alone_are_not_traced() {
        let report = Event::NodeReport(crate::node::NodeReport {
            node_id: "n1".into(),
            version: "1".into(),
            started_at: chrono::Utc::now(),
            reported_at: chrono::Utc::now(),
            not_ready: None,
            connections: crate::node::ProtocolCounts::default(),
            totals: crate::node::Totals::default(),
        });
        assert!(!report.traced());
        assert!(Event::Disconnect(UserRef { user_id: "u".into() }).traced());
    }

    #[test]
    fn kind_names_are_the_wire_tags() -> Result<(), Box<dyn std::error::Error>> {
        let event = Event::Typing(Typing {
            conversation_id: "c".into(),
            user_id: "u".into(),
            is_typing: true,
        });
        let json = serde_json::to_value(&event)?;
        assert_eq!(json["kind"], event.kind());
        let direct = Event::Direct(Direct {
            event: "e".into(),
            data: serde_json::Value::Null,
        });
        assert_eq!(serde_json::to_value(&direct)?["kind"], direct.kind());
        Ok(())
    }

    /// What a node of this version makes of envelopes from a newer one (a rolling deploy).
    #[test]
    fn newer_envelopes_are_read_when_additive_and_dropped_when_not() -> Result<(), Box<dyn std::error::Error>> {
        let typing = serde_json::json!({
            "kind": "typing",
            "data": {"conversationId": "c", "userId": "u", "isTyping": true, "device": "phone"},
        });
        let newer = |v: u8, event: serde_json::Value| {
            rmp_serde::to_vec_named(&serde_json::json!({
                "v": v, "origin": "n2", "ts_ms": 5, "trace": null, "priority": 3,
                "delivery": {"topic": {"conversation": "c"}, "except_user": null, "event": event},
            }))
        };
        // New fields, same version: read, the fields ignored.
        match Envelope::receive(&newer(ENVELOPE_VERSION, typing.clone())?)? {
            Received::Envelope(e) => assert!(matches!(e.delivery.event, Event::Typing(t) if t.is_typing)),
            other => panic!("not read: {other:?}"),
        }
        // A new event kind: dropped as such, not as garbage.
        let kind = serde_json::json!({"kind": "message_edited", "data": {"id": "m1"}});
        assert!(matches!(
            Envelope::receive(&newer(ENVELOPE_VERSION, kind)?)?,
            Received::UnknownKind(_)
        ));
        // A breaking version: dropped until every node reads it.
        assert!(
            matches!(Envelope::receive(&newer(ENVELOPE_VERSION + 1, typing)?)?, Received::Newer(v) if v == ENVELOPE_VERSION + 1)
        );
        // Not an envelope at all.
        assert!(Envelope::receive(b"\x93garbage").is_err());
        Ok(())
    }
}
