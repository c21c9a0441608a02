//! The Engine.IO endpoint: request checks, the handshake, and dispatch to the two transports.

mod polling;
pub(crate) mod ws;

use crate::engine::Handler;
use crate::net::ConnInfo;
use crate::session::Transport;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The `/socket.io/` routes (with and without the trailing slash). The server must be
/// served with [`ConnInfo`] as its connect info, from a
/// [`ClosableListener`](crate::net::ClosableListener): WebSocket sessions take the TCP stream
/// over.
pub fn routes<H: Handler>(h: Arc<H>) -> Router {
    routes_at(h, "/socket.io")
}

/// The Engine.IO routes under `path` (without its trailing slash), e.g. `/engine.io` for the
/// reference test suite's server.
pub fn routes_at<H: Handler>(h: Arc<H>, path: &str) -> Router {
    let endpoint = || get(on_get::<H>).post(on_post::<H>).fallback(bad_method);
    Router::new()
        .route(&format!("{path}/"), endpoint())
        .route(path, endpoint())
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

/// Engine.IO's error codes and messages.
type Refusal = (u8, &'static str);

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

/// Checks the query every Engine.IO request carries; with it, whether the transport is
/// WebSocket.
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
        .and_then(bearer)
        .map(Into::into)
}

/// The token in an `Authorization` header value (`Bearer …`, either case of the scheme), as
/// the handshake reads it: public so that an embedding server's own routes accept the same.
pub fn bearer(header: &str) -> Option<&str> {
    header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
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
        (true, sid) => ws::upgrade(h, info, &q, sid, request),
        (false, None) => {
            let token = handshake_token(&q, request.headers());
            let session = h.engine().open(token, Transport::Polling);
            let open = h.engine().open_packet(&session.sid, &["websocket"]);
            tokio::spawn(polling::heartbeat(h.clone(), session));
            text(open.text().to_vec())
        }
        (false, Some(sid)) => match h.engine().get(sid) {
            Some(session) => polling::poll(&h, &session).await,
            None => refuse(1, "Session ID unknown"),
        },
    }
}

async fn on_post<H: Handler>(
    State(h): State<Arc<H>>,
    query: Result<Query<EngineQuery>, QueryRejection>,
    body: Body,
) -> Response {
    let (q, websocket) = match check(query) {
        Ok(checked) => checked,
        Err((code, message)) => return refuse(code, message),
    };
    let Some(sid) = q.sid.as_deref() else {
        return bad_method().await;
    };
    let Some(session) = h.engine().get(sid) else {
        return refuse(1, "Session ID unknown");
    };
    if websocket || session.is_websocket() {
        return refuse(3, "Bad request");
    }
    polling::post(&h, &session, body).await
}

/// A handshake must be a GET, and a request of a session a GET or a POST.
async fn bad_method() -> Response {
    refuse(2, "Bad handshake method")
}
