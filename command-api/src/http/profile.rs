//! The own profile: editing it, the password, the membership tier.

use super::*;
use crate::domain::user::ProfilePatch;
use events::user::Tier;

/// `null` means "clear this field"; an absent field stays as it is.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProfilePatchRequest {
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>)]
    pub age: Option<Option<JsonInteger>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub gender: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub about: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<String>>)]
    pub skills: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub photo_url: Option<Option<String>>,
    /// Not editable here; present only to be refused with a clear error.
    #[serde(default, skip_serializing)]
    #[schema(ignore)]
    pub email_id: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    #[schema(ignore)]
    pub password: Option<serde_json::Value>,
}

#[utoipa::path(patch, path = "/v1/profile", tag = "profile", request_body = ProfilePatchRequest, security(("bearer" = [])),
    responses((status = 200, body = UserIdResponse), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse)))]
pub async fn update_profile(
    State(state): State<AppState>,
    Caller(claims): Caller,
    Write(ctx, body): Write<ProfilePatchRequest>,
) -> Result<Response, ApiError> {
    if body.email_id.is_some() || body.password.is_some() {
        return Err(ApiError::BadRequest {
            code: ErrorCode::FieldNotEditable,
            message: "emailId cannot be changed, and the password changes through PUT /v1/profile/password".into(),
        });
    }
    let patch = ProfilePatch {
        first_name: body.first_name,
        last_name: body.last_name,
        age: body.age.map(|age| age.map(|age| age.0)),
        gender: body.gender,
        about: body.about,
        skills: body.skills,
        photo_url: body.photo_url,
    };
    let outcome = state.service.update_profile(&claims, patch, &ctx).await?;
    Ok(respond(&state, outcome))
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PasswordChangeRequest {
    pub current_password: String,
    pub new_password: String,
}

#[utoipa::path(put, path = "/v1/profile/password", tag = "profile", request_body = PasswordChangeRequest, security(("bearer" = [])),
    responses((status = 204, description = "Changed; every other session revoked"), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
        (status = 429, description = "Too many wrong current passwords for this account (shared with log-in); see Retry-After", body = ErrorResponse)))]
pub async fn change_password(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Caller(claims): Caller,
    Write(ctx, body): Write<PasswordChangeRequest>,
) -> Result<Response, ApiError> {
    let outcome =
        state.service.change_password(&claims, body.current_password, body.new_password, peer.ip(), &ctx).await?;
    Ok(respond(&state, outcome))
}

impl std::fmt::Debug for PasswordChangeRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordChangeRequest")
            .field("current_password", &super::auth::REDACTED)
            .field("new_password", &super::auth::REDACTED)
            .finish()
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MembershipBody {
    #[schema(value_type = TierName)]
    pub tier: String,
}

/// The tiers by name, for the document: the handler parses the same names
/// into `Tier` (an unknown one is 400 `tier_invalid`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TierName {
    Free,
    Silver,
    Gold,
}

#[utoipa::path(put, path = "/v1/membership", tag = "membership", request_body = MembershipBody, security(("bearer" = [])),
    responses((status = 200, body = MembershipBody), (status = 400, body = ErrorResponse)))]
pub async fn change_membership(
    State(state): State<AppState>,
    Caller(claims): Caller,
    Write(ctx, body): Write<MembershipBody>,
) -> Result<Response, ApiError> {
    let tier =
        [Tier::Free, Tier::Silver, Tier::Gold].into_iter().find(|t| t.as_str() == body.tier).ok_or_else(|| {
            ApiError::BadRequest { code: ErrorCode::TierInvalid, message: "tier must be free, silver or gold".into() }
        })?;
    let outcome = state.service.change_membership(&claims, tier, &ctx).await?;
    Ok(respond(&state, outcome))
}
