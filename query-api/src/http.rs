//! Thin axum handlers over the view reader.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRef, FromRequestParts, Path, Query, State};
use axum::http::{StatusCode, request::Parts};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use events::user::Gender;
use metrics_exporter_prometheus::PrometheusHandle;
use platform::auth::{Claims, JwtKeys};
use platform::http::{BearerAuth, ErrorCode, ErrorResponse, StandardResponses, error_response};
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};
use utoipa_swagger_ui::SwaggerUi;
use uuid::Uuid;
use views::{ConsistencyToken, MessageItem, NotificationItem, PresenceView, UserDoc};

use crate::cursor::{Cursor, List};
use crate::reader::{Freshness, ReadError, ViewReader, ViewSource};
use crate::streams::{OpenError, StreamHub, parse_stream_id};

#[derive(Clone)]
pub struct AppState {
    pub views: ViewSource,
    /// Revoked sessions, from the durable records the command API writes.
    pub revocations: views::revocation::RevocationList,
    /// The open live streams, read from Redis by one task.
    pub streams: StreamHub,
    pub keys: views::keys::RedisKeys,
    pub jwt: Arc<JwtKeys>,
    pub metrics: PrometheusHandle,
    pub consistency_wait: Duration,
    /// Checks that a consistency token is one the command API signed.
    pub consistency: views::ConsistencyKey,
    pub rate_limit: platform::rate_limit::RateLimitState,
    pub in_flight: platform::http::InFlight,
}

impl FromRef<AppState> for ViewReader {
    fn from_ref(state: &AppState) -> Self {
        state.views.reader()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing, invalid, expired or revoked token")]
    Unauthenticated,
    #[error("{message}")]
    BadRequest { code: ErrorCode, message: String },
    #[error("{message}")]
    NotFound { code: ErrorCode, message: String },
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("the live stream is unavailable; retry shortly")]
    StreamUnavailable,
    #[error("{0}; close one first")]
    TooManyStreams(#[from] OpenError),
    #[error("sessions cannot be checked yet; retry shortly")]
    RevocationsUnknown,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        match self {
            ApiError::Unauthenticated => {
                error_response(StatusCode::UNAUTHORIZED, ErrorCode::InvalidToken, &message, None)
            }
            ApiError::BadRequest { code, .. } => error_response(StatusCode::BAD_REQUEST, code, &message, None),
            ApiError::NotFound { code, .. } => error_response(StatusCode::NOT_FOUND, code, &message, None),
            ApiError::RevocationsUnknown => {
                error_response(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::DependencyUnavailable, &message, Some(1))
            }
            ApiError::StreamUnavailable => {
                error_response(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::DependencyUnavailable, &message, Some(1))
            }
            ApiError::TooManyStreams(_) => {
                error_response(StatusCode::TOO_MANY_REQUESTS, ErrorCode::TooManyStreams, &message, Some(5))
            }
            ApiError::Read(ReadError::ConsistencyTimeout(_)) => {
                error_response(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::ConsistencyTimeout, &message, Some(1))
            }
            ApiError::Read(ReadError::Mongo(err)) => {
                tracing::warn!(error = %err, "mongodb unavailable");
                error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::DependencyUnavailable,
                    "mongodb is unavailable; retry shortly",
                    Some(1),
                )
            }
        }
    }
}

/// A caller with a valid token whose session is not known to be revoked.
///
/// Only the command API signs tokens, and only after the session's start
/// is durably in Kafka; a session the views have not seen yet is therefore
/// genuine and merely not projected. Revocation is what must be checked:
/// the durable revocation records (held in memory, polled), Redis'
/// `revoked:` keys and the session view each refuse on their own. Until
/// the records were loaded once, nobody is let in (fail closed).
#[derive(Debug, Clone)]
pub struct Caller(pub Claims);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = platform::auth::token_from_headers(&parts.headers).ok_or(ApiError::Unauthenticated)?;
        let claims = state.jwt.verify(&token).map_err(|_| ApiError::Unauthenticated)?;
        let session_id = claims.jti.to_string();
        if !state.revocations.is_loaded() {
            return Err(ApiError::RevocationsUnknown);
        }
        if state.revocations.is_revoked(&session_id) {
            return Err(ApiError::Unauthenticated);
        }
        match state.views.reader().session(&claims.jti.to_string()).await? {
            Some(session) if session.revoked || session.user_id != claims.sub.to_string() => {
                Err(ApiError::Unauthenticated)
            }
            _ => Ok(Caller(claims)),
        }
    }
}

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

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PublicProfile {
    pub user_id: String,
    pub first_name: String,
    pub last_name: String,
    pub age: Option<u8>,
    #[schema(value_type = Option<String>)]
    pub gender: Option<Gender>,
    pub about: Option<String>,
    pub skills: Vec<String>,
    pub photo_url: Option<String>,
}

impl From<&UserDoc> for PublicProfile {
    fn from(u: &UserDoc) -> Self {
        Self {
            user_id: u.user_id.clone(),
            first_name: u.first_name.clone(),
            last_name: u.last_name.clone(),
            age: u.age,
            gender: u.gender,
            about: u.about.clone(),
            skills: u.skills.clone(),
            photo_url: u.photo_url.clone(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OwnProfile {
    #[serde(flatten)]
    pub public: PublicProfile,
    pub email_id: String,
    pub membership: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[utoipa::path(get, path = "/v1/profile", tag = "profile", security(("bearer" = [])),
    params(("X-Consistency-Token" = Option<String>, Header, description = "From a write: wait (≤ 5 s) until the views include it")),
    responses((status = 200, body = OwnProfile), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse),
        (status = 503, description = "Views not caught up in time, or MongoDB down", body = ErrorResponse)))]
pub async fn own_profile(
    State(reader): State<ViewReader>,
    Caller(claims): Caller,
    Consistency(freshness): Consistency,
) -> Result<Json<OwnProfile>, ApiError> {
    let user = reader.user(&claims.sub.to_string(), freshness).await?.ok_or_else(|| ApiError::NotFound {
        code: ErrorCode::UserNotFound,
        message: "your profile is not in the views yet; send X-Consistency-Token to wait for it".into(),
    })?;
    Ok(Json(OwnProfile {
        public: PublicProfile::from(&user),
        email_id: user.email_id,
        membership: user.membership,
        created_at: user.created_at,
        updated_at: user.updated_at,
    }))
}

#[utoipa::path(get, path = "/v1/users/{userId}", tag = "profile", security(("bearer" = [])),
    params(("userId" = String, Path, description = "A user id (UUID)")),
    responses((status = 200, body = PublicProfile), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn public_profile(
    State(reader): State<ViewReader>,
    _caller: Caller,
    Consistency(freshness): Consistency,
    Path(user_id): Path<String>,
) -> Result<Json<PublicProfile>, ApiError> {
    let user_id = Uuid::parse_str(&user_id).map_err(|_| ApiError::BadRequest {
        code: ErrorCode::UserIdInvalid,
        message: "userId must be a UUID".into(),
    })?;
    let user = reader
        .user(&user_id.to_string(), freshness)
        .await?
        .ok_or_else(|| ApiError::NotFound { code: ErrorCode::UserNotFound, message: "no such user".into() })?;
    Ok(Json(PublicProfile::from(&user)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FeedPage {
    pub items: Vec<PublicProfile>,
    pub page: u64,
    pub limit: u64,
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
pub struct FeedParams {
    /// 1-based page number (default 1, at most 1 000 000).
    pub page: Option<String>,
    /// Profiles per page, 1-50 (default 10).
    pub limit: Option<String>,
}

const MAX_FEED_LIMIT: u64 = 50;
/// 50 000 000 profiles deep at the largest limit.
const MAX_FEED_PAGE: u64 = 1_000_000;

fn positive(raw: Option<&str>, default: u64, code: ErrorCode, what: &str) -> Result<u64, ApiError> {
    match raw {
        None => Ok(default),
        Some(s) => s.trim().parse::<u64>().ok().filter(|n| *n >= 1).ok_or_else(|| ApiError::BadRequest {
            code,
            message: format!("{what} must be a whole number of at least 1"),
        }),
    }
}

#[utoipa::path(get, path = "/v1/feed", tag = "connections", security(("bearer" = [])), params(FeedParams),
    responses((status = 200, body = FeedPage), (status = 400, description = "page or limit out of range", body = ErrorResponse), (status = 401, body = ErrorResponse)))]
pub async fn feed(
    State(reader): State<ViewReader>,
    Caller(claims): Caller,
    _consistency: Consistency,
    Query(params): Query<FeedParams>,
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

/// Paging of the lists ordered by cursor: connections, requests received.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Items per page, 1-100 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100, default = 50)]
    pub limit: Option<String>,
    /// The `nextBefore` of the previous page: items after it. Opaque;
    /// omit it for the first page.
    pub before: Option<String>,
}

const DEFAULT_LIST_LIMIT: u64 = 50;
const MAX_LIST_LIMIT: u64 = 100;

/// A checked `limit` and `before` of `list`.
fn list_paging(params: &ListParams, list: List) -> Result<(usize, Option<Cursor>), ApiError> {
    let limit = positive(params.limit.as_deref(), DEFAULT_LIST_LIMIT, ErrorCode::LimitInvalid, "limit")?;
    if limit > MAX_LIST_LIMIT {
        return Err(ApiError::BadRequest {
            code: ErrorCode::LimitTooLarge,
            message: format!("limit must be at most {MAX_LIST_LIMIT}"),
        });
    }
    let before = match params.before.as_deref() {
        None => None,
        Some(raw) => Some(Cursor::decode(raw.trim(), list).map_err(|_| ApiError::BadRequest {
            code: ErrorCode::CursorInvalid,
            message: "before must be a nextBefore this list returned".into(),
        })?),
    };
    Ok((limit as usize, before))
}

/// A page out of at most `limit` + 1 documents, in order: the first
/// `limit`, and the cursor of the last of them when there were more.
fn page_of<T>(
    mut found: Vec<T>,
    limit: usize,
    list: List,
    position: impl Fn(&T) -> Cursor,
) -> (Vec<T>, Option<String>) {
    if found.len() <= limit {
        return (found, None);
    }
    found.truncate(limit);
    let next = found.last().map(|last| position(last).encode(list));
    (found, next)
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Connection {
    #[serde(flatten)]
    pub profile: PublicProfile,
    /// When the request between the two was accepted.
    pub connected_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionPage {
    /// Newest connection first.
    pub items: Vec<Connection>,
    /// Pass as `before` for the next (older) page; null on the last page.
    #[schema(required = true)]
    pub next_before: Option<String>,
}

#[utoipa::path(get, path = "/v1/connections", tag = "connections", security(("bearer" = [])), params(ListParams),
    responses((status = 200, body = ConnectionPage),
        (status = 400, description = "`limit_invalid`, `limit_too_large` or `cursor_invalid`", body = ErrorResponse),
        (status = 401, body = ErrorResponse)))]
pub async fn connections(
    State(reader): State<ViewReader>,
    Caller(claims): Caller,
    _consistency: Consistency,
    Query(params): Query<ListParams>,
) -> Result<Json<ConnectionPage>, ApiError> {
    let (limit, before) = list_paging(&params, List::Connections)?;
    let found = reader.connections(&claims.sub.to_string(), before.as_ref(), limit).await?;
    let (connections, next_before) =
        page_of(found, limit, List::Connections, |c| Cursor { at: c.connected_at, id: c.request_id.clone() });
    let others: Vec<String> = connections.iter().map(|c| c.other_user_id.clone()).collect();
    let profiles: std::collections::HashMap<String, UserDoc> =
        reader.users_by_id(&others).await?.into_iter().map(|u| (u.user_id.clone(), u)).collect();
    // A profile not projected yet is left out; the cursor still moves past it.
    let items = connections
        .into_iter()
        .filter_map(|c| {
            Some(Connection {
                profile: PublicProfile::from(profiles.get(&c.other_user_id)?),
                connected_at: c.connected_at,
            })
        })
        .collect();
    Ok(Json(ConnectionPage { items, next_before }))
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReceivedRequest {
    pub request_id: String,
    pub from: PublicProfile,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReceivedRequests {
    /// Newest request first.
    pub items: Vec<ReceivedRequest>,
    /// Pass as `before` for the next (older) page; null on the last page.
    #[schema(required = true)]
    pub next_before: Option<String>,
}

#[utoipa::path(get, path = "/v1/requests/received", tag = "connections", security(("bearer" = [])), params(ListParams),
    responses((status = 200, body = ReceivedRequests),
        (status = 400, description = "`limit_invalid`, `limit_too_large` or `cursor_invalid`", body = ErrorResponse),
        (status = 401, body = ErrorResponse)))]
pub async fn requests_received(
    State(reader): State<ViewReader>,
    Caller(claims): Caller,
    _consistency: Consistency,
    Query(params): Query<ListParams>,
) -> Result<Json<ReceivedRequests>, ApiError> {
    let (limit, before) = list_paging(&params, List::RequestsReceived)?;
    let found = reader.requests_received(&claims.sub.to_string(), before.as_ref(), limit).await?;
    let (requests, next_before) =
        page_of(found, limit, List::RequestsReceived, |r| Cursor { at: r.created_at, id: r.request_id.clone() });
    let senders: Vec<String> = requests.iter().map(|r| r.from_user_id.clone()).collect();
    let profiles: std::collections::HashMap<String, UserDoc> =
        reader.users_by_id(&senders).await?.into_iter().map(|u| (u.user_id.clone(), u)).collect();
    let items = requests
        .into_iter()
        .filter_map(|r| {
            let from = PublicProfile::from(profiles.get(&r.from_user_id)?);
            Some(ReceivedRequest { request_id: r.request_id, from, created_at: r.created_at })
        })
        .collect();
    Ok(Json(ReceivedRequests { items, next_before }))
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessagePage {
    pub items: Vec<MessageItem>,
    /// Pass as `before` for the next (older) page; null at the end.
    pub next_before: Option<String>,
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
pub struct HistoryParams {
    /// A messageId: return messages older than it.
    pub before: Option<String>,
    /// Messages per page, 1-100 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100, default = 50)]
    pub limit: Option<String>,
}

#[utoipa::path(get, path = "/v1/messages/{otherUserId}", tag = "messages", security(("bearer" = [])),
    params(("otherUserId" = String, Path), HistoryParams),
    responses((status = 200, body = MessagePage), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse)))]
pub async fn history(
    State(reader): State<ViewReader>,
    Caller(claims): Caller,
    Consistency(freshness): Consistency,
    Path(other): Path<String>,
    Query(params): Query<HistoryParams>,
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
    let limit = positive(params.limit.as_deref(), DEFAULT_LIST_LIMIT, ErrorCode::LimitInvalid, "limit")?;
    if limit > MAX_LIST_LIMIT {
        return Err(ApiError::BadRequest {
            code: ErrorCode::LimitTooLarge,
            message: format!("limit must be at most {MAX_LIST_LIMIT}"),
        });
    }
    let pair = events::connection::pair_key(claims.sub, other);
    let before = before.map(|b| b.to_string());
    let messages = reader.history(&pair, before.as_deref(), limit as usize, freshness).await?;
    let next_before =
        (messages.len() == limit as usize).then(|| messages.last().map(|m| m.message_id.clone())).flatten();
    let items = messages.into_iter().map(MessageItem::from).collect();
    Ok(Json(MessagePage { items, next_before }))
}

#[utoipa::path(get, path = "/v1/presence/{userId}", tag = "presence", security(("bearer" = [])),
    params(("userId" = String, Path)),
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

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationList {
    pub items: Vec<NotificationItem>,
    pub unread_count: i64,
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
pub struct NotificationParams {
    /// true: only unread ones.
    pub unread: Option<String>,
}

#[utoipa::path(get, path = "/v1/notifications", tag = "notifications", security(("bearer" = [])), params(NotificationParams),
    responses((status = 200, body = NotificationList), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse)))]
pub async fn notifications(
    State(reader): State<ViewReader>,
    Caller(claims): Caller,
    _consistency: Consistency,
    Query(params): Query<NotificationParams>,
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
pub struct StatsParams {
    /// First day, YYYY-MM-DD (UTC).
    pub from: Option<String>,
    /// Last day, YYYY-MM-DD (UTC), inclusive; at most 366 days after `from`.
    pub to: Option<String>,
}

const MAX_STATS_DAYS: i64 = 366;

#[utoipa::path(get, path = "/v1/stats/daily", tag = "analytics", security(("bearer" = [])), params(StatsParams),
    responses((status = 200, body = DailyStats), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse)))]
pub async fn daily_stats(
    State(reader): State<ViewReader>,
    _caller: Caller,
    _consistency: Consistency,
    Query(params): Query<StatsParams>,
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
    let found: std::collections::HashMap<String, views::DailyStatsDoc> =
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

/// How often an idle stream re-checks its session: with the revocation
/// poll, the longest an open stream outlives a logout.
const LIVENESS_CHECK: Duration = Duration::from_secs(1);

/// What an open stream re-checks before each event and while idle.
struct LiveSession {
    revocations: views::revocation::RevocationList,
    session_id: String,
    /// The token's `exp` (Unix seconds).
    expires_at: i64,
}

impl LiveSession {
    fn is_live(&self) -> bool {
        chrono::Utc::now().timestamp() < self.expires_at && !self.revocations.is_revoked(&self.session_id)
    }
}

#[utoipa::path(get, path = "/v1/stream", tag = "stream", security(("bearer" = [])),
    params(("Last-Event-ID" = Option<String>, Header, description = "Resume after this event (while still in the cache)")),
    responses((status = 200, description = "text/event-stream of the caller's notifications, messages and presence changes; it ends within seconds of the session ending or the access token expiring (reconnect with a fresh token and Last-Event-ID)"),
        (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
        (status = 429, description = "`too_many_streams`: the user (or the server) has as many streams open as allowed", body = ErrorResponse),
        (status = 503, body = ErrorResponse)))]
pub async fn stream(
    State(state): State<AppState>,
    Caller(claims): Caller,
    headers: axum::http::HeaderMap,
) -> Result<
    axum::response::sse::Sse<impl futures::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>>,
    ApiError,
> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let resume = match headers.get("last-event-id").map(|v| v.to_str().unwrap_or_default().trim().to_owned()) {
        None => None,
        Some(id) => Some(parse_stream_id(&id).ok_or_else(|| ApiError::BadRequest {
            code: ErrorCode::LastEventIdInvalid,
            message: "Last-Event-ID is not an id this stream sent".into(),
        })?),
    };
    let key = state.keys.user_stream(&claims.sub.to_string());
    // Without Last-Event-ID: from now on, that is after the newest entry.
    let after = match resume {
        Some(after) => after,
        None => {
            let newest =
                state.views.reader().newest_stream_entry(&key).await.map_err(|_| ApiError::StreamUnavailable)?;
            parse_stream_id(&newest).unwrap_or((0, 0))
        }
    };
    let subscription = state.streams.open(key, after)?;
    // The stream ends within a liveness check (plus one revocation poll) of
    // its session being revoked, and when its token expires: it must not go
    // on delivering private messages to a logged-out client.
    let session = LiveSession {
        revocations: state.revocations.clone(),
        session_id: claims.jti.to_string(),
        expires_at: claims.exp,
    };
    let events = futures::stream::unfold((subscription, session), |(mut subscription, session)| async move {
        loop {
            if !session.is_live() {
                tracing::info!("the stream's session was revoked or expired; closing the stream");
                return None;
            }
            match tokio::time::timeout(LIVENESS_CHECK, subscription.entries.recv()).await {
                Err(_idle) => continue,
                // Dropped by the hub as too slow: the client resumes.
                Ok(None) => return None,
                Ok(Some(entry)) if session.is_live() => {
                    let event = Event::default().id(entry.id).event(entry.kind).data(entry.data);
                    return Some((Ok::<Event, std::convert::Infallible>(event), (subscription, session)));
                }
                Ok(Some(_)) => continue,
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

async fn readyz(State(state): State<AppState>) -> Response {
    let reader = state.views.reader();
    let (mongo, redis) = (reader.mongo_reachable().await, reader.redis_reachable().await);
    let revocations = state.revocations.is_loaded();
    platform::http::readiness_response(&[("mongo", mongo), ("redis", redis), ("revocations", revocations)])
}

async fn metrics(State(state): State<AppState>) -> Response {
    platform::http::metrics_response(&state.metrics)
}

#[derive(OpenApi)]
#[openapi(
    info(title = "DevConnect query API", description = "Reads, from Redis first and MongoDB second."),
    paths(own_profile, public_profile, feed, connections, requests_received, history, presence, notifications, daily_stats, stream),
    modifiers(&BearerAuth, &StandardResponses)
)]
pub struct ApiDoc;

pub fn router(state: AppState) -> Router {
    let in_flight = state.in_flight.clone();
    let api = Router::new()
        .route("/v1/profile", get(own_profile))
        .route("/v1/users/{user_id}", get(public_profile))
        .route("/v1/feed", get(feed))
        .route("/v1/connections", get(connections))
        .route("/v1/requests/received", get(requests_received))
        .route("/v1/messages/{other_user_id}", get(history))
        .route("/v1/presence/{user_id}", get(presence))
        .route("/v1/notifications", get(notifications))
        .route("/v1/stats/daily", get(daily_stats))
        .route("/v1/stream", get(stream))
        .route("/healthz", get(platform::http::healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(state.rate_limit.clone(), platform::rate_limit::enforce))
        .with_state(state);
    let documented = api.merge(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()));
    platform::http::with_common_layers(documented, in_flight)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(limit: Option<&str>, before: Option<&str>) -> ListParams {
        ListParams { limit: limit.map(str::to_owned), before: before.map(str::to_owned) }
    }

    fn code(result: Result<(usize, Option<Cursor>), ApiError>) -> &'static str {
        match result {
            Err(ApiError::BadRequest { code, .. }) => code.as_str(),
            other => panic!("not a 400: {other:?}"),
        }
    }

    #[test]
    fn list_paging_defaults_and_ranges() {
        let (limit, before) = list_paging(&params(None, None), List::Connections).expect("defaults");
        assert_eq!((limit, before), (50, None));
        assert_eq!(list_paging(&params(Some("1"), None), List::Connections).expect("1").0, 1);
        assert_eq!(list_paging(&params(Some("100"), None), List::Connections).expect("100").0, 100);
        for (limit, expected) in [
            ("0", "limit_invalid"),
            ("-1", "limit_invalid"),
            ("abc", "limit_invalid"),
            ("", "limit_invalid"),
            ("2.5", "limit_invalid"),
            ("101", "limit_too_large"),
            ("99999999999999999999999", "limit_invalid"),
        ] {
            assert_eq!(code(list_paging(&params(Some(limit), None), List::Connections)), expected, "{limit}");
        }
        let cursor = Cursor { at: Utc::now(), id: Uuid::now_v7().to_string() };
        let own = cursor.encode(List::RequestsReceived);
        let (_, before) = list_paging(&params(None, Some(&own)), List::RequestsReceived).expect("its own cursor");
        assert_eq!(before, Some(cursor));
        for before in ["garbage", "", &own] {
            assert_eq!(code(list_paging(&params(None, Some(before)), List::Connections)), "cursor_invalid", "{before}");
        }
    }

    #[test]
    fn a_page_has_a_next_cursor_only_when_more_was_found() {
        let at = Utc::now();
        let position = |n: &i64| Cursor { at: at + chrono::Duration::nanoseconds(*n), id: Uuid::nil().to_string() };
        let (items, next) = page_of(vec![5, 4, 3], 3, List::Connections, position);
        assert_eq!((items, next), (vec![5, 4, 3], None), "exactly a full last page");
        let (items, next) = page_of(vec![5, 4, 3, 2], 3, List::Connections, position);
        assert_eq!(items, vec![5, 4, 3]);
        let next = Cursor::decode(&next.expect("more"), List::Connections).expect("a cursor");
        assert_eq!(next, position(&3), "the position of the page's last item");
        assert_eq!(page_of(Vec::<i64>::new(), 3, List::Connections, position), (vec![], None));
    }

    #[test]
    fn the_api_document_describes_list_paging() {
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("json");
        for (path, schema) in [("/v1/connections", "ConnectionPage"), ("/v1/requests/received", "ReceivedRequests")] {
            let get = &doc["paths"][path]["get"];
            let params = get["parameters"].as_array().expect("parameters");
            let limit = params.iter().find(|p| p["name"] == "limit").expect("limit");
            assert_eq!(limit["in"], "query");
            assert_eq!((&limit["schema"]["minimum"], &limit["schema"]["maximum"]), (&1.into(), &100.into()), "{limit}");
            assert_eq!(limit["schema"]["default"], 50, "{limit}");
            assert!(params.iter().any(|p| p["name"] == "before" && p["in"] == "query"), "{params:?}");
            for status in ["200", "400", "401"] {
                assert!(get["responses"].get(status).is_some(), "{path} {status}");
            }
            let page = &doc["components"]["schemas"][schema];
            // Always present, null on the last page.
            assert_eq!(page["properties"]["nextBefore"]["type"], serde_json::json!(["string", "null"]), "{page}");
            assert!(page["required"].as_array().expect("required").contains(&"nextBefore".into()), "{page}");
        }
        let connection = doc["components"]["schemas"]["Connection"].to_string();
        assert!(connection.contains("connectedAt") && connection.contains("PublicProfile"), "{connection}");
    }
}
