//! Steady-state reads under sustained load, driven by `wrk` (a C load
//! generator: on a 2-core box a client written with reqwest would take
//! most of a core from the service it measures), beside the raw floor of
//! the same Redis driven by its own C client, `redis-benchmark`, at the
//! same concurrency in the same run.

use std::process::Command;

use anyhow::Context;

/// wrk's duration per read, the Redis URL, the query API's URL.
pub type Settings = (u64, String, String);

/// What one sustained run measured.
#[derive(Debug, Clone, Copy)]
pub struct Sustained {
    pub concurrency: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub per_sec: f64,
}

/// The reads the targets name, each under load, and the floor.
pub struct Loaded {
    pub redis_get: Sustained,
    pub own_profile: Sustained,
    pub connections: Sustained,
    pub feed: Sustained,
    pub seconds: u64,
}

/// Runs the sustained reads, or says why it cannot.
pub fn measure(
    (seconds, redis_url, query_url): &Settings,
    profile_token: &str,
    connections_token: &str,
    feed_token: &str,
) -> anyhow::Result<Loaded> {
    let seconds = *seconds;
    let redis_get = redis_floor(redis_url, 32)?;
    let url = |path: &str| format!("{query_url}{path}");
    let own_profile = wrk(&url("/v1/profile"), profile_token, 32, seconds)?;
    let connections = wrk(&url("/v1/connections"), connections_token, 32, seconds)?;
    let feed = wrk(&url("/v1/feed?page=1&limit=50"), feed_token, 64, seconds)?;
    Ok(Loaded { redis_get, own_profile, connections, feed, seconds })
}

/// `redis-benchmark` GETs of a 350-byte value (a cached profile's size).
fn redis_floor(redis_url: &str, concurrency: usize) -> anyhow::Result<Sustained> {
    let url = reqwest::Url::parse(redis_url).context("--redis-url")?;
    let host = url.host_str().unwrap_or("127.0.0.1").to_owned();
    let port = url.port().unwrap_or(6379).to_string();
    let mut command = Command::new("redis-benchmark");
    command.args(["-h", &host, "-p", &port, "-c", &concurrency.to_string(), "-n", "1000000"]);
    command.args(["-t", "get", "-d", "350", "--csv"]);
    if !url.password().unwrap_or("").is_empty() {
        command.args(["-a", url.password().unwrap_or("")]);
    }
    let output = command.output().context("running redis-benchmark (Debian's redis-tools)")?;
    anyhow::ensure!(output.status.success(), "redis-benchmark: {}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8_lossy(&output.stdout);
    parse_redis_benchmark(&text, concurrency).with_context(|| format!("redis-benchmark said: {text}"))
}

/// The `GET` line of `redis-benchmark --csv`: rps, avg, min, p50, p95, p99, max.
fn parse_redis_benchmark(csv: &str, concurrency: usize) -> Option<Sustained> {
    let line = csv.lines().find(|l| l.starts_with("\"GET\""))?;
    let fields: Vec<f64> = line.split(',').skip(1).filter_map(|f| f.trim_matches('"').parse().ok()).collect();
    Some(Sustained { concurrency, per_sec: *fields.first()?, p50_ms: *fields.get(3)?, p99_ms: *fields.get(5)? })
}

/// `wrk` against one authenticated read for `seconds`. Any answer but a
/// 2xx fails the measurement: a fast error is not a fast read.
fn wrk(url: &str, token: &str, concurrency: usize, seconds: u64) -> anyhow::Result<Sustained> {
    let output = Command::new("wrk")
        .args(["-t2", &format!("-c{concurrency}"), &format!("-d{seconds}s"), "--latency", "--timeout", "10s"])
        .args(["-H", &format!("Authorization: Bearer {token}"), url])
        .output()
        .context("running wrk (Debian's wrk)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(output.status.success(), "wrk: {}{}", text, String::from_utf8_lossy(&output.stderr));
    anyhow::ensure!(!text.contains("Non-2xx"), "{url} answered errors under load:\n{text}");
    parse_wrk(&text, concurrency).with_context(|| format!("wrk said: {text}"))
}

fn parse_wrk(text: &str, concurrency: usize) -> Option<Sustained> {
    let percentile =
        |p: &str| text.lines().map(str::trim).find_map(|l| l.strip_prefix(p)).map(str::trim).and_then(wrk_duration_ms);
    let per_sec = text.lines().find_map(|l| l.strip_prefix("Requests/sec:")).and_then(|v| v.trim().parse().ok())?;
    Some(Sustained { concurrency, p50_ms: percentile("50%")?, p99_ms: percentile("99%")?, per_sec })
}

/// `wrk`'s durations: `812.00us`, `1.23ms`, `1.05s`, `2.00m`.
fn wrk_duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let per_ms = match unit {
        "us" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        "m" => 60e3,
        _ => return None,
    };
    Some(number * per_ms)
}

impl Loaded {
    pub fn print(&self) {
        println!(
            "sustained reads ({} s each, wrk; floor: redis-benchmark GET of 350 bytes at c=32, same run):",
            self.seconds
        );
        let floor = self.redis_get;
        let row = |name: &str, s: Sustained| {
            println!(
                "{name:<34} {:>3} {:>9.2} {:>9.2} {:>10.0}   {:>18.1}x",
                s.concurrency,
                s.p50_ms,
                s.p99_ms,
                s.per_sec,
                floor.per_sec / s.per_sec
            );
        };
        row("raw: redis GET (redis-benchmark)", floor);
        row("GET /v1/profile", self.own_profile);
        row("GET /v1/connections", self.connections);
        row("GET /v1/feed page 1, limit 50", self.feed);
        println!(
            "targets: own profile >= 25000 req/s at c=32 ({:.0}); connections >= 5000 req/s at c=32 ({:.0}); feed p99 <= 50 ms at c=64 ({:.1} ms)",
            self.own_profile.per_sec, self.connections.per_sec, self.feed.p99_ms
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_and_redis_benchmark_output() {
        let wrk = "Running 15s test @ http://127.0.0.1:8081/v1/profile\n  2 threads and 32 connections\n  Latency Distribution\n     50%  812.00us\n     75%    1.10ms\n     90%    1.50ms\n     99%    4.25ms\n  377231 requests in 15.00s, 180.00MB read\nRequests/sec:  25148.71\nTransfer/sec:     12.00MB\n";
        let s = parse_wrk(wrk, 32).expect("parsed");
        assert!(
            (s.p50_ms - 0.812).abs() < 1e-9 && (s.p99_ms - 4.25).abs() < 1e-9 && (s.per_sec - 25148.71).abs() < 1e-6
        );
        assert_eq!(wrk_duration_ms("1.05s"), Some(1050.0));
        let csv = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\"GET\",\"149253.73\",\"0.180\",\"0.048\",\"0.167\",\"0.287\",\"0.391\",\"1.191\"\n";
        let floor = parse_redis_benchmark(csv, 32).expect("parsed");
        assert!(
            (floor.per_sec - 149_253.73).abs() < 1e-6
                && (floor.p50_ms - 0.167).abs() < 1e-9
                && (floor.p99_ms - 0.391).abs() < 1e-9
        );
    }
}
