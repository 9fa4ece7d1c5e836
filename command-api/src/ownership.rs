//! Which partitions this instance owns, as the broker's group protocol says
//! (docs/scale-out.md §1). Every command API joins one consumer group on the
//! topics the write side owns; the broker hands each partition to one live
//! member. No coordinator of our own is involved.
//!
//! The member never reads records through the group: the log follower reads
//! every partition on its own (`log_follower`). So its partitions are paused
//! as soon as they are assigned, and the member only keeps the session
//! alive and reports its assignment.
//!
//! The `range` assignor hands partition `p` of every topic to the same
//! member when the topics have the same partition count (ours do), so
//! ownership is by partition number: the owner of `p` owns every topic's
//! `p`, and every aggregate keyed to `p` (design of keys: one aggregate's
//! topics share its key).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::sync::watch;

/// The partition numbers assigned to this member in every topic.
pub type Assigned = BTreeSet<i32>;

/// This instance's membership in the command APIs' group.
#[derive(Debug, Clone)]
pub struct Membership {
    assigned: watch::Receiver<Assigned>,
    rejoin: Arc<AtomicBool>,
    leave: Arc<AtomicBool>,
}

impl Membership {
    /// Joins `group` on `topics` and keeps the membership on a thread of its
    /// own until the process ends (librdkafka's consumer is blocking).
    pub fn join(brokers: &str, group: &str, topics: Vec<String>) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = platform::kafka::client_config(brokers)
            .set("group.id", group)
            .set("partition.assignment.strategy", "range")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            // An instance killed outright holds its partitions until its
            // session expires: keep that short (the default is 45 s).
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "1000")
            .create()?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&names)?;
        let (report, assigned) = watch::channel(Assigned::new());
        let rejoin = Arc::new(AtomicBool::new(false));
        let leave = Arc::new(AtomicBool::new(false));
        let signals = Signals { rejoin: Arc::clone(&rejoin), leave: Arc::clone(&leave) };
        std::thread::Builder::new()
            .name("group-member".into())
            .spawn(move || keep_membership(consumer, &topics, &report, &signals))?;
        Ok(Self { assigned, rejoin, leave })
    }

    /// The assignment as it stands, and a receiver that sees each change.
    pub fn watch(&self) -> watch::Receiver<Assigned> {
        self.assigned.clone()
    }

    /// Leaves the group and joins again. On Tansu 0.6 that is what moves a
    /// dead member's partitions (docs/self-healing.md, "Partition
    /// ownership"): its coordinator drops an expired member without a new
    /// generation, and the survivors keep the old assignment.
    pub fn rejoin(&self) {
        self.rejoin.store(true, Ordering::Release);
    }

    /// Leaves the group (on shutdown), so the others get this member's
    /// partitions at once instead of after its session expires.
    pub fn leave(&self) {
        self.leave.store(true, Ordering::Release);
    }
}

struct Signals {
    rejoin: Arc<AtomicBool>,
    leave: Arc<AtomicBool>,
}

fn keep_membership(consumer: BaseConsumer, topics: &[String], report: &watch::Sender<Assigned>, signals: &Signals) {
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let mut last = rdkafka::TopicPartitionList::new();
    let rejoin = &*signals.rejoin;
    loop {
        if signals.leave.load(Ordering::Acquire) {
            consumer.unsubscribe();
            // Closing sends LeaveGroup.
            drop(consumer);
            return;
        }
        if rejoin.swap(false, Ordering::AcqRel) {
            tracing::info!("leaving the command APIs' group and joining again");
            consumer.unsubscribe();
            if let Err(err) = consumer.subscribe(&names) {
                tracing::warn!(error = %err, "joining the command APIs' group again failed; retrying");
                rejoin.store(true, Ordering::Release);
            }
        }
        // Polling serves the rebalance callbacks; records never come (the
        // partitions are paused) and would be dropped if they did.
        if let Some(Err(err)) = consumer.poll(Duration::from_millis(200)) {
            tracing::debug!(error = %err, "the group member's poll reported an error");
        }
        let Ok(assignment) = consumer.assignment() else { continue };
        if assignment == last {
            continue;
        }
        if let Err(err) = consumer.pause(&assignment) {
            tracing::warn!(error = %err, "pausing the group member's partitions failed");
        }
        let owned = owned_in_every_topic(topics, &assignment);
        tracing::info!(partitions = ?owned, "the group assigned partitions to this instance");
        report.send_if_modified(|current| {
            let changed = *current != owned;
            *current = owned.clone();
            changed
        });
        last = assignment;
    }
}

/// The partition numbers assigned in every one of `topics`: with the
/// `range` assignor and equal partition counts, every number assigned in
/// one topic is assigned in all. One assigned only partly (a group mixing
/// assignors during an upgrade) is not owned, so nobody acknowledges on a
/// partition whose sibling another instance writes.
fn owned_in_every_topic(topics: &[String], assignment: &rdkafka::TopicPartitionList) -> Assigned {
    let of = |topic: &str| -> BTreeSet<i32> {
        assignment
            .elements_for_topic(topic)
            .iter()
            .map(rdkafka::topic_partition_list::TopicPartitionListElem::partition)
            .collect()
    };
    let mut topics = topics.iter();
    let Some(first) = topics.next() else { return Assigned::new() };
    topics.fold(of(first), |owned, topic| owned.intersection(&of(topic)).copied().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_is_owned_only_when_every_topic_assigns_it() {
        let topics = vec!["users".to_owned(), "connections".to_owned()];
        let mut assignment = rdkafka::TopicPartitionList::new();
        for (topic, partition) in [("users", 0), ("users", 1), ("connections", 1), ("connections", 2)] {
            assignment.add_partition(topic, partition);
        }
        assert_eq!(owned_in_every_topic(&topics, &assignment), BTreeSet::from([1]));
        assert!(owned_in_every_topic(&topics, &rdkafka::TopicPartitionList::new()).is_empty());
    }
}
