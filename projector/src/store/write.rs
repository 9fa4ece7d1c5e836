//! The MongoDB half of a batch: one transaction with the views, the
//! processed-id keys and the checkpoints, so the checkpoint never runs
//! ahead of the views. Kept apart from `mod.rs` (the store's reads,
//! indexes and pruning) because its steps and their order are what keep a
//! repeated or overlapping batch from landing twice.

use std::collections::{BTreeMap, HashMap};

use events::owner::MarkerIndex;
use mongodb::ClientSession;
use mongodb::bson::{Bson, Document, doc};
use views::{CheckpointDoc, collections};

use super::{StoreError, ViewStore};
use crate::plan::{Creation, Plan};

impl ViewStore {
    /// Applies the MongoDB half of a plan in one transaction: the views,
    /// the processed-id keys, the checkpoints, and `stale` (cache keys to
    /// drop once Redis is back, while it is not). The caches are refreshed
    /// separately (`refresh_caches`), so a Redis outage never stops the views.
    ///
    /// `starts` holds, per partition, the offset of the batch's first
    /// record: the transaction checks that the stored checkpoint has reached
    /// it (else `StoreError::Gap`), so a batch never lands on views that
    /// lost what came before it. Empty: no check.
    pub async fn write(
        &self,
        plan: &Plan,
        stale: &[String],
        starts: &BTreeMap<(String, i32), i64>,
    ) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        self.write_views(plan, stale, starts).await?;
        metrics::histogram!("projector_mongo_seconds").record(started.elapsed().as_secs_f64());
        tracing::debug!(mongo_ms = started.elapsed().as_millis() as u64, "batch stored");
        Ok(())
    }

    /// The transaction around `write_in_transaction`: any failure inside
    /// aborts it, so nothing of the batch lands unless all of it does.
    async fn write_views(
        &self,
        plan: &Plan,
        stale: &[String],
        starts: &BTreeMap<(String, i32), i64>,
    ) -> Result<(), StoreError> {
        let checkpoints = checkpoint_statements(plan);
        let stale: Vec<Document> = stale.iter().map(Self::stale_statement).collect();
        let mut session = self.begin_transaction().await?;
        let outcome = self.write_in_transaction(plan, &stale, &checkpoints, starts, &mut session).await;
        Self::end_transaction(session, outcome).await
    }

    /// A transaction on a session the leases know of, so a successor can
    /// abort it if this process dies before `end_transaction`.
    pub(super) async fn begin_transaction(&self) -> Result<ClientSession, StoreError> {
        let mut session = self.client.start_session().await?;
        self.leases.note(session.id()).await?;
        session.start_transaction().await?;
        Ok(session)
    }

    /// Commits if `outcome` is a success, else aborts and returns its error.
    pub(super) async fn end_transaction(
        mut session: ClientSession,
        outcome: Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        if let Err(err) = outcome {
            let _ = session.abort_transaction().await;
            return Err(err);
        }
        session.commit_transaction().await?;
        Ok(())
    }

    /// The transaction's steps, in order: check the positions, record the
    /// processed ids, create the new documents, then update every
    /// collection.
    async fn write_in_transaction(
        &self,
        plan: &Plan,
        stale: &[Document],
        checkpoints: &[Document],
        starts: &BTreeMap<(String, i32), i64>,
        session: &mut ClientSession,
    ) -> Result<(), StoreError> {
        self.check_positions(starts, &plan.fence, session).await?;
        self.record_processed(&plan.processed, session).await?;
        let fallbacks = self.create_documents(&plan.creations, session).await?;
        self.update_collections(plan, stale, checkpoints, fallbacks, session).await
    }

    /// The processed-id keys, before any view: if another projector applied
    /// these events meanwhile (a rebalance), the duplicate key aborts this
    /// transaction and the retry finds them processed. `at` (when recorded)
    /// is what pruning goes by (`prune_processed`).
    async fn record_processed(&self, processed: &[uuid::Uuid], session: &mut ClientSession) -> Result<(), StoreError> {
        if processed.is_empty() {
            return Ok(());
        }
        let at = mongodb::bson::DateTime::now();
        let ids: Vec<Document> = processed.iter().map(|id| doc! { "_id": id.to_string(), "at": at }).collect();
        let insert = doc! { "insert": collections::PROCESSED_EVENTS, "documents": ids, "ordered": true };
        let result = self.db.run_command(insert).session(&mut *session).await;
        result.map_err(StoreError::from).and_then(|reply| Self::check_write_errors(&reply))
    }

    /// Inserts each collection's created documents where absent; returns,
    /// per collection, the statements to run for those that exist.
    async fn create_documents(
        &self,
        creations: &BTreeMap<&'static str, Vec<Creation>>,
        session: &mut ClientSession,
    ) -> Result<HashMap<&'static str, Vec<Document>>, StoreError> {
        let mut fallbacks = HashMap::new();
        for (collection, creations) in creations {
            let otherwise = self.insert_absent(collection, creations, session).await?;
            fallbacks.insert(*collection, otherwise);
        }
        Ok(fallbacks)
    }

    /// One `update` command per collection, the fallbacks of created
    /// documents first.
    async fn update_collections(
        &self,
        plan: &Plan,
        stale: &[Document],
        checkpoints: &[Document],
        mut fallbacks: HashMap<&'static str, Vec<Document>>,
        session: &mut ClientSession,
    ) -> Result<(), StoreError> {
        // Collections written by creations alone still run the fallbacks of
        // documents that exist (a repeated batch).
        let extra: [(&str, &[Document]); 2] =
            [(collections::STALE_CACHES, stale), (collections::CHECKPOINTS, checkpoints)];
        let batches = plan.statements_by_collection().into_iter().chain(extra);
        for (collection, planned) in batches {
            // A created document's fallback precedes any later change to it.
            let mut statements = fallbacks.remove(collection).unwrap_or_default();
            statements.extend(planned.iter().cloned());
            if statements.is_empty() {
                continue;
            }
            let statements = &statements;
            let started = std::time::Instant::now();
            let result = self.db.run_command(Self::update_command(collection, statements)).session(&mut *session).await;
            tracing::trace!(
                collection,
                statements = statements.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "update"
            );
            result.map_err(StoreError::from).and_then(|reply| Self::check_write_errors(&reply))?;
        }
        debug_assert!(fallbacks.is_empty(), "creations in a collection missing from `batches`: {:?}", fallbacks.keys());
        Ok(())
    }

    /// Reads the stored checkpoints of the batch's partitions in the
    /// transaction, and fails
    /// - with `Gap` when one is below the batch's first offset there
    ///   (`starts`): the store lost what precedes the batch;
    /// - with `Moved` when one differs from what the plan assumed (`fence`):
    ///   its once-only effects were planned against another position.
    ///
    /// The transaction also writes each of these checkpoints, so a batch
    /// another projector commits after this read makes the commit fail
    /// with a write conflict: what was read here still holds at commit.
    async fn check_positions(
        &self,
        starts: &BTreeMap<(String, i32), i64>,
        fence: &BTreeMap<(String, i32), i64>,
        session: &mut mongodb::ClientSession,
    ) -> Result<(), StoreError> {
        let partitions: std::collections::BTreeSet<(String, i32)> =
            starts.keys().chain(fence.keys()).cloned().collect();
        if partitions.is_empty() {
            return Ok(());
        }
        let stored = self.read_checkpoints(&partitions, Some(session)).await?;
        let at = |partition: &(String, i32)| stored.get(partition).copied().unwrap_or(0);
        let gaps: Vec<((String, i32), i64)> = starts
            .iter()
            .filter(|(partition, start)| at(partition) < **start)
            .map(|(partition, _)| (partition.clone(), at(partition)))
            .collect();
        if !gaps.is_empty() {
            return Err(StoreError::Gap { gaps });
        }
        let moved: Vec<((String, i32), i64, i64)> = fence
            .iter()
            .filter(|(partition, planned)| at(partition) != **planned)
            .map(|(partition, planned)| (partition.clone(), *planned, at(partition)))
            .collect();
        if moved.is_empty() { Ok(()) } else { Err(StoreError::Moved { moved }) }
    }

    /// Inserts the created documents that do not exist yet, in the
    /// transaction; returns the statements to run for those that do (or
    /// that the batch creates twice).
    async fn insert_absent(
        &self,
        collection: &str,
        creations: &[crate::plan::Creation],
        session: &mut mongodb::ClientSession,
    ) -> Result<Vec<Document>, StoreError> {
        let ids: Vec<mongodb::bson::Bson> = creations.iter().map(|c| c.id.clone().into()).collect();
        let mut found = self
            .db
            .collection::<Document>(collection)
            .find(doc! { "_id": { "$in": ids } })
            .projection(doc! { "_id": 1 })
            .session(&mut *session)
            .await?;
        let mut present = std::collections::HashSet::new();
        while let Some(document) = found.next(&mut *session).await.transpose()? {
            if let Ok(id) = document.get_str("_id") {
                present.insert(id.to_owned());
            }
        }
        let (mut inserts, mut otherwise) = (Vec::new(), Vec::new());
        for creation in creations {
            if present.insert(creation.id.clone()) {
                inserts.push(creation.document.clone());
            } else {
                otherwise.push(creation.otherwise.clone());
            }
        }
        if !inserts.is_empty() {
            let insert = doc! { "insert": collection, "documents": inserts, "ordered": true };
            let reply = self.db.run_command(insert).session(&mut *session).await?;
            Self::check_write_errors(&reply)?;
        }
        Ok(otherwise)
    }
}

/// Each partition's checkpoint statement (`checkpoint_statement`), with
/// where the batch started there (`Plan::first_offsets`).
fn checkpoint_statements(plan: &Plan) -> Vec<Document> {
    plan.checkpoints
        .iter()
        .map(|(partition, next)| {
            let first = plan.first_offsets.get(partition).copied();
            checkpoint_statement(partition, *next, first, plan.markers.get(partition))
        })
        .collect()
}

/// A partition's checkpoint statement: the stored next offset raised to
/// `next`, never lowered (`$max`), and `refreshFrom`, the first offset of
/// the batch whose cache refresh follows this transaction (`next` when the
/// batch holds no record there, or writes no caches).
///
/// With them, the owner epochs in force there (`events::owner`), so a
/// reader that starts at either offset judges records as one that read the
/// partition from offset 0 would: `epoch` at `nextOffset` (raised with it:
/// the epoch at an offset only grows with the offset) and `refreshEpoch` at
/// `refreshFrom`.
pub(super) fn checkpoint_statement(
    (topic, partition): &(String, i32),
    next: i64,
    first: Option<i64>,
    markers: Option<&MarkerIndex>,
) -> Document {
    let refresh_from = first.unwrap_or(next);
    let mut set = doc! {
        "topic": topic.as_str(),
        "partition": *partition,
        "nextOffset": { "$max": [ { "$ifNull": ["$nextOffset", 0_i64] }, next ] },
        "refreshFrom": refresh_from,
    };
    if let Some(markers) = markers {
        if let Some(epoch) = markers.epoch_before(next) {
            set.insert("epoch", doc! { "$max": [ { "$ifNull": ["$epoch", -1_i64] }, epoch ] });
        }
        set.insert("refreshEpoch", markers.epoch_before(refresh_from).map_or(Bson::Null, Bson::Int64));
    }
    doc! {
        "q": { "_id": CheckpointDoc::id_for(topic, *partition) },
        "u": [ { "$set": set } ],
        "upsert": true,
    }
}
