//! Socket.IO inbound events: the name table, and each command's outcome rendered as the ack.

use super::{SioSocket, SocketIoAdapter};
use crate::auth::Identity;
use crate::commands::{Caller, Command, Outcome, Verb, execute};
use crate::domain::{DomainError, Live};
use crate::inbound;
use serde::Serialize;
use serde_json::Value;
use shared::event::Message;
use shared::{ConversationId, Status, UserId};
use std::sync::Arc;

/// Inbound events and what each one asks (PROTOCOL.md 2.2), aliases included.
pub(super) const INBOUND: &[(&str, Inbound)] = &[
    ("register", Inbound::Register),
    ("room:join", Inbound::Command(Verb::Join)),
    ("conversation:join", Inbound::Command(Verb::Join)),
    ("join-bam", Inbound::Command(Verb::Join)),
    ("room:leave", Inbound::Command(Verb::Leave)),
    ("conversation:leave", Inbound::Command(Verb::Leave)),
    ("leave-bam", Inbound::Command(Verb::Leave)),
    ("typing:start", Inbound::Command(Verb::TypingStart)),
    ("typing-start", Inbound::Command(Verb::TypingStart)),
    ("typing:stop", Inbound::Command(Verb::TypingStop)),
    ("typing-stop", Inbound::Command(Verb::TypingStop)),
    ("message:typing", Inbound::Command(Verb::Typing)),
    ("presence:update", Inbound::Command(Verb::Status)),
    ("status-change", Inbound::Command(Verb::Status)),
    ("conversation:users:online", Inbound::Command(Verb::OnlineUsers)),
    ("message:send", Inbound::Command(Verb::Send)),
    ("send-message", Inbound::Command(Verb::Send)),
    ("message:delivered", Inbound::Command(Verb::Delivered)),
    ("message:read", Inbound::Command(Verb::Read)),
    ("conversation:read", Inbound::Command(Verb::ReadAll)),
    ("mark_all_read", Inbound::Command(Verb::ReadAll)),
    ("reaction:add", Inbound::Command(Verb::ReactionAdd)),
    ("reaction:remove", Inbound::Command(Verb::ReactionRemove)),
    ("conversation:history", Inbound::Command(Verb::History)),
];

/// Verbs Socket.IO offers no event for, and why.
#[cfg(test)]
const ABSENT: &[Verb] = &[
    // Engine.IO's heartbeat is the liveness check.
    Verb::Ping,
];

/// What an inbound event asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Inbound {
    /// Seed 000's `register`: binds the connection itself, so it is this adapter's.
    Register,
    /// A command of the shared surface.
    Command(Verb),
}

/// A successful ack: `{ success: true, … }`.
#[derive(Serialize)]
pub(super) struct Success<T: Serialize> {
    pub success: bool,
    #[serde(flatten)]
    pub body: T,
}

#[derive(Serialize)]
#[serde(untagged, rename_all_fields = "camelCase")]
pub(super) enum Reply {
    Registered {
        user_id: UserId,
    },
    Joined {
        message: String,
        conversation_id: ConversationId,
        online_users: Vec<UserId>,
        #[serde(skip_serializing_if = "Option::is_none")]
        missed: Option<Vec<Message>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        has_more: Option<bool>,
        /// Dropped once the answer is written.
        #[serde(skip)]
        live: Option<Live>,
    },
    Sent {
        message: Message,
    },
    History {
        messages: Vec<Message>,
        has_more: bool,
    },
    Left {
        conversation_id: ConversationId,
    },
    Status {
        status: Status,
    },
    Online {
        online_users: Vec<UserId>,
    },
    Done {},
}

#[derive(Serialize)]
pub(super) struct Failure<'a> {
    pub success: bool,
    pub error: ErrorBody<'a>,
}

#[derive(Serialize)]
pub(super) struct ErrorBody<'a> {
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JoinConfirmation<'a> {
    conversation_id: &'a ConversationId,
    online_users: &'a [UserId],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SendConfirmation<'a> {
    temp_id: Option<&'a str>,
    message: &'a Message,
}

impl SocketIoAdapter {
    pub(super) async fn dispatch(
        &self,
        socket: &Arc<SioSocket>,
        event: Inbound,
        payload: Value,
    ) -> Result<Reply, DomainError> {
        let conn = &socket.conn;
        let verb = match event {
            Inbound::Register => return self.register(socket, &payload).await,
            Inbound::Command(verb) => verb,
        };
        // Refused before the payload is read, as an anonymous connection may send anything.
        let who = conn
            .identity
            .get()
            .ok_or_else(|| DomainError::Unauthorized("connect with a token or register first".into()))?;
        let command = Command::parse(verb, &payload)?;
        let caller = Caller {
            local: &conn.local,
            who,
        };
        let outcome = execute(&self.ctx.domain, caller, command).await?;
        Ok(self.render(socket, outcome))
    }

    /// The ack of a command's outcome, after the namespace's confirmation event if its
    /// profile has one.
    fn render(&self, socket: &SioSocket, outcome: Outcome) -> Reply {
        match outcome {
            Outcome::Joined { conversation, joined } => {
                if let Some(name) = self.profile(socket.ns).join_confirmation {
                    let confirmation = JoinConfirmation {
                        conversation_id: &conversation,
                        online_users: &joined.online_users,
                    };
                    self.emit(socket, name, &confirmation);
                }
                let (missed, has_more) = match joined.missed {
                    Some(page) => (Some(page.messages), Some(page.has_more)),
                    None => (None, None),
                };
                Reply::Joined {
                    message: format!("Joined conversation {conversation}"),
                    conversation_id: conversation,
                    online_users: joined.online_users,
                    missed,
                    has_more,
                    live: Some(joined.live),
                }
            }
            Outcome::Left(conversation) => Reply::Left {
                conversation_id: conversation,
            },
            Outcome::Status(status) => Reply::Status { status },
            Outcome::Online(online_users) => Reply::Online { online_users },
            Outcome::Sent(sent) => {
                if let Some(name) = self.profile(socket.ns).send_confirmation {
                    let confirmation = SendConfirmation {
                        temp_id: sent.message.temp_id.as_deref(),
                        message: &sent.message,
                    };
                    self.emit(socket, name, &confirmation);
                }
                Reply::Sent { message: sent.message }
            }
            Outcome::History(page) => Reply::History {
                messages: page.messages,
                has_more: page.has_more,
            },
            // `Pong` is not reachable here (no event maps to `Verb::Ping`).
            Outcome::Done | Outcome::Pong => Reply::Done {},
        }
    }

    /// `register` (seed 000): binds an anonymous connection to a user id.
    async fn register(&self, socket: &Arc<SioSocket>, payload: &Value) -> Result<Reply, DomainError> {
        let conn = &socket.conn;
        if !self.ctx.allow_register {
            return Err(DomainError::Unauthorized(
                "register is not enabled on this server (--allow-register)".into(),
            ));
        }
        if conn.identity.get().is_some() {
            return Err(DomainError::BadRequest("this connection already has a user".into()));
        }
        let user_id = inbound::user(payload)?;
        let who = Identity::registered(user_id.clone());
        self.ctx.domain.connect(&conn.local, &who).await?;
        let _ = conn.identity.set(who);
        Ok(Reply::Registered { user_id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::{check_table, full_payload};

    #[test]
    fn every_verb_has_an_event_or_is_listed_absent() {
        let table: Vec<(&str, Verb)> = INBOUND
            .iter()
            .filter_map(|(name, event)| match event {
                Inbound::Command(verb) => Some((*name, *verb)),
                Inbound::Register => None,
            })
            .collect();
        check_table("socket.io", &table, ABSENT, &full_payload());
    }

    #[test]
    fn event_names_are_unique() {
        for (n, (name, _)) in INBOUND.iter().enumerate() {
            assert!(
                INBOUND.iter().skip(n + 1).all(|(other, _)| other != name),
                "{name} twice"
            );
        }
    }
}
