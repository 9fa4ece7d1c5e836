//! `GET /v1/feed`: everyone the caller has no request with, newest first.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use platform::http::ApiQuery;
use platform::http::{ErrorCode, ErrorResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::paging::positive;
use super::profile::PublicProfile;
use super::{ApiError, AppState, Caller, Consistency};
use crate::reader::ViewReader;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/feed", get(feed))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FeedPage {
    pub items: Vec<PublicProfile>,
    pub page: u64,
    pub limit: u64,
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FeedParams {
    /// 1-based page number (default 1, at most 1 000 000).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1_000_000, default = 1)]
    pub page: Option<String>,
    /// Profiles per page, 1-50 (default 10).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 50, default = 10)]
    pub limit: Option<String>,
}

const MAX_FEED_LIMIT: u64 = 50;
/// 50 000 000 profiles deep at the largest limit.
const MAX_FEED_PAGE: u64 = 1_000_000;

#[utoipa::path(get, path = "/v1/feed", tag = "connections", security(("bearer" = [])), params(FeedParams),
    responses((status = 200, body = FeedPage), (status = 400, description = "page or limit out of range", body = ErrorResponse), (status = 401, body = ErrorResponse)))]
pub async fn feed(
    State(reader): State<ViewReader>,
    Caller(claims): Caller,
    _consistency: Consistency,
    ApiQuery(params): ApiQuery<FeedParams>,
) -> Result<Json<FeedPage>, ApiError> {
    let page = positive(params.page.as_deref(), 1, ErrorCode::PageInvalid, "page")?;
    let limit = positive(params.limit.as_deref(), 10, ErrorCode::LimitInvalid, "limit")?;
    if page > MAX_FEED_PAGE {
        // Far beyond any directory, and its offset would overflow the
        // stores' skip: a client's mistake, not an outage.
        return Err(ApiError::BadRequest {
            code: ErrorCode::PageTooLarge,
            message: format!("page must be at most {MAX_FEED_PAGE}"),
        });
    }
    if limit > MAX_FEED_LIMIT {
        return Err(ApiError::BadRequest {
            code: ErrorCode::LimitTooLarge,
            message: format!("limit must be at most {MAX_FEED_LIMIT}"),
        });
    }
    let users = reader.feed(&claims.sub.to_string(), page, limit).await?;
    Ok(Json(FeedPage { items: users.iter().map(PublicProfile::from).collect(), page, limit }))
}
