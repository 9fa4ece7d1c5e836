//! Turns a batch of records into MongoDB update statements: pure, so the
//! idempotency rules are unit-tested without a database.
//!
//! Every statement is a pipeline update guarded by the document's
//! `version`: it changes the document only if the event is newer than the
//! last one applied. Applying a batch twice is therefore a no-op, and
//! neither a duplicate nor a stale event raises an error (a plain
//! `{version: {$lt: n}}` filter with upsert would answer E11000 instead).
//!
//! This file holds the plan's types and the loop over a batch. The
//! documents each aggregate's events write are planned in `user`,
//! `connection`, `message` and `presence`, the effects applied once per
//! event id in `counted`, and the statement shapes they share in
//! `statements`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use events::connection::ConnectionEvent;
use events::message::MessageEvent;
use events::user::UserEvent;
use events::{Envelope, Event};
use mongodb::bson::{Bson, Document, doc};
use views::{LiveUpdate, PresenceView, collections};

use self::connection::plan_connection_event;
use self::counted::plan_counted;
use self::message::plan_message_event;
use self::presence::{PresenceChanges, plan_presence_event};
use self::user::plan_user_event;

mod connection;
mod counted;
mod message;
mod presence;
mod statements;
#[cfg(test)]
mod tests;
mod user;

/// One Kafka record, decoded.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub commit: Vec<Envelope>,
}

/// A document an event creates: inserted when absent (an insert costs a
/// fraction of a pipeline update on the servers we run, docs/stack.md), else
/// the version-guarded statement `otherwise` runs, so a repeat stays a
/// no-op. Used only for an aggregate's first event, which no other event
/// of that document can precede (same partition, in order), and for a
/// document only one event writes (a connection, by its acceptance).
#[derive(Debug, Clone)]
pub struct Creation {
    pub id: String,
    pub document: Document,
    pub otherwise: Document,
}

#[derive(Debug, Default)]
pub struct Plan {
    /// Per collection: documents created by this batch's events. They are
    /// applied before the collection's statements.
    pub creations: BTreeMap<&'static str, Vec<Creation>>,
    /// `update` statements for the users collection, in event order.
    pub users: Vec<Document>,
    pub sessions: Vec<Document>,
    pub requests: Vec<Document>,
    /// Plain `$addToSet` updates: idempotent by nature.
    pub relations: Vec<Document>,
    pub messages: Vec<Document>,
    pub presence: Vec<Document>,
    /// Counted effects, each applied once per event id:
    pub notifications: Vec<Document>,
    pub notification_counters: Vec<Document>,
    pub daily_stats: Vec<Document>,
    /// ...and the processed-id keys that record it, inserted in the same
    /// transaction (a concurrent duplicate aborts it, and the retry skips).
    pub processed: Vec<uuid::Uuid>,
    /// Live updates for users' streams, from events new in this batch:
    /// (recipient, update). Presence changes are resolved to the user's
    /// connections by the store.
    pub stream: Vec<(String, LiveUpdate)>,
    /// Users whose online state this batch changed, with the entry to
    /// publish: at most one per user per batch (`PresenceChanges`).
    pub presence_changes: Vec<(String, PresenceView)>,
    /// Next offset to apply per (topic, partition).
    pub checkpoints: BTreeMap<(String, i32), i64>,
    /// The offset of the batch's first record per partition. Stored with
    /// the checkpoint as `refreshFrom`: the caches this batch touched are
    /// refreshed only after its transaction, so a projector that dies in
    /// between leaves them behind, and whoever starts the partition next
    /// applies the batch again from here (a no-op in MongoDB) to refresh
    /// them (`positions::PartitionPosition::refresh_from`).
    pub first_offsets: BTreeMap<(String, i32), i64>,
    /// The owner markers the reader knows per partition, from which the
    /// checkpoint stores the epochs in force (`store::write::checkpoint_statement`).
    pub markers: BTreeMap<(String, i32), events::owner::MarkerIndex>,
    /// The stored checkpoint this plan assumed, per partition holding
    /// once-only effects (`Prior::checkpoints`): the transaction applies the
    /// plan only if the store still says exactly this (else
    /// `StoreError::Moved`, and the batch is planned again).
    pub fence: BTreeMap<(String, i32), i64>,
    /// Cache entries to refresh once MongoDB has the batch.
    pub touched_users: BTreeSet<String>,
    pub touched_sessions: BTreeSet<String>,
    /// Conversations (pair keys) whose cached newest messages to update,
    /// with the ids of their messages this batch changed.
    pub touched_conversations: BTreeMap<String, BTreeSet<String>>,
    pub touched_presence: BTreeSet<String>,
    /// Users this batch registered: their `related:` set and
    /// `connections:` list start out complete (a request to or from them
    /// can only follow the registration, and adds its own member).
    pub registered: Vec<String>,
    /// Members to add to cached `related:` sets: (user, other user).
    pub related_added: Vec<(String, String)>,
    /// Members to add to cached `connections:` lists: (user,
    /// `ConnectionDoc::cache_member`).
    pub connections_added: Vec<(String, String)>,
    pub events: usize,
}

impl Plan {
    /// Each view collection with its update statements, in the order a
    /// batch applies them (after the collection's creations). Every
    /// collection a plan writes is listed, also those only creations fill.
    pub fn statements_by_collection(&self) -> [(&'static str, &[Document]); 10] {
        [
            (collections::USERS, &self.users),
            (collections::SESSIONS, &self.sessions),
            (collections::CONNECTION_REQUESTS, &self.requests),
            (collections::RELATIONS, &self.relations),
            (collections::CONNECTIONS, &[]),
            (collections::MESSAGES, &self.messages),
            (collections::PRESENCE, &self.presence),
            (collections::NOTIFICATIONS, &self.notifications),
            (collections::NOTIFICATION_COUNTERS, &self.notification_counters),
            (collections::DAILY_STATS, &self.daily_stats),
        ]
    }
}

/// Events with counted effects (counters, notifications): applied once per
/// event id, which the processed-id keys record (docs/design.md §3).
pub fn counted(envelope: &Envelope) -> bool {
    use events::connection::RequestStatus as S;
    match &envelope.event {
        Event::User(UserEvent::Registered(_) | UserEvent::SessionStarted(_)) => true,
        Event::Connection(ConnectionEvent::Requested(_)) => true,
        Event::Connection(ConnectionEvent::Reviewed(r)) => r.status == S::Accepted,
        Event::Message(MessageEvent::Sent(_)) => true,
        Event::Notification(_) => true,
        // Presence has no counted effect: its stream entries are published
        // on a change of state, which the version-guarded presence document
        // tells (`PresenceChanges`), so heartbeats record no processed ids.
        _ => false,
    }
}

/// Events whose effects must happen once per record: counted effects and
/// live presence entries. A batch holding one is planned against the
/// stored checkpoint of its partition (`Prior::checkpoints`, `Plan::fence`).
pub fn once_only(envelope: &Envelope) -> bool {
    counted(envelope) || matches!(envelope.event, Event::Presence(_))
}

/// The partitions whose stored checkpoint a plan of `records` relies on.
pub fn fenced_partitions(records: &[Record]) -> BTreeSet<(String, i32)> {
    records.iter().filter(|r| r.commit.iter().any(once_only)).map(|r| (r.topic.clone(), r.partition)).collect()
}

/// The users whose presence a plan of `records` starts from.
pub fn presence_users(records: &[Record]) -> BTreeSet<String> {
    records
        .iter()
        .flat_map(|r| &r.commit)
        .filter(|e| matches!(e.event, Event::Presence(_)))
        .map(|e| e.aggregate_id.clone())
        .collect()
}

/// A user's stored presence, as far as planning needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceState {
    pub version: u64,
    pub online_until: DateTime<Utc>,
}

/// What the store held when a batch was planned.
#[derive(Debug, Clone, Default)]
pub struct Prior {
    /// Ids among the batch's counted events that were already applied,
    /// from another record (a re-driven copy) or earlier in the log.
    pub processed: HashSet<uuid::Uuid>,
    /// The stored checkpoint (next offset to apply) of each partition in
    /// `fenced_partitions`; absent means 0. Every record below it has been
    /// applied (or dead-lettered) in this store, once-only effects
    /// included, because the checkpoint moves in the same transaction.
    pub checkpoints: BTreeMap<(String, i32), i64>,
    /// The stored presence of the batch's users (`presence_users`), read
    /// after `checkpoints`; absent means never seen.
    pub presence: HashMap<String, PresenceState>,
}

/// `presence_ttl`: how long a heartbeat keeps a user online.
/// `prior`: what the store held (`Prior`). Once-only effects are planned
/// only for records at or past their partition's stored checkpoint, and
/// counted ones only for ids not processed yet.
pub fn plan(records: &[Record], presence_ttl: chrono::Duration, prior: &Prior) -> Plan {
    let mut plan = Plan::default();
    let mut unread: BTreeMap<String, i64> = BTreeMap::new();
    let mut per_day: BTreeMap<String, BTreeMap<&'static str, i64>> = BTreeMap::new();
    let mut presence = PresenceChanges::default();
    let mut planned_once: HashSet<uuid::Uuid> = HashSet::new();
    for record in records {
        let partition = (record.topic.clone(), record.partition);
        let stored = prior.checkpoints.get(&partition).copied().unwrap_or(0);
        if record.commit.iter().any(once_only) {
            plan.fence.insert(partition.clone(), stored);
        }
        // Applied before, in this store: its once-only effects happened then.
        let fresh = record.offset >= stored;
        for envelope in &record.commit {
            plan.events += 1;
            if fresh
                && counted(envelope)
                && !prior.processed.contains(&envelope.event_id)
                && planned_once.insert(envelope.event_id)
            {
                plan.processed.push(envelope.event_id);
                plan_counted(&mut plan, &mut unread, &mut per_day, envelope);
            }
            match &envelope.event {
                Event::User(event) => plan_user_event(&mut plan, envelope, event),
                Event::Connection(event) => plan_connection_event(&mut plan, envelope, event),
                Event::Message(event) => plan_message_event(&mut plan, envelope, event),
                Event::Notification(_) => {}
                Event::Presence(event) => {
                    plan_presence_event(&mut plan, &mut presence, prior, envelope, event, presence_ttl, fresh)
                }
            }
        }
        let first = plan.first_offsets.entry(partition.clone()).or_insert(record.offset);
        *first = (*first).min(record.offset);
        let next = plan.checkpoints.entry(partition).or_insert(0);
        *next = (*next).max(record.offset + 1);
    }
    plan.presence_changes = presence.into_entries();
    for (user, delta) in unread {
        plan.notification_counters
            .push(doc! { "q": { "_id": user }, "u": { "$inc": { "unread": delta } }, "upsert": true });
    }
    for (day, counts) in per_day {
        let inc: Document = counts.into_iter().map(|(field, n)| (field.to_owned(), Bson::Int64(n))).collect();
        plan.daily_stats.push(doc! { "q": { "_id": day }, "u": { "$inc": inc }, "upsert": true });
    }
    plan
}
