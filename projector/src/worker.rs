//! The consume → plan → apply → commit loop.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use events::{Topic, TopicNames, decode_record};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::watch;

use crate::plan::{self, Record};
use crate::store::ViewStore;

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub max_batch: usize,
    /// A batch ends when no record arrives for this long...
    pub linger: Duration,
    /// ...or when it has been filling for this long.
    pub max_batch_time: Duration,
    /// How long a heartbeat keeps a user online.
    pub presence_ttl: chrono::Duration,
}

/// Progress the ops endpoints report: (topic, partition) → next offset applied.
pub type Progress = Arc<std::sync::RwLock<HashMap<(String, i32), i64>>>;

pub struct Worker {
    pub consumer: StreamConsumer,
    pub dead_letters: FutureProducer,
    pub topics: TopicNames,
    pub store: ViewStore,
    pub settings: WorkerSettings,
    pub progress: Progress,
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

impl Worker {
    /// Runs until `shutdown` flips. A batch that fails to apply is retried
    /// with backoff and never skipped: the views may lag, never lose events.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let subscribed: Vec<String> = Topic::EVENT_TOPICS.iter().map(|t| self.topics.name(*t)).collect();
        self.consumer.subscribe(&subscribed.iter().map(String::as_str).collect::<Vec<_>>())?;
        loop {
            let first = tokio::select! {
                m = self.consumer.recv() => m,
                _ = shutdown.changed() => return Ok(()),
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
            self.process(&messages, &mut shutdown).await?;
        }
    }

    async fn process(
        &self,
        messages: &[BorrowedMessage<'_>],
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut records = Vec::with_capacity(messages.len());
        for message in messages {
            match decode_record(message.payload().unwrap_or_default()) {
                Ok(commit) => records.push(Record {
                    topic: message.topic().to_owned(),
                    partition: message.partition(),
                    offset: message.offset(),
                    commit,
                }),
                Err(err) => self.dead_letter(message, &err.to_string()).await?,
            }
        }
        let counted: Vec<uuid::Uuid> =
            records.iter().flat_map(|r| &r.commit).filter(|e| plan::counted(e)).map(|e| e.event_id).collect();
        let mut backoff = Duration::from_millis(100);
        // Each attempt re-reads the processed-id keys and plans afresh: an
        // attempt may fail because another projector (mid-rebalance) applied
        // some of these events meanwhile, and the next must skip them.
        let plan = loop {
            let processed = self.processed_among(&counted, shutdown).await?;
            let mut plan = plan::plan(&records, self.settings.presence_ttl, &processed);
            // Dead-lettered records still move the checkpoint past themselves.
            for message in messages {
                let next = plan.checkpoints.entry((message.topic().to_owned(), message.partition())).or_insert(0);
                *next = (*next).max(message.offset() + 1);
            }
            match self.store.apply(&plan).await {
                Ok(()) => break plan,
                Err(err) => {
                    metrics::counter!("projector_batch_failures_total").increment(1);
                    tracing::warn!(error = %err, retry_in_ms = backoff.as_millis() as u64, "applying a batch failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {},
                        _ = shutdown.changed() => anyhow::bail!("shut down with an unapplied batch; it is re-read on restart"),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        self.commit_offsets(&plan.checkpoints)?;
        {
            let mut progress = self.progress.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            for ((topic, partition), next) in &plan.checkpoints {
                progress.insert((topic.clone(), *partition), *next);
                metrics::gauge!("projector_applied_offset", "topic" => topic.clone(), "partition" => partition.to_string())
                    .set(*next as f64);
            }
        }
        metrics::counter!("projector_events_applied_total").increment(plan.events as u64);
        metrics::histogram!("projector_batch_seconds").record(started.elapsed().as_secs_f64());
        tracing::debug!(
            records = messages.len(),
            events = plan.events,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "batch applied"
        );
        Ok(())
    }

    /// Which counted events were already applied; retried like a batch.
    async fn processed_among(
        &self,
        ids: &[uuid::Uuid],
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<std::collections::HashSet<uuid::Uuid>> {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.store.already_processed(ids).await {
                Ok(found) => return Ok(found),
                Err(err) => {
                    tracing::warn!(error = %err, "reading processed-id keys failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {},
                        _ = shutdown.changed() => anyhow::bail!("shut down with an unapplied batch; it is re-read on restart"),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Commits the group offsets, only after MongoDB and Redis acknowledged.
    fn commit_offsets(&self, checkpoints: &std::collections::BTreeMap<(String, i32), i64>) -> anyhow::Result<()> {
        let mut list = TopicPartitionList::new();
        for ((topic, partition), next) in checkpoints {
            list.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
        }
        if let Err(err) = self.consumer.commit(&list, CommitMode::Sync) {
            // The views already hold the batch and re-applying is a no-op;
            // a rebalance is the usual cause. Not fatal.
            tracing::warn!(error = %err, "committing offsets failed; the batch may be re-read (harmlessly)");
        }
        Ok(())
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
