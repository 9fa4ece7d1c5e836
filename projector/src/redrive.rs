//! `projector redrive-dead-letters`: after a fix, appends every dead letter
//! not re-driven yet back to the topic it came from (same key, same bytes),
//! where the projector picks it up like any record. Progress is the
//! consumer group `<group>.redrive` on the dead-letter topic, committed
//! after each append, so a re-drive interrupted and run again does not
//! append a letter twice (at most the one in flight).
//!
//! A letter that still fails is dead-lettered again, after the end this run
//! started from: one run never loops.

use std::time::Duration;

use events::Topic;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::Pipeline;
use crate::config::RedriveArgs;
use crate::positions::{Positions, read_high_watermarks};

fn header<'a>(message: &'a impl Message, name: &str) -> Option<&'a str> {
    let headers = message.headers()?;
    headers.iter().find(|h| h.key == name).and_then(|h| std::str::from_utf8(h.value?).ok())
}

pub async fn run(pipeline: Pipeline, args: RedriveArgs) -> anyhow::Result<()> {
    let brokers = &pipeline.config.kafka.brokers;
    let dead_letters = pipeline.topics.name(Topic::DeadLetters);
    let group = format!("{}.redrive", pipeline.config.group_id);
    let consumer: StreamConsumer = platform::kafka::client_config(brokers)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;

    let positions = run_bounds(&consumer, brokers, &dead_letters).await?;
    let waiting = positions.total_lag().unwrap_or(0);
    tracing::info!(topic = %dead_letters, waiting, dry_run = args.dry_run, "re-driving dead letters");
    if waiting == 0 {
        return Ok(());
    }

    let producer = platform::kafka::event_producer(brokers, Duration::from_secs(30))?;
    consumer.subscribe(&[dead_letters.as_str()])?;
    let (mut redriven, mut skipped) = (0u64, 0u64);
    while positions.total_lag().unwrap_or(0) > 0 {
        let message = match tokio::time::timeout(Duration::from_secs(10), consumer.recv()).await {
            Ok(message) => message?,
            Err(_) => anyhow::bail!(
                "no dead letter arrived for 10 s although {} are waiting",
                positions.total_lag().unwrap_or(0)
            ),
        };
        let (partition, offset) = (message.partition(), message.offset());
        let high = positions.snapshot().get(&(message.topic().to_owned(), partition)).and_then(|p| p.high);
        if high.is_some_and(|high| offset >= high) {
            // Arrived after this run started (perhaps one of ours, failing
            // again): the next run's.
            positions.set_applied(message.topic(), partition, offset + 1);
            continue;
        }
        let origin = header(&message, "dlq-origin-topic").map(str::to_owned);
        let reason = header(&message, "dlq-reason").unwrap_or("unknown").to_owned();
        match origin {
            None => {
                tracing::warn!(partition, offset, "a dead letter without its origin; skipped");
                skipped += 1;
            }
            Some(origin) if args.dry_run => {
                tracing::info!(partition, offset, %origin, %reason, "would re-drive");
                redriven += 1;
            }
            Some(origin) => {
                let from = format!("{}/{partition}/{offset}", message.topic());
                let record = FutureRecord::to(&origin)
                    .key(message.key().unwrap_or_default())
                    .payload(message.payload().unwrap_or_default())
                    .headers(
                        OwnedHeaders::new()
                            .insert(Header { key: "redriven-from", value: Some(&from) })
                            .insert(Header { key: "redriven-reason", value: Some(&reason) }),
                    );
                producer
                    .send(record, Duration::from_secs(30))
                    .await
                    .map_err(|(err, _)| anyhow::anyhow!("re-driving: {err}"))?;
                tracing::info!(partition, offset, %origin, %reason, "re-driven");
                redriven += 1;
            }
        }
        if !args.dry_run {
            consumer.commit_message(&message, CommitMode::Sync)?;
        }
        positions.set_applied(message.topic(), partition, offset + 1);
    }
    tracing::info!(redriven, skipped, dry_run = args.dry_run, "dead letters re-driven");
    Ok(())
}

/// Where this run starts (the group's committed offsets) and ends (the
/// topic's end now), per partition of `topic`.
async fn run_bounds(consumer: &StreamConsumer, brokers: &str, topic: &str) -> anyhow::Result<Positions> {
    let positions = Positions::default();
    let (probe, topic, known) = (consumer_for_probe(brokers)?, topic.to_owned(), positions.clone());
    tokio::task::spawn_blocking(move || read_high_watermarks(&probe, &[topic], &known, Duration::from_secs(10)))
        .await??;
    let mut partitions = TopicPartitionList::new();
    for (topic, partition) in positions.snapshot().keys() {
        partitions.add_partition(topic, *partition);
    }
    let committed = consumer.committed_offsets(partitions, Duration::from_secs(10))?;
    for element in committed.elements() {
        if let Offset::Offset(next) = element.offset() {
            positions.set_applied(element.topic(), element.partition(), next);
        }
    }
    Ok(positions)
}

fn consumer_for_probe(brokers: &str) -> anyhow::Result<rdkafka::consumer::BaseConsumer> {
    Ok(platform::kafka::client_config(brokers).create()?)
}
