//! Every way a read can fail, as one JSON error each.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use platform::http::{ErrorCode, error_response};

use crate::reader::ReadError;
use crate::streams::OpenError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing, invalid, expired or revoked token")]
    Unauthenticated,
    #[error("{message}")]
    BadRequest { code: ErrorCode, message: String },
    #[error("{message}")]
    NotFound { code: ErrorCode, message: String },
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("the live stream is unavailable; retry shortly")]
    StreamUnavailable,
    #[error("{0}; close one first")]
    TooManyStreams(#[from] OpenError),
    #[error("sessions cannot be checked yet; retry shortly")]
    RevocationsUnknown,
    #[error("too many {group} requests; retry later")]
    RateLimited { group: &'static str, retry_after: std::time::Duration },
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        match self {
            ApiError::Unauthenticated => {
                error_response(StatusCode::UNAUTHORIZED, ErrorCode::InvalidToken, &message, None)
            }
            ApiError::BadRequest { code, .. } => error_response(StatusCode::BAD_REQUEST, code, &message, None),
            ApiError::NotFound { code, .. } => error_response(StatusCode::NOT_FOUND, code, &message, None),
            ApiError::RateLimited { retry_after, .. } => {
                // As the rate-limit middleware answers.
                let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                error_response(StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited, &message, Some(seconds))
            }
            ApiError::RevocationsUnknown => {
                error_response(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::DependencyUnavailable, &message, Some(1))
            }
            ApiError::StreamUnavailable => {
                error_response(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::DependencyUnavailable, &message, Some(1))
            }
            ApiError::TooManyStreams(_) => {
                error_response(StatusCode::TOO_MANY_REQUESTS, ErrorCode::TooManyStreams, &message, Some(5))
            }
            ApiError::Read(ReadError::ConsistencyTimeout(_)) => {
                error_response(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::ConsistencyTimeout, &message, Some(1))
            }
            ApiError::Read(ReadError::Mongo(err)) => {
                tracing::warn!(error = %err, "mongodb unavailable");
                error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::DependencyUnavailable,
                    "mongodb is unavailable; retry shortly",
                    Some(1),
                )
            }
        }
    }
}
