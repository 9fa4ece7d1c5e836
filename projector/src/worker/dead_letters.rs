//! Records that cannot be projected (undecodable, or failing alone after
//! every attempt) go to the dead-letter topic, with headers saying where
//! they came from and why (`redrive` reads them), so that the partition
//! moves on without losing them.

use std::time::Duration;

use events::Topic;
use rdkafka::Message;
use rdkafka::message::{BorrowedMessage, Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

use super::Worker;

/// Why a record could not be projected, for the dead-letter headers.
fn dead_letter_headers(message: &BorrowedMessage<'_>, reason: &str) -> OwnedHeaders {
    let partition = message.partition().to_string();
    let offset = message.offset().to_string();
    OwnedHeaders::new()
        .insert(Header { key: "dlq-reason", value: Some(reason) })
        .insert(Header { key: "dlq-origin-topic", value: Some(message.topic()) })
        .insert(Header { key: "dlq-origin-partition", value: Some(&partition) })
        .insert(Header { key: "dlq-origin-offset", value: Some(&offset) })
}

impl Worker {
    /// Appends a record to the dead-letter topic, retrying with backoff
    /// while the broker is unreachable: a record is never skipped unless it
    /// is safely in `dead-letters`.
    pub(super) async fn dead_letter(&self, message: &BorrowedMessage<'_>, reason: &str) -> anyhow::Result<()> {
        tracing::error!(
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            reason,
            "dead-lettering a record"
        );
        let topic = self.topics.name(Topic::DeadLetters);
        let key = message.key().unwrap_or_default();
        let mut backoff = platform::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        // Made on the first dead letter: an idle librdkafka producer's
        // polling thread costs about 1 % of a core, for a topic that is
        // almost never written.
        let producer = self
            .dead_letters
            .get_or_try_init(|| async {
                platform::kafka::event_producer(&self.dead_letter_brokers, Duration::from_secs(30))
            })
            .await?;
        loop {
            let record = FutureRecord::to(&topic)
                .key(key)
                .payload(message.payload().unwrap_or_default())
                .headers(dead_letter_headers(message, reason));
            match producer.send(record, Duration::from_secs(30)).await {
                Ok(_) => break,
                Err((err, _)) => {
                    tracing::warn!(error = %err, retry_in_ms = backoff.next_delay().as_millis() as u64, "dead-lettering failed; retrying");
                    backoff.wait().await;
                }
            }
        }
        metrics::counter!("projector_dead_letters_total").increment(1);
        Ok(())
    }
}
