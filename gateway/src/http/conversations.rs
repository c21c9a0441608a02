//! Conversation routes: create and read conversations, members, who is online in one, events
//! to everyone joined, messages and history.

use super::openapi::{
    BadRequest, ErrorBody, Forbidden, IdValue, PathId, PayloadTooLarge, SendMessageBody, Unavailable,
};
use super::{ApiError, ApiJson, ApiQuery, AppState, Caller, MAX_TITLE, StatusBody, event_name, status};
use crate::auth::Identity;
use crate::domain::{Conversation, ConversationView, DomainError, HistoryPage, HistoryRequest};
use crate::inbound;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shared::event::Message;
use shared::{ConversationId, UserId};
use std::sync::Arc;

/// `{ conversationId, onlineUsers }`.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct Online {
    /// The conversation.
    conversation_id: ConversationId,
    /// Users with a visible connection joined to it, on any node.
    online_users: Vec<UserId>,
}

/// Users online in a conversation, cluster-wide.
#[utoipa::path(get, path = "/api/conversations/{id}/online", tag = "conversations",
    params(("id" = PathId, Path, description = "The conversation")),
    responses(
        (status = 200, description = "Who is online in it", body = Online),
        (status = 400, response = BadRequest),
        (status = 403, description = "A user token without access to the conversation", body = ErrorBody),
        (status = 404, description = "No such conversation (`members` access mode)", body = ErrorBody),
        (status = 503, response = Unavailable),
    ))]
pub(super) async fn online(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
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

/// `{ event, data }`: an event for everyone joined to a conversation.
#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct EmitBody {
    /// The event name, 1 to 128 bytes. Reserved names (`connect`, `connect_error`,
    /// `disconnect`, `disconnecting`, `newListener`, `removeListener`) are refused.
    #[schema(min_length = 1, max_length = 128)]
    event: String,
    /// Any JSON value: the event's payload.
    data: Value,
}

/// An event to every connection joined to the conversation, on every node; nothing is stored.
#[utoipa::path(post, path = "/api/conversations/{id}/emit", tag = "conversations",
    params(("id" = PathId, Path, description = "The conversation")),
    request_body = EmitBody,
    responses(
        (status = 200, description = "`{ status: \"Event emitted\" }`", body = StatusBody),
        (status = 400, response = BadRequest),
        (status = 403, response = Forbidden),
        (status = 413, response = PayloadTooLarge),
        (status = 503, response = Unavailable),
    ))]
pub(super) async fn emit(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<EmitBody>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require_server()?;
    let event = event_name(Some(body.event), "")?;
    state
        .domain
        .emit_to_conversation(&inbound::conversation_id(&id)?, event, body.data)
        .await?;
    Ok(status("Event emitted"))
}

/// `{ id?, title?, members? }`: a new conversation.
#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct CreateConversation {
    /// The id; a UUID v7 is generated when absent. An id that exists is refused (400).
    #[schema(value_type = Option<IdValue>)]
    id: Option<Value>,
    /// At most 1024 bytes.
    #[schema(max_length = 1024)]
    title: Option<String>,
    /// Up to 1000 members (repeats count once).
    #[serde(default)]
    #[schema(value_type = Vec<IdValue>, max_items = 1000)]
    members: Vec<Value>,
}

/// Creates a conversation with its members.
#[utoipa::path(post, path = "/api/conversations", tag = "conversations",
    request_body = CreateConversation,
    responses(
        (status = 201, description = "The conversation", body = Conversation),
        (status = 400, response = BadRequest),
        (status = 403, response = Forbidden),
        (status = 413, response = PayloadTooLarge),
        (status = 503, response = Unavailable),
    ))]
pub(super) async fn create_conversation(
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

/// A conversation with its members, newest seq and (for a user) unread count.
#[utoipa::path(get, path = "/api/conversations/{id}", tag = "conversations",
    params(("id" = PathId, Path, description = "The conversation")),
    responses(
        (status = 200, description = "The conversation", body = ConversationView),
        (status = 400, response = BadRequest),
        (status = 403, description = "A user token without access to the conversation", body = ErrorBody),
        (status = 404, description = "No such conversation", body = ErrorBody),
        (status = 503, response = Unavailable),
    ))]
pub(super) async fn get_conversation(
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

/// Adds a member.
#[utoipa::path(put, path = "/api/conversations/{id}/members/{user_id}", tag = "conversations",
    params(
        ("id" = PathId, Path, description = "The conversation"),
        ("user_id" = PathId, Path, description = "The user"),
    ),
    responses(
        (status = 200, description = "`{ status: \"Member added\" }`", body = StatusBody),
        (status = 400, response = BadRequest),
        (status = 403, response = Forbidden),
        (status = 404, description = "No such conversation", body = ErrorBody),
        (status = 503, response = Unavailable),
    ))]
pub(super) async fn add_member(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path((id, user)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require_server()?;
    let (id, user) = (inbound::conversation_id(&id)?, inbound::user_id(&user)?);
    state.domain.add_member(&id, &user).await?;
    Ok(status("Member added"))
}

/// Removes a member; their connections leave the conversation at once (`members` mode).
#[utoipa::path(delete, path = "/api/conversations/{id}/members/{user_id}", tag = "conversations",
    params(
        ("id" = PathId, Path, description = "The conversation"),
        ("user_id" = PathId, Path, description = "The user"),
    ),
    responses(
        (status = 200, description = "`{ status: \"Member removed\" }`", body = StatusBody),
        (status = 400, response = BadRequest),
        (status = 403, response = Forbidden),
        (status = 404, description = "No such conversation", body = ErrorBody),
        (status = 503, response = Unavailable),
    ))]
pub(super) async fn remove_member(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path((id, user)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require_server()?;
    let (id, user) = (inbound::conversation_id(&id)?, inbound::user_id(&user)?);
    state.domain.remove_member(&id, &user).await?;
    Ok(status("Member removed"))
}

/// Stores a message and fans it out exactly like a socket send.
#[utoipa::path(post, path = "/api/conversations/{id}/messages", tag = "conversations",
    params(("id" = PathId, Path, description = "The conversation (whatever the body says)")),
    request_body = SendMessageBody,
    responses(
        (status = 201, description = "Stored now", body = Message),
        (status = 200, description = "Stored before with the same `tempId`: nothing stored now", body = Message),
        (status = 400, response = BadRequest),
        (status = 403, description = "A user token without access to the conversation", body = ErrorBody),
        (status = 404, description = "No such conversation (`members` access mode)", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 503, response = Unavailable),
    ))]
pub(super) async fn send_message(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    ApiJson(mut body): ApiJson<Value>,
) -> Result<impl IntoResponse, ApiError> {
    let Some(map) = body.as_object_mut() else {
        return Err(DomainError::BadRequest("body must be a JSON object".into()).into());
    };
    // The path names the conversation, whatever the body says.
    map.insert(
        "conversationId".into(),
        Value::String(inbound::conversation_id(&id)?.0.to_string()),
    );
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

/// `?before=&after=&limit=` of the history.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct HistoryParams {
    /// Only messages with a smaller seq: the newest of them.
    #[param(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    before: Option<i64>,
    /// Only messages with a greater seq: the oldest of them.
    #[param(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    after: Option<i64>,
    /// Messages per page, 1 to 200; 50 when absent.
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
}

/// A page of a conversation's messages, oldest first.
#[utoipa::path(get, path = "/api/conversations/{id}/messages", tag = "conversations",
    params(("id" = PathId, Path, description = "The conversation"), HistoryParams),
    responses(
        (status = 200, description = "A page of history", body = HistoryPage),
        (status = 400, response = BadRequest),
        (status = 403, description = "A user token without access to the conversation", body = ErrorBody),
        (status = 404, description = "No such conversation (`members` access mode)", body = ErrorBody),
        (status = 503, response = Unavailable),
    ))]
pub(super) async fn history(
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
