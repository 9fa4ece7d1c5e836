//! Who is asking, as the views know it: the session (and whether it was
//! revoked) together with the caller's own cached profile, in one round
//! trip to Redis.

use super::*;

impl ViewReader {
    /// The session, with `revoked` set if the command API wrote the
    /// revocation through, and the caller's own cached profile: one round
    /// trip to Redis answers all three, so an authenticated read of one's
    /// own profile costs one round trip in all (issue: reads that never
    /// wait). The profile is `None` when not cached (or Redis unusable).
    pub async fn session_and_own_profile(
        &self,
        session_id: &str,
        user_id: &str,
    ) -> Result<(Option<SessionDoc>, Option<UserDoc>), ReadError> {
        let key = self.keys.session(session_id);
        let mut redis = self.redis.clone();
        let (revoked, cached, own): (Option<String>, Option<String>, Option<String>) = if self.cache.usable() {
            let mut read = redis::cmd("MGET");
            read.arg(self.keys.revoked_session(session_id)).arg(&key).arg(self.keys.user(user_id));
            self.cache.observe(read.query_async(&mut redis).await).unwrap_or_default()
        } else {
            (None, None, None)
        };
        let own = own.and_then(|json| serde_json::from_str::<UserDoc>(&json).ok());
        Ok((self.session_from(session_id, &key, revoked.is_some(), cached).await?, own))
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
            self.refill(key, s.version, s, ttl).await;
        }
        Ok(session)
    }
}
