//! The live streams of one query API process, served from one Redis
//! connection.
//!
//! Each open `/v1/stream` used to hold a Redis connection of its own for
//! its blocking XREAD; enough streams exhausted Redis for every service.
//! Now a single task, the hub, reads the `stream:<user>` keys of every open
//! stream with one `XREAD BLOCK` over all of them and hands each entry to
//! the streams of that user. The number of streams is capped per user and
//! in total (429 past either), and a stream that cannot keep up is closed
//! rather than buffered without bound: its client resumes with
//! `Last-Event-ID` from what Redis still holds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

/// How long one XREAD of the hub waits for entries. A stream opened during
/// a read gets its first entries at most this much later; nothing is lost,
/// since its cursor is where it started.
const HUB_BLOCK: Duration = Duration::from_millis(500);

/// Entries per key per XREAD.
const READ_COUNT: usize = 100;

/// Entries waiting for one stream's client before the stream is closed as
/// too slow.
const STREAM_BUFFER: usize = 256;

/// One entry of a user's Redis stream, as the SSE event sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    pub id: String,
    pub kind: String,
    pub data: String,
}

#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    pub per_user: usize,
    pub total: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("this user already has {0} live streams open")]
    PerUser(usize),
    #[error("the server has {0} live streams open")]
    Total(usize),
}

/// A Redis stream id, `<ms>-<seq>`, as a comparable pair.
pub fn parse_stream_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(ms) || !all_digits(seq) {
        return None;
    }
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

struct Listener {
    tx: mpsc::Sender<StreamEntry>,
    /// The last entry id this stream has been given (or started after).
    after: (u64, u64),
}

#[derive(Default)]
struct Registry {
    /// Redis key → the open streams reading it (all of one user).
    by_key: HashMap<String, HashMap<u64, Listener>>,
    total: usize,
    next_id: u64,
}

impl Registry {
    /// Each key with the oldest cursor among its streams.
    fn cursors(&self) -> Vec<(String, (u64, u64))> {
        self.by_key
            .iter()
            .filter_map(|(key, listeners)| listeners.values().map(|l| l.after).min().map(|after| (key.clone(), after)))
            .collect()
    }

    /// Hands `entries` of `key` to each stream that has not had them; a
    /// stream whose buffer is full, or whose client went, is dropped.
    fn deliver(&mut self, key: &str, entries: &[((u64, u64), StreamEntry)]) {
        let Some(listeners) = self.by_key.get_mut(key) else { return };
        let mut gone = Vec::new();
        for (id, listener) in listeners.iter_mut() {
            let unseen = listener.after;
            for (entry_id, entry) in entries.iter().filter(|(entry_id, _)| *entry_id > unseen) {
                if listener.tx.try_send(entry.clone()).is_err() {
                    gone.push(*id);
                    break;
                }
                listener.after = *entry_id;
            }
        }
        for id in gone {
            tracing::info!(
                key,
                "a live stream fell too far behind; closing it (the client resumes with Last-Event-ID)"
            );
            metrics::counter!("streams_closed_slow_total").increment(1);
            listeners.remove(&id);
            self.total -= 1;
        }
        if listeners.is_empty() {
            self.by_key.remove(key);
        }
    }
}

/// Shared by the HTTP handlers (to open streams) and the hub task.
#[derive(Clone)]
pub struct StreamHub {
    registry: Arc<Mutex<Registry>>,
    opened: Arc<Notify>,
    limits: StreamLimits,
}

impl std::fmt::Debug for StreamHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamHub").field("limits", &self.limits).finish_non_exhaustive()
    }
}

/// An open stream: entries arrive on `entries`; dropping it unregisters it.
pub struct Subscription {
    pub entries: mpsc::Receiver<StreamEntry>,
    key: String,
    id: u64,
    registry: Arc<Mutex<Registry>>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut registry = lock(&self.registry);
        let Some(listeners) = registry.by_key.get_mut(&self.key) else { return };
        // Absent when the hub already dropped it as too slow.
        if listeners.remove(&self.id).is_some() {
            if listeners.is_empty() {
                registry.by_key.remove(&self.key);
            }
            registry.total -= 1;
        }
        metrics::gauge!("streams_open").set(registry.total as f64);
    }
}

fn lock(registry: &Mutex<Registry>) -> MutexGuard<'_, Registry> {
    registry.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl StreamHub {
    pub fn new(limits: StreamLimits) -> Self {
        Self { registry: Arc::default(), opened: Arc::new(Notify::new()), limits }
    }

    /// Registers a stream of `key` that starts after entry `after`, if the
    /// caps allow. Checked and counted under one lock: forty simultaneous
    /// opens cannot all slip under the cap.
    pub fn open(&self, key: String, after: (u64, u64)) -> Result<Subscription, OpenError> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let mut registry = lock(&self.registry);
        if registry.total >= self.limits.total {
            return Err(OpenError::Total(registry.total));
        }
        let per_user = registry.by_key.get(&key).map_or(0, HashMap::len);
        if per_user >= self.limits.per_user {
            return Err(OpenError::PerUser(per_user));
        }
        let id = registry.next_id;
        registry.next_id += 1;
        registry.by_key.entry(key.clone()).or_default().insert(id, Listener { tx, after });
        registry.total += 1;
        metrics::gauge!("streams_open").set(registry.total as f64);
        drop(registry);
        self.opened.notify_one();
        Ok(Subscription { entries: rx, key, id, registry: Arc::clone(&self.registry) })
    }

    /// Reads every open stream's key from Redis and delivers the entries,
    /// for ever. A Redis outage leaves the streams open: they receive
    /// nothing meanwhile and catch up from their cursors afterwards.
    pub async fn run(self, client: redis::Client) {
        // The response timeout must outlast the BLOCK.
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(HUB_BLOCK + Duration::from_secs(5)));
        let mut backoff = platform::Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
        let mut connection = None;
        loop {
            let cursors = lock(&self.registry).cursors();
            if cursors.is_empty() {
                self.opened.notified().await;
                continue;
            }
            let redis = match connection.as_mut() {
                Some(redis) => redis,
                None => match client.get_multiplexed_async_connection_with_config(&config).await {
                    Ok(redis) => connection.insert(redis),
                    Err(err) => {
                        tracing::warn!(error = %err, "the live-stream hub cannot reach redis; retrying");
                        backoff.wait().await;
                        continue;
                    }
                },
            };
            match read(redis, &cursors).await {
                Ok(entries) => {
                    backoff = platform::Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
                    let mut registry = lock(&self.registry);
                    for (key, entries) in entries {
                        registry.deliver(&key, &entries);
                    }
                    metrics::gauge!("streams_open").set(registry.total as f64);
                }
                Err(err) => {
                    tracing::warn!(error = %err, "the live-stream hub's read failed; retrying");
                    connection = None;
                    backoff.wait().await;
                }
            }
        }
    }
}

type KeyEntries = Vec<(String, Vec<((u64, u64), StreamEntry)>)>;

/// One `XREAD BLOCK` over every key, each from its oldest cursor.
async fn read(
    redis: &mut redis::aio::MultiplexedConnection,
    cursors: &[(String, (u64, u64))],
) -> redis::RedisResult<KeyEntries> {
    let mut command = redis::cmd("XREAD");
    command.arg("BLOCK").arg(HUB_BLOCK.as_millis() as u64).arg("COUNT").arg(READ_COUNT).arg("STREAMS");
    for (key, _) in cursors {
        command.arg(key);
    }
    for (_, (ms, seq)) in cursors {
        command.arg(format!("{ms}-{seq}"));
    }
    let reply: Option<redis::streams::StreamReadReply> = command.query_async(redis).await?;
    Ok(reply
        .into_iter()
        .flat_map(|r| r.keys)
        .map(|key| {
            let entries = key
                .ids
                .into_iter()
                .filter_map(|entry| {
                    let id = parse_stream_id(&entry.id)?;
                    let kind: String = entry.get("kind").unwrap_or_default();
                    let data: String = entry.get("data").unwrap_or_default();
                    Some((id, StreamEntry { id: entry.id, kind, data }))
                })
                .collect();
            (key.key, entries)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ms: u64) -> ((u64, u64), StreamEntry) {
        ((ms, 0), StreamEntry { id: format!("{ms}-0"), kind: "message".into(), data: "{}".into() })
    }

    #[test]
    fn the_caps_hold_per_user_and_in_total() {
        let hub = StreamHub::new(StreamLimits { per_user: 2, total: 3 });
        let a1 = hub.open("stream:a".into(), (0, 0)).expect("first");
        let _a2 = hub.open("stream:a".into(), (0, 0)).expect("second");
        assert_eq!(hub.open("stream:a".into(), (0, 0)).err(), Some(OpenError::PerUser(2)));
        let _b1 = hub.open("stream:b".into(), (0, 0)).expect("another user");
        assert_eq!(hub.open("stream:c".into(), (0, 0)).err(), Some(OpenError::Total(3)));
        drop(a1);
        hub.open("stream:c".into(), (0, 0)).expect("a closed stream frees its place");
    }

    #[test]
    fn each_stream_gets_each_entry_after_its_own_cursor_once() {
        let hub = StreamHub::new(StreamLimits { per_user: 5, total: 5 });
        let mut early = hub.open("stream:a".into(), (0, 0)).expect("opens");
        let mut late = hub.open("stream:a".into(), (2, 0)).expect("opens");
        assert_eq!(lock(&hub.registry).cursors(), vec![("stream:a".to_owned(), (0, 0))], "the oldest cursor is read");
        let batch = [entry(1), entry(2), entry(3)];
        lock(&hub.registry).deliver("stream:a", &batch);
        lock(&hub.registry).deliver("stream:a", &batch); // read again: nothing twice
        let ids =
            |s: &mut Subscription| std::iter::from_fn(|| s.entries.try_recv().ok()).map(|e| e.id).collect::<Vec<_>>();
        assert_eq!(ids(&mut early), ["1-0", "2-0", "3-0"]);
        assert_eq!(ids(&mut late), ["3-0"]);
    }

    #[test]
    fn a_stream_that_cannot_keep_up_is_closed_not_buffered() {
        let hub = StreamHub::new(StreamLimits { per_user: 5, total: 5 });
        let mut slow = hub.open("stream:a".into(), (0, 0)).expect("opens");
        let flood: Vec<_> = (1..=STREAM_BUFFER as u64 + 1).map(entry).collect();
        lock(&hub.registry).deliver("stream:a", &flood);
        assert_eq!(lock(&hub.registry).total, 0, "dropped from the hub");
        let mut received = 0;
        while slow.entries.try_recv().is_ok() {
            received += 1;
        }
        assert_eq!(received, STREAM_BUFFER, "what fitted arrives; then the stream ends");
        drop(slow);
        assert_eq!(lock(&hub.registry).total, 0, "no double count on drop");
    }

    #[test]
    fn stream_ids_parse_strictly() {
        assert_eq!(parse_stream_id("1700000000000-3"), Some((1_700_000_000_000, 3)));
        for bad in ["", "-", "1-", "-1", "1", "a-1", "1-b", "1-2-3", "+1-2"] {
            assert_eq!(parse_stream_id(bad), None, "{bad:?}");
        }
    }
}
