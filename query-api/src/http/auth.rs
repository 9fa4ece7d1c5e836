//! Who is asking: the token, checked against the revocations.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use platform::auth::Claims;

use super::{ApiError, AppState};
use crate::reader::{CallerLookup, RateHit};

/// A caller with a valid token whose session is not known to be revoked.
///
/// Only the command API signs tokens, and only after the session's start
/// is durably in Kafka; a session the views have not seen yet is therefore
/// genuine and merely not projected. Revocation is what must be checked:
/// the durable revocation records (held in memory, polled), Redis'
/// `revoked:` keys and the session view each refuse on their own. Until
/// the records were loaded once, nobody is let in (fail closed).
///
/// It also counts the request in its rate-limit group (`caller_group`),
/// in the same Redis round trip as the session check.
#[derive(Debug, Clone)]
pub struct Caller(pub Claims);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let claims = platform::auth::request_claims(&mut parts.extensions, &parts.headers, &state.jwt)
            .ok_or(ApiError::Unauthenticated)?;
        let session_id = claims.jti.to_string();
        if !state.revocations.is_loaded() {
            return Err(ApiError::RevocationsUnknown);
        }
        if state.revocations.is_revoked(&session_id) {
            return Err(ApiError::Unauthenticated);
        }
        let group = crate::rate_groups::caller_group(parts.uri.path());
        let hit = group.map(|group| RateHit {
            limiter: &state.rate_limit.limiter,
            group,
            who: format!("user:{}", claims.sub),
        });
        let CallerLookup { session, own, rate } =
            state.views.reader().caller_lookup(&session_id, &claims.sub.to_string(), hit).await?;
        if let Err(retry_after) = rate {
            let group = group.map_or("reads", |g| g.name);
            metrics::counter!("rate_limited_total", "group" => group).increment(1);
            return Err(ApiError::RateLimited { group, retry_after });
        }
        match session {
            Some(session) if session.revoked || session.user_id != claims.sub.to_string() => {
                Err(ApiError::Unauthenticated)
            }
            _ => {
                if let Some(own) = own {
                    parts.extensions.insert(OwnProfileCached(own));
                }
                Ok(Caller(claims))
            }
        }
    }
}

/// The caller's own profile as the cache held it when `Caller` checked the
/// session (same round trip): `GET /v1/profile` answers from it without
/// asking Redis again.
#[derive(Debug, Clone)]
pub struct OwnProfileCached(pub views::UserDoc);
