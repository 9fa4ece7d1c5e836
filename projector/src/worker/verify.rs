//! Keeping the worker's positions true to the store's checkpoints, which
//! are written with the views and so are the truth: the periodic `verify`,
//! and the seek back after a batch found a gap. Both handle a store that
//! lost applied batches, by applying them again from the log.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::Offset;
use rdkafka::consumer::Consumer;

use super::{Ended, GapRewind, Partitions, Worker};

impl Worker {
    /// Re-reads the store's checkpoints, which are the truth (written in
    /// the same transaction as the views):
    /// - a partition we own whose checkpoint is behind what we applied
    ///   means the store lost writes (a MongoDB killed within its sync
    ///   window, a replica-set rollback): seek back and apply them again;
    /// - partitions of other members take the store's position, for lag,
    ///   readiness, and to notice one that lags with nobody advancing it;
    /// - while caches are degraded, try to repair them.
    ///
    /// Returns why the worker must stop, if it must.
    pub(super) async fn verify(&self) -> Option<Ended> {
        self.store.reap_orphaned_transactions().await;
        if self.caches_degraded.load(Ordering::Relaxed) {
            match self.store.repair_caches().await {
                Ok(dropped) => {
                    self.caches_degraded.store(false, Ordering::Relaxed);
                    tracing::info!(dropped, "redis answers again; dropped the cache keys written meanwhile");
                }
                Err(err) => tracing::debug!(error = %err, "caches not repaired yet"),
            }
        }
        let checkpoints = match self.store.checkpoints().await {
            Ok(checkpoints) => checkpoints,
            Err(err) => {
                tracing::debug!(error = %err, "reading the checkpoints failed; verifying later");
                return None;
            }
        };
        let stored: BTreeMap<(String, i32), i64> =
            checkpoints.into_iter().map(|c| ((c.topic, c.partition), c.next_offset)).collect();
        let owned = self.owned();
        for (partition, position) in self.positions.snapshot() {
            let in_store = stored.get(&partition).copied();
            if !owned.contains(&partition) {
                if let Some(next) = in_store {
                    self.positions.rewind(&partition.0, partition.1, next);
                }
                continue;
            }
            let Some(applied) = position.applied else { continue };
            if in_store.unwrap_or(0) >= applied {
                continue;
            }
            let (topic, number) = (&partition.0, partition.1);
            let restart_at = in_store.unwrap_or(0);
            tracing::warn!(
                topic,
                partition = number,
                applied,
                in_store = restart_at,
                "the view store lost applied batches; applying them again from the log"
            );
            metrics::counter!("projector_store_rewinds_total").increment(1);
            if let Err(ended) = self.seek_back(topic, number, restart_at) {
                return Some(ended);
            }
        }
        if self.partitions == Partitions::Group {
            let unowned = self.stalls.observe(&self.positions.snapshot(), &owned, Instant::now());
            metrics::gauge!("projector_unowned_partitions").set(unowned.len() as f64);
            if !unowned.is_empty() {
                tracing::warn!(
                    ?unowned,
                    "partitions lag and nobody advances them (a group member died without the group noticing); rejoining the group"
                );
                metrics::counter!("projector_rejoins_total").increment(1);
                return Some(Ended::Rejoin);
            }
        }
        None
    }

    /// The store lost batches before this one: drop the batch, and seek
    /// every partition in it back, to the stored checkpoint where there is
    /// a gap and to the batch's own start elsewhere, so everything from
    /// there is applied again, in order.
    pub(super) fn rewind_batch(
        &self,
        starts: &BTreeMap<(String, i32), i64>,
        gaps: &[((String, i32), i64)],
    ) -> Option<Ended> {
        tracing::warn!(?gaps, "the view store lost applied batches; applying them again from the log");
        metrics::counter!("projector_store_rewinds_total").increment(1);
        let mut rewound = self.rewound.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for ((topic, partition), start) in starts {
            let mut at = *start;
            if let Some((key, stored)) = gaps.iter().find(|(gap, _)| gap.0 == *topic && gap.1 == *partition) {
                if rewound.get(key) == Some(&GapRewind::To(*stored)) {
                    tracing::error!(
                        topic,
                        partition,
                        stored,
                        start,
                        "the records before this batch are no longer in the log; applying from here"
                    );
                    rewound.insert(key.clone(), GapRewind::Unfillable);
                } else {
                    rewound.insert(key.clone(), GapRewind::To(*stored));
                    at = (*stored).min(*start);
                }
            }
            if let Err(ended) = self.seek_back(topic, *partition, at) {
                return Some(ended);
            }
        }
        None
    }

    /// Moves a partition this worker owns back to `next`, in its position
    /// and its consumer; a failed seek means the worker must be rebuilt.
    fn seek_back(&self, topic: &str, partition: i32, next: i64) -> Result<(), Ended> {
        self.positions.rewind(topic, partition, next);
        self.consumer.seek(topic, partition, Offset::Offset(next), Duration::from_secs(5)).map_err(|err| {
            tracing::warn!(error = %err, topic, partition, "seeking back failed; rejoining");
            Ended::Rejoin
        })
    }
}
