//! The write model: every user's state, the email index and the
//! idempotency records, folded from the log with the domain's `apply`. It is
//! rebuilt from Kafka at start (docs/design.md §2) and updated only after the
//! broker acknowledged an append.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use events::connection::{ConnectionEvent, RequestStatus};
use events::message::MessageEvent;
use events::owner::{MarkerIndex, RecordKind, Verdict};
use events::{Envelope, Event};
use uuid::Uuid;

use crate::domain::connection::{Connection, ConnectionState};
use crate::domain::message::{Message, MessageState};
use crate::domain::notification::{Notification, NotificationState};
use crate::domain::presence::Presence;
use crate::domain::user::{User, UserState};
use crate::domain::{Aggregate, Recorded};

/// Where a record landed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// A successful command as recorded in the log, kept to answer a retry that
/// carries the same `Idempotency-Key` (docs/design.md §6).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct IdempotentCommit {
    pub fingerprint: Option<String>,
    /// Kept in a snapshot as the record the log holds (the events crate's
    /// codec), so a snapshot reads back through the same upcasts.
    #[serde(with = "as_record")]
    pub commit: Vec<Envelope>,
    pub position: Position,
}

pub const IDEMPOTENCY_WINDOW: Duration = Duration::hours(24);

/// What the model holds of one partition: every offset below `next`, and
/// the offsets in `ahead`. Records now reach the model only in order
/// (`log_follower`), so `ahead` stays empty; it is kept because snapshots
/// from before the follower can hold it (acknowledged appends that had
/// landed past one whose outcome was unknown).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartitionMark {
    pub next: i64,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub ahead: BTreeSet<i64>,
    /// The owner markers read here that a reader at `next` still needs
    /// (`events::owner`): a snapshot carries them, so its tail is judged as
    /// a read from offset 0 would judge it.
    #[serde(default, skip_serializing_if = "MarkerIndex::is_empty")]
    pub markers: MarkerIndex,
}

impl PartitionMark {
    fn covers(&self, offset: i64) -> bool {
        offset < self.next || self.ahead.contains(&offset)
    }

    fn mark(&mut self, offset: i64) {
        if offset == self.next {
            self.next += 1;
            while self.ahead.remove(&self.next) {
                self.next += 1;
            }
        } else if offset > self.next {
            self.ahead.insert(offset);
        }
    }

    /// Every offset below `to` is known to be held or not to exist.
    fn advance(&mut self, to: i64) {
        if to > self.next {
            self.next = to;
            self.ahead.retain(|o| *o >= to);
            while self.ahead.remove(&self.next) {
                self.next += 1;
            }
            self.markers.forget_before(self.next);
        }
    }
}

/// The write model. A snapshot (`crate::snapshot`) is this, serialised: the
/// state and the log positions it covers travel together.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WriteModel {
    #[serde(with = "as_pairs")]
    users: HashMap<Uuid, UserState>,
    #[serde(with = "as_pairs")]
    emails: HashMap<String, Uuid>,
    /// (acting user, key) → the commit that key produced.
    #[serde(with = "as_pairs")]
    idempotency: HashMap<(Uuid, String), IdempotentCommit>,
    /// Pair key → the one request between those two users.
    #[serde(with = "as_pairs")]
    connections: HashMap<String, ConnectionState>,
    /// Request id → pair key.
    #[serde(with = "as_pairs")]
    requests: HashMap<Uuid, String>,
    /// (sender, UTC day) → requests sent that day that counted themselves
    /// (appended before slots were reserved on the sender's aggregate);
    /// the reserved ones count there (`UserState::request_slots`).
    #[serde(with = "as_pairs")]
    sent_per_day: HashMap<(Uuid, NaiveDate), u32>,
    /// Every message (who may mark it read, and whether they have).
    #[serde(with = "as_pairs")]
    messages: HashMap<Uuid, MessageState>,
    /// Pair key → the conversation aggregate's version.
    #[serde(with = "as_pairs")]
    conversation_versions: HashMap<String, u64>,
    /// User id → the presence aggregate's version.
    #[serde(with = "as_pairs")]
    presence_versions: HashMap<String, u64>,
    /// Notification id (the id of the event that notified) → owner, read.
    #[serde(with = "as_pairs")]
    notifications: HashMap<Uuid, NotificationState>,
    /// User id → the notification aggregate's version.
    #[serde(with = "as_pairs")]
    notification_versions: HashMap<String, u64>,
    commits_applied: u64,
    /// (topic, partition) → what of it the model holds.
    #[serde(with = "as_pairs")]
    positions: BTreeMap<(String, i32), PartitionMark>,
}

impl WriteModel {
    pub fn user(&self, id: Uuid) -> Option<&UserState> {
        self.users.get(&id)
    }

    pub fn user_by_email(&self, email: &str) -> Option<&UserState> {
        self.emails.get(email).and_then(|id| self.users.get(id))
    }

    pub fn email_owner(&self, email: &str) -> Option<Uuid> {
        self.emails.get(email).copied()
    }

    pub fn connection(&self, pair_key: &str) -> Option<&ConnectionState> {
        self.connections.get(pair_key)
    }

    pub fn pair_of_request(&self, request_id: Uuid) -> Option<&str> {
        self.requests.get(&request_id).map(String::as_str)
    }

    pub fn connected(&self, pair_key: &str) -> bool {
        self.connections.get(pair_key).is_some_and(|c| c.status == RequestStatus::Accepted)
    }

    pub fn message(&self, message_id: Uuid) -> Option<&MessageState> {
        self.messages.get(&message_id)
    }

    pub fn notification(&self, id: Uuid) -> Option<NotificationState> {
        self.notifications.get(&id).copied()
    }

    pub fn notification_version(&self, user_id: &str) -> u64 {
        self.notification_versions.get(user_id).copied().unwrap_or(0)
    }

    pub fn presence_version(&self, user_id: &str) -> u64 {
        self.presence_versions.get(user_id).copied().unwrap_or(0)
    }

    pub fn conversation_version(&self, pair_key: &str) -> u64 {
        self.conversation_versions.get(pair_key).copied().unwrap_or(0)
    }

    pub fn sent_on(&self, sender: Uuid, day: NaiveDate) -> u32 {
        self.sent_per_day.get(&(sender, day)).copied().unwrap_or(0)
    }

    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    pub fn commits_applied(&self) -> u64 {
        self.commits_applied
    }

    /// Messages remembered (for the memory figures of the start benchmark).
    pub fn message_count(&self) -> usize {
        self.messages.len()
    }

    /// The first offset of `topic`/`partition` the model has not
    /// necessarily seen: where reading the log resumes.
    pub fn next_offset(&self, topic: &str, partition: i32) -> i64 {
        self.positions.get(&(topic.to_owned(), partition)).map_or(0, |m| m.next)
    }

    /// True when the record at this position is already folded in.
    pub fn covers(&self, topic: &str, partition: i32, offset: i64) -> bool {
        self.positions.get(&(topic.to_owned(), partition)).is_some_and(|m| m.covers(offset))
    }

    /// Records that every offset of the partition below `to` is folded in or
    /// does not exist (the log was read up to there in order).
    pub fn advance(&mut self, topic: &str, partition: i32, to: i64) {
        self.positions.entry((topic.to_owned(), partition)).or_default().advance(to);
    }

    /// Judges the record at this position by the owner rule, noting it when
    /// it is a marker (`events::owner::MarkerIndex::judge`).
    pub fn judge(&mut self, topic: &str, partition: i32, offset: i64, kind: RecordKind) -> Verdict {
        self.positions.entry((topic.to_owned(), partition)).or_default().markers.judge(offset, kind)
    }

    /// The last owner marker the model has read in the partition: the epoch
    /// a record appended there now would have to carry to count.
    pub fn latest_marker(&self, topic: &str, partition: i32) -> Option<i64> {
        self.positions.get(&(topic.to_owned(), partition)).and_then(|m| m.markers.latest())
    }

    /// The partitions the model has positions for, with their next offset.
    pub fn positions(&self) -> impl Iterator<Item = (&str, i32, i64)> {
        self.positions.iter().map(|((topic, partition), mark)| (topic.as_str(), *partition, mark.next))
    }

    /// The sum of the next offsets: how many records the model covers.
    pub fn offset_sum(&self) -> i64 {
        self.positions.values().map(|m| m.next).sum()
    }

    /// The earlier commit of this caller with this key, if still in the window.
    pub fn idempotent_commit(&self, caller: Uuid, key: &str, now: DateTime<Utc>) -> Option<&IdempotentCommit> {
        self.idempotency
            .get(&(caller, key.to_owned()))
            .filter(|c| c.commit.first().is_some_and(|e| now - e.occurred_at < IDEMPOTENCY_WINDOW))
    }

    /// Takes in one acknowledged record: each event folded into its
    /// aggregate's state with that aggregate's `apply`, the indexes updated,
    /// the commit remembered for retries. Commits are whole: a record is the
    /// unit.
    pub fn record(&mut self, commit: &[Envelope], position: Position) {
        for envelope in commit {
            if let Some((owner, _)) = events::notification::notified_by(envelope) {
                self.notifications.insert(envelope.event_id, NotificationState { owner, read: false });
            }
            let id = envelope.aggregate_id.as_str();
            let (version, occurred_at) = (envelope.aggregate_version, envelope.occurred_at);
            match &envelope.event {
                Event::User(event) => {
                    let Ok(user_id) = id.parse::<Uuid>() else {
                        tracing::warn!(aggregate_id = %id, "user event with a non-UUID aggregate id; skipped");
                        continue;
                    };
                    let mut state = self.users.remove(&user_id);
                    User::apply(&mut state, Recorded { event, aggregate_id: id, version, occurred_at });
                    if let Some(state) = state {
                        self.emails.entry(state.email.clone()).or_insert(state.user_id);
                        self.users.insert(user_id, state);
                    }
                }
                Event::Connection(event) => {
                    if let ConnectionEvent::Requested(r) = event {
                        self.requests.insert(r.request_id, id.to_owned());
                        if !r.slot_reserved {
                            *self.sent_per_day.entry((r.from_user_id, occurred_at.date_naive())).or_insert(0) += 1;
                        }
                    }
                    let mut state = self.connections.remove(id);
                    Connection::apply(&mut state, Recorded { event, aggregate_id: id, version, occurred_at });
                    if let Some(state) = state {
                        self.connections.insert(id.to_owned(), state);
                    }
                }
                Event::Message(event) => {
                    let message_id = match event {
                        MessageEvent::Sent(m) => m.message_id,
                        MessageEvent::Delivered(d) => d.message_id,
                        MessageEvent::Read(r) => r.message_id,
                    };
                    let mut state = self.messages.remove(&message_id);
                    Message::apply(&mut state, Recorded { event, aggregate_id: id, version, occurred_at });
                    if let Some(state) = state {
                        self.messages.insert(message_id, state);
                    }
                    self.conversation_versions.insert(id.to_owned(), version);
                }
                Event::Presence(event) => {
                    Presence::apply(&mut (), Recorded { event, aggregate_id: id, version, occurred_at });
                    self.presence_versions.insert(id.to_owned(), version);
                }
                Event::Notification(event) => {
                    let events::NotificationEvent::Read(r) = event;
                    let mut state = self.notifications.get(&r.notification_id).copied();
                    Notification::apply(&mut state, Recorded { event, aggregate_id: id, version, occurred_at });
                    if let Some(state) = state {
                        self.notifications.insert(r.notification_id, state);
                    }
                    self.notification_versions.insert(id.to_owned(), version);
                }
            }
        }
        if let Some(first) = commit.first()
            && let (Some(actor), Some(key)) = (first.metadata.actor, first.metadata.idempotency_key.clone())
        {
            self.idempotency.entry((actor, key)).or_insert_with(|| IdempotentCommit {
                fingerprint: first.metadata.request_fingerprint.clone(),
                commit: commit.to_vec(),
                position: position.clone(),
            });
        }
        self.commits_applied += 1;
        self.positions.entry((position.topic, position.partition)).or_default().mark(position.offset);
    }

    /// Drops idempotency records older than the window.
    pub fn prune(&mut self, now: DateTime<Utc>) {
        let yesterday = now.date_naive() - Duration::days(1);
        self.sent_per_day.retain(|(_, day), _| *day >= yesterday);
        self.idempotency.retain(|_, c| c.commit.first().is_some_and(|e| now - e.occurred_at < IDEMPOTENCY_WINDOW));
    }
}

/// A map as a sequence of pairs: JSON maps take only string keys, and some
/// of the model's keys are tuples.
mod as_pairs {
    use std::collections::{BTreeMap, HashMap};
    use std::hash::Hash;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub trait PairMap<K, V>: FromIterator<(K, V)> {
        fn pairs<'a>(&'a self) -> impl Iterator<Item = (&'a K, &'a V)>
        where
            K: 'a,
            V: 'a;
    }

    impl<K: Eq + Hash, V> PairMap<K, V> for HashMap<K, V> {
        fn pairs<'a>(&'a self) -> impl Iterator<Item = (&'a K, &'a V)>
        where
            K: 'a,
            V: 'a,
        {
            self.iter()
        }
    }

    impl<K: Ord, V> PairMap<K, V> for BTreeMap<K, V> {
        fn pairs<'a>(&'a self) -> impl Iterator<Item = (&'a K, &'a V)>
        where
            K: 'a,
            V: 'a,
        {
            self.iter()
        }
    }

    pub fn serialize<M, K, V, S>(map: &M, serializer: S) -> Result<S::Ok, S::Error>
    where
        M: PairMap<K, V>,
        K: Serialize,
        V: Serialize,
        S: Serializer,
    {
        serializer.collect_seq(map.pairs())
    }

    pub fn deserialize<'de, M, K, V, D>(deserializer: D) -> Result<M, D::Error>
    where
        M: PairMap<K, V>,
        K: Deserialize<'de>,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        struct Pairs<M, K, V>(std::marker::PhantomData<(M, K, V)>);
        impl<'de, M: FromIterator<(K, V)>, K: Deserialize<'de>, V: Deserialize<'de>> serde::de::Visitor<'de>
            for Pairs<M, K, V>
        {
            type Value = M;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a sequence of [key, value] pairs")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<M, A::Error> {
                let mut error = None;
                let map = std::iter::from_fn(|| match seq.next_element::<(K, V)>() {
                    Ok(pair) => pair,
                    Err(e) => {
                        error = Some(e);
                        None
                    }
                })
                .collect();
                error.map_or(Ok(map), Err)
            }
        }
        deserializer.deserialize_seq(Pairs(std::marker::PhantomData))
    }
}

/// A commit as the log's record bytes (a JSON array of envelopes).
mod as_record {
    use events::Envelope;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(commit: &[Envelope], serializer: S) -> Result<S::Ok, S::Error> {
        let bytes = events::encode_record(commit);
        serializer.serialize_str(std::str::from_utf8(&bytes).map_err(serde::ser::Error::custom)?)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Envelope>, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
        events::decode_record(text.as_bytes()).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::PartitionMark;

    #[test]
    fn a_mark_holds_offsets_acknowledged_past_a_gap_until_the_gap_is_read() {
        let mut mark = PartitionMark::default();
        mark.mark(0);
        mark.mark(2); // 1 failed (and may have landed); 2 was acknowledged
        assert_eq!(mark.next, 1);
        assert!(mark.covers(0) && !mark.covers(1) && mark.covers(2) && !mark.covers(3));
        mark.mark(3);
        // Reading the log from 1: offset 1 exists and is folded in; 2 and 3
        // are skipped (covered); the read ends at the high watermark.
        mark.advance(1);
        mark.mark(1);
        assert_eq!(mark, PartitionMark { next: 4, ..Default::default() });
        mark.advance(6);
        assert_eq!(mark.next, 6);
        mark.mark(3); // an old position changes nothing
        assert_eq!(mark, PartitionMark { next: 6, ..Default::default() });
    }
}
