//! `GET /v1/presence/{userId}`: whether a user is online.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use platform::http::{ErrorCode, ErrorResponse};
use uuid::Uuid;
use views::PresenceView;

use super::{ApiError, AppState, Caller, Consistency};
use crate::reader::ViewReader;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/presence/{user_id}", get(presence))
}

#[utoipa::path(get, path = "/v1/presence/{userId}", tag = "presence", security(("bearer" = [])),
    params(("userId" = uuid::Uuid, Path)),
    responses((status = 200, body = PresenceView), (status = 400, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn presence(
    State(reader): State<ViewReader>,
    _caller: Caller,
    Consistency(freshness): Consistency,
    Path(user_id): Path<String>,
) -> Result<Json<PresenceView>, ApiError> {
    let user_id = Uuid::parse_str(&user_id)
        .map_err(|_| ApiError::BadRequest { code: ErrorCode::UserIdInvalid, message: "userId must be a UUID".into() })?
        .to_string();
    let view = match reader.presence(&user_id, freshness).await? {
        Some(p) => PresenceView { user_id, online: p.online_until > Utc::now(), last_seen: Some(p.last_seen) },
        None if reader.user(&user_id, freshness).await?.is_some() => {
            PresenceView { user_id, online: false, last_seen: None }
        }
        None => return Err(ApiError::NotFound { code: ErrorCode::UserNotFound, message: "no such user".into() }),
    };
    Ok(Json(view))
}
