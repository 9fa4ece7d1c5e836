//! The event contract shared by every DevConnect program.
//!
//! * [`Envelope`]: the metadata every event carries (id, type, schema version,
//!   aggregate id and version, time, actor, correlation id, idempotency key).
//! * [`user`]: the events of the user aggregate (profile, credentials, sessions).
//! * [`Topic`]: where each aggregate's events live and how records are keyed.
//! * [`codec`]: the wire format of one Kafka record and upcasting of old
//!   schema versions, so every program only ever sees the current shape.
//!
//! One command produces one Kafka record holding all of its events (a
//! *commit*). The broker writes a record atomically, so the events of one
//! command land together or not at all without Kafka transactions, which the
//! brokers we run do not implement (see `docs/stack.md`).

pub mod codec;
pub mod connection;
pub mod envelope;
pub mod message;
pub mod notification;
pub mod owner;
pub mod presence;
pub mod topic;
pub mod user;

pub use codec::{DecodeError, decode_record, encode_record};
pub use connection::ConnectionEvent;
pub use envelope::{Envelope, EventMetadata};
pub use message::MessageEvent;
pub use notification::NotificationEvent;
pub use presence::PresenceEvent;
pub use topic::{Topic, TopicNames};
pub use user::UserEvent;

/// Every event payload of every aggregate, tagged by its wire type name.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    User(UserEvent),
    Connection(ConnectionEvent),
    Message(MessageEvent),
    Presence(PresenceEvent),
    Notification(NotificationEvent),
}

impl Event {
    /// The wire type name, e.g. `user.registered`.
    pub fn event_type(&self) -> &'static str {
        match self {
            Event::User(e) => e.event_type(),
            Event::Connection(e) => e.event_type(),
            Event::Message(e) => e.event_type(),
            Event::Presence(e) => e.event_type(),
            Event::Notification(e) => e.event_type(),
        }
    }

    /// The current schema version of this event type.
    pub fn schema_version(&self) -> u32 {
        match self {
            Event::User(e) => e.schema_version(),
            Event::Connection(_) | Event::Message(_) | Event::Presence(_) | Event::Notification(_) => 1,
        }
    }

    /// The topic this event's aggregate lives on.
    pub fn topic(&self) -> Topic {
        match self {
            Event::User(_) => Topic::UserEvents,
            Event::Connection(_) => Topic::ConnectionEvents,
            Event::Message(_) => Topic::MessageEvents,
            Event::Presence(_) => Topic::PresenceEvents,
            Event::Notification(_) => Topic::NotificationEvents,
        }
    }
}
