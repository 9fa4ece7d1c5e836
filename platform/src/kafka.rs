//! Kafka client setup shared by the programs.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::FutureProducer;

/// The base client config for our brokers.
pub fn client_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        // Match the Java client's partitioner, so any other producer or
        // Kafka Streams app keyed the same way lands on the same partition.
        .set("partitioner", "murmur2_random")
        .set("socket.keepalive.enable", "true");
    config
}

/// The event producer: `acks=all`, no retries inside librdkafka, and a
/// bounded delivery timeout so an unreachable broker becomes a 503 within
/// seconds rather than a hung request. Create it once, at start: its first
/// send takes ~0.5 s on Tansu (docs/stack.md).
///
/// Not librdkafka's idempotent producer: on Tansu 0.6 its producer-id
/// bookkeeping crashes the broker's storage task after a broker restart
/// (a produce whose epoch has no row panics "more or less than one row",
/// and the epoch bump of KIP-360 reaches a `todo!()`), leaving a broker
/// that answers every request with an error until it is restarted. Found
/// by `./dev chaos`. Without retries nothing can be written twice: a send
/// that fails or times out is an unknown outcome, which the command API
/// already answers with 503 and settles by re-reading the log, and a
/// client's retry with the same `Idempotency-Key` gets the first answer.
/// Ordering within an aggregate holds because its commands take a lock
/// and wait for their acknowledgement one at a time.
pub fn event_producer(brokers: &str, delivery_timeout: Duration) -> anyhow::Result<FutureProducer> {
    let producer = client_config(brokers)
        .set("enable.idempotence", "false")
        .set("acks", "all")
        .set("message.send.max.retries", "0")
        .set("linger.ms", "1")
        .set("message.timeout.ms", delivery_timeout.as_millis().to_string())
        .create()?;
    Ok(producer)
}

/// Creates the topics that do not exist yet; existing ones are left alone.
pub async fn ensure_topics(brokers: &str, names: &[String], partitions: i32, replication: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(brokers).create()?;
    let new_topics: Vec<NewTopic<'_>> =
        names.iter().map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(replication))).collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new_topics, &options).await? {
        match result {
            Ok(name) => tracing::info!(topic = %name, partitions, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("creating topic {name}: {code}"),
        }
    }
    Ok(())
}

/// Counts (in `counter`) and logs a record the owner rule ignores: sent
/// under an epoch a newer marker had superseded when it landed.
pub fn report_fenced(counter: &'static str, message: &impl rdkafka::Message, epoch: i64, current: i64) {
    let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
    metrics::counter!(counter).increment(1);
    tracing::warn!(topic, partition, offset, epoch, current, "ignoring a record sent under a superseded owner epoch");
}

/// What a consumed record is by its headers: an owner marker, or a command
/// record with the epoch it was sent under (`events::owner`).
pub fn record_kind(message: &impl rdkafka::Message) -> events::owner::RecordKind {
    use rdkafka::message::Headers;
    match message.headers() {
        Some(headers) => events::owner::RecordKind::from_headers(headers.iter().map(|h| (h.key, h.value))),
        None => events::owner::RecordKind::from_headers([]),
    }
}
