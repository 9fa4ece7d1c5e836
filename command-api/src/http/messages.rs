//! Messages: sending, and marking delivered or read.

use super::*;

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct MessageRequest {
    /// 1-2000 characters, not all of them blank.
    #[schema(min_length = 1, max_length = 2000, pattern = r"\S")]
    pub text: String,
}

/// `{"tier": "free" | "silver" | "gold"}`.

#[utoipa::path(post, path = "/v1/messages/{toUserId}", tag = "messages", request_body = MessageRequest, security(("bearer" = [])),
    params(("toUserId" = Uuid, Path)),
    responses((status = 201, body = MessageIdResponse), (status = 400, body = ErrorResponse),
        (status = 403, description = "Not connected", body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn send_message(
    State(state): State<AppState>,
    Caller(claims): Caller,
    Path(to): Path<String>,
    Write(ctx, body): Write<MessageRequest>,
) -> Result<Response, ApiError> {
    let to = parse_uuid(&to, ErrorCode::UserIdInvalid, "toUserId")?;
    let outcome = state.service.send_message(&claims, to, body.text, &ctx).await?;
    Ok(respond(&state, outcome))
}

#[utoipa::path(post, path = "/v1/messages/{messageId}/read", tag = "messages", security(("bearer" = [])),
    params(("messageId" = Uuid, Path)),
    responses((status = 204, description = "Read (reading again changes nothing)"), (status = 403, description = "Not the recipient", body = ErrorResponse),
        (status = 404, body = ErrorResponse)))]
pub async fn read_message(
    State(state): State<AppState>,
    Caller(claims): Caller,
    Path(message_id): Path<String>,
    WriteNoBody(ctx): WriteNoBody,
) -> Result<Response, ApiError> {
    let message_id = parse_uuid(&message_id, ErrorCode::MessageIdInvalid, "messageId")?;
    let outcome = state.service.read_message(&claims, message_id, &ctx).await?;
    Ok(respond(&state, outcome))
}

#[utoipa::path(post, path = "/v1/messages/{messageId}/delivered", tag = "messages", security(("bearer" = [])),
    params(("messageId" = Uuid, Path)),
    responses((status = 204, description = "Delivered (again, or once read: no change)"), (status = 403, description = "Not the recipient", body = ErrorResponse),
        (status = 404, body = ErrorResponse)))]
pub async fn deliver_message(
    State(state): State<AppState>,
    Caller(claims): Caller,
    Path(message_id): Path<String>,
    WriteNoBody(ctx): WriteNoBody,
) -> Result<Response, ApiError> {
    let message_id = parse_uuid(&message_id, ErrorCode::MessageIdInvalid, "messageId")?;
    let outcome = state.service.deliver_message(&claims, message_id, &ctx).await?;
    Ok(respond(&state, outcome))
}
