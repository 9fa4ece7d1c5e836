//! Session tokens: HS256 JWTs with the algorithm pinned (docs/design.md §5). The
//! token id (`jti`) is the session id that revocation is checked against.

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
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub", "jti"]);
        Ok(Self {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        })
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
    fn token_comes_from_bearer_or_cookie() {
        let mut headers = HeaderMap::new();
        headers.insert("cookie", "a=b; token=tok123".parse().expect("header"));
        assert_eq!(token_from_headers(&headers).as_deref(), Some("tok123"));
        headers.insert("authorization", "Bearer abc".parse().expect("header"));
        assert_eq!(token_from_headers(&headers).as_deref(), Some("abc"));
    }
}
