//! `GET /v1/stats/daily`: the analytics counts per UTC day.

use std::collections::HashMap;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use platform::http::ApiQuery;
use platform::http::{ErrorCode, ErrorResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiError, AppState, Caller, Consistency};
use crate::reader::ViewReader;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/stats/daily", get(daily_stats))
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DayCounts {
    pub date: String,
    pub signups: i64,
    pub logins: i64,
    pub requests_sent: i64,
    pub requests_accepted: i64,
    pub messages_sent: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DailyStats {
    pub days: Vec<DayCounts>,
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatsParams {
    /// First day, YYYY-MM-DD (UTC).
    #[param(required = true, value_type = String, format = Date)]
    pub from: Option<String>,
    /// Last day, YYYY-MM-DD (UTC), inclusive; at most 366 days after `from`.
    #[param(required = true, value_type = String, format = Date)]
    pub to: Option<String>,
}

const MAX_STATS_DAYS: i64 = 366;

#[utoipa::path(get, path = "/v1/stats/daily", tag = "analytics", security(("bearer" = [])), params(StatsParams),
    responses((status = 200, body = DailyStats), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse)))]
pub async fn daily_stats(
    State(reader): State<ViewReader>,
    _caller: Caller,
    _consistency: Consistency,
    ApiQuery(params): ApiQuery<StatsParams>,
) -> Result<Json<DailyStats>, ApiError> {
    let day = |raw: Option<&str>, what: &str| {
        raw.and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok()).ok_or_else(|| ApiError::BadRequest {
            code: ErrorCode::DateInvalid,
            message: format!("{what} must be a date, YYYY-MM-DD"),
        })
    };
    let (from, to) = (day(params.from.as_deref(), "from")?, day(params.to.as_deref(), "to")?);
    let span = (to - from).num_days();
    if span < 0 {
        return Err(ApiError::BadRequest {
            code: ErrorCode::DateRangeInvalid,
            message: "from must not be after to".into(),
        });
    }
    if span >= MAX_STATS_DAYS {
        return Err(ApiError::BadRequest {
            code: ErrorCode::DateRangeTooLong,
            message: format!("at most {MAX_STATS_DAYS} days at a time"),
        });
    }
    let dates: Vec<String> =
        (0..=span).map(|i| (from + chrono::Duration::days(i)).format("%Y-%m-%d").to_string()).collect();
    let found: HashMap<String, views::DailyStatsDoc> =
        reader.daily_stats(&dates).await?.into_iter().map(|d| (d.date.clone(), d)).collect();
    let days = dates
        .into_iter()
        .map(|date| {
            let d = found.get(&date).cloned().unwrap_or_default();
            DayCounts {
                date,
                signups: d.signups,
                logins: d.logins,
                requests_sent: d.requests_sent,
                requests_accepted: d.requests_accepted,
                messages_sent: d.messages_sent,
            }
        })
        .collect();
    Ok(Json(DailyStats { days }))
}
