//! Sign-up, log-in, refresh and log-out.

use super::*;
use crate::domain::validation::ProfileInput;
use crate::service::SignupInput;

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
pub(super) fn issue_tokens(
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

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignupRequest {
    /// 2-50 characters once trimmed, at least 2 visible.
    pub first_name: String,
    /// As `firstName`.
    pub last_name: String,
    #[schema(format = "email")]
    pub email_id: String,
    /// 8-128 characters with an upper-case and a lower-case letter, a digit and a symbol.
    pub password: String,
    #[schema(value_type = Option<i64>)]
    pub age: Option<JsonInteger>,
    /// male, female or other.
    pub gender: Option<String>,
    /// At most 500 characters once trimmed.
    pub about: Option<String>,
    /// At most 10, each at most 30 characters.
    pub skills: Option<Vec<String>>,
    #[schema(format = "uri")]
    pub photo_url: Option<String>,
}

#[utoipa::path(post, path = "/v1/auth/signup", tag = "auth", request_body = SignupRequest,
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
            age: body.age.map(|age| age.0),
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
pub(super) const REDACTED: &str = "<redacted>";

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
    responses(
        (status = 200, description = "A new access token and refresh token of the same session; the one sent is spent. A retry with the same Idempotency-Key returns the same pair instead of counting as reuse", body = LoginResponse),
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
    responses((status = 204, description = "Session revoked on both APIs"), (status = 401, body = ErrorResponse)))]
pub async fn logout(
    State(state): State<AppState>,
    Caller(claims): Caller,
    WriteNoBody(ctx): WriteNoBody,
) -> Result<Response, ApiError> {
    let outcome = state.service.logout(&claims, &ctx).await?;
    Ok(respond(&state, outcome))
}
