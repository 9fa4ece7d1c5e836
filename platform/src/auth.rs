//! Session tokens: HS256 JWTs with the algorithm pinned (docs/design.md §5). The
//! token id (`jti`) is the session id that revocation is checked against.
//!
//! A session has two kinds of token. The access token (minutes) is what
//! every request presents. The refresh token lives as long as the session
//! and buys a new pair once: it names the session and its generation, and
//! the command API's write model knows which generation is current. Refresh
//! tokens are signed with a key derived from the secret under another label,
//! so neither kind of token passes for the other.

use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const TOKEN_COOKIE: &str = "token";
pub const MIN_SECRET_BYTES: usize = 32;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The user id.
    pub sub: Uuid,
    /// The session id.
    pub jti: Uuid,
    pub iat: i64,
    pub exp: i64,
}

impl Claims {
    pub fn new(user_id: Uuid, session_id: Uuid, issued_at: DateTime<Utc>, expires_at: DateTime<Utc>) -> Self {
        Self { sub: user_id, jti: session_id, iat: issued_at.timestamp(), exp: expires_at.timestamp() }
    }
}

/// What a refresh token says. `sid`, not `jti`: an access-token check would
/// refuse it even without the separate key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RefreshClaims {
    /// The user id.
    pub sub: Uuid,
    /// The session id.
    pub sid: Uuid,
    /// Which refresh of the session issued it (0 at log-in).
    pub generation: u32,
    pub iat: i64,
    /// The session's end.
    pub exp: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "DEVCONNECT_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes (got {0}); generate one with `openssl rand -hex 32`"
    )]
    TooShort(usize),
}

#[derive(Debug, thiserror::Error)]
#[error("invalid or expired token")]
pub struct InvalidToken;

#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    refresh_encoding: EncodingKey,
    refresh_decoding: DecodingKey,
    refresh_validation: Validation,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKeys { <redacted> }")
    }
}

impl JwtKeys {
    pub fn new(secret: &str) -> Result<Self, SecretError> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(SecretError::TooShort(secret.len()));
        }
        // Pinned: a token whose header names any other algorithm (`none`,
        // RS256 with our secret as a "public key", ...) is rejected.
        let pinned = |required: &[&str]| {
            let mut validation = Validation::new(Algorithm::HS256);
            validation.algorithms = vec![Algorithm::HS256];
            validation.leeway = 0;
            validation.set_required_spec_claims(required);
            validation
        };
        // HMAC hashes a key of any length, so a labelled suffix is a sound
        // way to derive an independent key from one configured secret.
        let refresh_secret = format!("{secret}\u{0}devconnect-refresh-token");
        Ok(Self {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation: pinned(&["exp", "sub", "jti"]),
            refresh_encoding: EncodingKey::from_secret(refresh_secret.as_bytes()),
            refresh_decoding: DecodingKey::from_secret(refresh_secret.as_bytes()),
            refresh_validation: pinned(&["exp", "sub", "sid"]),
        })
    }

    /// Signs a refresh token; deterministic like [`JwtKeys::sign`].
    pub fn sign_refresh(&self, claims: &RefreshClaims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.refresh_encoding).unwrap_or_default()
    }

    pub fn verify_refresh(&self, token: &str) -> Result<RefreshClaims, InvalidToken> {
        jsonwebtoken::decode::<RefreshClaims>(token, &self.refresh_decoding, &self.refresh_validation)
            .map(|data| data.claims)
            .map_err(|_| InvalidToken)
    }

    /// Signs the claims. HS256 is deterministic: the same claims give the same
    /// token, which lets an idempotent retry of a log-in answer identically.
    pub fn sign(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding).unwrap_or_default()
    }

    pub fn verify(&self, token: &str) -> Result<Claims, InvalidToken> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|_| InvalidToken)
    }
}

/// Claims already verified for this request, kept in its extensions.
#[derive(Debug, Clone)]
struct VerifiedClaims(Claims);

/// The verified claims of the request's access token, verified once per
/// request: the first to ask (the rate limiter, the caller extractor, the
/// idempotency fingerprint) verifies, and leaves them in the request's
/// extensions for the rest. `None` without a valid token.
pub fn request_claims(extensions: &mut axum::http::Extensions, headers: &HeaderMap, keys: &JwtKeys) -> Option<Claims> {
    if let Some(VerifiedClaims(claims)) = extensions.get() {
        return Some(claims.clone());
    }
    let claims = keys.verify(&token_from_headers(headers)?).ok()?;
    extensions.insert(VerifiedClaims(claims.clone()));
    Some(claims)
}

/// The token from `Authorization: Bearer …`, else from the `token` cookie.
pub fn token_from_headers(headers: &HeaderMap) -> Option<String> {
    if let Some(value) = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let value = value.trim();
        if let Some(token) = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")) {
            return Some(token.trim().to_owned());
        }
    }
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == TOKEN_COOKIE)
        .map(|(_, value)| value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn short_secrets_are_refused() {
        assert!(JwtKeys::new("short").is_err());
    }

    #[test]
    fn tokens_verify_and_expire() {
        let keys = JwtKeys::new(SECRET).expect("secret ok");
        let now = Utc::now();
        let claims = Claims::new(Uuid::new_v4(), Uuid::new_v4(), now, now + chrono::Duration::hours(8));
        assert_eq!(keys.verify(&keys.sign(&claims)).expect("valid"), claims);
        let expired =
            Claims::new(claims.sub, claims.jti, now - chrono::Duration::hours(9), now - chrono::Duration::hours(1));
        assert!(keys.verify(&keys.sign(&expired)).is_err());
        let other = JwtKeys::new("another-secret-another-secret-xx").expect("secret ok");
        assert!(other.verify(&keys.sign(&claims)).is_err());
    }

    #[test]
    fn the_none_algorithm_is_rejected() {
        let keys = JwtKeys::new(SECRET).expect("secret ok");
        let now = Utc::now();
        let claims = Claims::new(Uuid::new_v4(), Uuid::new_v4(), now, now + chrono::Duration::hours(1));
        let body = keys.sign(&claims);
        let payload = body.split('.').nth(1).expect("payload");
        // {"alg":"none","typ":"JWT"}
        let forged = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
        assert!(keys.verify(&forged).is_err());
    }

    #[test]
    fn access_and_refresh_tokens_do_not_pass_for_each_other() {
        let keys = JwtKeys::new(SECRET).expect("secret ok");
        let now = Utc::now();
        let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
        let access = keys.sign(&Claims::new(user, session, now, now + chrono::Duration::minutes(15)));
        let refresh = RefreshClaims {
            sub: user,
            sid: session,
            generation: 3,
            iat: now.timestamp(),
            exp: (now + chrono::Duration::days(7)).timestamp(),
        };
        let refresh_token = keys.sign_refresh(&refresh);
        assert_eq!(keys.verify_refresh(&refresh_token).expect("valid refresh token"), refresh);
        assert!(keys.verify(&refresh_token).is_err(), "a refresh token is not an access token");
        assert!(keys.verify_refresh(&access).is_err(), "an access token is not a refresh token");
    }

    #[test]
    fn a_request_token_is_verified_once_and_only_if_valid() {
        let keys = JwtKeys::new(SECRET).expect("secret ok");
        let now = Utc::now();
        let claims = Claims::new(Uuid::new_v4(), Uuid::new_v4(), now, now + chrono::Duration::minutes(5));
        let mut headers = HeaderMap::new();
        let mut extensions = axum::http::Extensions::new();
        headers.insert("authorization", "Bearer forged".parse().expect("header"));
        assert_eq!(request_claims(&mut extensions, &headers, &keys), None, "an invalid token is not kept");
        headers.insert("authorization", format!("Bearer {}", keys.sign(&claims)).parse().expect("header"));
        assert_eq!(request_claims(&mut extensions, &headers, &keys).as_ref(), Some(&claims));
        // Kept for the rest of the request: asked again, no second verification.
        let other = JwtKeys::new("another-secret-another-secret-xx").expect("secret ok");
        assert_eq!(request_claims(&mut extensions, &headers, &other).as_ref(), Some(&claims));
    }

    #[test]
    fn token_comes_from_bearer_or_cookie() {
        let mut headers = HeaderMap::new();
        headers.insert("cookie", "a=b; token=tok123".parse().expect("header"));
        assert_eq!(token_from_headers(&headers).as_deref(), Some("tok123"));
        headers.insert("authorization", "Bearer abc".parse().expect("header"));
        assert_eq!(token_from_headers(&headers).as_deref(), Some("abc"));
    }
}
