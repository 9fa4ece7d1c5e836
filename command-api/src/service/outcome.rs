//! What a command carries in (`CommandContext`) and answers with
//! (`CommandOutcome`, `Answer`, `CommandError`), apart from how it runs.

use super::*;

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
pub struct CommandOutcome {
    pub answer: Answer,
    /// Where the command's record landed; `None` when it changed nothing
    /// (reading a message already read).
    pub position: Option<Position>,
    /// True when this answers a retry from the log and appended nothing.
    pub retried: bool,
}

impl CommandOutcome {
    pub(super) fn committed(envelopes: &[Envelope], position: Position) -> Self {
        Self { answer: Answer::of_commit(envelopes), position: Some(position), retried: false }
    }

    /// A command that decided no event: nothing appended, nothing to wait for.
    pub(super) fn unchanged() -> Self {
        Self { answer: Answer::NoContent, position: None, retried: false }
    }
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
    /// The append may have landed and count: the broker did not answer in
    /// time, or the record was not read back in time.
    #[error("the outcome of the append is unknown: {detail}")]
    OutcomeUnknown { detail: String },
    #[error("the write model is still being rebuilt from the log")]
    NotReady,
    /// Another instance owns the command's partition: the request is
    /// forwarded there (`http::forwarding`), or, already forwarded once,
    /// answered 503 so the client retries.
    #[error("another instance serves partition {partition}, and it could not be reached; retry shortly")]
    NotOwner { partition: i32 },
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
