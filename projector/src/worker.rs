//! The consume → plan → apply → commit loop, shared by continuous
//! projection and rebuilds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use events::{Topic, TopicNames, decode_record};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::watch;
use views::generation::{CurrentGeneration, Generation};

use crate::plan::{self, Plan, Record};
use crate::positions::{Positions, StallWatch, StartAtCheckpoints};
use crate::store::{StoreError, ViewStore};

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub max_batch: usize,
    /// A batch ends when no record arrives for this long...
    pub linger: Duration,
    /// ...or when it has been filling for this long.
    pub max_batch_time: Duration,
    /// How long a heartbeat keeps a user online.
    pub presence_ttl: chrono::Duration,
    /// Failed attempts at a batch, with errors that are not transient,
    /// before the batch is taken apart to find and dead-letter the poison
    /// record. Transient errors (outages, conflicts) are retried forever.
    pub apply_attempts: u32,
}

/// Why a worker stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Shutdown,
    /// The pointer moved to another generation (continuous projection).
    GenerationChanged,
    /// Every partition reached the end the topics had (a rebuild).
    CaughtUp,
    /// The worker must be built afresh (a new consumer, which leaves the
    /// group and joins again, and positions re-read from the store): some
    /// partition lagged with nobody advancing it, or a seek failed.
    Rejoin,
}

/// What ends a worker besides errors.
pub struct Stops {
    pub shutdown: watch::Receiver<bool>,
    /// Follow the pointer: stop when it leaves `generation`.
    pub follow: Option<CurrentGeneration>,
    pub generation: Generation,
    /// Stop once caught up with the topics' high watermarks.
    pub when_caught_up: bool,
}

/// How a worker gets its partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partitions {
    /// Shared with the other members of the consumer group; offsets are
    /// committed for monitoring tools.
    Group,
    /// All of them, assigned directly: for a rebuild, which runs alone. No
    /// group join to wait for, and no wait for the session of a member that
    /// was killed to expire before a restarted rebuild gets its partitions.
    All,
}

impl Stops {
    /// Resolves on shutdown or a generation switch.
    async fn interrupted(&mut self) -> Ended {
        let Stops { shutdown, follow, generation, .. } = self;
        let switch = async {
            match follow.as_mut() {
                Some(follow) => loop {
                    if follow.changed().await != *generation {
                        return;
                    }
                },
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.changed() => Ended::Shutdown,
            () = switch => Ended::GenerationChanged,
        }
    }
}

pub struct Worker {
    pub consumer: StreamConsumer<StartAtCheckpoints>,
    pub dead_letters: FutureProducer,
    pub topics: TopicNames,
    pub store: ViewStore,
    pub settings: WorkerSettings,
    pub positions: Positions,
    /// Events applied so far, for rates.
    pub events_applied: Arc<AtomicU64>,
    pub partitions: Partitions,
    /// Lagging partitions of other members that stopped moving.
    pub stalls: StallWatch,
    /// Set while Redis refreshes fail: batches then record their cache keys
    /// as stale in the same transaction, and the keys are dropped once
    /// Redis answers again.
    pub caches_degraded: AtomicBool,
    /// Per partition, what the last gap there led to, until a batch lands.
    pub rewound: std::sync::Mutex<BTreeMap<(String, i32), GapRewind>>,
}

/// What a gap on a partition led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapRewind {
    /// Sought back to this stored position.
    To(i64),
    /// The same gap came again: the records before the batch are no longer
    /// in the log (retention), so nothing can fill it and the gap check is
    /// skipped on this partition.
    Unfillable,
}

/// Why a record could not be projected, for the dead-letter headers.
fn dead_letter_headers(message: &BorrowedMessage<'_>, reason: &str) -> OwnedHeaders {
    let partition = message.partition().to_string();
    let offset = message.offset().to_string();
    OwnedHeaders::new()
        .insert(Header { key: "dlq-reason", value: Some(reason) })
        .insert(Header { key: "dlq-origin-topic", value: Some(message.topic()) })
        .insert(Header { key: "dlq-origin-partition", value: Some(&partition) })
        .insert(Header { key: "dlq-origin-offset", value: Some(&offset) })
}

/// Next offset per partition past every one of `messages`.
fn checkpoints_past(messages: &[&BorrowedMessage<'_>]) -> BTreeMap<(String, i32), i64> {
    let mut checkpoints = BTreeMap::new();
    for message in messages {
        let next = checkpoints.entry((message.topic().to_owned(), message.partition())).or_insert(0);
        *next = (*next).max(message.offset() + 1);
    }
    checkpoints
}

/// Waits between attempts: 100 ms, doubling up to 5 s.
struct Backoff(platform::Backoff);

impl Backoff {
    fn new() -> Self {
        Self(platform::Backoff::new(Duration::from_millis(100), Duration::from_secs(5)))
    }

    fn next_ms(&self) -> u64 {
        self.0.next_delay().as_millis() as u64
    }

    /// Sleeps, unless the worker is stopped first (then says why).
    async fn wait(&mut self, stops: &mut Stops) -> Option<Ended> {
        tokio::select! {
            () = tokio::time::sleep(self.0.step()) => None,
            ended = stops.interrupted() => Some(ended),
        }
    }
}

/// How often the worker re-reads the store's checkpoints while it runs
/// (also while idle): to notice views the store lost, and partitions that
/// nobody advances.
const VERIFY_EVERY: Duration = Duration::from_secs(1);

/// How applying one batch went.
enum Outcome {
    Applied(Box<Plan>),
    /// Failed `apply_attempts` times with errors that are not transient.
    Poisoned(StoreError),
    Interrupted(Ended),
    /// The store lost what precedes the batch (partition, stored position).
    Gap(Vec<((String, i32), i64)>),
}

/// The one-by-one path checks no gaps, so it never sees one.
fn unreachable_gap() {
    tracing::error!("a gap reported without a gap check; the batch is re-read");
}

/// Offset of the first of `messages` per partition.
fn starts_of(messages: &[&BorrowedMessage<'_>]) -> BTreeMap<(String, i32), i64> {
    let mut starts = BTreeMap::new();
    for message in messages {
        let first = starts.entry((message.topic().to_owned(), message.partition())).or_insert(i64::MAX);
        *first = (*first).min(message.offset());
    }
    starts
}

impl Worker {
    /// Runs until stopped. A batch that fails with a transient error
    /// (outage, conflict) is retried with backoff and never skipped: the
    /// views may lag, never lose events. One that keeps failing otherwise is
    /// taken apart, and only the record that fails alone is dead-lettered.
    pub async fn run(self, mut stops: Stops) -> anyhow::Result<Ended> {
        let subscribed: Vec<String> = Topic::EVENT_TOPICS.iter().map(|t| self.topics.name(*t)).collect();
        match self.partitions {
            Partitions::Group => self.consumer.subscribe(&subscribed.iter().map(String::as_str).collect::<Vec<_>>())?,
            Partitions::All => {
                let mut backoff = Backoff::new();
                let all = loop {
                    match self.all_partitions(&subscribed) {
                        Ok(all) => break all,
                        Err(err) => {
                            tracing::warn!(error = %err, retry_in_ms = backoff.next_ms(), "reading the topics' partitions failed; retrying");
                            if let Some(ended) = backoff.wait(&mut stops).await {
                                return Ok(ended);
                            }
                        }
                    }
                };
                tracing::info!(
                    partitions = all.count(),
                    "assigned every partition; each starts at its checkpoint, or offset 0 without one"
                );
                self.consumer.assign(&all)?;
            }
        }
        if self.store.refreshes_caches() && self.store.has_stale_caches().await.unwrap_or(true) {
            // A Redis outage before a restart left keys to drop (or MongoDB
            // cannot say yet): repair before trusting the caches.
            self.caches_degraded.store(true, Ordering::Relaxed);
        }
        let mut consume_errors = Backoff::new();
        let mut last_verified = Instant::now();
        loop {
            if last_verified.elapsed() >= VERIFY_EVERY {
                last_verified = Instant::now();
                if let Some(ended) = self.verify().await {
                    return Ok(ended);
                }
            }
            if stops.when_caught_up && self.positions.total_lag() == Some(0) {
                return Ok(Ended::CaughtUp);
            }
            let first = tokio::select! {
                m = self.consumer.recv() => m,
                ended = stops.interrupted() => return Ok(ended),
                // Idle: wake up to verify the positions (and a rebuild to
                // re-check whether it has caught up).
                () = tokio::time::sleep(Duration::from_millis(200)) => continue,
            };
            let first = match first {
                Ok(first) => {
                    consume_errors = Backoff::new();
                    first
                }
                Err(err) => {
                    // The broker is gone or restarting: librdkafka reconnects
                    // by itself; wait, and say so once per backoff step.
                    tracing::warn!(error = %err, retry_in_ms = consume_errors.next_ms(), "consuming failed; waiting for the broker");
                    metrics::counter!("projector_consume_errors_total").increment(1);
                    if let Some(ended) = consume_errors.wait(&mut stops).await {
                        return Ok(ended);
                    }
                    continue;
                }
            };
            let mut messages = vec![first];
            // Quiet traffic: a lone record is applied after one short idle
            // gap. A backlog: records keep coming, and batches fill up.
            let deadline = Instant::now() + self.settings.max_batch_time;
            while messages.len() < self.settings.max_batch {
                let left = deadline.saturating_duration_since(Instant::now()).min(self.settings.linger);
                match tokio::time::timeout(left, self.consumer.recv()).await {
                    Ok(Ok(m)) => messages.push(m),
                    Ok(Err(err)) => {
                        tracing::warn!(error = %err, "consumer error while filling a batch");
                        break;
                    }
                    Err(_) => break,
                }
            }
            if let Some(ended) = self.process(&messages, &mut stops).await? {
                return Ok(ended);
            }
        }
    }

    /// Every partition of `topics`, each at its start offset.
    fn all_partitions(&self, topics: &[String]) -> anyhow::Result<TopicPartitionList> {
        let mut all = TopicPartitionList::new();
        for topic in topics {
            let metadata = self.consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
            for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
                all.add_partition_offset(topic, partition.id(), self.positions.start_offset(topic, partition.id()))?;
                self.positions.register(topic, partition.id());
            }
        }
        Ok(all)
    }

    /// The partitions this worker consumes now.
    fn owned(&self) -> BTreeSet<(String, i32)> {
        match self.partitions {
            Partitions::All => self.positions.snapshot().into_keys().collect(),
            Partitions::Group => self
                .consumer
                .assignment()
                .map(|list| list.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect())
                .unwrap_or_default(),
        }
    }

    /// Re-reads the store's checkpoints, which are the truth (written in
    /// the same transaction as the views):
    /// - a partition we own whose checkpoint is behind what we applied
    ///   means the store lost writes (a MongoDB killed within its sync
    ///   window, a replica-set rollback): seek back and apply them again;
    /// - partitions of other members take the store's position, for lag,
    ///   readiness, and to notice one that lags with nobody advancing it;
    /// - while caches are degraded, try to repair them.
    ///
    /// Returns why the worker must stop, if it must.
    async fn verify(&self) -> Option<Ended> {
        self.store.reap_orphaned_transactions().await;
        if self.caches_degraded.load(Ordering::Relaxed) {
            match self.store.repair_caches().await {
                Ok(dropped) => {
                    self.caches_degraded.store(false, Ordering::Relaxed);
                    tracing::info!(dropped, "redis answers again; dropped the cache keys written meanwhile");
                }
                Err(err) => tracing::debug!(error = %err, "caches not repaired yet"),
            }
        }
        let checkpoints = match self.store.checkpoints().await {
            Ok(checkpoints) => checkpoints,
            Err(err) => {
                tracing::debug!(error = %err, "reading the checkpoints failed; verifying later");
                return None;
            }
        };
        let stored: BTreeMap<(String, i32), i64> =
            checkpoints.into_iter().map(|c| ((c.topic, c.partition), c.next_offset)).collect();
        let owned = self.owned();
        for (partition, position) in self.positions.snapshot() {
            let in_store = stored.get(&partition).copied();
            if !owned.contains(&partition) {
                if let Some(next) = in_store {
                    self.positions.rewind(&partition.0, partition.1, next);
                }
                continue;
            }
            let Some(applied) = position.applied else { continue };
            if in_store.unwrap_or(0) >= applied {
                continue;
            }
            let (topic, number) = (&partition.0, partition.1);
            let restart_at = in_store.unwrap_or(0);
            tracing::warn!(
                topic,
                partition = number,
                applied,
                in_store = restart_at,
                "the view store lost applied batches; applying them again from the log"
            );
            metrics::counter!("projector_store_rewinds_total").increment(1);
            if let Err(ended) = self.seek_back(topic, number, restart_at) {
                return Some(ended);
            }
        }
        if self.partitions == Partitions::Group {
            let unowned = self.stalls.observe(&self.positions.snapshot(), &owned, Instant::now());
            metrics::gauge!("projector_unowned_partitions").set(unowned.len() as f64);
            if !unowned.is_empty() {
                tracing::warn!(
                    ?unowned,
                    "partitions lag and nobody advances them (a group member died without the group noticing); rejoining the group"
                );
                metrics::counter!("projector_rejoins_total").increment(1);
                return Some(Ended::Rejoin);
            }
        }
        None
    }

    async fn process(&self, messages: &[BorrowedMessage<'_>], stops: &mut Stops) -> anyhow::Result<Option<Ended>> {
        let started = Instant::now();
        let mut decoded: Vec<(&BorrowedMessage<'_>, Record)> = Vec::with_capacity(messages.len());
        for message in messages {
            match decode_record(message.payload().unwrap_or_default()) {
                Ok(commit) => decoded.push((
                    message,
                    Record {
                        topic: message.topic().to_owned(),
                        partition: message.partition(),
                        offset: message.offset(),
                        commit,
                    },
                )),
                Err(err) => self.dead_letter(message, &format!("undecodable: {err}")).await?,
            }
        }
        let all: Vec<&BorrowedMessage<'_>> = messages.iter().collect();
        // Dead-lettered records still move the checkpoint past themselves.
        let checkpoints = checkpoints_past(&all);
        let mut starts = starts_of(&all);
        let unfillable: Vec<(String, i32)> = {
            let rewound = self.rewound.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            starts.keys().filter(|p| rewound.get(*p) == Some(&GapRewind::Unfillable)).cloned().collect()
        };
        for partition in &unfillable {
            starts.remove(partition);
        }
        let records: Vec<Record> = decoded.iter().map(|(_, r)| r.clone()).collect();
        let events = match self.plan_and_write(&records, checkpoints.clone(), &starts, stops).await? {
            Outcome::Applied(plan) => plan.events,
            Outcome::Interrupted(ended) => return Ok(Some(ended)),
            Outcome::Gap(gaps) => return Ok(self.rewind_batch(&starts, &gaps)),
            Outcome::Poisoned(err) => {
                tracing::warn!(error = %err, records = records.len(), "a batch keeps failing; applying its records one by one");
                let mut events = 0;
                for (message, record) in &decoded {
                    let single = std::slice::from_ref(record);
                    // No gap check one by one: a dead-lettered record before
                    // this one has not moved the checkpoint yet.
                    match self.plan_and_write(single, checkpoints_past(&[message]), &BTreeMap::new(), stops).await? {
                        Outcome::Applied(plan) => events += plan.events,
                        Outcome::Interrupted(ended) => return Ok(Some(ended)),
                        Outcome::Gap(_) => unreachable_gap(),
                        Outcome::Poisoned(err) => {
                            let reason = format!("not applied after {} attempts: {err}", self.settings.apply_attempts);
                            self.dead_letter(message, &reason).await?;
                        }
                    }
                }
                // Only the checkpoints now: the poison is dead-lettered.
                let moved = Plan { checkpoints: checkpoints.clone(), ..Plan::default() };
                if let Some(ended) = self.write_until_landed(&moved, stops).await {
                    return Ok(Some(ended));
                }
                events
            }
        };
        self.commit_offsets(&checkpoints);
        {
            let mut rewound = self.rewound.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            rewound.retain(|partition, _| !checkpoints.contains_key(partition));
        }
        for ((topic, partition), next) in &checkpoints {
            self.positions.set_applied(topic, *partition, *next);
        }
        self.events_applied.fetch_add(events as u64, Ordering::Relaxed);
        metrics::counter!("projector_events_applied_total").increment(events as u64);
        metrics::histogram!("projector_batch_seconds").record(started.elapsed().as_secs_f64());
        tracing::debug!(
            records = messages.len(),
            events,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "batch applied"
        );
        Ok(None)
    }

    /// The store lost batches before this one: drop the batch, and seek
    /// every partition in it back, to the stored checkpoint where there is
    /// a gap and to the batch's own start elsewhere, so everything from
    /// there is applied again, in order.
    fn rewind_batch(&self, starts: &BTreeMap<(String, i32), i64>, gaps: &[((String, i32), i64)]) -> Option<Ended> {
        tracing::warn!(?gaps, "the view store lost applied batches; applying them again from the log");
        metrics::counter!("projector_store_rewinds_total").increment(1);
        let mut rewound = self.rewound.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for ((topic, partition), start) in starts {
            let mut at = *start;
            if let Some((key, stored)) = gaps.iter().find(|(gap, _)| gap.0 == *topic && gap.1 == *partition) {
                if rewound.get(key) == Some(&GapRewind::To(*stored)) {
                    tracing::error!(
                        topic,
                        partition,
                        stored,
                        start,
                        "the records before this batch are no longer in the log; applying from here"
                    );
                    rewound.insert(key.clone(), GapRewind::Unfillable);
                } else {
                    rewound.insert(key.clone(), GapRewind::To(*stored));
                    at = (*stored).min(*start);
                }
            }
            if let Err(ended) = self.seek_back(topic, *partition, at) {
                return Some(ended);
            }
        }
        None
    }

    /// Moves a partition this worker owns back to `next`, in its position
    /// and its consumer; a failed seek means the worker must be rebuilt.
    fn seek_back(&self, topic: &str, partition: i32, next: i64) -> Result<(), Ended> {
        self.positions.rewind(topic, partition, next);
        self.consumer.seek(topic, partition, Offset::Offset(next), Duration::from_secs(5)).map_err(|err| {
            tracing::warn!(error = %err, topic, partition, "seeking back failed; rejoining");
            Ended::Rejoin
        })
    }

    /// Plans `records` and writes the plan, retrying. Each attempt re-reads what
    /// the plan depends on (`ViewStore::prior`: processed-id keys, stored
    /// checkpoints, presence) and plans afresh: an attempt may fail because
    /// another projector (mid-rebalance) applied some of these records
    /// meanwhile (a duplicate key, or `StoreError::Moved`), and the next
    /// must skip them.
    async fn plan_and_write(
        &self,
        records: &[Record],
        checkpoints: BTreeMap<(String, i32), i64>,
        starts: &BTreeMap<(String, i32), i64>,
        stops: &mut Stops,
    ) -> anyhow::Result<Outcome> {
        let counted: Vec<uuid::Uuid> =
            records.iter().flat_map(|r| &r.commit).filter(|e| plan::counted(e)).map(|e| e.event_id).collect();
        let mut backoff = Backoff::new();
        let mut rejections = 0;
        loop {
            let lookup = Instant::now();
            // Presence is read only where changes are published (`Live`).
            let result = match self.store.prior(records, &counted, self.store.refreshes_caches()).await {
                Ok(prior) => {
                    tracing::debug!(
                        ids = counted.len(),
                        elapsed_ms = lookup.elapsed().as_millis() as u64,
                        "processed-id and checkpoint lookup"
                    );
                    let mut plan = plan::plan(records, self.settings.presence_ttl, &prior);
                    for (partition, next) in &checkpoints {
                        let held = plan.checkpoints.entry(partition.clone()).or_insert(0);
                        *held = (*held).max(*next);
                    }
                    self.store_plan(&plan, starts).await.map(|()| plan)
                }
                Err(err) => Err(err),
            };
            let err = match result {
                Ok(plan) => return Ok(Outcome::Applied(Box::new(plan))),
                Err(StoreError::Gap { gaps }) => return Ok(Outcome::Gap(gaps)),
                Err(err) => err,
            };
            metrics::counter!("projector_batch_failures_total").increment(1);
            if err.is_conflict() {
                self.store.reap_orphaned_transactions().await;
            }
            if !err.is_transient() {
                rejections += 1;
                if rejections >= self.settings.apply_attempts {
                    return Ok(Outcome::Poisoned(err));
                }
            }
            tracing::warn!(error = %err, retry_in_ms = backoff.next_ms(), "applying a batch failed; retrying");
            if let Some(ended) = backoff.wait(stops).await {
                return Ok(Outcome::Interrupted(ended));
            }
        }
    }

    /// Stores a plan: MongoDB first (the views, and while caches are
    /// degraded the keys they leave stale, in one transaction), then the
    /// caches. A failed cache refresh does not fail the batch: its keys are
    /// recorded as stale and dropped once Redis is back, and the views go on.
    async fn store_plan(&self, plan: &Plan, starts: &BTreeMap<(String, i32), i64>) -> Result<(), StoreError> {
        if !self.store.refreshes_caches() {
            return self.store.write(plan, &[], starts).await;
        }
        let degraded = self.caches_degraded.load(Ordering::Relaxed);
        let keys = self.store.cache_keys(plan);
        self.store.write(plan, if degraded { &keys } else { &[] }, starts).await?;
        if degraded {
            return Ok(());
        }
        let started = Instant::now();
        let refreshed = self.store.refresh_caches(plan).await;
        metrics::histogram!("projector_cache_seconds").record(started.elapsed().as_secs_f64());
        let Err(err) = refreshed else { return Ok(()) };
        tracing::warn!(error = %err, "refreshing the caches failed; the views go on, and these keys are dropped once redis is back");
        metrics::counter!("projector_cache_failures_total").increment(1);
        self.caches_degraded.store(true, Ordering::Relaxed);
        // The views already hold the batch: record its keys before anything
        // else is applied (retrying while MongoDB is unreachable too).
        let mut backoff = platform::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        while let Err(err) = self.store.record_stale(&keys).await {
            tracing::warn!(error = %err, retry_in_ms = backoff.next_delay().as_millis() as u64, "recording stale cache keys failed; retrying");
            backoff.wait().await;
        }
        Ok(())
    }

    /// Writes a plan that cannot be poison (checkpoints only), until it lands.
    async fn write_until_landed(&self, plan: &Plan, stops: &mut Stops) -> Option<Ended> {
        let mut backoff = Backoff::new();
        while let Err(err) = self.store_plan(plan, &BTreeMap::new()).await {
            tracing::warn!(error = %err, "moving the checkpoints failed; retrying");
            if let Some(ended) = backoff.wait(stops).await {
                return Some(ended);
            }
        }
        None
    }

    /// Commits the group offsets, only after MongoDB and Redis acknowledged.
    /// They are for monitoring tools: partitions start at the view store's
    /// checkpoints (`StartAtCheckpoints`).
    fn commit_offsets(&self, checkpoints: &BTreeMap<(String, i32), i64>) {
        if self.partitions != Partitions::Group {
            return;
        }
        let mut list = TopicPartitionList::new();
        for ((topic, partition), next) in checkpoints {
            if let Err(err) = list.add_partition_offset(topic, *partition, Offset::Offset(*next)) {
                tracing::warn!(error = %err, "bad offset to commit");
            }
        }
        if let Err(err) = self.consumer.commit(&list, CommitMode::Sync) {
            // The views already hold the batch and re-applying is a no-op;
            // a rebalance is the usual cause. Not fatal.
            tracing::warn!(error = %err, "committing offsets failed; the batch may be re-read (harmlessly)");
        }
    }

    /// Appends a record to the dead-letter topic, retrying with backoff
    /// while the broker is unreachable: a record is never skipped unless it
    /// is safely in `dead-letters`.
    async fn dead_letter(&self, message: &BorrowedMessage<'_>, reason: &str) -> anyhow::Result<()> {
        tracing::error!(
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            reason,
            "dead-lettering a record"
        );
        let topic = self.topics.name(Topic::DeadLetters);
        let key = message.key().unwrap_or_default();
        let mut backoff = platform::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            let record = FutureRecord::to(&topic)
                .key(key)
                .payload(message.payload().unwrap_or_default())
                .headers(dead_letter_headers(message, reason));
            match self.dead_letters.send(record, Duration::from_secs(30)).await {
                Ok(_) => break,
                Err((err, _)) => {
                    tracing::warn!(error = %err, retry_in_ms = backoff.next_delay().as_millis() as u64, "dead-lettering failed; retrying");
                    backoff.wait().await;
                }
            }
        }
        metrics::counter!("projector_dead_letters_total").increment(1);
        Ok(())
    }
}
