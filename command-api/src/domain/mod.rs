//! Pure domain logic: validation, and one [`Aggregate`] per aggregate of
//! the log (user, connection, message, presence, notification). No IO here;
//! the command service does the IO around it.

use chrono::{DateTime, Utc};
use platform::error_code::ErrorCode;

pub mod connection;
pub mod message;
pub mod notification;
pub mod presence;
#[cfg(test)]
pub mod spec;
pub mod user;
pub mod validation;

/// An event as the log recorded it: what `apply` folds, with the aggregate,
/// version and time the record gave it.
#[derive(Debug, Clone, Copy)]
pub struct Recorded<'a, E> {
    pub event: &'a E,
    pub aggregate_id: &'a str,
    pub version: u64,
    pub occurred_at: DateTime<Utc>,
}

/// The one shape of every aggregate: `decide` a command against the state
/// and the facts the write model holds about the rest of the world, giving
/// the events to append or the reason to refuse; `apply` folds a recorded
/// event into the state. Both pure: time, ids and hashes come in through
/// the command and the facts.
pub trait Aggregate {
    type State: Default;
    type Command;
    type Facts;
    type Event;

    fn decide(state: &Self::State, command: Self::Command, facts: &Self::Facts) -> Result<Vec<Self::Event>, Rejection>;

    fn apply(state: &mut Self::State, event: Recorded<'_, Self::Event>);
}

/// Why a command was refused. Each maps to one HTTP status and carries a
/// machine-readable code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("{message}")]
    Invalid { code: ErrorCode, message: String },
    #[error("{message}")]
    Conflict { code: ErrorCode, message: String },
    #[error("{message}")]
    NotFound { code: ErrorCode, message: String },
    #[error("{message}")]
    Forbidden { code: ErrorCode, message: String },
    #[error("{message}")]
    LimitReached { code: ErrorCode, message: String, retry_after_secs: u64 },
    #[error("session is not active")]
    SessionNotActive,
}

impl Rejection {
    pub fn invalid(code: ErrorCode, message: impl Into<String>) -> Self {
        Rejection::Invalid { code, message: message.into() }
    }
}
