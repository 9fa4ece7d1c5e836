use chrono::{DateTime, Utc};
use events::user::{Gender, Profile};
use serde::{Deserialize, Serialize};

/// `users` collection and the `user:<id>` cache entry. Never holds a password
/// or its hash. `version` is the user aggregate version of the last event
/// applied: a write carrying an older version changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserDoc {
    #[serde(rename = "_id")]
    pub user_id: String,
    pub email_id: String,
    pub first_name: String,
    pub last_name: String,
    pub age: Option<u8>,
    pub gender: Option<Gender>,
    pub about: Option<String>,
    pub skills: Vec<String>,
    pub photo_url: Option<String>,
    pub membership: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: u64,
}

impl UserDoc {
    pub fn profile(&self) -> Profile {
        Profile {
            first_name: self.first_name.clone(),
            last_name: self.last_name.clone(),
            age: self.age,
            gender: self.gender,
            about: self.about.clone(),
            skills: self.skills.clone(),
            photo_url: self.photo_url.clone(),
        }
    }
}

/// `sessions` collection and the `session:<id>` cache entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionDoc {
    #[serde(rename = "_id")]
    pub session_id: String,
    pub user_id: String,
    pub expires_at: DateTime<Utc>,
    pub revoked: bool,
    pub version: u64,
}

/// `checkpoints` collection: the next offset to apply per topic partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub topic: String,
    pub partition: i32,
    pub next_offset: i64,
}

impl CheckpointDoc {
    pub fn id_for(topic: &str, partition: i32) -> String {
        format!("{topic}:{partition}")
    }
}

/// `connection_requests` collection. `version` is the pair aggregate's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionRequestDoc {
    #[serde(rename = "_id")]
    pub request_id: String,
    pub pair_key: String,
    pub from_user_id: String,
    pub to_user_id: String,
    /// interested, ignored, accepted or rejected.
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub reviewed_at: Option<DateTime<Utc>>,
    pub version: u64,
}

/// `relations` collection. Both lists are sets (`$addToSet`), so applying
/// an event twice leaves them as once.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RelationsDoc {
    #[serde(rename = "_id")]
    pub user_id: String,
    #[serde(default)]
    pub related: Vec<String>,
    #[serde(default)]
    pub connections: Vec<String>,
}

/// `messages` collection. `version` is the conversation aggregate's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageDoc {
    #[serde(rename = "_id")]
    pub message_id: String,
    pub pair_key: String,
    pub from_user_id: String,
    pub to_user_id: String,
    pub text: String,
    pub sent_at: DateTime<Utc>,
    #[serde(default)]
    pub delivered_at: Option<DateTime<Utc>>,
    pub read_at: Option<DateTime<Utc>>,
    pub version: u64,
}

/// `messages:<a>:<b>`: a conversation's newest messages, newest first.
/// `version` is the highest message version among them, for versioned sets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationCache {
    pub version: u64,
    pub items: Vec<MessageDoc>,
}

impl ConversationCache {
    pub fn new(items: Vec<MessageDoc>) -> Self {
        Self { version: items.iter().map(|m| m.version).max().unwrap_or(0), items }
    }

    /// This cache with `touched` (new or changed messages of the same
    /// conversation) folded in: the newest `crate::CACHED_MESSAGES` by id.
    /// Equal to reading them afresh when this cache was: it holds either
    /// every message or the newest ones, and a touched message older than
    /// all it holds cannot be among the newest.
    pub fn merged(self, touched: impl IntoIterator<Item = MessageDoc>) -> Self {
        let mut by_id: std::collections::BTreeMap<String, MessageDoc> =
            self.items.into_iter().map(|m| (m.message_id.clone(), m)).collect();
        for message in touched {
            by_id.insert(message.message_id.clone(), message);
        }
        Self::new(by_id.into_values().rev().take(crate::CACHED_MESSAGES).collect())
    }
}

/// `presence` collection and `presence:<id>`. Online means `onlineUntil`
/// is in the future; both times come from event times, so a replay lands
/// the same document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceDoc {
    #[serde(rename = "_id")]
    pub user_id: String,
    pub last_seen: DateTime<Utc>,
    pub online_until: DateTime<Utc>,
    pub version: u64,
}

/// `notifications` collection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationDoc {
    #[serde(rename = "_id")]
    pub notification_id: String,
    pub user_id: String,
    /// connection_request, request_accepted or message.
    #[serde(rename = "type")]
    pub kind: String,
    pub from_user_id: String,
    pub request_id: Option<String>,
    pub message_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub read_at: Option<DateTime<Utc>>,
}

/// `notification_counters` collection.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationCounterDoc {
    #[serde(rename = "_id")]
    pub user_id: String,
    #[serde(default)]
    pub unread: i64,
}

/// `daily_stats` collection.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DailyStatsDoc {
    /// YYYY-MM-DD (UTC).
    #[serde(rename = "_id")]
    pub date: String,
    #[serde(default)]
    pub signups: i64,
    #[serde(default)]
    pub logins: i64,
    #[serde(default)]
    pub requests_sent: i64,
    #[serde(default)]
    pub requests_accepted: i64,
    #[serde(default)]
    pub messages_sent: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(n: u64, text: &str) -> MessageDoc {
        MessageDoc {
            message_id: format!("m{n:04}"),
            pair_key: "a:b".into(),
            from_user_id: "a".into(),
            to_user_id: "b".into(),
            text: text.into(),
            sent_at: DateTime::<Utc>::UNIX_EPOCH,
            delivered_at: None,
            read_at: None,
            version: n,
        }
    }

    #[test]
    fn merging_equals_reading_the_newest_afresh() {
        let all: Vec<MessageDoc> = (1..=60).map(|n| message(n, "hi")).collect();
        let newest = |list: &[MessageDoc]| -> Vec<MessageDoc> {
            let mut list = list.to_vec();
            list.sort_by(|a, b| b.message_id.cmp(&a.message_id));
            list.truncate(crate::CACHED_MESSAGES);
            list
        };
        let cached = ConversationCache::new(newest(&all[..55]));
        // Five new messages, an edit of a cached one, and a change to one
        // too old to be cached.
        let mut changed = all[55..].to_vec();
        changed.push(message(30, "read"));
        changed.push(message(2, "read"));
        let mut now = all.clone();
        now[29] = message(30, "read");
        now[1] = message(2, "read");
        assert_eq!(cached.merged(changed), ConversationCache::new(newest(&now)));
        // A short conversation holds everything.
        let short = ConversationCache::new(vec![message(1, "a")]).merged(vec![message(2, "b")]);
        assert_eq!(short.items.iter().map(|m| m.version).collect::<Vec<_>>(), vec![2, 1]);
        assert_eq!(short.version, 2);
    }
}
