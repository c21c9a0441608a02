//! WebSocket sessions over the connection's own TCP stream: a new session, or the upgrade of
//! a polling one (`2probe`, `3probe`, `5`). A WebSocket session is one task that reads the
//! client's frames, keeps the heartbeat and writes what could not be written at once; the
//! queued frames go out together, one `writev` per batch.

use super::{EngineQuery, handshake_token, refuse};
use crate::close::{Closing, DisconnectReason};
use crate::engine::{Handler, finish};
use crate::frame;
use crate::net::ConnInfo;
use crate::net::TcpConn;
use crate::outbox::Flushed;
use crate::packet::{self, EnginePacket};
use crate::session::{Session, Transport};
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;

/// How long an upgrade may take from the probe to the `5` packet.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing WebSocket may take to write what is queued before it.
const FLUSH_ON_CLOSE: Duration = Duration::from_secs(2);
/// Bytes read from a socket per system call.
pub(crate) const READ_CHUNK: usize = 4096;

/// What a WebSocket upgrade request is for.
enum Probed<D> {
    /// A new session.
    New,
    /// The upgrade of this polling session.
    Polling(Arc<Session<D>>),
    /// A session that already has its WebSocket, or one on the way.
    Taken,
}

/// Answers a WebSocket upgrade request: a new session, or the upgrade of a polling one.
pub(super) fn upgrade<H: Handler>(
    h: Arc<H>,
    info: ConnInfo,
    q: &EngineQuery,
    sid: Option<&str>,
    mut request: Request,
) -> Response {
    let headers = request.headers();
    let Some(accept) = handshake_accept(headers) else {
        return refuse(3, "Bad request");
    };
    let probed = match sid {
        None => Probed::New,
        Some(sid) => match h.engine().get(sid) {
            Some(s) if !s.is_websocket() && !s.state().upgrading => Probed::Polling(s),
            // A second WebSocket for a session that has one: accepted, then closed, as the
            // reference server does; the session carries on.
            Some(_) => Probed::Taken,
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
        let mut reader = frame::Reader::default();
        let session = match probed {
            Probed::Polling(session) => {
                // Boxed: an upgrade's future would otherwise stay in the session's task.
                if !Box::pin(probe(&h, &session, &tcp, upgraded, &mut reader)).await {
                    return;
                }
                session
            }
            Probed::Taken => {
                drop(upgraded);
                let _ = tcp.try_write(&frame::close_frame(frame::CLOSE_NORMAL));
                shutdown(&tcp);
                return;
            }
            Probed::New => {
                let session = h.engine().open(token, Transport::WebSocket(tcp.clone()));
                session.send(h.engine().open_packet(&session.sid, &[]));
                h.engine().keep_heartbeat(&session);
                if let Err(reason) = read_buffered(&h, &session, &tcp, upgraded, &mut reader) {
                    finish(&h, &session, reason);
                    shutdown(&tcp);
                    return;
                }
                session
            }
        };
        run_websocket(&h, &session, &tcp, &mut reader).await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(axum::body::Body::empty())
        .unwrap_or_else(|_| refuse(3, "Bad request"))
}

/// Checks a WebSocket handshake request (RFC 6455 §4.2.1: `Connection: upgrade`,
/// `Upgrade: websocket`, version 13, a key) and returns its `Sec-WebSocket-Accept`.
pub(crate) fn handshake_accept(headers: &axum::http::HeaderMap) -> Option<String> {
    let is_upgrade = headers
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
        && headers
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
        && headers.get(header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) == Some(b"13");
    let key = headers.get(header::SEC_WEBSOCKET_KEY).filter(|_| is_upgrade)?;
    Some(frame::accept_key(key.as_bytes()))
}

/// Reads what hyper had already read past the upgrade request, then lets the connection go:
/// from here on the session reads and writes the TCP stream itself.
fn read_buffered<H: Handler>(
    h: &Arc<H>,
    session: &Arc<Session<H::Data>>,
    tcp: &TcpStream,
    upgraded: hyper::upgrade::Upgraded,
    reader: &mut frame::Reader,
) -> Result<(), DisconnectReason> {
    drain_upgraded(upgraded, |data| frames(h, session, tcp, reader, data))
}

/// Hands `on` every byte the upgraded connection has without waiting.
pub(crate) fn drain_upgraded(
    upgraded: hyper::upgrade::Upgraded,
    mut on: impl FnMut(&mut [u8]) -> Result<(), DisconnectReason>,
) -> Result<(), DisconnectReason> {
    let mut upgraded = hyper_util::rt::TokioIo::new(upgraded);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    loop {
        let mut buf = [0u8; READ_CHUNK];
        let mut read = ReadBuf::new(&mut buf);
        match Pin::new(&mut upgraded).poll_read(&mut cx, &mut read) {
            Poll::Ready(Ok(())) if read.filled().is_empty() => return Err(DisconnectReason::TransportClose),
            Poll::Ready(Ok(())) => {
                let n = read.filled().len();
                on(&mut buf[..n])?;
            }
            Poll::Ready(Err(_)) => return Err(DisconnectReason::TransportError),
            Poll::Pending => return Ok(()),
        }
    }
}

/// Handles one client message or control frame of a WebSocket session.
fn incoming<H: Handler>(
    h: &Arc<H>,
    session: &Arc<Session<H::Data>>,
    tcp: &TcpStream,
    m: frame::Incoming<'_>,
) -> Result<(), DisconnectReason> {
    match m {
        frame::Incoming::Text(t) => match packet::parse(t) {
            Ok(EnginePacket::Message(text)) => h.on_message(session, text),
            Ok(EnginePacket::Pong(_)) => session.on_pong(&h.engine().settings),
            Ok(EnginePacket::Close) => {
                write_control(session, tcp, &frame::close_frame(frame::CLOSE_NORMAL));
                return Err(DisconnectReason::ClientClose);
            }
            Ok(EnginePacket::Ping(_) | EnginePacket::Upgrade | EnginePacket::Noop) => {}
            Err(e) => {
                tracing::debug!(sid = %session.sid, error = %e, "malformed packet: closing");
                write_control(session, tcp, &frame::close_frame(frame::CLOSE_NORMAL));
                return Err(DisconnectReason::ParseError);
            }
        },
        frame::Incoming::Binary(b) => h.on_binary(session, b),
        frame::Incoming::Ping(p) => write_control(session, tcp, &frame::frame(frame::OP_PONG, p)),
        frame::Incoming::Pong => {}
        // RFC 6455 §5.5.1: a close frame is answered with one, echoing its code.
        frame::Incoming::Close(code) => {
            write_control(session, tcp, &frame::close_frame(code.unwrap_or(frame::CLOSE_NORMAL)));
            return Err(DisconnectReason::ClientClose);
        }
    }
    Ok(())
}

/// The outcome of a read error, after telling the client why with a close frame.
fn refused<D>(session: &Session<D>, tcp: &TcpStream, e: frame::WsError) -> DisconnectReason {
    tracing::debug!(sid = %session.sid, error = %e, "closing a websocket");
    write_control(session, tcp, &frame::close_frame(e.close_code()));
    match e {
        frame::WsError::TooBig => DisconnectReason::TooBig,
        _ => DisconnectReason::TransportError,
    }
}

/// Handles the client frames in `data`.
fn frames<H: Handler>(
    h: &Arc<H>,
    session: &Arc<Session<H::Data>>,
    tcp: &TcpStream,
    reader: &mut frame::Reader,
    data: &mut [u8],
) -> Result<(), DisconnectReason> {
    let mut outcome = Ok(());
    let fed = reader.feed(data, h.engine().settings.max_payload, &mut |m| {
        if outcome.is_ok() {
            outcome = incoming(h, session, tcp, m);
        }
    });
    fed.map_err(|e| refused(session, tcp, e))?;
    outcome
}

/// Writes a control frame, best effort: only between two data frames (never inside a
/// partly written one), and dropped when the socket would block.
fn write_control<D>(session: &Session<D>, tcp: &TcpStream, bytes: &[u8]) {
    let st = session.state();
    if st.out.queue.is_empty() {
        let _ = tcp.try_write(bytes);
    }
}

pub(crate) fn shutdown(tcp: &TcpStream) {
    let _ = socket2::SockRef::from(tcp).shutdown(std::net::Shutdown::Both);
}

/// Reads every byte available now; `Err` when the session must end.
fn read_now<H: Handler>(
    h: &Arc<H>,
    session: &Arc<Session<H::Data>>,
    tcp: &TcpStream,
    reader: &mut frame::Reader,
) -> Result<(), DisconnectReason> {
    loop {
        let mut buf = [0u8; READ_CHUNK];
        match tcp.try_read(&mut buf) {
            Ok(0) => return Err(DisconnectReason::TransportClose),
            Ok(n) => {
                frames(h, session, tcp, reader, &mut buf[..n])?;
                // A paused or closing session reads no further: what stays unread is the
                // client's backpressure.
                let st = session.state();
                if st.paused || st.closing.is_some() {
                    return Ok(());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(DisconnectReason::TransportError),
        }
    }
}

/// Writes queued packets until the queue is empty or the socket would block.
fn flush<D>(session: &Session<D>, tcp: &TcpStream) -> Result<Flushed, DisconnectReason> {
    session
        .state()
        .out
        .flush(tcp)
        .map_err(|_| DisconnectReason::TransportError)
}

/// A WebSocket session's one task: reads, and writes that had to wait (the engine's wheel
/// keeps the heartbeat).
async fn run_websocket<H: Handler>(
    h: &Arc<H>,
    session: &Arc<Session<H::Data>>,
    tcp: &Arc<TcpConn>,
    reader: &mut frame::Reader,
) {
    // Polled by hand rather than a `select!` over readiness futures: the task then keeps no
    // future between two wake-ups (≈ 370 bytes in each session's task).
    let closing = std::future::poll_fn(|cx| poll_session(cx, h, session, tcp, reader)).await;
    session.state().unpark();
    let reason = match closing {
        Closing::Flush(reason) => {
            // Boxed: a future the task needs once would otherwise sit in every session's task
            // for all its life.
            Box::pin(flush_on_close(session, tcp)).await;
            reason
        }
        closing => closing.reason(),
    };
    shutdown(tcp);
    finish(h, session, reason);
}

/// Runs the session until it closes: reads what the client sent, writes what is queued when
/// the socket takes it, and sleeps otherwise (woken by the socket's readiness, or by
/// [`Session::wake_writer`]: something queued, a close, reading resumed).
fn poll_session<H: Handler>(
    cx: &mut Context<'_>,
    h: &Arc<H>,
    session: &Arc<Session<H::Data>>,
    tcp: &TcpConn,
    reader: &mut frame::Reader,
) -> Poll<Closing> {
    loop {
        // Before writing: a close that drops the queue must not write it first.
        if let Some(closing) = session.state().closing {
            return Poll::Ready(closing);
        }
        let blocked = match flush(session, tcp) {
            Ok(Flushed::Empty) => false,
            Ok(Flushed::Blocked) => true,
            Err(reason) => return Poll::Ready(Closing::Now(reason)),
        };
        if blocked {
            match tcp.poll_write_ready(cx) {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(_)) => return Poll::Ready(Closing::Now(DisconnectReason::TransportError)),
                Poll::Pending => {}
            }
        }
        let paused = {
            let mut st = session.state();
            if let Some(closing) = st.closing {
                return Poll::Ready(closing);
            }
            if !blocked && !st.out.queue.is_empty() {
                continue;
            }
            st.park(cx);
            st.paused
        };
        if paused {
            return Poll::Pending;
        }
        match tcp.poll_read_ready(cx) {
            Poll::Ready(Ok(())) => {
                if let Err(reason) = read_now(h, session, tcp, reader) {
                    return Poll::Ready(Closing::Now(reason));
                }
            }
            Poll::Ready(Err(_)) => return Poll::Ready(Closing::Now(DisconnectReason::TransportError)),
            Poll::Pending => return Poll::Pending,
        }
    }
}

/// Writes what is queued, then a close frame, within [`FLUSH_ON_CLOSE`].
async fn flush_on_close<D>(session: &Session<D>, tcp: &TcpConn) {
    let _ = tokio::time::timeout(FLUSH_ON_CLOSE, async {
        while let Ok(Flushed::Blocked) = flush(session, tcp) {
            if tcp.writable().await.is_err() {
                break;
            }
        }
    })
    .await;
    write_control(session, tcp, &frame::close_frame(1000));
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
    tcp: &Arc<TcpConn>,
    reader: &mut frame::Reader,
    data: &mut [u8],
    step: &mut Step,
) -> Result<(), DisconnectReason> {
    let mut outcome = Ok(());
    let fed = reader.feed(data, h.engine().settings.max_payload, &mut |m| match (*step, m) {
        (Step::Upgraded, m) => {
            if outcome.is_ok() {
                outcome = incoming(h, session, tcp, m);
            }
        }
        (Step::Failed, _) => {}
        (_, frame::Incoming::Text("2probe")) => {
            let _ = tcp.try_write(&frame::frame(frame::OP_TEXT, b"3probe"));
            session.state().upgrading = true;
            // The pending poll returns (`6`), so the client can pause polling.
            session.wake.notify_one();
            *step = Step::Probed;
        }
        (Step::Probed, frame::Incoming::Text("5")) => {
            {
                let mut st = session.state();
                st.transport = Transport::WebSocket(tcp.clone());
                st.upgrading = false;
                st.out.written = 0;
            }
            // The polling heartbeat task sees the switch and stops; the engine's wheel takes
            // over.
            session.closed.notify_one();
            h.engine().keep_heartbeat(session);
            tracing::debug!(sid = %session.sid, "upgraded to websocket");
            *step = Step::Upgraded;
        }
        (_, frame::Incoming::Ping(p)) => {
            let _ = tcp.try_write(&frame::frame(frame::OP_PONG, p));
        }
        (_, frame::Incoming::Pong) => {}
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
    tcp: &Arc<TcpConn>,
    upgraded: hyper::upgrade::Upgraded,
    reader: &mut frame::Reader,
) -> bool {
    let mut step = Step::Waiting;
    let mut outcome = drain_upgraded(upgraded, |data| probe_frames(h, session, tcp, reader, data, &mut step));
    if outcome.is_ok() {
        outcome = tokio::time::timeout(UPGRADE_TIMEOUT, async {
            while matches!(step, Step::Waiting | Step::Probed) {
                tcp.readable().await.map_err(|_| DisconnectReason::TransportError)?;
                read_probe(h, session, tcp, reader, &mut step)?;
            }
            Ok(())
        })
        .await
        .unwrap_or(Err(DisconnectReason::TransportError));
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
    tcp: &Arc<TcpConn>,
    reader: &mut frame::Reader,
    step: &mut Step,
) -> Result<(), DisconnectReason> {
    let mut buf = [0u8; READ_CHUNK];
    match tcp.try_read(&mut buf) {
        Ok(0) => Err(DisconnectReason::TransportClose),
        Ok(n) => probe_frames(h, session, tcp, reader, &mut buf[..n], step),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(_) => Err(DisconnectReason::TransportError),
    }
}
