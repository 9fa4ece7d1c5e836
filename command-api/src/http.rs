//! Thin axum handlers: extract, call the command service, shape the answer.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRef, FromRequestParts, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post, put};
use axum::{Json, Router};
use blake2::{Blake2s256, Digest};
use metrics_exporter_prometheus::PrometheusHandle;
use platform::auth::{Claims, JwtKeys, RefreshClaims, TOKEN_COOKIE};
use platform::http::{ApiJson, BearerAuth, CorrelationId, ErrorResponse, StandardResponses};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{OpenApi, ToSchema};
use utoipa_swagger_ui::SwaggerUi;
use uuid::Uuid;
use views::{ConsistencyKey, ConsistencyToken};

use crate::domain::presence::PresenceCommand;
use crate::domain::user::ProfilePatch;
use crate::domain::validation::ProfileInput;
use crate::error::ApiError;
use crate::service::{Answer, CommandContext, CommandError, CommandOutcome, CommandService, SignupInput};
use events::connection::RequestStatus;
use events::user::Tier;

#[derive(Clone)]
pub struct AppState {
    pub service: Arc<CommandService>,
    pub keys: Arc<JwtKeys>,
    pub metrics: PrometheusHandle,
    pub cookie_secure: bool,
    /// Signs `X-Consistency-Token`, so the query API can refuse forgeries.
    pub consistency: ConsistencyKey,
    pub rate_limit: platform::rate_limit::RateLimitState,
    pub in_flight: platform::http::InFlight,
}

impl FromRef<AppState> for Arc<CommandService> {
    fn from_ref(state: &AppState) -> Self {
        Arc::clone(&state.service)
    }
}

/// The verified claims of the caller's token. The session's state (active,
/// revoked) is checked by the service under the aggregate's lock.
#[derive(Debug, Clone)]
pub struct Caller(pub Claims);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = platform::auth::token_from_headers(&parts.headers).ok_or(CommandError::Unauthenticated)?;
        let claims = state.keys.verify(&token).map_err(|_| CommandError::Unauthenticated)?;
        Ok(Caller(claims))
    }
}

const IDEMPOTENCY_KEY: &str = "idempotency-key";
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else { return Ok(None) };
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY_LEN && k.bytes().all(|b| b.is_ascii_graphic()));
    let key = key.ok_or_else(|| ApiError::BadRequest {
        code: "idempotency_key_invalid",
        message: format!("Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"),
    })?;
    Ok(Some(key.to_owned()))
}

/// A digest of what the request asks for, secrets left out (a password must
/// not be recoverable from the log by guessing against an unsalted digest):
/// the method and path (route and parameters), the caller's session (the
/// same key sent by another session is another request), and the body.
fn fingerprint(parts: &Parts, session: Option<Uuid>, mut body: serde_json::Value) -> String {
    if let Some(object) = body.as_object_mut() {
        for secret in ["password", "currentPassword", "newPassword"] {
            object.remove(secret);
        }
    }
    let session = session.map(|s| s.to_string()).unwrap_or_default();
    let digest = Blake2s256::digest(format!("{} {}\n{session}\n{body}", parts.method, parts.uri.path()).as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The command's context from the request head; the fingerprint is set
/// only when there is a key to tell retries by.
fn command_context(parts: &Parts, state: &AppState, body: serde_json::Value) -> Result<CommandContext, ApiError> {
    let correlation =
        parts.extensions.get::<CorrelationId>().map_or_else(|| Uuid::new_v4().to_string(), |c| c.0.clone());
    let idempotency_key = idempotency_key(&parts.headers)?;
    let fingerprint = idempotency_key.is_some().then(|| {
        let session = platform::auth::token_from_headers(&parts.headers)
            .and_then(|token| state.keys.verify(&token).ok())
            .map(|claims| claims.jti);
        fingerprint(parts, session, body)
    });
    Ok(CommandContext { correlation_id: correlation, idempotency_key, fingerprint })
}

/// A write with a JSON body: the command's context (correlation id,
/// `Idempotency-Key` and the fingerprint derived from the request, which no
/// handler spells out) and the body.
#[derive(Debug)]
pub struct Write<T>(pub CommandContext, pub T);

impl<T: serde::de::DeserializeOwned> axum::extract::FromRequest<AppState> for Write<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &AppState) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        let head = Parts::clone(&parts);
        let ApiJson(value) =
            ApiJson::<serde_json::Value>::from_request(axum::extract::Request::from_parts(parts, body), state).await?;
        // Parsed from the value the fingerprint reads, so both see one body.
        let typed = serde_json::from_value(value.clone()).map_err(|e| ApiError::BadRequest {
            code: "invalid_field_type",
            message: format!("Failed to deserialize the JSON body into the target type: {e}"),
        })?;
        Ok(Write(command_context(&head, state, value)?, typed))
    }
}

/// A write without a body: the command's context alone.
#[derive(Debug)]
pub struct WriteNoBody(pub CommandContext);

impl FromRequestParts<AppState> for WriteNoBody {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Ok(WriteNoBody(command_context(parts, state, serde_json::Value::Null)?))
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserIdResponse {
    pub user_id: Uuid,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestIdResponse {
    pub request_id: Uuid,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageIdResponse {
    pub message_id: Uuid,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct MessageRequest {
    /// 1-2000 characters, not all of them blank.
    #[schema(min_length = 1, max_length = 2000, pattern = r"\S")]
    pub text: String,
}

/// `{"tier": "free" | "silver" | "gold"}`.
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

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoginResponse {
    /// The access token: minutes long; send it as `Authorization: Bearer`.
    pub token: String,
    /// When the access token expires.
    pub expires_at: chrono::DateTime<chrono::Utc>,
    pub user_id: Uuid,
    /// Spend once at `POST /v1/auth/refresh` for a new pair. Presenting it a
    /// second time ends the session.
    pub refresh_token: String,
    /// When the session ends: no refresh after this.
    pub refresh_expires_at: chrono::DateTime<chrono::Utc>,
}

/// The tokens of a log-in or a refresh, and the cookie that carries the
/// access token for browsers.
fn issue_tokens(
    state: &AppState,
    user_id: Uuid,
    session_id: Uuid,
    generation: u32,
    issued_at: chrono::DateTime<chrono::Utc>,
    session_expires_at: chrono::DateTime<chrono::Utc>,
) -> Response {
    let expires_at = state.service.session_policy().access_expires_at(issued_at, session_expires_at);
    let token = state.keys.sign(&Claims::new(user_id, session_id, issued_at, expires_at));
    let refresh_token = state.keys.sign_refresh(&RefreshClaims {
        sub: user_id,
        sid: session_id,
        generation,
        iat: issued_at.timestamp(),
        exp: session_expires_at.timestamp(),
    });
    let max_age = (expires_at - chrono::Utc::now()).num_seconds().max(0);
    let secure = if state.cookie_secure { "; Secure" } else { "" };
    let cookie = format!("{TOKEN_COOKIE}={token}; HttpOnly; Path=/; SameSite=Strict; Max-Age={max_age}{secure}");
    let body = LoginResponse { token, expires_at, user_id, refresh_token, refresh_expires_at: session_expires_at };
    let mut response = (StatusCode::OK, Json(body)).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// Turns an outcome into the HTTP answer, with the consistency token.
fn respond(state: &AppState, outcome: CommandOutcome) -> Response {
    let mut response = match outcome.answer {
        Answer::Registered { user_id } => (StatusCode::CREATED, Json(UserIdResponse { user_id })).into_response(),
        Answer::ProfileUpdated { user_id } => (StatusCode::OK, Json(UserIdResponse { user_id })).into_response(),
        Answer::NoContent => StatusCode::NO_CONTENT.into_response(),
        Answer::RequestSent { request_id } => {
            (StatusCode::CREATED, Json(RequestIdResponse { request_id })).into_response()
        }
        Answer::RequestReviewed { request_id } => {
            (StatusCode::OK, Json(RequestIdResponse { request_id })).into_response()
        }
        Answer::MessageSent { message_id } => {
            (StatusCode::CREATED, Json(MessageIdResponse { message_id })).into_response()
        }
        Answer::Membership { tier } => {
            (StatusCode::OK, Json(MembershipBody { tier: tier.as_str().to_owned() })).into_response()
        }
        Answer::LoggedIn { user_id, session_id, generation, issued_at, session_expires_at } => {
            issue_tokens(state, user_id, session_id, generation, issued_at, session_expires_at)
        }
        Answer::RefreshTokenReused => ApiError::RefreshTokenReused.into_response(),
    };
    let headers = response.headers_mut();
    if let Some(position) = outcome.position {
        let token = ConsistencyToken { topic: position.topic, partition: position.partition, offset: position.offset };
        if let Ok(value) = HeaderValue::from_str(&token.encode(&state.consistency)) {
            headers.insert(ConsistencyToken::HEADER, value);
        }
    }
    if outcome.retried {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignupRequest {
    #[schema(min_length = 2, max_length = 50)]
    pub first_name: String,
    #[schema(min_length = 2, max_length = 50)]
    pub last_name: String,
    #[schema(format = "email")]
    pub email_id: String,
    /// At least 8 characters with upper, lower, digit and symbol.
    pub password: String,
    #[schema(minimum = 18)]
    pub age: Option<i64>,
    /// male, female or other.
    pub gender: Option<String>,
    #[schema(max_length = 500)]
    pub about: Option<String>,
    /// At most 10, each at most 30 characters.
    pub skills: Option<Vec<String>>,
    #[schema(format = "uri")]
    pub photo_url: Option<String>,
}

#[utoipa::path(post, path = "/v1/auth/signup", tag = "auth", request_body = SignupRequest,
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Retry-safe key")),
    responses(
        (status = 201, description = "Account created", body = UserIdResponse),
        (status = 400, description = "A field breaks a rule; `code` names it", body = ErrorResponse),
        (status = 409, description = "Email taken", body = ErrorResponse),
        (status = 503, description = "Kafka unavailable; nothing written", body = ErrorResponse)))]
pub async fn signup(
    State(state): State<AppState>,
    Write(ctx, body): Write<SignupRequest>,
) -> Result<Response, ApiError> {
    let input = SignupInput {
        email: body.email_id,
        password: body.password,
        profile: ProfileInput {
            first_name: body.first_name,
            last_name: body.last_name,
            age: body.age,
            gender: body.gender,
            about: body.about,
            skills: body.skills,
            photo_url: body.photo_url,
        },
    };
    let outcome = state.service.signup(input, &ctx).await?;
    Ok(respond(&state, outcome))
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoginRequest {
    pub email_id: String,
    pub password: String,
}

// The requests that carry a password print it redacted: a `Debug` in a log
// line or a panic message must never leak one.
const REDACTED: &str = "<redacted>";

impl std::fmt::Debug for SignupRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignupRequest")
            .field("first_name", &self.first_name)
            .field("last_name", &self.last_name)
            .field("email_id", &self.email_id)
            .field("password", &REDACTED)
            .field("age", &self.age)
            .field("gender", &self.gender)
            .field("about", &self.about)
            .field("skills", &self.skills)
            .field("photo_url", &self.photo_url)
            .finish()
    }
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest").field("email_id", &self.email_id).field("password", &REDACTED).finish()
    }
}

impl std::fmt::Debug for PasswordChangeRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordChangeRequest")
            .field("current_password", &REDACTED)
            .field("new_password", &REDACTED)
            .finish()
    }
}

#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in; the token is also set as an HttpOnly cookie", body = LoginResponse),
        (status = 401, description = "Wrong email or password (same answer for both)", body = ErrorResponse),
        (status = 429, description = "Too many failed attempts; see Retry-After", body = ErrorResponse)))]
pub async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Write(ctx, body): Write<LoginRequest>,
) -> Result<Response, ApiError> {
    let outcome = state.service.login(&body.email_id, body.password, peer.ip(), &ctx).await?;
    Ok(respond(&state, outcome))
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefreshRequest {
    pub refresh_token: String,
}

impl std::fmt::Debug for RefreshRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshRequest").field("refresh_token", &REDACTED).finish()
    }
}

#[utoipa::path(post, path = "/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Retry-safe key: a retry returns the same pair instead of counting as reuse")),
    responses(
        (status = 200, description = "A new access token and refresh token of the same session; the one sent is spent", body = LoginResponse),
        (status = 401, description = "`invalid_token`: not a refresh token of an active session; `refresh_token_reused`: it was already spent, and its session has now ended", body = ErrorResponse),
        (status = 503, description = "Kafka unavailable; nothing written", body = ErrorResponse)))]
pub async fn refresh(
    State(state): State<AppState>,
    Write(ctx, body): Write<RefreshRequest>,
) -> Result<Response, ApiError> {
    let claims = state.keys.verify_refresh(body.refresh_token.trim()).map_err(|_| CommandError::Unauthenticated)?;
    // The token itself is in the fingerprint: only a retry with the same
    // (spent) token and key gets the pair it bought.
    let outcome = state.service.refresh(&claims, &ctx).await?;
    Ok(respond(&state, outcome))
}

#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth", security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Retry-safe key, bound to this session")),
    responses((status = 204, description = "Session revoked on both APIs"), (status = 401, body = ErrorResponse)))]
pub async fn logout(
    State(state): State<AppState>,
    Caller(claims): Caller,
    WriteNoBody(ctx): WriteNoBody,
) -> Result<Response, ApiError> {
    let outcome = state.service.logout(&claims, &ctx).await?;
    Ok(respond(&state, outcome))
}

/// `null` means "clear this field"; an absent field stays as it is.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProfilePatchRequest {
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>)]
    pub age: Option<Option<i64>>,
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
            code: "field_not_editable",
            message: "emailId cannot be changed, and the password changes through PUT /v1/profile/password".into(),
        });
    }
    let patch = ProfilePatch {
        first_name: body.first_name,
        last_name: body.last_name,
        age: body.age,
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

fn parse_uuid(raw: &str, code: &'static str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::BadRequest { code, message: format!("{what} must be a UUID") })
}

fn parse_status(raw: &str, allowed: &[RequestStatus]) -> Result<RequestStatus, ApiError> {
    allowed.iter().copied().find(|s| s.as_str() == raw).ok_or_else(|| ApiError::BadRequest {
        code: "status_invalid",
        message: format!(
            "status must be one of: {}",
            allowed.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        ),
    })
}

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
    let to = parse_uuid(&to, "user_id_invalid", "toUserId")?;
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
    let request_id = parse_uuid(&request_id, "request_id_invalid", "requestId")?;
    let outcome = state.service.review_request(&claims, request_id, status, &ctx).await?;
    Ok(respond(&state, outcome))
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
            ApiError::BadRequest { code: "tier_invalid", message: "tier must be free, silver or gold".into() }
        })?;
    let outcome = state.service.change_membership(&claims, tier, &ctx).await?;
    Ok(respond(&state, outcome))
}

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
    let to = parse_uuid(&to, "user_id_invalid", "toUserId")?;
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
    let message_id = parse_uuid(&message_id, "message_id_invalid", "messageId")?;
    let outcome = state.service.read_message(&claims, message_id, &ctx).await?;
    Ok(respond(&state, outcome))
}

#[utoipa::path(post, path = "/v1/presence/heartbeat", tag = "presence", security(("bearer" = [])),
    responses((status = 204, description = "Online for the presence TTL (5 minutes)"), (status = 401, body = ErrorResponse)))]
pub async fn heartbeat(
    State(state): State<AppState>,
    Caller(claims): Caller,
    WriteNoBody(ctx): WriteNoBody,
) -> Result<Response, ApiError> {
    Ok(respond(&state, state.service.presence(&claims, PresenceCommand::Heartbeat, &ctx).await?))
}

#[utoipa::path(post, path = "/v1/presence/offline", tag = "presence", security(("bearer" = [])),
    responses((status = 204, description = "Offline; last seen now"), (status = 401, body = ErrorResponse)))]
pub async fn offline(
    State(state): State<AppState>,
    Caller(claims): Caller,
    WriteNoBody(ctx): WriteNoBody,
) -> Result<Response, ApiError> {
    Ok(respond(&state, state.service.presence(&claims, PresenceCommand::GoOffline, &ctx).await?))
}

#[utoipa::path(post, path = "/v1/notifications/{notificationId}/read", tag = "notifications", security(("bearer" = [])),
    params(("notificationId" = Uuid, Path)),
    responses((status = 204, description = "Read (again: no change)"), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn read_notification(
    State(state): State<AppState>,
    Caller(claims): Caller,
    Path(id): Path<String>,
    WriteNoBody(ctx): WriteNoBody,
) -> Result<Response, ApiError> {
    let id = parse_uuid(&id, "notification_id_invalid", "notificationId")?;
    Ok(respond(&state, state.service.read_notification(&claims, id, &ctx).await?))
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
    let message_id = parse_uuid(&message_id, "message_id_invalid", "messageId")?;
    let outcome = state.service.deliver_message(&claims, message_id, &ctx).await?;
    Ok(respond(&state, outcome))
}

async fn readyz(State(state): State<AppState>) -> Response {
    let service = Arc::clone(&state.service);
    let kafka = tokio::task::spawn_blocking(move || service.event_log().broker_reachable()).await.unwrap_or(false);
    let redis = state.service.redis_reachable().await;
    platform::http::readiness_response(&[("writeModel", state.service.is_ready()), ("kafka", kafka), ("redis", redis)])
}

async fn metrics(State(state): State<AppState>) -> Response {
    platform::http::metrics_response(&state.metrics)
}

#[derive(OpenApi)]
#[openapi(
    info(title = "DevConnect command API", description = "Writes. Every success carries X-Consistency-Token."),
    paths(signup, login, refresh, logout, update_profile, change_password, send_request, review_request, change_membership, send_message, read_message, deliver_message, heartbeat, offline, read_notification),
    modifiers(&BearerAuth, &StandardResponses)
)]
pub struct ApiDoc;

pub fn router(state: AppState) -> Router {
    let in_flight = state.in_flight.clone();
    let api = Router::new()
        .route("/v1/auth/signup", post(signup))
        .route("/v1/auth/login", post(login))
        .route("/v1/auth/refresh", post(refresh))
        .route("/v1/auth/logout", post(logout))
        .route("/v1/profile", patch(update_profile))
        .route("/v1/profile/password", put(change_password))
        .route("/v1/requests/send/{status}/{to_user_id}", post(send_request))
        .route("/v1/requests/review/{status}/{request_id}", post(review_request))
        .route("/v1/membership", put(change_membership))
        .route("/v1/messages/{to_user_id}", post(send_message))
        .route("/v1/messages/{message_id}/read", post(read_message))
        .route("/v1/messages/{message_id}/delivered", post(deliver_message))
        .route("/v1/presence/heartbeat", post(heartbeat))
        .route("/v1/presence/offline", post(offline))
        .route("/v1/notifications/{notification_id}/read", post(read_notification))
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

    #[test]
    fn requests_with_passwords_never_print_them() {
        let login = LoginRequest { email_id: "ada@example.com".into(), password: "Sup3r$ecret".into() };
        let change = PasswordChangeRequest { current_password: "Old$ecret1".into(), new_password: "N3w$ecret1".into() };
        let signup: SignupRequest = serde_json::from_value(serde_json::json!({
            "firstName": "Ada", "lastName": "Lovelace", "emailId": "ada@example.com", "password": "Sup3r$ecret"
        }))
        .expect("signup");
        for printed in [format!("{login:?}"), format!("{change:?}"), format!("{signup:?}")] {
            assert!(!printed.contains("ecret"), "{printed}");
            assert!(printed.contains(REDACTED), "{printed}");
        }
        assert!(format!("{login:?}").contains("ada@example.com"), "the rest still prints");
    }
}
