/// The event topics. Each aggregate type owns exactly one topic and every
/// record is keyed by its aggregate id, so one aggregate's events stay in
/// order on one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// The user aggregate (key: user id): profile, credentials, sessions.
    UserEvents,
    /// The connection aggregate (key: the ordered user pair): requests and reviews.
    ConnectionEvents,
    /// The conversation aggregate (key: the ordered user pair): messages.
    MessageEvents,
    /// Presence heartbeats and offlines (key: user id).
    PresenceEvents,
    /// Notifications marked read (key: the notified user's id).
    NotificationEvents,
    /// Records the projector could not decode or apply, with the reason.
    DeadLetters,
}

impl Topic {
    pub const ALL: [Topic; 6] = [
        Topic::UserEvents,
        Topic::ConnectionEvents,
        Topic::MessageEvents,
        Topic::PresenceEvents,
        Topic::NotificationEvents,
        Topic::DeadLetters,
    ];
    /// The topics holding aggregates' events (what the write model and the
    /// projector read).
    pub const EVENT_TOPICS: [Topic; 5] = [
        Topic::UserEvents,
        Topic::ConnectionEvents,
        Topic::MessageEvents,
        Topic::PresenceEvents,
        Topic::NotificationEvents,
    ];

    /// The base name, before any deployment prefix.
    pub fn base_name(self) -> &'static str {
        match self {
            Topic::UserEvents => "user-events",
            Topic::ConnectionEvents => "connection-events",
            Topic::MessageEvents => "message-events",
            Topic::PresenceEvents => "presence-events",
            Topic::NotificationEvents => "notification-events",
            Topic::DeadLetters => "dead-letters",
        }
    }
}

/// Topic names as deployed: a prefix (empty in production, unique per test)
/// in front of each base name, so isolated environments can share a broker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicNames {
    prefix: String,
}

impl TopicNames {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into() }
    }

    pub fn name(&self, topic: Topic) -> String {
        format!("{}{}", self.prefix, topic.base_name())
    }

    /// The topic for a deployed name, if it is one of ours.
    pub fn parse(&self, name: &str) -> Option<Topic> {
        let base = name.strip_prefix(&self.prefix)?;
        Topic::ALL.into_iter().find(|t| t.base_name() == base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_with_a_prefix() {
        let names = TopicNames::new("t42-");
        assert_eq!(names.name(Topic::UserEvents), "t42-user-events");
        assert_eq!(names.parse("t42-user-events"), Some(Topic::UserEvents));
        assert_eq!(names.parse("user-events"), None);
        assert_eq!(TopicNames::default().parse("user-events"), Some(Topic::UserEvents));
    }
}
