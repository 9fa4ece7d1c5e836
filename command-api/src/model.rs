//! The write model: every user's state, the email index and the
//! idempotency records, folded from the log with the domain's `apply`. It is
//! rebuilt from Kafka at start (docs/design.md §2) and updated only after the
//! broker acknowledged an append.

use std::collections::HashMap;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use events::connection::{ConnectionEvent, RequestStatus};
use events::message::MessageEvent;
use events::{Envelope, Event};
use uuid::Uuid;

use crate::domain::connection::{Connection, ConnectionState};
use crate::domain::message::{Message, MessageState};
use crate::domain::notification::{Notification, NotificationState};
use crate::domain::presence::Presence;
use crate::domain::user::{User, UserState};
use crate::domain::{Aggregate, Recorded};

/// Where a record landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// A successful command as recorded in the log, kept to answer a retry that
/// carries the same `Idempotency-Key` (docs/design.md §6).
#[derive(Debug, Clone)]
pub struct IdempotentCommit {
    pub fingerprint: Option<String>,
    pub commit: Vec<Envelope>,
    pub position: Position,
}

pub const IDEMPOTENCY_WINDOW: Duration = Duration::hours(24);

#[derive(Debug, Default)]
pub struct WriteModel {
    users: HashMap<Uuid, UserState>,
    emails: HashMap<String, Uuid>,
    /// (acting user, key) → the commit that key produced.
    idempotency: HashMap<(Uuid, String), IdempotentCommit>,
    /// Pair key → the one request between those two users.
    connections: HashMap<String, ConnectionState>,
    /// Request id → pair key.
    requests: HashMap<Uuid, String>,
    /// (sender, UTC day) → requests sent that day: the sender's daily
    /// counter, derived from the connection events.
    sent_per_day: HashMap<(Uuid, NaiveDate), u32>,
    /// Every message (who may mark it read, and whether they have).
    messages: HashMap<Uuid, MessageState>,
    /// Pair key → the conversation aggregate's version.
    conversation_versions: HashMap<String, u64>,
    /// User id → the presence aggregate's version.
    presence_versions: HashMap<String, u64>,
    /// Notification id (the id of the event that notified) → owner, read.
    notifications: HashMap<Uuid, NotificationState>,
    /// User id → the notification aggregate's version.
    notification_versions: HashMap<String, u64>,
    commits_applied: u64,
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
                        *self.sent_per_day.entry((r.from_user_id, occurred_at.date_naive())).or_insert(0) += 1;
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
                position,
            });
        }
        self.commits_applied += 1;
    }

    /// Drops idempotency records older than the window.
    pub fn prune(&mut self, now: DateTime<Utc>) {
        let yesterday = now.date_naive() - Duration::days(1);
        self.sent_per_day.retain(|(_, day), _| *day >= yesterday);
        self.idempotency.retain(|_, c| c.commit.first().is_some_and(|e| now - e.occurred_at < IDEMPOTENCY_WINDOW));
    }
}
