//! One batch, from the records consumed to the offsets committed: decode,
//! plan and write with retries, take a batch that keeps failing apart to
//! dead-letter only its poison, then move the positions. The loop in
//! `mod.rs` only gathers the records.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use events::decode_record;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};

use super::{Backoff, Ended, GapRewind, Partitions, Stops, Worker};
use crate::plan::{self, Plan, Record};
use crate::store::StoreError;

/// Next offset per partition past every one of `messages`.
fn checkpoints_past(messages: &[&BorrowedMessage<'_>]) -> BTreeMap<(String, i32), i64> {
    let mut checkpoints = BTreeMap::new();
    for message in messages {
        let next = checkpoints.entry((message.topic().to_owned(), message.partition())).or_insert(0);
        *next = (*next).max(message.offset() + 1);
    }
    checkpoints
}

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
    pub(super) async fn process(
        &self,
        messages: &[BorrowedMessage<'_>],
        stops: &mut Stops,
    ) -> anyhow::Result<Option<Ended>> {
        let started = Instant::now();
        let mut decoded: Vec<(&BorrowedMessage<'_>, Record)> = Vec::with_capacity(messages.len());
        for message in messages {
            if !self.markers.admit(message) {
                continue;
            }
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
            Outcome::Gap(gaps) => {
                // The rewind starts at the stored checkpoints, perhaps below
                // anything this process has read: judge from the epochs
                // stored there. Without them, start afresh (which reads them).
                match self.store.checkpoints().await {
                    Ok(stored) => stored.iter().for_each(|checkpoint| self.markers.seed(checkpoint)),
                    Err(err) => {
                        tracing::warn!(error = %err, "reading the checkpoints for a rewind failed; rejoining");
                        return Ok(Some(Ended::Rejoin));
                    }
                }
                return Ok(self.rewind_batch(&starts, &gaps));
            }
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
                let moved = Plan {
                    markers: self.markers.of(checkpoints.keys()),
                    checkpoints: checkpoints.clone(),
                    ..Plan::default()
                };
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
            // Its caches are refreshed (or recorded as stale): a later
            // assignment of this partition to this process starts past it.
            self.positions.set_refresh_from(topic, *partition, None);
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
                    plan.markers = self.markers.of(plan.checkpoints.keys());
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
}
