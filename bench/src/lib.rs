//! What the benchmark binaries share.

pub mod measure;

use std::time::Duration;

/// xorshift64: a small deterministic generator, so a run (a seeded history,
/// a chaos run's fault order) can be repeated exactly.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 { 0x9e37_79b9_7f4a_7c15 } else { seed })
    }

    #[allow(clippy::should_implement_trait)] // not an iterator: it never ends
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n` (0 for `n` of 0 or 1).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// A duration between `lo` and `hi` seconds, to the millisecond.
    pub fn secs(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo * 1000 + self.next() % ((hi - lo) * 1000 + 1))
    }

    /// `items` in a random order (Fisher-Yates).
    pub fn shuffled<T: Clone>(&mut self, items: &[T]) -> Vec<T> {
        let mut items = items.to_vec();
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
        items
    }
}

/// Fills event topics fast for the seeding benchmarks: many sends in flight
/// (at most `MAX_IN_FLIGHT`), each record keyed by its aggregate, and every
/// one acknowledged by the time `finish` returns.
pub struct Seeder {
    producer: rdkafka::producer::FutureProducer,
    topics: events::TopicNames,
    in_flight: futures::stream::FuturesUnordered<futures::future::BoxFuture<'static, anyhow::Result<()>>>,
}

impl std::fmt::Debug for Seeder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seeder").field("in_flight", &self.in_flight.len()).finish_non_exhaustive()
    }
}

impl Seeder {
    const MAX_IN_FLIGHT: usize = 5_000;

    pub fn new(brokers: &str, topics: events::TopicNames) -> anyhow::Result<Self> {
        let producer = platform::kafka::client_config(brokers)
            .set("linger.ms", "5")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "200000")
            .create()?;
        Ok(Self { producer, topics, in_flight: futures::stream::FuturesUnordered::new() })
    }

    fn produce(&self, commit: &[events::Envelope]) -> futures::future::BoxFuture<'static, anyhow::Result<()>> {
        use rdkafka::producer::FutureRecord;
        let topic = self.topics.name(commit[0].event.topic());
        let key = commit[0].aggregate_id.clone();
        let payload = events::encode_record(commit);
        let producer = self.producer.clone();
        Box::pin(async move {
            producer
                .send(FutureRecord::to(&topic).key(&key).payload(&payload), Duration::from_secs(60))
                .await
                .map(|_| ())
                .map_err(|(e, _)| anyhow::anyhow!("seeding: {e}"))
        })
    }

    /// Sends one commit as one record, waiting only when too many are in flight.
    pub async fn send(&mut self, commit: &[events::Envelope]) -> anyhow::Result<()> {
        let send = self.produce(commit);
        self.in_flight.push(send);
        if self.in_flight.len() >= Self::MAX_IN_FLIGHT {
            futures::StreamExt::next(&mut self.in_flight).await.transpose()?;
        }
        Ok(())
    }

    /// Sends one commit and waits for its acknowledgement: for a record that
    /// must land before the next one of its aggregate is sent.
    pub async fn send_and_wait(&self, commit: &[events::Envelope]) -> anyhow::Result<()> {
        self.produce(commit).await
    }

    /// Waits until every record sent is acknowledged.
    pub async fn finish(mut self) -> anyhow::Result<()> {
        while let Some(sent) = futures::StreamExt::next(&mut self.in_flight).await {
            sent?;
        }
        Ok(())
    }
}
