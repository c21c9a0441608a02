//! Outbound vocabularies (PROTOCOL.md 2.3) as data: one table per profile, from domain event
//! kind to event name, plus the few shape differences between profiles.

use crate::config::ProfileName;
use serde::Serialize;
use shared::Event;
use shared::event::{
    Direct, Membership, Message, MessageStatus, Notification, PresenceInfo, Reaction, ReceiptStatus, Typing,
};

/// The outbound event names of one profile.
#[derive(Debug)]
pub struct Profile {
    /// Profile name, for logs.
    pub name: &'static str,
    /// A user's first connection joined a conversation.
    pub member_joined: &'static str,
    /// A user's last connection left a conversation.
    pub member_left: &'static str,
    /// Sent to the joining connection besides the ack; `None`: ack only.
    pub join_confirmation: Option<&'static str>,
    /// A message was stored.
    pub new_message: &'static str,
    /// The new-message payload is the message itself (`bam`), not `{ message, timestamp }`.
    pub new_message_bare: bool,
    /// Sent to the sending connection besides the ack; `None`: ack only.
    pub send_confirmation: Option<&'static str>,
    /// Delivered/read status, to the message's sender.
    pub message_status: &'static str,
    /// Only `read` statuses are sent (seed 002's `message:read:ack`).
    pub status_reads_only: bool,
    /// A reaction was added.
    pub reaction_added: &'static str,
    /// A reaction was removed.
    pub reaction_removed: &'static str,
    /// Typing started or stopped.
    pub typing: &'static str,
    /// A contact's first connection opened.
    pub user_online: &'static str,
    /// A contact's last connection closed.
    pub user_offline: &'static str,
    /// A contact changed status.
    pub presence_changed: &'static str,
    /// A notification.
    pub notification: &'static str,
    /// An error without an ack callback.
    pub error: &'static str,
}

/// Seed 001.
pub static ALT: Profile = Profile {
    name: "alt",
    member_joined: "user:joined",
    member_left: "user:left",
    join_confirmation: Some("room:joined"),
    new_message: "message:new",
    new_message_bare: false,
    send_confirmation: Some("message:ack"),
    message_status: "message:status",
    status_reads_only: false,
    reaction_added: "reaction:added",
    reaction_removed: "reaction:removed",
    typing: "typing:user",
    user_online: "user:online",
    user_offline: "user:offline",
    presence_changed: "presence:changed",
    notification: "notification",
    error: "error",
};

/// Seed 002.
pub static CHAT: Profile = Profile {
    name: "chat",
    member_joined: "user:joined",
    member_left: "user:left",
    join_confirmation: None,
    new_message: "message:new",
    new_message_bare: false,
    send_confirmation: None,
    message_status: "message:read:ack",
    status_reads_only: true,
    reaction_added: "reaction:added",
    reaction_removed: "reaction:removed",
    typing: "user:typing",
    user_online: "user:online",
    user_offline: "user:offline",
    presence_changed: "presence:changed",
    notification: "notification",
    error: "error",
};

/// Seed 003.
pub static BAM: Profile = Profile {
    name: "bam",
    member_joined: "user-joined-bam",
    member_left: "user-left-bam",
    join_confirmation: None,
    new_message: "new-message",
    new_message_bare: true,
    send_confirmation: None,
    message_status: "message-status",
    status_reads_only: false,
    reaction_added: "reaction:added",
    reaction_removed: "reaction:removed",
    typing: "typing-status",
    user_online: "presence-update",
    user_offline: "presence-update",
    presence_changed: "presence-update",
    notification: "notification",
    error: "error",
};

/// The table for a profile name.
pub fn profile(name: ProfileName) -> &'static Profile {
    match name {
        ProfileName::Alt => &ALT,
        ProfileName::Chat => &CHAT,
        ProfileName::Bam => &BAM,
    }
}

/// A payload borrowed from the event, serialised once per namespace.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Payload<'a> {
    /// `{ conversationId, userId }`.
    Membership(&'a Membership),
    /// `{ conversationId, userId, isTyping }`.
    Typing(&'a Typing),
    /// `{ userId, status, lastSeen }`.
    Presence(&'a PresenceInfo),
    /// `{ id, type, title, body, data, at }`.
    Notification(&'a Notification),
    /// Passed through as posted.
    Raw(&'a serde_json::Value),
    /// The message itself.
    Message(&'a Message),
    /// `{ message, timestamp }`.
    NewMessage {
        /// The message.
        message: &'a Message,
        /// When it was stored.
        timestamp: chrono::DateTime<chrono::Utc>,
    },
    /// `{ messageId, conversationId, userId, status, at, readBy? }`.
    Status(&'a MessageStatus),
    /// `{ messageId, conversationId, userId, reaction }`.
    Reaction(&'a Reaction),
}

impl Profile {
    /// The event name and payload this profile sends for `event`; `None` for events that are
    /// not rendered as a frame (control events, or names the profile does not have).
    pub fn render<'a>(&'static self, event: &'a Event) -> Option<(&'a str, Payload<'a>)> {
        Some(match event {
            Event::MemberJoined(m) => (self.member_joined, Payload::Membership(m)),
            Event::MemberLeft(m) => (self.member_left, Payload::Membership(m)),
            Event::Typing(t) => (self.typing, Payload::Typing(t)),
            Event::UserOnline(p) => (self.user_online, Payload::Presence(p)),
            Event::UserOffline(p) => (self.user_offline, Payload::Presence(p)),
            Event::PresenceChanged(p) => (self.presence_changed, Payload::Presence(p)),
            Event::Notification(n) => (self.notification, Payload::Notification(n)),
            Event::Direct(Direct { event, data }) => (event.as_str(), Payload::Raw(data)),
            Event::MessageCreated(m) if self.new_message_bare => (self.new_message, Payload::Message(m)),
            Event::MessageCreated(m) => (
                self.new_message,
                Payload::NewMessage {
                    message: m,
                    timestamp: m.sent_at,
                },
            ),
            Event::MessageStatus(st) if self.status_reads_only && st.status != ReceiptStatus::Read => return None,
            Event::MessageStatus(st) => (self.message_status, Payload::Status(st)),
            Event::ReactionAdded(r) => (self.reaction_added, Payload::Reaction(r)),
            Event::ReactionRemoved(r) => (self.reaction_removed, Payload::Reaction(r)),
            Event::Disconnect(_) | Event::MemberRemoved(_) | Event::RosterChanged(_) | Event::NodeReport(_) => {
                return None;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::Status;

    #[test]
    fn profiles_name_the_same_event_differently() {
        let typing = Event::Typing(Typing {
            conversation_id: "1".into(),
            user_id: "u".into(),
            is_typing: true,
        });
        let names: Vec<_> = [&ALT, &CHAT, &BAM]
            .iter()
            .filter_map(|p| p.render(&typing).map(|(n, _)| n.to_owned()))
            .collect();
        assert_eq!(names, ["typing:user", "user:typing", "typing-status"]);

        let online = Event::UserOnline(PresenceInfo {
            user_id: "u".into(),
            status: Status::Online,
            last_seen: None,
        });
        let rendered = BAM
            .render(&online)
            .map(|(n, p)| (n.to_owned(), serde_json::to_value(p).ok()));
        assert_eq!(
            rendered,
            Some((
                "presence-update".to_owned(),
                Some(serde_json::json!({"userId": "u", "status": "online", "lastSeen": null}))
            ))
        );
    }
}
