//! The Socket.IO adapter (Socket.IO v5 over Engine.IO v4, WebSocket and long-polling):
//! authenticates namespace connections, turns inbound events into domain commands and acks,
//! and renders the domain events this node receives into each namespace's vocabulary.
//!
//! Engine.IO sessions and their transports are in [`engineio`]; this module sees Socket.IO
//! packets. An event is rendered and encoded once per namespace, then handed to each
//! recipient's session, which writes it straight to the socket when nothing waits before it.

pub mod packet;
mod profile;

pub use profile::{Profile, profile};

use crate::auth::{Identity, JwtSettings};
use crate::bus::LocalSink;
use crate::config::{Config, RateLimit};
use crate::domain::{Domain, DomainError, RateLimiter};
use crate::inbound;
use crate::index::{Index, Indexed};
use crate::metrics::METRICS;
use async_trait::async_trait;
use axum::Router;
use engineio::{CloseReason, Config as EngineSettings, Engine, Handler, Session};
use futures::FutureExt;
use packet::Kind;
use serde::Serialize;
use serde_json::Value;
use shared::event::{Membership, Message, ReceiptStatus};
use shared::{ConnId, ConversationId, Delivery, Event, NodeId, Status, Topic, UserId};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;
use tokio::sync::oneshot;
use tracing::Instrument;

/// Engine.IO heartbeat: a client that stops answering is closed after interval + timeout.
/// (A consumer whose outbound queue fills is closed at once, whatever the heartbeat.)
const PING_INTERVAL: Duration = Duration::from_secs(5);
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// How many batches a drain closes client transports in.
const DRAIN_BATCHES: usize = 10;

/// The fan-out's load, measured over windows of this length: short, so that an overload is
/// answered within a few of them.
const PRESSURE_WINDOW: Duration = Duration::from_millis(20);
/// Share of a window spent fanning out above which frames are queued for each session's
/// task to write in batches, and below which they are written straight again.
const PRESSURE_HIGH: f64 = 0.7;
const PRESSURE_LOW: f64 = 0.4;

/// How busy the fan-out has been lately. Writing each frame straight to its socket is the
/// cheapest path and the fastest while the node keeps up; when it does not, frames wait in
/// the sessions' queues and each session's task writes them together (one writev for many),
/// so throughput grows with load instead of collapsing at one system call per delivery.
struct Pressure {
    state: Mutex<PressureState>,
}

struct PressureState {
    since: tokio::time::Instant,
    busy: Duration,
    batching: bool,
}

impl Pressure {
    fn new() -> Self {
        Self {
            state: Mutex::new(PressureState {
                since: tokio::time::Instant::now(),
                busy: Duration::ZERO,
                batching: false,
            }),
        }
    }

    /// Whether to batch now; closes the window when it is over.
    fn batching(&self) -> bool {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let elapsed = st.since.elapsed();
        if elapsed >= PRESSURE_WINDOW {
            let share = st.busy.as_secs_f64() / elapsed.as_secs_f64();
            let was = st.batching;
            st.batching = if was {
                share > PRESSURE_LOW
            } else {
                share > PRESSURE_HIGH
            };
            if st.batching != was {
                tracing::debug!(share, batching = st.batching, "fan-out pressure changed");
            }
            st.since = tokio::time::Instant::now();
            st.busy = Duration::ZERO;
        }
        st.batching
    }

    fn record(&self, busy: Duration) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).busy += busy;
    }
}

/// Inbound events and the command each one is (PROTOCOL.md 2.2), aliases included.
const INBOUND: &[(&str, Command)] = &[
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
enum Command {
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

/// What a socket receives: a conversation's events, a user's, or everything.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Room {
    Conversation(ConversationId),
    User(UserId),
    All,
}

/// What every handler needs.
struct Ctx {
    domain: Arc<Domain>,
    jwt: JwtSettings,
    allow_register: bool,
    rate: RateLimit,
    node_id: NodeId,
}

/// One namespace connection's state.
struct Conn {
    id: ConnId,
    identity: OnceLock<Identity>,
    rate: RateLimiter,
    order: Sequencer,
}

/// Runs a connection's events one after the other, in arrival order: each event runs in its
/// own task (so a slow database never delays reading the connection), so without this a
/// `typing:stop` could overtake its `typing:start`. Each event waits for the previous one's
/// ticket; a finished (or panicked) event drops its ticket, which releases the next.
#[derive(Default)]
struct Sequencer {
    last: Mutex<Option<oneshot::Receiver<()>>>,
}

struct Ticket {
    previous: Option<oneshot::Receiver<()>>,
    _done: oneshot::Sender<()>,
}

impl Sequencer {
    fn ticket(&self) -> Ticket {
        let (done, next) = oneshot::channel();
        let previous = self.last.lock().unwrap_or_else(PoisonError::into_inner).replace(next);
        Ticket { previous, _done: done }
    }
}

impl Ticket {
    async fn wait(&mut self) {
        if let Some(previous) = self.previous.take() {
            let _ = previous.await;
        }
    }
}

/// A Socket.IO socket: one namespace of one Engine.IO session.
struct SioSocket {
    key: u64,
    /// Index of the namespace in the adapter's list.
    ns: u8,
    sid: Box<str>,
    session: Arc<Session<SioSession>>,
    conn: Conn,
    /// The rooms it is filed under, to unfile it when it goes.
    rooms: Mutex<Vec<Room>>,
    gone: AtomicBool,
}

impl Indexed for SioSocket {
    fn index_id(&self) -> u64 {
        self.key
    }
}

impl SioSocket {
    fn user(&self) -> Option<&UserId> {
        self.conn.identity.get().map(|i| &i.user_id)
    }
}

/// The Socket.IO state of one Engine.IO session.
#[derive(Default)]
pub struct SioSession {
    /// Its connected namespaces.
    sockets: Mutex<Vec<Arc<SioSocket>>>,
    /// Binary attachments still to skip (binary events are refused).
    skip_binary: AtomicUsize,
}

impl SioSession {
    fn socket(&self, ns: u8) -> Option<Arc<SioSocket>> {
        let sockets = self.sockets.lock().unwrap_or_else(PoisonError::into_inner);
        sockets.iter().find(|s| s.ns == ns).cloned()
    }
}

/// A successful ack: `{ success: true, … }`.
#[derive(Serialize)]
struct Success<T: Serialize> {
    success: bool,
    #[serde(flatten)]
    body: T,
}

#[derive(Serialize)]
#[serde(untagged, rename_all_fields = "camelCase")]
enum Reply {
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
struct Failure<'a> {
    success: bool,
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a str>,
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

/// The Socket.IO side of a node: its routes, and the sink the bus delivers to.
pub struct SocketIoAdapter {
    engine: Engine<SioSession>,
    namespaces: Vec<(String, &'static Profile)>,
    ctx: Ctx,
    /// Per namespace (in `namespaces` order): sockets by room.
    rooms: Vec<Index<Room, SioSocket>>,
    next_key: AtomicU64,
    pressure: Pressure,
}

impl SocketIoAdapter {
    /// Builds the adapter with every namespace of the configuration.
    pub fn build(config: &Config, domain: Arc<Domain>) -> Result<Arc<Self>, String> {
        let jwt = config.auth.jwt.clone().ok_or("no JWT settings")?;
        let namespaces: Vec<(String, &'static Profile)> = config
            .socketio
            .namespaces
            .iter()
            .map(|(ns, name)| (ns.clone(), profile(*name)))
            .collect();
        if namespaces.len() > usize::from(u8::MAX) {
            return Err("too many Socket.IO namespaces (at most 255)".into());
        }
        Ok(Arc::new(Self {
            engine: Engine::new(EngineSettings {
                ping_interval: PING_INTERVAL,
                ping_timeout: PING_TIMEOUT,
                max_payload: usize::try_from(config.socketio.max_payload).unwrap_or(usize::MAX),
                max_queue: config.socketio.max_outbound_queue,
            }),
            rooms: namespaces.iter().map(|_| Index::default()).collect(),
            namespaces,
            ctx: Ctx {
                domain,
                jwt,
                allow_register: config.auth.allow_register,
                rate: config.socketio.rate_limit,
                node_id: config.node_id.clone(),
            },
            next_key: AtomicU64::new(1),
            pressure: Pressure::new(),
        }))
    }

    /// The `/socket.io/` routes.
    pub fn routes(self: &Arc<Self>) -> Router {
        engineio::routes(self.clone())
    }

    fn ns_name(&self, ns: u8) -> &str {
        self.namespaces
            .get(usize::from(ns))
            .map_or("/", |(name, _)| name.as_str())
    }

    fn profile(&self, ns: u8) -> &'static Profile {
        self.namespaces.get(usize::from(ns)).map_or(&profile::ALT, |(_, p)| *p)
    }

    fn room_index(&self, ns: u8) -> &Index<Room, SioSocket> {
        // `ns` is always a position in `namespaces`, which `rooms` follows.
        &self.rooms[usize::from(ns)]
    }

    fn join_room(&self, socket: &Arc<SioSocket>, room: Room) {
        let mut rooms = socket.rooms.lock().unwrap_or_else(PoisonError::into_inner);
        if !rooms.contains(&room) {
            rooms.push(room.clone());
            self.room_index(socket.ns).add(room, socket);
        }
    }

    fn leave_room(&self, socket: &SioSocket, room: Room) {
        let mut rooms = socket.rooms.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = rooms.iter().position(|r| *r == room) {
            rooms.swap_remove(i);
            self.room_index(socket.ns).remove(&room, socket.key);
        }
    }

    /// Sends `name` with `payload` to one socket.
    fn emit(&self, socket: &SioSocket, name: &str, payload: &impl Serialize) {
        match packet::event(self.ns_name(socket.ns), name, payload) {
            Ok(p) => socket.session.send(p),
            Err(e) => tracing::warn!(event = name, error = %e, "event not encoded"),
        }
    }

    /// A namespace connection request: authenticates, registers, answers.
    async fn connect(self: Arc<Self>, session: Arc<Session<SioSession>>, ns: u8, auth: Option<Value>) {
        let ns_name = self.ns_name(ns).to_owned();
        let token = match auth.as_ref().and_then(|a| a.get("token")) {
            Some(Value::String(t)) if !t.is_empty() => Some(t.clone()),
            _ => session.token.as_deref().map(str::to_owned),
        };
        let identity = match token {
            Some(token) => match self.ctx.jwt.verify(&token) {
                Ok(who) => Some(who),
                Err(e) => {
                    session.send(packet::connect_error(&ns_name, &format!("unauthorized: {e}")));
                    return;
                }
            },
            None if self.ctx.allow_register => None,
            None => {
                session.send(packet::connect_error(&ns_name, "unauthorized: missing token"));
                return;
            }
        };
        let sid = engineio::random_id();
        let socket = Arc::new(SioSocket {
            key: self.next_key.fetch_add(1, Ordering::Relaxed),
            ns,
            conn: Conn {
                // One Engine.IO session carries a socket per namespace.
                id: ConnId(format!("{}:{}:{}", self.ctx.node_id, ns_name, sid)),
                identity: OnceLock::new(),
                rate: RateLimiter::new(self.ctx.rate),
                order: Sequencer::default(),
            },
            sid,
            session: session.clone(),
            rooms: Mutex::default(),
            gone: AtomicBool::new(false),
        });
        if let Some(who) = identity {
            self.join_room(&socket, Room::User(who.user_id.clone()));
            if let Err(e) = self.ctx.domain.connect(&socket.conn.id, &who).await {
                self.leave_room(&socket, Room::User(who.user_id));
                session.send(packet::connect_error(&ns_name, &format!("{}: {e}", e.code().as_str())));
                return;
            }
            let _ = socket.conn.identity.set(who);
        }
        self.join_room(&socket, Room::All);
        session
            .data
            .sockets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(socket.clone());
        METRICS.connections.inc();
        if session.is_closed() {
            // The session ended while the domain registered the connection.
            self.socket_gone(&socket, CloseReason::TransportClose);
            return;
        }
        tracing::debug!(conn = %socket.conn.id, "connected");
        session.send(packet::connected(&ns_name, &socket.sid));
    }

    /// A socket's end, whatever the cause: unfiled, and the domain told, once.
    fn socket_gone(&self, socket: &Arc<SioSocket>, reason: CloseReason) {
        if socket.gone.swap(true, Ordering::AcqRel) {
            return;
        }
        socket
            .session
            .data
            .sockets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|s| s.key != socket.key);
        let rooms = std::mem::take(&mut *socket.rooms.lock().unwrap_or_else(PoisonError::into_inner));
        for room in rooms {
            self.room_index(socket.ns).remove(&room, socket.key);
        }
        METRICS.connections.dec();
        METRICS.disconnects.with_label_values(&[reason.label()]).inc();
        let mut ticket = socket.conn.order.ticket();
        let domain = self.ctx.domain.clone();
        let socket = socket.clone();
        tokio::spawn(async move {
            ticket.wait().await;
            tracing::debug!(conn = %socket.conn.id, ?reason, "disconnected");
            domain.disconnect(&socket.conn.id).await;
        });
    }

    /// Closes a namespace from the server side (`io server disconnect` for the client), and
    /// the session with its last namespace.
    fn server_disconnect(&self, socket: &Arc<SioSocket>) {
        socket.session.send(packet::disconnect(self.ns_name(socket.ns)));
        self.socket_gone(socket, CloseReason::ServerClose);
        let empty = socket
            .session
            .data
            .sockets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty();
        if empty {
            socket.session.close_after_flush(CloseReason::ServerClose);
        }
    }

    /// An event: admitted now, in arrival order, and run in its own task.
    fn event(self: &Arc<Self>, socket: Arc<SioSocket>, ack: Option<i64>, data: &str) {
        let ticket = socket.conn.order.ticket();
        let allowed = socket.conn.rate.allow();
        let parsed = packet::event_args(data);
        tokio::spawn(self.clone().handle(socket, ack, parsed, allowed, ticket));
    }

    /// Runs one event after the previous one of its connection: rate limit, payload, command,
    /// panic guard, reply.
    async fn handle(
        self: Arc<Self>,
        socket: Arc<SioSocket>,
        ack: Option<i64>,
        parsed: Result<(String, Value), packet::PacketError>,
        allowed: bool,
        mut ticket: Ticket,
    ) {
        ticket.wait().await;
        let (name, payload) = match parsed {
            Ok((name, payload)) => (name, Ok(payload)),
            Err(e) => (String::new(), Err(e)),
        };
        let command = INBOUND.iter().find(|(n, _)| *n == name).map(|(_, c)| *c);
        let span = tracing::info_span!("sio_event", event = %name, conn = %socket.conn.id);
        let result = match (allowed, payload, command) {
            (false, _, _) => Err(DomainError::RateLimited),
            (true, Err(e), _) => Err(DomainError::BadRequest(format!("unreadable event: {e}"))),
            (true, Ok(_), None) => Err(DomainError::BadRequest(format!("unknown event '{name}'"))),
            (true, Ok(payload), Some(command)) => AssertUnwindSafe(self.dispatch(&socket, command, payload))
                .catch_unwind()
                .instrument(span.clone())
                .await
                .unwrap_or_else(|_| {
                    tracing::error!(parent: &span, "event handler panicked");
                    Err(DomainError::Internal)
                }),
        };
        self.reply(&socket, &name, ack, result);
    }

    /// The one place a command's outcome becomes what the client sees: an ack when it asked
    /// for one, otherwise an `error` event for failures.
    fn reply(&self, socket: &SioSocket, event: &str, ack: Option<i64>, result: Result<Reply, DomainError>) {
        if let Err(e) = &result {
            METRICS.inbound_errors.with_label_values(&[e.code().as_str()]).inc();
        }
        let ns = self.ns_name(socket.ns);
        let encoded = match (result, ack) {
            (Ok(body), Some(id)) => packet::ack(ns, id, &Success { success: true, body }),
            (Ok(_), None) => return,
            (Err(e), Some(id)) => packet::ack(
                ns,
                id,
                &Failure {
                    success: false,
                    error: ErrorBody {
                        code: e.code().as_str(),
                        message: e.to_string(),
                        event: None,
                    },
                },
            ),
            (Err(e), None) => packet::event(
                ns,
                self.profile(socket.ns).error,
                &ErrorBody {
                    code: e.code().as_str(),
                    message: e.to_string(),
                    event: Some(event),
                },
            ),
        };
        match encoded {
            Ok(p) => socket.session.send(p),
            Err(e) => tracing::warn!(event, error = %e, "reply not encoded"),
        }
    }

    /// A removed member's local connections leave the conversation at once.
    async fn remove_member(&self, sockets: Vec<Arc<SioSocket>>, removed: &Membership) {
        for socket in sockets {
            let Some(who) = socket.conn.identity.get() else {
                continue;
            };
            if let Err(e) = self
                .ctx
                .domain
                .leave(&socket.conn.id, who, &removed.conversation_id)
                .await
            {
                tracing::warn!(conn = %socket.conn.id, error = %e, "removed member not taken out of presence");
            }
            self.leave_room(&socket, Room::Conversation(removed.conversation_id.clone()));
        }
    }

    /// Closes every session's transport, in batches spread over `window`, so that clients
    /// reconnect elsewhere by themselves and not all at once.
    pub async fn drain(&self, window: Duration) {
        let sessions = self.engine.sessions();
        let per_batch = sessions.len().div_ceil(DRAIN_BATCHES).max(1);
        let pause = window / DRAIN_BATCHES as u32;
        tracing::info!(sessions = sessions.len(), per_batch, "closing client transports");
        for batch in sessions.chunks(per_batch) {
            for session in batch {
                session.close_now(CloseReason::Draining);
            }
            tokio::time::sleep(pause).await;
        }
    }
}

impl Handler for SocketIoAdapter {
    type Data = SioSession;

    fn engine(&self) -> &Engine<SioSession> {
        &self.engine
    }

    fn on_message(self: &Arc<Self>, session: &Arc<Session<SioSession>>, text: &str) {
        let p = match packet::parse_sio(text) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(sid = %session.sid, error = %e, "bad socket.io packet ignored");
                return;
            }
        };
        let Some(ns) = self.namespaces.iter().position(|(n, _)| n == p.ns) else {
            if p.kind == Kind::Connect {
                session.send(packet::connect_error(p.ns, "Invalid namespace"));
            }
            return;
        };
        let ns = ns as u8;
        let socket = session.data.socket(ns);
        match (p.kind, socket) {
            (Kind::Connect, None) => {
                let auth = serde_json::from_str(p.data).ok();
                tokio::spawn(self.clone().connect(session.clone(), ns, auth));
            }
            (Kind::Event, Some(socket)) => self.event(socket, p.ack, p.data),
            (Kind::Disconnect, Some(socket)) => self.socket_gone(&socket, CloseReason::ClientClose),
            (Kind::BinaryEvent, socket) => {
                session.data.skip_binary.store(p.attachments, Ordering::Relaxed);
                if let Some(socket) = socket {
                    let error = DomainError::BadRequest("binary payloads are not supported".into());
                    self.reply(&socket, "", p.ack, Err(error));
                }
            }
            (Kind::BinaryAck, _) => session.data.skip_binary.store(p.attachments, Ordering::Relaxed),
            (kind, _) => tracing::debug!(sid = %session.sid, ?kind, "packet ignored"),
        }
    }

    fn on_binary(self: &Arc<Self>, session: &Arc<Session<SioSession>>, _data: &[u8]) {
        let skipped = session
            .data
            .skip_binary
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        if skipped.is_err() {
            tracing::debug!(sid = %session.sid, "unexpected binary message ignored");
        }
    }

    fn on_close(self: &Arc<Self>, session: &Arc<Session<SioSession>>, reason: CloseReason) {
        let sockets = session
            .data
            .sockets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for socket in sockets {
            self.socket_gone(&socket, reason);
        }
    }
}

#[async_trait]
impl LocalSink for SocketIoAdapter {
    async fn deliver(&self, delivery: Arc<Delivery>) {
        let room = match &delivery.topic {
            Topic::Conversation(c) => Room::Conversation(c.clone()),
            Topic::User(u) => Room::User(u.clone()),
            Topic::All => Room::All,
        };
        for ((ns, profile), rooms) in self.namespaces.iter().zip(&self.rooms) {
            let mut sockets = rooms.get(&room);
            if let Some(except) = &delivery.except_user {
                sockets.retain(|s| s.user() != Some(except));
            }
            if sockets.is_empty() {
                continue;
            }
            match &delivery.event {
                Event::Disconnect(_) => {
                    for socket in &sockets {
                        self.server_disconnect(socket);
                    }
                    continue;
                }
                Event::MemberRemoved(removed) => {
                    self.remove_member(sockets, removed).await;
                    continue;
                }
                _ => {}
            }
            let Some((name, payload)) = profile.render(&delivery.event) else {
                continue;
            };
            let encoded = match packet::event(ns, name, &payload) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(ns = %ns, event = name, error = %e, "event not rendered");
                    continue;
                }
            };
            let started = std::time::Instant::now();
            if self.pressure.batching() {
                for socket in &sockets {
                    socket.session.enqueue(encoded.clone());
                }
            } else {
                for socket in &sockets {
                    socket.session.send(encoded.clone());
                }
            }
            self.pressure.record(started.elapsed());
        }
    }
}

impl SocketIoAdapter {
    async fn dispatch(&self, socket: &Arc<SioSocket>, command: Command, payload: Value) -> Result<Reply, DomainError> {
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
                let joined = domain.join(&conn.id, who, &conversation, last_seq).await?;
                self.join_room(socket, Room::Conversation(conversation.clone()));
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
                })
            }
            Command::Leave => {
                let conversation = inbound::conversation(&payload)?;
                domain.leave(&conn.id, who, &conversation).await?;
                self.leave_room(socket, Room::Conversation(conversation.clone()));
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
        self.join_room(socket, Room::User(user_id.clone()));
        if let Err(e) = self.ctx.domain.connect(&conn.id, &who).await {
            self.leave_room(socket, Room::User(user_id.clone()));
            return Err(e);
        }
        let _ = conn.identity.set(who);
        Ok(Reply::Registered { user_id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn pressure_batches_above_high_and_stops_below_low() {
        let p = Pressure::new();
        assert!(!p.batching(), "an idle node writes straight");
        let share = |f: f64| PRESSURE_WINDOW.mul_f64(f);
        // 90 % of a window spent fanning out: above HIGH.
        p.record(share(0.9));
        tokio::time::advance(PRESSURE_WINDOW).await;
        assert!(p.batching());
        // Between LOW and HIGH: batching holds (hysteresis).
        p.record(share((PRESSURE_LOW + PRESSURE_HIGH) / 2.0));
        tokio::time::advance(PRESSURE_WINDOW).await;
        assert!(p.batching());
        // Below LOW: straight writes again.
        p.record(share(PRESSURE_LOW / 2.0));
        tokio::time::advance(PRESSURE_WINDOW).await;
        assert!(!p.batching());
        // A window still open keeps the decision.
        p.record(share(0.95));
        tokio::time::advance(PRESSURE_WINDOW / 2).await;
        assert!(!p.batching());
    }
}
