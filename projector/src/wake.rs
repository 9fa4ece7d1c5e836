//! Waking a paused projector the moment the command API appends.
//!
//! Tansu answers a fetch only after the consumer's full `fetch.wait.max.ms`
//! and runs a storage query per partition for each fetch, so the short
//! wait that keeps ack → visible low (10 ms) costs the broker most of a core
//! when nothing happens (measured: Tansu at 77 % of a core on an idle dev
//! stack, 0 % with the projector stopped). So an idle worker pauses its
//! partitions (no fetches at all), and resumes when:
//! - the command API announces an append on the `log_appended` channel
//!   (Redis pub/sub: a few hundred microseconds, no polling), or
//! - the watermark poller (every second) shows records not applied yet:
//!   the safety net when Redis is down, a message is lost, or something
//!   else wrote to the topics (a redrive, a dead letter, a test).
//!
//! A lost wake-up therefore costs latency (about a second), never a record.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Notify;

/// Subscribes to `channel` for as long as the process runs (reconnecting
/// after any failure) and wakes `wake` on every message. `notify_one`
/// keeps a permit when nobody waits, so an announcement that arrives
/// between two waits is not lost either.
pub fn spawn_listener(redis_url: String, channel: String, wake: Arc<Notify>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = platform::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            match listen(&redis_url, &channel, &wake).await {
                Ok(()) => {
                    tracing::warn!(%channel, "the wake-up subscription ended; subscribing again");
                    backoff.reset();
                }
                Err(err) => {
                    tracing::warn!(error = %err, %channel, "the wake-up subscription failed; the watermark poll wakes the projector meanwhile")
                }
            }
            // Whatever was announced meanwhile is found by a look at the topics.
            wake.notify_one();
            backoff.wait().await;
        }
    })
}

async fn listen(redis_url: &str, channel: &str, wake: &Notify) -> redis::RedisResult<()> {
    let client = redis::Client::open(redis_url)?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    tracing::info!(%channel, "listening for appends");
    let mut messages = pubsub.on_message();
    while messages.next().await.is_some() {
        wake.notify_one();
    }
    Ok(())
}
