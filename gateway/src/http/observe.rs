//! The REST routes' duration metric and, when tracing is on, a span per request.

use crate::metrics::METRICS;
use crate::telemetry;
use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use std::time::Instant;
use tracing::Instrument;

/// Times a request under its route template (`/api/conversations/{id}/messages`, never the
/// path itself: ids stay out of labels) and its status.
pub(super) async fn observe(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = match *request.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let span = if telemetry::enabled() {
        tracing::info_span!("http.request", http.method = method, http.route = %route, http.status_code = tracing::field::Empty)
    } else {
        tracing::Span::none()
    };
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.status_code", status.as_u16());
    METRICS
        .http_duration
        .with_label_values(&[method, &route, status.as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}
