//! `GET /v1/profile` and `GET /v1/users/{userId}`: the two profile shapes.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use events::user::Gender;
use platform::http::{ErrorCode, ErrorResponse};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;
use views::UserDoc;

use super::auth::OwnProfileCached;
use super::{ApiError, AppState, Caller, Consistency};
use crate::reader::{Freshness, ViewReader};

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/profile", get(own_profile)).route("/v1/users/{user_id}", get(public_profile))
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
    cached: Option<axum::Extension<OwnProfileCached>>,
    Consistency(freshness): Consistency,
) -> Result<Json<OwnProfile>, ApiError> {
    let user = match cached {
        // Fetched with the session check: one Redis round trip in all.
        Some(axum::Extension(OwnProfileCached(user))) if freshness == Freshness::CacheFirst => Some(user),
        _ => reader.user(&claims.sub.to_string(), freshness).await?,
    };
    let user = user.ok_or_else(|| ApiError::NotFound {
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
    params(("userId" = uuid::Uuid, Path, description = "A user id")),
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
