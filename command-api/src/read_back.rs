//! Reading our own appends back before answering (docs/scale-out.md §2,
//! "Acknowledging"). The broker's acknowledgement says a record landed at
//! offset `o`; it does not say the record counts. It counts only if no other
//! owner marker lies between this instance's marker and `o`: a newer claim
//! (another instance started on the same topics, or this one was paused
//! past a successor's start) makes every reader ignore it. So an append is
//! answered only once this reader has read its partition past `o` and seen
//! no such marker.
//!
//! One consumer reads every partition in order from where the write model
//! stands, and keeps, per partition, how far it has read and the markers it
//! saw. It does not fold anything: the model records a command's events
//! only after its read-back passed. Idle, it pauses its partitions: a fetch
//! on Tansu costs a storage query per partition even when nothing arrives
//! (docs/stack.md), and nothing needs reading while no command waits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use events::owner::{MarkerIndex, RecordKind};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::Notify;

use crate::model::Position;

#[derive(Debug, thiserror::Error)]
pub enum ReadBackError {
    /// A newer marker precedes the record: it will never count.
    #[error("{topic}[{partition}] was claimed again at offset {marker}, before our record at {offset}")]
    Fenced { topic: String, partition: i32, marker: i64, offset: i64 },
    /// The record was not read back in time: whether it counts is unknown.
    #[error("our record at {topic}[{partition}]@{offset} was not read back within {waited:?}")]
    TimedOut { topic: String, partition: i32, offset: i64, waited: Duration },
}

/// How far one partition has been read back, and the markers seen there.
#[derive(Debug, Default)]
struct Progress {
    next: i64,
    markers: MarkerIndex,
}

pub struct ReadBack {
    consumer: StreamConsumer,
    progress: Mutex<HashMap<(String, i32), Progress>>,
    /// Woken whenever a partition was read further.
    advanced: Notify,
    /// Read-backs under way; the consumer pauses when none has been for `idle`.
    waiting: AtomicUsize,
    /// Woken by a read-back that starts, to resume a paused consumer.
    wake: Notify,
    paused: AtomicBool,
    idle: Duration,
    timeout: Duration,
}

impl std::fmt::Debug for ReadBack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadBack").field("waiting", &self.waiting.load(Ordering::Relaxed)).finish_non_exhaustive()
    }
}

impl ReadBack {
    /// A reader with nothing assigned yet ([`ReadBack::restart_at`]).
    pub fn new(brokers: &str, fetch_wait: Duration, timeout: Duration) -> anyhow::Result<Arc<Self>> {
        let consumer: StreamConsumer = platform::kafka::client_config(brokers)
            .set("group.id", "command-api-read-back")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", fetch_wait.as_millis().max(1).to_string())
            .create()?;
        Ok(Arc::new(Self {
            consumer,
            progress: Mutex::default(),
            advanced: Notify::new(),
            waiting: AtomicUsize::new(0),
            wake: Notify::new(),
            paused: AtomicBool::new(false),
            idle: Duration::from_secs(2),
            timeout,
        }))
    }

    /// Reads every partition again from `from` (the write model's next
    /// offsets, right after it read up to this instance's markers). Called
    /// with every command lock held, so no read-back is waiting.
    pub fn restart_at(&self, from: &[(String, i32, i64)]) -> anyhow::Result<()> {
        let mut assignment = TopicPartitionList::new();
        let mut progress = self.progress.lock().unwrap_or_else(PoisonError::into_inner);
        progress.clear();
        for (topic, partition, next) in from {
            assignment.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
            progress.insert((topic.clone(), *partition), Progress { next: *next, markers: MarkerIndex::default() });
        }
        self.consumer.assign(&assignment)?;
        self.paused.store(false, Ordering::Release);
        Ok(())
    }

    /// Reads until the process ends. Spawn it once.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut last_wanted = Instant::now();
        loop {
            tokio::select! {
                message = self.consumer.recv(), if !self.paused.load(Ordering::Acquire) => match message {
                    Ok(message) => self.note(&message),
                    Err(err) => {
                        tracing::warn!(error = %err, "reading our appends back failed; retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                () = self.wake.notified() => {
                    last_wanted = Instant::now();
                    self.set_paused(false);
                }
                _ = tick.tick() => {
                    if self.waiting.load(Ordering::Acquire) > 0 {
                        last_wanted = Instant::now();
                    } else if last_wanted.elapsed() >= self.idle {
                        self.set_paused(true);
                    }
                }
            }
        }
    }

    fn set_paused(&self, pause: bool) {
        if self.paused.load(Ordering::Acquire) == pause {
            return;
        }
        let result = self
            .consumer
            .assignment()
            .and_then(|assigned| if pause { self.consumer.pause(&assigned) } else { self.consumer.resume(&assigned) });
        match result {
            Ok(()) => self.paused.store(pause, Ordering::Release),
            Err(err) => tracing::warn!(error = %err, pause, "pausing or resuming the read-back failed"),
        }
    }

    fn note(&self, message: &impl Message) {
        let key = (message.topic().to_owned(), message.partition());
        {
            let mut progress = self.progress.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(at) = progress.get_mut(&key) else { return };
            if message.offset() < at.next {
                return;
            }
            if platform::kafka::record_kind(message) == RecordKind::Marker {
                at.markers.note(message.offset());
            }
            at.next = message.offset() + 1;
        }
        self.advanced.notify_waiters();
    }

    /// Waits until the record at `position`, sent under `epoch`, was read
    /// back, and answers whether it counts.
    pub async fn confirm(&self, position: &Position, epoch: i64) -> Result<(), ReadBackError> {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        self.wake.notify_one();
        let started = Instant::now();
        let result = self.wait_for(position, epoch, started + self.timeout).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        metrics::histogram!("read_back_seconds").record(started.elapsed().as_secs_f64());
        result
    }

    async fn wait_for(&self, position: &Position, epoch: i64, deadline: Instant) -> Result<(), ReadBackError> {
        let key = (position.topic.clone(), position.partition);
        loop {
            // Registered before the check, so an advance in between wakes it.
            let advanced = self.advanced.notified();
            tokio::pin!(advanced);
            advanced.as_mut().enable();
            {
                let progress = self.progress.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(at) = progress.get(&key)
                    && at.next > position.offset
                {
                    return match at.markers.epoch_before(position.offset) {
                        Some(marker) if marker > epoch => Err(ReadBackError::Fenced {
                            topic: key.0,
                            partition: key.1,
                            marker,
                            offset: position.offset,
                        }),
                        _ => Ok(()),
                    };
                }
            }
            if tokio::time::timeout_at(deadline.into(), advanced).await.is_err() {
                return Err(ReadBackError::TimedOut {
                    topic: key.0,
                    partition: key.1,
                    offset: position.offset,
                    waited: self.timeout,
                });
            }
        }
    }
}
