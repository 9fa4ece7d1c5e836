//! Write-model snapshots (docs/design.md §14): the model serialised with the
//! log positions it covers, so a start reads only the tail of each
//! partition. A snapshot is derived state: deleting it only makes the next
//! start read from offset 0, and one that cannot be read is ignored.
//!
//! Stored in the base database's `command_snapshots`: one manifest document
//! (`_id: "manifest"`) naming the current snapshot, and its bytes in chunks
//! (`_id: "<snapshot>:<n>"`). The bytes are the model as JSON, deflated, and
//! sealed with ChaCha20-Poly1305 under a key derived from the JWT secret:
//! the model holds the password hashes (§5), which must not become readable
//! to whoever reads MongoDB, and the seal also rejects a corrupt chunk.

use std::time::Instant;

use chrono::Utc;
use mongodb::bson::{Binary, Document, doc, spec::BinarySubtype};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::model::WriteModel;

/// The collection, in the base database (outside view generations).
pub const COLLECTION: &str = "command_snapshots";
/// Bumped when the serialised model changes shape: an older or newer
/// snapshot is then ignored, never guessed at.
pub const FORMAT_VERSION: i32 = 1;
/// Well under MongoDB's 16 MiB document limit.
const CHUNK_BYTES: usize = 4 << 20;
const MANIFEST_ID: &str = "manifest";

/// The key that seals snapshots, derived from the JWT secret under a label
/// of its own.
#[derive(Clone)]
pub struct SealKey(LessSafeKey);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

impl SealKey {
    pub fn derive(secret: &str) -> Self {
        let mac = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes()),
            b"devconnect-write-model-snapshot",
        );
        let key = UnboundKey::new(&CHACHA20_POLY1305, mac.as_ref())
            .unwrap_or_else(|_| unreachable!("HMAC-SHA256 gives the 32 bytes ChaCha20 takes"));
        Self(LessSafeKey::new(key))
    }
}

/// Why a snapshot was not used.
#[derive(Debug, thiserror::Error)]
pub enum Unusable {
    #[error("no snapshot")]
    Absent,
    #[error("format version {0}, this program reads {FORMAT_VERSION}")]
    Version(i32),
    #[error("it covers topics this program does not own: {0}")]
    OtherTopics(String),
    #[error("it cannot be read: {0}")]
    Corrupt(String),
    #[error("reading it failed: {0}")]
    Store(#[from] mongodb::error::Error),
}

fn corrupt(e: impl std::fmt::Display) -> Unusable {
    Unusable::Corrupt(e.to_string())
}

/// Serialises, deflates and seals a model. The associated data binds the
/// bytes to their snapshot id and format version.
pub fn seal(model: &WriteModel, key: &SealKey, snapshot_id: &str) -> anyhow::Result<(Vec<u8>, [u8; NONCE_LEN])> {
    let mut deflate = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    serde_json::to_writer(&mut deflate, model)?;
    let mut bytes = deflate.finish()?;
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new().fill(&mut nonce).map_err(|_| anyhow::anyhow!("no randomness for a nonce"))?;
    key.0
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), aad(snapshot_id), &mut bytes)
        .map_err(|_| anyhow::anyhow!("sealing the snapshot failed"))?;
    Ok((bytes, nonce))
}

/// The reverse of [`seal`].
pub fn open(
    mut bytes: Vec<u8>,
    nonce: [u8; NONCE_LEN],
    key: &SealKey,
    snapshot_id: &str,
) -> Result<WriteModel, Unusable> {
    let plain = key
        .0
        .open_in_place(Nonce::assume_unique_for_key(nonce), aad(snapshot_id), &mut bytes)
        .map_err(|_| Unusable::Corrupt("the seal does not verify (corrupt, or another secret)".into()))?;
    let reader = std::io::BufReader::with_capacity(1 << 16, flate2::read::DeflateDecoder::new(&plain[..]));
    serde_json::from_reader(reader).map_err(corrupt)
}

fn aad(snapshot_id: &str) -> Aad<String> {
    Aad::from(format!("{snapshot_id}|{FORMAT_VERSION}"))
}

/// Where snapshots are kept.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    collection: mongodb::Collection<Document>,
    key: SealKey,
}

/// A snapshot read back, with what the start reports of it.
#[derive(Debug)]
pub struct Loaded {
    pub model: WriteModel,
    pub snapshot_id: String,
    pub bytes: usize,
}

impl SnapshotStore {
    pub fn new(client: &mongodb::Client, base_database: &str, key: SealKey) -> Self {
        Self { collection: client.database(base_database).collection(COLLECTION), key }
    }

    /// The latest snapshot, if there is one this program can use for
    /// `owned_topics`.
    pub async fn load(&self, owned_topics: &[String]) -> Result<Loaded, Unusable> {
        let manifest = self.collection.find_one(doc! { "_id": MANIFEST_ID }).await?.ok_or(Unusable::Absent)?;
        let version = manifest.get_i32("formatVersion").map_err(corrupt)?;
        if version != FORMAT_VERSION {
            return Err(Unusable::Version(version));
        }
        let snapshot_id = manifest.get_str("snapshot").map_err(corrupt)?.to_owned();
        let chunks = manifest.get_i32("chunks").map_err(corrupt)?;
        let nonce: [u8; NONCE_LEN] =
            manifest.get_binary_generic("nonce").map_err(corrupt)?.as_slice().try_into().map_err(corrupt)?;
        // Checked before the bytes are read: a snapshot of other topics (a
        // changed DEVCONNECT_TOPIC_PREFIX) is no use at all.
        let topics = manifest.get_array("topics").map_err(corrupt)?;
        let foreign: Vec<&str> =
            topics.iter().filter_map(|t| t.as_str()).filter(|t| !owned_topics.iter().any(|o| o == t)).collect();
        if !foreign.is_empty() {
            return Err(Unusable::OtherTopics(foreign.join(", ")));
        }
        let mut bytes = Vec::with_capacity(manifest.get_i64("bytes").unwrap_or(0).max(0) as usize);
        for n in 0..chunks {
            let chunk = self
                .collection
                .find_one(doc! { "_id": format!("{snapshot_id}:{n}") })
                .await?
                .ok_or_else(|| Unusable::Corrupt(format!("chunk {n} of {chunks} is missing")))?;
            bytes.extend_from_slice(chunk.get_binary_generic("data").map_err(corrupt)?);
        }
        let size = bytes.len();
        let key = self.key.clone();
        let id = snapshot_id.clone();
        let model = tokio::task::spawn_blocking(move || open(bytes, nonce, &key, &id)).await.map_err(corrupt)??;
        // The positions inside the sealed model are the truth; the
        // manifest's list is for people and for the check above.
        if let Some((topic, _, _)) = model.positions().find(|(t, _, _)| !owned_topics.iter().any(|o| o == t)) {
            return Err(Unusable::OtherTopics(topic.to_owned()));
        }
        Ok(Loaded { model, snapshot_id, bytes: size })
    }

    /// Writes `model` as the new latest snapshot: its chunks, then the
    /// manifest that names them, then drops older chunks. A crash in between
    /// leaves the previous snapshot current (or stray chunks the next write
    /// removes). Returns the bytes written.
    pub async fn save(&self, model: WriteModel) -> anyhow::Result<usize> {
        let snapshot_id = format!("s{:x}", Utc::now().timestamp_millis());
        let topics: Vec<String> = {
            let mut t: Vec<String> = model.positions().map(|(t, _, _)| t.to_owned()).collect();
            t.dedup();
            t
        };
        let offsets: Vec<Document> =
            model.positions().map(|(t, p, next)| doc! { "topic": t, "partition": p, "next": next }).collect();
        let offset_sum = model.offset_sum();
        let key = self.key.clone();
        let id = snapshot_id.clone();
        let started = Instant::now();
        let (bytes, nonce) = tokio::task::spawn_blocking(move || seal(&model, &key, &id)).await??;
        let sealed_in = started.elapsed();
        for (n, chunk) in bytes.chunks(CHUNK_BYTES).enumerate() {
            self.collection
                .insert_one(doc! {
                    "_id": format!("{snapshot_id}:{n}"),
                    "snapshot": &snapshot_id,
                    "data": Binary { subtype: BinarySubtype::Generic, bytes: chunk.to_vec() },
                })
                .await?;
        }
        let chunks = bytes.len().div_ceil(CHUNK_BYTES) as i32;
        self.collection
            .replace_one(
                doc! { "_id": MANIFEST_ID },
                doc! {
                    "_id": MANIFEST_ID,
                    "snapshot": &snapshot_id,
                    "formatVersion": FORMAT_VERSION,
                    "chunks": chunks,
                    "bytes": bytes.len() as i64,
                    "nonce": Binary { subtype: BinarySubtype::Generic, bytes: nonce.to_vec() },
                    "topics": topics,
                    "offsets": offsets,
                    "offsetSum": offset_sum,
                    "createdAt": Utc::now().to_rfc3339(),
                },
            )
            .upsert(true)
            .await?;
        self.collection
            .delete_many(doc! { "_id": { "$ne": MANIFEST_ID }, "snapshot": { "$ne": &snapshot_id } })
            .await?;
        tracing::info!(
            snapshot = %snapshot_id,
            offset_sum,
            bytes = bytes.len(),
            chunks,
            seal_ms = sealed_in.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "write-model snapshot written"
        );
        Ok(bytes.len())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use chrono::{Duration, Utc};
    use events::connection::{ConnectionEvent, ConnectionRequested, ConnectionReviewed, RequestStatus, pair_key};
    use events::message::{MessageEvent, MessageRead, MessageSent};
    use events::notification::NotificationRead;
    use events::presence::{PresenceEvent, PresenceSignal};
    use events::user::{CredentialsSet, Profile, SessionStarted, SessionsRevoked, UserEvent, UserRegistered};
    use events::{Envelope, Event, EventMetadata, NotificationEvent};
    use uuid::Uuid;

    use super::*;
    use crate::model::Position;

    fn envelope(aggregate: &str, version: u64, actor: Uuid, key: Option<&str>, event: Event) -> Envelope {
        Envelope {
            event_id: Uuid::now_v7(),
            aggregate_id: aggregate.to_owned(),
            aggregate_version: version,
            occurred_at: Utc::now() - Duration::minutes(5),
            metadata: EventMetadata {
                actor: Some(actor),
                correlation_id: "test".into(),
                idempotency_key: key.map(str::to_owned),
                request_fingerprint: key.map(|k| format!("fp-{k}")),
            },
            event,
        }
    }

    fn profile(name: &str) -> Profile {
        Profile {
            first_name: name.into(),
            last_name: "Test".into(),
            age: Some(30),
            gender: None,
            about: None,
            skills: vec!["rust".into()],
            photo_url: None,
        }
    }

    /// A history touching every part of the model, as (topic, partition,
    /// record bytes): the bytes go through the codec, as the log's do. The
    /// first record is recorded in schema v1 and upcast on decoding.
    fn history() -> Vec<(String, i32, Vec<u8>)> {
        let mut records = vec![(
            "t-user-events".to_owned(),
            0,
            include_bytes!("../../events/tests/fixtures/user.registered.v1.json").to_vec(),
        )];
        let users: Vec<Uuid> = (0..6).map(|_| Uuid::now_v7()).collect();
        let mut push = |topic: &str, partition: i32, commit: Vec<Envelope>| {
            records.push((format!("t-{topic}"), partition, events::encode_record(&commit)));
        };
        let mut sessions = Vec::new();
        for (i, user) in users.iter().enumerate() {
            let id = user.to_string();
            let registered =
                UserRegistered { user_id: *user, email_id: format!("u{i}@example.com"), profile: profile("U") };
            let credentials = CredentialsSet { password_hash: "$argon2id$test".into() };
            push(
                "user-events",
                (i % 3) as i32,
                vec![
                    envelope(&id, 1, *user, Some("signup"), Event::User(UserEvent::Registered(registered))),
                    envelope(&id, 2, *user, Some("signup"), Event::User(UserEvent::CredentialsSet(credentials))),
                ],
            );
            let session = SessionStarted { session_id: Uuid::now_v7(), expires_at: Utc::now() + Duration::hours(8) };
            if i == 0 {
                sessions.push(session.session_id);
            }
            push(
                "user-events",
                (i % 3) as i32,
                vec![envelope(&id, 3, *user, Some("login"), Event::User(UserEvent::SessionStarted(session)))],
            );
        }
        let first = users[0];
        let revoked = SessionsRevoked { session_ids: sessions, reason: events::user::RevocationReason::Logout };
        push(
            "user-events",
            0,
            vec![envelope(
                &first.to_string(),
                4,
                first,
                Some("logout"),
                Event::User(UserEvent::SessionsRevoked(revoked)),
            )],
        );
        for w in users.windows(2) {
            let (a, b) = (w[0], w[1]);
            let pair = pair_key(a, b);
            let request_id = Uuid::now_v7();
            let requested = ConnectionRequested {
                request_id,
                from_user_id: a,
                to_user_id: b,
                status: RequestStatus::Interested,
                slot_reserved: false,
            };
            let requested = envelope(&pair, 1, a, None, Event::Connection(ConnectionEvent::Requested(requested)));
            let notification = requested.event_id;
            push("connection-events", 1, vec![requested]);
            let reviewed = ConnectionReviewed { request_id, status: RequestStatus::Accepted, reviewed_at: Utc::now() };
            push(
                "connection-events",
                1,
                vec![envelope(&pair, 2, b, Some("review"), Event::Connection(ConnectionEvent::Reviewed(reviewed)))],
            );
            let message_id = Uuid::now_v7();
            let sent = MessageSent { message_id, from_user_id: a, to_user_id: b, text: "hello".into() };
            push(
                "message-events",
                2,
                vec![envelope(&pair, 1, a, Some("m1"), Event::Message(MessageEvent::Sent(sent)))],
            );
            let read = MessageRead { message_id, read_at: Utc::now() };
            push("message-events", 2, vec![envelope(&pair, 2, b, None, Event::Message(MessageEvent::Read(read)))]);
            let read = NotificationEvent::Read(NotificationRead { notification_id: notification });
            push("notification-events", 0, vec![envelope(&b.to_string(), 1, b, None, Event::Notification(read))]);
            let beat = PresenceEvent::Heartbeat(PresenceSignal {});
            push("presence-events", 0, vec![envelope(&a.to_string(), 1, a, None, Event::Presence(beat))]);
        }
        records
    }

    /// Folds records in order, numbering offsets per partition from where
    /// the model stands, as reading the log does.
    fn fold(model: &mut WriteModel, records: &[(String, i32, Vec<u8>)], offsets: &mut BTreeOffsets) {
        for (topic, partition, bytes) in records {
            let offset = offsets.entry((topic.clone(), *partition)).or_insert(0);
            let commit = events::decode_record(bytes).unwrap();
            model.record(&commit, Position { topic: topic.clone(), partition: *partition, offset: *offset });
            *offset += 1;
        }
    }

    type BTreeOffsets = std::collections::BTreeMap<(String, i32), i64>;

    fn key() -> SealKey {
        SealKey::derive("a test secret that is at least 32 bytes long")
    }

    #[test]
    fn a_snapshot_reads_back_equal() {
        let mut model = WriteModel::default();
        fold(&mut model, &history(), &mut BTreeOffsets::new());
        assert!(model.user_count() >= 7, "the upcast user and six more");
        let (bytes, nonce) = seal(&model, &key(), "s1").unwrap();
        let back = open(bytes, nonce, &key(), "s1").unwrap();
        assert_eq!(back, model);
        assert!(back.email_owner("grace.hopper@example.com").is_some(), "the v1 registration, upcast");
        assert!(back.idempotent_commit(back.email_owner("u0@example.com").unwrap(), "signup", Utc::now()).is_some());
    }

    #[test]
    fn snapshot_plus_tail_equals_the_model_from_offset_0() {
        let records = history();
        let mut from_zero = WriteModel::default();
        fold(&mut from_zero, &records, &mut BTreeOffsets::new());
        for cut in [0, 1, records.len() / 3, records.len() / 2, records.len() - 1, records.len()] {
            let mut offsets = BTreeOffsets::new();
            let mut head = WriteModel::default();
            fold(&mut head, &records[..cut], &mut offsets);
            let (bytes, nonce) = seal(&head, &key(), "s").unwrap();
            let mut resumed = open(bytes, nonce, &key(), "s").unwrap();
            for ((topic, partition), next) in &offsets {
                assert_eq!(resumed.next_offset(topic, *partition), *next, "the snapshot names its offsets");
            }
            fold(&mut resumed, &records[cut..], &mut offsets);
            assert_eq!(resumed, from_zero, "cut at {cut}");
        }
    }

    #[test]
    fn a_corrupt_or_foreign_snapshot_does_not_open() {
        let mut model = WriteModel::default();
        fold(&mut model, &history(), &mut BTreeOffsets::new());
        let (bytes, nonce) = seal(&model, &key(), "s1").unwrap();
        let mut flipped = bytes.clone();
        flipped[10] ^= 1;
        assert!(matches!(open(flipped, nonce, &key(), "s1"), Err(Unusable::Corrupt(_))));
        assert!(matches!(open(bytes.clone(), nonce, &key(), "s2"), Err(Unusable::Corrupt(_))), "another id");
        let other = SealKey::derive("another secret, also at least 32 bytes long");
        assert!(matches!(open(bytes, nonce, &other, "s1"), Err(Unusable::Corrupt(_))), "another secret");
        assert!(matches!(open(b"garbage".to_vec(), nonce, &key(), "s1"), Err(Unusable::Corrupt(_))));
    }
}
