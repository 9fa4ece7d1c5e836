//! A chunk of the log folded per document, in memory: pure, so what a
//! coalescing rebuild writes is unit-tested without a database.
//!
//! A document the store does not hold yet is folded from nothing into its
//! final state (one insert at the flush). A document the store holds (an
//! earlier chunk wrote it, or a killed run did) keeps the chunk's
//! statements instead, to run there: folding it would need reading it, and
//! reads by id are what the store is slowest at (docs/stack.md).

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};

use mongodb::bson::{Bson, Document, RawDocumentBuf};

use super::evaluate::{Unsupported, apply_update};
use crate::plan::Plan;

#[derive(Debug)]
enum Folded {
    /// Not in the store: the document so far (`None`: the statements so
    /// far leave it absent, as the server would). Encoded: a `Document`
    /// takes about five times the memory, and most documents of a chunk
    /// are created once and changed rarely.
    New(Option<RawDocumentBuf>),
    /// In the store: the statements to run there, in order. Encoded too:
    /// a version-guarded pipeline statement takes several kilobytes as a
    /// `Document` and about half a kilobyte as bytes, and these pile up
    /// for every event on a document an earlier chunk stored.
    Stored(Vec<RawDocumentBuf>),
}

/// What one chunk writes.
#[derive(Debug, Default)]
pub struct Chunk {
    /// Per collection: final documents the store does not hold.
    pub inserts: BTreeMap<&'static str, Vec<RawDocumentBuf>>,
    /// Per collection: statements for documents the store holds, grouped
    /// by document, each document's in event order.
    pub statements: BTreeMap<&'static str, Vec<RawDocumentBuf>>,
    pub events: usize,
}

impl Chunk {
    pub fn documents(&self) -> usize {
        self.inserts.values().map(Vec::len).sum()
    }

    pub fn statement_count(&self) -> usize {
        self.statements.values().map(Vec::len).sum()
    }
}

/// The fold of the chunk being read, and which documents the store holds.
#[derive(Debug)]
pub struct Fold {
    chunk: BTreeMap<&'static str, HashMap<String, Folded>>,
    /// Hashes of (collection, id) of every document in the store. A
    /// collision only sends a new document down the statement path, which
    /// is correct too (an upsert), so 64 bits suffice.
    stored: HashSet<u64>,
    hasher: RandomState,
    events: usize,
}

impl Default for Fold {
    fn default() -> Self {
        Self { chunk: BTreeMap::new(), stored: HashSet::new(), hasher: RandomState::new(), events: 0 }
    }
}

impl Fold {
    fn key(&self, collection: &str, id: &str) -> u64 {
        self.hasher.hash_one((collection, id))
    }

    /// Records that the store holds `id` in `collection`.
    pub fn mark_stored(&mut self, collection: &str, id: &str) {
        let key = self.key(collection, id);
        self.stored.insert(key);
    }

    pub fn stored_documents(&self) -> usize {
        self.stored.len()
    }

    /// Events folded into the current chunk.
    pub fn events(&self) -> usize {
        self.events
    }

    /// Folds a batch's plan in, in the order a batch is written: per
    /// collection its creations, then its statements.
    pub fn apply(&mut self, plan: &Plan) -> Result<(), Unsupported> {
        for (collection, statements) in plan.statements_by_collection() {
            for creation in plan.creations.get(collection).into_iter().flatten() {
                let stored = self.stored.contains(&self.key(collection, &creation.id));
                let folded = self.entry(collection, &creation.id, stored);
                match folded {
                    Folded::New(None) => *folded = Folded::New(Some(encode(&creation.document)?)),
                    Folded::New(Some(current)) => {
                        let updated = apply_update(Some(decode(current)?), &creation.otherwise)?;
                        *folded = Folded::New(updated.as_ref().map(encode).transpose()?);
                    }
                    Folded::Stored(pending) => pending.push(encode(&creation.otherwise)?),
                }
            }
            for statement in statements {
                let id = statement_id(statement)?;
                let stored = self.stored.contains(&self.key(collection, &id));
                match self.entry(collection, &id, stored) {
                    Folded::New(current) => {
                        let before = current.take().map(|raw| decode(&raw)).transpose()?;
                        *current = apply_update(before, statement)?.as_ref().map(encode).transpose()?;
                    }
                    Folded::Stored(pending) => pending.push(encode(statement)?),
                }
            }
        }
        self.events += plan.events;
        Ok(())
    }

    fn entry(&mut self, collection: &'static str, id: &str, stored: bool) -> &mut Folded {
        match self.chunk.entry(collection).or_default().entry(id.to_owned()) {
            MapEntry::Occupied(entry) => entry.into_mut(),
            MapEntry::Vacant(entry) => {
                entry.insert(if stored { Folded::Stored(Vec::new()) } else { Folded::New(None) })
            }
        }
    }

    /// The current chunk, to write; its new documents count as stored from
    /// now on (the writer lands them before anything later).
    pub fn take_chunk(&mut self) -> Chunk {
        let mut chunk = Chunk { events: std::mem::take(&mut self.events), ..Chunk::default() };
        for (collection, documents) in std::mem::take(&mut self.chunk) {
            let (mut inserts, mut statements) = (Vec::new(), Vec::new());
            for (id, folded) in documents {
                match folded {
                    Folded::New(Some(document)) => {
                        let key = self.key(collection, &id);
                        self.stored.insert(key);
                        inserts.push(document);
                    }
                    Folded::New(None) => {}
                    Folded::Stored(pending) => statements.extend(pending),
                }
            }
            if !inserts.is_empty() {
                chunk.inserts.insert(collection, inserts);
            }
            if !statements.is_empty() {
                chunk.statements.insert(collection, statements);
            }
        }
        chunk
    }
}

fn encode(document: &Document) -> Result<RawDocumentBuf, Unsupported> {
    RawDocumentBuf::from_document(document)
        .map_err(|err| Unsupported(format!("a document that does not encode: {err}")))
}

fn decode(raw: &RawDocumentBuf) -> Result<Document, Unsupported> {
    raw.to_document().map_err(|err| Unsupported(format!("a document that does not decode: {err}")))
}

fn statement_id(statement: &Document) -> Result<String, Unsupported> {
    match statement.get_document("q").ok().and_then(|q| q.get("_id")) {
        Some(Bson::String(id)) => Ok(id.clone()),
        _ => Err(Unsupported(format!("a statement without a string _id: {statement}"))),
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use events::message::{MessageEvent, MessageSent};
    use events::user::{Profile, ProfileUpdated, UserEvent, UserRegistered};
    use events::{Envelope, Event, EventMetadata};
    use uuid::Uuid;
    use views::collections;

    use super::*;
    use crate::plan::{Prior, Record, plan};

    fn envelope(aggregate: String, version: u64, event: Event) -> Envelope {
        Envelope {
            event_id: Uuid::new_v4(),
            aggregate_id: aggregate,
            aggregate_version: version,
            occurred_at: Utc::now(),
            metadata: EventMetadata {
                actor: None,
                correlation_id: "c".into(),
                idempotency_key: None,
                request_fingerprint: None,
            },
            event,
        }
    }

    fn profile(about: &str) -> Profile {
        Profile {
            first_name: "Ada".into(),
            last_name: "Lovelace".into(),
            age: None,
            gender: None,
            about: Some(about.into()),
            skills: vec![],
            photo_url: None,
        }
    }

    fn registered(user: Uuid) -> Envelope {
        let event = UserRegistered { user_id: user, email_id: "a@b.co".into(), profile: profile("first") };
        envelope(user.to_string(), 1, Event::User(UserEvent::Registered(event)))
    }

    fn updated(user: Uuid, version: u64, about: &str) -> Envelope {
        let event = ProfileUpdated { profile: profile(about) };
        envelope(user.to_string(), version, Event::User(UserEvent::ProfileUpdated(event)))
    }

    fn message(from: Uuid, to: Uuid, version: u64) -> Envelope {
        let sent = MessageSent { message_id: Uuid::now_v7(), from_user_id: from, to_user_id: to, text: "hi".into() };
        envelope(events::connection::pair_key(from, to), version, Event::Message(MessageEvent::Sent(sent)))
    }

    fn fold_in(fold: &mut Fold, commits: Vec<Vec<Envelope>>) {
        let records: Vec<Record> = commits
            .into_iter()
            .enumerate()
            .map(|(offset, commit)| Record { topic: "t".into(), partition: 0, offset: offset as i64, commit })
            .collect();
        fold.apply(&plan(&records, chrono::Duration::minutes(5), &Prior::default())).expect("folds");
    }

    fn about(document: &Document) -> &str {
        document.get_str("about").expect("about")
    }

    #[test]
    fn given_a_new_user_when_it_changes_in_the_same_chunk_then_one_final_insert() {
        let user = Uuid::new_v4();
        let mut fold = Fold::default();
        fold_in(
            &mut fold,
            vec![vec![registered(user)], vec![updated(user, 2, "second")], vec![updated(user, 3, "third")]],
        );
        let chunk = fold.take_chunk();
        let users: Vec<Document> =
            chunk.inserts[collections::USERS].iter().map(|u| decode(u).expect("decodes")).collect();
        assert_eq!(users.len(), 1);
        assert_eq!(about(&users[0]), "third");
        assert_eq!(users[0].get_i64("version").expect("version"), 3);
        assert_eq!(chunk.statement_count(), 0, "{:?}", chunk.statements);
        assert_eq!(chunk.events, 3);
    }

    #[test]
    fn given_a_user_of_an_earlier_chunk_when_it_changes_then_a_statement_not_an_insert() {
        let user = Uuid::new_v4();
        let mut fold = Fold::default();
        fold_in(&mut fold, vec![vec![registered(user)]]);
        assert_eq!(fold.take_chunk().inserts[collections::USERS].len(), 1);
        fold_in(&mut fold, vec![vec![updated(user, 2, "second")]]);
        let chunk = fold.take_chunk();
        assert_eq!(chunk.documents(), 0, "{:?}", chunk.inserts);
        assert_eq!(chunk.statements[collections::USERS].len(), 1);
        let statement = chunk.statements[collections::USERS][0].to_document().expect("decodes");
        assert!(statement.to_string().contains("second"));
    }

    #[test]
    fn given_a_stored_document_when_its_creation_is_read_again_then_the_guarded_statement_runs() {
        let user = Uuid::new_v4();
        let mut fold = Fold::default();
        fold.mark_stored(collections::USERS, &user.to_string());
        fold_in(&mut fold, vec![vec![registered(user)]]);
        let chunk = fold.take_chunk();
        assert!(!chunk.inserts.contains_key(collections::USERS));
        let statement = chunk.statements[collections::USERS][0].to_document().expect("decodes");
        assert!(statement.to_string().contains("$cond"), "version-guarded");
    }

    #[test]
    fn given_counted_events_when_folded_then_each_counter_is_one_document_with_the_sum() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut fold = Fold::default();
        fold_in(&mut fold, vec![vec![message(a, b, 1)], vec![message(a, b, 2)], vec![message(b, a, 3)]]);
        let chunk = fold.take_chunk();
        let counters: Vec<Document> =
            chunk.inserts[collections::NOTIFICATION_COUNTERS].iter().map(|c| decode(c).expect("decodes")).collect();
        let unread = |user: Uuid| {
            let counter = counters.iter().find(|c| c.get_str("_id").ok() == Some(&user.to_string())).expect("counter");
            counter.get_i64("unread").expect("unread")
        };
        assert_eq!((unread(b), unread(a)), (2, 1));
        assert_eq!(chunk.inserts[collections::MESSAGES].len(), 3);
        assert_eq!(chunk.inserts[collections::DAILY_STATS].len(), 1);
    }

    #[test]
    fn given_an_update_of_a_document_nobody_created_then_nothing_is_written() {
        let user = Uuid::new_v4();
        let mut fold = Fold::default();
        fold_in(&mut fold, vec![vec![updated(user, 2, "orphan")]]);
        let chunk = fold.take_chunk();
        assert_eq!((chunk.documents(), chunk.statement_count()), (0, 0), "as the server: no upsert, no document");
    }
}
