//! The consume → plan → apply → commit loop, shared by continuous
//! projection and rebuilds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use events::{Topic, TopicNames, decode_record};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::watch;
use views::generation::{CurrentGeneration, Generation};

use crate::plan::{self, Plan, Record};
use crate::positions::{Positions, StartAtCheckpoints};
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
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Self(Duration::from_millis(100))
    }

    /// Sleeps, unless the worker is stopped first (then says why).
    async fn wait(&mut self, stops: &mut Stops) -> Option<Ended> {
        tokio::select! {
            () = tokio::time::sleep(self.0) => {},
            ended = stops.interrupted() => return Some(ended),
        }
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
        None
    }
}

/// How applying one batch went.
enum Outcome {
    Applied(Box<Plan>),
    /// Failed `apply_attempts` times with errors that are not transient.
    Poisoned(StoreError),
    Interrupted(Ended),
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
                let mut all = TopicPartitionList::new();
                for topic in &subscribed {
                    let metadata = self.consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
                    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
                        all.add_partition_offset(
                            topic,
                            partition.id(),
                            self.positions.start_offset(topic, partition.id()),
                        )?;
                        self.positions.register(topic, partition.id());
                    }
                }
                tracing::info!(
                    partitions = all.count(),
                    "assigned every partition; each starts at its checkpoint, or offset 0 without one"
                );
                self.consumer.assign(&all)?;
            }
        }
        loop {
            if stops.when_caught_up && self.positions.total_lag() == Some(0) {
                return Ok(Ended::CaughtUp);
            }
            let first = tokio::select! {
                m = self.consumer.recv() => m,
                ended = stops.interrupted() => return Ok(ended),
                // A rebuild re-checks whether it has caught up.
                () = tokio::time::sleep(Duration::from_millis(200)), if stops.when_caught_up => continue,
            };
            let mut messages = vec![first?];
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
        let records: Vec<Record> = decoded.iter().map(|(_, r)| r.clone()).collect();
        let events = match self.apply(&records, checkpoints.clone(), stops).await? {
            Outcome::Applied(plan) => plan.events,
            Outcome::Interrupted(ended) => return Ok(Some(ended)),
            Outcome::Poisoned(err) => {
                tracing::warn!(error = %err, records = records.len(), "a batch keeps failing; applying its records one by one");
                let mut events = 0;
                for (message, record) in &decoded {
                    let single = std::slice::from_ref(record);
                    match self.apply(single, checkpoints_past(&[message]), stops).await? {
                        Outcome::Applied(plan) => events += plan.events,
                        Outcome::Interrupted(ended) => return Ok(Some(ended)),
                        Outcome::Poisoned(err) => {
                            let reason = format!("not applied after {} attempts: {err}", self.settings.apply_attempts);
                            self.dead_letter(message, &reason).await?;
                        }
                    }
                }
                // Only the checkpoints now: the poison is dead-lettered.
                let moved = Plan { checkpoints: checkpoints.clone(), ..Plan::default() };
                if let Some(ended) = self.apply_unbounded(&moved, stops).await {
                    return Ok(Some(ended));
                }
                events
            }
        };
        self.commit_offsets(&checkpoints);
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

    /// Plans and applies `records`, retrying. Each attempt re-reads the
    /// processed-id keys and plans afresh: an attempt may fail because
    /// another projector (mid-rebalance) applied some of these events
    /// meanwhile, and the next must skip them.
    async fn apply(
        &self,
        records: &[Record],
        checkpoints: BTreeMap<(String, i32), i64>,
        stops: &mut Stops,
    ) -> anyhow::Result<Outcome> {
        let counted: Vec<uuid::Uuid> =
            records.iter().flat_map(|r| &r.commit).filter(|e| plan::counted(e)).map(|e| e.event_id).collect();
        let mut backoff = Backoff::new();
        let mut rejections = 0;
        loop {
            let lookup = Instant::now();
            let result = match self.store.already_processed(&counted).await {
                Ok(processed) => {
                    tracing::debug!(
                        ids = counted.len(),
                        elapsed_ms = lookup.elapsed().as_millis() as u64,
                        "processed-id lookup"
                    );
                    let mut plan = plan::plan(records, self.settings.presence_ttl, &processed);
                    for (partition, next) in &checkpoints {
                        let held = plan.checkpoints.entry(partition.clone()).or_insert(0);
                        *held = (*held).max(*next);
                    }
                    self.store.apply(&plan).await.map(|()| plan)
                }
                Err(err) => Err(err),
            };
            let err = match result {
                Ok(plan) => return Ok(Outcome::Applied(Box::new(plan))),
                Err(err) => err,
            };
            metrics::counter!("projector_batch_failures_total").increment(1);
            if !err.is_transient() {
                rejections += 1;
                if rejections >= self.settings.apply_attempts {
                    return Ok(Outcome::Poisoned(err));
                }
            }
            tracing::warn!(error = %err, retry_in_ms = backoff.0.as_millis() as u64, "applying a batch failed; retrying");
            if let Some(ended) = backoff.wait(stops).await {
                return Ok(Outcome::Interrupted(ended));
            }
        }
    }

    /// Applies a plan that cannot be poison (checkpoints only), until it lands.
    async fn apply_unbounded(&self, plan: &Plan, stops: &mut Stops) -> Option<Ended> {
        let mut backoff = Backoff::new();
        while let Err(err) = self.store.apply(plan).await {
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

    async fn dead_letter(&self, message: &BorrowedMessage<'_>, reason: &str) -> anyhow::Result<()> {
        tracing::error!(
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            reason,
            "dead-lettering a record"
        );
        metrics::counter!("projector_dead_letters_total").increment(1);
        let topic = self.topics.name(Topic::DeadLetters);
        let key = message.key().unwrap_or_default();
        let record = FutureRecord::to(&topic)
            .key(key)
            .payload(message.payload().unwrap_or_default())
            .headers(dead_letter_headers(message, reason));
        self.dead_letters
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(err, _)| anyhow::anyhow!("dead-lettering: {err}"))?;
        Ok(())
    }
}
