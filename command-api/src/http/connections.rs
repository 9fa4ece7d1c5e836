//! Connection requests: sending and reviewing.

use super::*;

/// The `{status}` a request is sent with (the document's enum; the handler
/// parses the same names into `RequestStatus`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SendStatus {
    Interested,
    Ignored,
}

/// The `{status}` a request is reviewed with.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReviewStatus {
    Accepted,
    Rejected,
}

#[utoipa::path(post, path = "/v1/requests/send/{status}/{toUserId}", tag = "connections", security(("bearer" = [])),
    params(("status" = inline(SendStatus), Path), ("toUserId" = Uuid, Path)),
    responses((status = 201, body = RequestIdResponse), (status = 400, body = ErrorResponse), (status = 404, body = ErrorResponse),
        (status = 409, description = "A request between the two exists", body = ErrorResponse),
        (status = 429, description = "Daily limit of the tier; Retry-After until UTC midnight", body = ErrorResponse)))]
pub async fn send_request(
    State(state): State<AppState>,
    Caller(claims): Caller,
    Path((status, to)): Path<(String, String)>,
    WriteNoBody(ctx): WriteNoBody,
) -> Result<Response, ApiError> {
    let status = parse_status(&status, &[RequestStatus::Interested, RequestStatus::Ignored])?;
    let to = parse_uuid(&to, ErrorCode::UserIdInvalid, "toUserId")?;
    let outcome = state.service.send_request(&claims, to, status, &ctx).await?;
    Ok(respond(&state, outcome))
}

#[utoipa::path(post, path = "/v1/requests/review/{status}/{requestId}", tag = "connections", security(("bearer" = [])),
    params(("status" = inline(ReviewStatus), Path), ("requestId" = Uuid, Path)),
    responses((status = 200, body = RequestIdResponse), (status = 400, body = ErrorResponse),
        (status = 403, description = "Not the recipient", body = ErrorResponse), (status = 404, body = ErrorResponse),
        (status = 409, description = "Not a pending interested request", body = ErrorResponse)))]
pub async fn review_request(
    State(state): State<AppState>,
    Caller(claims): Caller,
    Path((status, request_id)): Path<(String, String)>,
    WriteNoBody(ctx): WriteNoBody,
) -> Result<Response, ApiError> {
    let status = parse_status(&status, &[RequestStatus::Accepted, RequestStatus::Rejected])?;
    let request_id = parse_uuid(&request_id, ErrorCode::RequestIdInvalid, "requestId")?;
    let outcome = state.service.review_request(&claims, request_id, status, &ctx).await?;
    Ok(respond(&state, outcome))
}
