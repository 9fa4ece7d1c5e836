//! Turns a batch of records into MongoDB update statements: pure, so the
//! idempotency rules are unit-tested without a database.
//!
//! Every statement is a pipeline update guarded by the document's
//! `version`: it changes the document only if the event is newer than the
//! last one applied. Applying a batch twice is therefore a no-op, and
//! neither a duplicate nor a stale event raises an error (a plain
//! `{version: {$lt: n}}` filter with upsert would answer E11000 instead).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use events::connection::{ConnectionEvent, RequestStatus};
use events::message::MessageEvent;
use events::presence::PresenceEvent;
use events::user::{Profile, UserEvent};
use events::{Envelope, Event};
use mongodb::bson::{Bson, Document, doc};
use views::{
    ConnectionDoc, ConnectionRequestDoc, LiveUpdate, MessageDoc, MessageItem, NotificationItem, PresenceDoc,
    PresenceView, SessionDoc, UserDoc, collections,
};

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
    pub events: usize,
}

fn to_bson<T: serde::Serialize>(value: &T) -> Bson {
    mongodb::bson::to_bson(value).unwrap_or(Bson::Null)
}

/// `{$literal: v}`: user text such as "$about" must never be read as a field path.
fn literal(value: Bson) -> Bson {
    Bson::Document(doc! { "$literal": value })
}

/// `if version < v then new else current`.
fn if_newer(version: u64, new: Bson, current: &str) -> Bson {
    Bson::Document(
        doc! { "$cond": [ { "$lt": [ { "$ifNull": ["$version", 0_i64] }, version as i64 ] }, new, current ] },
    )
}

/// Creates a document, or replaces it if the event is newer (see `Creation`).
fn create(plan: &mut Plan, collection: &'static str, id: &str, version: u64, document: Bson) {
    let otherwise = replace_if_newer(id, version, document.clone());
    let document = match document {
        Bson::Document(document) => document,
        _ => return,
    };
    plan.creations.entry(collection).or_default().push(Creation { id: id.to_owned(), document, otherwise });
}

/// Replaces the whole document if the event is newer (upserting).
fn replace_if_newer(id: &str, version: u64, document: Bson) -> Document {
    doc! {
        "q": { "_id": id },
        "u": [ { "$replaceWith": if_newer(version, literal(document), "$$ROOT") } ],
        "upsert": true,
    }
}

/// Sets some fields if the event is newer, and raises the version.
fn set_if_newer(id: &str, version: u64, fields: Document) -> Document {
    let mut set = Document::new();
    for (name, value) in fields {
        set.insert(name.clone(), if_newer(version, literal(value), &format!("${name}")));
    }
    set.insert("version", doc! { "$max": [ { "$ifNull": ["$version", 0_i64] }, version as i64 ] });
    doc! { "q": { "_id": id }, "u": [ { "$set": set } ], "upsert": false }
}

fn profile_fields(profile: &Profile) -> Document {
    match to_bson(profile) {
        Bson::Document(d) => d,
        _ => Document::new(),
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

/// Per user, the online state before the batch's first presence event
/// (at that event's time) and after its last: a live entry only when they
/// differ, so a heartbeat of a user already online publishes nothing, and
/// a batch publishes at most one entry per user however many heartbeats it
/// holds. Only events newer than the stored document count (a re-driven or
/// re-read one is stale and changes nothing).
#[derive(Debug, Default)]
struct PresenceChanges {
    state: HashMap<String, PresenceState>,
    /// user → (online before, online after, entry after).
    changes: BTreeMap<String, (bool, bool, PresenceView)>,
}

impl PresenceChanges {
    fn observe(&mut self, prior: &Prior, envelope: &Envelope, online_until: DateTime<Utc>, online: bool) {
        let user = &envelope.aggregate_id;
        let before = self.state.get(user).or_else(|| prior.presence.get(user)).copied();
        if before.is_some_and(|b| b.version >= envelope.aggregate_version) {
            return;
        }
        let was_online = before.is_some_and(|b| b.online_until > envelope.occurred_at);
        self.state.insert(user.clone(), PresenceState { version: envelope.aggregate_version, online_until });
        let entry = PresenceView { user_id: user.clone(), online, last_seen: Some(envelope.occurred_at) };
        let change = self.changes.entry(user.clone()).or_insert((was_online, online, entry.clone()));
        change.1 = online;
        change.2 = entry;
    }

    fn into_entries(self) -> Vec<(String, PresenceView)> {
        self.changes
            .into_iter()
            .filter(|(_, (before, after, _))| before != after)
            .map(|(u, (_, _, e))| (u, e))
            .collect()
    }
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
                && !plan.processed.contains(&envelope.event_id)
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
                    let at = envelope.occurred_at;
                    let online_until = match event {
                        PresenceEvent::Heartbeat(_) => at + presence_ttl,
                        PresenceEvent::Offline(_) => at,
                    };
                    if fresh {
                        let online = matches!(event, PresenceEvent::Heartbeat(_));
                        presence.observe(prior, envelope, online_until, online);
                    }
                    let doc = PresenceDoc {
                        user_id: envelope.aggregate_id.clone(),
                        last_seen: at,
                        online_until,
                        version: envelope.aggregate_version,
                    };
                    plan.presence.push(replace_if_newer(&doc.user_id, doc.version, to_bson(&doc)));
                    plan.touched_presence.insert(doc.user_id);
                }
            }
        }
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

/// The effects applied once per event id: daily counts, notifications and
/// unread counters.
fn plan_counted(
    plan: &mut Plan,
    unread: &mut BTreeMap<String, i64>,
    per_day: &mut BTreeMap<String, BTreeMap<&'static str, i64>>,
    envelope: &Envelope,
) {
    use events::connection::RequestStatus as S;
    let day = envelope.occurred_at.format("%Y-%m-%d").to_string();
    let stat = match &envelope.event {
        Event::User(UserEvent::Registered(_)) => Some("signups"),
        Event::User(UserEvent::SessionStarted(_)) => Some("logins"),
        Event::Connection(ConnectionEvent::Requested(_)) => Some("requestsSent"),
        Event::Connection(ConnectionEvent::Reviewed(r)) if r.status == S::Accepted => Some("requestsAccepted"),
        Event::Message(MessageEvent::Sent(_)) => Some("messagesSent"),
        _ => None,
    };
    if let Some(field) = stat {
        *per_day.entry(day).or_default().entry(field).or_insert(0) += 1;
    }
    if let Event::Message(MessageEvent::Sent(m)) = &envelope.event {
        let item = MessageItem::just_sent(m, envelope.occurred_at);
        plan.stream.push((m.from_user_id.to_string(), LiveUpdate::Message(item.clone())));
        plan.stream.push((m.to_user_id.to_string(), LiveUpdate::Message(item)));
    }
    if let Some((owner, kind)) = events::notification::notified_by(envelope) {
        let (request_id, message_id, from) = match &envelope.event {
            Event::Connection(ConnectionEvent::Requested(r)) => (Some(r.request_id), None, r.from_user_id),
            Event::Connection(ConnectionEvent::Reviewed(r)) => {
                (Some(r.request_id), None, envelope.metadata.actor.unwrap_or_default())
            }
            Event::Message(MessageEvent::Sent(m)) => (None, Some(m.message_id), m.from_user_id),
            _ => (None, None, uuid::Uuid::nil()),
        };
        let doc = views::NotificationDoc {
            notification_id: envelope.event_id.to_string(),
            user_id: owner.to_string(),
            kind: kind.to_owned(),
            from_user_id: from.to_string(),
            request_id: request_id.map(|r| r.to_string()),
            message_id: message_id.map(|m| m.to_string()),
            created_at: envelope.occurred_at,
            read_at: None,
        };
        // Topics are ordered only within themselves: in a rebuild, the
        // read (notification-events) may arrive before the event that
        // notified (connection- or message-events). So creating keeps a
        // `readAt` already there, and reading upserts: either order ends in
        // the same document.
        let mut fields: Document = match to_bson(&doc) {
            Bson::Document(fields) => fields
                .into_iter()
                .filter(|(name, _)| name != "_id")
                .map(|(name, value)| (name, literal(value)))
                .collect(),
            _ => Document::new(),
        };
        fields.insert("readAt", doc! { "$ifNull": ["$readAt", Bson::Null] });
        let otherwise = doc! { "q": { "_id": &doc.notification_id }, "u": [ { "$set": fields } ], "upsert": true };
        if let Bson::Document(document) = to_bson(&doc) {
            let creation = Creation { id: doc.notification_id.clone(), document, otherwise };
            plan.creations.entry(collections::NOTIFICATIONS).or_default().push(creation);
        }
        // The same type as GET /v1/notifications items.
        plan.stream.push((doc.user_id.clone(), LiveUpdate::Notification(NotificationItem::from(doc.clone()))));
        *unread.entry(doc.user_id).or_insert(0) += 1;
    }
    if let Event::Notification(events::NotificationEvent::Read(r)) = &envelope.event {
        plan.notifications.push(doc! {
            "q": { "_id": r.notification_id.to_string() },
            "u": { "$set": { "readAt": to_bson(&envelope.occurred_at) } },
            "upsert": true,
        });
        *unread.entry(envelope.aggregate_id.clone()).or_insert(0) -= 1;
    }
}

fn plan_user_event(plan: &mut Plan, envelope: &Envelope, event: &UserEvent) {
    let version = envelope.aggregate_version;
    let user_id = envelope.aggregate_id.as_str();
    let at = envelope.occurred_at;
    match event {
        UserEvent::Registered(r) => {
            let doc = UserDoc {
                user_id: user_id.to_owned(),
                email_id: r.email_id.clone(),
                first_name: r.profile.first_name.clone(),
                last_name: r.profile.last_name.clone(),
                age: r.profile.age,
                gender: r.profile.gender,
                about: r.profile.about.clone(),
                skills: r.profile.skills.clone(),
                photo_url: r.profile.photo_url.clone(),
                membership: "free".to_owned(),
                created_at: at,
                updated_at: at,
                version,
            };
            create(plan, collections::USERS, user_id, version, to_bson(&doc));
            plan.touched_users.insert(user_id.to_owned());
        }
        // The password hash is the command API's alone (docs/design.md §5). The
        // event still advances the version, so later events stay ordered.
        // So does a refresh: the refresh number lives in the write model only.
        UserEvent::CredentialsSet(_) | UserEvent::SessionRefreshed(_) => {
            plan.users.push(set_if_newer(user_id, version, Document::new()));
            // The cached copy carries the version too: it stays an exact
            // copy of the document, whatever order the events came in.
            plan.touched_users.insert(user_id.to_owned());
        }
        UserEvent::ProfileUpdated(p) => {
            let mut fields = profile_fields(&p.profile);
            fields.insert("updatedAt", to_bson(&at));
            plan.users.push(set_if_newer(user_id, version, fields));
            plan.touched_users.insert(user_id.to_owned());
        }
        UserEvent::SessionStarted(s) => {
            let doc = SessionDoc {
                session_id: s.session_id.to_string(),
                user_id: user_id.to_owned(),
                expires_at: s.expires_at,
                revoked: false,
                version,
            };
            create(plan, collections::SESSIONS, &doc.session_id, version, to_bson(&doc));
            plan.touched_sessions.insert(doc.session_id);
            plan.users.push(set_if_newer(user_id, version, Document::new()));
            plan.touched_users.insert(user_id.to_owned());
        }
        UserEvent::SessionsRevoked(r) => {
            for id in &r.session_ids {
                let id = id.to_string();
                plan.sessions.push(set_if_newer(&id, version, doc! { "revoked": true }));
                plan.touched_sessions.insert(id);
            }
            plan.users.push(set_if_newer(user_id, version, Document::new()));
            plan.touched_users.insert(user_id.to_owned());
        }
        UserEvent::MembershipChanged(m) => {
            plan.users.push(set_if_newer(user_id, version, doc! { "membership": m.tier.as_str() }));
            plan.touched_users.insert(user_id.to_owned());
        }
    }
}

/// `{_id: user}` gets `other` added to the set `field`.
fn add_to_set(user: &str, field: &str, other: &str) -> Document {
    doc! { "q": { "_id": user }, "u": { "$addToSet": { field: other } }, "upsert": true }
}

fn plan_connection_event(plan: &mut Plan, envelope: &Envelope, event: &ConnectionEvent) {
    let version = envelope.aggregate_version;
    let pair = envelope.aggregate_id.as_str();
    match event {
        ConnectionEvent::Requested(r) => {
            let doc = ConnectionRequestDoc {
                request_id: r.request_id.to_string(),
                pair_key: pair.to_owned(),
                from_user_id: r.from_user_id.to_string(),
                to_user_id: r.to_user_id.to_string(),
                status: r.status.as_str().to_owned(),
                created_at: envelope.occurred_at,
                reviewed_at: None,
                version,
            };
            create(plan, collections::CONNECTION_REQUESTS, &doc.request_id, version, to_bson(&doc));
            plan.relations.push(add_to_set(&doc.from_user_id, "related", &doc.to_user_id));
            plan.relations.push(add_to_set(&doc.to_user_id, "related", &doc.from_user_id));
        }
        ConnectionEvent::Reviewed(r) => {
            let fields = doc! { "status": r.status.as_str(), "reviewedAt": to_bson(&r.reviewed_at) };
            plan.requests.push(set_if_newer(&r.request_id.to_string(), version, fields));
            // The pair key names both users, so the projector needs no lookup.
            if let (RequestStatus::Accepted, Some((a, b))) = (r.status, pair.split_once(':')) {
                plan.relations.push(add_to_set(a, "connections", b));
                plan.relations.push(add_to_set(b, "connections", a));
                // Each side's ordered list: connected at the acceptance's
                // time, the same in every rebuild.
                for (user, other) in [(a, b), (b, a)] {
                    let doc = ConnectionDoc {
                        id: ConnectionDoc::id_for(user, other),
                        user_id: user.to_owned(),
                        other_user_id: other.to_owned(),
                        request_id: r.request_id.to_string(),
                        connected_at: envelope.occurred_at,
                        version,
                    };
                    create(plan, collections::CONNECTIONS, &doc.id, version, to_bson(&doc));
                }
            }
        }
    }
}

fn plan_message_event(plan: &mut Plan, envelope: &Envelope, event: &MessageEvent) {
    let version = envelope.aggregate_version;
    let pair = envelope.aggregate_id.as_str();
    match event {
        MessageEvent::Sent(m) => {
            let doc = MessageDoc {
                message_id: m.message_id.to_string(),
                pair_key: pair.to_owned(),
                from_user_id: m.from_user_id.to_string(),
                to_user_id: m.to_user_id.to_string(),
                text: m.text.clone(),
                sent_at: envelope.occurred_at,
                delivered_at: None,
                read_at: None,
                version,
            };
            create(plan, collections::MESSAGES, &doc.message_id, version, to_bson(&doc));
        }
        MessageEvent::Delivered(d) => {
            let at = to_bson(&d.delivered_at);
            plan.messages.push(set_if_newer(&d.message_id.to_string(), version, doc! { "deliveredAt": at }));
        }
        MessageEvent::Read(r) => {
            // Read implies delivered: keep an earlier delivery time, else
            // delivered when read.
            let at = literal(to_bson(&r.read_at));
            let newer = |value: Bson, field: &str| if_newer(version, value, &format!("${field}"));
            let set = doc! {
                "readAt": newer(at.clone(), "readAt"),
                "deliveredAt": newer(Bson::Document(doc! { "$ifNull": ["$deliveredAt", at] }), "deliveredAt"),
                "version": { "$max": [ { "$ifNull": ["$version", 0_i64] }, version as i64 ] },
            };
            plan.messages
                .push(doc! { "q": { "_id": r.message_id.to_string() }, "u": [ { "$set": set } ], "upsert": false });
        }
    }
    let message_id = match event {
        MessageEvent::Sent(m) => m.message_id,
        MessageEvent::Delivered(d) => d.message_id,
        MessageEvent::Read(r) => r.message_id,
    };
    plan.touched_conversations.entry(pair.to_owned()).or_default().insert(message_id.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use events::EventMetadata;
    use events::user::{CredentialsSet, UserRegistered};
    use uuid::Uuid;

    fn envelope(user: Uuid, version: u64, event: UserEvent) -> Envelope {
        Envelope {
            event_id: Uuid::new_v4(),
            aggregate_id: user.to_string(),
            aggregate_version: version,
            occurred_at: Utc::now(),
            metadata: EventMetadata {
                actor: Some(user),
                correlation_id: "c".into(),
                idempotency_key: None,
                request_fingerprint: None,
            },
            event: Event::User(event),
        }
    }

    fn signup_record(offset: i64) -> (Uuid, Record) {
        let user = Uuid::new_v4();
        let profile = Profile {
            first_name: "Ada".into(),
            last_name: "$lastName".into(),
            age: None,
            gender: None,
            about: None,
            skills: vec![],
            photo_url: None,
        };
        let commit = vec![
            envelope(
                user,
                1,
                UserEvent::Registered(UserRegistered { user_id: user, email_id: "a@b.co".into(), profile }),
            ),
            envelope(user, 2, UserEvent::CredentialsSet(CredentialsSet { password_hash: "$argon2id$SECRET".into() })),
        ];
        (user, Record { topic: "user-events".into(), partition: 1, offset, commit })
    }

    #[test]
    fn the_password_hash_never_reaches_a_statement() {
        let (_, record) = signup_record(7);
        let plan = plan(&[record], chrono::Duration::minutes(5), &Prior::default());
        let everything = format!("{:?}{:?}{:?}", plan.users, plan.sessions, plan.creations);
        assert!(!everything.contains("SECRET"));
        assert!(!everything.contains("passwordHash"));
    }

    #[test]
    fn user_text_is_literal_and_writes_are_version_guarded() {
        let (user, record) = signup_record(7);
        let plan = plan(&[record], chrono::Duration::minutes(5), &Prior::default());
        let first = plan.creations[collections::USERS][0].otherwise.to_string();
        assert!(first.contains("$literal"), "{first}");
        assert!(first.contains("$lastName"));
        assert!(first.contains("$cond"));
        assert!(plan.touched_users.contains(&user.to_string()));
    }

    #[test]
    fn checkpoints_are_the_next_offset_per_partition() {
        let (_, a) = signup_record(7);
        let (_, b) = signup_record(9);
        let plan = plan(&[a, b], chrono::Duration::minutes(5), &Prior::default());
        assert_eq!(plan.checkpoints.get(&("user-events".to_owned(), 1)), Some(&10));
        assert_eq!(plan.events, 4);
    }

    fn presence_record(user: Uuid, offset: i64, beats: &[(u64, bool, chrono::DateTime<Utc>)]) -> Record {
        let commit = beats
            .iter()
            .map(|(version, online, at)| {
                let mut e = envelope(
                    user,
                    *version,
                    UserEvent::MembershipChanged(events::user::MembershipChanged { tier: events::user::Tier::Gold }),
                );
                let signal = events::presence::PresenceSignal {};
                e.event = Event::Presence(if *online {
                    PresenceEvent::Heartbeat(signal)
                } else {
                    PresenceEvent::Offline(signal)
                });
                e.occurred_at = *at;
                e
            })
            .collect();
        Record { topic: "presence-events".into(), partition: 2, offset, commit }
    }

    #[test]
    fn records_below_the_stored_checkpoint_count_nothing_again() {
        let (_, record) = signup_record(7);
        let partition = ("user-events".to_owned(), 1);
        let mut prior = Prior::default();
        prior.checkpoints.insert(partition.clone(), 8);
        let again = plan(std::slice::from_ref(&record), chrono::Duration::minutes(5), &prior);
        assert!(again.processed.is_empty() && again.daily_stats.is_empty(), "{:?}", again.daily_stats);
        // Its idempotent effects are still planned, and the plan relies on
        // the checkpoint it read.
        assert!(!again.creations.is_empty());
        assert_eq!(again.fence.get(&partition), Some(&8));

        prior.checkpoints.insert(partition.clone(), 7);
        let first = plan(std::slice::from_ref(&record), chrono::Duration::minutes(5), &prior);
        assert_eq!((first.processed.len(), first.daily_stats.len()), (1, 1));
        assert_eq!(first.fence.get(&partition), Some(&7));
        // A processed id elsewhere (a re-driven copy) is skipped too.
        prior.processed.insert(record.commit[0].event_id);
        let copy = plan(&[record], chrono::Duration::minutes(5), &prior);
        assert!(copy.processed.is_empty() && copy.daily_stats.is_empty());
    }

    #[test]
    fn a_partition_without_once_only_effects_is_not_fenced() {
        let (user, _) = signup_record(0);
        let edit = envelope(
            user,
            3,
            UserEvent::MembershipChanged(events::user::MembershipChanged { tier: events::user::Tier::Gold }),
        );
        let record = Record { topic: "user-events".into(), partition: 1, offset: 4, commit: vec![edit] };
        let plan = plan(&[record], chrono::Duration::minutes(5), &Prior::default());
        assert!(plan.fence.is_empty(), "{:?}", plan.fence);
    }

    #[test]
    fn heartbeats_record_no_processed_ids_and_publish_only_changes() {
        let ttl = chrono::Duration::minutes(5);
        let (user, t) = (Uuid::new_v4(), Utc::now());
        let id = user.to_string();
        let online_until = |at| PresenceState { version: 1, online_until: at };
        let with = |state: Option<PresenceState>| Prior {
            presence: state.map(|s| (id.clone(), s)).into_iter().collect(),
            ..Prior::default()
        };
        let changes = |records: &[Record], prior: &Prior| {
            let plan = plan(records, ttl, prior);
            assert!(plan.processed.is_empty(), "{:?}", plan.processed);
            assert!(plan.fence.contains_key(&("presence-events".to_owned(), 2)));
            plan.presence_changes.iter().map(|(u, e)| (u.clone(), Some(e.online))).collect::<Vec<_>>()
        };
        let online = with(Some(online_until(t + ttl)));
        let offline = with(Some(online_until(t)));

        // Already online: a heartbeat changes nothing anyone sees.
        assert_eq!(changes(&[presence_record(user, 0, &[(2, true, t + ttl / 2)])], &online), vec![]);
        // Never seen, offline, or expired: coming online is a change.
        let coming = vec![(id.clone(), Some(true))];
        assert_eq!(changes(&[presence_record(user, 0, &[(2, true, t)])], &Prior::default()), coming);
        assert_eq!(changes(&[presence_record(user, 0, &[(2, true, t)])], &offline), coming);
        assert_eq!(changes(&[presence_record(user, 0, &[(2, true, t + ttl * 2)])], &online), coming);
        // Going offline while online is a change; while offline it is not.
        let going = vec![(id.clone(), Some(false))];
        assert_eq!(changes(&[presence_record(user, 0, &[(2, false, t)])], &online), going);
        assert_eq!(changes(&[presence_record(user, 0, &[(2, false, t)])], &offline), vec![]);
        // Many heartbeats in one batch: one entry. Back and forth within a
        // batch: the state it ends in, if that differs.
        let many: Vec<_> = (2..12).map(|v| (v, true, t + chrono::Duration::seconds(v as i64))).collect();
        assert_eq!(changes(&[presence_record(user, 0, &many)], &offline), coming);
        let flapping = [(2, true, t), (3, false, t), (4, true, t), (5, false, t)];
        assert_eq!(changes(&[presence_record(user, 0, &flapping)], &offline), vec![]);
        assert_eq!(changes(&[presence_record(user, 0, &flapping)], &online), going);
        // Events the document already has (a re-driven copy) change nothing.
        let newer = with(Some(PresenceState { version: 9, online_until: t }));
        assert_eq!(changes(&[presence_record(user, 0, &[(2, true, t)])], &newer), vec![]);
        // Nor does a record below the stored checkpoint.
        let mut applied = offline.clone();
        applied.checkpoints.insert(("presence-events".to_owned(), 2), 1);
        assert_eq!(changes(&[presence_record(user, 0, &[(2, true, t)])], &applied), vec![]);
    }

    #[test]
    fn an_acceptance_lists_the_connection_on_both_sides_at_its_time() {
        let (alice, bob) = (Uuid::now_v7(), Uuid::now_v7());
        let pair = events::connection::pair_key(alice, bob);
        let request_id = Uuid::now_v7();
        let connection = |version, event| {
            let mut envelope = envelope(
                bob,
                version,
                UserEvent::MembershipChanged(events::user::MembershipChanged { tier: events::user::Tier::Gold }),
            );
            envelope.aggregate_id = pair.clone();
            envelope.event = Event::Connection(event);
            envelope
        };
        let asked = connection(
            1,
            ConnectionEvent::Requested(events::connection::ConnectionRequested {
                request_id,
                from_user_id: alice,
                to_user_id: bob,
                status: RequestStatus::Interested,
            }),
        );
        let review = |status| {
            ConnectionEvent::Reviewed(events::connection::ConnectionReviewed {
                request_id,
                status,
                reviewed_at: Utc::now(),
            })
        };
        let accepted = connection(2, review(RequestStatus::Accepted));
        let at = accepted.occurred_at;
        let record = |offset, commit| Record { topic: "connection-events".into(), partition: 0, offset, commit };
        let accepting = plan(
            &[record(0, vec![asked.clone()]), record(1, vec![accepted])],
            chrono::Duration::minutes(5),
            &Default::default(),
        );
        let edges = &accepting.creations[collections::CONNECTIONS];
        assert_eq!(edges.len(), 2, "{edges:?}");
        let mut sides: Vec<(String, String)> = edges
            .iter()
            .map(|edge| {
                let doc: ConnectionDoc = mongodb::bson::from_document(edge.document.clone()).expect("a connection");
                assert_eq!(doc.id, edge.id);
                assert_eq!(doc.id, format!("{}:{}", doc.user_id, doc.other_user_id));
                (doc.user_id, doc.other_user_id)
            })
            .collect();
        sides.sort();
        let mut expected = vec![(alice.to_string(), bob.to_string()), (bob.to_string(), alice.to_string())];
        expected.sort();
        assert_eq!(sides, expected);
        for edge in edges {
            let doc: ConnectionDoc = mongodb::bson::from_document(edge.document.clone()).expect("a connection");
            assert_eq!((doc.request_id, doc.connected_at, doc.version), (request_id.to_string(), at, 2));
            let again = edge.otherwise.to_string();
            assert!(again.contains("$cond") && again.contains("$literal"), "a repeat is version-guarded: {again}");
        }
        // A rejection connects nobody.
        let rejected = connection(2, review(RequestStatus::Rejected));
        let rejecting = plan(
            &[record(0, vec![asked]), record(1, vec![rejected])],
            chrono::Duration::minutes(5),
            &Default::default(),
        );
        assert!(!rejecting.creations.contains_key(collections::CONNECTIONS));
    }

    #[test]
    fn a_notification_read_before_it_is_created_still_ends_read() {
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let mut sent = envelope(
            alice,
            1,
            UserEvent::MembershipChanged(events::user::MembershipChanged { tier: events::user::Tier::Gold }),
        );
        sent.aggregate_id = events::connection::pair_key(alice, bob);
        sent.event = Event::Message(MessageEvent::Sent(events::message::MessageSent {
            message_id: Uuid::new_v4(),
            from_user_id: alice,
            to_user_id: bob,
            text: "hi".into(),
        }));
        let mut read = envelope(
            bob,
            1,
            UserEvent::MembershipChanged(events::user::MembershipChanged { tier: events::user::Tier::Gold }),
        );
        read.event = Event::Notification(events::NotificationEvent::Read(events::notification::NotificationRead {
            notification_id: sent.event_id,
        }));
        let record = |topic: &str, commit| Record { topic: topic.into(), partition: 0, offset: 0, commit };
        // The read first, as a rebuild may deliver it from its own topic.
        let plan = plan(
            &[record("notification-events", vec![read]), record("message-events", vec![sent])],
            chrono::Duration::minutes(5),
            &Prior::default(),
        );
        let [reading] = plan.notifications.as_slice() else { panic!("{:?}", plan.notifications) };
        let [creating] = plan.creations[collections::NOTIFICATIONS].as_slice() else { panic!("{:?}", plan.creations) };
        let creating = &creating.otherwise;
        assert_eq!(reading.get_bool("upsert"), Ok(true), "a read of a notice not there yet creates it: {reading}");
        let kept = creating.to_string();
        assert!(kept.contains(r#""readAt": { "$ifNull": ["$readAt", null] }"#), "creating keeps readAt: {kept}");
    }

    #[test]
    fn a_message_goes_live_to_both_sides_with_its_notification_in_the_read_shapes() {
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let message_id = Uuid::new_v4();
        let mut sent = envelope(
            alice,
            1,
            UserEvent::MembershipChanged(events::user::MembershipChanged { tier: events::user::Tier::Gold }),
        );
        sent.aggregate_id = events::connection::pair_key(alice, bob);
        sent.event = Event::Message(MessageEvent::Sent(events::message::MessageSent {
            message_id,
            from_user_id: alice,
            to_user_id: bob,
            text: "hi".into(),
        }));
        let at = sent.occurred_at;
        let notification_id = sent.event_id.to_string();
        let record = Record { topic: "message-events".into(), partition: 0, offset: 0, commit: vec![sent] };
        let plan = plan(&[record], chrono::Duration::minutes(5), &Default::default());
        let item = MessageItem {
            message_id: message_id.to_string(),
            from_user_id: alice.to_string(),
            to_user_id: bob.to_string(),
            text: "hi".into(),
            sent_at: at,
            delivered_at: None,
            read_at: None,
        };
        let notification = NotificationItem {
            notification_id,
            kind: "message".into(),
            from_user_id: alice.to_string(),
            request_id: None,
            message_id: Some(message_id.to_string()),
            created_at: at,
            read_at: None,
        };
        assert_eq!(
            plan.stream,
            vec![
                (alice.to_string(), LiveUpdate::Message(item.clone())),
                (bob.to_string(), LiveUpdate::Message(item)),
                (bob.to_string(), LiveUpdate::Notification(notification)),
            ]
        );
    }
}
