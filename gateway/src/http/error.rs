//! The one place a failure becomes an HTTP answer: `{ error, code }` with the matching status.

use crate::domain::DomainError;
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use shared::ErrorCode;

/// A REST failure.
#[derive(Debug)]
pub struct ApiError(pub DomainError);

/// `{ error, code }`: every REST failure's body.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for people; never internals.
    error: String,
    /// What went wrong, for programs: one of the codes of PROTOCOL.md 2.2.
    #[schema(value_type = ErrorCode)]
    code: &'static str,
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        Self(e)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return Self(DomainError::PayloadTooLarge("request body too large".into()));
        }
        Self(DomainError::BadRequest(r.body_text()))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.0.code();
        let status = match code {
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let body = ErrorBody {
            error: self.0.to_string(),
            code: code.as_str(),
        };
        let mut response = (status, Json(body)).into_response();
        if code == ErrorCode::RateLimited {
            // A hint: the bucket refills continuously, at --rest-rate-limit.
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}
