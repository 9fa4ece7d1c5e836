//! Events of the connection aggregate: the relationship between two users,
//! keyed by the ordered pair `min(a,b):max(a,b)` on
//! [`crate::Topic::ConnectionEvents`]. Both directions share one key, hence
//! one partition and one lock, which is what makes "never a second request
//! between the same two people" an invariant of a single aggregate.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The aggregate id of the pair, the same whichever way round.
pub fn pair_key(a: Uuid, b: Uuid) -> String {
    let (low, high) = if a <= b { (a, b) } else { (b, a) };
    format!("{low}:{high}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestStatus {
    Interested,
    Ignored,
    Accepted,
    Rejected,
}

impl RequestStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::Interested => "interested",
            RequestStatus::Ignored => "ignored",
            RequestStatus::Accepted => "accepted",
            RequestStatus::Rejected => "rejected",
        }
    }
}

/// `connection.requested` v1: `from` sent `interested` or `ignored` to `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionRequested {
    pub request_id: Uuid,
    pub from_user_id: Uuid,
    pub to_user_id: Uuid,
    pub status: RequestStatus,
    /// Its slot of the sender's daily limit was reserved on the sender's
    /// aggregate (`user.request_slot_reserved`, same request id), which is
    /// where it counts. Absent (false) on requests from before reservations,
    /// which count themselves.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub slot_reserved: bool,
}

/// `connection.reviewed` v1: the recipient accepted or rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionReviewed {
    pub request_id: Uuid,
    pub status: RequestStatus,
    pub reviewed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ConnectionEvent {
    Requested(ConnectionRequested),
    Reviewed(ConnectionReviewed),
}

impl ConnectionEvent {
    pub const REQUESTED: &'static str = "connection.requested";
    pub const REVIEWED: &'static str = "connection.reviewed";

    pub fn event_type(&self) -> &'static str {
        match self {
            ConnectionEvent::Requested(_) => Self::REQUESTED,
            ConnectionEvent::Reviewed(_) => Self::REVIEWED,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pair_key_ignores_direction() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(pair_key(a, b), pair_key(b, a));
        assert_ne!(pair_key(a, b), pair_key(a, Uuid::new_v4()));
    }
}
