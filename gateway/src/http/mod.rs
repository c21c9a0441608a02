//! HTTP: the REST API of PROTOCOL.md section 4, health and readiness, and the Socket.IO
//! endpoint, all on one port. The router is built separately from the server so routes can
//! be tested without a socket.

mod caller;
mod console;
mod error;
mod observe;
mod pages;

pub use caller::Caller;
pub use error::ApiError;

use crate::auth::{Identity, JwtSettings};
use crate::config::CorsOrigins;
use crate::domain::{Domain, DomainError, HistoryRequest, MAX_USERS_PAGE, NotificationRequest};
use crate::inbound;
use crate::metrics::METRICS;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router, middleware};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shared::{ConversationId, UserId};
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

/// JSON bodies whose rejections answer `{ error, code }`.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

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
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/api/users", get(list_users))
        .route("/api/users/broadcast", post(broadcast_message))
        .route("/api/users/{user_id}/message", post(message_user))
        .route("/api/users/{user_id}/disconnect", post(disconnect_user))
        .route("/api/stats", get(stats))
        .route("/websocket/stats", get(stats))
        .route("/api/presence/{user_id}", get(presence))
        .route("/websocket/presence/{user_id}", get(presence))
        .route("/api/conversations/{id}/online", get(online))
        .route("/websocket/bam/{id}/online", get(online))
        .route("/api/notify", post(notify))
        .route("/websocket/notify", post(notify))
        .route("/websocket/broadcast", post(broadcast_event))
        .route("/api/conversations/{id}/emit", post(emit))
        .route("/api/conversations", post(create_conversation))
        .route("/api/conversations/{id}", get(get_conversation))
        .route(
            "/api/conversations/{id}/members/{user_id}",
            axum::routing::put(add_member).delete(remove_member),
        )
        .route("/api/conversations/{id}/messages", post(send_message).get(history))
        .route("/bams/{id}/messages", post(send_message).get(history))
        .merge(console::routes())
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

#[derive(Serialize)]
struct StatusBody {
    status: &'static str,
}

fn status(status: &'static str) -> Json<StatusBody> {
    Json(StatusBody { status })
}

async fn health() -> Json<StatusBody> {
    status("ok")
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    #[derive(Serialize)]
    struct NotReady {
        status: &'static str,
        reason: &'static str,
    }
    match state.readiness.reason().await {
        None => status("ready").into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(NotReady {
                status: "unavailable",
                reason,
            }),
        )
            .into_response(),
    }
}

async fn method_not_allowed() -> Response {
    let mut response = ApiError(DomainError::BadRequest("method not allowed on this route".into())).into_response();
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
}

async fn metrics() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        METRICS.render(),
    )
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

#[derive(Deserialize)]
struct UsersQuery {
    cursor: Option<String>,
    limit: Option<usize>,
}

async fn list_users(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    ApiQuery(q): ApiQuery<UsersQuery>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require_server()?;
    let page = state
        .domain
        .online_users(q.cursor.as_deref(), q.limit.unwrap_or(MAX_USERS_PAGE))
        .await?;
    Ok(Json(page))
}

#[derive(Deserialize)]
struct MessageBody {
    message: Value,
    event: Option<String>,
}

async fn message_user(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path(user): Path<String>,
    ApiJson(body): ApiJson<MessageBody>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require_server()?;
    let event = event_name(body.event, "message")?;
    state
        .domain
        .send_to_user(&inbound::user_id(&user)?, event, body.message)
        .await?;
    Ok(status("Message sent"))
}

async fn broadcast_message(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<MessageBody>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require_server()?;
    let event = event_name(body.event, "message")?;
    state.domain.broadcast(event, body.message).await?;
    Ok(status("Message broadcasted"))
}

async fn disconnect_user(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path(user): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    #[derive(Serialize)]
    struct Disconnected {
        status: &'static str,
        connections: usize,
    }
    caller.require_server()?;
    let connections = state.domain.disconnect_user(&inbound::user_id(&user)?).await?;
    Ok(Json(Disconnected {
        status: "Disconnected",
        connections,
    }))
}

async fn stats(_caller: Caller, State(state): State<Arc<AppState>>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(state.domain.stats().await?))
}

async fn presence(
    _caller: Caller,
    State(state): State<Arc<AppState>>,
    Path(user): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(state.domain.presence_of(&inbound::user_id(&user)?).await?))
}

async fn online(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Online {
        conversation_id: ConversationId,
        online_users: Vec<UserId>,
    }
    let conversation = inbound::conversation_id(&id)?;
    let online_users = state
        .domain
        .conversation_online(caller.identity(), &conversation)
        .await?;
    Ok(Json(Online {
        conversation_id: conversation,
        online_users,
    }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NotifyBody {
    user_id: Value,
    #[serde(rename = "type")]
    kind: Option<String>,
    title: Option<String>,
    body: Option<String>,
    data: Option<Value>,
}

async fn notify(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<NotifyBody>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require_server()?;
    let user = inbound::user_value("userId", &body.user_id)?;
    let request = NotificationRequest {
        kind: body.kind,
        title: body.title,
        body: body.body,
        data: body.data,
    };
    state.domain.notify(&user, request).await?;
    Ok(status("Notification sent"))
}

#[derive(Deserialize)]
struct EventBody {
    event: Option<String>,
    data: Value,
}

async fn broadcast_event(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<EventBody>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require_server()?;
    let event = event_name(body.event, "notification")?;
    state.domain.broadcast(event, body.data).await?;
    Ok(status("Broadcast sent"))
}

async fn emit(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<EventBody>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require_server()?;
    if body.event.is_none() {
        return Err(DomainError::BadRequest("event is required".into()).into());
    }
    let event = event_name(body.event, "")?;
    state
        .domain
        .emit_to_conversation(&inbound::conversation_id(&id)?, event, body.data)
        .await?;
    Ok(status("Event emitted"))
}

#[derive(Deserialize)]
struct CreateConversation {
    id: Option<Value>,
    title: Option<String>,
    #[serde(default)]
    members: Vec<Value>,
}

async fn create_conversation(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<CreateConversation>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require_server()?;
    let id = body
        .id
        .as_ref()
        .map(|v| inbound::conversation_value("id", v))
        .transpose()?;
    if body.title.as_ref().is_some_and(|t| t.len() > MAX_TITLE) {
        return Err(DomainError::BadRequest(format!("title is longer than {MAX_TITLE} bytes")).into());
    }
    let members = inbound::members(&body.members)?;
    let conversation = state.domain.create_conversation(id, body.title, members).await?;
    Ok((StatusCode::CREATED, Json(conversation)))
}

async fn get_conversation(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(
        state
            .domain
            .conversation(caller.identity(), &inbound::conversation_id(&id)?)
            .await?,
    ))
}

async fn add_member(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path((id, user)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require_server()?;
    let (id, user) = (inbound::conversation_id(&id)?, inbound::user_id(&user)?);
    state.domain.add_member(&id, &user).await?;
    Ok(status("Member added"))
}

async fn remove_member(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path((id, user)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require_server()?;
    let (id, user) = (inbound::conversation_id(&id)?, inbound::user_id(&user)?);
    state.domain.remove_member(&id, &user).await?;
    Ok(status("Member removed"))
}

async fn send_message(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    ApiJson(mut body): ApiJson<Value>,
) -> Result<impl IntoResponse, ApiError> {
    let Some(map) = body.as_object_mut() else {
        return Err(DomainError::BadRequest("body must be a JSON object".into()).into());
    };
    // The path names the conversation, whatever the body says.
    map.insert("conversationId".into(), Value::String(inbound::conversation_id(&id)?.0));
    let sender = match (&caller, map.get("senderId")) {
        (Caller::User(who), _) => who.clone(),
        (Caller::Server, Some(v)) if !v.is_null() => Identity {
            user_id: inbound::user_value("senderId", v)?,
            admin: true,
            conversations: None,
        },
        (Caller::Server, _) => return Err(DomainError::BadRequest("senderId is required".into()).into()),
    };
    let request = inbound::send(&body)?;
    let sent = state.domain.send(&sender, request).await?;
    let code = if sent.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((code, Json(sent.message)))
}

#[derive(Deserialize)]
struct HistoryParams {
    before: Option<i64>,
    after: Option<i64>,
    limit: Option<u32>,
}

async fn history(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<HistoryParams>,
) -> Result<impl IntoResponse, ApiError> {
    let request = HistoryRequest {
        conversation_id: inbound::conversation_id(&id)?,
        before: q.before,
        after: q.after,
        limit: q.limit,
    };
    let page = state.domain.history(caller.identity(), request).await?;
    Ok(Json(page))
}
