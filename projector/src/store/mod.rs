//! Writes a plan: one MongoDB transaction with the view changes and the
//! checkpoint (so the checkpoint never runs ahead of the views), then the
//! Redis caches in one pipeline.
//!
//! This file holds the store, its errors and what it reads (the prior state
//! a batch is planned against, the checkpoints), its indexes and pruning;
//! `write` applies a plan's MongoDB transaction and `cache` its Redis side.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use mongodb::{Client, Database};
use redis::aio::ConnectionManager;
use views::keys::RedisKeys;
use views::{CheckpointDoc, PresenceDoc, collections};

use platform::mongo::find_by_ids;

mod bulk;
mod cache;
mod write;

pub use bulk::{COUNTED_COLLECTIONS, ChunkCommit};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("mongodb: {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error("mongodb rejected a write: {detail}")]
    WriteErrors { codes: Vec<i32>, detail: String },
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The views do not hold what precedes the batch: the store lost
    /// applied batches (a crash within its sync window, a rollback). The
    /// batch must not be applied, or its checkpoint would paper over them.
    #[error("the view store is behind the batch: {gaps:?} (partition, stored next offset)")]
    Gap { gaps: Vec<((String, i32), i64)> },
    /// A checkpoint the plan relied on (`Plan::fence`) is no longer the
    /// stored one: another projector applied records of the partition
    /// meanwhile, or the store lost some. The batch is planned again.
    #[error("a checkpoint moved while the batch was planned: {moved:?} (partition, planned, stored)")]
    Moved { moved: Vec<((String, i32), i64, i64)> },
    /// The store holds what the caller was sure it did not.
    #[error("{0}")]
    Unexpected(String),
}

/// MongoDB server error codes the projector reacts to.
const WRITE_CONFLICT: i32 = 112;
const DUPLICATE_KEY: i32 = 11000;

impl StoreError {
    /// Whether trying again later can succeed without any fix: outages,
    /// timeouts, write conflicts (another writer, or the open transaction
    /// of a projector that was killed, which the server aborts after about
    /// a minute). Only other errors can mean a poison event.
    pub fn is_transient(&self) -> bool {
        use mongodb::error::{ErrorKind, TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT};
        match self {
            StoreError::Redis(_) | StoreError::Gap { .. } | StoreError::Moved { .. } => true,
            StoreError::Unexpected(_) => false,
            // A duplicate key means another projector (mid-rebalance) got
            // there first: the retry re-plans and skips what it applied.
            StoreError::WriteErrors { codes, .. } => codes.iter().any(|c| [WRITE_CONFLICT, DUPLICATE_KEY].contains(c)),
            StoreError::Mongo(err) => match err.kind.as_ref() {
                _ if err.contains_label(TRANSIENT_TRANSACTION_ERROR)
                    || err.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) =>
                {
                    true
                }
                ErrorKind::Command(command) => command.code == WRITE_CONFLICT,
                ErrorKind::Write(_) | ErrorKind::InvalidArgument { .. } | ErrorKind::BsonSerialization(_) => false,
                _ => true,
            },
        }
    }

    /// A write conflict: another transaction holds the documents (possibly
    /// one a dead projector left open).
    pub fn is_conflict(&self) -> bool {
        match self {
            StoreError::WriteErrors { codes, .. } => codes.contains(&WRITE_CONFLICT),
            StoreError::Mongo(err) => {
                matches!(err.kind.as_ref(), mongodb::error::ErrorKind::Command(c) if c.code == WRITE_CONFLICT)
                    || err.contains_label(mongodb::error::TRANSIENT_TRANSACTION_ERROR)
            }
            StoreError::Redis(_) | StoreError::Gap { .. } | StoreError::Moved { .. } | StoreError::Unexpected(_) => {
                false
            }
        }
    }
}

/// How a store treats Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Caches refreshed and live updates published after every batch.
    Live,
    /// MongoDB only per batch; `warm_caches` once caught up. Nobody reads
    /// a generation being rebuilt, so per-batch cache writes (half the time
    /// of a batch, measured) would only expire unread. No live updates: a
    /// rebuild replays history, which connected clients were already told.
    Rebuild,
}

#[derive(Clone)]
pub struct ViewStore {
    client: Client,
    db: Database,
    redis: ConnectionManager,
    keys: RedisKeys,
    mode: Mode,
    leases: crate::leases::SessionLeases,
    streams: StreamSettings,
}

/// How the live streams (`stream:<user>`) are written.
#[derive(Debug, Clone, Copy)]
pub struct StreamSettings {
    /// Each key expires this long after its newest entry.
    pub ttl: std::time::Duration,
    /// Most connections one presence change is published to.
    pub presence_fanout: usize,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self { ttl: std::time::Duration::from_secs(24 * 3600), presence_fanout: 1000 }
    }
}

impl std::fmt::Debug for ViewStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewStore").field("db", &self.db.name()).finish_non_exhaustive()
    }
}

impl ViewStore {
    pub fn new(
        client: Client,
        database: &str,
        redis: ConnectionManager,
        keys: RedisKeys,
        leases: crate::leases::SessionLeases,
    ) -> Self {
        let db = client.database(database);
        Self { client, db, redis, keys, mode: Mode::Live, leases, streams: StreamSettings::default() }
    }

    pub fn with_streams(mut self, streams: StreamSettings) -> Self {
        self.streams = streams;
        self
    }

    /// Aborts transactions left open by projectors that died mid-batch
    /// (`leases`), so their documents are not blocked for a minute.
    pub async fn reap_orphaned_transactions(&self) {
        if let Err(err) = self.leases.reap().await {
            tracing::debug!(error = %err, "could not reap orphaned transactions yet");
        }
    }

    /// A store for rebuilding: MongoDB only per batch, caches at the end.
    pub fn for_rebuild(mut self) -> Self {
        self.mode = Mode::Rebuild;
        self
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    pub async fn mongo_reachable(&self) -> bool {
        platform::mongo::ping(&self.client).await
    }

    pub async fn redis_reachable(&self) -> bool {
        let mut redis = self.redis.clone();
        redis::cmd("PING").query_async::<String>(&mut redis).await.is_ok()
    }

    /// One `update` command with many statements: the fastest batched write
    /// the servers we run offer (docs/stack.md), and it works on MongoDB 7.
    fn update_command(collection: &str, statements: &[Document]) -> Document {
        doc! { "update": collection, "updates": statements.to_vec(), "ordered": true }
    }

    fn check_write_errors(reply: &Document) -> Result<(), StoreError> {
        match reply.get_array("writeErrors") {
            Ok(errors) if !errors.is_empty() => Err(StoreError::WriteErrors {
                codes: errors.iter().filter_map(|e| e.as_document()?.get_i32("code").ok()).collect(),
                detail: format!("{errors:?}"),
            }),
            _ => Ok(()),
        }
    }

    /// The stored next offset of each of `partitions` that has a checkpoint,
    /// in `session`'s transaction if given.
    async fn read_checkpoints(
        &self,
        partitions: &std::collections::BTreeSet<(String, i32)>,
        session: Option<&mut mongodb::ClientSession>,
    ) -> Result<BTreeMap<(String, i32), i64>, StoreError> {
        let mut stored = BTreeMap::new();
        if partitions.is_empty() {
            return Ok(stored);
        }
        let ids: Vec<mongodb::bson::Bson> =
            partitions.iter().map(|(topic, partition)| CheckpointDoc::id_for(topic, *partition).into()).collect();
        let collection = self.db.collection::<CheckpointDoc>(collections::CHECKPOINTS);
        let query = doc! { "_id": { "$in": ids } };
        let found: Vec<CheckpointDoc> = match session {
            Some(session) => {
                let mut cursor = collection.find(query).session(&mut *session).await?;
                let mut found = Vec::new();
                while let Some(checkpoint) = cursor.next(&mut *session).await.transpose()? {
                    found.push(checkpoint);
                }
                found
            }
            None => collection.find(query).await?.try_collect().await?,
        };
        for checkpoint in found {
            stored.insert((checkpoint.topic, checkpoint.partition), checkpoint.next_offset);
        }
        Ok(stored)
    }

    /// What a batch of `records` is planned against (`plan::Prior`): which
    /// of `counted` were processed, the stored checkpoints of the fenced
    /// partitions, and then (`with_presence`) the stored presence of the
    /// batch's users. The presence is read after the checkpoints: a batch
    /// another projector commits in between moves a checkpoint, which the
    /// transaction then notices (`Moved`).
    pub async fn prior(
        &self,
        records: &[crate::plan::Record],
        counted: &[uuid::Uuid],
        with_presence: bool,
    ) -> Result<crate::plan::Prior, StoreError> {
        let positions = async {
            let checkpoints = self.read_checkpoints(&crate::plan::fenced_partitions(records), None).await?;
            let users: Vec<String> =
                if with_presence { crate::plan::presence_users(records).into_iter().collect() } else { Vec::new() };
            let presence = find_by_ids(&self.db.collection::<PresenceDoc>(collections::PRESENCE), &users).await?;
            Ok::<_, StoreError>((checkpoints, presence))
        };
        let (processed, positions) = tokio::join!(self.already_processed(counted), positions);
        let (checkpoints, presence) = positions?;
        let presence = presence
            .into_iter()
            .map(|p| (p.user_id, crate::plan::PresenceState { version: p.version, online_until: p.online_until }))
            .collect();
        Ok(crate::plan::Prior { processed: processed?, checkpoints, presence })
    }

    /// Which of these event ids were already applied (processed-id keys).
    pub async fn already_processed(
        &self,
        ids: &[uuid::Uuid],
    ) -> Result<std::collections::HashSet<uuid::Uuid>, StoreError> {
        let ids: Vec<String> = ids.iter().map(uuid::Uuid::to_string).collect();
        let found = find_by_ids(&self.db.collection::<Document>(collections::PROCESSED_EVENTS), &ids).await?;
        Ok(found.iter().filter_map(|d| d.get_str("_id").ok()?.parse().ok()).collect())
    }

    /// The indexes the query API's reads rely on. Idempotent.
    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        use mongodb::IndexModel;
        // Each list's index is its filter then its order (views::documents).
        let requests = self.db.collection::<Document>(collections::CONNECTION_REQUESTS);
        requests
            .create_index(
                IndexModel::builder().keys(doc! { "toUserId": 1, "status": 1, "createdAt": -1, "_id": -1 }).build(),
            )
            .await?;
        let connections = self.db.collection::<Document>(collections::CONNECTIONS);
        connections
            .create_index(IndexModel::builder().keys(doc! { "userId": 1, "connectedAt": -1, "requestId": -1 }).build())
            .await?;
        let notifications = self.db.collection::<Document>(collections::NOTIFICATIONS);
        notifications.create_index(IndexModel::builder().keys(doc! { "userId": 1, "_id": -1 }).build()).await?;
        let messages = self.db.collection::<Document>(collections::MESSAGES);
        messages.create_index(IndexModel::builder().keys(doc! { "pairKey": 1, "_id": -1 }).build()).await?;
        // What pruning selects by (`prune_processed`, `prune_sessions`).
        let processed = self.db.collection::<Document>(collections::PROCESSED_EVENTS);
        processed.create_index(IndexModel::builder().keys(doc! { "at": 1 }).build()).await?;
        let sessions = self.db.collection::<Document>(collections::SESSIONS);
        sessions.create_index(IndexModel::builder().keys(doc! { "expiresAt": 1 }).build()).await?;
        Ok(())
    }

    /// Forgets the processed-id keys recorded before `recorded_before`.
    /// Returns (keys dated, keys deleted).
    ///
    /// Why forgetting them cannot count an event twice (docs/design.md §3,
    /// "What the projector may forget"): a key is needed only while the
    /// same event id can still be applied from a record not covered by the
    /// stored checkpoint. The same record read again (a restart, a
    /// rebalance, a stale member, a gap rewind, `replay --in-place`) never
    /// needs it: a record below its partition's stored checkpoint was
    /// applied with that checkpoint, in one transaction, and `plan` skips
    /// its once-only effects whatever the keys say (`Plan::fence`, checked
    /// again in the transaction). Only another record with the same event
    /// id needs the key: a re-driven dead letter (`redrive`), which may be
    /// appended twice, or after its original was applied by a rebuild. So
    /// keys are kept for a retention measured from when they were recorded
    /// (`DEVCONNECT_PROJECTOR_PROCESSED_RETENTION`, 7 days), and a re-drive
    /// within that time is exact.
    pub async fn prune_processed(&self, recorded_before: DateTime<Utc>) -> Result<(u64, u64), StoreError> {
        let collection = self.db.collection::<Document>(collections::PROCESSED_EVENTS);
        // Keys written before they carried `at` are dated now, and so kept a
        // full retention from here. `{at: null}` also matches a missing
        // field, through the index: nothing to scan once all are dated.
        let now = mongodb::bson::DateTime::now();
        let dated = collection
            .update_many(doc! { "at": mongodb::bson::Bson::Null }, doc! { "$set": { "at": now } })
            .await?
            .modified_count;
        let cutoff = mongodb::bson::DateTime::from_millis(recorded_before.timestamp_millis());
        let deleted = collection.delete_many(doc! { "at": { "$lt": cutoff } }).await?.deleted_count;
        Ok((dated, deleted))
    }

    /// Deletes the sessions that ended before `ended_before`. Returns how
    /// many.
    ///
    /// Safe for authentication: the query API lets a token in when its
    /// session is absent from the view (not projected yet), so a session
    /// may only go once no token of it can pass on its own. Every access
    /// token of a session expires at the session's end at the latest
    /// (the command API's `access_expires_at`), and expiry is checked
    /// without leeway; refresh tokens expire at the end too. A revoked
    /// session is refused by the revocation records until its end, and by
    /// expiry after it. Callers keep a margin for clocks that disagree.
    pub async fn prune_sessions(&self, ended_before: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(self
            .db
            .collection::<Document>(collections::SESSIONS)
            .delete_many(doc! { "expiresAt": { "$lt": session_time(ended_before) } })
            .await?
            .deleted_count)
    }

    /// The applied position per partition, as the checkpoints say.
    pub async fn checkpoints(&self) -> Result<Vec<CheckpointDoc>, StoreError> {
        Ok(self.db.collection::<CheckpointDoc>(collections::CHECKPOINTS).find(doc! {}).await?.try_collect().await?)
    }
}

/// `SessionDoc::expires_at` as stored: RFC 3339 text in UTC (chrono's
/// serde form), whose text order is time order to the second.
fn session_time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::StoreError;

    #[test]
    fn session_ends_compare_as_stored() {
        use chrono::TimeZone;
        let at = |s: i64, ms: u32| chrono::Utc.timestamp_opt(s, ms * 1_000_000).single().expect("time");
        let stored = |t| match mongodb::bson::to_document(&views::SessionDoc {
            session_id: "s".into(),
            user_id: "u".into(),
            expires_at: t,
            revoked: false,
            version: 1,
        }) {
            Ok(doc) => doc.get_str("expiresAt").expect("expiresAt is stored as text").to_owned(),
            Err(err) => panic!("{err}"),
        };
        let cutoff = super::session_time(at(1_900_000_000, 0));
        assert!(stored(at(1_899_999_998, 250)) < cutoff);
        assert!(stored(at(1_899_999_999, 0)) < cutoff);
        assert!(stored(at(1_900_000_001, 0)) > cutoff);
        assert!(stored(at(1_900_000_001, 999)) > cutoff);
        assert!(stored(at(1_900_003_600, 0)) > cutoff);
    }

    #[test]
    fn conflicts_are_transient_and_rejected_writes_are_not() {
        let conflict = StoreError::WriteErrors { codes: vec![112], detail: String::new() };
        let rejected = StoreError::WriteErrors { codes: vec![2], detail: String::new() };
        let duplicate = StoreError::WriteErrors { codes: vec![11000], detail: String::new() };
        assert!(conflict.is_transient());
        assert!(duplicate.is_transient());
        assert!(!rejected.is_transient());
    }
}
