//! Where a projection is: per partition, the next offset applied (from the
//! view store's checkpoints, then from each applied batch) and the topic's
//! high watermark. From these come the lag metrics, the projector's
//! readiness, a rebuild's progress, and the offsets a newly assigned
//! partition starts from.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionPosition {
    /// Next offset to apply; `None` before anything was applied.
    pub applied: Option<i64>,
    /// Offset the next record written will get; `None` until first read.
    pub high: Option<i64>,
    /// Where the last batch stored here began, when its cache refresh may
    /// not have happened (`CheckpointDoc::refresh_from`): a newly assigned
    /// partition starts here and applies that batch again, which changes
    /// nothing in MongoDB and refreshes the caches it touched.
    pub refresh_from: Option<i64>,
}

impl PartitionPosition {
    /// Records not applied yet, when the high watermark is known.
    pub fn lag(&self) -> Option<i64> {
        Some((self.high? - self.applied.unwrap_or(0)).max(0))
    }
}

/// Shared between the worker, the watermark poller, the consumer's
/// rebalance callback and the ops endpoints.
#[derive(Debug, Clone, Default)]
pub struct Positions(Arc<RwLock<BTreeMap<(String, i32), PartitionPosition>>>);

impl Positions {
    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<(String, i32), PartitionPosition>) -> R) -> R {
        f(&mut self.0.write().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn snapshot(&self) -> BTreeMap<(String, i32), PartitionPosition> {
        self.0.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn applied(&self, topic: &str, partition: i32) -> Option<i64> {
        self.0.read().unwrap_or_else(PoisonError::into_inner).get(&(topic.to_owned(), partition))?.applied
    }

    /// Where a consumer of this partition starts: the first offset of the
    /// last stored batch if its cache refresh may be missing, else the next
    /// offset to apply, or offset 0 when nothing was applied.
    pub fn start_offset(&self, topic: &str, partition: i32) -> Offset {
        let all = self.0.read().unwrap_or_else(PoisonError::into_inner);
        let Some(position) = all.get(&(topic.to_owned(), partition)) else { return Offset::Beginning };
        match (position.refresh_from, position.applied) {
            (Some(from), Some(applied)) if from < applied => Offset::Offset(from),
            (_, Some(applied)) => Offset::Offset(applied),
            (_, None) => Offset::Beginning,
        }
    }

    /// Whether the partition starts before its applied position, to
    /// refresh the caches of its last stored batch.
    pub fn refresh_pending(&self, topic: &str, partition: i32) -> bool {
        let all = self.0.read().unwrap_or_else(PoisonError::into_inner);
        all.get(&(topic.to_owned(), partition))
            .is_some_and(|p| p.refresh_from.zip(p.applied).is_some_and(|(from, applied)| from < applied))
    }

    /// Notes where the last stored batch of a partition began
    /// (`PartitionPosition::refresh_from`); `None` once this process has
    /// refreshed the caches of its own batch there.
    pub fn set_refresh_from(&self, topic: &str, partition: i32, from: Option<i64>) {
        self.with(|all| all.entry((topic.to_owned(), partition)).or_default().refresh_from = from);
    }

    /// Records an applied position; positions never move back.
    pub fn set_applied(&self, topic: &str, partition: i32, next: i64) {
        self.with(|all| {
            let entry = all.entry((topic.to_owned(), partition)).or_default();
            entry.applied = Some(entry.applied.map_or(next, |held| held.max(next)));
        });
    }

    /// Sets an applied position exactly, also backwards: the store's
    /// checkpoint after it lost writes, or another member's progress.
    pub fn rewind(&self, topic: &str, partition: i32, next: i64) {
        self.with(|all| {
            all.entry((topic.to_owned(), partition)).or_default().applied = Some(next);
        });
    }

    pub fn set_high(&self, topic: &str, partition: i32, high: i64) {
        self.set_highs([((topic.to_owned(), partition), high)]);
    }

    /// Sets several high watermarks at once, so nobody sees a moment when
    /// only some partitions are known (and the rest look caught up).
    pub fn set_highs(&self, highs: impl IntoIterator<Item = ((String, i32), i64)>) {
        self.with(|all| {
            for (partition, high) in highs {
                all.entry(partition).or_default().high = Some(high);
            }
        });
    }

    /// Makes a partition known, so the lag stays unknown until its high
    /// watermark is read.
    pub fn register(&self, topic: &str, partition: i32) {
        self.with(|all| {
            all.entry((topic.to_owned(), partition)).or_default();
        });
    }

    /// Total records not applied yet; `None` while a partition's high
    /// watermark is unknown (or no partition is known at all).
    pub fn total_lag(&self) -> Option<i64> {
        let all = self.snapshot();
        if all.is_empty() {
            return None;
        }
        all.values().map(PartitionPosition::lag).sum()
    }

    /// Records not applied yet, per topic.
    pub fn lag_per_topic(&self) -> BTreeMap<String, i64> {
        let mut per_topic = BTreeMap::new();
        for ((topic, _), position) in self.snapshot() {
            *per_topic.entry(topic).or_insert(0) += position.lag().unwrap_or(0);
        }
        per_topic
    }

    /// Sum of the applied positions: records behind us, for a progress bar.
    pub fn total_applied(&self) -> i64 {
        self.snapshot().values().filter_map(|p| p.applied).sum()
    }

    pub fn total_high(&self) -> i64 {
        self.snapshot().values().filter_map(|p| p.high).sum()
    }

    /// Publishes the lag gauges of one projection.
    /// `projection` is the consumer group: it names the generation too.
    pub fn export_metrics(&self, projection: &str) {
        for ((topic, partition), position) in self.snapshot() {
            let labels =
                [("projection", projection.to_owned()), ("topic", topic), ("partition", partition.to_string())];
            if let Some(applied) = position.applied {
                metrics::gauge!("projector_applied_offset", &labels).set(applied as f64);
            }
            if let Some(high) = position.high {
                metrics::gauge!("projector_high_watermark", &labels).set(high as f64);
            }
            if let Some(lag) = position.lag() {
                metrics::gauge!("projector_lag", &labels).set(lag as f64);
            }
        }
    }
}

/// Notices partitions that lag while nobody advances them: not ours, behind
/// the topic's end, and at the same checkpoint for longer than `stall_after`.
/// On Tansu 0.6 a member killed outright can keep its partitions in the
/// group forever (docs/self-healing.md, "Partition ownership"); on Apache Kafka the
/// session timeout frees them, and this never fires.
#[derive(Debug)]
pub struct StallWatch {
    stall_after: Duration,
    seen: std::sync::Mutex<BTreeMap<(String, i32), LastMove>>,
}

/// A partition's applied position when last seen, and since when it has
/// been there.
type LastMove = (Option<i64>, std::time::Instant);

impl StallWatch {
    pub fn new(stall_after: Duration) -> Self {
        Self { stall_after, seen: std::sync::Mutex::default() }
    }

    /// How long a partition may stay put before it counts as stalled.
    pub fn stall_after(&self) -> Duration {
        self.stall_after
    }

    /// The partitions stalled at `now`, given every position and the
    /// partitions this member owns.
    pub fn observe(
        &self,
        positions: &BTreeMap<(String, i32), PartitionPosition>,
        owned: &std::collections::BTreeSet<(String, i32)>,
        now: std::time::Instant,
    ) -> Vec<(String, i32)> {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let mut stalled = Vec::new();
        for (partition, position) in positions {
            let lagging = position.lag().is_some_and(|lag| lag > 0);
            if owned.contains(partition) || !lagging {
                seen.remove(partition);
                continue;
            }
            let since = match seen.get(partition) {
                Some((applied, since)) if *applied == position.applied => *since,
                _ => {
                    seen.insert(partition.clone(), (position.applied, now));
                    now
                }
            };
            if now.duration_since(since) >= self.stall_after {
                stalled.push(partition.clone());
            }
        }
        stalled
    }
}

/// Reads the high watermark of every partition of `topics` into
/// `positions`. Blocking (librdkafka): call it from a blocking thread.
pub fn read_high_watermarks(
    client: &BaseConsumer,
    topics: &[String],
    positions: &Positions,
    timeout: Duration,
) -> KafkaResult<()> {
    let mut highs = Vec::new();
    for topic in topics {
        let metadata = client.fetch_metadata(Some(topic), timeout)?;
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            let (_, high) = client.fetch_watermarks(topic, partition.id(), timeout)?;
            highs.push(((topic.clone(), partition.id()), high));
        }
    }
    positions.set_highs(highs);
    Ok(())
}

/// Polls the high watermarks every `every`, until the returned handle is
/// aborted. (The gauges are set when scraped, from the live positions.)
pub fn spawn_watermark_poller(
    brokers: &str,
    topics: Vec<String>,
    positions: Positions,
    every: Duration,
) -> KafkaResult<tokio::task::JoinHandle<()>> {
    let client: Arc<BaseConsumer> = Arc::new(platform::kafka::client_config(brokers).create()?);
    Ok(tokio::spawn(async move {
        loop {
            let (client, topics, polled) = (Arc::clone(&client), topics.clone(), positions.clone());
            let result = tokio::task::spawn_blocking(move || {
                read_high_watermarks(&client, &topics, &polled, Duration::from_secs(5))
            })
            .await;
            match result {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::warn!(error = %err, "reading high watermarks failed"),
                Err(err) => tracing::warn!(error = %err, "the watermark reader panicked"),
            }
            tokio::time::sleep(every).await;
        }
    }))
}

/// Consumer context that starts every newly assigned partition at the
/// position the view store says is applied, not at the group's committed
/// offset. The checkpoint is written in the same transaction as the views
/// (docs/design.md §3), so it is the truth: after a crash the projector resumes
/// exactly there, and after MongoDB lost the views (no checkpoints) it
/// starts from offset 0 and rebuilds them, whatever the group committed.
#[derive(Debug, Clone, Default)]
pub struct StartAtCheckpoints {
    pub positions: Positions,
}

impl ClientContext for StartAtCheckpoints {}

impl ConsumerContext for StartAtCheckpoints {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let assigned: Vec<(String, i32)> =
                    tpl.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect();
                for (topic, partition) in &assigned {
                    let start = self.positions.start_offset(topic, *partition);
                    if let Err(error) = tpl.set_partition_offset(topic, *partition, start) {
                        tracing::warn!(%error, topic, partition, "could not set a start offset");
                    }
                }
                tracing::info!(partitions = assigned.len(), "partitions assigned; starting at the checkpoints");
                if let Err(error) = consumer.assign(tpl) {
                    tracing::error!(%error, "assigning partitions failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                tracing::info!(partitions = tpl.count(), "partitions revoked");
                if let Err(error) = consumer.unassign() {
                    tracing::error!(%error, "unassigning partitions failed");
                }
            }
            other => tracing::error!(error = ?other, "rebalance error"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_stalls_when_it_lags_unowned_and_unmoving() {
        let watch = StallWatch::new(Duration::from_secs(10));
        let position = |applied, high| PartitionPosition { applied, high, refresh_from: None };
        let start = std::time::Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        let ours = ("t".to_owned(), 0);
        let theirs = ("t".to_owned(), 1);
        let idle = ("t".to_owned(), 2);
        let owned: std::collections::BTreeSet<_> = [ours.clone()].into();
        let mut positions = BTreeMap::new();
        positions.insert(ours.clone(), position(Some(1), Some(9)));
        positions.insert(theirs.clone(), position(Some(3), Some(9)));
        positions.insert(idle.clone(), position(Some(9), Some(9)));
        assert!(watch.observe(&positions, &owned, at(0)).is_empty(), "given: nothing seen yet");
        assert!(watch.observe(&positions, &owned, at(9)).is_empty(), "not yet for long enough");
        assert_eq!(watch.observe(&positions, &owned, at(10)), vec![theirs.clone()], "lagging, unowned, unmoving");

        positions.insert(theirs.clone(), position(Some(4), Some(9)));
        assert!(watch.observe(&positions, &owned, at(11)).is_empty(), "it moved: the clock starts again");
        assert!(watch.observe(&positions, &owned, at(20)).is_empty());
        assert_eq!(watch.observe(&positions, &owned, at(21)), vec![theirs.clone()]);

        let now_ours: std::collections::BTreeSet<_> = [ours, theirs].into();
        assert!(watch.observe(&positions, &now_ours, at(40)).is_empty(), "owned partitions never stall here");
    }

    #[test]
    fn a_partition_starts_at_the_batch_whose_caches_may_be_missing() {
        let positions = Positions::default();
        assert_eq!(positions.start_offset("a", 0), Offset::Beginning, "nothing applied");
        positions.set_applied("a", 0, 40);
        assert_eq!(positions.start_offset("a", 0), Offset::Offset(40));
        positions.set_refresh_from("a", 0, Some(25));
        assert_eq!(positions.start_offset("a", 0), Offset::Offset(25), "the last batch again, for its caches");
        assert!(positions.refresh_pending("a", 0), "records to read, though nothing lags");
        positions.set_refresh_from("a", 0, Some(40));
        assert_eq!(positions.start_offset("a", 0), Offset::Offset(40), "a batch with nothing to refresh");
        positions.set_refresh_from("a", 0, None);
        assert_eq!(positions.start_offset("a", 0), Offset::Offset(40), "refreshed by this process");
        assert!(!positions.refresh_pending("a", 0));
    }

    #[test]
    fn lag_is_high_watermark_minus_applied() {
        let positions = Positions::default();
        assert_eq!(positions.total_lag(), None, "nothing known yet");
        positions.set_high("a", 0, 10);
        positions.set_high("a", 1, 0);
        assert_eq!(positions.total_lag(), Some(10), "nothing applied: all behind");
        positions.set_applied("a", 0, 7);
        assert_eq!(positions.total_lag(), Some(3));
        positions.set_applied("a", 0, 5);
        assert_eq!(positions.applied("a", 0), Some(7), "positions never move back");
        positions.set_applied("b", 0, 4);
        assert_eq!(positions.total_lag(), None, "a partition without a known end");
        positions.register("c", 0);
        positions.set_highs([(("b".to_owned(), 0), 4)]);
        assert_eq!(positions.total_lag(), None, "a registered partition without a known end");
        positions.set_high("c", 0, 0);
        positions.set_high("b", 0, 4);
        positions.set_applied("a", 0, 10);
        assert_eq!(positions.total_lag(), Some(0));
        assert_eq!(positions.lag_per_topic().get("a"), Some(&0));
        assert_eq!(positions.total_applied(), 14);
    }
}
