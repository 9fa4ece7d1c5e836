//! Reading your own writes: `X-Consistency-Token` (docs/design.md §4).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use platform::http::ErrorCode;
use views::ConsistencyToken;

use super::{ApiError, AppState};
use crate::reader::Freshness;

/// Honours `X-Consistency-Token`: waits for the views, then reads durably.
#[derive(Debug, Clone, Copy)]
pub struct Consistency(pub Freshness);

impl FromRequestParts<AppState> for Consistency {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(ConsistencyToken::HEADER) else {
            return Ok(Consistency(Freshness::CacheFirst));
        };
        let token = value.to_str().ok().and_then(|v| ConsistencyToken::decode(v, &state.consistency).ok()).ok_or_else(
            || ApiError::BadRequest {
                code: ErrorCode::ConsistencyTokenInvalid,
                message: "X-Consistency-Token is not a token this service issued".into(),
            },
        )?;
        state.views.reader().wait_for(&token, state.consistency_wait).await?;
        Ok(Consistency(Freshness::Durable))
    }
}
