//! The Kafka edge of the write side: appending a commit, and rebuilding the
//! write model from the log at start.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use events::{Envelope, Topic, TopicNames, encode_record};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use crate::model::{Position, WriteModel};

#[derive(Debug, thiserror::Error)]
#[error("the broker did not acknowledge the append: {0}")]
pub struct AppendError(String);

pub struct EventLog {
    producer: std::sync::RwLock<std::sync::Arc<FutureProducer>>,
    brokers: String,
    topics: TopicNames,
    delivery_timeout: Duration,
    /// Partition count per topic name, learnt at start
    /// ([`EventLog::learn_partitions`]): a record's partition is computed
    /// before it is sent, so the epoch it carries is that partition's.
    partitions: std::sync::RwLock<HashMap<String, i32>>,
}

impl EventLog {
    pub fn new(brokers: &str, topics: TopicNames, delivery_timeout: Duration) -> anyhow::Result<Self> {
        let producer = platform::kafka::event_producer(brokers, delivery_timeout)?;
        Ok(Self {
            producer: std::sync::RwLock::new(std::sync::Arc::new(producer)),
            brokers: brokers.to_owned(),
            topics,
            delivery_timeout,
            partitions: std::sync::RwLock::default(),
        })
    }

    /// Reads each topic's partition count. A count that differs from the
    /// one learnt before (partitions added while running) fails every
    /// claim, so the instance stays unready and says why in its log: an
    /// aggregate's history would be split over two partitions.
    pub fn learn_partitions(&self, topics: &[String]) -> anyhow::Result<()> {
        use rdkafka::producer::Producer;
        let producer = self.producer();
        let mut known = self.partitions.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        for topic in topics {
            let metadata = producer.client().fetch_metadata(Some(topic), Duration::from_secs(10))?;
            let count = metadata.topics().iter().find(|t| t.name() == topic).map_or(0, |t| t.partitions().len());
            let count = i32::try_from(count)?;
            anyhow::ensure!(count > 0, "topic {topic} has no partitions (does it exist?)");
            if let Some((other, other_count)) = known.iter().find(|(t, c)| *t != topic && **c != count) {
                anyhow::bail!(
                    "topic {topic} has {count} partitions but {other} has {other_count}; the write side's topics \
                     must have one partition count (an aggregate's topics share its partition and owner)"
                );
            }
            if let Some(before) = known.insert(topic.clone(), count) {
                anyhow::ensure!(
                    before == count,
                    "topic {topic} went from {before} to {count} partitions; aggregates would change partition"
                );
            }
        }
        Ok(())
    }

    /// The partition count every topic shares. Ownership is by partition
    /// number (`ownership`), so the topics must agree; `learn_partitions`
    /// refuses them otherwise.
    pub fn partition_count(&self) -> Option<i32> {
        let known = self.partitions.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        known.values().next().copied()
    }

    /// The partition number a record keyed `key` goes to, in every topic.
    pub fn partition_number(&self, key: &str) -> Result<i32, AppendError> {
        let count = self.partition_count().ok_or_else(|| AppendError("partitions unknown".into()))?;
        Ok(events::owner::partition_for(key.as_bytes(), count))
    }

    /// Every (topic, partition) of the topics learnt.
    pub fn partitions(&self) -> Vec<(String, i32)> {
        let known = self.partitions.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        known.iter().flat_map(|(topic, count)| (0..*count).map(|p| (topic.clone(), p))).collect()
    }

    /// The partition a record keyed `key` goes to (Kafka's partitioner).
    pub fn partition_of(&self, topic_name: &str, key: &str) -> Result<i32, AppendError> {
        let known = self.partitions.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = known.get(topic_name).ok_or_else(|| AppendError(format!("{topic_name}: partitions unknown")))?;
        Ok(events::owner::partition_for(key.as_bytes(), *count))
    }

    /// Appends an owner marker to a partition for `instance`; its offset is
    /// the instance's epoch there (`events::owner`).
    pub async fn append_marker(&self, topic_name: &str, partition: i32, instance: &str) -> Result<i64, AppendError> {
        let payload = serde_json::json!({ "type": "owner.claimed", "instance": instance, "at": chrono::Utc::now() });
        let payload = payload.to_string();
        let headers = OwnedHeaders::new().insert(Header { key: events::owner::MARKER_HEADER, value: Some(instance) });
        let record =
            FutureRecord::to(topic_name).partition(partition).key("owner-marker").payload(&payload).headers(headers);
        match self.producer().send(record, self.delivery_timeout).await {
            Ok(delivery) => Ok(delivery.offset),
            Err((err, _)) => Err(AppendError(err.to_string())),
        }
    }

    fn producer(&self) -> std::sync::Arc<FutureProducer> {
        std::sync::Arc::clone(&self.producer.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Replaces the producer with a new one, with fresh connections and
    /// metadata, after a failed append.
    pub fn renew_producer(&self) -> anyhow::Result<()> {
        let fresh = platform::kafka::event_producer(&self.brokers, self.delivery_timeout)?;
        *self.producer.write().unwrap_or_else(std::sync::PoisonError::into_inner) = std::sync::Arc::new(fresh);
        Ok(())
    }

    /// The deployed name of `topic`.
    pub fn topic_name(&self, topic: Topic) -> String {
        self.topics.name(topic)
    }

    /// Appends one command's events as one record keyed by the aggregate id,
    /// to `partition` (`partition_of` the key) under `epoch`, and waits for
    /// the broker's acknowledgement (`acks=all`).
    pub async fn append(
        &self,
        topic_name: &str,
        partition: i32,
        epoch: i64,
        commit: &[Envelope],
    ) -> Result<Position, AppendError> {
        let key = commit.first().map(|e| e.aggregate_id.as_str()).unwrap_or_default();
        let payload = encode_record(commit);
        let epoch = epoch.to_string();
        let headers = OwnedHeaders::new().insert(Header { key: events::owner::EPOCH_HEADER, value: Some(&epoch) });
        let record = FutureRecord::to(topic_name).partition(partition).key(key).payload(&payload).headers(headers);
        let started = Instant::now();
        let result = self.producer().send(record, self.delivery_timeout).await;
        metrics::histogram!("kafka_append_seconds").record(started.elapsed().as_secs_f64());
        match result {
            Ok(delivery) => {
                Ok(Position { topic: topic_name.to_owned(), partition: delivery.partition, offset: delivery.offset })
            }
            Err((err, _)) => {
                metrics::counter!("kafka_append_failures_total").increment(1);
                Err(AppendError(err.to_string()))
            }
        }
    }

    /// True when the broker answers a metadata request.
    pub fn broker_reachable(&self) -> bool {
        use rdkafka::producer::Producer;
        self.producer().client().fetch_metadata(None, Duration::from_secs(2)).is_ok()
    }
}

/// The log holds less than the model: it was reset, or lost records. The
/// model (or the snapshot it came from) no longer describes it.
#[derive(Debug, thiserror::Error)]
#[error("{topic}[{partition}] ends at offset {high}, but the model holds it up to {next}")]
pub struct LogBehindModel {
    pub topic: String,
    pub partition: i32,
    pub high: i64,
    pub next: i64,
}

/// Reads `topics` from where `model` stands in each partition (offset 0 for
/// one it has never seen) to their high watermarks as they were when
/// called, folding every commit not yet in it. Returns the records applied.
/// A model built from offset 0 is the case of an empty model; a model from a
/// snapshot reads only the tail; a claim after a failed append, only what
/// came after the model's positions. Records are folded by the owner rule
/// (`log_follower::fold`), as the follower folds them while the service runs.
///
/// Partitions are read concurrently, so commits of different aggregates are
/// folded in no particular order; nothing in the model depends on an order
/// across aggregates (a daily count is a sum; a connection to a user who is
/// not known yet still records the pair).
pub async fn catch_up(brokers: &str, topics: &[String], model: &std::sync::RwLock<WriteModel>) -> anyhow::Result<u64> {
    let consumer: StreamConsumer = platform::kafka::client_config(brokers)
        .set("group.id", "command-api-write-model")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        // Tansu holds a fetch for the full wait; keep the start-up read brisk.
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let lock = || model.write().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut assignment = TopicPartitionList::new();
    let mut end_of: HashMap<(String, i32), i64> = HashMap::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic)
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        anyhow::ensure!(!partitions.is_empty(), "topic {topic} has no partitions (does it exist?)");
        for partition in partitions {
            let (_, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
            let next = model.read().unwrap_or_else(std::sync::PoisonError::into_inner).next_offset(topic, partition);
            if high < next {
                return Err(LogBehindModel { topic: topic.clone(), partition, high, next }.into());
            }
            if high > next {
                assignment.add_partition_offset(topic, partition, Offset::Offset(next))?;
                end_of.insert((topic.clone(), partition), high);
            }
        }
    }
    consumer.assign(&assignment)?;
    let mut applied = 0u64;
    while !end_of.is_empty() {
        let message = consumer.recv().await?;
        let (topic, partition, offset) = (message.topic().to_owned(), message.partition(), message.offset());
        let Some(end) = end_of.get(&(topic.clone(), partition)).copied() else { continue };
        if offset >= end {
            continue;
        }
        if crate::log_follower::fold(model, &message) {
            applied += 1;
        }
        if offset + 1 >= end {
            lock().advance(&topic, partition, end);
            end_of.remove(&(topic, partition));
        }
    }
    Ok(applied)
}
