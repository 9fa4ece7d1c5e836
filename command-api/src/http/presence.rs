//! Presence: heartbeats and going offline.

use super::*;
use crate::domain::presence::PresenceCommand;

#[utoipa::path(post, path = "/v1/presence/heartbeat", tag = "presence", security(("bearer" = [])),
    responses((status = 204, description = "Online for the presence TTL (5 minutes)"), (status = 401, body = ErrorResponse)))]
pub async fn heartbeat(
    State(state): State<AppState>,
    Caller(claims): Caller,
    WriteNoBody(ctx): WriteNoBody,
) -> Result<Response, ApiError> {
    Ok(respond(&state, state.service.presence(&claims, PresenceCommand::Heartbeat, &ctx).await?))
}

#[utoipa::path(post, path = "/v1/presence/offline", tag = "presence", security(("bearer" = [])),
    responses((status = 204, description = "Offline; last seen now"), (status = 401, body = ErrorResponse)))]
pub async fn offline(
    State(state): State<AppState>,
    Caller(claims): Caller,
    WriteNoBody(ctx): WriteNoBody,
) -> Result<Response, ApiError> {
    Ok(respond(&state, state.service.presence(&claims, PresenceCommand::GoOffline, &ctx).await?))
}
