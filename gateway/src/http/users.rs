//! Routes that reach users wherever they are connected: direct messages, notifications,
//! broadcasts, disconnects, the list of online users.

use super::openapi::{BadRequest, ErrorBody, Forbidden, IdValue, PayloadTooLarge, Unavailable};
use super::{ApiError, ApiJson, ApiQuery, AppState, Caller, StatusBody, event_name, status};
use crate::domain::{MAX_USERS_PAGE, NotificationRequest, UserPage};
use crate::inbound;
use axum::Json;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;

/// `?cursor=&limit=` of `GET /api/users`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct UsersQuery {
    /// The `nextCursor` of the previous page; the first page without it.
    cursor: Option<String>,
    /// Users per page; 1000 when absent, and at most 1000 (a larger limit asks for 1000).
    // As i64: a u32 would be described `format: int32`, which tools read as at most 2^31 − 1.
    #[param(value_type = Option<i64>, minimum = 0, maximum = 4_294_967_295_i64)]
    limit: Option<u32>,
}

/// Online users, cluster-wide, a page at a time.
#[utoipa::path(get, path = "/api/users", tag = "users", params(UsersQuery),
    responses(
        (status = 200, description = "A page of online users, ordered by id", body = UserPage),
        (status = 400, response = BadRequest),
        (status = 403, response = Forbidden),
        (status = 503, response = Unavailable),
    ))]
pub(super) async fn list_users(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    ApiQuery(q): ApiQuery<UsersQuery>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require_server()?;
    let limit = q
        .limit
        .map_or(MAX_USERS_PAGE, |l| usize::try_from(l).unwrap_or(MAX_USERS_PAGE));
    let page = state.domain.online_users(q.cursor.as_deref(), limit).await?;
    Ok(Json(page))
}

/// `{ message, event? }`: an event for one user or for everyone.
#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct MessageBody {
    /// Any JSON value: the event's payload.
    message: Value,
    /// The event name, 1 to 128 bytes; `message` when absent. Reserved names (`connect`,
    /// `connect_error`, `disconnect`, `disconnecting`, `newListener`, `removeListener`) are refused.
    #[schema(min_length = 1, max_length = 128)]
    event: Option<String>,
}

/// An event to every connection of one user, on every node.
#[utoipa::path(post, path = "/api/users/{user_id}/message", tag = "users",
    params(("user_id" = super::openapi::PathId, Path, description = "The user")),
    request_body = MessageBody,
    responses(
        (status = 200, description = "`{ status: \"Message sent\" }`", body = StatusBody),
        (status = 400, response = BadRequest),
        (status = 403, response = Forbidden),
        (status = 404, description = "`User not connected`: no connection on any node", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 503, response = Unavailable),
    ))]
pub(super) async fn message_user(
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

/// An event to every connection on every node.
#[utoipa::path(post, path = "/api/users/broadcast", tag = "users",
    request_body = MessageBody,
    responses(
        (status = 200, description = "`{ status: \"Message broadcasted\" }`", body = StatusBody),
        (status = 400, response = BadRequest),
        (status = 403, response = Forbidden),
        (status = 413, response = PayloadTooLarge),
        (status = 503, response = Unavailable),
    ))]
pub(super) async fn broadcast_message(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<MessageBody>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require_server()?;
    let event = event_name(body.event, "message")?;
    state.domain.broadcast(event, body.message).await?;
    Ok(status("Message broadcasted"))
}

/// `{ status: "Disconnected", connections }`.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Disconnected {
    /// Always `Disconnected`.
    #[schema(value_type = String)]
    status: &'static str,
    /// The connections closed, on every node (0 when the user had none).
    connections: usize,
}

/// Closes every connection of a user, on every node.
#[utoipa::path(post, path = "/api/users/{user_id}/disconnect", tag = "users",
    params(("user_id" = super::openapi::PathId, Path, description = "The user")),
    responses(
        (status = 200, description = "The connections were told to close", body = Disconnected),
        (status = 400, response = BadRequest),
        (status = 403, response = Forbidden),
        (status = 503, response = Unavailable),
    ))]
pub(super) async fn disconnect_user(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path(user): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require_server()?;
    let connections = state.domain.disconnect_user(&inbound::user_id(&user)?).await?;
    Ok(Json(Disconnected {
        status: "Disconnected",
        connections,
    }))
}

/// `{ userId, type?, title?, body?, data? }`: a notification for one user.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct NotifyBody {
    /// The user.
    #[schema(value_type = IdValue)]
    user_id: Value,
    /// Free-form kind.
    #[serde(rename = "type")]
    kind: Option<String>,
    /// Title.
    title: Option<String>,
    /// Body text.
    body: Option<String>,
    /// Any JSON.
    data: Option<Value>,
}

/// A `notification` event to every connection of one user, on every node.
#[utoipa::path(post, path = "/api/notify", tag = "users",
    request_body = NotifyBody,
    responses(
        (status = 200, description = "`{ status: \"Notification sent\" }`", body = StatusBody),
        (status = 400, response = BadRequest),
        (status = 403, response = Forbidden),
        (status = 404, description = "`User not connected`: no connection on any node", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 503, response = Unavailable),
    ))]
pub(super) async fn notify(
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

/// `{ event?, data }`: an event for everyone.
#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct BroadcastBody {
    /// The event name, 1 to 128 bytes; `notification` when absent. Reserved names are refused.
    #[schema(min_length = 1, max_length = 128)]
    event: Option<String>,
    /// Any JSON value: the event's payload.
    data: Value,
}

/// `event` (default `notification`) with `data` to every connection on every node.
#[utoipa::path(post, path = "/websocket/broadcast", tag = "legacy",
    request_body = BroadcastBody,
    responses(
        (status = 200, description = "`{ status: \"Broadcast sent\" }`", body = StatusBody),
        (status = 400, response = BadRequest),
        (status = 403, response = Forbidden),
        (status = 413, response = PayloadTooLarge),
        (status = 503, response = Unavailable),
    ))]
pub(super) async fn broadcast_event(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<BroadcastBody>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require_server()?;
    let event = event_name(body.event, "notification")?;
    state.domain.broadcast(event, body.data).await?;
    Ok(status("Broadcast sent"))
}
