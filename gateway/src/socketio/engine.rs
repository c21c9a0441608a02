//! Engine.IO v4 sessions over WebSocket and HTTP long-polling, including the upgrade from one
//! to the other, heartbeats, bounded outbound queues, and closing.
//!
//! A WebSocket session is one task that reads the client's frames, keeps the heartbeat and
//! writes what could not be written at once. Senders (the fan-out, acks) write a frame straight
//! to the TCP socket when nothing is queued before it; only what the kernel does not take at
//! once is queued, up to `max_queue` packets, beyond which the client is a slow consumer and
//! is closed. A polling session is a heartbeat task plus the requests that poll it.

use super::packet::{self, EnginePacket, Packet};
use super::ws;
use crate::metrics::METRICS;
use crate::net::ConnInfo;
use axum::Router;
use axum::body::Bytes as BodyBytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use bytes::Bytes;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Engine.IO's packet separator in a polling body.
const SEPARATOR: u8 = 0x1e;
/// How long an upgrade may take from the probe to the `5` packet.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing WebSocket may take to write what is queued before it.
const FLUSH_ON_CLOSE: Duration = Duration::from_secs(2);
/// Queued frames written by one system call.
const FLUSH_BATCH: usize = 64;
/// Bytes read from a socket per system call.
const READ_CHUNK: usize = 4096;

/// Heartbeat, size limits and queue bound, the same for every session.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub max_payload: usize,
    pub max_queue: usize,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed the connection.
    TransportClose,
    /// The connection failed, or the client broke the protocol.
    TransportError,
    /// No pong within the ping timeout.
    HeartbeatTimeout,
    /// The client sent Engine.IO's close packet.
    ClientClose,
    /// The server closed the session (every namespace disconnected).
    ServerClose,
    /// The outbound queue stayed full.
    SlowConsumer,
    /// A message over `--max-payload`.
    TooBig,
    /// The node is draining.
    Draining,
}

impl CloseReason {
    /// The `reason` label of `switchboard_disconnects_total`.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::TransportClose => "transport_close",
            CloseReason::TransportError => "transport_error",
            CloseReason::HeartbeatTimeout => "heartbeat_timeout",
            CloseReason::ClientClose => "client_disconnect",
            CloseReason::ServerClose => "server_disconnect",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::TooBig => "message_too_big",
            CloseReason::Draining => "closing_server",
        }
    }
}

/// What the Socket.IO layer does with a session's packets.
pub trait Handler: Send + Sync + Sized + 'static {
    /// Per-session state of the layer above.
    type Data: Default + Send + Sync + 'static;
    fn engine(&self) -> &Engine<Self::Data>;
    /// A Socket.IO packet: the text after Engine.IO's `4`.
    fn on_message(self: &Arc<Self>, session: &Arc<Session<Self::Data>>, text: &str);
    /// A binary message.
    fn on_binary(self: &Arc<Self>, session: &Arc<Session<Self::Data>>, data: &[u8]);
    /// The session ended; called once, after it left the engine.
    fn on_close(self: &Arc<Self>, session: &Arc<Session<Self::Data>>, reason: CloseReason);
}

enum Transport {
    Polling,
    WebSocket(Arc<TcpStream>),
}

/// How a close proceeds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Closing {
    /// Write what is queued first (after a server disconnect packet).
    Flush(CloseReason),
    /// Drop what is queued.
    Now(CloseReason),
}

impl Closing {
    fn reason(self) -> CloseReason {
        match self {
            Closing::Flush(r) | Closing::Now(r) => r,
        }
    }
}

struct Heartbeat {
    /// When the next ping is due, or when the awaited pong is late.
    next: Instant,
    awaiting_pong: bool,
}

struct Inner {
    transport: Transport,
    /// Packets not yet written (WebSocket) or not yet polled (polling).
    queue: VecDeque<Packet>,
    /// Bytes of the first queued packet's frame already written.
    written: usize,
    closing: Option<Closing>,
    /// A polling session whose client probes a WebSocket: polls are answered at once.
    upgrading: bool,
    polling: bool,
    heartbeat: Heartbeat,
}

/// One client connection, whatever its transport.
pub struct Session<D> {
    pub sid: Box<str>,
    /// The token from the handshake's `token` query parameter or `Authorization: Bearer`.
    pub token: Option<Box<str>>,
    /// The layer above's state.
    pub data: D,
    state: Mutex<Inner>,
    /// Wakes whoever writes for the session: the WebSocket task, or a pending poll.
    wake: Notify,
    /// Wakes a polling session's heartbeat task when the session closes.
    closed: Notify,
    max_queue: usize,
}

impl<D> Session<D> {
    fn new(sid: Box<str>, token: Option<Box<str>>, transport: Transport, settings: &EngineSettings) -> Self
    where
        D: Default,
    {
        Self {
            sid,
            token,
            data: D::default(),
            state: Mutex::new(Inner {
                transport,
                queue: VecDeque::new(),
                written: 0,
                closing: None,
                upgrading: false,
                polling: false,
                heartbeat: Heartbeat {
                    // The first ping comes after half to all of the interval, at random:
                    // clients that connected together (a reconnect storm, a load test) would
                    // otherwise be pinged together, every interval, for as long as they stay.
                    next: Instant::now() + settings.ping_interval.mul_f64(rand::random_range(0.5..=1.0)),
                    awaiting_pong: false,
                },
            }),
            wake: Notify::new(),
            closed: Notify::new(),
            max_queue: settings.max_queue.max(1),
        }
    }

    fn state(&self) -> MutexGuard<'_, Inner> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends one Engine.IO text packet: written to the socket at once when nothing waits
    /// before it, queued otherwise. A full queue closes the session (slow consumer).
    pub fn send(&self, packet: Packet) {
        self.push(packet, true);
    }

    /// Queues one packet for the session's task, which writes whatever is queued together:
    /// fewer system calls per packet than [`Session::send`] when a node is behind, at the
    /// cost of a task wake-up.
    pub fn enqueue(&self, packet: Packet) {
        self.push(packet, false);
    }

    fn push(&self, packet: Packet, write_through: bool) {
        let mut st = self.state();
        if st.closing.is_some() {
            return;
        }
        if write_through
            && let Transport::WebSocket(tcp) = &st.transport
            && st.queue.is_empty()
        {
            let frame = packet.frame();
            match write(tcp, frame) {
                Ok(n) if n == frame.len() => return,
                Ok(n) => st.written = n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => st.written = 0,
                Err(_) => {
                    st.closing = Some(Closing::Now(CloseReason::TransportError));
                    drop(st);
                    self.wake_all();
                    return;
                }
            }
            st.queue.push_back(packet);
            drop(st);
            self.wake.notify_one();
            return;
        }
        if st.queue.len() >= self.max_queue {
            METRICS.outbound_dropped.inc();
            tracing::info!(sid = %self.sid, "closing a slow consumer");
            st.closing = Some(Closing::Now(CloseReason::SlowConsumer));
            drop(st);
            self.wake_all();
            return;
        }
        let first = st.queue.is_empty();
        st.queue.push_back(packet);
        drop(st);
        // Whoever writes was told when the queue stopped being empty.
        if first {
            self.wake.notify_one();
        }
    }

    /// Closes the session after writing what is queued (the client gets a server disconnect
    /// packet sent just before).
    pub fn close_after_flush(&self, reason: CloseReason) {
        self.close(Closing::Flush(reason));
    }

    /// Closes the session at once: for a WebSocket, the TCP connection is shut down, which
    /// clients treat as a lost connection and reconnect.
    pub fn close_now(&self, reason: CloseReason) {
        self.close(Closing::Now(reason));
    }

    fn close(&self, closing: Closing) {
        let mut st = self.state();
        if st.closing.is_none() {
            st.closing = Some(closing);
        }
        drop(st);
        self.wake_all();
    }

    fn wake_all(&self) {
        self.wake.notify_one();
        self.closed.notify_one();
    }

    /// Whether the session is closing or closed.
    pub fn is_closed(&self) -> bool {
        self.state().closing.is_some()
    }

    fn is_websocket(&self) -> bool {
        matches!(self.state().transport, Transport::WebSocket(_))
    }

    fn on_pong(&self, settings: &EngineSettings) {
        let mut st = self.state();
        if st.heartbeat.awaiting_pong {
            st.heartbeat.awaiting_pong = false;
            st.heartbeat.next = Instant::now() + settings.ping_interval;
        }
    }

    /// Runs when the heartbeat timer fires: pings when due, and returns when to look again;
    /// an error when the pong is late.
    fn heartbeat(&self, settings: &EngineSettings) -> Result<Instant, CloseReason> {
        let now = Instant::now();
        let mut st = self.state();
        if now < st.heartbeat.next {
            return Ok(st.heartbeat.next);
        }
        if st.heartbeat.awaiting_pong {
            return Err(CloseReason::HeartbeatTimeout);
        }
        st.heartbeat.awaiting_pong = true;
        st.heartbeat.next = now + settings.ping_timeout;
        let next = st.heartbeat.next;
        drop(st);
        static PING: LazyLock<Packet> = LazyLock::new(|| Packet::new(b"2"));
        self.send(PING.clone());
        Ok(next)
    }
}

/// Every session of the node, by sid.
pub struct Engine<D> {
    sessions: Mutex<HashMap<Box<str>, Arc<Session<D>>>>,
    pub settings: EngineSettings,
}

impl<D: Default + Send + Sync + 'static> Engine<D> {
    pub fn new(settings: EngineSettings) -> Self {
        Self {
            sessions: Mutex::default(),
            settings,
        }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<Box<str>, Arc<Session<D>>>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, sid: &str) -> Option<Arc<Session<D>>> {
        self.map().get(sid).cloned()
    }

    fn open(&self, token: Option<Box<str>>, transport: Transport) -> Arc<Session<D>> {
        let session = Arc::new(Session::new(random_id(), token, transport, &self.settings));
        self.map().insert(session.sid.clone(), session.clone());
        session
    }

    /// Every live session.
    pub fn sessions(&self) -> Vec<Arc<Session<D>>> {
        self.map().values().cloned().collect()
    }

    /// The open packet: the session's id and the heartbeat the client must keep.
    fn open_packet(&self, sid: &str, upgrades: &[&str]) -> Packet {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Open<'a> {
            sid: &'a str,
            upgrades: &'a [&'a str],
            ping_interval: u128,
            ping_timeout: u128,
            max_payload: usize,
        }
        let mut out = vec![b'0'];
        let open = Open {
            sid,
            upgrades,
            ping_interval: self.settings.ping_interval.as_millis(),
            ping_timeout: self.settings.ping_timeout.as_millis(),
            max_payload: self.settings.max_payload,
        };
        // Strings and numbers always serialize.
        let _ = serde_json::to_writer(&mut out, &open);
        Packet::new(&out)
    }
}

/// A random 20-character URL-safe id (120 bits).
pub fn random_id() -> Box<str> {
    let mut bytes = [0u8; 15];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes).into()
}

/// Removes a session from the engine and tells the layer above, once.
fn finish<H: Handler>(h: &Arc<H>, session: &Arc<Session<H::Data>>, reason: CloseReason) {
    let removed = h.engine().map().remove(&session.sid).is_some();
    if removed {
        {
            let mut st = session.state();
            st.closing.get_or_insert(Closing::Now(reason));
            st.queue.clear();
        }
        session.wake_all();
        h.on_close(session, reason);
    }
}

/// The `/socket.io/` routes.
pub fn routes<H: Handler>(h: Arc<H>) -> Router {
    Router::new()
        .route("/socket.io/", get(on_get::<H>).post(on_post::<H>))
        .route("/socket.io", get(on_get::<H>).post(on_post::<H>))
        .with_state(h)
}

#[derive(Deserialize)]
struct EngineQuery {
    #[serde(rename = "EIO")]
    eio: Option<String>,
    transport: Option<String>,
    sid: Option<String>,
    token: Option<String>,
}

/// Engine.IO's error answer: HTTP 400 with `{ code, message }`.
fn refuse(code: u8, message: &'static str) -> Response {
    #[derive(Serialize)]
    struct Refusal {
        code: u8,
        message: &'static str,
    }
    (StatusCode::BAD_REQUEST, axum::Json(Refusal { code, message })).into_response()
}

fn text(body: impl Into<Bytes>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=UTF-8"),
        )],
        body.into(),
    )
        .into_response()
}

/// Checks the query every Engine.IO request carries; the transport's name when valid.
/// Engine.IO's error codes and messages.
type Refusal = (u8, &'static str);

fn check(query: Result<Query<EngineQuery>, QueryRejection>) -> Result<(EngineQuery, bool), Refusal> {
    let Ok(Query(q)) = query else {
        return Err((3, "Bad request"));
    };
    if q.eio.as_deref() != Some("4") {
        return Err((5, "Unsupported protocol version"));
    }
    let websocket = match q.transport.as_deref() {
        Some("websocket") => true,
        Some("polling") => false,
        _ => return Err((0, "Transport unknown")),
    };
    Ok((q, websocket))
}

/// The token a handshake request carries outside Socket.IO's `auth`.
fn handshake_token(q: &EngineQuery, headers: &HeaderMap) -> Option<Box<str>> {
    if let Some(t) = q.token.as_deref().filter(|t| !t.is_empty()) {
        return Some(t.into());
    }
    headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(crate::auth::bearer)
        .map(Into::into)
}

async fn on_get<H: Handler>(
    State(h): State<Arc<H>>,
    ConnectInfo(info): ConnectInfo<ConnInfo>,
    query: Result<Query<EngineQuery>, QueryRejection>,
    request: Request,
) -> Response {
    let (q, websocket) = match check(query) {
        Ok(checked) => checked,
        Err((code, message)) => return refuse(code, message),
    };
    match (websocket, q.sid.as_deref()) {
        (true, sid) => upgrade(h, info, &q, sid, request),
        (false, None) => {
            let token = handshake_token(&q, request.headers());
            let session = h.engine().open(token, Transport::Polling);
            let open = h.engine().open_packet(&session.sid, &["websocket"]);
            tokio::spawn(poll_heartbeat(h.clone(), session));
            text(open.text().to_vec())
        }
        (false, Some(sid)) => match h.engine().get(sid) {
            Some(session) => poll(&h, &session).await,
            None => refuse(1, "Session ID unknown"),
        },
    }
}

async fn on_post<H: Handler>(
    State(h): State<Arc<H>>,
    query: Result<Query<EngineQuery>, QueryRejection>,
    body: BodyBytes,
) -> Response {
    let (q, websocket) = match check(query) {
        Ok(checked) => checked,
        Err((code, message)) => return refuse(code, message),
    };
    let Some(session) = q.sid.as_deref().and_then(|sid| h.engine().get(sid)) else {
        return refuse(1, "Session ID unknown");
    };
    if websocket || session.is_websocket() {
        return refuse(3, "Bad request");
    }
    if body.len() > h.engine().settings.max_payload {
        finish(&h, &session, CloseReason::TooBig);
        return (StatusCode::PAYLOAD_TOO_LARGE, "payload too large").into_response();
    }
    for raw in body.split(|b| *b == SEPARATOR) {
        let Ok(raw) = std::str::from_utf8(raw) else {
            finish(&h, &session, CloseReason::TransportError);
            return refuse(3, "Bad request");
        };
        if let Some(encoded) = raw.strip_prefix('b') {
            match base64::engine::general_purpose::STANDARD.decode(encoded) {
                Ok(data) => h.on_binary(&session, &data),
                Err(_) => tracing::debug!(sid = %session.sid, "undecodable binary packet ignored"),
            }
            continue;
        }
        match packet::parse_engine(raw) {
            Ok(EnginePacket::Message(text)) => h.on_message(&session, text),
            Ok(EnginePacket::Pong(_)) => session.on_pong(&h.engine().settings),
            Ok(EnginePacket::Close) => {
                finish(&h, &session, CloseReason::ClientClose);
                break;
            }
            Ok(EnginePacket::Ping(_) | EnginePacket::Upgrade | EnginePacket::Noop) => {}
            Err(e) => tracing::debug!(sid = %session.sid, error = %e, "bad packet ignored"),
        }
    }
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/html"))], "ok").into_response()
}

/// One long-poll: whatever is queued, or wait for something (a ping comes every interval).
async fn poll<H: Handler>(h: &Arc<H>, session: &Arc<Session<H::Data>>) -> Response {
    {
        let mut st = session.state();
        if matches!(st.transport, Transport::WebSocket(_)) || st.polling {
            drop(st);
            return refuse(3, "Bad request");
        }
        st.polling = true;
    }
    struct Polling<'a, D>(&'a Session<D>);
    impl<D> Drop for Polling<'_, D> {
        fn drop(&mut self) {
            self.0.state().polling = false;
        }
    }
    let _polling = Polling(session);
    loop {
        let woken = session.wake.notified();
        {
            let mut st = session.state();
            if let Some(closing) = st.closing {
                let mut body: Vec<u8> = Vec::new();
                if matches!(closing, Closing::Flush(_)) {
                    for p in st.queue.drain(..) {
                        body.extend_from_slice(p.text());
                        body.push(SEPARATOR);
                    }
                }
                body.push(b'1');
                drop(st);
                finish(h, session, closing.reason());
                return text(body);
            }
            if !st.queue.is_empty() {
                let mut body = Vec::with_capacity(st.queue.iter().map(|p| p.text().len() + 1).sum());
                for (i, p) in st.queue.drain(..).enumerate() {
                    if i > 0 {
                        body.push(SEPARATOR);
                    }
                    body.extend_from_slice(p.text());
                }
                return text(body);
            }
            if st.upgrading {
                return text(Bytes::from_static(b"6"));
            }
        }
        woken.await;
    }
}

/// A polling session's heartbeat, until it closes or upgrades.
async fn poll_heartbeat<H: Handler>(h: Arc<H>, session: Arc<Session<H::Data>>) {
    let settings = h.engine().settings.clone();
    let mut next = Instant::now() + settings.ping_interval;
    loop {
        let closed = session.closed.notified();
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = closed => {}
        }
        let (upgraded, closing, unpolled) = {
            let st = session.state();
            let unpolled = !st.polling && matches!(st.closing, Some(Closing::Flush(_))) && !st.queue.is_empty();
            (matches!(st.transport, Transport::WebSocket(_)), st.closing, unpolled)
        };
        if upgraded {
            return;
        }
        if let Some(closing) = closing {
            // A flushing close gives the client's next poll a chance to take the queue.
            if unpolled {
                tokio::time::sleep(settings.ping_timeout).await;
            }
            finish(&h, &session, closing.reason());
            return;
        }
        match session.heartbeat(&settings) {
            Ok(at) => next = at,
            Err(reason) => {
                finish(&h, &session, reason);
                return;
            }
        }
    }
}

/// Answers a WebSocket upgrade request: a new session, or the upgrade of a polling one.
fn upgrade<H: Handler>(
    h: Arc<H>,
    info: ConnInfo,
    q: &EngineQuery,
    sid: Option<&str>,
    mut request: Request,
) -> Response {
    let headers = request.headers();
    let is_upgrade = headers
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
        && headers
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
        && headers.get(header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) == Some(b"13");
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).filter(|_| is_upgrade) else {
        return refuse(3, "Bad request");
    };
    let accept = ws::accept_key(key.as_bytes());
    let probed = match sid {
        None => None,
        Some(sid) => match h.engine().get(sid) {
            Some(s) if !s.is_websocket() && !s.state().upgrading => Some(s),
            Some(_) => return refuse(3, "Bad request"),
            None => return refuse(1, "Session ID unknown"),
        },
    };
    let token = handshake_token(q, headers);
    let Some(on_upgrade) = request.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return refuse(3, "Bad request");
    };
    let tcp = info.stream.clone();
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade failed");
                return;
            }
        };
        let mut reader = ws::Reader::default();
        let session = match probed {
            Some(session) => {
                if !probe(&h, &session, &tcp, upgraded, &mut reader).await {
                    return;
                }
                session
            }
            None => {
                let session = h.engine().open(token, Transport::WebSocket(tcp.clone()));
                session.send(h.engine().open_packet(&session.sid, &[]));
                if let Err(reason) = read_buffered(&h, &session, &tcp, upgraded, &mut reader) {
                    finish(&h, &session, reason);
                    shutdown(&tcp);
                    return;
                }
                session
            }
        };
        run_websocket(&h, &session, &tcp, reader).await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(axum::body::Body::empty())
        .unwrap_or_else(|_| refuse(3, "Bad request"))
}

/// Reads what hyper had already read past the upgrade request, then lets the connection go:
/// from here on the session reads and writes the TCP stream itself.
fn read_buffered<H: Handler>(
    h: &Arc<H>,
    session: &Arc<Session<H::Data>>,
    tcp: &TcpStream,
    upgraded: hyper::upgrade::Upgraded,
    reader: &mut ws::Reader,
) -> Result<(), CloseReason> {
    drain_upgraded(upgraded, |data| frames(h, session, tcp, reader, data))
}

/// Hands `on` every byte the upgraded connection has without waiting.
fn drain_upgraded(
    upgraded: hyper::upgrade::Upgraded,
    mut on: impl FnMut(&mut [u8]) -> Result<(), CloseReason>,
) -> Result<(), CloseReason> {
    let mut upgraded = hyper_util::rt::TokioIo::new(upgraded);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    loop {
        let mut buf = [0u8; READ_CHUNK];
        let mut read = ReadBuf::new(&mut buf);
        match Pin::new(&mut upgraded).poll_read(&mut cx, &mut read) {
            Poll::Ready(Ok(())) if read.filled().is_empty() => return Err(CloseReason::TransportClose),
            Poll::Ready(Ok(())) => {
                let n = read.filled().len();
                on(&mut buf[..n])?;
            }
            Poll::Ready(Err(_)) => return Err(CloseReason::TransportError),
            Poll::Pending => return Ok(()),
        }
    }
}

/// Handles one client message or control frame of a WebSocket session.
fn incoming<H: Handler>(
    h: &Arc<H>,
    session: &Arc<Session<H::Data>>,
    tcp: &TcpStream,
    m: ws::Incoming<'_>,
) -> Result<(), CloseReason> {
    match m {
        ws::Incoming::Text(t) => match packet::parse_engine(t) {
            Ok(EnginePacket::Message(text)) => h.on_message(session, text),
            Ok(EnginePacket::Pong(_)) => session.on_pong(&h.engine().settings),
            Ok(EnginePacket::Close) => return Err(CloseReason::ClientClose),
            Ok(EnginePacket::Ping(_) | EnginePacket::Upgrade | EnginePacket::Noop) => {}
            Err(e) => tracing::debug!(sid = %session.sid, error = %e, "bad packet ignored"),
        },
        ws::Incoming::Binary(b) => h.on_binary(session, b),
        ws::Incoming::Ping(p) => write_control(session, tcp, &ws::frame(ws::OP_PONG, p)),
        ws::Incoming::Pong => {}
        ws::Incoming::Close => return Err(CloseReason::TransportClose),
    }
    Ok(())
}

/// The outcome of a read error, after telling the client why with a close frame.
fn refused<D>(session: &Session<D>, tcp: &TcpStream, e: ws::WsError) -> CloseReason {
    tracing::debug!(sid = %session.sid, error = %e, "closing a websocket");
    write_control(session, tcp, &ws::close_frame(e.close_code()));
    match e {
        ws::WsError::TooBig => CloseReason::TooBig,
        _ => CloseReason::TransportError,
    }
}

/// Handles the client frames in `data`.
fn frames<H: Handler>(
    h: &Arc<H>,
    session: &Arc<Session<H::Data>>,
    tcp: &TcpStream,
    reader: &mut ws::Reader,
    data: &mut [u8],
) -> Result<(), CloseReason> {
    let mut outcome = Ok(());
    let fed = reader.feed(data, h.engine().settings.max_payload, &mut |m| {
        if outcome.is_ok() {
            outcome = incoming(h, session, tcp, m);
        }
    });
    fed.map_err(|e| refused(session, tcp, e))?;
    outcome
}

/// One `send(2)`, without waiting: through tokio, so that a full socket clears the
/// write readiness the session's task then waits on.
fn write(tcp: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    tcp.try_io(tokio::io::Interest::WRITABLE, || {
        socket2::SockRef::from(tcp).send(bytes)
    })
}

/// Writes a control frame, best effort: only between two data frames (never inside a
/// partly written one), and dropped when the socket would block.
fn write_control<D>(session: &Session<D>, tcp: &TcpStream, frame: &[u8]) {
    let st = session.state();
    if st.queue.is_empty() {
        let _ = tcp.try_write(frame);
    }
}

fn shutdown(tcp: &TcpStream) {
    let _ = socket2::SockRef::from(tcp).shutdown(std::net::Shutdown::Both);
}

/// Reads every byte available now; `Err` when the session must end.
fn read_now<H: Handler>(
    h: &Arc<H>,
    session: &Arc<Session<H::Data>>,
    tcp: &TcpStream,
    reader: &mut ws::Reader,
) -> Result<(), CloseReason> {
    loop {
        let mut buf = [0u8; READ_CHUNK];
        match tcp.try_read(&mut buf) {
            Ok(0) => return Err(CloseReason::TransportClose),
            Ok(n) => frames(h, session, tcp, reader, &mut buf[..n])?,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(CloseReason::TransportError),
        }
    }
}

/// What a flush left.
enum Flushed {
    /// Nothing queued.
    Empty,
    /// The socket's send buffer is full.
    Blocked,
}

/// Writes queued packets until the queue is empty or the socket would block.
fn flush<D>(session: &Session<D>, tcp: &TcpStream) -> Result<Flushed, CloseReason> {
    let mut st = session.state();
    loop {
        if st.queue.is_empty() {
            return Ok(Flushed::Empty);
        }
        // What waited goes out together: one writev for up to FLUSH_BATCH frames, so a
        // consumer that fell behind costs fewer system calls per frame, not more.
        let written = st.written;
        let mut slices = [io::IoSlice::new(&[]); FLUSH_BATCH];
        let mut count = 0;
        for (slot, packet) in slices.iter_mut().zip(st.queue.iter()) {
            let frame = packet.frame();
            *slot = io::IoSlice::new(if count == 0 { &frame[written..] } else { frame });
            count += 1;
        }
        match tcp.try_write_vectored(&slices[..count]) {
            Ok(0) => return Err(CloseReason::TransportError),
            Ok(mut n) => {
                n += written;
                st.written = 0;
                while let Some(front) = st.queue.front() {
                    let len = front.frame().len();
                    if n < len {
                        st.written = n;
                        break;
                    }
                    n -= len;
                    st.queue.pop_front();
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flushed::Blocked),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(CloseReason::TransportError),
        }
    }
}

/// A WebSocket session's one task: reads, heartbeat, and writes that had to wait.
async fn run_websocket<H: Handler>(
    h: &Arc<H>,
    session: &Arc<Session<H::Data>>,
    tcp: &Arc<TcpStream>,
    mut reader: ws::Reader,
) {
    let settings = h.engine().settings.clone();
    let sleep = tokio::time::sleep_until(session.state().heartbeat.next);
    tokio::pin!(sleep);
    let reason = loop {
        let closing = session.state().closing;
        if let Some(closing) = closing {
            if let Closing::Flush(_) = closing {
                let _ = tokio::time::timeout(FLUSH_ON_CLOSE, async {
                    while let Ok(Flushed::Blocked) = flush(session, tcp) {
                        if tcp.writable().await.is_err() {
                            break;
                        }
                    }
                })
                .await;
                write_control(session, tcp, &ws::close_frame(1000));
            }
            break closing.reason();
        }
        let blocked = match flush(session, tcp) {
            Ok(Flushed::Empty) => false,
            Ok(Flushed::Blocked) => true,
            Err(reason) => break reason,
        };
        tokio::select! {
            ready = tcp.readable() => {
                if ready.is_err() {
                    break CloseReason::TransportError;
                }
                if let Err(reason) = read_now(h, session, tcp, &mut reader) {
                    break reason;
                }
            }
            () = session.wake.notified() => {}
            ready = tcp.writable(), if blocked => {
                if ready.is_err() {
                    break CloseReason::TransportError;
                }
            }
            () = &mut sleep => match session.heartbeat(&settings) {
                Ok(next) => sleep.as_mut().reset(next),
                Err(reason) => break reason,
            },
        }
    };
    shutdown(tcp);
    finish(h, session, reason);
}

/// How far an upgrade got.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    Waiting,
    Probed,
    Upgraded,
    Failed,
}

/// Reads frames during an upgrade: the probe, then the upgrade packet, which moves the
/// session onto this WebSocket; frames after it (in the same read) are the session's.
fn probe_frames<H: Handler>(
    h: &Arc<H>,
    session: &Arc<Session<H::Data>>,
    tcp: &Arc<TcpStream>,
    reader: &mut ws::Reader,
    data: &mut [u8],
    step: &mut Step,
) -> Result<(), CloseReason> {
    let mut outcome = Ok(());
    let fed = reader.feed(data, h.engine().settings.max_payload, &mut |m| match (*step, m) {
        (Step::Upgraded, m) => {
            if outcome.is_ok() {
                outcome = incoming(h, session, tcp, m);
            }
        }
        (Step::Failed, _) => {}
        (_, ws::Incoming::Text("2probe")) => {
            let _ = tcp.try_write(&ws::frame(ws::OP_TEXT, b"3probe"));
            session.state().upgrading = true;
            // The pending poll returns (`6`), so the client can pause polling.
            session.wake.notify_one();
            *step = Step::Probed;
        }
        (Step::Probed, ws::Incoming::Text("5")) => {
            {
                let mut st = session.state();
                st.transport = Transport::WebSocket(tcp.clone());
                st.upgrading = false;
                st.written = 0;
            }
            // The polling heartbeat task sees the switch and stops; this task takes over.
            session.closed.notify_one();
            tracing::debug!(sid = %session.sid, "upgraded to websocket");
            *step = Step::Upgraded;
        }
        (_, ws::Incoming::Ping(p)) => {
            let _ = tcp.try_write(&ws::frame(ws::OP_PONG, p));
        }
        (_, ws::Incoming::Pong) => {}
        (_, _) => *step = Step::Failed,
    });
    if let Err(e) = fed {
        if *step == Step::Upgraded {
            return Err(refused(session, tcp, e));
        }
        *step = Step::Failed;
    }
    outcome
}

/// The upgrade of a polling session: answers the client's `2probe` on the new WebSocket,
/// makes the pending poll return, and on `5` moves the session onto the WebSocket. `false`
/// when the session did not move (the client gave up and carries on polling, or the session
/// ended: then it is finished here).
async fn probe<H: Handler>(
    h: &Arc<H>,
    session: &Arc<Session<H::Data>>,
    tcp: &Arc<TcpStream>,
    upgraded: hyper::upgrade::Upgraded,
    reader: &mut ws::Reader,
) -> bool {
    let mut step = Step::Waiting;
    let mut outcome = drain_upgraded(upgraded, |data| probe_frames(h, session, tcp, reader, data, &mut step));
    if outcome.is_ok() {
        outcome = tokio::time::timeout(UPGRADE_TIMEOUT, async {
            while matches!(step, Step::Waiting | Step::Probed) {
                tcp.readable().await.map_err(|_| CloseReason::TransportError)?;
                read_probe(h, session, tcp, reader, &mut step)?;
            }
            Ok(())
        })
        .await
        .unwrap_or(Err(CloseReason::TransportError));
    }
    match (step, outcome) {
        (Step::Upgraded, Ok(())) => true,
        (Step::Upgraded, Err(reason)) => {
            shutdown(tcp);
            finish(h, session, reason);
            false
        }
        _ => {
            session.state().upgrading = false;
            shutdown(tcp);
            false
        }
    }
}

/// One read during an upgrade.
fn read_probe<H: Handler>(
    h: &Arc<H>,
    session: &Arc<Session<H::Data>>,
    tcp: &Arc<TcpStream>,
    reader: &mut ws::Reader,
    step: &mut Step,
) -> Result<(), CloseReason> {
    let mut buf = [0u8; READ_CHUNK];
    match tcp.try_read(&mut buf) {
        Ok(0) => Err(CloseReason::TransportClose),
        Ok(n) => probe_frames(h, session, tcp, reader, &mut buf[..n], step),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(_) => Err(CloseReason::TransportError),
    }
}
