//! `GET /v1/notifications`: the newest 50, and the unread count.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use platform::http::ApiQuery;
use platform::http::{ErrorCode, ErrorResponse};
use serde::Serialize;
use utoipa::ToSchema;
use views::NotificationItem;

use super::{ApiError, AppState, Caller, Consistency};
use crate::reader::ViewReader;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/notifications", get(notifications))
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationList {
    pub items: Vec<NotificationItem>,
    pub unread_count: i64,
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NotificationParams {
    /// true: only unread ones.
    #[param(value_type = Option<bool>)]
    pub unread: Option<String>,
}

#[utoipa::path(get, path = "/v1/notifications", tag = "notifications", security(("bearer" = [])), params(NotificationParams),
    responses((status = 200, body = NotificationList), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse)))]
pub async fn notifications(
    State(reader): State<ViewReader>,
    Caller(claims): Caller,
    _consistency: Consistency,
    ApiQuery(params): ApiQuery<NotificationParams>,
) -> Result<Json<NotificationList>, ApiError> {
    let unread_only = match params.unread.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(ApiError::BadRequest {
                code: ErrorCode::UnreadInvalid,
                message: "unread must be true or false".into(),
            });
        }
    };
    let (docs, unread_count) = reader.notifications(&claims.sub.to_string(), unread_only, 50).await?;
    let items = docs.into_iter().map(NotificationItem::from).collect();
    Ok(Json(NotificationList { items, unread_count }))
}
