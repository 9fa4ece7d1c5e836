//! Timing an operation many times over, and printing the figures.
#![allow(clippy::print_stdout)] // a benchmark prints its figures

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub per_sec: f64,
}

/// One operation measured one at a time and 64 at a time.
#[derive(Debug, Clone, Copy)]
pub struct Pair {
    pub one: Stats,
    pub many: Stats,
}

/// Runs `ops` operations, `concurrency` at a time; op `i` is `f(i)`.
pub async fn measure<F, Fut>(concurrency: usize, ops: usize, f: F) -> anyhow::Result<Stats>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let f = Arc::new(f);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers = (0..concurrency).map(|_| {
        let (f, next) = (Arc::clone(&f), Arc::clone(&next));
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= ops {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let t = Instant::now();
                f(i).await?;
                latencies.push(t.elapsed());
            }
        })
    });
    let mut all: Vec<Duration> = Vec::with_capacity(ops);
    for worker in futures::future::join_all(workers).await {
        all.extend(worker??);
    }
    let elapsed = started.elapsed();
    all.sort();
    let pct = |p: f64| percentile_ms(&all, p);
    Ok(Stats { p50_ms: pct(0.50), p99_ms: pct(0.99), per_sec: all.len() as f64 / elapsed.as_secs_f64() })
}

/// Plain produces of a 400-byte record to `topic`, `concurrency` at a time:
/// the raw floor of a write, with no code of ours in the way.
pub async fn plain_produce(
    producer: &Arc<rdkafka::producer::FutureProducer>,
    topic: &str,
    concurrency: usize,
    ops: usize,
) -> anyhow::Result<Stats> {
    let (producer, payload, topic) = (Arc::clone(producer), Arc::new(vec![b'x'; 400]), topic.to_owned());
    measure(concurrency, ops, move |i| {
        let (producer, payload, topic) = (Arc::clone(&producer), Arc::clone(&payload), topic.clone());
        async move {
            let key = format!("k{i}");
            let record = rdkafka::producer::FutureRecord::to(&topic).key(&key).payload(payload.as_slice());
            producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e)?;
            Ok(())
        }
    })
    .await
}

/// The `p` percentile of sorted durations, in milliseconds.
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)].as_secs_f64() * 1e3
}

pub fn row(name: &str, c: usize, s: Stats, floor: Option<Stats>) {
    let ratio =
        floor.map_or(String::new(), |f| format!("{:>8.1}x {:>8.1}x", s.p50_ms / f.p50_ms, f.per_sec / s.per_sec));
    println!("{name:<34} {c:>3} {:>9.2} {:>9.2} {:>10.0}   {ratio}", s.p50_ms, s.p99_ms, s.per_sec);
}

/// The two rows of a pair, concurrency 1 then 64, each beside the floor
/// of the same concurrency.
pub fn rows(name: &str, pair: Pair, floor: Option<Pair>) {
    row(name, 1, pair.one, floor.map(|f| f.one));
    row(name, 64, pair.many, floor.map(|f| f.many));
}
