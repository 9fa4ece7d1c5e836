//! The first phase of `projector replay` into a new generation: read the
//! log up to where it ended when the rebuild started, fold each chunk per
//! document in memory (`fold`), and write each final document once with
//! bulk inserts, instead of one guarded statement per event
//! (docs/design.md §16). The statement-per-event worker then takes over
//! from the checkpoints for whatever arrived meanwhile.
//!
//! Safe because nobody reads a generation before the switch, and only this
//! rebuild writes it. A chunk lands in three steps: its new documents
//! (inserts), its statements for documents already stored (idempotent),
//! then one small transaction with what must count once (counters, daily
//! stats) and the checkpoints. A run killed in between leaves documents
//! the next run finds stored (it loads their ids) and re-applies
//! idempotently, and processed-id keys it discards (`discard_uncommitted`).
//!
//! Memory: two chunks of folded documents at most (`--chunk-events`; one
//! written while the next is read), plus 16 bytes
//! per stored document and per counted event of the whole log (the ids
//! that tell stored documents and duplicate events apart).

pub mod evaluate;
pub mod fold;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use events::decode_record;
use events::owner::MarkerIndex;
use mongodb::bson::{DateTime as BsonDateTime, RawDocumentBuf};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use self::fold::{Chunk, Fold};
use crate::Pipeline;
use crate::markers::Markers;
use crate::plan::{self, Plan, Prior, Record};
use crate::positions::{self, Positions};
use crate::store::{COUNTED_COLLECTIONS, ChunkCommit, StoreError, ViewStore};

/// Records planned together before folding (the plan's own batching).
const PLAN_RECORDS: usize = 2_000;
/// Processed ids sent to the writer at a time, ahead of their chunk.
const PROCESSED_BATCH: usize = 5_000;

#[derive(Debug, Clone, Copy)]
pub struct CoalesceSettings {
    /// Events folded in memory before a chunk is written.
    pub chunk_events: usize,
    pub presence_ttl: chrono::Duration,
}

/// How the coalescing ended.
#[derive(Debug, Default)]
pub struct Coalesced {
    pub events: u64,
    pub documents: u64,
    pub statements: u64,
    pub chunks: u64,
    /// Stopped by a signal: what committed stays, the rest is for the next run.
    pub interrupted: bool,
}

/// What the writer task is given, in order.
enum Job {
    Processed {
        ids: Vec<uuid::Uuid>,
        stamp: BsonDateTime,
    },
    Chunk {
        chunk: Chunk,
        checkpoints: BTreeMap<(String, i32), i64>,
        /// The owner markers known there, for the checkpoints' epochs.
        markers: BTreeMap<(String, i32), MarkerIndex>,
        stamp: BsonDateTime,
        /// Held until the chunk is written (`Reader::chunk_slot`).
        _slot: tokio::sync::OwnedSemaphorePermit,
    },
}

/// Reads, folds and writes up to the end the log had at the start.
/// `events` and `positions` report progress as chunks commit.
pub async fn run(
    pipeline: &Pipeline,
    store: &ViewStore,
    settings: CoalesceSettings,
    events: &Arc<AtomicU64>,
    positions: &Positions,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Coalesced> {
    let started = Instant::now();
    // A killed run's open transaction may hold the progress record until
    // it is reaped: these writes wait for that, like the chunks'.
    let retrying = Retrying { store, shutdown: shutdown.clone() };
    let committed = retrying.run("discarding uncommitted keys", |_| store.discard_uncommitted()).await?;
    let base = committed.unwrap_or_else(BsonDateTime::now);
    retrying.run("starting the coalescing", |_| store.begin_coalescing(base)).await?;
    let stored = store.checkpoints().await?;
    let markers = Markers::default();
    stored.iter().for_each(|checkpoint| markers.seed(checkpoint));
    let checkpoints: BTreeMap<(String, i32), i64> =
        stored.into_iter().map(|c| ((c.topic, c.partition), c.next_offset)).collect();
    let mut fold = Fold::default();
    let mut seen = HashSet::new();
    if !checkpoints.is_empty() || committed.is_some() {
        load_stored(store, &mut fold, &mut seen).await?;
    }
    let targets = targets(pipeline, &checkpoints, positions).await?;
    if targets.is_empty() {
        retrying.run("ending the coalescing", |_| store.end_coalescing()).await?;
        return Ok(Coalesced::default());
    }
    tracing::info!(
        partitions = targets.len(),
        records = targets.values().map(|(start, end)| end - start).sum::<i64>(),
        stored_documents = fold.stored_documents(),
        "coalescing the log into final documents"
    );
    let consumer = assigned_consumer(pipeline, &targets)?;
    let (jobs, receiver) = mpsc::channel(4);
    let writer =
        tokio::spawn(write_jobs(store.clone(), receiver, Arc::clone(events), positions.clone(), shutdown.clone()));
    let mut reader = Reader {
        fold,
        seen,
        starts: checkpoints,
        markers,
        jobs,
        settings,
        pending_processed: Vec::new(),
        chunk_checkpoints: BTreeMap::new(),
        stamp: next_stamp(base),
        chunk_slot: Arc::new(tokio::sync::Semaphore::new(1)),
        outcome: Coalesced::default(),
    };
    let read = reader.read(&consumer, targets, &mut shutdown).await;
    let Reader { jobs, mut outcome, .. } = reader;
    drop(jobs);
    let written = writer.await?;
    match (read, written) {
        (Ok(()), Ok(())) if !outcome.interrupted => {
            retrying.run("ending the coalescing", |_| store.end_coalescing()).await?;
        }
        (Ok(()), Ok(())) => {}
        (read, written) => {
            // What committed stays; the keys of the chunk that did not are
            // deleted now, so the per-event path does not take them as applied.
            // The writer's error is the cause when the reader only saw it stop.
            let err = written.err().or(read.err()).unwrap_or_else(|| anyhow::anyhow!("unknown"));
            tracing::warn!(
                error = format!("{err:#}"),
                "coalescing stopped; the per-event path continues from the checkpoints"
            );
            // Done before the per-event path records a key of its own.
            retrying.run("discarding uncommitted keys", |_| store.discard_uncommitted()).await?;
            retrying.run("ending the coalescing", |_| store.end_coalescing()).await?;
            outcome.interrupted = false;
        }
    }
    tracing::info!(
        events = outcome.events,
        documents = outcome.documents,
        statements = outcome.statements,
        chunks = outcome.chunks,
        seconds = started.elapsed().as_secs_f64(),
        "coalesced"
    );
    Ok(outcome)
}

/// The ids of every stored document and processed event: a resumed run
/// must neither insert what a killed one wrote nor count an event twice.
async fn load_stored(store: &ViewStore, fold: &mut Fold, seen: &mut HashSet<uuid::Uuid>) -> anyhow::Result<()> {
    let started = Instant::now();
    for (collection, _) in Plan::default().statements_by_collection() {
        for id in store.stored_ids(collection).await? {
            fold.mark_stored(collection, &id);
        }
    }
    seen.extend(store.processed_ids().await?);
    tracing::info!(
        documents = fold.stored_documents(),
        processed = seen.len(),
        seconds = started.elapsed().as_secs_f64(),
        "resuming: loaded the ids the store holds"
    );
    Ok(())
}

/// (start, end) offsets of every partition with records to fold: from the
/// stored checkpoint to the high watermark now.
async fn targets(
    pipeline: &Pipeline,
    checkpoints: &BTreeMap<(String, i32), i64>,
    positions: &Positions,
) -> anyhow::Result<BTreeMap<(String, i32), (i64, i64)>> {
    let client: BaseConsumer = platform::kafka::client_config(&pipeline.config.kafka.brokers).create()?;
    let (topics, highs) = (pipeline.event_topics(), positions.clone());
    tokio::task::spawn_blocking(move || {
        positions::read_high_watermarks(&client, &topics, &highs, Duration::from_secs(10))
    })
    .await??;
    let mut targets = BTreeMap::new();
    for ((topic, partition), position) in positions.snapshot() {
        let start = checkpoints.get(&(topic.clone(), partition)).copied().unwrap_or(0);
        positions.set_applied(&topic, partition, start);
        if let Some(high) = position.high.filter(|high| *high > start) {
            targets.insert((topic, partition), (start, high));
        }
    }
    Ok(targets)
}

fn assigned_consumer(
    pipeline: &Pipeline,
    targets: &BTreeMap<(String, i32), (i64, i64)>,
) -> anyhow::Result<StreamConsumer> {
    let consumer: StreamConsumer = platform::kafka::client_config(&pipeline.config.kafka.brokers)
        .set("group.id", format!("{}-coalesce", pipeline.config.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        // Tansu holds every fetch for the whole wait (docs/stack.md).
        .set("fetch.wait.max.ms", "10")
        // Folding is slower than fetching: a deep prefetch queue would
        // only hold memory (librdkafka's default is 64 MB).
        .set("queued.max.messages.kbytes", "16384")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for ((topic, partition), (start, _)) in targets {
        assignment.add_partition_offset(topic, *partition, Offset::Offset(*start))?;
    }
    consumer.assign(&assignment)?;
    Ok(consumer)
}

/// A stamp past `after`, now if the clock allows.
fn next_stamp(after: BsonDateTime) -> BsonDateTime {
    BsonDateTime::from_millis(BsonDateTime::now().timestamp_millis().max(after.timestamp_millis() + 1))
}

struct Reader {
    fold: Fold,
    /// Counted events already applied (their ids), in this run or a killed one.
    seen: HashSet<uuid::Uuid>,
    /// The stored checkpoints at the start: every record read is past them.
    starts: BTreeMap<(String, i32), i64>,
    /// The reader rule (`crate::markers`).
    markers: Markers,
    jobs: mpsc::Sender<Job>,
    settings: CoalesceSettings,
    pending_processed: Vec<uuid::Uuid>,
    chunk_checkpoints: BTreeMap<(String, i32), i64>,
    /// The current chunk's stamp.
    stamp: BsonDateTime,
    /// One permit: a folded chunk waits for the previous one to be
    /// written, so at most two chunks are in memory (one being written,
    /// one being read) and reading still overlaps writing.
    chunk_slot: Arc<tokio::sync::Semaphore>,
    outcome: Coalesced,
}

impl Reader {
    async fn read(
        &mut self,
        consumer: &StreamConsumer,
        mut targets: BTreeMap<(String, i32), (i64, i64)>,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        // A chunk ends at the first plan batch that fills it.
        let batch = PLAN_RECORDS.min(self.settings.chunk_events);
        let mut records = Vec::with_capacity(batch);
        while !targets.is_empty() {
            let message = tokio::select! {
                message = tokio::time::timeout(Duration::from_secs(30), consumer.recv()) => message,
                _ = shutdown.wait_for(|stop| *stop) => {
                    self.outcome.interrupted = true;
                    return Ok(());
                }
            };
            let message = message.map_err(|_| anyhow::anyhow!("no record for 30 s below the watermark"))??;
            let partition = (message.topic().to_owned(), message.partition());
            let Some(&(_, end)) = targets.get(&partition) else { continue };
            if message.offset() >= end {
                continue;
            }
            if !self.markers.admit(&message) {
                // Still read: the checkpoint moves past it with the chunk.
                let at = self.chunk_checkpoints.entry(partition.clone()).or_insert(0);
                *at = (*at).max(message.offset() + 1);
                if message.offset() + 1 >= end {
                    targets.remove(&partition);
                }
                continue;
            }
            match decode_record(message.payload().unwrap_or_default()) {
                Ok(commit) => {
                    records.push(Record {
                        topic: partition.0.clone(),
                        partition: partition.1,
                        offset: message.offset(),
                        commit,
                    });
                }
                Err(err) => {
                    // The per-event path dead-letters it: stop before it.
                    tracing::info!(error = %err, topic = %partition.0, partition = partition.1, offset = message.offset(), "an undecodable record; coalescing stops before it");
                    break;
                }
            }
            if message.offset() + 1 >= end {
                targets.remove(&partition);
            }
            if records.len() >= batch {
                self.fold_records(std::mem::take(&mut records)).await?;
            }
        }
        self.fold_records(records).await?;
        self.send_chunk().await
    }

    async fn fold_records(&mut self, records: Vec<Record>) -> anyhow::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let processed = records
            .iter()
            .flat_map(|r| &r.commit)
            .filter(|e| plan::counted(e) && self.seen.contains(&e.event_id))
            .map(|e| e.event_id)
            .collect();
        let prior = Prior { processed, checkpoints: self.starts.clone(), presence: Default::default() };
        let plan = plan::plan(&records, self.settings.presence_ttl, &prior);
        self.fold.apply(&plan)?;
        for (partition, next) in &plan.checkpoints {
            let at = self.chunk_checkpoints.entry(partition.clone()).or_insert(0);
            *at = (*at).max(*next);
        }
        self.seen.extend(plan.processed.iter().copied());
        self.pending_processed.extend(plan.processed);
        if self.pending_processed.len() >= PROCESSED_BATCH {
            self.send_processed().await?;
        }
        if self.fold.events() >= self.settings.chunk_events {
            self.send_chunk().await?;
        }
        Ok(())
    }

    async fn send_processed(&mut self) -> anyhow::Result<()> {
        let ids = std::mem::take(&mut self.pending_processed);
        if !ids.is_empty() {
            self.send(Job::Processed { ids, stamp: self.stamp }).await?;
        }
        Ok(())
    }

    async fn send_chunk(&mut self) -> anyhow::Result<()> {
        self.send_processed().await?;
        let chunk = self.fold.take_chunk();
        let checkpoints = std::mem::take(&mut self.chunk_checkpoints);
        if checkpoints.is_empty() {
            return Ok(());
        }
        self.outcome.events += chunk.events as u64;
        self.outcome.documents += chunk.documents() as u64;
        self.outcome.statements += chunk.statement_count() as u64;
        self.outcome.chunks += 1;
        let stamp = self.stamp;
        self.stamp = next_stamp(stamp);
        let slot = Arc::clone(&self.chunk_slot).acquire_owned().await?;
        let markers = self.markers.of(checkpoints.keys());
        self.send(Job::Chunk { chunk, checkpoints, markers, stamp, _slot: slot }).await
    }

    async fn send(&self, job: Job) -> anyhow::Result<()> {
        self.jobs.send(job).await.map_err(|_| anyhow::anyhow!("the coalescing writer stopped"))
    }
}

/// Writes the jobs in order; stops at the first failure that is not
/// transient (the reader then finds the channel closed).
async fn write_jobs(
    store: ViewStore,
    mut jobs: mpsc::Receiver<Job>,
    events: Arc<AtomicU64>,
    positions: Positions,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let retrying = Retrying { store: &store, shutdown };
    while let Some(job) = jobs.recv().await {
        match job {
            Job::Processed { ids, stamp } => {
                retrying.run("recording processed ids", |_| store.record_processed_stamped(&ids, stamp)).await?;
            }
            Job::Chunk { chunk, checkpoints, markers, stamp, _slot } => {
                let started = Instant::now();
                let (documents, statements, chunk_events) = (chunk.documents(), chunk.statement_count(), chunk.events);
                write_chunk(&retrying, chunk, &checkpoints, markers, stamp).await?;
                events.fetch_add(chunk_events as u64, Ordering::Relaxed);
                for ((topic, partition), next) in &checkpoints {
                    positions.set_applied(topic, *partition, *next);
                }
                tracing::info!(
                    documents,
                    statements,
                    events = chunk_events,
                    seconds = started.elapsed().as_secs_f64(),
                    "chunk written"
                );
            }
        }
    }
    Ok(())
}

/// Runs a write until it lands, as the per-event worker does: transient
/// failures (an outage, a conflict with the open transaction of a killed
/// run, which `reap_orphaned_transactions` aborts) wait and try again;
/// anything else, or a stop signal, ends the coalescing.
struct Retrying<'a> {
    store: &'a ViewStore,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl Retrying<'_> {
    /// `write` is told whether it is a retry.
    async fn run<T, F, Fut>(&self, what: &str, mut write: F) -> anyhow::Result<T>
    where
        F: FnMut(bool) -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        // The worker's schedule (`worker::Backoff`).
        let mut backoff = platform::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut retry = false;
        loop {
            match write(retry).await {
                Ok(done) => return Ok(done),
                Err(err) if err.is_transient() && !*self.shutdown.borrow() => {
                    tracing::warn!(error = %err, what, "a coalescing write failed; retrying");
                    self.store.reap_orphaned_transactions().await;
                    backoff.wait().await;
                    retry = true;
                }
                Err(err) => return Err(anyhow::Error::new(err).context(what.to_owned())),
            }
        }
    }
}

/// New documents, then statements for stored ones, then the transaction
/// with the counted collections and the checkpoints.
async fn write_chunk(
    retrying: &Retrying<'_>,
    mut chunk: Chunk,
    checkpoints: &BTreeMap<(String, i32), i64>,
    markers: BTreeMap<(String, i32), MarkerIndex>,
    stamp: BsonDateTime,
) -> anyhow::Result<()> {
    let store = retrying.store;
    let mut commit =
        ChunkCommit { inserts: Vec::new(), statements: Vec::new(), checkpoints: checkpoints.clone(), markers, stamp };
    for counted in COUNTED_COLLECTIONS {
        if let Some((collection, documents)) = chunk.inserts.remove_entry(counted) {
            let documents = documents.iter().map(RawDocumentBuf::to_document).collect::<Result<_, _>>()?;
            commit.inserts.push((collection, documents));
        }
        if let Some((collection, statements)) = chunk.statements.remove_entry(counted) {
            commit.statements.push((collection, statements));
        }
    }
    for (collection, documents) in &chunk.inserts {
        retrying.run("inserting documents", |retry| store.insert_new(collection, documents, retry)).await?;
    }
    for (collection, statements) in &chunk.statements {
        retrying.run("updating stored documents", |_| store.run_statements(collection, statements)).await?;
    }
    retrying.run("committing a chunk", |_| store.commit_chunk(&commit)).await
}
