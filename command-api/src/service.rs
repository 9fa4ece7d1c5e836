//! The command service: for each command, take the locks of what the
//! decision reads, answer an idempotent retry from the log, run the pure
//! `decide`, append the events, and only after the broker's acknowledgement
//! apply them to the write model (docs/design.md §2).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use chrono::{DateTime, Utc};
use events::connection::{ConnectionEvent, RequestStatus, pair_key};
use events::message::MessageEvent;
use events::user::{Profile, RevocationReason, Tier, UserEvent};
use events::{Envelope, Event, EventMetadata};
use platform::auth::{Claims, RefreshClaims};
use redis::aio::ConnectionManager;
use uuid::Uuid;
use views::keys::RedisKeys;

use crate::domain::connection::{self, ConnectionCommand, SendFacts};
use crate::domain::message;
use crate::domain::user::{self, ProfilePatch, UserCommand, UserState};
use crate::domain::{Rejection, validation};
use crate::event_log::EventLog;
use crate::locks::KeyedLocks;
use crate::model::{IdempotentCommit, Position, WriteModel};
use crate::password;
use crate::throttle::{LoginThrottle, ThrottleError};

/// Request-scoped metadata every command carries into its events.
#[derive(Debug, Clone, Default)]
pub struct CommandContext {
    pub correlation_id: String,
    pub idempotency_key: Option<String>,
    /// Digest of the request (secrets excluded) to tell a retry from a reuse.
    pub fingerprint: Option<String>,
}

/// What a successful command answers; rebuilt from the log for a retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Registered {
        user_id: Uuid,
    },
    /// A log-in or a refresh: the session, which refresh token is now the
    /// live one, when the pair was issued and when the session ends.
    LoggedIn {
        user_id: Uuid,
        session_id: Uuid,
        generation: u32,
        issued_at: DateTime<Utc>,
        session_expires_at: DateTime<Utc>,
    },
    /// A spent refresh token came back; its session has been ended.
    RefreshTokenReused,
    ProfileUpdated {
        user_id: Uuid,
    },
    RequestSent {
        request_id: Uuid,
    },
    RequestReviewed {
        request_id: Uuid,
    },
    MessageSent {
        message_id: Uuid,
    },
    Membership {
        tier: Tier,
    },
    NoContent,
}

impl Answer {
    /// The answer a commit gave; a pure function of the events, so a retry
    /// after a restart answers exactly as the first attempt did.
    pub fn of_commit(commit: &[Envelope]) -> Answer {
        let user_id = commit.first().and_then(|e| e.aggregate_id.parse().ok()).unwrap_or_default();
        for envelope in commit {
            let event = match &envelope.event {
                Event::User(event) => event,
                Event::Connection(ConnectionEvent::Requested(r)) => {
                    return Answer::RequestSent { request_id: r.request_id };
                }
                Event::Connection(ConnectionEvent::Reviewed(r)) => {
                    return Answer::RequestReviewed { request_id: r.request_id };
                }
                Event::Message(MessageEvent::Sent(m)) => return Answer::MessageSent { message_id: m.message_id },
                Event::Message(MessageEvent::Read(_) | MessageEvent::Delivered(_))
                | Event::Presence(_)
                | Event::Notification(_) => {
                    return Answer::NoContent;
                }
            };
            match event {
                UserEvent::MembershipChanged(m) => return Answer::Membership { tier: m.tier },
                UserEvent::Registered(r) => return Answer::Registered { user_id: r.user_id },
                UserEvent::ProfileUpdated(_) => return Answer::ProfileUpdated { user_id },
                UserEvent::SessionStarted(s) => {
                    return Answer::LoggedIn {
                        user_id,
                        session_id: s.session_id,
                        generation: 0,
                        issued_at: envelope.occurred_at,
                        session_expires_at: s.expires_at,
                    };
                }
                UserEvent::SessionRefreshed(r) => {
                    return Answer::LoggedIn {
                        user_id,
                        session_id: r.session_id,
                        generation: r.generation,
                        issued_at: envelope.occurred_at,
                        session_expires_at: r.expires_at,
                    };
                }
                UserEvent::SessionsRevoked(r) if r.reason == RevocationReason::RefreshTokenReused => {
                    return Answer::RefreshTokenReused;
                }
                _ => {}
            }
        }
        Answer::NoContent
    }
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub answer: Answer,
    /// Where the command's record landed; `None` when it changed nothing
    /// (reading a message already read).
    pub position: Option<Position>,
    /// True when this answers a retry from the log and appended nothing.
    pub replayed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error("wrong email or password")]
    InvalidCredentials,
    #[error("invalid, expired or revoked token")]
    Unauthenticated,
    #[error("too many attempts")]
    Throttled { retry_after_secs: u64 },
    #[error("this Idempotency-Key was already used for a different request")]
    IdempotencyKeyReused,
    #[error("{dependency} unavailable: {detail}")]
    Unavailable { dependency: &'static str, detail: String },
    #[error("the write model is still being rebuilt from the log")]
    NotReady,
    #[error(transparent)]
    HasherBusy(#[from] password::HasherBusy),
}

impl From<password::HashError> for CommandError {
    fn from(e: password::HashError) -> Self {
        match e {
            password::HashError::Busy(busy) => CommandError::HasherBusy(busy),
            password::HashError::Failed(detail) => CommandError::Unavailable { dependency: "hasher", detail },
        }
    }
}

impl From<ThrottleError> for CommandError {
    fn from(e: ThrottleError) -> Self {
        match e {
            ThrottleError::Limited { retry_after_secs } => CommandError::Throttled { retry_after_secs },
            ThrottleError::Unavailable(err) => {
                CommandError::Unavailable { dependency: "redis", detail: err.to_string() }
            }
        }
    }
}

/// How long sessions and their tokens live, and how many a user may hold.
#[derive(Debug, Clone, Copy)]
pub struct SessionPolicy {
    /// From log-in to the session's fixed end (the refresh token's life).
    pub session_ttl: chrono::Duration,
    /// An access token's life; at most the session's remainder.
    pub access_ttl: chrono::Duration,
    /// Active sessions per user; a log-in past it ends the oldest.
    pub max_active: usize,
}

impl SessionPolicy {
    /// When an access token issued at `issued_at` stops being accepted.
    pub fn access_expires_at(&self, issued_at: DateTime<Utc>, session_ends: DateTime<Utc>) -> DateTime<Utc> {
        (issued_at + self.access_ttl).min(session_ends)
    }
}

#[derive(Debug)]
pub struct SignupInput {
    pub email: String,
    pub password: String,
    pub profile: validation::ProfileInput,
}

pub struct CommandService {
    model: RwLock<WriteModel>,
    ready: AtomicBool,
    locks: KeyedLocks,
    log: EventLog,
    throttle: LoginThrottle,
    redis: ConnectionManager,
    keys: RedisKeys,
    /// Durable revocation records, which the query API learns logouts from.
    revocations: mongodb::Collection<views::revocation::RevocationDoc>,
    sessions: SessionPolicy,
    /// Signalled when an append failed: the model may now differ from the log.
    resync_needed: tokio::sync::Notify,
}

impl std::fmt::Debug for CommandService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandService").field("ready", &self.is_ready()).finish_non_exhaustive()
    }
}

impl CommandService {
    pub fn new(
        log: EventLog,
        throttle: LoginThrottle,
        redis: ConnectionManager,
        keys: RedisKeys,
        revocations: mongodb::Collection<views::revocation::RevocationDoc>,
        sessions: SessionPolicy,
    ) -> Self {
        Self {
            model: RwLock::new(WriteModel::default()),
            ready: AtomicBool::new(false),
            locks: KeyedLocks::default(),
            log,
            throttle,
            redis,
            keys,
            revocations,
            sessions,
            resync_needed: tokio::sync::Notify::new(),
        }
    }

    pub fn model_lock(&self) -> &RwLock<WriteModel> {
        &self.model
    }

    fn read(&self) -> RwLockReadGuard<'_, WriteModel> {
        self.model.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, WriteModel> {
        self.model.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn mark_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn event_log(&self) -> &EventLog {
        &self.log
    }

    pub async fn redis_reachable(&self) -> bool {
        let mut redis = self.redis.clone();
        redis::cmd("PING").query_async::<String>(&mut redis).await.is_ok()
    }

    /// Waits for a failed append, then rebuilds the write model from the log
    /// while holding every command lock, and serves again. Runs forever.
    pub async fn resync_on_failure(&self, brokers: &str, topics: &[String]) {
        loop {
            self.resync_needed.notified().await;
            let _all = self.locks.lock_all().await;
            tracing::warn!("an append failed; re-reading the write model from the log before serving commands");
            loop {
                if let Err(err) = self.log.renew_producer() {
                    tracing::warn!(error = %err, "renewing the producer failed");
                }
                let fresh = RwLock::new(WriteModel::default());
                match crate::event_log::rebuild_model(brokers, topics, &fresh).await {
                    Ok(records) => {
                        *self.write() = fresh.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
                        metrics::counter!("write_model_resyncs_total").increment(1);
                        tracing::info!(records, "write model re-read from the log; serving commands again");
                        break;
                    }
                    Err(err) => {
                        tracing::warn!(error = format!("{err:#}"), "re-reading the log failed; retrying");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            }
            self.mark_ready();
        }
    }

    pub async fn prune(&self) {
        self.write().prune(Utc::now());
        if let Err(err) = views::revocation::prune(&self.revocations).await {
            tracing::warn!(error = %err, "pruning expired revocation records failed; trying again later");
        }
    }

    fn ensure_ready(&self) -> Result<(), CommandError> {
        if self.is_ready() { Ok(()) } else { Err(CommandError::NotReady) }
    }

    /// A retry of an earlier command by `caller` with the same key, if any.
    fn replay(&self, caller: Uuid, ctx: &CommandContext) -> Result<Option<Outcome>, CommandError> {
        let Some(key) = ctx.idempotency_key.as_deref() else { return Ok(None) };
        let model = self.read();
        let Some(IdempotentCommit { fingerprint, commit, position }) = model.idempotent_commit(caller, key, Utc::now())
        else {
            return Ok(None);
        };
        if fingerprint.is_some() && *fingerprint != ctx.fingerprint {
            return Err(CommandError::IdempotencyKeyReused);
        }
        metrics::counter!("idempotent_replays_total").increment(1);
        Ok(Some(Outcome { answer: Answer::of_commit(commit), position: Some(position.clone()), replayed: true }))
    }

    /// Wraps events in envelopes numbered after `base_version`, appends them
    /// as one record, and applies them once acknowledged.
    async fn commit(
        &self,
        aggregate_id: &str,
        base_version: u64,
        actor: Uuid,
        events: Vec<Event>,
        ctx: &CommandContext,
    ) -> Result<(Vec<Envelope>, Position), CommandError> {
        let Some(topic) = events.first().map(Event::topic) else {
            return Err(Rejection::invalid("nothing_to_do", "the command changes nothing").into());
        };
        let now = Utc::now();
        let metadata = EventMetadata {
            actor: Some(actor),
            correlation_id: ctx.correlation_id.clone(),
            idempotency_key: ctx.idempotency_key.clone(),
            request_fingerprint: ctx.fingerprint.clone(),
        };
        let envelopes: Vec<Envelope> = events
            .into_iter()
            .zip(base_version + 1..)
            .map(|(event, version)| Envelope {
                event_id: Uuid::now_v7(),
                aggregate_id: aggregate_id.to_owned(),
                aggregate_version: version,
                occurred_at: now,
                metadata: metadata.clone(),
                event,
            })
            .collect();
        let position = match self.log.append(topic, &envelopes).await {
            Ok(position) => position,
            Err(err) => {
                // A timed-out append may still have landed. Until the model
                // is re-read from the log, deciding on it could contradict
                // the log (say, a second account for one email).
                self.ready.store(false, Ordering::Release);
                self.resync_needed.notify_one();
                return Err(CommandError::Unavailable { dependency: "kafka", detail: err.to_string() });
            }
        };
        self.write().apply_commit(&envelopes, position.clone());
        for envelope in &envelopes {
            metrics::counter!("events_appended_total", "type" => envelope.event_type()).increment(1);
        }
        Ok((envelopes, position))
    }

    fn outcome(envelopes: &[Envelope], position: Position) -> Outcome {
        Outcome { answer: Answer::of_commit(envelopes), position: Some(position), replayed: false }
    }

    fn require_active_session(state: &UserState, claims: &Claims) -> Result<(), CommandError> {
        match state.sessions.get(&claims.jti) {
            Some(s) if s.is_active(Utc::now()) => Ok(()),
            _ => Err(CommandError::Unauthenticated),
        }
    }

    /// Checks a verified token against the write model: the session exists,
    /// belongs to the user and is neither revoked nor expired.
    pub fn authenticate(&self, claims: &Claims) -> Result<(), CommandError> {
        self.ensure_ready()?;
        let model = self.read();
        let state = model.user(claims.sub).ok_or(CommandError::Unauthenticated)?;
        Self::require_active_session(state, claims)
    }

    pub async fn signup(&self, input: SignupInput, ctx: &CommandContext) -> Result<Outcome, CommandError> {
        self.ensure_ready()?;
        let email = validation::email(&input.email)?;
        validation::password(&input.password)?;
        let profile: Profile = validation::profile(&input.profile)?;
        // Hash before taking the lock: it is the slow part and needs no state.
        let password_hash = password::hash(input.password).await?;

        let _held = self.locks.lock([format!("email:{email}")]).await;
        let owner = self.read().email_owner(&email);
        if let Some(owner) = owner
            && let Some(outcome) = self.replay(owner, ctx)?
        {
            return Ok(outcome);
        }
        let user_id = Uuid::now_v7();
        let events =
            user::decide_registration(owner, UserCommand::Register { user_id, email, profile, password_hash })?;
        let (envelopes, position) = self.commit(&user_id.to_string(), 0, user_id, user_events(events), ctx).await?;
        Ok(Self::outcome(&envelopes, position))
    }

    pub async fn login(
        &self,
        email: &str,
        password: String,
        client: IpAddr,
        ctx: &CommandContext,
    ) -> Result<Outcome, CommandError> {
        self.ensure_ready()?;
        let email = email.trim().to_lowercase();
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

        let _held = self.locks.lock([format!("user:{user_id}")]).await;
        if let Some(outcome) = self.replay(user_id, ctx)? {
            return Ok(outcome);
        }
        let (state, now) = (self.state_of(user_id)?, Utc::now());
        let command = UserCommand::StartSession {
            session_id: Uuid::new_v4(),
            expires_at: now + self.sessions.session_ttl,
            max_active: self.sessions.max_active,
        };
        let events = user::decide(&state, command, now)?;
        let (envelopes, position) =
            self.commit(&user_id.to_string(), state.version, user_id, user_events(events), ctx).await?;
        self.write_through_revocations(user_id, &envelopes).await;
        Ok(Self::outcome(&envelopes, position))
    }

    /// Spends a refresh token (its signature already verified): a new pair
    /// for the session, or, for a token already spent, the session's end.
    pub async fn refresh(&self, claims: &RefreshClaims, ctx: &CommandContext) -> Result<Outcome, CommandError> {
        self.ensure_ready()?;
        let user_id = claims.sub;
        let _held = self.locks.lock([format!("user:{user_id}")]).await;
        if let Some(outcome) = self.replay(user_id, ctx)? {
            return Ok(outcome);
        }
        let state = self.state_of(user_id)?;
        let command = UserCommand::RefreshSession { session_id: claims.sid, generation: claims.generation };
        let events = user::decide(&state, command, Utc::now())?;
        let (envelopes, position) =
            self.commit(&user_id.to_string(), state.version, user_id, user_events(events), ctx).await?;
        self.write_through_revocations(user_id, &envelopes).await;
        Ok(Self::outcome(&envelopes, position))
    }

    pub fn session_policy(&self) -> SessionPolicy {
        self.sessions
    }

    fn state_of(&self, user_id: Uuid) -> Result<UserState, CommandError> {
        self.read().user(user_id).cloned().ok_or(CommandError::Unauthenticated)
    }

    /// The common path of a command by an authenticated user on their own
    /// aggregate: lock, replay a retry, check the session, decide, commit.
    async fn on_own_aggregate<F>(
        &self,
        claims: &Claims,
        ctx: &CommandContext,
        make: F,
    ) -> Result<(Outcome, Vec<Envelope>), CommandError>
    where
        F: FnOnce(&UserState) -> UserCommand,
    {
        self.ensure_ready()?;
        let _held = self.locks.lock([format!("user:{}", claims.sub)]).await;
        if let Some(outcome) = self.replay(claims.sub, ctx)? {
            return Ok((outcome, Vec::new()));
        }
        let state = self.state_of(claims.sub)?;
        Self::require_active_session(&state, claims)?;
        let now = Utc::now();
        let events = user::decide(&state, make(&state), now)?;
        let (envelopes, position) =
            self.commit(&claims.sub.to_string(), state.version, claims.sub, user_events(events), ctx).await?;
        Ok((Self::outcome(&envelopes, position), envelopes))
    }

    pub async fn logout(&self, claims: &Claims, ctx: &CommandContext) -> Result<Outcome, CommandError> {
        let (outcome, envelopes) =
            self.on_own_aggregate(claims, ctx, |_| UserCommand::EndSession { session_id: claims.jti }).await?;
        self.write_through_revocations(claims.sub, &envelopes).await;
        Ok(outcome)
    }

    pub async fn update_profile(
        &self,
        claims: &Claims,
        patch: ProfilePatch,
        ctx: &CommandContext,
    ) -> Result<Outcome, CommandError> {
        Ok(self.on_own_aggregate(claims, ctx, |_| UserCommand::UpdateProfile { patch }).await?.0)
    }

    pub async fn change_password(
        &self,
        claims: &Claims,
        current: String,
        new: String,
        client: IpAddr,
        ctx: &CommandContext,
    ) -> Result<Outcome, CommandError> {
        self.ensure_ready()?;
        // A retry of a change that went through must not be judged against the
        // password it already replaced.
        if let Some(outcome) = self.replay(claims.sub, ctx)? {
            return Ok(outcome);
        }
        validation::password(&new)?;
        // The session first: a logged-out token learns nothing about the
        // password. Then the guess counts against the account's limit,
        // like a log-in, before the hash is checked.
        let state = self.state_of(claims.sub)?;
        Self::require_active_session(&state, claims)?;
        self.throttle.reserve(&state.email, client).await?;
        let verdict = match password::verify(current, state.password_hash).await {
            Ok(verdict) => verdict,
            Err(busy) => {
                self.throttle.release(&state.email, client).await?;
                return Err(busy.into());
            }
        };
        if !verdict {
            return Err(Rejection::invalid(
                "current_password_incorrect",
                "currentPassword is not the current password",
            )
            .into());
        }
        self.throttle.settle_success(&state.email, client).await?;
        let new_hash = password::hash(new).await?;
        let (outcome, envelopes) = self
            .on_own_aggregate(claims, ctx, |_| UserCommand::ChangePassword {
                new_password_hash: new_hash,
                keep_session: claims.jti,
            })
            .await?;
        self.write_through_revocations(claims.sub, &envelopes).await;
        Ok(outcome)
    }

    pub async fn change_membership(
        &self,
        claims: &Claims,
        tier: Tier,
        ctx: &CommandContext,
    ) -> Result<Outcome, CommandError> {
        Ok(self.on_own_aggregate(claims, ctx, |_| UserCommand::ChangeMembership { tier }).await?.0)
    }

    /// Sends a connection request. Locks the pair (one request per pair,
    /// either direction) and the sender (the daily count).
    pub async fn send_request(
        &self,
        claims: &Claims,
        to: Uuid,
        status: RequestStatus,
        ctx: &CommandContext,
    ) -> Result<Outcome, CommandError> {
        self.ensure_ready()?;
        let from = claims.sub;
        let pair = pair_key(from, to);
        let _held = self.locks.lock([format!("pair:{pair}"), format!("actor:{from}")]).await;
        if let Some(outcome) = self.replay(from, ctx)? {
            return Ok(outcome);
        }
        let sender = self.state_of(from)?;
        Self::require_active_session(&sender, claims)?;
        let now = Utc::now();
        let (existing, facts) = {
            let model = self.read();
            let facts = SendFacts {
                recipient_exists: model.user(to).is_some(),
                sender_tier: sender.tier,
                sent_today: model.sent_on(from, now.date_naive()),
                now,
            };
            (model.connection(&pair).cloned(), facts)
        };
        let command = ConnectionCommand::Send { request_id: Uuid::now_v7(), from, to, status };
        let events = connection::decide_send(existing.as_ref(), &facts, command)?;
        let base = existing.map_or(0, |c| c.version);
        let (envelopes, position) = self.commit(&pair, base, from, connection_events(events), ctx).await?;
        Ok(Self::outcome(&envelopes, position))
    }

    pub async fn review_request(
        &self,
        claims: &Claims,
        request_id: Uuid,
        status: RequestStatus,
        ctx: &CommandContext,
    ) -> Result<Outcome, CommandError> {
        self.ensure_ready()?;
        let reviewer = claims.sub;
        let pair = self.read().pair_of_request(request_id).map(str::to_owned);
        let mut keys = vec![format!("actor:{reviewer}")];
        keys.extend(pair.iter().map(|p| format!("pair:{p}")));
        let _held = self.locks.lock(keys).await;
        if let Some(outcome) = self.replay(reviewer, ctx)? {
            return Ok(outcome);
        }
        Self::require_active_session(&self.state_of(reviewer)?, claims)?;
        let existing = pair.as_deref().and_then(|p| self.read().connection(p).cloned());
        let command = ConnectionCommand::Review { reviewer, status, now: Utc::now() };
        let events = connection::decide_review(existing.as_ref(), command)?;
        let (Some(pair), Some(existing)) = (pair, existing) else {
            return Err(Rejection::NotFound { code: "request_not_found", message: "no such request".into() }.into());
        };
        let (envelopes, position) =
            self.commit(&pair, existing.version, reviewer, connection_events(events), ctx).await?;
        Ok(Self::outcome(&envelopes, position))
    }

    /// A heartbeat (`online`) or going offline. Always accepted for an
    /// active session; nothing is decided on presence.
    pub async fn presence(&self, claims: &Claims, online: bool, ctx: &CommandContext) -> Result<Outcome, CommandError> {
        use events::presence::{PresenceEvent, PresenceSignal};
        self.ensure_ready()?;
        let user = claims.sub;
        let _held = self.locks.lock([format!("presence:{user}"), format!("actor:{user}")]).await;
        if let Some(outcome) = self.replay(user, ctx)? {
            return Ok(outcome);
        }
        Self::require_active_session(&self.state_of(user)?, claims)?;
        let id = user.to_string();
        let base = self.read().presence_version(&id);
        let event = if online {
            PresenceEvent::Heartbeat(PresenceSignal {})
        } else {
            PresenceEvent::Offline(PresenceSignal {})
        };
        let (envelopes, position) = self.commit(&id, base, user, vec![Event::Presence(event)], ctx).await?;
        Ok(Self::outcome(&envelopes, position))
    }

    pub async fn read_notification(
        &self,
        claims: &Claims,
        id: Uuid,
        ctx: &CommandContext,
    ) -> Result<Outcome, CommandError> {
        self.ensure_ready()?;
        let reader = claims.sub;
        let _held = self.locks.lock([format!("notifications:{reader}"), format!("actor:{reader}")]).await;
        if let Some(outcome) = self.replay(reader, ctx)? {
            return Ok(outcome);
        }
        Self::require_active_session(&self.state_of(reader)?, claims)?;
        let user = reader.to_string();
        let (state, base) = {
            let model = self.read();
            (model.notification(id), model.notification_version(&user))
        };
        let events = crate::domain::notification::decide_read(state, id, reader)?;
        if events.is_empty() {
            return Ok(Outcome { answer: Answer::NoContent, position: None, replayed: false });
        }
        let events = events.into_iter().map(Event::Notification).collect();
        let (envelopes, position) = self.commit(&user, base, reader, events, ctx).await?;
        Ok(Self::outcome(&envelopes, position))
    }

    /// Sends a message. Locks the conversation; reads the connection.
    pub async fn send_message(
        &self,
        claims: &Claims,
        to: Uuid,
        text: String,
        ctx: &CommandContext,
    ) -> Result<Outcome, CommandError> {
        self.ensure_ready()?;
        let from = claims.sub;
        let pair = pair_key(from, to);
        let _held = self.locks.lock([format!("conversation:{pair}"), format!("actor:{from}")]).await;
        if let Some(outcome) = self.replay(from, ctx)? {
            return Ok(outcome);
        }
        Self::require_active_session(&self.state_of(from)?, claims)?;
        let (facts, base) = {
            let model = self.read();
            let facts =
                message::SendFacts { recipient_exists: model.user(to).is_some(), connected: model.connected(&pair) };
            (facts, model.conversation_version(&pair))
        };
        let events = message::decide_send(facts, Uuid::now_v7(), from, to, text)?;
        let (envelopes, position) = self.commit(&pair, base, from, message_events(events), ctx).await?;
        Ok(Self::outcome(&envelopes, position))
    }

    pub async fn read_message(
        &self,
        claims: &Claims,
        message_id: Uuid,
        ctx: &CommandContext,
    ) -> Result<Outcome, CommandError> {
        self.message_status(claims, message_id, ctx, message::decide_read).await
    }

    pub async fn deliver_message(
        &self,
        claims: &Claims,
        message_id: Uuid,
        ctx: &CommandContext,
    ) -> Result<Outcome, CommandError> {
        self.message_status(claims, message_id, ctx, message::decide_delivered).await
    }

    /// Marks a message delivered or read, as `decide` says.
    async fn message_status(
        &self,
        claims: &Claims,
        message_id: Uuid,
        ctx: &CommandContext,
        decide: MessageStatusRule,
    ) -> Result<Outcome, CommandError> {
        self.ensure_ready()?;
        let reader = claims.sub;
        let pair = self.read().message(message_id).map(|m| m.pair.clone());
        let mut keys = vec![format!("actor:{reader}")];
        keys.extend(pair.iter().map(|p| format!("conversation:{p}")));
        let _held = self.locks.lock(keys).await;
        if let Some(outcome) = self.replay(reader, ctx)? {
            return Ok(outcome);
        }
        Self::require_active_session(&self.state_of(reader)?, claims)?;
        let (state, base) = {
            let model = self.read();
            let state = model.message(message_id).cloned();
            let base = state.as_ref().map_or(0, |m| model.conversation_version(&m.pair));
            (state, base)
        };
        let events = decide(state.as_ref(), message_id, reader, Utc::now())?;
        let Some(state) = state.filter(|_| !events.is_empty()) else {
            return Ok(Outcome { answer: Answer::NoContent, position: None, replayed: false });
        };
        let (envelopes, position) = self.commit(&state.pair, base, reader, message_events(events), ctx).await?;
        Ok(Self::outcome(&envelopes, position))
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
        let mut records = Vec::new();
        for envelope in envelopes {
            let Event::User(UserEvent::SessionsRevoked(revoked)) = &envelope.event else { continue };
            for session_id in &revoked.session_ids {
                let Some(session) = state.sessions.get(session_id) else { continue };
                records.push(views::revocation::RevocationDoc {
                    session_id: session_id.to_string(),
                    user_id: user_id.to_string(),
                    // Only access tokens are checked against the record, and
                    // the last one of the session was issued before now.
                    expires_at: self.sessions.access_expires_at(now, session.expires_at),
                    recorded_at: now,
                });
            }
        }
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

fn user_events(events: Vec<UserEvent>) -> Vec<Event> {
    events.into_iter().map(Event::User).collect()
}

fn connection_events(events: Vec<ConnectionEvent>) -> Vec<Event> {
    events.into_iter().map(Event::Connection).collect()
}

fn message_events(events: Vec<MessageEvent>) -> Vec<Event> {
    events.into_iter().map(Event::Message).collect()
}

/// `decide_read` or `decide_delivered`: (message, id, actor, now) → events.
type MessageStatusRule =
    fn(Option<&message::MessageState>, Uuid, Uuid, DateTime<Utc>) -> Result<Vec<MessageEvent>, Rejection>;
