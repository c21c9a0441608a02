//! The Socket.IO adapter (Socket.IO v5 over Engine.IO v4, WebSocket and long-polling):
//! authenticates namespace connections, turns inbound events into domain commands and acks,
//! and renders the domain events the hub hands it into each namespace's vocabulary.
//!
//! Engine.IO sessions and their transports are in [`engineio`]; this module sees Socket.IO
//! packets. Each namespace is one outlet of the hub: an event is rendered and encoded once per
//! namespace, then handed to each recipient's session, which writes it straight to the socket
//! when nothing waits before it.

mod commands;
pub mod packet;
mod pressure;
mod profile;

pub use profile::{Profile, profile};

use crate::auth::{Identity, JwtSettings};
use crate::config::{Config, RateLimit};
use crate::domain::{Connection, Domain, DomainError, Local, Outlet, RateLimiter};
use crate::metrics::METRICS;
use axum::Router;
use commands::{ErrorBody, Failure, INBOUND, Reply, Success};
use engineio::{Config as EngineSettings, DisconnectReason, Engine, Handler, Session};
use futures::FutureExt;
use packet::Kind;
use pressure::Pressure;
use serde::Serialize;
use serde_json::Value;
use shared::{ConnId, ConversationId, Delivery, NodeId, UserId};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;
use tokio::sync::oneshot;
use tracing::Instrument;

/// Engine.IO heartbeat: a client that stops answering is closed after interval + timeout.
/// (A consumer whose outbound queue fills is closed at once, whatever the heartbeat.)
const PING_INTERVAL: Duration = Duration::from_secs(5);
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// How many batches a drain closes client transports in.
const DRAIN_BATCHES: usize = 10;

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
    local: Local,
    identity: OnceLock<Identity>,
    rate: RateLimiter,
    order: Sequencer,
}

/// Runs a connection's events one after the other, in arrival order: each event runs in its
/// own task (so a slow database never delays reading the connection), so without this a
/// `typing:stop` could overtake its `typing:start`. Each event waits for the previous one's
/// ticket; a finished (or panicked) event drops its ticket, which releases the next. A
/// removal from a conversation and the socket's end take tickets too: they run after the
/// commands before them (a join in flight) and never beside them.
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
    /// Index of the namespace in the adapter's list.
    ns: u8,
    /// The namespace's outlet in the hub.
    outlet: usize,
    sid: Box<str>,
    session: Arc<Session<SioSession>>,
    conn: Conn,
    gone: AtomicBool,
    adapter: Weak<SocketIoAdapter>,
}

impl Connection for SioSocket {
    fn outlet(&self) -> usize {
        self.outlet
    }

    fn user(&self) -> Option<&UserId> {
        self.conn.identity.get().map(|i| &i.user_id)
    }

    fn kick(&self) {
        if let Some(adapter) = self.adapter.upgrade() {
            adapter.server_disconnect(self);
        }
    }

    fn shed(&self) {
        METRICS.outbound_dropped.inc();
        self.session.close_now(DisconnectReason::SlowConsumer);
    }

    fn removed(&self, conversation: &ConversationId) {
        let (Some(adapter), Some(who)) = (self.adapter.upgrade(), self.conn.identity.get().cloned()) else {
            return;
        };
        let mut ticket = self.conn.order.ticket();
        let (local, conversation) = (self.conn.local.clone(), conversation.clone());
        let domain = adapter.ctx.domain.clone();
        domain.spawn(async move {
            ticket.wait().await;
            if let Err(e) = adapter.ctx.domain.leave(&local, &who, &conversation).await {
                tracing::warn!(conn = %local.id, error = %e, "removed member not taken out of presence");
            }
        });
    }
}

/// A namespace's renderer: one encoding of each event for all its recipients.
struct Namespace {
    name: String,
    profile: &'static Profile,
    pressure: Arc<Pressure>,
}

impl Outlet for Namespace {
    fn push(&self, delivery: &Delivery, to: &[&dyn Connection]) {
        let Some((name, payload)) = self.profile.render(&delivery.event) else {
            return;
        };
        let encoded = match packet::event(&self.name, name, &payload) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(ns = %self.name, event = name, error = %e, "event not rendered");
                return;
            }
        };
        let sessions = to
            .iter()
            .filter_map(|c| (*c as &dyn std::any::Any).downcast_ref::<SioSocket>())
            .map(|s| &s.session);
        let started = std::time::Instant::now();
        if self.pressure.batching() {
            sessions.for_each(|s| s.enqueue(encoded.clone()));
        } else {
            sessions.for_each(|s| s.send(encoded.clone()));
        }
        self.pressure.record(started.elapsed());
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

/// The Socket.IO side of a node: its routes, and one hub outlet per namespace.
pub struct SocketIoAdapter {
    engine: Engine<SioSession>,
    namespaces: Vec<(String, &'static Profile)>,
    /// Per namespace (in `namespaces` order): its outlet in the hub.
    outlets: Vec<usize>,
    ctx: Ctx,
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
        let pressure = Arc::new(Pressure::new());
        let outlets = namespaces
            .iter()
            .map(|(name, profile)| {
                domain.add_outlet(Arc::new(Namespace {
                    name: name.clone(),
                    profile,
                    pressure: pressure.clone(),
                }))
            })
            .collect();
        Ok(Arc::new(Self {
            engine: Engine::new(EngineSettings {
                ping_interval: PING_INTERVAL,
                ping_timeout: PING_TIMEOUT,
                max_payload: usize::try_from(config.socketio.max_payload).unwrap_or(usize::MAX),
                max_queue: config.socketio.max_outbound_queue,
            }),
            namespaces,
            outlets,
            ctx: Ctx {
                domain,
                jwt,
                allow_register: config.auth.allow_register,
                rate: config.socketio.rate_limit,
                node_id: config.node_id.clone(),
            },
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
        // One Engine.IO session carries a socket per namespace.
        let id = ConnId(format!("{}:{}:{}", self.ctx.node_id, ns_name, sid));
        let socket = Arc::new(SioSocket {
            ns,
            outlet: self.outlets.get(usize::from(ns)).copied().unwrap_or(usize::MAX),
            conn: Conn {
                local: self.ctx.domain.local(id),
                identity: OnceLock::new(),
                rate: self
                    .ctx
                    .domain
                    .rate_limiter(self.ctx.rate, identity.as_ref().map(|w| &w.user_id)),
                order: Sequencer::default(),
            },
            sid,
            session: session.clone(),
            gone: AtomicBool::new(false),
            adapter: Arc::downgrade(&self),
        });
        let domain = &self.ctx.domain;
        domain.attach(&socket.conn.local, socket.clone());
        if let Some(who) = identity {
            if let Err(e) = domain.connect(&socket.conn.local, &who).await {
                domain.detach(&socket.conn.local).await;
                session.send(packet::connect_error(&ns_name, &format!("{}: {e}", e.code().as_str())));
                return;
            }
            let _ = socket.conn.identity.set(who);
        }
        session
            .data
            .sockets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(socket.clone());
        METRICS.connections.inc();
        if session.is_closed() {
            // The session ended while the domain registered the connection.
            self.socket_gone(&socket, DisconnectReason::TransportClose);
            return;
        }
        tracing::debug!(conn = %socket.conn.local.id, "connected");
        session.send(packet::connected(&ns_name, &socket.sid));
    }

    /// A socket's end, whatever the cause: the domain told, once, after the commands already
    /// admitted (a join in flight is undone by it, never left behind).
    fn socket_gone(&self, socket: &SioSocket, reason: DisconnectReason) {
        if socket.gone.swap(true, Ordering::AcqRel) {
            return;
        }
        let key = socket.conn.local.key;
        socket
            .session
            .data
            .sockets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|s| s.conn.local.key != key);
        METRICS.connections.dec();
        METRICS.disconnects.with_label_values(&[reason.label()]).inc();
        let mut ticket = socket.conn.order.ticket();
        let domain = self.ctx.domain.clone();
        let local = socket.conn.local.clone();
        self.ctx.domain.spawn(async move {
            ticket.wait().await;
            tracing::debug!(conn = %local.id, ?reason, "disconnected");
            domain.disconnect(&local).await;
        });
    }

    /// Closes a namespace from the server side (`io server disconnect` for the client), and
    /// the session with its last namespace.
    fn server_disconnect(&self, socket: &SioSocket) {
        socket.session.send(packet::disconnect(self.ns_name(socket.ns)));
        self.socket_gone(socket, DisconnectReason::ServerClose);
        let empty = socket
            .session
            .data
            .sockets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty();
        if empty {
            socket.session.close_after_flush(DisconnectReason::ServerClose);
        }
    }

    /// An event: admitted now, in arrival order, and run in its own task.
    fn event(self: &Arc<Self>, socket: Arc<SioSocket>, ack: Option<i64>, data: &str) {
        let ticket = socket.conn.order.ticket();
        let allowed = socket.conn.rate.allow();
        let parsed = packet::event_args(data);
        self.ctx
            .domain
            .spawn(self.clone().handle(socket, ack, parsed, allowed, ticket));
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
        let span = tracing::info_span!("sio_event", event = %name, conn = %socket.conn.local.id);
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
        // A join's socket starts hearing the conversation once its answer is written.
        let mut result = result;
        let live = match &mut result {
            Ok(Reply::Joined { live, .. }) => live.take(),
            _ => None,
        };
        self.reply(&socket, &name, ack, result);
        drop(live);
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

    /// Closes every session's transport, in batches spread over `window`, so that clients
    /// reconnect elsewhere by themselves and not all at once.
    pub async fn drain(&self, window: Duration) {
        let sessions = self.engine.sessions();
        let per_batch = sessions.len().div_ceil(DRAIN_BATCHES).max(1);
        let pause = window / DRAIN_BATCHES as u32;
        tracing::info!(sessions = sessions.len(), per_batch, "closing client transports");
        for batch in sessions.chunks(per_batch) {
            for session in batch {
                session.close_now(DisconnectReason::Draining);
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
                self.ctx.domain.spawn(self.clone().connect(session.clone(), ns, auth));
            }
            (Kind::Event, Some(socket)) => self.event(socket, p.ack, p.data),
            (Kind::Disconnect, Some(socket)) => self.socket_gone(&socket, DisconnectReason::ClientClose),
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

    fn on_close(self: &Arc<Self>, session: &Arc<Session<SioSession>>, reason: DisconnectReason) {
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
