use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use platform::http::{BodyRejection, ErrorCode, error_response};

use crate::domain::Rejection;
use crate::service::CommandError;

/// Every way a command-api request can fail, as one JSON error each.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("{}", .0.message)]
    Body(BodyRejection),
    #[error("{message}")]
    BadRequest { code: ErrorCode, message: String },
    #[error("this refresh token was already used; its session has ended, log in again")]
    RefreshTokenReused,
}

impl From<BodyRejection> for ApiError {
    fn from(r: BodyRejection) -> Self {
        ApiError::Body(r)
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        ApiError::Command(CommandError::Rejected(r))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let command = match self {
            ApiError::Body(rejection) => return rejection.into_response(),
            ApiError::BadRequest { code, message } => {
                return error_response(StatusCode::BAD_REQUEST, code, &message, None);
            }
            ApiError::RefreshTokenReused => {
                let message = self.to_string();
                return error_response(StatusCode::UNAUTHORIZED, ErrorCode::RefreshTokenReused, &message, None);
            }
            ApiError::Command(c) => c,
        };
        let message = command.to_string();
        let (status, code, retry_after) = match command {
            CommandError::Rejected(Rejection::Invalid { code, .. }) => (StatusCode::BAD_REQUEST, code, None),
            CommandError::Rejected(Rejection::Conflict { code, .. }) => (StatusCode::CONFLICT, code, None),
            CommandError::Rejected(Rejection::NotFound { code, .. }) => (StatusCode::NOT_FOUND, code, None),
            CommandError::Rejected(Rejection::Forbidden { code, .. }) => (StatusCode::FORBIDDEN, code, None),
            CommandError::Rejected(Rejection::LimitReached { code, retry_after_secs, .. }) => {
                (StatusCode::TOO_MANY_REQUESTS, code, Some(retry_after_secs))
            }
            CommandError::Rejected(Rejection::SessionNotActive) | CommandError::Unauthenticated => {
                (StatusCode::UNAUTHORIZED, ErrorCode::InvalidToken, None)
            }
            CommandError::InvalidCredentials => (StatusCode::UNAUTHORIZED, ErrorCode::InvalidCredentials, None),
            CommandError::Throttled { retry_after_secs } => {
                (StatusCode::TOO_MANY_REQUESTS, ErrorCode::TooManyAttempts, Some(retry_after_secs))
            }
            CommandError::IdempotencyKeyReused => {
                (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::IdempotencyKeyReused, None)
            }
            CommandError::Unavailable { dependency, ref detail } => {
                tracing::warn!(dependency, detail, "dependency unavailable");
                let message = format!("{dependency} is unavailable; nothing was written, retry shortly");
                return error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::DependencyUnavailable,
                    &message,
                    Some(1),
                );
            }
            CommandError::OutcomeUnknown { ref detail } => {
                tracing::warn!(detail, "the outcome of an append is unknown");
                let message = "the broker did not confirm this write in time, so it may or may not have been \
                               made; retry with the same Idempotency-Key to get its outcome";
                return error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::DependencyUnavailable,
                    message,
                    Some(1),
                );
            }
            CommandError::NotReady => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::NotReady, Some(1)),
            CommandError::NotOwner { partition } => {
                let mut response =
                    error_response(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::NotReady, &message, Some(1));
                response.extensions_mut().insert(crate::http::forwarding::OwnedElsewhere(partition));
                return response;
            }
            CommandError::HasherBusy(_) => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::HasherBusy, Some(1)),
        };
        error_response(status, code, &message, retry_after)
    }
}
