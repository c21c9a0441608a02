//! Socket.IO inbound events: the name table, and each command run through the domain.

use super::{SioSocket, SocketIoAdapter};
use crate::auth::Identity;
use crate::domain::{DomainError, Live};
use crate::inbound;
use serde::Serialize;
use serde_json::Value;
use shared::event::{Message, ReceiptStatus};
use shared::{ConversationId, Status, UserId};
use std::sync::Arc;

/// Inbound events and the command each one is (PROTOCOL.md 2.2), aliases included.
pub(super) const INBOUND: &[(&str, Command)] = &[
    ("register", Command::Register),
    ("room:join", Command::Join),
    ("conversation:join", Command::Join),
    ("join-bam", Command::Join),
    ("room:leave", Command::Leave),
    ("conversation:leave", Command::Leave),
    ("leave-bam", Command::Leave),
    ("typing:start", Command::TypingStart),
    ("typing-start", Command::TypingStart),
    ("typing:stop", Command::TypingStop),
    ("typing-stop", Command::TypingStop),
    ("message:typing", Command::Typing),
    ("presence:update", Command::Status),
    ("status-change", Command::Status),
    ("conversation:users:online", Command::OnlineUsers),
    ("message:send", Command::Send),
    ("send-message", Command::Send),
    ("message:delivered", Command::Delivered),
    ("message:read", Command::Read),
    ("conversation:read", Command::ReadAll),
    ("mark_all_read", Command::ReadAll),
    ("reaction:add", Command::ReactionAdd),
    ("reaction:remove", Command::ReactionRemove),
    ("conversation:history", Command::History),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Command {
    Register,
    Join,
    Leave,
    TypingStart,
    TypingStop,
    Typing,
    Status,
    OnlineUsers,
    Send,
    Delivered,
    Read,
    ReadAll,
    ReactionAdd,
    ReactionRemove,
    History,
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
        command: Command,
        payload: Value,
    ) -> Result<Reply, DomainError> {
        let conn = &socket.conn;
        let who = match command {
            Command::Register => return self.register(socket, &payload).await,
            _ => conn
                .identity
                .get()
                .ok_or_else(|| DomainError::Unauthorized("connect with a token or register first".into()))?,
        };
        let domain = &self.ctx.domain;
        match command {
            Command::Register => Err(DomainError::Internal),
            Command::Join => {
                let conversation = inbound::conversation(&payload)?;
                let last_seq = inbound::last_seq(&payload)?;
                let joined = domain.join(&conn.local, who, &conversation, last_seq).await?;
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
                Ok(Reply::Joined {
                    message: format!("Joined conversation {conversation}"),
                    conversation_id: conversation,
                    online_users: joined.online_users,
                    missed,
                    has_more,
                    live: Some(joined.live),
                })
            }
            Command::Leave => {
                let conversation = inbound::conversation(&payload)?;
                domain.leave(&conn.local, who, &conversation).await?;
                Ok(Reply::Left {
                    conversation_id: conversation,
                })
            }
            Command::TypingStart | Command::TypingStop => {
                let conversation = inbound::conversation(&payload)?;
                domain
                    .typing(who, &conversation, command == Command::TypingStart)
                    .await?;
                Ok(Reply::Done {})
            }
            Command::Typing => {
                let (conversation, is_typing) = inbound::typing(&payload)?;
                domain.typing(who, &conversation, is_typing).await?;
                Ok(Reply::Done {})
            }
            Command::Status => {
                let status = domain.set_status(who, inbound::status(&payload)?).await?;
                Ok(Reply::Status { status })
            }
            Command::OnlineUsers => {
                let conversation = inbound::conversation(&payload)?;
                let online_users = domain.conversation_online(Some(who), &conversation).await?;
                Ok(Reply::Online { online_users })
            }
            Command::Send => {
                let sent = domain.send(who, inbound::send(&payload)?).await?;
                if let Some(name) = self.profile(socket.ns).send_confirmation {
                    let confirmation = SendConfirmation {
                        temp_id: sent.message.temp_id.as_deref(),
                        message: &sent.message,
                    };
                    self.emit(socket, name, &confirmation);
                }
                Ok(Reply::Sent { message: sent.message })
            }
            Command::Delivered | Command::Read => {
                let status = match command {
                    Command::Read => ReceiptStatus::Read,
                    _ => ReceiptStatus::Delivered,
                };
                domain.receipt(who, &inbound::message_id(&payload)?, status).await?;
                Ok(Reply::Done {})
            }
            Command::ReadAll => {
                domain.mark_all_read(who, &inbound::conversations(&payload)?).await?;
                Ok(Reply::Done {})
            }
            Command::ReactionAdd | Command::ReactionRemove => {
                let (message_id, reaction) = inbound::reaction(&payload)?;
                domain
                    .react(who, &message_id, &reaction, command == Command::ReactionAdd)
                    .await?;
                Ok(Reply::Done {})
            }
            Command::History => {
                let page = domain.history(Some(who), inbound::history(&payload)?).await?;
                Ok(Reply::History {
                    messages: page.messages,
                    has_more: page.has_more,
                })
            }
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
