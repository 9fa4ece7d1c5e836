//! Pure domain logic: validation, and `decide`/`apply` per aggregate. No IO
//! here; the handlers do the IO around it.

pub mod connection;
pub mod message;
pub mod notification;
pub mod user;
pub mod validation;

/// Why a command was refused. Each maps to one HTTP status and carries a
/// machine-readable code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("{message}")]
    NotFound { code: &'static str, message: String },
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    #[error("{message}")]
    LimitReached { code: &'static str, message: String, retry_after_secs: u64 },
    #[error("session is not active")]
    SessionNotActive,
}

impl Rejection {
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Rejection::Invalid { code, message: message.into() }
    }
}
