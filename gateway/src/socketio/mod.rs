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
mod worker;

pub use profile::{Profile, profile};

use crate::auth::{Identity, JwtSettings};
use crate::config::{Config, RateLimit};
use crate::domain::{ConnKey, Connection, Domain, Local, Outlet, RateLimiter, Written};
use crate::metrics::{METRICS, Protocol};
use crate::runtime::{self, Inbox, Reading as InboxReading};
use axum::Router;
use engineio::{Config as EngineSettings, DisconnectReason, Engine, Handler, Session};
use packet::Kind;
use pressure::Pressure;
use serde::Serialize;
use serde_json::Value;
use shared::{ConnId, ConversationId, Delivery, NodeId, UserId};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

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
        let removal = worker::Input::Removed {
            socket: self.conn.local.key,
            conversation: conversation.clone(),
        };
        if !self.session.data.enqueue_forced(removal) {
            // A session too far behind must not keep a removed member in: close it.
            self.session.close_now(DisconnectReason::ServerClose);
        }
    }
}

/// A namespace's renderer: one encoding of each event for all its recipients.
struct Namespace {
    name: String,
    profile: &'static Profile,
    pressure: Arc<Pressure>,
}

impl Outlet for Namespace {
    fn labels(&self) -> (Protocol, &str) {
        (Protocol::SocketIo, &self.name)
    }

    fn push(&self, delivery: &Delivery, to: &[&dyn Connection]) -> Written {
        let Some((name, payload)) = self.profile.render(&delivery.event) else {
            return Written::default();
        };
        let encoded = match packet::event(&self.name, name, &payload) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(ns = %self.name, event = name, error = %e, "event not rendered");
                return Written::default();
            }
        };
        let written = Written::copies(to.len(), encoded.frame().len());
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
        written
    }
}

/// The Socket.IO state of one Engine.IO session.
pub struct SioSession {
    sockets: Mutex<Sockets>,
    /// Binary attachments still to skip (binary events are refused).
    skip_binary: AtomicUsize,
    /// The session's packets in arrival order, and their worker (set by the first packet).
    inbox: OnceLock<Arc<SioInbox>>,
    /// When the session opened: one that connects no namespace in time is closed.
    opened: Instant,
}

type SioInbox = Inbox<worker::Worker, Weak<Session<SioSession>>>;

impl Default for SioSession {
    fn default() -> Self {
        Self {
            sockets: Mutex::default(),
            skip_binary: AtomicUsize::new(0),
            inbox: OnceLock::new(),
            opened: Instant::now(),
        }
    }
}

#[derive(Default)]
struct Sockets {
    /// The connected namespaces.
    live: Vec<Arc<SioSocket>>,
    /// Sockets the server closed whose end the worker has not told the domain yet.
    gone: Vec<Local>,
    /// A namespace was connected at least once.
    ever: bool,
}

impl InboxReading for Weak<Session<SioSession>> {
    fn pause_reading(&self) {
        if let Some(session) = self.upgrade() {
            session.pause_reading();
        }
    }

    fn resume_reading(&self) {
        if let Some(session) = self.upgrade() {
            session.resume_reading();
        }
    }
}

impl SioSession {
    fn sockets(&self) -> std::sync::MutexGuard<'_, Sockets> {
        self.sockets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn socket(&self, ns: u8) -> Option<Arc<SioSocket>> {
        self.sockets().live.iter().find(|s| s.ns == ns).cloned()
    }

    fn socket_by_key(&self, key: ConnKey) -> Option<Arc<SioSocket>> {
        self.sockets().live.iter().find(|s| s.conn.local.key == key).cloned()
    }

    fn take_gone(&self, key: ConnKey) -> Option<Local> {
        let mut sockets = self.sockets();
        let at = sockets.gone.iter().position(|l| l.key == key)?;
        Some(sockets.gone.swap_remove(at))
    }

    fn take_all(&self) -> Vec<Arc<SioSocket>> {
        std::mem::take(&mut self.sockets().live)
    }

    fn take_all_gone(&self) -> Vec<Local> {
        std::mem::take(&mut self.sockets().gone)
    }

    /// Queues an input that must run (a removal, a socket's end); `false` when the session
    /// is too far behind and must be closed instead.
    fn enqueue_forced(&self, input: worker::Input) -> bool {
        self.inbox.get().is_none_or(|inbox| inbox.enqueue_forced(input))
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
        let adapter = Arc::new(Self {
            engine: Engine::new(EngineSettings {
                ping_interval: config.socketio.ping_interval,
                ping_timeout: config.socketio.ping_timeout,
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
        });
        let timeout = config.socketio.connect_timeout;
        adapter
            .ctx
            .domain
            .spawn_until_shutdown(adapter.clone().close_unconnected(timeout));
        Ok(adapter)
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
    async fn connect(self: Arc<Self>, session: &Arc<Session<SioSession>>, ns: u8, auth: Option<Value>) {
        let ns_name = self.ns_name(ns).to_owned();
        let token = match auth.as_ref().and_then(|a| a.get("token")) {
            Some(Value::String(t)) if !t.is_empty() => Some(t.clone()),
            _ => session.token.as_deref().map(str::to_owned),
        };
        let identity = match token {
            Some(token) => match self.ctx.jwt.verify(&token) {
                Ok(who) => Some(who),
                Err(e) => {
                    METRICS.token_refused(Protocol::SocketIo, &e);
                    session.send(packet::connect_error(&ns_name, &format!("unauthorized: {e}")));
                    return;
                }
            },
            None if self.ctx.allow_register => None,
            None => {
                METRICS.auth_failed(Protocol::SocketIo, "missing_token");
                session.send(packet::connect_error(&ns_name, "unauthorized: missing token"));
                return;
            }
        };
        let sid = engineio::random_id();
        // One Engine.IO session carries a socket per namespace.
        let id = ConnId::from(format!("{}:{}:{}", self.ctx.node_id, ns_name, sid));
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
                METRICS.auth_failed(Protocol::SocketIo, e.code().as_str());
                domain.detach(&socket.conn.local).await;
                session.send(packet::connect_error(&ns_name, &format!("{}: {e}", e.code().as_str())));
                return;
            }
            let _ = socket.conn.identity.set(who);
        }
        {
            let mut sockets = session.data.sockets();
            sockets.live.push(socket.clone());
            sockets.ever = true;
        }
        tracing::debug!(conn = %socket.conn.local.id, "connected");
        // A session that ended meanwhile is finished by its worker's last words, which run
        // after this input and take the socket out.
        session.send(packet::connected(&ns_name, &socket.sid));
    }

    /// A socket leaves its session, once: counted, and no longer found by its namespace.
    /// The caller tells the domain.
    fn forget(&self, socket: &SioSocket, reason: DisconnectReason) -> bool {
        if socket.gone.swap(true, Ordering::AcqRel) {
            return false;
        }
        let key = socket.conn.local.key;
        socket.session.data.sockets().live.retain(|s| s.conn.local.key != key);
        METRICS.disconnects.with_label_values(&[reason.label()]).inc();
        tracing::debug!(conn = %socket.conn.local.id, ?reason, "disconnected");
        true
    }

    /// Closes a namespace from the server side (`io server disconnect` for the client), and
    /// the session with its last namespace.
    fn server_disconnect(&self, socket: &SioSocket) {
        socket.session.send(packet::disconnect(self.ns_name(socket.ns)));
        if self.forget(socket, DisconnectReason::ServerClose) {
            let key = socket.conn.local.key;
            socket.session.data.sockets().gone.push(socket.conn.local.clone());
            if !socket.session.data.enqueue_forced(worker::Input::Gone { socket: key }) {
                socket.session.close_now(DisconnectReason::ServerClose);
            }
        }
        if socket.session.data.sockets().live.is_empty() {
            socket.session.close_after_flush(DisconnectReason::ServerClose);
        }
    }

    /// The session's inbox, made with its worker on the first packet.
    fn inbox<'a>(self: &Arc<Self>, session: &'a Arc<Session<SioSession>>) -> &'a Arc<SioInbox> {
        session.data.inbox.get_or_init(|| {
            let inbox = Arc::new(Inbox::new(Arc::downgrade(session)));
            inbox.set_worker(worker::Worker {
                adapter: self.clone(),
                session: session.clone(),
            });
            inbox
        })
    }

    /// Queues a packet for the session's worker.
    fn enqueue(self: &Arc<Self>, session: &Arc<Session<SioSession>>, input: worker::Input, bytes: usize) {
        self.inbox(session).enqueue(input, bytes);
    }

    /// A packet that breaks the protocol: nothing more is read, and the session closes once
    /// what came before it is answered.
    fn fail(self: &Arc<Self>, session: &Arc<Session<SioSession>>, error: &dyn std::fmt::Display) {
        tracing::debug!(sid = %session.sid, error = %error, "malformed socket.io packet: closing");
        session.pause_reading();
        self.enqueue(session, worker::Input::Fail(DisconnectReason::ParseError), 0);
    }

    /// Closes every session's transport, in batches spread over `window`, so that clients
    /// reconnect elsewhere by themselves and not all at once.
    pub async fn drain(&self, window: Duration) {
        let sessions = self.engine.sessions();
        runtime::drain("socket.io", &sessions, window, |s| {
            s.close_now(DisconnectReason::Draining)
        })
        .await;
    }

    /// Closes sessions that connected no namespace within `timeout` of opening (the
    /// reference server's `connectTimeout`), until the node stops.
    pub async fn close_unconnected(self: Arc<Self>, timeout: Duration) {
        let mut tick = tokio::time::interval((timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(5)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for session in self.engine.sessions() {
                if session.data.opened.elapsed() >= timeout && !session.data.sockets().ever {
                    tracing::debug!(sid = %session.sid, "no namespace connected in time: closing");
                    session.close_now(DisconnectReason::ConnectTimeout);
                }
            }
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
            Err(e) => return self.fail(session, &e),
        };
        let Some(ns) = self.namespaces.iter().position(|(n, _)| n == p.ns) else {
            if p.kind == Kind::Connect {
                session.send(packet::connect_error(packet::echoed(p.ns), "Invalid namespace"));
            }
            return;
        };
        let ns = ns as u8;
        let input = match p.kind {
            Kind::Connect => match packet::connect_auth(p.data) {
                Ok(auth) => worker::Input::Connect { ns, auth },
                Err(e) => return self.fail(session, &e),
            },
            Kind::Event => match packet::event_args(p.data) {
                Ok((name, payload)) => worker::Input::Event {
                    ns,
                    ack: p.ack,
                    name,
                    payload,
                },
                Err(e) => return self.fail(session, &e),
            },
            Kind::Disconnect => worker::Input::Disconnect { ns },
            Kind::BinaryEvent => {
                session.data.skip_binary.store(p.attachments, Ordering::Relaxed);
                worker::Input::Binary { ns, ack: p.ack }
            }
            Kind::BinaryAck => {
                session.data.skip_binary.store(p.attachments, Ordering::Relaxed);
                return;
            }
            // A client sends neither acks (the node asks for none) nor CONNECT_ERROR.
            Kind::Ack | Kind::ConnectError => {
                return tracing::debug!(sid = %session.sid, kind = ?p.kind, "packet ignored");
            }
        };
        self.enqueue(session, input, text.len());
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
        let Some(inbox) = session.data.inbox.get().cloned() else {
            return;
        };
        self.ctx.domain.spawn(async move {
            if let Some(worker) = inbox.stop().await {
                worker.finish(reason).await;
            }
        });
    }
}
