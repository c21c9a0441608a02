//! The Phoenix Channels adapter (V2 JSON serializer over WebSocket, PHOENIX.md): authenticates
//! sockets at `/socket/websocket`, turns channel frames into domain commands and replies, and
//! renders the domain events this node receives for the channels each socket joined.
//!
//! The adapter is one outlet of the hub. Each socket is a plain WebSocket of the `engineio`
//! crate ([`engineio::websocket`]): one task reads, answers heartbeats at once from its
//! callback and queues the other frames in the socket's inbox; frames to the client are
//! written straight to the TCP socket (queued, bounded, only when the kernel does not take
//! them). A worker runs the queued frames one after the other (so a `typing_stop` never
//! overtakes its `typing_start`, and a slow database never delays a heartbeat), on the
//! connection runtime's inbox ([`crate::runtime`]), as a task that exists only while the
//! inbox has work.

mod channels;
mod render;
mod worker;

use crate::auth::{Identity, JwtSettings};
use crate::config::{Config, RateLimit};
use crate::domain::{Connection, Domain, Local, Outlet, RateLimiter, Written};
use crate::metrics::{METRICS, Protocol};
use crate::runtime::{self, Inbox, Reading as InboxReading};
use axum::Router;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use engineio::net::ConnInfo;
use engineio::websocket::{self, Reading, WebSocket, WsConfig, WsServer};
use engineio::{DisconnectReason, Packet};
use render::{Channel, Rendered};
use shared::event::Message as ChatMessage;
use shared::phoenix as codec;
use shared::{ConnId, ConversationId, Delivery, NodeId, Topic, UserId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tracing::Instrument;

/// Close codes that make every phoenix.js version reconnect (1000 strands 1.7–1.8.15).
const GOING_AWAY: u16 = 1001;
const SERVICE_RESTART: u16 = 1012;
const TRY_AGAIN_LATER: u16 = 1013;

/// Settings every socket shares.
struct Settings {
    jwt: JwtSettings,
    rate: RateLimit,
    node_id: NodeId,
    websocket: WsServer,
}

/// What the hub side knows of one local socket.
struct SocketHandle {
    local: Local,
    outlet: usize,
    user: UserId,
    /// The channel topics it joined, for rendering (a user channel's events go out only on it).
    joined: Mutex<Vec<String>>,
    socket: Arc<WebSocket>,
    inbox: Arc<Inbox<worker::Worker, Arc<WebSocket>>>,
}

impl InboxReading for Arc<WebSocket> {
    fn pause_reading(&self) {
        WebSocket::pause_reading(self);
    }

    fn resume_reading(&self) {
        WebSocket::resume_reading(self);
    }
}

impl SocketHandle {
    /// Writes a frame, or queues it; a socket whose queue is full is closed as a slow
    /// consumer (1013).
    fn send(&self, frame: Packet) {
        self.socket.send(frame);
    }

    /// Closes the socket with `code` after what is already queued.
    fn close(&self, reason: DisconnectReason, code: u16) {
        self.socket.close(reason, code);
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
            // Most sockets join one or two topics: room for what is joined, not for four.
            if topics.len() == topics.capacity() && topics.len() < 4 {
                topics.reserve_exact(1);
            }
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
        self.close(DisconnectReason::ServerClose, GOING_AWAY);
    }

    fn shed(&self) {
        METRICS.outbound_dropped.inc();
        self.socket
            .close_now(DisconnectReason::SlowConsumer, Some(TRY_AGAIN_LATER));
    }

    fn removed(&self, conversation: &ConversationId) {
        if !self.inbox.enqueue_forced(worker::Input::Removed(conversation.clone())) {
            // A socket too far behind must not keep a removed member in: close it.
            self.close(DisconnectReason::ServerClose, GOING_AWAY);
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
                websocket: WsServer::new(WsConfig {
                    max_payload: usize::try_from(config.socketio.max_payload).unwrap_or(usize::MAX),
                    max_queue: config.socketio.max_outbound_queue.max(1),
                    idle_timeout: Some(config.phoenix_idle_timeout),
                    // An idle socket is told to come back (a heartbeat-less client may be
                    // merely slow); a slow consumer to retry later and recover with lastSeq.
                    idle_code: GOING_AWAY,
                    slow_consumer_code: TRY_AGAIN_LATER,
                }),
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
        runtime::drain("phoenix", &sockets, window, |c| {
            if let Some(socket) = handle(c.as_ref()) {
                socket.close(DisconnectReason::Draining, SERVICE_RESTART);
            }
        })
        .await;
    }
}

/// Phoenix's renderer in the hub.
struct PhoenixOutlet;

impl Outlet for PhoenixOutlet {
    fn labels(&self) -> (Protocol, &str) {
        (Protocol::Phoenix, "/socket")
    }

    fn push(&self, delivery: &Delivery, to: &[&dyn Connection]) -> Written {
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
            return Written::default();
        };
        let audience = to.iter().filter_map(|c| handle(*c));
        let encode = |topic: &str| {
            codec::encode(None, None, topic, &event, &payload)
                .inspect_err(|e| tracing::warn!(error = %e, "frame not encoded"))
                .ok()
                .map(|frame| Packet::new(frame.as_bytes()))
        };
        if let (Channel::Conversation(c), Topic::Conversation(_)) = (&channel, &delivery.topic) {
            // The hot path: the audience is the topic's sockets, one frame serves them all.
            let Some(frame) = encode(&conversation_topic(c)) else {
                return Written::default();
            };
            let bytes = frame.frame().len();
            let mut frames = 0;
            for s in audience {
                s.send(frame.clone());
                frames += 1;
            }
            return Written::copies(frames, bytes);
        }
        let mut written = Written::default();
        // Otherwise encoded once per topic (each user's own channel differs).
        let mut frames: HashMap<String, Option<Packet>> = HashMap::new();
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
                written += Written::copies(1, frame.frame().len());
                s.send(frame);
            }
        }
        written
    }

    /// `conversation_updated` with the user's unread count on each watching `user:{id}`
    /// channel, and `new_message` too where the socket has not joined that conversation.
    fn push_watched(&self, message: &ChatMessage, to: &[(&dyn Connection, i64)]) -> Written {
        let mut written = Written::default();
        let conversation = conversation_topic(&message.conversation_id);
        for (s, unread_count) in to.iter().filter_map(|(c, n)| handle(*c).map(|h| (h, *n))) {
            let own = user_topic(&s.user);
            if !s.is_joined(&own) {
                continue;
            }
            let phx = render::PhxMessage::from(message);
            if !s.is_joined(&conversation) {
                match codec::encode(None, None, &own, "new_message", &phx) {
                    Ok(frame) => {
                        written += Written::copies(1, frame.len());
                        s.send(Packet::new(frame.as_bytes()));
                    }
                    Err(e) => tracing::warn!(error = %e, "frame not encoded"),
                }
            }
            let update = render::ConversationUpdated {
                conversation_id: &message.conversation_id,
                last_message: phx,
                unread_count,
            };
            match codec::encode(None, None, &own, "conversation_updated", &update) {
                Ok(frame) => {
                    written += Written::copies(1, frame.len());
                    s.send(Packet::new(frame.as_bytes()));
                }
                Err(e) => tracing::warn!(error = %e, "frame not encoded"),
            }
        }
        written
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
    ConnectInfo(info): ConnectInfo<ConnInfo>,
    Query(params): Query<HashMap<String, String>>,
    mut request: Request,
) -> Response {
    let (response, upgrade) = match websocket::accept(&mut request, &info, &["phoenix"]) {
        Ok(accepted) => accepted,
        Err(e) => return (e.status(), e.to_string()).into_response(),
    };
    // Only the V2 serializer is spoken; Phoenix treats a missing vsn as V1.
    if !params.get("vsn").is_some_and(|v| v.starts_with("2.")) {
        METRICS.auth_failed(Protocol::Phoenix, "bad_version");
        return forbidden("vsn is not 2.x");
    }
    let Some(token) = token(&params, request.headers()) else {
        METRICS.auth_failed(Protocol::Phoenix, "missing_token");
        return forbidden("no token");
    };
    let who = match adapter.settings.jwt.verify(&token) {
        Ok(who) => who,
        Err(e) => {
            METRICS.token_refused(Protocol::Phoenix, &e);
            return forbidden(&e.to_string());
        }
    };
    let id = adapter.next_id.fetch_add(1, Ordering::Relaxed);
    let conn = ConnId::from(format!("{}:phx:{id}", adapter.settings.node_id));
    let domain = adapter.domain.clone();
    // The opening and the closing are boxed: they need far more room than the socket's life,
    // which would otherwise be reserved in every socket's task while it lives.
    let opening = Box::pin(open(adapter, upgrade, conn, who));
    domain.spawn(async move {
        let Some(Open { handle, reading, rate }) = opening.await else {
            return;
        };
        let reason = reading.run(|text| read(&handle, &rate, text)).await;
        Box::pin(close(handle, reason)).await;
    });
    response
}

/// A socket registered with the domain, and its reading side.
struct Open {
    handle: Arc<SocketHandle>,
    reading: Reading,
    rate: RateLimiter,
}

/// The span of one socket's opening and closing (events have their own, under the worker's).
fn socket_span(conn: &ConnId, user: &UserId) -> tracing::Span {
    tracing::info_span!("phx_socket", conn = %conn, user = %user)
}

/// Takes the connection over once the 101 went out, and registers the socket with the
/// domain; `None` when the client went away or the socket could not be registered (it is
/// closed then).
async fn open(adapter: Arc<PhoenixAdapter>, upgrade: websocket::Upgrade, conn: ConnId, who: Identity) -> Option<Open> {
    let span = socket_span(&conn, &who.user_id);
    async move {
        let (socket, reading) = upgrade.open(&adapter.settings.websocket).await?;
        let handle = Arc::new(SocketHandle {
            local: adapter.domain.local(conn),
            outlet: adapter.outlet,
            user: who.user_id.clone(),
            joined: Mutex::default(),
            inbox: Arc::new(Inbox::new(socket.clone())),
            socket: socket.clone(),
        });
        adapter.domain.attach(&handle.local, handle.clone());
        if let Err(e) = adapter.domain.connect(&handle.local, &who).await {
            tracing::warn!(error = %e, "socket not registered");
            METRICS.auth_failed(Protocol::Phoenix, e.code().as_str());
            adapter.domain.detach(&handle.local).await;
            socket.close_with(DisconnectReason::ServerClose, TRY_AGAIN_LATER, "unavailable", false);
            reading.run(|_| {}).await;
            return None;
        }
        let rate = adapter.domain.rate_limiter(adapter.settings.rate, Some(&handle.user));
        handle
            .inbox
            .set_worker(worker::Worker::new(adapter, handle.clone(), who));
        Some(Open { handle, reading, rate })
    }
    .instrument(span)
    .await
}

/// After the socket closed: counts why, lets the worker finish what was queued, and takes the
/// socket out of the hub and presence.
async fn close(handle: Arc<SocketHandle>, reason: DisconnectReason) {
    let span = socket_span(&handle.local.id, &handle.user);
    async move {
        METRICS.disconnects.with_label_values(&[reason.label()]).inc();
        if let Some(worker) = handle.inbox.stop().await {
            worker.finish().await;
        }
        tracing::debug!(reason = reason.label(), "socket closed");
    }
    .instrument(span)
    .await
}

/// One text frame from the client: a heartbeat is answered at once, the rest queued for the
/// worker.
fn read(handle: &Arc<SocketHandle>, rate: &RateLimiter, text: &str) {
    let frame = match codec::decode(text) {
        Ok(frame) => frame,
        Err(e) => {
            // Without a readable ref there is nobody to reply to.
            tracing::debug!(conn = %handle.local.id, error = %e, "malformed frame ignored");
            METRICS.inbound_errors.with_label_values(&["bad_request"]).inc();
            return;
        }
    };
    if frame.is_heartbeat() {
        if let Ok(ack) = codec::reply(&frame, "ok", serde_json::json!({})) {
            handle.send(Packet::new(ack.as_bytes()));
        }
        return;
    }
    handle
        .inbox
        .enqueue(worker::Input::Frame(frame, rate.allow()), text.len());
}
