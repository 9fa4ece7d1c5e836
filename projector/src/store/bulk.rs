//! The writes of a coalescing rebuild (`crate::coalesce`): bulk inserts of
//! final documents, statements for documents already stored, and per chunk
//! one small transaction with what must land exactly once (counters, daily
//! stats, checkpoints, the chunk's stamp).
//!
//! Processed-id keys are written ahead of their chunk's transaction, so
//! their inserts overlap the reading of the log; each carries its chunk's
//! stamp as `at`, and keys stamped after the last committed chunk belong to
//! a chunk that never committed: `discard_uncommitted` deletes them before
//! anything relies on them (docs/design.md §16).

use futures::TryStreamExt;
use mongodb::bson::{DateTime as BsonDateTime, Document, RawArrayBuf, RawDocumentBuf, doc};
use views::collections;

use super::write::checkpoint_statement;
use super::{DUPLICATE_KEY, StoreError, ViewStore};

/// Where a coalescing rebuild records the stamp of its last committed
/// chunk. Deleted when the coalescing ends (`end_coalescing`), so the
/// finished generation holds views only.
const PROGRESS: &str = "coalesce_progress";
const PROGRESS_ID: &str = "coalesce";

/// Most documents or statements sent in one command.
const COMMAND_BATCH: usize = 10_000;

/// Collections whose statements are not idempotent (`$inc`): written only
/// in a chunk's transaction.
pub const COUNTED_COLLECTIONS: [&str; 2] = [collections::NOTIFICATION_COUNTERS, collections::DAILY_STATS];

/// What a chunk's transaction writes.
#[derive(Debug)]
pub struct ChunkCommit {
    /// Per counted collection: new documents and statements for stored ones.
    pub inserts: Vec<(&'static str, Vec<Document>)>,
    pub statements: Vec<(&'static str, Vec<RawDocumentBuf>)>,
    /// Next offset per (topic, partition).
    pub checkpoints: std::collections::BTreeMap<(String, i32), i64>,
    /// The owner markers known per partition, for the checkpoints' epochs.
    pub markers: std::collections::BTreeMap<(String, i32), events::owner::MarkerIndex>,
    pub stamp: BsonDateTime,
}

/// `ViewStore::update_command` for statements kept encoded: the bytes are
/// copied into the command as they are, never decoded.
fn raw_update_command(collection: &str, statements: &[RawDocumentBuf]) -> RawDocumentBuf {
    let updates: RawArrayBuf = statements.iter().cloned().collect();
    let mut command = RawDocumentBuf::new();
    command.append("update", collection);
    command.append("updates", updates);
    command.append("ordered", true);
    command
}

impl ViewStore {
    /// Every `_id` in `collection`, as strings.
    pub async fn stored_ids(&self, collection: &str) -> Result<Vec<String>, StoreError> {
        let mut cursor = self.db.collection::<Document>(collection).find(doc! {}).projection(doc! { "_id": 1 }).await?;
        // One id at a time: a resumed rebuild reads every stored id, and a
        // whole collection of documents at once would be a spike of its own.
        let mut ids = Vec::new();
        while let Some(document) = cursor.try_next().await? {
            if let Ok(id) = document.get_str("_id") {
                ids.push(id.to_owned());
            }
        }
        Ok(ids)
    }

    /// Inserts documents the store does not hold. A duplicate means the
    /// caller's idea of the store is wrong: an error, never skipped, except
    /// on a `retry` of the same documents, where it is the part of the
    /// first attempt that landed before it failed.
    pub async fn insert_new(
        &self,
        collection: &str,
        documents: &[RawDocumentBuf],
        retry: bool,
    ) -> Result<(), StoreError> {
        for batch in documents.chunks(COMMAND_BATCH) {
            let batch = batch.iter().map(RawDocumentBuf::to_document).collect::<Result<Vec<_>, _>>();
            let batch =
                batch.map_err(|err| StoreError::Unexpected(format!("a folded document does not decode: {err}")))?;
            let insert = doc! { "insert": collection, "documents": batch, "ordered": false };
            let reply = self.db.run_command(insert).await?;
            match Self::check_write_errors(&reply) {
                Err(StoreError::WriteErrors { codes, .. }) if retry && codes.iter().all(|c| *c == DUPLICATE_KEY) => {}
                Err(StoreError::WriteErrors { codes, detail }) if codes.contains(&DUPLICATE_KEY) => {
                    return Err(StoreError::Unexpected(format!("a document to insert is already stored: {detail}")));
                }
                other => other?,
            }
        }
        Ok(())
    }

    /// Runs idempotent statements (version-guarded, `$addToSet`) in order.
    pub async fn run_statements(&self, collection: &str, statements: &[RawDocumentBuf]) -> Result<(), StoreError> {
        for batch in statements.chunks(COMMAND_BATCH) {
            let reply = self.db.run_raw_command(raw_update_command(collection, batch)).await?;
            Self::check_write_errors(&reply)?;
        }
        Ok(())
    }

    /// Processed-id keys stamped with their chunk; a key already there (a
    /// killed run wrote it) is left as it is.
    pub async fn record_processed_stamped(&self, ids: &[uuid::Uuid], stamp: BsonDateTime) -> Result<(), StoreError> {
        for batch in ids.chunks(COMMAND_BATCH) {
            let documents: Vec<Document> = batch.iter().map(|id| doc! { "_id": id.to_string(), "at": stamp }).collect();
            let insert = doc! { "insert": collections::PROCESSED_EVENTS, "documents": documents, "ordered": false };
            let reply = self.db.run_command(insert).await?;
            match Self::check_write_errors(&reply) {
                Err(StoreError::WriteErrors { codes, .. }) if codes.iter().all(|c| *c == DUPLICATE_KEY) => {}
                other => other?,
            }
        }
        Ok(())
    }

    /// A chunk's once-only part, in one transaction: counters and daily
    /// stats, the checkpoints, and the chunk's stamp.
    pub async fn commit_chunk(&self, commit: &ChunkCommit) -> Result<(), StoreError> {
        let mut session = self.begin_transaction().await?;
        let outcome = async {
            for (collection, documents) in &commit.inserts {
                let insert = doc! { "insert": *collection, "documents": documents, "ordered": true };
                Self::check_write_errors(&self.db.run_command(insert).session(&mut session).await?)?;
            }
            let checkpoints: Vec<Document> = commit
                .checkpoints
                .iter()
                .map(|(partition, next)| checkpoint_statement(partition, *next, None, commit.markers.get(partition)))
                .collect();
            let progress = vec![doc! {
                "q": { "_id": PROGRESS_ID },
                "u": { "$set": { "committed": commit.stamp } },
                "upsert": true,
            }];
            for (collection, statements) in &commit.statements {
                let command = raw_update_command(collection, statements);
                Self::check_write_errors(&self.db.run_raw_command(command).session(&mut session).await?)?;
            }
            let fixed = [(collections::CHECKPOINTS, checkpoints.as_slice()), (PROGRESS, progress.as_slice())];
            for (collection, statements) in fixed {
                let reply =
                    self.db.run_command(Self::update_command(collection, statements)).session(&mut session).await?;
                Self::check_write_errors(&reply)?;
            }
            Ok::<_, StoreError>(())
        }
        .await;
        Self::end_transaction(session, outcome).await
    }

    /// Deletes the processed-id keys of chunks that never committed, and
    /// returns the stamp of the last one that did (`begin_coalescing`).
    /// Without one, no coalescing is under way: every key counts.
    pub async fn discard_uncommitted(&self) -> Result<Option<BsonDateTime>, StoreError> {
        let progress = self.db.collection::<Document>(PROGRESS).find_one(doc! { "_id": PROGRESS_ID }).await?;
        let Some(committed) = progress.and_then(|p| p.get_datetime("committed").ok().copied()) else {
            return Ok(None);
        };
        let filter = doc! { "at": { "$gt": committed } };
        let deleted = self.db.collection::<Document>(collections::PROCESSED_EVENTS).delete_many(filter).await?;
        if deleted.deleted_count > 0 {
            tracing::info!(keys = deleted.deleted_count, "discarded processed ids of a chunk that never committed");
        }
        Ok(Some(committed))
    }

    /// Records that a coalescing starts past `base`: every key stamped
    /// later belongs to a chunk and counts only once that chunk commits.
    pub async fn begin_coalescing(&self, base: BsonDateTime) -> Result<(), StoreError> {
        let set = doc! { "$set": { "committed": base } };
        self.db.collection::<Document>(PROGRESS).update_one(doc! { "_id": PROGRESS_ID }, set).upsert(true).await?;
        Ok(())
    }

    /// The coalescing is over: its progress record goes. (Deleted, not
    /// dropped: SecantusDB's collection drop waits on an orphaned
    /// transaction that holds the record, and never returns.)
    pub async fn end_coalescing(&self) -> Result<(), StoreError> {
        self.db.collection::<Document>(PROGRESS).delete_one(doc! { "_id": PROGRESS_ID }).await?;
        Ok(())
    }

    /// Every processed event id in the store.
    pub async fn processed_ids(&self) -> Result<Vec<uuid::Uuid>, StoreError> {
        let ids = self.stored_ids(collections::PROCESSED_EVENTS).await?;
        Ok(ids.iter().filter_map(|id| id.parse().ok()).collect())
    }
}
