//! HTTP: the REST API of PROTOCOL.md section 4, health and readiness, and the Socket.IO
//! endpoint, all on one port. The router is built separately from the server so routes can
//! be tested without a socket.
//!
//! - [`ops`]: health, readiness, metrics, stats and presence;
//! - [`users`]: messages, notifications and broadcasts to users, disconnects;
//! - [`conversations`]: conversations, members, messages and history;
//! - [`console`]: the operator routes behind the console (nodes, user presence, rooms, whoami, dev tokens);
//! - [`pages`]: the console and demo pages, embedded;
//! - [`openapi`]: the OpenAPI 3.1 description of every route, served at `/api/openapi.json`.

mod caller;
mod console;
mod conversations;
mod error;
mod observe;
pub mod openapi;
mod ops;
mod pages;
mod users;

pub use caller::Caller;
pub use error::ApiError;

use crate::auth::JwtSettings;
use crate::config::CorsOrigins;
use crate::domain::{Domain, DomainError};
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router, middleware};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::trace::{DefaultOnFailure, TraceLayer};

/// Longest conversation title, in bytes.
const MAX_TITLE: usize = 1024;
/// Longest event name a REST caller may choose.
const MAX_EVENT_NAME: usize = 128;
/// Event names Socket.IO clients reserve for themselves.
const RESERVED_EVENTS: &[&str] = &[
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// One dependency `/ready` asks about; the server, which owns the connections, provides them.
#[async_trait::async_trait]
pub trait ReadinessCheck: Send + Sync {
    /// `Err` with a short reason when the dependency does not answer.
    async fn check(&self) -> Result<(), &'static str>;
}

/// Whether the node takes new work.
pub struct Readiness {
    draining: AtomicBool,
    checks: Vec<Box<dyn ReadinessCheck>>,
}

impl Readiness {
    /// Readiness that requires every check to pass (the stores, and Redis in cluster mode).
    pub fn new(checks: Vec<Box<dyn ReadinessCheck>>) -> Self {
        Self {
            draining: AtomicBool::new(false),
            checks,
        }
    }

    /// From now on `/ready` answers 503.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    async fn reason(&self) -> Option<&'static str> {
        if self.is_draining() {
            return Some("draining");
        }
        for check in &self.checks {
            if let Err(reason) = check.check().await {
                return Some(reason);
            }
        }
        None
    }
}

#[async_trait::async_trait]
impl crate::domain::Health for AppState {
    async fn not_ready(&self) -> Option<&'static str> {
        self.readiness.reason().await
    }
}

/// What REST handlers share.
pub struct AppState {
    /// The domain service.
    pub domain: Arc<Domain>,
    /// Verifies user tokens.
    pub jwt: JwtSettings,
    /// The server API key.
    pub api_key: Option<String>,
    /// Loopback callers need no credentials.
    pub loopback_trusted: bool,
    /// Readiness.
    pub readiness: Readiness,
    /// `--dev`: `/api/dev/token` hands out user tokens.
    pub dev: bool,
    /// Serve the console and the demo chat.
    pub console: bool,
}

/// JSON object bodies whose rejections answer `{ error, code }`. Only an object: serde would
/// also fill a struct from an array of its fields in order (`[null, null]`).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let Json(body) = Json::<serde_json::Value>::from_request(request, state).await?;
        if !body.is_object() {
            return Err(DomainError::BadRequest("body must be a JSON object".into()).into());
        }
        serde_json::from_value(body)
            .map(ApiJson)
            .map_err(|e| DomainError::BadRequest(format!("Failed to deserialize the JSON body: {e}")).into())
    }
}

/// Query strings whose rejections answer `{ error, code }`.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self(DomainError::BadRequest(r.body_text()))
    }
}

/// The whole HTTP application: REST and Phoenix routes inside the Socket.IO layer, inside CORS.
pub fn router(state: Arc<AppState>, socketio: Router, phoenix: Router, cors: &CorsOrigins, max_body: usize) -> Router {
    Router::new()
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/api/openapi.json", get(openapi::serve))
        .route("/api/users", get(users::list_users))
        .route("/api/users/broadcast", post(users::broadcast_message))
        .route("/api/users/{user_id}/message", post(users::message_user))
        .route("/api/users/{user_id}/disconnect", post(users::disconnect_user))
        .route("/api/stats", get(ops::stats))
        .route("/websocket/stats", get(ops::stats))
        .route("/api/presence/{user_id}", get(ops::presence))
        .route("/websocket/presence/{user_id}", get(ops::presence))
        .route("/api/conversations/{id}/online", get(conversations::online))
        .route("/websocket/bam/{id}/online", get(conversations::online))
        .route("/api/notify", post(users::notify))
        .route("/websocket/notify", post(users::notify))
        .route("/websocket/broadcast", post(users::broadcast_event))
        .route("/api/conversations/{id}/emit", post(conversations::emit))
        .route("/api/conversations", post(conversations::create_conversation))
        .route("/api/conversations/{id}", get(conversations::get_conversation))
        .route(
            "/api/conversations/{id}/members/{user_id}",
            put(conversations::add_member).delete(conversations::remove_member),
        )
        .route(
            "/api/conversations/{id}/messages",
            post(conversations::send_message).get(conversations::history),
        )
        .route(
            "/bams/{id}/messages",
            post(conversations::send_message).get(conversations::history),
        )
        .route("/api/whoami", get(console::whoami))
        .route("/api/nodes", get(console::nodes))
        .route("/api/users/presence", get(console::users_presence))
        .route("/api/rooms", get(console::rooms))
        .route("/api/dev/token", get(console::dev_token))
        .route_layer(middleware::from_fn(observe::observe))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state.clone())
        .merge(if state.console { pages::routes() } else { Router::new() })
        .merge(phoenix)
        .merge(socketio)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            refuse_new_sessions_while_draining,
        ))
        .layer(CatchPanicLayer::custom(|_| {
            tracing::error!("request handler panicked");
            ApiError(DomainError::Internal).into_response()
        }))
        .layer(tower::util::option_layer(cors_layer(cors)))
        // A 503 from /ready during an outage is expected: not an error for the logs.
        .layer(
            TraceLayer::new_for_http()
                // The path only: a query string may carry a token (`?token=`), which never goes to logs.
                .make_span_with(|request: &axum::extract::Request| {
                    tracing::debug_span!("request", method = %request.method(), path = request.uri().path())
                })
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
}

/// While draining, new Socket.IO sessions and Phoenix sockets get 503 at the HTTP level, which clients treat as a
/// lost connection and retry with backoff (behind a load balancer, on another node); existing
/// sessions carry on until the drain closes them.
async fn refuse_new_sessions_while_draining(
    State(state): State<Arc<AppState>>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    let path = request.uri().path();
    let resumes_session = request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .any(|kv| kv.starts_with("sid="));
    let new_session = path.starts_with("/socket/") || (path.starts_with("/socket.io") && !resumes_session);
    if new_session && state.readiness.is_draining() {
        return ApiError(DomainError::Unavailable("this node is draining".into())).into_response();
    }
    next.run(request).await
}

fn cors_layer(origins: &CorsOrigins) -> Option<CorsLayer> {
    let base = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS])
        .allow_headers([
            axum::http::header::CONTENT_TYPE,
            axum::http::header::AUTHORIZATION,
            HeaderName::from_static("x-api-key"),
        ]);
    match origins {
        CorsOrigins::None => None,
        CorsOrigins::Any => Some(base.allow_origin(Any)),
        CorsOrigins::List(list) => {
            let values: Vec<HeaderValue> = list.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
            Some(base.allow_origin(AllowOrigin::list(values)).allow_credentials(true))
        }
    }
}

/// `{ status }`: what a route that did its work answers.
#[derive(Serialize, utoipa::ToSchema)]
pub struct StatusBody {
    /// What was done (`"ok"`, `"Message sent"`, …).
    #[schema(value_type = String)]
    status: &'static str,
}

fn status(status: &'static str) -> Json<StatusBody> {
    Json(StatusBody { status })
}

async fn method_not_allowed() -> Response {
    let mut response = ApiError(DomainError::BadRequest("method not allowed on this route".into())).into_response();
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
}

async fn not_found() -> ApiError {
    ApiError(DomainError::NotFound("no such route".into()))
}

/// Checks an event name chosen by a REST caller.
fn event_name(name: Option<String>, default: &str) -> Result<String, ApiError> {
    let name = name.unwrap_or_else(|| default.to_owned());
    if name.is_empty() || name.len() > MAX_EVENT_NAME {
        return Err(DomainError::BadRequest(format!("event must be 1 to {MAX_EVENT_NAME} bytes")).into());
    }
    if RESERVED_EVENTS.contains(&name.as_str()) {
        return Err(DomainError::BadRequest(format!("event '{name}' is reserved")).into());
    }
    Ok(name)
}
