//! Keeping the worker's positions true to the store's checkpoints, which
//! are written with the views and so are the truth: the periodic `verify`,
//! and the seek back after a batch found a gap. Both handle a store that
//! lost applied batches, by applying them again from the log.

use std::collections::BTreeMap;
use std::sync::Arc;
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
        } else if self.store.refreshes_caches() {
            self.refill_lost_caches().await;
        }
        let checkpoints = match self.store.checkpoints().await {
            Ok(checkpoints) => checkpoints,
            Err(err) => {
                tracing::debug!(error = %err, "reading the checkpoints failed; verifying later");
                return None;
            }
        };
        for checkpoint in &checkpoints {
            // A rewind below what this process has read starts there.
            self.markers.seed(checkpoint);
        }
        let refresh_from: BTreeMap<(String, i32), Option<i64>> =
            checkpoints.iter().map(|c| ((c.topic.clone(), c.partition), c.refresh_from)).collect();
        let stored: BTreeMap<(String, i32), i64> =
            checkpoints.into_iter().map(|c| ((c.topic, c.partition), c.next_offset)).collect();
        if self.store.refreshes_caches() && !self.caches_degraded.load(Ordering::Relaxed) {
            self.watch_unrefreshed(&stored).await;
        }
        let owned = self.owned();
        for (partition, position) in self.positions.snapshot() {
            let in_store = stored.get(&partition).copied();
            if !owned.contains(&partition) {
                if let Some(next) = in_store {
                    self.positions.rewind(&partition.0, partition.1, next);
                    let from = refresh_from.get(&partition).copied().flatten();
                    self.positions.set_refresh_from(&partition.0, partition.1, from);
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

    /// Fills every cache again from MongoDB, in the background, when Redis
    /// lost them: the fill marker is gone (a flush, a restart without
    /// persistence), or Redis restarted (its `run_id` changed), which with
    /// persistence may have lost its last writes while keeping the marker.
    /// Reads meanwhile fall back to MongoDB key by key, as before.
    async fn refill_lost_caches(&self) {
        let watch = &self.cache_loss;
        if watch.refilling.load(Ordering::Relaxed) {
            return;
        }
        let Ok(run_id) = self.store.redis_run_id().await else { return };
        let restarted = {
            let mut seen = watch.run_id.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let restarted = seen.is_some() && *seen != run_id;
            *seen = run_id;
            restarted
        };
        if restarted {
            tracing::warn!("redis restarted; its last writes may be lost, so every cache is filled again");
            // Whoever fills must finish: without the marker, every
            // projector retries until one does.
            if let Err(err) = self.store.forget_caches_filled().await {
                tracing::debug!(error = %err, "redis unavailable; checking again later");
                return;
            }
        }
        match self.store.caches_filled().await {
            Ok(false) => {}
            Ok(true) | Err(_) => return,
        }
        watch.refilling.store(true, Ordering::Relaxed);
        let (store, refilling) = (self.store.clone(), Arc::clone(&watch.refilling));
        tokio::spawn(async move {
            let started = Instant::now();
            match store.refill_caches().await {
                Ok(true) => {
                    metrics::counter!("projector_cache_refills_total").increment(1);
                    tracing::info!(seconds = started.elapsed().as_secs_f64(), "caches filled from MongoDB");
                }
                Ok(false) => tracing::debug!("another projector is filling the caches"),
                Err(err) => tracing::warn!(error = %err, "filling the caches failed; trying again"),
            }
            refilling.store(false, Ordering::Relaxed);
        });
    }

    /// Notices a batch whose cache refresh a crash cut off and nobody
    /// redid: its partition's checkpoint stays ahead of the refreshed mark
    /// for `stall_after` without moving. Usually the partition's next owner
    /// re-reads that batch (`refresh_from`); this covers a partition that
    /// gets no live owner, such as one a killed member keeps while nothing
    /// new arrives. The fill marker is then dropped, and every cache is
    /// filled again from MongoDB (`refill_lost_caches`).
    async fn watch_unrefreshed(&self, checkpoints: &BTreeMap<(String, i32), i64>) {
        let partitions: Vec<(String, i32)> = checkpoints.keys().cloned().collect();
        let Ok(refreshed) = self.store.refreshed_positions(&partitions).await else { return };
        let now = Instant::now();
        let mut overdue = Vec::new();
        {
            let mut behind = self.cache_loss.behind.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for (partition, refreshed) in partitions.iter().zip(refreshed) {
                let next = checkpoints[partition];
                if refreshed.unwrap_or(0) >= next {
                    behind.remove(partition);
                    continue;
                }
                let since = behind.entry(partition.clone()).or_insert((next, now));
                if since.0 != next {
                    // Moving: an owner is at work, and its refresh follows.
                    *since = (next, now);
                } else if now.duration_since(since.1) >= self.stalls.stall_after() {
                    overdue.push(partition.clone());
                }
            }
            if !overdue.is_empty() {
                behind.clear();
            }
        }
        if overdue.is_empty() {
            return;
        }
        tracing::warn!(
            ?overdue,
            "the caches of these partitions' last batches were never refreshed and nobody re-reads them; filling every cache again"
        );
        metrics::counter!("projector_unrefreshed_batches_total").increment(overdue.len() as u64);
        if let Err(err) = self.store.forget_caches_filled().await {
            tracing::debug!(error = %err, "redis unavailable; checking again later");
        }
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
