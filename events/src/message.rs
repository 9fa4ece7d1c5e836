//! Events of the conversation aggregate: the private messages between two
//! users, keyed like the connection by the ordered pair `min(a,b):max(a,b)`
//! on [`crate::Topic::MessageEvents`], so one conversation stays in order.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `message.sent` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageSent {
    pub message_id: Uuid,
    pub from_user_id: Uuid,
    pub to_user_id: Uuid,
    pub text: String,
}

/// `message.read` v1: the recipient read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageRead {
    pub message_id: Uuid,
    pub read_at: DateTime<Utc>,
}

/// `message.delivered` v1: the recipient's client has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageDelivered {
    pub message_id: Uuid,
    pub delivered_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum MessageEvent {
    Sent(MessageSent),
    Delivered(MessageDelivered),
    Read(MessageRead),
}

impl MessageEvent {
    pub const SENT: &'static str = "message.sent";
    pub const DELIVERED: &'static str = "message.delivered";
    pub const READ: &'static str = "message.read";

    pub fn event_type(&self) -> &'static str {
        match self {
            MessageEvent::Sent(_) => Self::SENT,
            MessageEvent::Delivered(_) => Self::DELIVERED,
            MessageEvent::Read(_) => Self::READ,
        }
    }
}
