//! The environment's topics: writing records as other producers would, and
//! reading them back.

use std::time::{Duration, Instant};

use crate::TestEnv;

impl TestEnv {
    /// The full name of a topic in this environment.
    pub fn topic(&self, topic: events::Topic) -> String {
        events::TopicNames::new(format!("{}-", self.id)).name(topic)
    }

    /// Appends raw bytes to a topic, as a foreign or older producer would.
    pub async fn produce_raw(&self, topic: events::Topic, key: &str, payload: &[u8], headers: &[(&str, &str)]) {
        use rdkafka::message::{Header, OwnedHeaders};
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.servers.kafka)
            .set("partitioner", "murmur2_random")
            .create()
            .expect("producer");
        let mut owned = OwnedHeaders::new();
        for (name, value) in headers {
            owned = owned.insert(Header { key: name, value: Some(*value) });
        }
        let name = self.topic(topic);
        let record = FutureRecord::to(&name).key(key).payload(payload).headers(owned);
        producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| e).expect("produce");
    }

    /// Appends `count` heartbeat records for `users` straight to the
    /// presence topic, as a busy history would hold: something for a
    /// rebuild to chew on. Versions start at 1000, above any the API gave.
    pub async fn produce_heartbeats(&self, users: &[String], count: usize) {
        use events::presence::{PresenceEvent, PresenceSignal};
        use events::{Envelope, Event, EventMetadata};
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.servers.kafka)
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "5")
            .create()
            .expect("producer");
        let topic = self.topic(events::Topic::PresenceEvents);
        let records: Vec<(String, Vec<u8>)> = (0..count)
            .map(|i| {
                let user = &users[i % users.len()];
                let envelope = Envelope {
                    event_id: uuid::Uuid::now_v7(),
                    aggregate_id: user.clone(),
                    aggregate_version: 1000 + (i / users.len()) as u64,
                    occurred_at: chrono::Utc::now(),
                    metadata: EventMetadata {
                        actor: user.parse().ok(),
                        correlation_id: format!("history-{i}"),
                        idempotency_key: None,
                        request_fingerprint: None,
                    },
                    event: Event::Presence(PresenceEvent::Heartbeat(PresenceSignal {})),
                };
                (user.clone(), events::encode_record(&[envelope]))
            })
            .collect();
        let sends = records.iter().map(|(key, payload)| {
            producer.send(FutureRecord::to(&topic).key(key).payload(payload), Duration::from_secs(30))
        });
        for result in futures::future::join_all(sends).await {
            result.map_err(|(e, _)| e).expect("produce");
        }
    }

    /// The records of a topic with their headers, from offset 0 up to its
    /// current end.
    pub async fn read_topic(&self, topic: events::Topic) -> Vec<(Vec<u8>, std::collections::BTreeMap<String, String>)> {
        use rdkafka::Message;
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::message::Headers;
        let name = self.topic(topic);
        let kafka = self.servers.kafka.clone();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &kafka)
                .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
                .set("enable.auto.commit", "false")
                .create()
                .expect("consumer");
            let metadata = consumer.fetch_metadata(Some(&name), Duration::from_secs(10)).expect("metadata");
            let mut records = Vec::new();
            for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
                let (_, high) =
                    consumer.fetch_watermarks(&name, partition.id(), Duration::from_secs(10)).expect("watermarks");
                if high == 0 {
                    continue;
                }
                let mut assignment = rdkafka::TopicPartitionList::new();
                assignment.add_partition_offset(&name, partition.id(), rdkafka::Offset::Beginning).expect("assignment");
                consumer.assign(&assignment).expect("assign");
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    assert!(Instant::now() < deadline, "reading {name} timed out");
                    let Some(message) = consumer.poll(Duration::from_millis(200)) else { continue };
                    let message = message.expect("message");
                    let headers = message
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| {
                                    (
                                        h.key.to_owned(),
                                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    records.push((message.payload().unwrap_or_default().to_vec(), headers));
                    if message.offset() + 1 >= high {
                        break;
                    }
                }
            }
            records
        })
        .await
        .expect("reader")
    }
}
