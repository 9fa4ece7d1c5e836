//! Who is asking, as the views know it: the session (and whether it was
//! revoked) together with the caller's own cached profile, in one round
//! trip to Redis.

use platform::rate_limit::{Group, REDIS_BUDGET, RateLimiter};

use super::*;

/// A request's rate-limit hit, counted in the session check's round trip.
pub struct RateHit<'a> {
    pub limiter: &'a RateLimiter,
    pub group: &'static Group,
    pub who: String,
}

/// What the session check learned in its one round trip.
pub struct CallerLookup {
    pub session: Option<SessionDoc>,
    /// The caller's own profile, `None` when not cached (or Redis unusable).
    pub own: Option<UserDoc>,
    /// The rate limit's verdict: `Err(retry after)` past the limit.
    pub rate: Result<(), Duration>,
}

impl ViewReader {
    /// The session, with `revoked` set if the command API wrote the
    /// revocation through, the caller's own cached profile, and the
    /// request's rate-limit hit: one round trip to Redis answers all of
    /// them, so an authenticated read of one's own profile costs one round
    /// trip in all.
    pub async fn caller_lookup(
        &self,
        session_id: &str,
        user_id: &str,
        hit: Option<RateHit<'_>>,
    ) -> Result<CallerLookup, ReadError> {
        let key = self.keys.session(session_id);
        let mut pipe = redis::pipe();
        let mut pending = None;
        let mut rate = Ok(());
        if let Some(hit) = &hit {
            match hit.limiter.pipe_hit(&mut pipe, hit.group, &hit.who) {
                Ok(counting) => pending = Some(counting),
                Err(counted_here) => rate = counted_here,
            }
        }
        let read_cache = self.cache.usable();
        if read_cache {
            pipe.cmd("MGET").arg(self.keys.revoked_session(session_id)).arg(&key).arg(self.keys.user(user_id));
        }
        type Cached = (Option<String>, Option<String>, Option<String>);
        let mut cached: Cached = (None, None, None);
        if !pipe.is_empty() {
            let mut redis = self.redis.clone();
            let reply = match tokio::time::timeout(REDIS_BUDGET, pipe.query_async::<Vec<redis::Value>>(&mut redis))
                .await
            {
                Ok(reply) => reply,
                Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within the budget").into()),
            };
            // In the pipeline's order: the hit, then the MGET.
            let mut replies = match reply {
                Ok(values) => {
                    if read_cache {
                        self.cache.answered();
                    }
                    Ok(values.into_iter())
                }
                Err(err) => {
                    if read_cache {
                        self.cache.failed(&err);
                    }
                    Err(err.to_string())
                }
            };
            if let (Some(pending), Some(hit)) = (pending, &hit) {
                let reply = match &mut replies {
                    Ok(values) => values
                        .next()
                        .ok_or_else(|| "no reply to the rate-limit hit".to_owned())
                        .and_then(|value| redis::from_redis_value::<i64>(value).map_err(|e| e.to_string())),
                    Err(err) => Err(err.clone()),
                };
                rate = hit.limiter.settle(pending, reply);
            }
            if read_cache && let Ok(values) = &mut replies {
                // A reply of the wrong shape reads as a miss.
                cached =
                    values.next().and_then(|value| redis::from_redis_value::<Cached>(value).ok()).unwrap_or_default();
            }
        }
        let (revoked, session, own) = cached;
        let own = own.and_then(|json| serde_json::from_str::<UserDoc>(&json).ok());
        let session = self.session_from(session_id, &key, revoked.is_some(), session).await?;
        Ok(CallerLookup { session, own, rate })
    }

    async fn session_from(
        &self,
        session_id: &str,
        key: &str,
        revoked: bool,
        cached: Option<String>,
    ) -> Result<Option<SessionDoc>, ReadError> {
        let cached = cached.and_then(|json| serde_json::from_str::<SessionDoc>(&json).ok());
        if let Some(mut session) = cached {
            session.revoked |= revoked;
            return Ok(Some(session));
        }
        if revoked {
            // Revoked before the projector wrote the session: only the
            // revocation matters.
            return Ok(Some(SessionDoc {
                session_id: session_id.to_owned(),
                user_id: String::new(),
                expires_at: chrono::Utc::now(),
                revoked: true,
                version: 0,
            }));
        }
        let session =
            self.db.collection::<SessionDoc>(collections::SESSIONS).find_one(doc! { "_id": session_id }).await?;
        if let Some(s) = &session
            && let Ok(ttl) = (s.expires_at - chrono::Utc::now()).to_std()
        {
            self.refill(key, s.version, s, Expiry::After(ttl)).await;
        }
        Ok(session)
    }
}
