//! HTTP long-polling: a POST carries the client's packets, a GET waits for the server's. A
//! polling session is a heartbeat task plus the requests that poll it.

use super::{refuse, text};
use crate::close::{Closing, DisconnectReason};
use crate::engine::{Handler, finish};
use crate::packet::{self, EnginePacket, SEPARATOR};
use crate::session::{Inner, Session, Transport};
use crate::timers::after;
use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use std::sync::Arc;
use tokio::time::Instant;

/// The packets of one POST body, handed to the layer above in order. While the layer above
/// has paused reading, the request waits before its next packet: the client sends no other
/// POST meanwhile. A body over the payload limit, or a packet that does not parse, ends the
/// session, as the reference server does.
pub(super) async fn post<H: Handler>(h: &Arc<H>, session: &Arc<Session<H::Data>>, body: Body) -> Response {
    let Ok(body) = axum::body::to_bytes(body, h.engine().settings.max_payload).await else {
        finish(h, session, DisconnectReason::TooBig);
        return (StatusCode::PAYLOAD_TOO_LARGE, "payload too large").into_response();
    };
    for raw in body.split(|b| *b == SEPARATOR) {
        session.reading_allowed().await;
        if session.is_closed() {
            break;
        }
        let Ok(raw) = std::str::from_utf8(raw) else {
            finish(h, session, DisconnectReason::ParseError);
            return refuse(3, "Bad request");
        };
        if let Some(encoded) = raw.strip_prefix('b') {
            match base64::engine::general_purpose::STANDARD.decode(encoded) {
                Ok(data) => h.on_binary(session, &data),
                Err(_) => {
                    finish(h, session, DisconnectReason::ParseError);
                    return refuse(3, "Bad request");
                }
            }
            continue;
        }
        match packet::parse(raw) {
            Ok(EnginePacket::Message(text)) => h.on_message(session, text),
            Ok(EnginePacket::Pong(_)) => session.on_pong(&h.engine().settings),
            Ok(EnginePacket::Close) => {
                // A poll still waiting ends with a noop, as the reference server answers it.
                session.state().closing.get_or_insert(Closing::Client);
                session.wake_all();
                finish(h, session, DisconnectReason::ClientClose);
                break;
            }
            Ok(EnginePacket::Ping(_) | EnginePacket::Upgrade | EnginePacket::Noop) => {}
            Err(e) => {
                tracing::debug!(sid = %session.sid, error = %e, "malformed packet: closing");
                finish(h, session, DisconnectReason::ParseError);
                return refuse(3, "Bad request");
            }
        }
    }
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/html"))], "ok").into_response()
}

/// One long-poll: whatever is queued, or wait for something (a ping comes every interval).
pub(super) async fn poll<H: Handler>(h: &Arc<H>, session: &Arc<Session<H::Data>>) -> Response {
    {
        let mut st = session.state();
        if matches!(st.transport, Transport::WebSocket(_)) {
            drop(st);
            return refuse(3, "Bad request");
        }
        if st.polling {
            // Two polls at once: a broken client, which the reference server closes (the
            // waiting poll gets the close packet) while refusing the second with an empty 400.
            st.closing.get_or_insert(Closing::Now(DisconnectReason::TransportError));
            drop(st);
            tracing::debug!(sid = %session.sid, "overlapping polls: closing");
            session.wake_all();
            return StatusCode::BAD_REQUEST.into_response();
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
                if matches!(closing, Closing::Flush(_)) && !st.out.queue.is_empty() {
                    // What the server said last (a Socket.IO disconnect) goes alone: a client
                    // that got it with the close packet would handle the close first, and
                    // take a kick for a lost connection. The next poll gets the close.
                    return text(drain_queue(&mut st));
                }
                drop(st);
                finish(h, session, closing.reason());
                let last = if closing == Closing::Client { "6" } else { "1" };
                return text(Bytes::from_static(last.as_bytes()));
            }
            if !st.out.queue.is_empty() {
                return text(drain_queue(&mut st));
            }
            if st.upgrading {
                return text(Bytes::from_static(b"6"));
            }
        }
        woken.await;
    }
}

/// The queued packets as one polling payload.
fn drain_queue(st: &mut Inner) -> Vec<u8> {
    let mut body = Vec::with_capacity(st.out.queue.iter().map(|p| p.text().len() + 1).sum());
    for (i, p) in st.out.queue.drain(..).enumerate() {
        if i > 0 {
            body.push(SEPARATOR);
        }
        body.extend_from_slice(p.text());
    }
    body
}

/// A polling session's heartbeat, until it closes or upgrades.
pub(super) async fn heartbeat<H: Handler>(h: Arc<H>, session: Arc<Session<H::Data>>) {
    let settings = h.engine().settings.clone();
    let mut next = after(Instant::now(), settings.ping_interval);
    loop {
        let closed = session.closed.notified();
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = closed => {}
        }
        let (upgraded, closing) = {
            let st = session.state();
            (matches!(st.transport, Transport::WebSocket(_)), st.closing)
        };
        if upgraded {
            return;
        }
        if let Some(closing) = closing {
            // A flushing close gives the client's next polls (one for what is queued, one for
            // the close packet) a chance to come; the session ends when they did, or after
            // a ping timeout.
            if matches!(closing, Closing::Flush(_)) {
                let _ = tokio::time::timeout(settings.ping_timeout, async {
                    loop {
                        let closed = session.closed.notified();
                        if h.engine().get(&session.sid).is_none() {
                            return;
                        }
                        closed.await;
                    }
                })
                .await;
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
