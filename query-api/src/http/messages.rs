//! `GET /v1/messages/{otherUserId}`: a conversation's history, newest first.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use platform::http::ApiQuery;
use platform::http::{ErrorCode, ErrorResponse};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;
use views::MessageItem;

use super::paging::list_limit;
use super::{ApiError, AppState, Caller, Consistency};
use crate::reader::ViewReader;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/messages/{other_user_id}", get(history))
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessagePage {
    pub items: Vec<MessageItem>,
    /// Pass as `before` for the next (older) page; null at the end.
    pub next_before: Option<String>,
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryParams {
    /// A messageId: return messages older than it.
    #[param(value_type = Option<uuid::Uuid>)]
    pub before: Option<String>,
    /// Messages per page, 1-100 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100, default = 50)]
    pub limit: Option<String>,
}

#[utoipa::path(get, path = "/v1/messages/{otherUserId}", tag = "messages", security(("bearer" = [])),
    params(("otherUserId" = uuid::Uuid, Path), HistoryParams),
    responses((status = 200, body = MessagePage), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse)))]
pub async fn history(
    State(reader): State<ViewReader>,
    Caller(claims): Caller,
    Consistency(freshness): Consistency,
    Path(other): Path<String>,
    ApiQuery(params): ApiQuery<HistoryParams>,
) -> Result<Json<MessagePage>, ApiError> {
    let other = Uuid::parse_str(&other).map_err(|_| ApiError::BadRequest {
        code: ErrorCode::UserIdInvalid,
        message: "otherUserId must be a UUID".into(),
    })?;
    let before = match params.before.as_deref() {
        None => None,
        Some(b) => Some(Uuid::parse_str(b).map_err(|_| ApiError::BadRequest {
            code: ErrorCode::BeforeInvalid,
            message: "before must be a messageId".into(),
        })?),
    };
    let limit = list_limit(params.limit.as_deref())?;
    let pair = events::connection::pair_key(claims.sub, other);
    let before = before.map(|b| b.to_string());
    let messages = reader.history(&pair, before.as_deref(), limit, freshness).await?;
    let next_before = (messages.len() == limit).then(|| messages.last().map(|m| m.message_id.clone())).flatten();
    let items = messages.into_iter().map(MessageItem::from).collect();
    Ok(Json(MessagePage { items, next_before }))
}
