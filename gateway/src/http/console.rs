//! The operator's REST routes behind the console (docs/console.md): the cluster's nodes, who
//! is online with their status, which conversations have someone joined; and in `--dev` a
//! token for any user, which the demo chat asks for.

use super::caller::Caller;
use super::error::ApiError;
use super::{ApiQuery, AppState};
use crate::domain::{DomainError, MAX_PRESENCE_PAGE, MAX_ROOMS_PAGE};
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use shared::UserId;
use std::sync::Arc;
use std::time::Duration;

/// How long a `--dev` token lasts.
const DEV_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// The routes, with the state's rules.
pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/whoami", get(whoami))
        .route("/api/nodes", get(nodes))
        .route("/api/users/presence", get(users_presence))
        .route("/api/rooms", get(rooms))
        .route("/api/dev/token", get(dev_token))
}

/// What the presented credential is worth; always 200, so a sign-in form can check a key
/// without the browser logging a failed request.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WhoAmI {
    /// `server` (every right), `user`, or null when refused.
    role: Option<&'static str>,
    /// The user a user token acts as.
    user_id: Option<UserId>,
    /// Why the credential was refused.
    refused: Option<String>,
}

async fn whoami(caller: Result<Caller, ApiError>) -> Json<WhoAmI> {
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

#[derive(Deserialize)]
struct PageQuery {
    cursor: Option<String>,
    limit: Option<usize>,
}

async fn nodes(caller: Caller, State(state): State<Arc<AppState>>) -> Result<impl IntoResponse, ApiError> {
    caller.require_server()?;
    Ok(Json(state.domain.nodes().await?))
}

async fn users_presence(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require_server()?;
    let page = state
        .domain
        .online_presence(q.cursor.as_deref(), q.limit.unwrap_or(MAX_PRESENCE_PAGE))
        .await?;
    Ok(Json(page))
}

async fn rooms(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require_server()?;
    let page = state
        .domain
        .rooms(q.cursor.as_deref(), q.limit.unwrap_or(MAX_ROOMS_PAGE))
        .await?;
    Ok(Json(page))
}

#[derive(Deserialize)]
struct TokenQuery {
    user: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DevToken {
    user_id: UserId,
    token: String,
}

/// Only in `--dev`, and only for a caller with every right there (loopback, or the API key).
async fn dev_token(
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
