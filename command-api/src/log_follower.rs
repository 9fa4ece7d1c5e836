//! The write model follows the log, and our own appends are read back
//! before they are answered (docs/scale-out.md §2, "Acknowledging").
//!
//! One consumer reads every partition in order from where the write model
//! stands and folds each record into the model by the owner rule
//! (`events::owner`): the only path by which a record reaches the model
//! once the service runs. So records other writers append (an import, a
//! re-driven dead letter) reach the model without a restart, and a command's
//! own events are folded exactly as a reader from offset 0 would fold them.
//!
//! The broker's acknowledgement says a record landed at offset `o`; it does
//! not say the record counts. It counts only if no other owner marker lies
//! between this instance's marker and `o`: a newer claim (another instance
//! started on the same topics, or this one was paused past a successor's
//! start) makes every reader ignore it. So an append is answered only once
//! this reader has read its partition past `o`, seen no such marker, and
//! folded it ([`LogFollower::confirm`]).
//!
//! Idle (no command waiting and nothing read for a while), it pauses its
//! partitions: a fetch on Tansu costs a storage query per partition even
//! when nothing arrives (docs/stack.md). While paused it polls the high
//! watermarks every second, and reads again when a partition grew.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use events::owner::{MarkerIndex, RecordKind, Verdict};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::Notify;

use crate::model::{Position, WriteModel};

#[derive(Debug, thiserror::Error)]
pub enum ConfirmError {
    /// A newer marker precedes the record: it will never count.
    #[error("{topic}[{partition}] was claimed again at offset {marker}, before our record at {offset}")]
    Fenced { topic: String, partition: i32, marker: i64, offset: i64 },
    /// The record was not read back in time: whether it counts is unknown.
    #[error("our record at {topic}[{partition}]@{offset} was not read back within {waited:?}")]
    TimedOut { topic: String, partition: i32, offset: i64, waited: Duration },
}

/// How far one partition has been read and folded, and the markers seen there.
#[derive(Debug, Default)]
struct Progress {
    next: i64,
    markers: MarkerIndex,
}

pub struct LogFollower {
    consumer: StreamConsumer,
    /// For the high watermarks while paused.
    watermarks: Arc<BaseConsumer>,
    model: Arc<RwLock<WriteModel>>,
    /// Held while a record is folded, and by a claim while it reads the log
    /// into the model itself: two readers folding one partition at once
    /// could each take the other's records for read.
    folding: tokio::sync::Mutex<()>,
    progress: Mutex<HashMap<(String, i32), Progress>>,
    /// Woken whenever a partition was read further.
    advanced: Notify,
    /// Read-backs under way; the consumer pauses when none has been for `idle`.
    waiting: AtomicUsize,
    /// Woken by a read-back that starts, to resume a paused consumer.
    wake: Notify,
    /// Whether the partitions are paused; locked while they are paused,
    /// resumed or reassigned, so the flag always says what the consumer does.
    paused: Mutex<bool>,
    idle: Duration,
    timeout: Duration,
}

impl std::fmt::Debug for LogFollower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogFollower").field("waiting", &self.waiting.load(Ordering::Relaxed)).finish_non_exhaustive()
    }
}

impl LogFollower {
    /// A follower of an empty model, with nothing assigned yet
    /// ([`LogFollower::restart_at`]).
    pub fn new(brokers: &str, fetch_wait: Duration, timeout: Duration) -> anyhow::Result<Arc<Self>> {
        let consumer: StreamConsumer = platform::kafka::client_config(brokers)
            .set("group.id", "command-api-follower")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", fetch_wait.as_millis().max(1).to_string())
            // After a broker restart, be back within a second: commands
            // wait for this reader (librdkafka backs off up to 10 s).
            .set("reconnect.backoff.max.ms", "1000")
            .create()?;
        Ok(Arc::new(Self {
            consumer,
            watermarks: Arc::new(platform::kafka::client_config(brokers).create()?),
            model: Arc::default(),
            folding: tokio::sync::Mutex::new(()),
            progress: Mutex::default(),
            advanced: Notify::new(),
            waiting: AtomicUsize::new(0),
            wake: Notify::new(),
            paused: Mutex::new(false),
            idle: Duration::from_secs(2),
            // An acknowledged record exists; reading it back is only a
            // matter of time, and answering without it is an unknown
            // outcome for the client. So wait longer than for the broker.
            timeout: timeout.max(Duration::from_secs(10)),
        }))
    }

    /// The model it folds into.
    pub fn model(&self) -> Arc<RwLock<WriteModel>> {
        Arc::clone(&self.model)
    }

    /// Stops folding until the guard is dropped: the holder reads the log
    /// into the model itself (`CommandService::claim`).
    pub async fn hold(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.folding.lock().await
    }

    /// Forgets every partition: nothing is folded until `restart_at`.
    pub fn forget(&self) {
        self.progress.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }

    /// Reads every partition again from `from` (the write model's next
    /// offsets, right after it read up to this instance's markers). Called
    /// with every command lock held, so no read-back is waiting, and with
    /// the folding held (`hold`).
    pub fn restart_at(&self, from: &[(String, i32, i64)]) -> anyhow::Result<()> {
        let mut assignment = TopicPartitionList::new();
        let mut progress = self.progress.lock().unwrap_or_else(PoisonError::into_inner);
        progress.clear();
        for (topic, partition, next) in from {
            assignment.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
            progress.insert((topic.clone(), *partition), Progress { next: *next, markers: MarkerIndex::default() });
        }
        let mut paused = self.paused.lock().unwrap_or_else(PoisonError::into_inner);
        self.consumer.assign(&assignment)?;
        // librdkafka keeps a partition paused across a new assignment.
        self.consumer.resume(&assignment)?;
        *paused = false;
        Ok(())
    }

    /// Reads until the process ends. Spawn it once.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let (mut last_active, mut last_poll) = (Instant::now(), Instant::now());
        loop {
            tokio::select! {
                message = self.consumer.recv(), if !self.is_paused() => match message {
                    Ok(message) => {
                        last_active = Instant::now();
                        let _folding = self.folding.lock().await;
                        self.take(&message);
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "following the log failed; retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                () = self.wake.notified() => {
                    last_active = Instant::now();
                    self.set_paused(false);
                }
                _ = tick.tick() => {
                    if self.waiting.load(Ordering::Acquire) > 0 {
                        last_active = Instant::now();
                        // A resume that failed is tried again.
                        self.set_paused(false);
                    } else if !self.is_paused() {
                        if last_active.elapsed() >= self.idle {
                            self.set_paused(true);
                        }
                    } else if last_poll.elapsed() >= Duration::from_secs(1) {
                        last_poll = Instant::now();
                        if self.log_grew().await {
                            last_active = Instant::now();
                            self.set_paused(false);
                        }
                    }
                }
            }
        }
    }

    /// Whether a partition's high watermark is past what was read: another
    /// writer appended while the follower was paused.
    async fn log_grew(&self) -> bool {
        let read: Vec<((String, i32), i64)> = {
            let progress = self.progress.lock().unwrap_or_else(PoisonError::into_inner);
            progress.iter().map(|(key, at)| (key.clone(), at.next)).collect()
        };
        let client = Arc::clone(&self.watermarks);
        let polled = tokio::task::spawn_blocking(move || {
            read.into_iter().any(|((topic, partition), next)| {
                client.fetch_watermarks(&topic, partition, Duration::from_secs(5)).is_ok_and(|(_, high)| high > next)
            })
        })
        .await;
        polled.unwrap_or(false)
    }

    fn is_paused(&self) -> bool {
        *self.paused.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_paused(&self, pause: bool) {
        let mut paused = self.paused.lock().unwrap_or_else(PoisonError::into_inner);
        if *paused == pause {
            return;
        }
        let result = self
            .consumer
            .assignment()
            .and_then(|assigned| if pause { self.consumer.pause(&assigned) } else { self.consumer.resume(&assigned) });
        match result {
            Ok(()) => *paused = pause,
            Err(err) => tracing::warn!(error = %err, pause, "pausing or resuming the log follower failed"),
        }
    }

    /// Folds one record into the model by the owner rule, then records how
    /// far the partition was read, so `confirm` finds it folded. Offsets may
    /// skip (on Apache Kafka, transaction markers of other producers take
    /// offsets no consumer sees); librdkafka delivers a partition in order.
    fn take(&self, message: &impl Message) {
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        let kind = platform::kafka::record_kind(message);
        {
            let progress = self.progress.lock().unwrap_or_else(PoisonError::into_inner);
            if progress.get(&(topic.to_owned(), partition)).is_none_or(|at| offset < at.next) {
                // Not ours to read, or read already (from before a restart).
                return;
            }
        }
        fold(&self.model, message);
        {
            let mut progress = self.progress.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(at) = progress.get_mut(&(topic.to_owned(), partition)) {
                if kind == RecordKind::Marker {
                    at.markers.note(offset);
                }
                at.next = offset + 1;
            }
        }
        self.advanced.notify_waiters();
    }

    /// Waits until the record at `position`, sent under `epoch`, was read
    /// back, and answers whether it counts (and so is folded into the model).
    pub async fn confirm(&self, position: &Position, epoch: i64) -> Result<(), ConfirmError> {
        let _waiting = Waiting::count(&self.waiting);
        self.wake.notify_one();
        let started = Instant::now();
        let result = self.wait_for(position, epoch, started + self.timeout).await;
        metrics::histogram!("append_confirm_seconds").record(started.elapsed().as_secs_f64());
        result
    }

    /// Waits until each of `partitions` was read up to its high watermark
    /// as it stands now: everything acknowledged there before this call is
    /// then folded into the model (or judged fenced).
    pub async fn sync(&self, partitions: Vec<(String, i32)>) -> anyhow::Result<()> {
        let _waiting = Waiting::count(&self.waiting);
        self.wake.notify_one();
        let started = Instant::now();
        let client = Arc::clone(&self.watermarks);
        let highs = tokio::task::spawn_blocking(move || {
            partitions
                .into_iter()
                .map(|(topic, partition)| {
                    let (_, high) = client.fetch_watermarks(&topic, partition, Duration::from_secs(5))?;
                    Ok((topic, partition, high))
                })
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .await??;
        let deadline = started + self.timeout;
        for (topic, partition, high) in highs {
            let key = (topic, partition);
            // A partition not followed has nothing to wait for.
            let caught_up = |at: Option<&Progress>| at.is_none_or(|at| at.next >= high).then_some(());
            if self.until_read(&key, deadline, caught_up).await.is_none() {
                anyhow::bail!("{}[{}] was not read up to {high} within {:?}", key.0, key.1, self.timeout);
            }
        }
        metrics::histogram!("follower_sync_seconds").record(started.elapsed().as_secs_f64());
        Ok(())
    }

    async fn wait_for(&self, position: &Position, epoch: i64, deadline: Instant) -> Result<(), ConfirmError> {
        let key = (position.topic.clone(), position.partition);
        // Read past the record: the epoch in force at it (the last marker before it).
        let read_past = |at: Option<&Progress>| {
            at.filter(|at| at.next > position.offset).map(|at| at.markers.epoch_before(position.offset))
        };
        match self.until_read(&key, deadline, read_past).await {
            Some(Some(marker)) if marker > epoch => {
                Err(ConfirmError::Fenced { topic: key.0, partition: key.1, marker, offset: position.offset })
            }
            Some(_) => Ok(()),
            None => Err(ConfirmError::TimedOut {
                topic: key.0,
                partition: key.1,
                offset: position.offset,
                waited: self.timeout,
            }),
        }
    }

    /// Waits until `done` says the follower has read `key` far enough
    /// (`Some`), or `deadline` passes (`None`). `done` sees the partition's
    /// progress under its lock (`None`: the partition is not followed).
    async fn until_read<T>(
        &self,
        key: &(String, i32),
        deadline: Instant,
        done: impl Fn(Option<&Progress>) -> Option<T>,
    ) -> Option<T> {
        loop {
            // Registered before the check, so an advance in between wakes it.
            let advanced = self.advanced.notified();
            tokio::pin!(advanced);
            advanced.as_mut().enable();
            if let Some(found) = done(self.progress.lock().unwrap_or_else(PoisonError::into_inner).get(key)) {
                return Some(found);
            }
            if tokio::time::timeout_at(deadline.into(), advanced).await.is_err() {
                return None;
            }
        }
    }
}

/// One confirm under way, counted while it lives (also when its future is
/// dropped), so the follower does not pause under it and pauses after.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn count(waiting: &'a AtomicUsize) -> Self {
        waiting.fetch_add(1, Ordering::AcqRel);
        Self(waiting)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Folds the record `message` holds into `model`, unless the model holds it
/// already, judged by the owner rule. Records of a partition must come in
/// order, from where the model stands. True when a commit was recorded.
pub fn fold(model: &RwLock<WriteModel>, message: &impl Message) -> bool {
    let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
    let kind = platform::kafka::record_kind(message);
    let mut model = model.write().unwrap_or_else(PoisonError::into_inner);
    if model.covers(topic, partition, offset) {
        return false;
    }
    let verdict = model.judge(topic, partition, offset, kind);
    // Read in order: nothing between the last offset and this one exists.
    model.advance(topic, partition, offset);
    match verdict {
        Verdict::Counts => match events::decode_record(message.payload().unwrap_or_default()) {
            Ok(commit) => {
                model.record(&commit, Position { topic: topic.to_owned(), partition, offset });
                return true;
            }
            // A record we cannot read cannot be part of any decision; the
            // projector dead-letters the same record. Loud, not fatal.
            Err(err) => {
                metrics::counter!("write_model_undecodable_records_total").increment(1);
                tracing::error!(topic, partition, offset, error = %err, "skipping an undecodable record in the write model's log");
            }
        },
        Verdict::Marker => {}
        Verdict::Fenced { epoch, current } => {
            platform::kafka::report_fenced("write_model_fenced_records_total", message, epoch, current);
        }
    }
    // Read, and nothing to record.
    model.advance(topic, partition, offset + 1);
    false
}
