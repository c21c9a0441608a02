//! The Phoenix Channels adapter (V2 JSON serializer over WebSocket, PHOENIX.md): authenticates
//! sockets at `/socket/websocket`, turns channel frames into domain commands and replies, and
//! renders the domain events this node receives for the channels each socket joined.
//!
//! The adapter is one outlet of the hub. Each socket runs three tasks: a reader that answers heartbeats at once and queues the
//! other frames, a worker that runs those frames one after the other (so a `typing_stop` never
//! overtakes its `typing_start`, and a slow database never delays a heartbeat), and a writer
//! that drains the socket's bounded outbound queue.

mod channels;
mod render;
mod worker;

use crate::auth::{Identity, JwtSettings};
use crate::config::{Config, RateLimit};
use crate::domain::{Connection, Domain, Local, Outlet, RateLimiter};
use crate::metrics::METRICS;
use axum::Router;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use futures::{SinkExt, StreamExt};
use render::{Channel, Rendered};
use shared::event::Message as ChatMessage;
use shared::phoenix as codec;
use shared::{ConnId, ConversationId, Delivery, NodeId, Topic, UserId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How many batches a drain closes sockets in.
const DRAIN_BATCHES: usize = 10;

/// Frames a socket may have waiting for its worker; more makes the reader wait.
const INBOX: usize = 64;

/// Close codes that make every phoenix.js version reconnect (1000 strands 1.7–1.8.15).
const GOING_AWAY: u16 = 1001;
const SERVICE_RESTART: u16 = 1012;
const TRY_AGAIN_LATER: u16 = 1013;

/// Settings every socket shares.
struct Settings {
    jwt: JwtSettings,
    rate: RateLimit,
    node_id: NodeId,
    max_payload: usize,
    outbound_queue: usize,
    idle_timeout: Duration,
}

/// What the hub side knows of one local socket.
struct SocketHandle {
    local: Local,
    outlet: usize,
    user: UserId,
    /// The channel topics it joined, for rendering (a user channel's events go out only on it).
    joined: Mutex<Vec<String>>,
    out: mpsc::Sender<Utf8Bytes>,
    inbox: mpsc::Sender<worker::Input>,
    /// Closes the socket; the close code is in `close_code`.
    kill: CancellationToken,
    close_code: AtomicU16,
}

impl SocketHandle {
    /// Queues a frame; a socket whose queue is full is a slow consumer and is closed.
    fn send(&self, frame: Utf8Bytes) {
        match self.out.try_send(frame) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                METRICS.outbound_dropped.inc();
                if !self.kill.is_cancelled() {
                    tracing::info!(conn = %self.local.id, "closing a slow consumer");
                    METRICS.disconnects.with_label_values(&["slow_consumer"]).inc();
                    self.close(TRY_AGAIN_LATER);
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Closes the socket; with a code other than 0, the writer sends it in a close frame.
    fn close(&self, code: u16) {
        let _ = self
            .close_code
            .compare_exchange(0, code, Ordering::Relaxed, Ordering::Relaxed);
        self.kill.cancel();
    }
}

impl SocketHandle {
    fn is_joined(&self, topic: &str) -> bool {
        self.joined
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|t| t == topic)
    }

    fn set_joined(&self, topic: &str, joined: bool) {
        let mut topics = self.joined.lock().unwrap_or_else(PoisonError::into_inner);
        topics.retain(|t| t != topic);
        if joined {
            topics.push(topic.to_owned());
        }
    }
}

impl Connection for SocketHandle {
    fn outlet(&self) -> usize {
        self.outlet
    }

    fn user(&self) -> Option<&UserId> {
        Some(&self.user)
    }

    fn kick(&self) {
        self.close(GOING_AWAY);
    }

    fn shed(&self) {
        METRICS.outbound_dropped.inc();
        METRICS.disconnects.with_label_values(&["slow_consumer"]).inc();
        self.close(TRY_AGAIN_LATER);
    }

    fn removed(&self, conversation: &ConversationId) {
        if self
            .inbox
            .try_send(worker::Input::Removed(conversation.clone()))
            .is_err()
        {
            // A full inbox must not keep a removed member in: close the socket.
            self.close(GOING_AWAY);
        }
    }
}

fn handle(conn: &dyn Connection) -> Option<&SocketHandle> {
    (conn as &dyn std::any::Any).downcast_ref::<SocketHandle>()
}

fn user_topic(user: &UserId) -> String {
    format!("user:{user}")
}

fn conversation_topic(conversation: &ConversationId) -> String {
    format!("conversation:{conversation}")
}

/// The Phoenix side of a node: its route, and the sink the bus delivers to.
pub struct PhoenixAdapter {
    domain: Arc<Domain>,
    settings: Settings,
    /// Its outlet in the hub.
    outlet: usize,
    next_id: AtomicU64,
}

impl PhoenixAdapter {
    /// Builds the adapter from the node's configuration.
    pub fn build(config: &Config, domain: Arc<Domain>) -> Result<Arc<Self>, String> {
        let jwt = config.auth.jwt.clone().ok_or("no JWT settings")?;
        let outlet = domain.add_outlet(Arc::new(PhoenixOutlet));
        Ok(Arc::new(Self {
            domain,
            outlet,
            settings: Settings {
                jwt,
                rate: config.socketio.rate_limit,
                node_id: config.node_id.clone(),
                max_payload: usize::try_from(config.socketio.max_payload).unwrap_or(usize::MAX),
                outbound_queue: config.socketio.max_outbound_queue.max(1),
                idle_timeout: config.phoenix_idle_timeout,
            },
            next_id: AtomicU64::new(1),
        }))
    }

    /// The `/socket/websocket` route.
    pub fn routes(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/socket/websocket", get(upgrade))
            .with_state(self.clone())
    }

    /// Closes every socket with 1012 (service restart), in batches spread over `window`, so
    /// that clients reconnect elsewhere by themselves and not all at once.
    pub async fn drain(&self, window: Duration) {
        let sockets: Vec<Arc<dyn Connection>> = self
            .domain
            .local_connections()
            .into_iter()
            .filter(|c| c.outlet() == self.outlet)
            .collect();
        let per_batch = sockets.len().div_ceil(DRAIN_BATCHES).max(1);
        let pause = window / DRAIN_BATCHES as u32;
        tracing::info!(sockets = sockets.len(), per_batch, "closing Phoenix sockets");
        for batch in sockets.chunks(per_batch) {
            for socket in batch.iter().filter_map(|c| handle(c.as_ref())) {
                socket.close(SERVICE_RESTART);
            }
            tokio::time::sleep(pause).await;
        }
    }
}

/// Phoenix's renderer in the hub.
struct PhoenixOutlet;

impl Outlet for PhoenixOutlet {
    fn push(&self, delivery: &Delivery, to: &[&dyn Connection]) {
        let direct_on = match &delivery.topic {
            Topic::Conversation(c) => Channel::Conversation(c.clone()),
            _ => Channel::OwnUser,
        };
        let Some(Rendered {
            channel,
            event,
            payload,
        }) = render::render(&delivery.event, direct_on)
        else {
            return;
        };
        let audience = to.iter().filter_map(|c| handle(*c));
        let encode = |topic: &str| {
            codec::encode(None, None, topic, &event, &payload)
                .inspect_err(|e| tracing::warn!(error = %e, "frame not encoded"))
                .ok()
                .map(Utf8Bytes::from)
        };
        if let (Channel::Conversation(c), Topic::Conversation(_)) = (&channel, &delivery.topic) {
            // The hot path: the audience is the topic's sockets, one frame serves them all.
            if let Some(frame) = encode(&conversation_topic(c)) {
                audience.for_each(|s| s.send(frame.clone()));
            }
            return;
        }
        // Otherwise encoded once per topic (each user's own channel differs).
        let mut frames: HashMap<String, Option<Utf8Bytes>> = HashMap::new();
        for s in audience {
            let topic = match &channel {
                Channel::Conversation(c) => Some(conversation_topic(c)),
                Channel::OwnUser => Some(user_topic(&s.user)),
                Channel::ConversationOrUser(c) => [conversation_topic(c), user_topic(&s.user)]
                    .into_iter()
                    .find(|t| s.is_joined(t)),
            };
            let Some(topic) = topic.filter(|t| s.is_joined(t)) else {
                continue;
            };
            let frame = frames.entry(topic).or_insert_with_key(|topic| encode(topic)).clone();
            if let Some(frame) = frame {
                s.send(frame);
            }
        }
    }

    /// `conversation_updated` with the user's unread count on each watching `user:{id}`
    /// channel, and `new_message` too where the socket has not joined that conversation.
    fn push_watched(&self, message: &ChatMessage, to: &[(&dyn Connection, i64)]) {
        let conversation = conversation_topic(&message.conversation_id);
        for (s, unread_count) in to.iter().filter_map(|(c, n)| handle(*c).map(|h| (h, *n))) {
            let own = user_topic(&s.user);
            if !s.is_joined(&own) {
                continue;
            }
            let phx = render::PhxMessage::from(message);
            if !s.is_joined(&conversation) {
                match codec::encode(None, None, &own, "new_message", &phx) {
                    Ok(frame) => s.send(frame.into()),
                    Err(e) => tracing::warn!(error = %e, "frame not encoded"),
                }
            }
            let update = render::ConversationUpdated {
                conversation_id: &message.conversation_id,
                last_message: phx,
                unread_count,
            };
            match codec::encode(None, None, &own, "conversation_updated", &update) {
                Ok(frame) => s.send(frame.into()),
                Err(e) => tracing::warn!(error = %e, "frame not encoded"),
            }
        }
    }
}

/// The token from `?token=` or the 1.8.x `authToken` subprotocol
/// (`base64url.bearer.phx.<standard base64 without padding>`).
fn token(params: &HashMap<String, String>, headers: &HeaderMap) -> Option<String> {
    if let Some(t) = params.get("token").filter(|t| !t.is_empty()) {
        return Some(t.clone());
    }
    let encoded = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix("base64url.bearer.phx."))?;
    let engines = [
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    engines
        .iter()
        .find_map(|e| e.decode(encoded.trim_end_matches('=')).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
}

/// Phoenix refuses a socket one way only: HTTP 403 with an empty body, before the upgrade.
fn forbidden(why: &str) -> Response {
    tracing::debug!(why, "Phoenix socket refused");
    StatusCode::FORBIDDEN.into_response()
}

async fn upgrade(
    State(adapter): State<Arc<PhoenixAdapter>>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    // Only the V2 serializer is spoken; Phoenix treats a missing vsn as V1.
    if !params.get("vsn").is_some_and(|v| v.starts_with("2.")) {
        return forbidden("vsn is not 2.x");
    }
    let Some(token) = token(&params, &headers) else {
        return forbidden("no token");
    };
    let who = match adapter.settings.jwt.verify(&token) {
        Ok(who) => who,
        Err(e) => return forbidden(&e.to_string()),
    };
    ws.protocols(["phoenix"])
        .max_message_size(adapter.settings.max_payload)
        .max_frame_size(adapter.settings.max_payload)
        .on_upgrade(move |socket| run(adapter, socket, who))
}

/// One socket, from upgrade to close.
async fn run(adapter: Arc<PhoenixAdapter>, socket: WebSocket, who: Identity) {
    let id = adapter.next_id.fetch_add(1, Ordering::Relaxed);
    let conn = ConnId(format!("{}:phx:{id}", adapter.settings.node_id));
    let span = tracing::info_span!("phx_socket", conn = %conn, user = %who.user_id);
    async move {
        let (mut sink, stream) = socket.split();
        let (out, outbox) = mpsc::channel(adapter.settings.outbound_queue);
        let (inbox_tx, inbox) = mpsc::channel(INBOX);
        let handle = Arc::new(SocketHandle {
            local: adapter.domain.local(conn),
            outlet: adapter.outlet,
            user: who.user_id.clone(),
            joined: Mutex::default(),
            out,
            inbox: inbox_tx,
            kill: CancellationToken::new(),
            close_code: AtomicU16::new(0),
        });
        adapter.domain.attach(&handle.local, handle.clone());
        if let Err(e) = adapter.domain.connect(&handle.local, &who).await {
            tracing::warn!(error = %e, "socket not registered");
            adapter.domain.detach(&handle.local).await;
            let close = CloseFrame {
                code: TRY_AGAIN_LATER,
                reason: Utf8Bytes::from_static("unavailable"),
            };
            let _ = sink.send(Message::Close(Some(close))).await;
            return;
        }
        METRICS.phoenix_connections.inc();
        let writer = tokio::spawn(write(sink, outbox, handle.clone()).in_current_span());
        let worker = worker::Worker::new(adapter.clone(), handle.clone(), who);
        let worker = tokio::spawn(worker.run(inbox).in_current_span());
        let reason = read(&adapter, stream, &handle).await;
        METRICS.disconnects.with_label_values(&[reason]).inc();
        // An idle socket is told to come back (a heartbeat-less client may be merely slow).
        handle.close(if reason == "idle_timeout" { GOING_AWAY } else { 0 });
        let _ = worker.await;
        let _ = writer.await;
        METRICS.phoenix_connections.dec();
        tracing::debug!(reason, "socket closed");
    }
    .instrument(span)
    .await;
}

/// Reads frames until the socket closes, goes idle or is killed; returns why it ended.
async fn read(
    adapter: &PhoenixAdapter,
    mut stream: futures::stream::SplitStream<WebSocket>,
    handle: &SocketHandle,
) -> &'static str {
    let rate = RateLimiter::new(adapter.settings.rate);
    loop {
        let next = tokio::select! {
            () = handle.kill.cancelled() => return "server_close",
            next = tokio::time::timeout(adapter.settings.idle_timeout, stream.next()) => next,
        };
        let text = match next {
            Err(_) => return "idle_timeout",
            Ok(None | Some(Err(_))) => return "transport_close",
            Ok(Some(Ok(Message::Close(_)))) => return "client_close",
            Ok(Some(Ok(Message::Text(text)))) => text,
            Ok(Some(Ok(Message::Binary(_)))) => {
                tracing::debug!("binary frame ignored: only the JSON serializer is spoken");
                continue;
            }
            Ok(Some(Ok(_))) => continue,
        };
        let frame = match codec::decode(text.as_str()) {
            Ok(frame) => frame,
            Err(e) => {
                // Without a readable ref there is nobody to reply to.
                tracing::debug!(error = %e, "malformed frame ignored");
                METRICS.inbound_errors.with_label_values(&["bad_request"]).inc();
                continue;
            }
        };
        if frame.is_heartbeat() {
            if let Ok(ack) = codec::reply(&frame, "ok", serde_json::json!({})) {
                handle.send(ack.into());
            }
            continue;
        }
        let allowed = rate.allow();
        let queued = tokio::select! {
            () = handle.kill.cancelled() => return "server_close",
            queued = handle.inbox.send(worker::Input::Frame(frame, allowed)) => queued,
        };
        if queued.is_err() {
            return "server_close";
        }
    }
}

/// Writes queued frames until the socket is killed, then says goodbye with its close code.
async fn write(
    mut sink: futures::stream::SplitSink<WebSocket, Message>,
    mut outbox: mpsc::Receiver<Utf8Bytes>,
    handle: Arc<SocketHandle>,
) {
    loop {
        let frame = tokio::select! {
            () = handle.kill.cancelled() => break,
            frame = outbox.recv() => frame,
        };
        let Some(frame) = frame else { return };
        // A client that stops reading must not hold the socket open: the kill interrupts.
        let sent = tokio::select! {
            () = handle.kill.cancelled() => break,
            sent = sink.send(Message::Text(frame)) => sent,
        };
        if sent.is_err() {
            handle.kill.cancel();
            return;
        }
    }
    let code = match handle.close_code.load(Ordering::Relaxed) {
        0 => return,
        code => code,
    };
    let close = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(""),
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(Message::Close(Some(close)))).await;
}
