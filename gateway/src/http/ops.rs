//! What operators and dashboards ask: liveness, readiness, metrics, cluster counts, a user's
//! presence.

use super::openapi::{BadRequest, PathId, Unavailable};
use super::{ApiError, AppState, Caller, StatusBody, status};
use crate::domain::{ClusterStats, UserPresence};
use crate::inbound;
use crate::metrics::METRICS;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::sync::Arc;

/// Liveness: the process runs.
#[utoipa::path(get, path = "/health", tag = "ops",
    responses((status = 200, description = "`{ status: \"ok\" }`", body = StatusBody)))]
pub(super) async fn health() -> Json<StatusBody> {
    status("ok")
}

/// `{ status: "unavailable", reason }`.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct NotReady {
    /// Always `unavailable`.
    #[schema(value_type = String)]
    status: &'static str,
    /// `draining`, or the dependency that does not answer.
    #[schema(value_type = String)]
    reason: &'static str,
}

/// Readiness: the node takes new work (its stores, and Redis in cluster mode, answer).
#[utoipa::path(get, path = "/ready", tag = "ops",
    responses(
        (status = 200, description = "`{ status: \"ready\" }`", body = StatusBody),
        (status = 503, description = "A dependency does not answer, or the node is draining", body = NotReady),
    ))]
pub(super) async fn ready(State(state): State<Arc<AppState>>) -> Response {
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

/// The node's Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "Prometheus text format 0.0.4", body = String,
        content_type = "text/plain")))]
pub(super) async fn metrics() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        METRICS.render(),
    )
}

/// Connections, users and rooms, per node and cluster-wide (both protocols).
#[utoipa::path(get, path = "/api/stats", tag = "ops",
    responses(
        (status = 200, description = "Counts", body = ClusterStats),
        (status = 503, response = Unavailable),
    ))]
pub(super) async fn stats(_caller: Caller, State(state): State<Arc<AppState>>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(state.domain.stats().await?))
}

/// A user's presence as others see it; an unknown user is offline.
#[utoipa::path(get, path = "/api/presence/{user_id}", tag = "ops",
    params(("user_id" = PathId, Path, description = "The user")),
    responses(
        (status = 200, description = "The presence", body = UserPresence),
        (status = 400, response = BadRequest),
        (status = 503, response = Unavailable),
    ))]
pub(super) async fn presence(
    _caller: Caller,
    State(state): State<Arc<AppState>>,
    Path(user): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(state.domain.presence_of(&inbound::user_id(&user)?).await?))
}
