//! The one command surface both protocols offer: a [`Verb`] (what a protocol's name table
//! picks), read with its payload into a typed [`Command`], run by [`execute`] into an
//! [`Outcome`] that each adapter renders in its own vocabulary.
//!
//! Adding an event: a verb here, its arm in [`Command::parse`] (and [`Command::verbs`], which
//! does not compile until a new variant names its verbs), its arm in [`execute`], then each
//! protocol's name table, or its list of intentionally absent verbs — a test fails until one
//! of the two names it.

use crate::auth::Identity;
use crate::domain::{Domain, DomainError, HistoryRequest, Joined, Local, SendRequest, Sent};
use crate::inbound;
use crate::store::HistoryPage;
use serde_json::Value;
use shared::event::ReceiptStatus;
use shared::{ConversationId, Status, UserId};

/// Defines [`Verb`] and its complete list together, so that the list cannot miss one.
macro_rules! verbs {
    ($($(#[doc = $doc:literal])* $verb:ident,)*) => {
        /// What a client asks for, before its payload is read: what the protocols' name tables
        /// map their event names to.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Verb {
            $($(#[doc = $doc])* $verb,)*
        }

        impl Verb {
            /// Every verb.
            pub const ALL: &[Verb] = &[$(Verb::$verb,)*];
        }
    };
}

verbs! {
    /// Join a conversation, with an optional `lastSeq`.
    Join,
    /// Leave a conversation.
    Leave,
    /// Typing started (the payload names only the conversation).
    TypingStart,
    /// Typing stopped (the payload names only the conversation).
    TypingStop,
    /// Typing started or stopped, as the payload's `isTyping` says.
    Typing,
    /// Set the caller's status.
    Status,
    /// Users online in a conversation.
    OnlineUsers,
    /// Send a message.
    Send,
    /// A message reached a device.
    Delivered,
    /// A message was read.
    Read,
    /// Everything in some conversations was read.
    ReadAll,
    /// Add a reaction.
    ReactionAdd,
    /// Remove a reaction.
    ReactionRemove,
    /// A page of history.
    History,
    /// A liveness check answered without the domain.
    Ping,
}

/// A client's request, read and typed.
#[derive(Debug, Clone)]
pub enum Command {
    /// Join a conversation; with `last_seq`, also answer the messages stored after it.
    Join {
        /// Which.
        conversation: ConversationId,
        /// The highest seq the client holds.
        last_seq: Option<i64>,
    },
    /// Leave a conversation.
    Leave(ConversationId),
    /// Show or stop showing the caller typing.
    Typing {
        /// Where.
        conversation: ConversationId,
        /// Started (true) or stopped.
        is_typing: bool,
    },
    /// Set the caller's status.
    Status(Status),
    /// Users online in a conversation.
    OnlineUsers(ConversationId),
    /// Send a message.
    Send(SendRequest),
    /// A delivery or read receipt for one message.
    Receipt {
        /// Which message.
        message_id: String,
        /// Delivered or read.
        status: ReceiptStatus,
    },
    /// Mark everything in these conversations read.
    ReadAll(Vec<ConversationId>),
    /// Add or remove a reaction.
    React {
        /// Which message.
        message_id: String,
        /// The reaction.
        reaction: String,
        /// Added (true) or removed.
        add: bool,
    },
    /// A page of history.
    History(HistoryRequest),
    /// A liveness check.
    Ping,
}

impl Command {
    /// Reads `verb`'s payload, in the camelCase shapes of [`inbound`] (a protocol with other
    /// keys renames them first).
    pub fn parse(verb: Verb, payload: &Value) -> Result<Self, DomainError> {
        Ok(match verb {
            Verb::Join => Command::Join {
                conversation: inbound::conversation(payload)?,
                last_seq: inbound::last_seq(payload)?,
            },
            Verb::Leave => Command::Leave(inbound::conversation(payload)?),
            Verb::TypingStart | Verb::TypingStop => Command::Typing {
                conversation: inbound::conversation(payload)?,
                is_typing: verb == Verb::TypingStart,
            },
            Verb::Typing => {
                let (conversation, is_typing) = inbound::typing(payload)?;
                Command::Typing {
                    conversation,
                    is_typing,
                }
            }
            Verb::Status => Command::Status(inbound::status(payload)?),
            Verb::OnlineUsers => Command::OnlineUsers(inbound::conversation(payload)?),
            Verb::Send => Command::Send(inbound::send(payload)?),
            Verb::Delivered | Verb::Read => Command::Receipt {
                message_id: inbound::message_id(payload)?,
                status: if verb == Verb::Read {
                    ReceiptStatus::Read
                } else {
                    ReceiptStatus::Delivered
                },
            },
            Verb::ReadAll => Command::ReadAll(inbound::conversations(payload)?),
            Verb::ReactionAdd | Verb::ReactionRemove => {
                let (message_id, reaction) = inbound::reaction(payload)?;
                Command::React {
                    message_id,
                    reaction,
                    add: verb == Verb::ReactionAdd,
                }
            }
            Verb::History => Command::History(inbound::history(payload)?),
            Verb::Ping => Command::Ping,
        })
    }

    /// The verbs that read into this command. Exhaustive on purpose: a new command does not
    /// compile until it names them, and the tests check each against [`Command::parse`].
    pub fn verbs(&self) -> &'static [Verb] {
        match self {
            Command::Join { .. } => &[Verb::Join],
            Command::Leave(_) => &[Verb::Leave],
            Command::Typing { .. } => &[Verb::TypingStart, Verb::TypingStop, Verb::Typing],
            Command::Status(_) => &[Verb::Status],
            Command::OnlineUsers(_) => &[Verb::OnlineUsers],
            Command::Send(_) => &[Verb::Send],
            Command::Receipt { .. } => &[Verb::Delivered, Verb::Read],
            Command::ReadAll(_) => &[Verb::ReadAll],
            Command::React { .. } => &[Verb::ReactionAdd, Verb::ReactionRemove],
            Command::History(_) => &[Verb::History],
            Command::Ping => &[Verb::Ping],
        }
    }
}

/// Who runs a command: an identified connection.
#[derive(Clone, Copy)]
pub struct Caller<'a> {
    /// The connection, in the hub.
    pub local: &'a Local,
    /// Its user.
    pub who: &'a Identity,
}

/// What a command answers, for the adapter to render.
pub enum Outcome {
    /// Joined; holds the socket's live events until dropped (see [`Joined::live`]), so the
    /// adapter drops it after writing its answer.
    Joined {
        /// Which conversation.
        conversation: ConversationId,
        /// The join's answer.
        joined: Joined,
    },
    /// Left.
    Left(ConversationId),
    /// The status now in force.
    Status(Status),
    /// Users online.
    Online(Vec<UserId>),
    /// The stored message.
    Sent(Sent),
    /// A page of history.
    History(HistoryPage),
    /// The answer to a ping.
    Pong,
    /// Done, nothing to answer but success.
    Done,
}

/// Runs one command through the domain.
pub async fn execute(domain: &Domain, caller: Caller<'_>, command: Command) -> Result<Outcome, DomainError> {
    let Caller { local, who } = caller;
    Ok(match command {
        Command::Join { conversation, last_seq } => {
            let joined = domain.join(local, who, &conversation, last_seq).await?;
            Outcome::Joined { conversation, joined }
        }
        Command::Leave(conversation) => {
            domain.leave(local, who, &conversation).await?;
            Outcome::Left(conversation)
        }
        Command::Typing {
            conversation,
            is_typing,
        } => {
            domain.typing(who, &conversation, is_typing).await?;
            Outcome::Done
        }
        Command::Status(status) => Outcome::Status(domain.set_status(who, status).await?),
        Command::OnlineUsers(conversation) => {
            Outcome::Online(domain.conversation_online(Some(who), &conversation).await?)
        }
        Command::Send(request) => Outcome::Sent(domain.send(who, request).await?),
        Command::Receipt { message_id, status } => {
            domain.receipt(who, &message_id, status).await?;
            Outcome::Done
        }
        Command::ReadAll(conversations) => {
            domain.mark_all_read(who, &conversations).await?;
            Outcome::Done
        }
        Command::React {
            message_id,
            reaction,
            add,
        } => {
            domain.react(who, &message_id, &reaction, add).await?;
            Outcome::Done
        }
        Command::History(request) => Outcome::History(domain.history(Some(who), request).await?),
        Command::Ping => Outcome::Pong,
    })
}

/// Checks a protocol's name table against [`Verb::ALL`]: every verb is offered by a name or
/// listed as intentionally absent, never both, and every name reads a full payload.
#[cfg(test)]
pub(crate) fn check_table(protocol: &str, table: &[(&str, Verb)], absent: &[Verb], payload: &Value) {
    for verb in Verb::ALL {
        let offered = table.iter().any(|(_, v)| v == verb);
        let excused = absent.contains(verb);
        assert!(
            offered != excused,
            "{protocol}: {verb:?} must be in the name table or in the absent list, not both nor neither"
        );
    }
    for (name, verb) in table {
        match Command::parse(*verb, payload) {
            Ok(command) => assert!(command.verbs().contains(verb), "{protocol}: {name} read as {command:?}"),
            Err(e) => panic!("{protocol}: {name} does not read a full payload: {e}"),
        }
    }
}

/// A payload every verb reads, in the camelCase shapes.
#[cfg(test)]
pub(crate) fn full_payload() -> Value {
    serde_json::json!({
        "conversationId": "c1", "lastSeq": 3, "isTyping": true, "status": "away",
        "content": "hi", "messageId": "m1", "reaction": "+1", "limit": 10,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_verb_reads_into_a_command_that_names_it() {
        for verb in Verb::ALL {
            match Command::parse(*verb, &full_payload()) {
                Ok(command) => assert!(command.verbs().contains(verb), "{verb:?} read as {command:?}"),
                Err(e) => panic!("{verb:?}: {e}"),
            }
        }
    }

    #[test]
    fn a_table_missing_a_verb_fails_the_check() {
        let offered = Verb::ALL.iter().skip(1).map(|v| ("x", *v)).collect::<Vec<_>>();
        let missing = std::panic::catch_unwind(|| check_table("test", &offered, &[], &full_payload()));
        assert!(missing.is_err());
        let all = Verb::ALL.iter().map(|v| ("x", *v)).collect::<Vec<_>>();
        check_table("test", &all, &[], &full_payload());
    }
}
