//! Commands of the user aggregate: sign-up, log-in, refresh, log-out,
//! profile, password and membership.

use platform::error_code::ErrorCode;
use std::net::IpAddr;

use chrono::Utc;
use events::Envelope;
use events::Event;
use events::user::{Profile, Tier, UserEvent};
use platform::auth::{Claims, RefreshClaims};
use uuid::Uuid;

use super::{
    Caller, CommandContext, CommandError, CommandOutcome, CommandService, Decision, Route, SignupInput, events_of,
};
use crate::domain::user::{ProfilePatch, User, UserCommand, UserFacts};
use crate::domain::{Aggregate, Rejection, validation};
use crate::locks::LockKey;
use crate::model::WriteModel;
use crate::password;

/// Decides `command` on the user's aggregate: the user's events at their
/// next version.
fn decide_on_user(
    model: &WriteModel,
    user_id: Uuid,
    command: UserCommand,
    facts: &UserFacts,
) -> Result<Decision, CommandError> {
    let state = model.user(user_id).cloned();
    let version = state.as_ref().map_or(0, |s| s.version);
    let events = User::decide(&state, command, facts)?;
    Ok(Decision::new(user_id.to_string(), version, events_of(events, Event::User)))
}

impl CommandService {
    /// A new user id (UUIDv7, so ids still sort by registration) on the
    /// partition of `email`: ids are drawn until one lands there, about as
    /// many draws as there are partitions. So the user's aggregate lives
    /// with every other sign-up of that email, at one owner.
    fn user_id_on(&self, email: &str) -> Result<Uuid, CommandError> {
        let on = |key: &str| self.log.partition_number(key).map_err(|_| CommandError::NotReady);
        let partition = on(email)?;
        // A miss has probability (1 - 1/partitions) per draw: 10 000 draws
        // all missing does not happen for any sane partition count.
        for _ in 0..10_000 {
            let user_id = Uuid::now_v7();
            if on(&user_id.to_string())? == partition {
                return Ok(user_id);
            }
        }
        Err(CommandError::Unavailable {
            dependency: "kafka",
            detail: "no user id found on the email's partition".into(),
        })
    }

    pub async fn signup(&self, input: SignupInput, ctx: &CommandContext) -> Result<CommandOutcome, CommandError> {
        self.ensure_ready()?;
        let email = validation::email(&input.email)?;
        validation::password(&input.password)?;
        let profile: Profile = validation::profile(&input.profile)?;
        // Every sign-up of one email is decided by one owner: the email's
        // partition's, and the new user's id is drawn to land on that
        // partition too (`user_id_on`), so the email's uniqueness is that
        // partition's invariant alone (docs/scale-out.md §3).
        let route = Route::Owner(email.clone());
        self.owned_partition(&route)?;
        // Hash before taking the lock: it is the slow part and needs no state.
        let password_hash = password::hash(input.password).await?;
        let locks = vec![LockKey::Email(email.clone())];
        let caller = Caller::EmailOwner(&email);
        let (outcome, _) = self
            .execute(caller, route, locks, ctx, |model, now| {
                let user_id = self.user_id_on(&email)?;
                let facts = UserFacts { email_owner: model.email_owner(&email), now };
                let command = UserCommand::Register { user_id, email: email.clone(), profile, password_hash };
                let events = User::decide(&None, command, &facts)?;
                let decision = Decision::new(user_id.to_string(), 0, events_of(events, Event::User));
                Ok(Decision { actor: Some(user_id), ..decision })
            })
            .await?;
        Ok(outcome)
    }

    pub async fn login(
        &self,
        email: &str,
        password: String,
        client: IpAddr,
        ctx: &CommandContext,
    ) -> Result<CommandOutcome, CommandError> {
        let email = email.trim().to_lowercase();
        // Decided by the owner of the user (of the email's partition for a
        // user this copy does not know yet: new users live there), before
        // anything is counted or hashed here.
        let known = self.read().user_by_email(&email).map(|u| u.user_id);
        let route = Route::Owner(known.map_or_else(|| email.clone(), |id| id.to_string()));
        self.owned_partition(&route)?;
        self.ensure_ready()?;
        // Counted before the hash is checked: parallel guesses cannot
        // outrun the limit.
        self.throttle.reserve(&email, client).await?;
        let (user_id, hash) = {
            let model = self.read();
            match model.user_by_email(&email) {
                Some(u) => (Some(u.user_id), u.password_hash.clone()),
                None => (None, None),
            }
        };
        let verdict = match password::verify(password, hash).await {
            Ok(verdict) => verdict,
            Err(busy) => {
                self.throttle.release(&email, client).await?;
                return Err(busy.into());
            }
        };
        let (Some(user_id), true) = (user_id, verdict) else {
            metrics::counter!("login_failures_total").increment(1);
            return Err(CommandError::InvalidCredentials);
        };
        self.throttle.settle_success(&email, client).await?;

        let policy = self.sessions;
        let (outcome, envelopes) = self
            .execute(Caller::User(user_id), route, vec![LockKey::User(user_id)], ctx, |model, now| {
                let command = UserCommand::StartSession {
                    session_id: Uuid::new_v4(),
                    expires_at: now + policy.session_ttl,
                    max_active: policy.max_active,
                };
                decide_on_user(model, user_id, command, &UserFacts { email_owner: None, now })
            })
            .await?;
        self.write_through_revocations(user_id, &envelopes).await;
        Ok(outcome)
    }

    /// Spends a refresh token (its signature already verified): a new pair
    /// for the session, or, for a token already spent, the session's end.
    pub async fn refresh(&self, claims: &RefreshClaims, ctx: &CommandContext) -> Result<CommandOutcome, CommandError> {
        let user_id = claims.sub;
        let command = UserCommand::RefreshSession { session_id: claims.sid, generation: claims.generation };
        let (outcome, envelopes) = self
            .execute(
                Caller::User(user_id),
                Route::Owner(user_id.to_string()),
                vec![LockKey::User(user_id)],
                ctx,
                |model, now| decide_on_user(model, user_id, command, &UserFacts { email_owner: None, now }),
            )
            .await?;
        self.write_through_revocations(user_id, &envelopes).await;
        Ok(outcome)
    }

    /// A command by an authenticated user on their own aggregate.
    async fn on_own_user(
        &self,
        claims: &Claims,
        command: UserCommand,
        ctx: &CommandContext,
    ) -> Result<(CommandOutcome, Vec<Envelope>), CommandError> {
        let user_id = claims.sub;
        let route = Route::Owner(user_id.to_string());
        self.execute(Caller::Session(claims), route, vec![LockKey::User(user_id)], ctx, |model, now| {
            decide_on_user(model, user_id, command, &UserFacts { email_owner: None, now })
        })
        .await
    }

    pub async fn logout(&self, claims: &Claims, ctx: &CommandContext) -> Result<CommandOutcome, CommandError> {
        let (outcome, envelopes) =
            self.on_own_user(claims, UserCommand::EndSession { session_id: claims.jti }, ctx).await?;
        self.write_through_revocations(claims.sub, &envelopes).await;
        Ok(outcome)
    }

    pub async fn update_profile(
        &self,
        claims: &Claims,
        patch: ProfilePatch,
        ctx: &CommandContext,
    ) -> Result<CommandOutcome, CommandError> {
        Ok(self.on_own_user(claims, UserCommand::UpdateProfile { patch }, ctx).await?.0)
    }

    pub async fn change_password(
        &self,
        claims: &Claims,
        current: String,
        new: String,
        client: IpAddr,
        ctx: &CommandContext,
    ) -> Result<CommandOutcome, CommandError> {
        // Decided where the user's sessions and password are held, before
        // anything is read, counted or hashed here.
        self.owned_partition(&Route::Owner(claims.sub.to_string()))?;
        self.ensure_ready()?;
        // A retry of a change that went through must not be judged against the
        // password it already replaced.
        if let Some(outcome) = self.earlier_answer(claims.sub, ctx)? {
            return Ok(outcome);
        }
        validation::password(&new)?;
        // The session first: a logged-out token learns nothing about the
        // password. Then the guess counts against the account's limit,
        // like a log-in, before the hash is checked.
        let (email, hash) = {
            let model = self.read();
            super::require_active_session(&model, claims)?;
            let state = model.user(claims.sub).ok_or(CommandError::Unauthenticated)?;
            (state.email.clone(), state.password_hash.clone())
        };
        self.throttle.reserve(&email, client).await?;
        let verdict = match password::verify(current, hash).await {
            Ok(verdict) => verdict,
            Err(busy) => {
                self.throttle.release(&email, client).await?;
                return Err(busy.into());
            }
        };
        if !verdict {
            return Err(Rejection::invalid(
                ErrorCode::CurrentPasswordIncorrect,
                "currentPassword is not the current password",
            )
            .into());
        }
        self.throttle.settle_success(&email, client).await?;
        let new_hash = password::hash(new).await?;
        let command = UserCommand::ChangePassword { new_password_hash: new_hash, keep_session: claims.jti };
        let (outcome, envelopes) = self.on_own_user(claims, command, ctx).await?;
        self.write_through_revocations(claims.sub, &envelopes).await;
        Ok(outcome)
    }

    pub async fn change_membership(
        &self,
        claims: &Claims,
        tier: Tier,
        ctx: &CommandContext,
    ) -> Result<CommandOutcome, CommandError> {
        Ok(self.on_own_user(claims, UserCommand::ChangeMembership { tier }, ctx).await?.0)
    }

    /// Records revocations where the query API learns them even if Redis
    /// loses everything: a document per session in MongoDB's base database
    /// (outside generations), then `revoked:<session>` in Redis for the
    /// fastest path. Both before the command answers, so a logout holds on
    /// both APIs at once (ARCHITECTURE.md, "Why a logout holds"). The event
    /// is already durable: if MongoDB stays unreachable for the whole retry
    /// budget the answer still goes out, the Redis key covers the gap, and
    /// the projector writes the revocation into the session view.
    async fn write_through_revocations(&self, user_id: Uuid, envelopes: &[Envelope]) {
        let state = self.read().user(user_id).cloned();
        let Some(state) = state else { return };
        let now = Utc::now();
        let records: Vec<_> = revoked_sessions(envelopes)
            .filter_map(|session_id| {
                let session = state.sessions.get(session_id)?;
                Some(views::revocation::RevocationDoc {
                    session_id: session_id.to_string(),
                    user_id: user_id.to_string(),
                    // Only access tokens are checked against the record, and
                    // the last one of the session was issued before now.
                    expires_at: self.sessions.access_expires_at(now, session.expires_at),
                    recorded_at: now,
                })
            })
            .collect();
        if records.is_empty() {
            return;
        }
        let (durable, cached) = tokio::join!(self.record_revocations(&records), self.cache_revocations(&records));
        if !durable && !cached {
            tracing::error!(%user_id, "no revocation record could be written; the query API learns it from the projector");
        }
    }

    /// The durable record, retried for up to two seconds in all (a MongoDB
    /// that is down would otherwise hold each attempt for the driver's
    /// server-selection timeout).
    async fn record_revocations(&self, records: &[views::revocation::RevocationDoc]) -> bool {
        let attempts = async {
            let mut backoff =
                platform::Backoff::new(std::time::Duration::from_millis(100), std::time::Duration::from_millis(500));
            loop {
                match views::revocation::record(&self.revocations, records).await {
                    Ok(()) => return,
                    Err(err) => {
                        tracing::debug!(error = %err, "recording a revocation in MongoDB failed; retrying");
                        backoff.wait().await;
                    }
                }
            }
        };
        let recorded = tokio::time::timeout(std::time::Duration::from_secs(2), attempts).await.is_ok();
        if !recorded {
            tracing::warn!(
                "recording a revocation in MongoDB failed for 2 s; the Redis key and the projector carry it"
            );
        }
        recorded
    }

    /// `revoked:<session>`, kept as long as the token could be presented.
    async fn cache_revocations(&self, records: &[views::revocation::RevocationDoc]) -> bool {
        let mut pipe = redis::pipe();
        for record in records {
            let ttl_ms = (record.expires_at - Utc::now()).num_milliseconds().max(1);
            pipe.cmd("SET").arg(self.keys.revoked_session(&record.session_id)).arg(1).arg("PX").arg(ttl_ms).ignore();
        }
        let mut redis = self.redis.clone();
        match pipe.query_async::<()>(&mut redis).await {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!(error = %err, "revocation write-through to redis failed");
                false
            }
        }
    }
}

/// Which sessions a commit ended, for the revocation records.
fn revoked_sessions(envelopes: &[Envelope]) -> impl Iterator<Item = &Uuid> {
    envelopes.iter().flat_map(|envelope| match &envelope.event {
        Event::User(UserEvent::SessionsRevoked(revoked)) => revoked.session_ids.as_slice(),
        _ => &[],
    })
}
