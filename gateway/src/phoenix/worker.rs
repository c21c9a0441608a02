//! A socket's worker: runs its channel frames one after the other through the domain, and
//! writes the replies. Payloads are read by [`crate::inbound`], the same code the Socket.IO
//! adapter uses, after renaming seed 004's snake_case keys.

use super::channels::{Channels, Route, TopicKind};
use super::render::{self, PhxMessage};
use super::{PhoenixAdapter, SocketHandle, conversation_topic};
use crate::auth::Identity;
use crate::commands::{Caller, Command, Outcome, Verb, execute};
use crate::domain::{DomainError, Live};
use crate::inbound;
use crate::metrics::{METRICS, Protocol};
use crate::runtime;
use engineio::{DisconnectReason, Packet};
use serde::Serialize;
use serde_json::{Map, Value};
use shared::phoenix::{self as codec, Frame};
use shared::{ConversationId, UserId};
use std::sync::Arc;
use tracing::Instrument;

/// What a socket's worker is asked to do.
#[derive(Debug)]
pub enum Input {
    /// A client frame, and whether the rate limit let it through.
    Frame(Frame, bool),
    /// The socket's user was removed from the conversation.
    Removed(ConversationId),
}

/// Events of a `user:{id}` channel and what each asks (seed 004).
const USER_EVENTS: &[(&str, Verb)] = &[
    ("ping", Verb::Ping),
    ("update_presence", Verb::Status),
    ("mark_all_read", Verb::ReadAll),
];

/// Events of a `conversation:{id}` channel and what each asks: the topic names the
/// conversation.
const CONVERSATION_EVENTS: &[(&str, Verb)] = &[
    ("send_message", Verb::Send),
    ("typing_start", Verb::TypingStart),
    ("typing_stop", Verb::TypingStop),
    ("mark_as_read", Verb::Read),
    ("add_reaction", Verb::ReactionAdd),
    ("remove_reaction", Verb::ReactionRemove),
];

/// Verbs no channel event offers, and why.
#[cfg(test)]
const ABSENT: &[Verb] = &[
    // `phx_join` and `phx_leave` of a conversation topic, routed by [`Channels`].
    Verb::Join,
    Verb::Leave,
    // Seed 004 has typing_start and typing_stop only.
    Verb::Typing,
    // Phoenix.Presence (`presence_state`, `presence_diff`) tells who is online.
    Verb::OnlineUsers,
    // Seed 004 has read receipts only.
    Verb::Delivered,
    // History is paged over REST.
    Verb::History,
];

/// The verb of `event` in `table`.
fn lookup(table: &[(&str, Verb)], event: &str) -> Result<Verb, DomainError> {
    table
        .iter()
        .find(|(name, _)| *name == event)
        .map(|(_, verb)| *verb)
        .ok_or_else(|| DomainError::BadRequest(format!("unknown event '{event}'")))
}

/// Seed 004's payload keys and the names [`inbound`] reads.
const RENAMES: &[(&str, &str)] = &[
    ("message_type", "type"),
    ("client_random", "clientRandom"),
    ("message_id", "messageId"),
    ("conversation_ids", "conversationIds"),
    ("conversation_id", "conversationId"),
    ("last_seq", "lastSeq"),
];

/// The payload with its keys renamed for [`inbound`], and the conversation of the topic set.
fn translate(payload: &Value, conversation: Option<&ConversationId>) -> Value {
    let mut out = Map::new();
    if let Some(map) = payload.as_object() {
        for (k, v) in map {
            let key = RENAMES
                .iter()
                .find(|(from, _)| from == k)
                .map_or(k.as_str(), |(_, to)| to);
            out.insert(key.to_owned(), v.clone());
        }
    }
    if let Some(c) = conversation {
        out.insert("conversationId".into(), Value::String(c.0.to_string()));
    }
    Value::Object(out)
}

#[derive(Serialize)]
struct ErrorResponse {
    reason: String,
    code: &'static str,
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct JoinReply {
    conversation_id: ConversationId,
    online_users: Vec<UserId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    missed: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    has_more: Option<bool>,
}

impl runtime::Worker for Worker {
    type Input = Input;

    async fn input(&mut self, input: Input) {
        match input {
            Input::Frame(frame, allowed) => self.frame(frame, allowed).await,
            Input::Removed(conversation) => self.removed(conversation).await,
        }
    }

    fn panicked(&self) {
        self.handle.close(DisconnectReason::ServerClose, super::TRY_AGAIN_LATER);
    }

    fn domain(&self) -> &Arc<crate::domain::Domain> {
        &self.adapter.domain
    }

    fn span(&self) -> tracing::Span {
        tracing::info_span!("phx_socket", conn = %self.handle.local.id, user = %self.handle.user)
    }
}

/// One socket's sequential command runner.
pub struct Worker {
    adapter: Arc<PhoenixAdapter>,
    handle: Arc<SocketHandle>,
    who: Identity,
    channels: Channels,
    /// Conversations whose messages the `user:{id}` channel hears of, while it is joined.
    watched: Vec<ConversationId>,
    /// A conversation join's hold on live events, released once its reply is written.
    live: Option<Live>,
}

impl Worker {
    pub(super) fn new(adapter: Arc<PhoenixAdapter>, handle: Arc<SocketHandle>, who: Identity) -> Self {
        Self {
            adapter,
            handle,
            who,
            channels: Channels::default(),
            watched: Vec::new(),
            live: None,
        }
    }

    /// Takes the closed socket out of the hub and presence.
    pub(super) async fn finish(self) {
        self.adapter.domain.disconnect(&self.handle.local).await;
    }

    fn send(&self, frame: Result<String, serde_json::Error>) {
        match frame {
            Ok(frame) => self.handle.send(Packet::new(frame.as_bytes())),
            Err(e) => tracing::warn!(error = %e, "frame not encoded"),
        }
    }

    fn reply(&self, to: &Frame, result: Result<Value, DomainError>) {
        match result {
            Ok(response) => self.send(codec::reply(to, "ok", response)),
            Err(e) => {
                METRICS.inbound_errors.with_label_values(&[e.code().as_str()]).inc();
                let response = ErrorResponse {
                    reason: e.to_string(),
                    code: e.code().as_str(),
                };
                self.send(codec::reply(to, "error", response));
            }
        }
    }

    /// An error reply with a bare reason, as Phoenix sends for protocol-level refusals.
    fn refuse(&self, to: &Frame, join_ref: Option<&str>, reason: &str) {
        let frame = codec::encode(
            join_ref,
            to.reference.as_deref(),
            &to.topic,
            "phx_reply",
            &codec::ReplyBody {
                status: "error",
                response: serde_json::json!({ "reason": reason }),
            },
        );
        self.send(frame);
    }

    async fn frame(&mut self, frame: Frame, allowed: bool) {
        let span = tracing::info_span!("phx_event", topic = %frame.topic, event = %frame.event);
        match self.channels.route(&frame) {
            Route::Heartbeat => self.send(codec::reply(&frame, "ok", Empty {})),
            Route::Stale => tracing::debug!(parent: &span, "frame of an earlier join dropped"),
            Route::Unmatched => self.refuse(&frame, None, "unmatched topic"),
            Route::TooManyChannels => self.refuse(&frame, frame.join_ref.as_deref(), "too many channels joined"),
            Route::Refused(e) => self.reply(&frame, Err(e)),
            Route::Leave(kind) => {
                if let Some(kind) = kind {
                    self.leave(&frame.topic, &kind).instrument(span).await;
                }
                self.send(codec::reply(&frame, "ok", Empty {}));
            }
            route @ (Route::Join { .. } | Route::Push(_)) => {
                let started = std::time::Instant::now();
                let verb = match &route {
                    Route::Push(TopicKind::User(_)) => lookup(USER_EVENTS, &frame.event).ok(),
                    Route::Push(TopicKind::Conversation(_)) => lookup(CONVERSATION_EVENTS, &frame.event).ok(),
                    _ => Some(Verb::Join),
                };
                let result = if !allowed {
                    Err(DomainError::RateLimited)
                } else {
                    runtime::guarded(self.command(&frame, route), &span).await
                };
                let joined = result.is_ok() && frame.event == "phx_join";
                self.reply(&frame, result);
                if joined {
                    self.after_join(&frame).instrument(span).await;
                }
                self.live = None;
                runtime::record(Protocol::Phoenix, verb, started);
            }
        }
    }

    async fn command(&mut self, frame: &Frame, route: Route) -> Result<Value, DomainError> {
        let payload: Value = serde_json::from_str(frame.payload.get())
            .map_err(|e| DomainError::BadRequest(format!("unreadable payload: {e}")))?;
        match route {
            Route::Join { kind, replaces } => self.join(frame, kind, replaces, &payload).await,
            Route::Push(TopicKind::User(_)) => self.user_event(&frame.event, &payload).await,
            Route::Push(TopicKind::Conversation(c)) => self.conversation_event(&frame.event, &c, &payload).await,
            _ => Err(DomainError::Internal),
        }
    }

    async fn join(
        &mut self,
        frame: &Frame,
        kind: TopicKind,
        replaces: Option<String>,
        payload: &Value,
    ) -> Result<Value, DomainError> {
        if let Some(old) = replaces {
            // Phoenix closes the earlier channel of the topic before the new join, which starts
            // afresh (and may be refused).
            self.leave(&frame.topic, &kind).await;
            self.send(codec::encode(
                Some(&old),
                Some(&old),
                &frame.topic,
                "phx_close",
                &Empty {},
            ));
        }
        let response = match &kind {
            TopicKind::User(user) => {
                let local = &self.handle.local;
                self.watched = self.adapter.domain.watch(local, &self.who, user).await?;
                serde_json::json!({})
            }
            TopicKind::Conversation(conversation) => {
                // The topic's conversation as it is, as the channel is filed under it.
                let command = Command::Join {
                    conversation: conversation.clone(),
                    last_seq: inbound::last_seq(&translate(payload, None))?,
                };
                let outcome = execute(&self.adapter.domain, self.caller(), command).await?;
                self.render(outcome)?
            }
        };
        let join_ref = frame.join_ref.as_deref().unwrap_or_default();
        self.channels.joined(&frame.topic, join_ref);
        self.handle.set_joined(&frame.topic, true);
        Ok(response)
    }

    /// After the join's ok: the full presence list, to this channel only (the client
    /// buffers diffs until it has one for its current join).
    async fn after_join(&self, frame: &Frame) {
        let Some(TopicKind::Conversation(conversation)) = TopicKind::parse(&frame.topic) else {
            return;
        };
        let roster = match self.adapter.domain.roster(Some(&self.who), &conversation).await {
            Ok(roster) => roster,
            Err(e) => {
                tracing::warn!(error = %e, "presence_state not sent");
                return;
            }
        };
        self.send(codec::encode(
            frame.join_ref.as_deref(),
            None,
            &frame.topic,
            "presence_state",
            &render::presence_map(&roster),
        ));
    }

    async fn leave(&mut self, topic: &str, kind: &TopicKind) {
        self.channels.left(topic);
        self.handle.set_joined(topic, false);
        match kind {
            TopicKind::User(_) => self.unwatch_all().await,
            TopicKind::Conversation(conversation) => {
                if let Err(e) = self
                    .adapter
                    .domain
                    .leave(&self.handle.local, &self.who, conversation)
                    .await
                {
                    tracing::warn!(error = %e, "leave not recorded in presence");
                }
            }
        }
    }

    async fn unwatch_all(&mut self) {
        let watched = std::mem::take(&mut self.watched);
        self.adapter.domain.unwatch(&self.handle.local, &watched).await;
    }

    /// A removed member's channel is closed: `phx_close`, which the client does not rejoin.
    async fn removed(&mut self, conversation: ConversationId) {
        if let Some(n) = self.watched.iter().position(|c| *c == conversation) {
            self.watched.swap_remove(n);
            let local = &self.handle.local;
            self.adapter
                .domain
                .unwatch(local, std::slice::from_ref(&conversation))
                .await;
        }
        let topic = conversation_topic(&conversation);
        let Some(join_ref) = self.channels.join_ref(&topic).map(str::to_owned) else {
            return;
        };
        self.leave(&topic, &TopicKind::Conversation(conversation)).await;
        self.send(codec::encode(
            Some(&join_ref),
            Some(&join_ref),
            &topic,
            "phx_close",
            &Empty {},
        ));
    }

    fn caller(&self) -> Caller<'_> {
        Caller {
            local: &self.handle.local,
            who: &self.who,
        }
    }

    async fn user_event(&mut self, event: &str, payload: &Value) -> Result<Value, DomainError> {
        let verb = lookup(USER_EVENTS, event)?;
        // A bare status (`"away"`) is accepted, which renaming the keys of an object would lose.
        let request = match verb {
            Verb::Status => payload.clone(),
            _ => translate(payload, None),
        };
        let command = Command::parse(verb, &request)?;
        let outcome = execute(&self.adapter.domain, self.caller(), command).await?;
        self.render(outcome)
    }

    async fn conversation_event(
        &mut self,
        event: &str,
        conversation: &ConversationId,
        payload: &Value,
    ) -> Result<Value, DomainError> {
        let verb = lookup(CONVERSATION_EVENTS, event)?;
        let command = match verb {
            // Typing reads nothing but the topic, whose id is taken as it is (as the join
            // took it), not trimmed as a payload's id is.
            Verb::TypingStart | Verb::TypingStop => Command::Typing {
                conversation: conversation.clone(),
                is_typing: verb == Verb::TypingStart,
            },
            _ => Command::parse(verb, &translate(payload, Some(conversation)))?,
        };
        let outcome = execute(&self.adapter.domain, self.caller(), command).await?;
        self.render(outcome)
    }

    /// A command's outcome as the `ok` reply's response; a join's hold on live events is kept
    /// until the reply is written.
    fn render(&mut self, outcome: Outcome) -> Result<Value, DomainError> {
        let value = match outcome {
            Outcome::Joined { conversation, joined } => {
                self.live = Some(joined.live);
                let (missed, has_more) = match joined.missed {
                    Some(page) => (
                        Some(
                            page.messages
                                .iter()
                                .map(|m| serde_json::to_value(PhxMessage::from(m)))
                                .collect::<Result<Vec<_>, _>>()
                                .map_err(|_| DomainError::Internal)?,
                        ),
                        Some(page.has_more),
                    ),
                    None => (None, None),
                };
                serde_json::to_value(JoinReply {
                    conversation_id: conversation,
                    online_users: joined.online_users,
                    missed,
                    has_more,
                })
            }
            Outcome::Sent(sent) => serde_json::to_value(PhxMessage::from(&sent.message)),
            Outcome::Status(status) => Ok(serde_json::json!({ "status": status })),
            Outcome::Pong => Ok(serde_json::json!({ "pong": true })),
            Outcome::Done => Ok(serde_json::json!({})),
            // Not offered by any channel event (see `ABSENT`).
            Outcome::Left(_) | Outcome::Online(_) | Outcome::History(_) => return Err(DomainError::Internal),
        };
        value.map_err(|_| DomainError::Internal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn seed_004_payloads_read_as_the_shared_shapes() -> Result<(), DomainError> {
        let conversation = ConversationId::from("42");
        let send = json!({"content": "hi", "message_type": "text", "metadata": {}, "client_random": 123456789});
        let request = inbound::send(&translate(&send, Some(&conversation)))?;
        assert_eq!(request.conversation_id, conversation);
        assert_eq!(request.kind.as_deref(), Some("text"));
        assert_eq!(request.client_ref.as_deref(), Some("123456789"));
        let reaction = inbound::reaction(&translate(
            &json!({"message_id": "m1", "reaction": "👍"}),
            Some(&conversation),
        ))?;
        assert_eq!(reaction, ("m1".to_owned(), "👍".to_owned()));
        let read = inbound::conversations(&translate(&json!({"conversation_ids": ["a", 2]}), None))?;
        assert_eq!(read, vec![ConversationId::from("a"), ConversationId::from("2")]);
        assert!(inbound::send(&translate(&json!({"content": 5}), Some(&conversation))).is_err());
        Ok(())
    }

    #[test]
    fn every_verb_has_a_channel_event_or_is_listed_absent() {
        let table: Vec<(&str, Verb)> = USER_EVENTS.iter().chain(CONVERSATION_EVENTS).copied().collect();
        let seed_004 = json!({
            "conversation_id": "c1", "last_seq": 3, "status": "away", "content": "hi",
            "message_type": "text", "message_id": "m1", "reaction": "+1",
        });
        let payload = translate(&seed_004, Some(&ConversationId::from("c1")));
        crate::commands::check_table("phoenix", &table, ABSENT, &payload);
    }
}
