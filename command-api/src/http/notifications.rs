//! Notifications: marking one read.

use super::*;

#[utoipa::path(post, path = "/v1/notifications/{notificationId}/read", tag = "notifications", security(("bearer" = [])),
    params(("notificationId" = Uuid, Path)),
    responses((status = 204, description = "Read (again: no change)"), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn read_notification(
    State(state): State<AppState>,
    Caller(claims): Caller,
    Path(id): Path<String>,
    WriteNoBody(ctx): WriteNoBody,
) -> Result<Response, ApiError> {
    let id = parse_uuid(&id, ErrorCode::NotificationIdInvalid, "notificationId")?;
    Ok(respond(&state, state.service.read_notification(&claims, id, &ctx).await?))
}
