//! The plan's unit tests: the idempotency, fencing and live-entry rules,
//! checked on the statements without a database.

use chrono::Utc;
use events::connection::{ConnectionEvent, RequestStatus};
use events::message::MessageEvent;
use events::presence::PresenceEvent;
use events::user::{CredentialsSet, Profile, UserEvent, UserRegistered};
use events::{Envelope, Event, EventMetadata};
use uuid::Uuid;
use views::{ConnectionDoc, LiveUpdate, MessageItem, NotificationItem, collections};

use super::{PresenceState, Prior, Record, plan};

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
        envelope(user, 1, UserEvent::Registered(UserRegistered { user_id: user, email_id: "a@b.co".into(), profile })),
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
fn a_reserved_request_slot_moves_the_users_version_and_refreshes_its_cache_only() {
    let (user, _) = signup_record(0);
    let slot = events::user::RequestSlotReserved {
        request_id: Uuid::now_v7(),
        to_user_id: Uuid::new_v4(),
        day: Utc::now().date_naive(),
    };
    let reserved = envelope(user, 3, UserEvent::RequestSlotReserved(slot));
    let record = Record { topic: "user-events".into(), partition: 1, offset: 4, commit: vec![reserved] };
    let plan = plan(&[record], chrono::Duration::minutes(5), &Prior::default());
    assert_eq!(plan.users.len(), 1, "one version-guarded statement on the user");
    let statement = format!("{:?}", plan.users[0]);
    assert!(!statement.contains("requestId") && !statement.contains("toUserId"), "no view shows the slot: {statement}");
    assert!(plan.touched_users.contains(&user.to_string()), "a rebuild caches the document as it ends; so must this");
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
            slot_reserved: false,
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
    let rejecting =
        plan(&[record(0, vec![asked]), record(1, vec![rejected])], chrono::Duration::minutes(5), &Default::default());
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
