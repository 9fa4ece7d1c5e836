//! Calls between command APIs, never from clients. Only a request signed
//! with the hop key (`routing::HopKey`, verified by
//! `forwarding::accept_forwarded`) is served; anything else is answered as
//! a route that does not exist.

use axum::body::to_bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use platform::http::{ErrorCode, error_response};

use super::AppState;
use super::forwarding::Forwarded;
use crate::error::ApiError;
use crate::service::SlotRequest;

/// Reserves a slot of a sender's daily request limit here, at the owner of
/// the sender's partition: 204, or the refusal as the client would get it
/// (429 `daily_limit_reached`; 503 when this instance does not serve the
/// sender after all).
pub async fn reserve_slot(State(state): State<AppState>, request: Request) -> Response {
    if request.extensions().get::<Forwarded>().is_none() {
        return error_response(StatusCode::NOT_FOUND, ErrorCode::RouteNotFound, "no such route", None);
    }
    let slot = match to_bytes(request.into_body(), 4096)
        .await
        .ok()
        .and_then(|b| serde_json::from_slice::<SlotRequest>(&b).ok())
    {
        Some(slot) => slot,
        None => {
            return error_response(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidFieldType,
                "expected a slot request",
                None,
            );
        }
    };
    match state.service.reserve_slot_here(slot).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(err) => ApiError::from(err).into_response(),
    }
}
