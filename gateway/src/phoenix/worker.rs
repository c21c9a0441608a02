//! A socket's worker: runs its channel frames one after the other through the domain, and
//! writes the replies. Payloads are read by [`crate::inbound`], the same code the Socket.IO
//! adapter uses, after renaming seed 004's snake_case keys.

use super::channels::{Channels, Route, TopicKind};
use super::render::{self, PhxMessage};
use super::{PhoenixAdapter, SocketHandle, conversation_topic};
use crate::auth::Identity;
use crate::domain::{DomainError, Live};
use crate::inbound;
use crate::metrics::METRICS;
use engineio::{DisconnectReason, Packet};
use futures::FutureExt;
use serde::Serialize;
use serde_json::{Map, Value};
use shared::event::ReceiptStatus;
use shared::phoenix::{self as codec, Frame};
use shared::{ConversationId, Status, UserId};
use std::panic::AssertUnwindSafe;
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
        out.insert("conversationId".into(), Value::String(c.0.clone()));
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

    /// Runs one input to its end. A panic is caught here so that the socket still leaves the
    /// hub and presence: the socket is closed and [`Worker::finish`] runs as usual.
    pub(super) async fn input(&mut self, input: Input) {
        let ran = AssertUnwindSafe(async {
            match input {
                Input::Frame(frame, allowed) => self.frame(frame, allowed).await,
                Input::Removed(conversation) => self.removed(conversation).await,
            }
        })
        .catch_unwind()
        .await;
        if ran.is_err() {
            tracing::error!("socket worker panicked");
            self.handle.close(DisconnectReason::ServerClose, super::TRY_AGAIN_LATER);
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
            Route::Leave(kind) => {
                if let Some(kind) = kind {
                    self.leave(&frame.topic, &kind).instrument(span).await;
                }
                self.send(codec::reply(&frame, "ok", Empty {}));
            }
            route @ (Route::Join { .. } | Route::Push(_)) => {
                let result = if !allowed {
                    Err(DomainError::RateLimited)
                } else {
                    AssertUnwindSafe(self.command(&frame, route))
                        .catch_unwind()
                        .instrument(span.clone())
                        .await
                        .unwrap_or_else(|_| {
                            tracing::error!(parent: &span, "channel handler panicked");
                            Err(DomainError::Internal)
                        })
                };
                let joined = result.is_ok() && frame.event == "phx_join";
                self.reply(&frame, result);
                if joined {
                    self.after_join(&frame).instrument(span).await;
                }
                self.live = None;
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
                let last_seq = inbound::last_seq(&translate(payload, None))?;
                let domain = &self.adapter.domain;
                let joined = domain
                    .join(&self.handle.local, &self.who, conversation, last_seq)
                    .await?;
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
                    conversation_id: conversation.clone(),
                    online_users: joined.online_users,
                    missed,
                    has_more,
                })
                .map_err(|_| DomainError::Internal)?
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

    async fn user_event(&self, event: &str, payload: &Value) -> Result<Value, DomainError> {
        let domain = &self.adapter.domain;
        match event {
            "ping" => Ok(serde_json::json!({ "pong": true })),
            "update_presence" => {
                let status: Status = domain.set_status(&self.who, inbound::status(payload)?).await?;
                Ok(serde_json::json!({ "status": status }))
            }
            "mark_all_read" => {
                let conversations = inbound::conversations(&translate(payload, None))?;
                domain.mark_all_read(&self.who, &conversations).await?;
                Ok(serde_json::json!({}))
            }
            other => Err(DomainError::BadRequest(format!("unknown event '{other}'"))),
        }
    }

    async fn conversation_event(
        &self,
        event: &str,
        conversation: &ConversationId,
        payload: &Value,
    ) -> Result<Value, DomainError> {
        let domain = &self.adapter.domain;
        let who = &self.who;
        let request = translate(payload, Some(conversation));
        match event {
            "send_message" => {
                let sent = domain.send(who, inbound::send(&request)?).await?;
                serde_json::to_value(PhxMessage::from(&sent.message)).map_err(|_| DomainError::Internal)
            }
            "typing_start" | "typing_stop" => {
                domain.typing(who, conversation, event == "typing_start").await?;
                Ok(serde_json::json!({}))
            }
            "mark_as_read" => {
                let id = inbound::message_id(&request)?;
                domain.receipt(who, &id, ReceiptStatus::Read).await?;
                Ok(serde_json::json!({}))
            }
            "add_reaction" | "remove_reaction" => {
                let (id, reaction) = inbound::reaction(&request)?;
                domain.react(who, &id, &reaction, event == "add_reaction").await?;
                Ok(serde_json::json!({}))
            }
            other => Err(DomainError::BadRequest(format!("unknown event '{other}'"))),
        }
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
}
