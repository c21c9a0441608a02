//! A plain WebSocket (RFC 6455) without Engine.IO, for protocols that bring their own framing
//! of messages (Phoenix Channels): the same handshake check, TCP takeover, direct writes,
//! bounded outbox and `writev` flushes as an Engine.IO session, and one task per socket.
//!
//! [`accept`] checks the handshake and answers it; the returned [`Upgrade`] becomes a
//! [`WebSocket`] (the sending side, shared with whoever pushes to the client) and a
//! [`Reading`] (the one task: reads, writes that had to wait, the close). A [`WsServer`]
//! holds what its sockets share: the settings, and the one task that keeps their idle
//! timeouts.

use crate::close::DisconnectReason;
use crate::frame::{self, Incoming};
use crate::net::ConnInfo;
use crate::net::TcpConn;
use crate::outbox::{Flushed, Outbox, Pushed};
use crate::packet::Packet;
use crate::stats;
use crate::timers::{Wheel, after};
use crate::transport::ws::{READ_CHUNK, drain_upgraded, handshake_accept, shutdown};
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::time::Instant;

/// How long a closing socket may take to write what is queued and its close frame.
const FLUSH_ON_CLOSE: Duration = Duration::from_secs(2);

pub use crate::frame::CLOSE_NORMAL;
/// Close code: going away (an idle client, a kick); browsers' clients reconnect.
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code: try again later (a slow consumer, the server unavailable).
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;

/// Limits and close codes of plain WebSockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsConfig {
    /// The largest message a client may send, in bytes; beyond it the socket closes with
    /// 1009 and [`DisconnectReason::TooBig`]. Default 1,000,000.
    pub max_payload: usize,
    /// Frames a socket may hold that the kernel did not take at once; a frame that finds the
    /// queue full closes the socket with `slow_consumer_code` and
    /// [`DisconnectReason::SlowConsumer`]. At least 1; default 1024.
    pub max_queue: usize,
    /// How long a client may send no frame at all (pings included) before the socket closes
    /// with `idle_code` and [`DisconnectReason::IdleTimeout`]; `None` never. Default 60 s.
    pub idle_timeout: Option<Duration>,
    /// The close code of an idle timeout. Default 1001.
    pub idle_code: u16,
    /// The close code of a slow consumer. Default 1013.
    pub slow_consumer_code: u16,
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            max_payload: 1_000_000,
            max_queue: 1024,
            idle_timeout: Some(Duration::from_secs(60)),
            idle_code: CLOSE_GOING_AWAY,
            slow_consumer_code: CLOSE_TRY_AGAIN_LATER,
        }
    }
}

/// Why a request cannot become a WebSocket.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// Not a version 13 upgrade request with a key.
    #[error("not a WebSocket handshake")]
    NotWebSocket,
    /// The HTTP connection cannot be taken over (HTTP/2, or already upgraded).
    #[error("connection cannot be upgraded")]
    NotUpgradable,
}

impl HandshakeError {
    /// The HTTP status that answers it.
    pub fn status(&self) -> StatusCode {
        match self {
            HandshakeError::NotWebSocket => StatusCode::BAD_REQUEST,
            HandshakeError::NotUpgradable => StatusCode::UPGRADE_REQUIRED,
        }
    }
}

/// The plain WebSockets of one server: their settings, and the one task that closes the
/// idle ones (one per server, not a timer in each socket's task).
pub struct WsServer {
    config: WsConfig,
    idle: Option<Wheel<WebSocket>>,
}

impl WsServer {
    /// A server for sockets with `config`.
    pub fn new(config: WsConfig) -> Self {
        let idle = config.idle_timeout.map(|timeout| {
            let code = config.idle_code;
            let visit = move |socket: &WebSocket, now: Instant| {
                let st = socket.state();
                if st.closing.is_some() {
                    return None;
                }
                // A paused socket reads nothing: its client is not idle, the handler is busy.
                let due = after(if st.paused { now } else { st.last_read }, timeout);
                if due > now {
                    return Some(due);
                }
                drop(st);
                socket.set_closing(Close {
                    reason: DisconnectReason::IdleTimeout,
                    code: Some(code),
                    text: "",
                    flush: true,
                });
                None
            };
            // Kept to a sixteenth of the timeout, at most a second.
            let tick = (timeout / 16).min(Duration::from_secs(1));
            Wheel::new(tick, Box::new(visit))
        });
        Self { config, idle }
    }

    /// The settings of its sockets.
    pub fn config(&self) -> &WsConfig {
        &self.config
    }
}

/// A checked handshake whose 101 answer has not yet reached the client.
pub struct Upgrade {
    on_upgrade: hyper::upgrade::OnUpgrade,
    tcp: Arc<TcpConn>,
}

/// Checks a WebSocket handshake and builds its 101 answer, with the first subprotocol the
/// client offers that is among `protocols` (none when it offers none of them). The server
/// must run with [`ConnInfo`] as its connect info: the socket takes the TCP stream over.
pub fn accept(
    request: &mut Request,
    info: &ConnInfo,
    protocols: &[&'static str],
) -> Result<(Response, Upgrade), HandshakeError> {
    let headers = request.headers();
    let accept = handshake_accept(headers).ok_or(HandshakeError::NotWebSocket)?;
    let protocol = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|offered| protocols.iter().find(|p| **p == offered));
    let on_upgrade = request
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
        .ok_or(HandshakeError::NotUpgradable)?;
    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(p) = protocol {
        response = response.header(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    let response = response
        .body(axum::body::Body::empty())
        .map_err(|_| HandshakeError::NotWebSocket)?;
    let upgrade = Upgrade {
        on_upgrade,
        tcp: info.stream.clone(),
    };
    Ok((response, upgrade))
}

impl Upgrade {
    /// Waits for the 101 to go out and takes the connection over; `None` when the client
    /// went away first.
    pub async fn open(self, server: &WsServer) -> Option<(Arc<WebSocket>, Reading)> {
        let config = &server.config;
        let upgraded = match self.on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade failed");
                return None;
            }
        };
        // Bytes hyper read past the request (a client that did not wait for the 101) are the
        // socket's first frames; they are read when the socket runs.
        let mut early = Vec::new();
        let drained = drain_upgraded(upgraded, |data| {
            early.extend_from_slice(data);
            Ok(())
        });
        let socket = Arc::new(WebSocket {
            tcp: self.tcp,
            state: Mutex::new(State {
                out: Outbox::default(),
                closing: None,
                paused: false,
                last_read: Instant::now(),
                task: None,
            }),
            max_queue: config.max_queue.max(1),
            slow_consumer_code: config.slow_consumer_code,
        });
        if let Err(reason) = drained {
            socket.close_now(reason, None);
        }
        if let (Some(idle), Some(timeout)) = (&server.idle, config.idle_timeout) {
            idle.insert(&socket, after(Instant::now(), timeout));
        }
        let reading = Reading {
            socket: socket.clone(),
            max_payload: config.max_payload,
            reader: frame::Reader::default(),
            early,
        };
        Some((socket, reading))
    }
}

/// How a socket closes.
#[derive(Debug, Clone, Copy)]
struct Close {
    reason: DisconnectReason,
    /// The close frame's code; none for a connection already lost.
    code: Option<u16>,
    /// The close frame's reason text.
    text: &'static str,
    /// Whether what is queued goes out before the close frame.
    flush: bool,
}

struct State {
    out: Outbox,
    closing: Option<Close>,
    /// The handler asked for no more messages until it resumes reading.
    paused: bool,
    /// When the client last sent something (or reading last resumed): the idle timeout
    /// counts from it.
    last_read: Instant,
    /// The socket's task, waiting for something to write, a close or reading to resume.
    task: Option<Waker>,
}

/// The sending side of a plain WebSocket, shared by whoever writes to the client.
pub struct WebSocket {
    tcp: Arc<TcpConn>,
    state: Mutex<State>,
    max_queue: usize,
    slow_consumer_code: u16,
}

impl WebSocket {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends one text frame (built with [`Packet::new`], shareable by many sockets): written
    /// to the socket at once when nothing waits before it, queued otherwise. A full queue
    /// closes the socket as a slow consumer.
    pub fn send(&self, packet: Packet) {
        let mut st = self.state();
        if st.closing.is_some() {
            return;
        }
        match st.out.push(Some(&self.tcp), packet, self.max_queue) {
            Pushed::Done => {}
            Pushed::Queued => wake(st),
            Pushed::Full => {
                stats::count_outbound_dropped();
                tracing::info!("closing a slow consumer");
                st.closing = Some(Close {
                    reason: DisconnectReason::SlowConsumer,
                    code: Some(self.slow_consumer_code),
                    text: "",
                    flush: false,
                });
                wake(st);
            }
            Pushed::Failed => {
                st.closing = Some(Close {
                    reason: DisconnectReason::TransportError,
                    code: None,
                    text: "",
                    flush: false,
                });
                wake(st);
            }
        }
    }

    /// Closes the socket after writing what is queued: then a close frame with `code`, then
    /// the TCP connection is shut down. The first close wins.
    pub fn close(&self, reason: DisconnectReason, code: u16) {
        self.close_with(reason, code, "", true);
    }

    /// [`WebSocket::close`] with a reason text in the close frame (at most 123 bytes: longer
    /// is cut), and without the queue when `flush` is false.
    pub fn close_with(&self, reason: DisconnectReason, code: u16, text: &'static str, flush: bool) {
        self.set_closing(Close {
            reason,
            code: Some(code),
            text,
            flush,
        });
    }

    /// Closes the socket without writing what is queued (a frame already begun is finished):
    /// a close frame with `code` when given, then shutdown.
    pub fn close_now(&self, reason: DisconnectReason, code: Option<u16>) {
        self.set_closing(Close {
            reason,
            code,
            text: "",
            flush: false,
        });
    }

    fn set_closing(&self, close: Close) {
        let mut st = self.state();
        st.closing.get_or_insert(close);
        wake(st);
    }

    /// Whether the socket is closing or closed.
    pub fn is_closed(&self) -> bool {
        self.state().closing.is_some()
    }

    /// Stops reading the client's frames (after those already read) until
    /// [`WebSocket::resume_reading`]: backpressure for a handler whose own queue is full.
    /// The idle timeout does not run meanwhile.
    pub fn pause_reading(&self) {
        self.state().paused = true;
    }

    /// Reads the client's frames again.
    pub fn resume_reading(&self) {
        let mut st = self.state();
        st.paused = false;
        st.last_read = Instant::now();
        wake(st);
    }
}

/// Wakes the socket's task (something queued, a close, reading resumed), after letting the
/// state go.
fn wake(mut st: MutexGuard<'_, State>) {
    let task = st.task.take();
    drop(st);
    if let Some(task) = task {
        task.wake();
    }
}

/// A whole message from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// A text message.
    Text(&'a str),
    /// A binary message.
    Binary(&'a [u8]),
}

/// A plain WebSocket's one task; see [`Reading::run`].
pub struct Reading {
    socket: Arc<WebSocket>,
    max_payload: usize,
    reader: frame::Reader,
    early: Vec<u8>,
}

impl Reading {
    /// Runs the socket until it closes, handing each text message to `on_text` (from this
    /// task: it must not block). Answers pings, ignores binary messages, writes what could
    /// not be written at once, and returns why the socket ended (its [`WsServer`] closes an
    /// idle client).
    pub fn run(self, mut on_text: impl FnMut(&str)) -> impl Future<Output = DisconnectReason> {
        self.run_messages(move |m| match m {
            Message::Text(text) => on_text(text),
            Message::Binary(_) => tracing::debug!("binary message ignored"),
        })
    }

    /// [`Reading::run`], handing binary messages to `on` as well.
    #[allow(clippy::manual_async_fn, reason = "an async fn would keep `self` twice in the task")]
    pub fn run_messages(mut self, mut on: impl FnMut(Message<'_>)) -> impl Future<Output = DisconnectReason> {
        // An async block, not an async fn, so that `self` is kept once in the task, not also
        // as the fn's argument.
        async move {
            let mut early = std::mem::take(&mut self.early);
            if !early.is_empty()
                && let Err(close) = self.frames(&mut early, &mut on)
            {
                self.socket.set_closing(close);
            }
            drop(early);
            // Polled by hand rather than a `select!` over readiness futures: the task then
            // keeps no future between two wake-ups.
            let close = std::future::poll_fn(|cx| self.poll_run(cx, &mut on)).await;
            let socket = &self.socket;
            // The task's waker would keep the ended task allocated.
            socket.state().task = None;
            // Whatever ended the loop, later sends are refused from here on.
            let close = *socket.state().closing.get_or_insert(close);
            // Boxed: a future the task needs once would otherwise sit in every socket's task
            // for all its life.
            Box::pin(say_goodbye(socket, close)).await;
            shutdown(&socket.tcp);
            close.reason
        }
    }

    /// Runs the socket until it closes: reads what the client sent, writes what is queued
    /// when the socket takes it, and sleeps otherwise (woken by the socket's readiness, or by
    /// a send that queued, a close, reading resumed).
    fn poll_run(&mut self, cx: &mut Context<'_>, on: &mut impl FnMut(Message<'_>)) -> Poll<Close> {
        let tcp = self.socket.tcp.clone();
        loop {
            // Before writing: a close that drops the queue must not write it first.
            if let Some(close) = self.socket.state().closing {
                return Poll::Ready(close);
            }
            let blocked = match self.socket.state().out.flush(&tcp) {
                Ok(Flushed::Empty) => false,
                Ok(Flushed::Blocked) => true,
                Err(_) => return Poll::Ready(lost(DisconnectReason::TransportError)),
            };
            if blocked {
                match tcp.poll_write_ready(cx) {
                    Poll::Ready(Ok(())) => continue,
                    Poll::Ready(Err(_)) => return Poll::Ready(lost(DisconnectReason::TransportError)),
                    Poll::Pending => {}
                }
            }
            let paused = {
                let mut st = self.socket.state();
                if let Some(close) = st.closing {
                    return Poll::Ready(close);
                }
                if !blocked && !st.out.queue.is_empty() {
                    continue;
                }
                if !st.task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    st.task = Some(cx.waker().clone());
                }
                st.paused
            };
            if paused {
                return Poll::Pending;
            }
            match tcp.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => {
                    if let Err(close) = self.read_now(on) {
                        return Poll::Ready(close);
                    }
                }
                Poll::Ready(Err(_)) => return Poll::Ready(lost(DisconnectReason::TransportError)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Reads every byte available now.
    fn read_now(&mut self, on_text: &mut impl FnMut(Message<'_>)) -> Result<(), Close> {
        loop {
            let mut buf = [0u8; READ_CHUNK];
            match self.socket.tcp.try_read(&mut buf) {
                Ok(0) => return Err(lost(DisconnectReason::TransportClose)),
                Ok(n) => {
                    self.frames(&mut buf[..n], on_text)?;
                    // A paused or closing socket reads no further: what stays unread is the
                    // client's backpressure.
                    let mut st = self.socket.state();
                    st.last_read = Instant::now();
                    if st.paused || st.closing.is_some() {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(lost(DisconnectReason::TransportError)),
            }
        }
    }

    /// Handles the client frames in `data`.
    fn frames(&mut self, data: &mut [u8], on_text: &mut impl FnMut(Message<'_>)) -> Result<(), Close> {
        let socket = &self.socket;
        let mut client_closed = None;
        let fed = self.reader.feed(data, self.max_payload, &mut |m| match m {
            // Messages after a close (the handler's own, or the client's) are not handled.
            Incoming::Text(text) if client_closed.is_none() && !socket.is_closed() => on_text(Message::Text(text)),
            Incoming::Binary(data) if client_closed.is_none() && !socket.is_closed() => on_text(Message::Binary(data)),
            Incoming::Text(_) | Incoming::Binary(_) => {}
            Incoming::Ping(payload) => socket.send(Packet::control(frame::OP_PONG, payload)),
            Incoming::Pong => {}
            Incoming::Close(code) => client_closed = Some(code.unwrap_or(CLOSE_NORMAL)),
        });
        if let Err(e) = fed {
            tracing::debug!(error = %e, "closing a websocket");
            let reason = match e {
                frame::WsError::TooBig => DisconnectReason::TooBig,
                _ => DisconnectReason::TransportError,
            };
            return Err(Close {
                reason,
                code: Some(e.close_code()),
                text: "",
                flush: false,
            });
        }
        if let Some(code) = client_closed {
            // RFC 6455 §5.5.1: a close frame is answered with one, echoing its code.
            return Err(Close {
                reason: DisconnectReason::ClientClose,
                code: Some(code),
                text: "",
                flush: false,
            });
        }
        Ok(())
    }
}

/// A connection that ended without a goodbye.
fn lost(reason: DisconnectReason) -> Close {
    Close {
        reason,
        code: None,
        text: "",
        flush: false,
    }
}

/// Writes what a close keeps of the queue, then the close frame, within [`FLUSH_ON_CLOSE`]:
/// a client that stopped reading must not hold the socket open.
async fn say_goodbye(socket: &WebSocket, close: Close) {
    {
        let mut st = socket.state();
        if !close.flush {
            st.out.drop_unstarted();
        }
        match close.code {
            Some(code) => {
                let mut payload = code.to_be_bytes().to_vec();
                let text = close.text.as_bytes();
                payload.extend_from_slice(&text[..text.len().min(123)]);
                st.out.queue.push_back(Packet::control(frame::OP_CLOSE, &payload));
            }
            // A lost connection takes nothing more.
            None => return,
        }
    }
    let tcp = &socket.tcp;
    let _ = tokio::time::timeout(FLUSH_ON_CLOSE, async {
        loop {
            let flushed = socket.state().out.flush(tcp);
            if !matches!(flushed, Ok(Flushed::Blocked)) || tcp.writable().await.is_err() {
                break;
            }
        }
    })
    .await;
}
