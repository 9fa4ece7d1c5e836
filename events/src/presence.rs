//! Presence events, keyed by user id on [`crate::Topic::PresenceEvents`]:
//! a topic of their own, as heartbeats are many and short-lived.

use serde::{Deserialize, Serialize};

/// `presence.heartbeat` v1: the user is online (for the presence TTL from
/// `occurred_at`). `presence.offline` v1: the user went offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceSignal {}

#[derive(Debug, Clone, PartialEq)]
pub enum PresenceEvent {
    Heartbeat(PresenceSignal),
    Offline(PresenceSignal),
}

impl PresenceEvent {
    pub const HEARTBEAT: &'static str = "presence.heartbeat";
    pub const OFFLINE: &'static str = "presence.offline";

    pub fn event_type(&self) -> &'static str {
        match self {
            PresenceEvent::Heartbeat(_) => Self::HEARTBEAT,
            PresenceEvent::Offline(_) => Self::OFFLINE,
        }
    }
}
