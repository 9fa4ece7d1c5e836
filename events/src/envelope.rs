use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::Event;

/// Metadata a command handler attaches to every event it appends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMetadata {
    /// The user who acted; `None` for anonymous commands (sign-up).
    pub actor: Option<Uuid>,
    /// Correlates the HTTP request, its log lines and its events.
    pub correlation_id: String,
    /// The client's `Idempotency-Key`, when it sent one (docs/design.md §6).
    pub idempotency_key: Option<String>,
    /// A digest of the request the key was first used with, so a reuse of
    /// the key for a different request can be told apart from a retry.
    pub request_fingerprint: Option<String>,
}

/// One event with its envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub event_id: Uuid,
    /// The aggregate this event belongs to; also the Kafka record key.
    pub aggregate_id: String,
    /// 1 for the aggregate's first event, +1 for each next one.
    pub aggregate_version: u64,
    pub occurred_at: DateTime<Utc>,
    pub metadata: EventMetadata,
    pub event: Event,
}

impl Envelope {
    pub fn event_type(&self) -> &'static str {
        self.event.event_type()
    }
}
