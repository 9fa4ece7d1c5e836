//! The read-model schema: the second contract (docs/design.md §3). The projector
//! writes it, the query API reads it, and the command API touches exactly one
//! piece of it (the write-through of a session revocation).

pub mod cache;
pub mod consistency;
pub mod documents;
pub mod generation;
pub mod keys;
pub mod revocation;
pub mod shapes;

pub use consistency::{ConsistencyKey, ConsistencyToken};
pub use documents::{
    CheckpointDoc, ConnectionDoc, ConnectionRequestDoc, ConversationCache, DailyStatsDoc, MessageDoc,
    NotificationCounterDoc, NotificationDoc, PresenceDoc, RelationsDoc, SessionDoc, UserDoc,
};
pub use shapes::{LiveUpdate, MessageItem, NotificationItem, PresenceView};

/// Entries kept per user stream: how far back a reconnecting client can
/// resume with `Last-Event-ID`.
pub const STREAM_LENGTH: usize = 1000;

/// How many of a conversation's newest messages `messages:<a>:<b>` holds.
pub const CACHED_MESSAGES: usize = 50;

/// MongoDB collection names.
pub mod collections {
    pub const USERS: &str = "users";
    pub const SESSIONS: &str = "sessions";
    /// One document per connection request (index: toUserId, status,
    /// createdAt, _id: the requests received, newest first).
    pub const CONNECTION_REQUESTS: &str = "connection_requests";
    /// One document per user and connection, `_id` `<userId>:<otherUserId>`
    /// (index: userId, connectedAt, requestId: a user's connections, newest
    /// first).
    pub const CONNECTIONS: &str = "connections";
    /// Per user: everyone they have a request with, either direction
    /// (`related`, what the feed excludes), and their accepted connections
    /// as a set (`connections`, whom presence changes go to; the ordered
    /// list is `CONNECTIONS`).
    pub const RELATIONS: &str = "relations";
    /// One document per message (index: pairKey + _id).
    pub const MESSAGES: &str = "messages";
    /// One document per user who ever sent a heartbeat.
    pub const PRESENCE: &str = "presence";
    /// One document per notification; `_id` is the notifying event's id.
    pub const NOTIFICATIONS: &str = "notifications";
    /// Per user: the unread count.
    pub const NOTIFICATION_COUNTERS: &str = "notification_counters";
    /// Per UTC day (`_id` YYYY-MM-DD): the analytics counts.
    pub const DAILY_STATS: &str = "daily_stats";
    /// Processed-id keys: the ids of events whose counted effects
    /// (counters, notifications) were applied, with when (`at`), so a
    /// second record of the same event (a re-driven dead letter) never
    /// counts twice. A record read again is fenced by the checkpoint
    /// instead, so the keys are pruned after a retention (docs/design.md §3).
    pub const PROCESSED_EVENTS: &str = "processed_events";
    /// Applied position per topic partition, written in the same transaction
    /// as the view changes it covers.
    pub const CHECKPOINTS: &str = "checkpoints";
    /// Cache keys whose refresh failed while Redis was unreachable, written
    /// with (or right after) the views they cover; the projector deletes the
    /// keys once Redis answers again, then these documents.
    pub const STALE_CACHES: &str = "stale_caches";
    /// In the base database, outside every generation: one document per
    /// revoked session (`_id` the session id, `expiresAt`), written by the
    /// command API before it answers a logout. The query API learns
    /// revocations from here, so a logout holds whatever Redis does.
    pub const REVOCATIONS: &str = "revocations";
}

/// Cache lifetimes (docs/domain.md "Redis keys"). Profiles, the feed
/// directory and the relation sets never expire (`cache::Expiry::Never`):
/// steady-state reads must not wait on MongoDB.
pub mod ttl {
    use std::time::Duration;
    pub const CONVERSATION: Duration = Duration::from_secs(60 * 60);
    /// How long a cached presence document is kept; whether the user is
    /// online is read from its `onlineUntil`, not from this.
    pub const PRESENCE: Duration = Duration::from_secs(5 * 60);
}
