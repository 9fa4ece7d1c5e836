//! Who may write a partition, as a rule written into the log itself
//! (docs/scale-out.md §2). Our broker has no transactions, so a writer that
//! lost its claim (a paused process that woke up, a send that timed out and
//! landed later) cannot be fenced by the broker. Instead:
//!
//! * a writer that starts owning a partition first appends an **owner
//!   marker** to it. The marker's offset is the writer's **epoch**: unique
//!   and ordered the way the partition is;
//! * every command record it appends carries that epoch in the
//!   `owner-epoch` header;
//! * every reader counts a record that carries an epoch only when that
//!   epoch is the offset of the last marker before it
//!   ([`MarkerIndex::judge`]). A record sent under an older claim that lands
//!   after a newer marker is ignored by all of them alike.
//!
//! A record without an epoch counts: the history from before the first
//! marker, a record re-driven from the dead letters, an import. Such
//! writers never went through a write model, so there is no claim of
//! theirs to fence; the rule fences the command APIs, which always stamp.
//! (The command API from before markers did not stamp: it must be stopped
//! before the first instance that does starts, docs/scale-out.md §2.)
//!
//! Also here: the partitioner, so a writer knows the partition (and so the
//! epoch to stamp) before it sends.

use std::collections::BTreeSet;

/// Header on a marker record; its value is the claiming instance's id.
pub const MARKER_HEADER: &str = "owner-marker";
/// Header on a command record: the epoch (marker offset) it was sent under.
pub const EPOCH_HEADER: &str = "owner-epoch";

/// What a record is, by its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// An owner marker: its offset becomes the partition's epoch.
    Marker,
    /// A command's events, sent under `epoch` (`None`: by a writer that
    /// does not stamp one).
    Commit { epoch: Option<i64> },
}

impl RecordKind {
    /// Classifies a record by its headers (name, value). An `owner-epoch`
    /// that is not a number is no epoch at all, so such a record only
    /// counts where no marker precedes it.
    pub fn from_headers<'a>(headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>) -> Self {
        let (mut epoch, mut malformed_epoch) = (None, false);
        for (name, value) in headers {
            match name {
                MARKER_HEADER => return RecordKind::Marker,
                EPOCH_HEADER => {
                    epoch = value.and_then(|v| std::str::from_utf8(v).ok()).and_then(|v| v.parse::<i64>().ok());
                    malformed_epoch = epoch.is_none();
                }
                _ => {}
            }
        }
        // A header we cannot read never matches a marker's offset.
        let epoch = if malformed_epoch { Some(-1) } else { epoch };
        RecordKind::Commit { epoch }
    }
}

/// What a reader does with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A marker: nothing to apply; the partition's epoch is now its offset.
    Marker,
    /// A command record to apply.
    Counts,
    /// A command record sent under a claim a later marker had superseded
    /// when it landed: no reader applies it.
    Fenced { epoch: i64, current: i64 },
}

/// The marker offsets a reader knows of in one partition. Readers that
/// start mid-partition seed it with the epoch stored at their start (a
/// snapshot's, a checkpoint's), then note each marker they read. Noting a
/// true marker offset is always safe, so seeding twice or re-reading a
/// stretch changes nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MarkerIndex(BTreeSet<i64>);

impl MarkerIndex {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn note(&mut self, marker_offset: i64) {
        self.0.insert(marker_offset);
    }

    /// The epoch in force at `offset`: the last marker before it.
    pub fn epoch_before(&self, offset: i64) -> Option<i64> {
        self.0.range(..offset).next_back().copied()
    }

    /// The last marker known.
    pub fn latest(&self) -> Option<i64> {
        self.0.last().copied()
    }

    /// Whether any marker lies strictly between `after` and `before`.
    pub fn any_between(&self, after: i64, before: i64) -> bool {
        after + 1 < before && self.0.range(after + 1..before).next().is_some()
    }

    /// Forgets markers a reader at `offset` or later can no longer need:
    /// all but the last one before it.
    pub fn forget_before(&mut self, offset: i64) {
        if let Some(keep) = self.epoch_before(offset) {
            self.0 = self.0.split_off(&keep);
        }
    }

    /// Judges the record at `offset` (noting it when it is a marker).
    ///
    /// A stamped record with no marker known before it counts: with the
    /// index seeded from stored state that only happens to a reader that
    /// lost its state, and nothing it knows contradicts the record.
    pub fn judge(&mut self, offset: i64, kind: RecordKind) -> Verdict {
        match kind {
            RecordKind::Marker => {
                self.note(offset);
                Verdict::Marker
            }
            RecordKind::Commit { epoch: None } => Verdict::Counts,
            RecordKind::Commit { epoch: Some(epoch) } => match self.epoch_before(offset) {
                None => Verdict::Counts,
                Some(current) if epoch == current => Verdict::Counts,
                Some(current) => Verdict::Fenced { epoch, current },
            },
        }
    }
}

/// Kafka's default partitioner (the Java client's, and librdkafka's
/// `murmur2_random` for a non-empty key): `murmur2(key) & 0x7fffffff`
/// modulo the partition count. Computing it ourselves lets a writer send to
/// an explicit partition, stamped with that partition's epoch, and land
/// exactly where the configured partitioner put every earlier record.
pub fn partition_for(key: &[u8], partitions: i32) -> i32 {
    let positive = murmur2(key) & 0x7fff_ffff;
    // `partitions` is a broker's partition count: at least 1.
    (positive % partitions.max(1) as u32) as i32
}

/// MurmurHash2 as Kafka's `Utils.murmur2` computes it (seed 0x9747b28c).
fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(epoch: Option<i64>) -> RecordKind {
        RecordKind::Commit { epoch }
    }

    #[test]
    fn murmur2_matches_kafkas_reference_values() {
        // Kafka's UtilsTest.testMurmur2.
        let cases: [(&str, i32); 6] = [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            ("abc", 479_470_107),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2(key.as_bytes()) as i32, expected, "{key}");
        }
    }

    #[test]
    fn given_no_marker_when_records_arrive_then_they_count_with_or_without_an_epoch() {
        let mut index = MarkerIndex::default();
        assert_eq!(index.judge(0, commit(None)), Verdict::Counts);
        assert_eq!(index.judge(1, commit(Some(7))), Verdict::Counts);
    }

    #[test]
    fn given_a_marker_then_only_its_epoch_counts_after_it() {
        let mut index = MarkerIndex::default();
        assert_eq!(index.judge(0, commit(None)), Verdict::Counts);
        assert_eq!(index.judge(3, RecordKind::Marker), Verdict::Marker);
        assert_eq!(index.judge(4, commit(Some(3))), Verdict::Counts);
        assert_eq!(index.judge(5, commit(Some(1))), Verdict::Fenced { epoch: 1, current: 3 });
        // A writer that stamps no epoch (an import, a redrive) is no claim to fence.
        assert_eq!(index.judge(5, commit(None)), Verdict::Counts);
        // A second claim supersedes the first: a late send of the first is fenced.
        assert_eq!(index.judge(6, RecordKind::Marker), Verdict::Marker);
        assert_eq!(index.judge(7, commit(Some(3))), Verdict::Fenced { epoch: 3, current: 6 });
        assert_eq!(index.judge(8, commit(Some(6))), Verdict::Counts);
    }

    #[test]
    fn given_a_seeded_index_when_rereading_an_old_stretch_then_verdicts_do_not_change() {
        let mut index = MarkerIndex::default();
        index.note(10);
        index.note(20);
        assert_eq!(index.judge(15, commit(Some(10))), Verdict::Counts);
        assert_eq!(index.judge(25, commit(Some(10))), Verdict::Fenced { epoch: 10, current: 20 });
        assert!(index.any_between(10, 25) && !index.any_between(20, 25) && !index.any_between(20, 21));
        index.forget_before(25);
        assert_eq!(index.latest(), Some(20));
        assert_eq!(index.epoch_before(25), Some(20));
    }

    #[test]
    fn headers_classify_records() {
        let marker = RecordKind::from_headers([(MARKER_HEADER, Some(&b"cmd-1"[..]))]);
        assert_eq!(marker, RecordKind::Marker);
        let stamped = RecordKind::from_headers([(EPOCH_HEADER, Some(&b"42"[..]))]);
        assert_eq!(stamped, commit(Some(42)));
        let garbled = RecordKind::from_headers([(EPOCH_HEADER, Some(&b"4x"[..]))]);
        assert_eq!(garbled, commit(Some(-1)));
        let redriven = RecordKind::from_headers([("redriven-from", Some(&b"dl/0/1"[..]))]);
        assert_eq!(redriven, commit(None));
        assert_eq!(RecordKind::from_headers([]), commit(None));
    }

    #[test]
    fn partitions_stay_in_range() {
        for key in ["", "a", "0195f7a0-0000-7000-8000-000000000000"] {
            let p = partition_for(key.as_bytes(), 3);
            assert!((0..3).contains(&p));
        }
    }
}
