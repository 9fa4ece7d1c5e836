//! The consume → plan → apply → commit loop, shared by continuous
//! projection and rebuilds.
//!
//! This file holds the worker's settings and stops and the loop that
//! gathers records into batches. `batch` applies one batch, `verify` keeps
//! the positions true to the store's checkpoints (seeking back over what
//! the store lost), and `dead_letters` sets aside records that cannot be
//! projected.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use events::{Topic, TopicNames};
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::FutureProducer;
use tokio::sync::{Notify, watch};
use views::generation::{CurrentGeneration, Generation};

use crate::positions::{Positions, StallWatch, StartAtCheckpoints};
use crate::store::ViewStore;

mod batch;
mod dead_letters;
mod verify;

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
    /// Idle this long, a group member pauses its partitions (`wake.rs`);
    /// zero never pauses.
    pub idle_pause: Duration,
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
    /// The dead-letter producer, made when first needed.
    pub dead_letters: tokio::sync::OnceCell<FutureProducer>,
    pub dead_letter_brokers: String,
    pub topics: TopicNames,
    pub store: ViewStore,
    pub settings: WorkerSettings,
    pub positions: Positions,
    /// The owner markers known per partition: the reader rule.
    pub markers: crate::markers::Markers,
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
    /// Woken when the command API announces an append (`wake.rs`).
    pub wake: Arc<Notify>,
    /// Whether Redis lost the caches since they were filled (`verify`).
    pub cache_loss: CacheLossWatch,
}

/// What tells the worker that Redis lost cached views: keys without expiry
/// (profiles, relation sets) are not refilled by time passing, so a loss
/// must be noticed and repaired.
#[derive(Debug, Default)]
pub struct CacheLossWatch {
    /// Redis' `run_id` when last checked: a restart changes it.
    run_id: std::sync::Mutex<Option<String>>,
    /// A refill from MongoDB is under way in this process.
    refilling: Arc<AtomicBool>,
    /// Partitions whose checkpoint is ahead of their refreshed mark, with
    /// that checkpoint and since when.
    behind: std::sync::Mutex<BTreeMap<(String, i32), (i64, Instant)>>,
}

/// Pausing the partitions while nothing happens (`wake.rs`): a paused
/// consumer sends the broker no fetch at all.
struct IdlePause {
    /// `None`: never pause (a rebuild, or switched off).
    after: Option<Duration>,
    paused: bool,
    last_record: Instant,
}

impl IdlePause {
    fn new(after: Option<Duration>) -> Self {
        Self { after, paused: false, last_record: Instant::now() }
    }

    /// Pauses once idle for `after` with nothing left to apply, and resumes
    /// when the watermark poll shows records (the safety net for a lost
    /// announcement). While paused it pauses again each turn: partitions a
    /// rebalance assigned meanwhile start unpaused.
    fn decide(&mut self, consumer: &StreamConsumer<StartAtCheckpoints>, positions: &Positions) {
        let Some(after) = self.after else { return };
        // A partition that starts at its last batch again (`refresh_from`)
        // has records to read though its lag is 0: pausing it would leave
        // that batch's caches unrefreshed until the next append.
        let caught_up = positions.total_lag() == Some(0) && !refresh_pending(consumer, positions);
        if self.paused && !caught_up {
            self.wake(consumer, "records are waiting");
        } else if self.paused || (caught_up && self.last_record.elapsed() >= after) {
            if !self.paused {
                tracing::debug!("idle: pausing the partitions until an append");
            }
            self.paused = set_paused(consumer, true);
            metrics::gauge!("projector_idle_paused").set(if self.paused { 1.0 } else { 0.0 });
        }
    }

    fn wake(&mut self, consumer: &StreamConsumer<StartAtCheckpoints>, why: &str) {
        tracing::debug!(why, "resuming the partitions");
        set_paused(consumer, false);
        self.paused = false;
        metrics::gauge!("projector_idle_paused").set(0.0);
        self.last_record = Instant::now();
    }

    fn saw_record(&mut self, consumer: &StreamConsumer<StartAtCheckpoints>) {
        if self.paused {
            // A partition assigned while paused delivered: fetch them all.
            self.wake(consumer, "a record arrived");
        }
        self.last_record = Instant::now();
    }
}

/// Whether a partition assigned to this worker is still to re-read the
/// last batch stored there (`PartitionPosition::refresh_from`).
fn refresh_pending(consumer: &StreamConsumer<StartAtCheckpoints>, positions: &Positions) -> bool {
    consumer
        .assignment()
        .is_ok_and(|assigned| assigned.elements().iter().any(|e| positions.refresh_pending(e.topic(), e.partition())))
}

/// Pauses or resumes every assigned partition; true when they are now
/// paused.
fn set_paused(consumer: &StreamConsumer<StartAtCheckpoints>, pause: bool) -> bool {
    let result = consumer
        .assignment()
        .and_then(|assigned| if pause { consumer.pause(&assigned) } else { consumer.resume(&assigned) });
    match result {
        Ok(()) => pause,
        Err(err) => {
            tracing::warn!(error = %err, pause, "pausing or resuming the partitions failed; fetching meanwhile");
            false
        }
    }
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

impl Worker {
    /// Runs until stopped. A batch that fails with a transient error
    /// (outage, conflict) is retried with backoff and never skipped: the
    /// views may lag, never lose events. One that keeps failing otherwise is
    /// taken apart, and only the record that fails alone is dead-lettered.
    pub async fn run(self, mut stops: Stops) -> anyhow::Result<Ended> {
        if let Some(ended) = self.take_partitions(&mut stops).await? {
            return Ok(ended);
        }
        if self.store.refreshes_caches() && self.store.has_stale_caches().await.unwrap_or(true) {
            // A Redis outage before a restart left keys to drop (or MongoDB
            // cannot say yet): repair before trusting the caches.
            self.caches_degraded.store(true, Ordering::Relaxed);
        }
        let mut consume_errors = Backoff::new();
        let mut last_verified = Instant::now();
        let mut idle = IdlePause::new(
            (self.partitions == Partitions::Group).then_some(self.settings.idle_pause).filter(|p| !p.is_zero()),
        );
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
            idle.decide(&self.consumer, &self.positions);
            let first = tokio::select! {
                m = self.consumer.recv() => m,
                ended = stops.interrupted() => return Ok(ended),
                () = self.wake.notified(), if idle.paused => {
                    idle.wake(&self.consumer, "an append was announced");
                    continue;
                }
                // Idle: wake up to verify the positions (and a rebuild to
                // re-check whether it has caught up).
                () = tokio::time::sleep(Duration::from_millis(200)) => continue,
            };
            let first = match first {
                Ok(first) => {
                    consume_errors = Backoff::new();
                    idle.saw_record(&self.consumer);
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
            let messages = self.fill_batch(first).await;
            if let Some(ended) = self.process(&messages, &mut stops).await? {
                return Ok(ended);
            }
        }
    }

    /// Subscribes (a group member) or assigns every partition (a rebuild).
    /// `Some` when stopped before it could.
    async fn take_partitions(&self, stops: &mut Stops) -> anyhow::Result<Option<Ended>> {
        let subscribed: Vec<String> = Topic::EVENT_TOPICS.iter().map(|t| self.topics.name(*t)).collect();
        if self.partitions == Partitions::Group {
            self.consumer.subscribe(&subscribed.iter().map(String::as_str).collect::<Vec<_>>())?;
            return Ok(None);
        }
        let mut backoff = Backoff::new();
        let all = loop {
            match self.all_partitions(&subscribed) {
                Ok(all) => break all,
                Err(err) => {
                    tracing::warn!(error = %err, retry_in_ms = backoff.next_ms(), "reading the topics' partitions failed; retrying");
                    if let Some(ended) = backoff.wait(stops).await {
                        return Ok(Some(ended));
                    }
                }
            }
        };
        tracing::info!(
            partitions = all.count(),
            "assigned every partition; each starts at its checkpoint, or offset 0 without one"
        );
        self.consumer.assign(&all)?;
        Ok(None)
    }

    /// A batch starting with `first`. Quiet traffic: a lone record is
    /// applied after one short idle gap. A backlog: records keep coming,
    /// and batches fill up.
    async fn fill_batch<'a>(&'a self, first: BorrowedMessage<'a>) -> Vec<BorrowedMessage<'a>> {
        let mut messages = vec![first];
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
        messages
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
}
