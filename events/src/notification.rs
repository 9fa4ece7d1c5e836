//! Notification events, keyed by the notified user's id on
//! [`crate::Topic::NotificationEvents`]. Notifications themselves are not
//! events: the projector derives one from each event that notifies
//! someone, with that event's id as the notification id. Only marking one
//! read is a command.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `notification.read` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationRead {
    pub notification_id: Uuid,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NotificationEvent {
    Read(NotificationRead),
}

impl NotificationEvent {
    pub const READ: &'static str = "notification.read";

    pub fn event_type(&self) -> &'static str {
        match self {
            NotificationEvent::Read(_) => Self::READ,
        }
    }
}

/// Who an event notifies, and of what; `None` for events that notify no one.
/// Shared by the command API (which notifications exist, and whose) and the
/// projector (the notification documents), so the two cannot disagree.
pub fn notified_by(envelope: &crate::Envelope) -> Option<(Uuid, &'static str)> {
    use crate::connection::{ConnectionEvent, RequestStatus};
    use crate::message::MessageEvent;
    match &envelope.event {
        crate::Event::Connection(ConnectionEvent::Requested(r)) if r.status == RequestStatus::Interested => {
            Some((r.to_user_id, "connection_request"))
        }
        crate::Event::Connection(ConnectionEvent::Reviewed(r)) if r.status == RequestStatus::Accepted => {
            // The reviewer is the actor; the other user of the pair sent it.
            let reviewer = envelope.metadata.actor?;
            let (a, b) = envelope.aggregate_id.split_once(':')?;
            let other = if a == reviewer.to_string() { b } else { a };
            Some((other.parse().ok()?, "request_accepted"))
        }
        crate::Event::Message(MessageEvent::Sent(m)) => Some((m.to_user_id, "message")),
        _ => None,
    }
}
