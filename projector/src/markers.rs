//! The owner markers this process knows per partition, and the reader rule
//! every record passes before it is applied (`events::owner`,
//! docs/scale-out.md §2): a command record counts only under the epoch of
//! the last marker before it. Without the rule, the views could show a
//! write that a fenced command API sent and never acknowledged, and that no
//! write model holds.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use events::owner::{MarkerIndex, Verdict};
use rdkafka::Message;
use views::CheckpointDoc;

#[derive(Debug, Clone, Default)]
pub struct Markers(Arc<Mutex<BTreeMap<(String, i32), MarkerIndex>>>);

impl Markers {
    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<(String, i32), MarkerIndex>) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Notes the epochs a checkpoint stores, so that a partition started at
    /// its `nextOffset` or its `refreshFrom` judges records as a reader
    /// from offset 0 would.
    pub fn seed(&self, checkpoint: &CheckpointDoc) {
        self.with(|all| {
            let index = all.entry((checkpoint.topic.clone(), checkpoint.partition)).or_default();
            for epoch in [checkpoint.epoch, checkpoint.refresh_epoch].into_iter().flatten() {
                index.note(epoch);
            }
        });
    }

    /// Whether `message` is a command record to apply. Markers are noted;
    /// fenced records are counted and logged, and never applied.
    pub fn admit(&self, message: &impl Message) -> bool {
        let kind = platform::kafka::record_kind(message);
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        let verdict = self.with(|all| all.entry((topic.to_owned(), partition)).or_default().judge(offset, kind));
        match verdict {
            Verdict::Counts => true,
            Verdict::Marker => {
                tracing::debug!(topic, partition, offset, "an owner marker");
                false
            }
            Verdict::Fenced { epoch, current } => {
                platform::kafka::report_fenced("projector_fenced_records_total", message, epoch, current);
                false
            }
        }
    }

    /// The indexes of `partitions`, for their checkpoints' epochs.
    pub fn of<'a>(
        &self,
        partitions: impl IntoIterator<Item = &'a (String, i32)>,
    ) -> BTreeMap<(String, i32), MarkerIndex> {
        self.with(|all| {
            partitions.into_iter().filter_map(|p| all.get(p).map(|index| (p.clone(), index.clone()))).collect()
        })
    }
}
