use chrono::{DateTime, Utc};
use events::user::{Gender, Profile};
use serde::{Deserialize, Serialize};

/// A time that a list is ordered by, stored so that the strings sort as the
/// times do: RFC 3339 in UTC with exactly nine fraction digits. (chrono's
/// default drops trailing zero groups, so "…:56Z" would sort after
/// "…:56.5Z", and "…:56.100Z" after "…:56.100200Z".) Reading accepts any
/// RFC 3339 string, including documents written before this format.
///
/// Use it as `#[serde(with = "crate::documents::sortable_time")]`, and
/// `format` for the value a query compares the field with.
pub mod sortable_time {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    /// The stored form of `at`.
    pub fn format(at: &DateTime<Utc>) -> String {
        at.to_rfc3339_opts(SecondsFormat::Nanos, true)
    }

    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format(at))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<DateTime<Utc>, D::Error> {
        DateTime::<Utc>::deserialize(deserializer)
    }
}

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
    /// The first offset of the last batch applied here. Its cache refresh
    /// follows the transaction, so a projector that died in between may
    /// have left it undone: the partition's next owner starts here.
    #[serde(default)]
    pub refresh_from: Option<i64>,
    /// The owner epoch in force at `next_offset` and at `refresh_from`
    /// (`events::owner`): the last owner marker before each. A reader
    /// starting at either seeds its marker index with them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_epoch: Option<i64>,
}

impl CheckpointDoc {
    pub fn id_for(topic: &str, partition: i32) -> String {
        format!("{topic}:{partition}")
    }
}

/// `connection_requests` collection. `version` is the pair aggregate's.
/// Requests received are listed newest first: by `createdAt`, then `_id`
/// (index `toUserId, status, createdAt, _id`).
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
    #[serde(with = "sortable_time")]
    pub created_at: DateTime<Utc>,
    pub reviewed_at: Option<DateTime<Utc>>,
    pub version: u64,
}

/// `connections` collection: one document per user and connection, so two
/// per accepted request (one for each side). A user's connections are
/// listed newest first: by `connectedAt`, then `requestId` (index `userId,
/// connectedAt, requestId`). Only the acceptance writes it, and `version`
/// is the pair aggregate's, so applying it again changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionDoc {
    /// `<userId>:<otherUserId>`.
    #[serde(rename = "_id")]
    pub id: String,
    pub user_id: String,
    pub other_user_id: String,
    /// The accepted request; it breaks ties between connections made at
    /// the same instant.
    pub request_id: String,
    /// When the request was accepted (the acceptance event's time).
    #[serde(with = "sortable_time")]
    pub connected_at: DateTime<Utc>,
    pub version: u64,
}

impl ConnectionDoc {
    pub fn id_for(user_id: &str, other_user_id: &str) -> String {
        format!("{user_id}:{other_user_id}")
    }

    /// The connection as a member of the user's cached list
    /// (`RedisKeys::connections`): `<connectedAt>|<requestId>|<otherUserId>`.
    /// The time is `sortable_time` (fixed width), so the members' byte order
    /// is the list's order, newest last.
    pub fn cache_member(&self) -> String {
        format!("{}|{}", Self::cache_position(&self.connected_at, &self.request_id), self.other_user_id)
    }

    /// The prefix of `cache_member` that orders it: a page "before" a
    /// cursor is every member below this.
    pub fn cache_position(connected_at: &DateTime<Utc>, request_id: &str) -> String {
        format!("{}|{request_id}", sortable_time::format(connected_at))
    }

    /// Reads a `cache_member` back (`None` for the completeness marker or
    /// anything malformed).
    pub fn from_cache_member(user_id: &str, member: &str) -> Option<ConnectionDoc> {
        let mut parts = member.splitn(3, '|');
        let connected_at = DateTime::parse_from_rfc3339(parts.next()?).ok()?.with_timezone(&Utc);
        let request_id = parts.next()?.to_owned();
        let other_user_id = parts.next()?.to_owned();
        Some(ConnectionDoc {
            id: Self::id_for(user_id, &other_user_id),
            user_id: user_id.to_owned(),
            other_user_id,
            request_id,
            connected_at,
            // The list needs no version: its members never change.
            version: 0,
        })
    }
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

    #[test]
    fn sortable_times_sort_as_the_times_do() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).expect("time").with_timezone(&Utc);
        // chrono's own strings for these sort out of time order.
        let times = [
            at("2025-03-01T10:00:56Z"),
            at("2025-03-01T10:00:56.100Z"),
            at("2025-03-01T10:00:56.100200Z"),
            at("2025-03-01T10:00:56.100200300Z"),
            at("2025-03-01T10:00:56.5Z"),
            at("2025-03-01T10:00:57Z"),
        ];
        let stored: Vec<String> = times.iter().map(sortable_time::format).collect();
        let mut sorted = stored.clone();
        sorted.sort();
        assert_eq!(sorted, stored);
        assert_eq!(stored[0], "2025-03-01T10:00:56.000000000Z");
        // What the projector stores is that string, and it reads back as the time.
        let doc = ConnectionDoc {
            id: ConnectionDoc::id_for("a", "b"),
            user_id: "a".into(),
            other_user_id: "b".into(),
            request_id: "r".into(),
            connected_at: times[1],
            version: 3,
        };
        let bson = mongodb::bson::to_document(&doc).expect("bson");
        assert_eq!(bson.get_str("connectedAt"), Ok("2025-03-01T10:00:56.100000000Z"));
        assert_eq!(bson.get_str("_id"), Ok("a:b"));
        assert_eq!(mongodb::bson::from_document::<ConnectionDoc>(bson).expect("read back"), doc);
        // Documents written before (chrono's default) still read.
        let old = serde_json::json!({"_id": "r", "pairKey": "a:b", "fromUserId": "a", "toUserId": "b",
            "status": "interested", "createdAt": "2025-03-01T10:00:56.1Z", "reviewedAt": null, "version": 1});
        let old: ConnectionRequestDoc = serde_json::from_value(old).expect("old request");
        assert_eq!(old.created_at, times[1]);
    }

    #[test]
    fn cached_connection_members_sort_as_the_collection_does_and_read_back() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).expect("time").with_timezone(&Utc);
        let connection = |when: &str, request: &str, other: &str| ConnectionDoc {
            id: ConnectionDoc::id_for("me", other),
            user_id: "me".into(),
            other_user_id: other.into(),
            request_id: request.into(),
            connected_at: at(when),
            version: 0,
        };
        // Oldest first, as (connectedAt, requestId) orders them.
        let list = [
            connection("2025-03-01T10:00:56Z", "r9", "x"),
            connection("2025-03-01T10:00:56.5Z", "r1", "y"),
            connection("2025-03-01T10:00:56.5Z", "r2", "a"),
            connection("2025-03-01T10:00:57Z", "r0", "z"),
        ];
        let members: Vec<String> = list.iter().map(ConnectionDoc::cache_member).collect();
        let mut sorted = members.clone();
        sorted.push(crate::keys::CONNECTIONS_COMPLETE.to_owned());
        sorted.sort();
        assert_eq!(sorted[0], crate::keys::CONNECTIONS_COMPLETE, "the marker sorts below every connection");
        assert_eq!(sorted[1..], members[..]);
        for (member, doc) in members.iter().zip(&list) {
            assert_eq!(ConnectionDoc::from_cache_member("me", member).as_ref(), Some(doc));
            // "Before" a cursor is every member below its position.
            let position = ConnectionDoc::cache_position(&doc.connected_at, &doc.request_id);
            assert!(position.as_str() < member.as_str());
            assert_eq!(
                members.iter().filter(|m| m.as_str() < position.as_str()).count(),
                list.iter().position(|d| d == doc).unwrap_or(0)
            );
        }
        assert_eq!(ConnectionDoc::from_cache_member("me", crate::keys::CONNECTIONS_COMPLETE), None);
    }
}
