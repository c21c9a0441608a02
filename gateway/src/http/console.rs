//! The operator's REST routes behind the console (docs/console.md): the cluster's nodes, who
//! is online with their status, which conversations have someone joined; and in `--dev` a
//! token for any user, which the demo chat asks for.

use super::caller::Caller;
use super::error::ApiError;
use super::{ApiQuery, AppState};
use crate::domain::{DomainError, MAX_PRESENCE_PAGE, MAX_ROOMS_PAGE, Nodes, PresencePage, RoomPage};
use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use shared::UserId;
use std::sync::Arc;
use std::time::Duration;

/// How long a `--dev` token lasts.
const DEV_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// What the presented credential is worth; always 200, so a sign-in form can check a key
/// without the browser logging a failed request.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct WhoAmI {
    /// `server` (every right), `user`, or null when refused.
    #[schema(value_type = Option<String>)]
    role: Option<&'static str>,
    /// The user a user token acts as.
    user_id: Option<UserId>,
    /// Why the credential was refused.
    refused: Option<String>,
}

#[utoipa::path(get, path = "/api/whoami", tag = "console",
    responses((status = 200, description = "What the credential presented (or none) is worth; never an error", body = WhoAmI)))]
pub(super) async fn whoami(caller: Result<Caller, ApiError>) -> Json<WhoAmI> {
    Json(match caller {
        Ok(Caller::Server) => WhoAmI {
            role: Some("server"),
            user_id: None,
            refused: None,
        },
        Ok(Caller::User(who)) => WhoAmI {
            role: Some("user"),
            user_id: Some(who.user_id),
            refused: None,
        },
        Err(ApiError(e)) => WhoAmI {
            role: None,
            user_id: None,
            refused: Some(e.to_string()),
        },
    })
}

/// `?cursor=&limit=` of the console's pages.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct PageQuery {
    /// The `nextCursor` of the previous page; the first page without it.
    cursor: Option<String>,
    /// Entries per page, at most the route's maximum (a larger limit asks for the maximum).
    #[param(value_type = Option<i64>, minimum = 0, maximum = 4_294_967_295_i64)]
    limit: Option<u32>,
}

impl PageQuery {
    fn limit(&self, default: usize) -> usize {
        self.limit.map_or(default, |l| usize::try_from(l).unwrap_or(default))
    }
}

/// Every node of the cluster: presence's counts and the node's latest report (the console).
#[utoipa::path(get, path = "/api/nodes", tag = "console",
    responses(
        (status = 200, description = "Every node, sorted by id", body = Nodes),
        (status = 403, response = super::openapi::Forbidden),
        (status = 503, response = super::openapi::Unavailable),
    ))]
pub(super) async fn nodes(caller: Caller, State(state): State<Arc<AppState>>) -> Result<impl IntoResponse, ApiError> {
    caller.require_server()?;
    Ok(Json(state.domain.nodes().await?))
}

/// Online users with their presence, a page at a time.
#[utoipa::path(get, path = "/api/users/presence", tag = "console", params(PageQuery),
    responses(
        (status = 200, description = "A page of online users with their presence, ordered by id", body = PresencePage),
        (status = 400, response = super::openapi::BadRequest),
        (status = 403, response = super::openapi::Forbidden),
        (status = 503, response = super::openapi::Unavailable),
    ))]
pub(super) async fn users_presence(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require_server()?;
    let page = state
        .domain
        .online_presence(q.cursor.as_deref(), q.limit(MAX_PRESENCE_PAGE))
        .await?;
    Ok(Json(page))
}

/// Conversations with a joined connection and their online users, a page at a time.
#[utoipa::path(get, path = "/api/rooms", tag = "console", params(PageQuery),
    responses(
        (status = 200, description = "A page of conversations with a joined connection", body = RoomPage),
        (status = 400, response = super::openapi::BadRequest),
        (status = 403, response = super::openapi::Forbidden),
        (status = 503, response = super::openapi::Unavailable),
    ))]
pub(super) async fn rooms(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require_server()?;
    let page = state.domain.rooms(q.cursor.as_deref(), q.limit(MAX_ROOMS_PAGE)).await?;
    Ok(Json(page))
}

/// `?user=` of `/api/dev/token`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct TokenQuery {
    /// The user the token acts as (an id).
    user: String,
}

/// A user token made by a `--dev` node.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct DevToken {
    /// The user.
    user_id: UserId,
    /// A JWT for that user, valid 24 h.
    token: String,
}

/// Only in `--dev`, and only for a caller with every right there (loopback, or the API key).
#[utoipa::path(get, path = "/api/dev/token", tag = "console", params(TokenQuery),
    responses(
        (status = 200, description = "A user token (in `--dev` only)", body = DevToken),
        (status = 400, response = super::openapi::BadRequest),
        (status = 403, response = super::openapi::Forbidden),
        (status = 404, description = "The node is not in `--dev`", body = super::openapi::ErrorBody),
    ))]
pub(super) async fn dev_token(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    ApiQuery(q): ApiQuery<TokenQuery>,
) -> Result<impl IntoResponse, ApiError> {
    if !state.dev {
        return Err(DomainError::NotFound("no such route (tokens are handed out in --dev only)".into()).into());
    }
    caller.require_server()?;
    let user = UserId::from(shared::check_id(&q.user).map_err(|e| DomainError::BadRequest(format!("user {e}")))?);
    let token = state
        .jwt
        .sign(user.as_str(), DEV_TOKEN_TTL, Default::default())
        .map_err(|e| {
            tracing::warn!(error = %e, "dev token not signed");
            DomainError::Internal
        })?;
    Ok(Json(DevToken { user_id: user, token }))
}
