//! Turns a batch of records into MongoDB update statements: pure, so the
//! idempotency rules are unit-tested without a database.
//!
//! Every statement is a pipeline update guarded by the document's
//! `version`: it changes the document only if the event is newer than the
//! last one applied. Applying a batch twice is therefore a no-op, and
//! neither a duplicate nor a stale event raises an error (a plain
//! `{version: {$lt: n}}` filter with upsert would answer E11000 instead).

use std::collections::{BTreeMap, BTreeSet};

use events::connection::{ConnectionEvent, RequestStatus};
use events::message::MessageEvent;
use events::presence::PresenceEvent;
use events::user::{Profile, UserEvent};
use events::{Envelope, Event};
use mongodb::bson::{Bson, Document, doc};
use views::{ConnectionRequestDoc, MessageDoc, PresenceDoc, SessionDoc, UserDoc};

/// One Kafka record, decoded.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub commit: Vec<Envelope>,
}

#[derive(Debug, Default)]
pub struct Plan {
    /// `update` statements for the users collection, in event order.
    pub users: Vec<Document>,
    pub sessions: Vec<Document>,
    pub requests: Vec<Document>,
    /// Plain `$addToSet` updates: idempotent by nature.
    pub relations: Vec<Document>,
    pub messages: Vec<Document>,
    pub presence: Vec<Document>,
    /// Next offset to apply per (topic, partition).
    pub checkpoints: BTreeMap<(String, i32), i64>,
    /// Cache entries to refresh once MongoDB has the batch.
    pub touched_users: BTreeSet<String>,
    pub touched_sessions: BTreeSet<String>,
    /// Conversations (pair keys) whose cached newest messages to rewrite.
    pub touched_conversations: BTreeSet<String>,
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

/// `presence_ttl`: how long a heartbeat keeps a user online.
pub fn plan(records: &[Record], presence_ttl: chrono::Duration) -> Plan {
    let mut plan = Plan::default();
    for record in records {
        for envelope in &record.commit {
            plan.events += 1;
            match &envelope.event {
                Event::User(event) => apply_user_event(&mut plan, envelope, event),
                Event::Connection(event) => apply_connection_event(&mut plan, envelope, event),
                Event::Message(event) => apply_message_event(&mut plan, envelope, event),
                Event::Presence(event) => {
                    let at = envelope.occurred_at;
                    let online_until = match event {
                        PresenceEvent::Heartbeat(_) => at + presence_ttl,
                        PresenceEvent::Offline(_) => at,
                    };
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
        let next = plan.checkpoints.entry((record.topic.clone(), record.partition)).or_insert(0);
        *next = (*next).max(record.offset + 1);
    }
    plan
}

fn apply_user_event(plan: &mut Plan, envelope: &Envelope, event: &UserEvent) {
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
            plan.users.push(replace_if_newer(user_id, version, to_bson(&doc)));
            plan.touched_users.insert(user_id.to_owned());
        }
        // The password hash is the command API's alone (DESIGN.md §5). The
        // event still advances the version, so later events stay ordered.
        UserEvent::CredentialsSet(_) => {
            plan.users.push(set_if_newer(user_id, version, Document::new()));
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
            plan.sessions.push(replace_if_newer(&doc.session_id, version, to_bson(&doc)));
            plan.touched_sessions.insert(doc.session_id);
            plan.users.push(set_if_newer(user_id, version, Document::new()));
        }
        UserEvent::SessionsRevoked(r) => {
            for id in &r.session_ids {
                let id = id.to_string();
                plan.sessions.push(set_if_newer(&id, version, doc! { "revoked": true }));
                plan.touched_sessions.insert(id);
            }
            plan.users.push(set_if_newer(user_id, version, Document::new()));
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

fn apply_connection_event(plan: &mut Plan, envelope: &Envelope, event: &ConnectionEvent) {
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
            plan.requests.push(replace_if_newer(&doc.request_id, version, to_bson(&doc)));
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
            }
        }
    }
}

fn apply_message_event(plan: &mut Plan, envelope: &Envelope, event: &MessageEvent) {
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
                read_at: None,
                version,
            };
            plan.messages.push(replace_if_newer(&doc.message_id, version, to_bson(&doc)));
        }
        MessageEvent::Read(r) => {
            plan.messages.push(set_if_newer(
                &r.message_id.to_string(),
                version,
                doc! { "readAt": to_bson(&r.read_at) },
            ));
        }
    }
    plan.touched_conversations.insert(pair.to_owned());
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
        let plan = plan(&[record], chrono::Duration::minutes(5));
        let everything = format!("{:?}{:?}", plan.users, plan.sessions);
        assert!(!everything.contains("SECRET"));
        assert!(!everything.contains("passwordHash"));
    }

    #[test]
    fn user_text_is_literal_and_writes_are_version_guarded() {
        let (user, record) = signup_record(7);
        let plan = plan(&[record], chrono::Duration::minutes(5));
        let first = plan.users[0].to_string();
        assert!(first.contains("$literal"), "{first}");
        assert!(first.contains("$lastName"));
        assert!(first.contains("$cond"));
        assert!(plan.touched_users.contains(&user.to_string()));
    }

    #[test]
    fn checkpoints_are_the_next_offset_per_partition() {
        let (_, a) = signup_record(7);
        let (_, b) = signup_record(9);
        let plan = plan(&[a, b], chrono::Duration::minutes(5));
        assert_eq!(plan.checkpoints.get(&("user-events".to_owned(), 1)), Some(&10));
        assert_eq!(plan.events, 4);
    }
}
