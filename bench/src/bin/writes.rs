//! Write throughput over one or more command APIs (issue 14): `PATCH
//! /v1/profile` by many users at once, each request sent to the next
//! command API in turn, beside a plain produce to the same broker at the
//! same concurrency, measured in the same run. Start the instances with
//! `./dev up --instances N`, then `./dev bench-writes`.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bench::measure::{Stats, measure};
use clap::Parser;
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(about = "Write throughput over several command APIs, beside a plain produce")]
struct Args {
    /// The command APIs, comma-separated; requests go to each in turn.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:8080")]
    command_urls: Vec<String>,
    #[arg(long, default_value = "127.0.0.1:19092")]
    kafka_brokers: String,
    /// Writes measured.
    #[arg(long, default_value_t = 3000)]
    ops: usize,
    /// Writes in flight at once (and users writing).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

const PASSWORD: &str = "Bench#writes1";

struct Instances {
    http: reqwest::Client,
    urls: Vec<String>,
}

impl Instances {
    /// Posts `body` to `path` at instance `i`, retrying a 503 (a partition
    /// moving between owners) for up to 30 s.
    async fn send(
        &self,
        i: usize,
        method: reqwest::Method,
        path: &str,
        body: &Value,
        token: Option<&str>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.urls[i % self.urls.len()]);
        for _ in 0..300 {
            let mut request = self.http.request(method.clone(), &url).json(body);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.with_context(|| url.clone())?;
            let status = response.status();
            if status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let text = response.text().await?;
            anyhow::ensure!(status.is_success(), "{url}: {status} {text}");
            return Ok(if text.is_empty() { Value::Null } else { serde_json::from_str(&text)? });
        }
        anyhow::bail!("{url}: still 503 after 30 s")
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let instances = Arc::new(Instances {
        http: reqwest::Client::builder().pool_max_idle_per_host(256).build()?,
        urls: args.command_urls.iter().map(|u| u.trim_end_matches('/').to_owned()).collect(),
    });
    let users = args.concurrency.max(1);
    let mut tokens = Vec::with_capacity(users);
    for n in 0..users {
        let email = format!("writes-{run}-{n}@example.com");
        let signup = json!({"firstName": "Bench", "lastName": "Writer", "emailId": email, "password": PASSWORD});
        instances.send(n, reqwest::Method::POST, "/v1/auth/signup", &signup, None).await?;
        let login = json!({"emailId": email, "password": PASSWORD});
        let answer = instances.send(n + 1, reqwest::Method::POST, "/v1/auth/login", &login, None).await?;
        tokens.push(answer["token"].as_str().context("token")?.to_owned());
    }
    let tokens = Arc::new(tokens);
    let edits = |ops: usize| {
        let (instances, tokens) = (Arc::clone(&instances), Arc::clone(&tokens));
        measure(users, ops, move |i| {
            let (instances, tokens) = (Arc::clone(&instances), Arc::clone(&tokens));
            async move {
                let body = json!({ "about": format!("edit {i}") });
                let token = &tokens[i % tokens.len()];
                instances.send(i, reqwest::Method::PATCH, "/v1/profile", &body, Some(token)).await?;
                Ok(())
            }
        })
    };
    edits(users * 2).await?; // warm-up: connections, caches
    let writes = edits(args.ops).await?;
    let floor = produce_floor(&args, &run, users).await?;
    println!("command APIs: {}", instances.urls.len());
    println!("{:<28} {:>4} {:>9} {:>9} {:>10}", "", "c", "p50 ms", "p99 ms", "per s");
    print_row("PATCH /v1/profile", users, writes);
    print_row("plain produce (floor)", users, floor);
    println!("throughput ratio floor/writes: {:.2}", floor.per_sec / writes.per_sec);
    Ok(())
}

fn print_row(name: &str, c: usize, s: Stats) {
    println!("{name:<28} {c:>4} {:>9.2} {:>9.2} {:>10.0}", s.p50_ms, s.p99_ms, s.per_sec);
}

/// A plain produce of a record the size of an edit to a topic of its own.
async fn produce_floor(args: &Args, run: &str, concurrency: usize) -> anyhow::Result<Stats> {
    let topic = format!("bench-writes-raw-{run}");
    platform::kafka::ensure_topics(&args.kafka_brokers, std::slice::from_ref(&topic), 3, 1).await?;
    let producer = Arc::new(platform::kafka::event_producer(&args.kafka_brokers, Duration::from_secs(10))?);
    bench::measure::plain_produce(&producer, &topic, concurrency, args.ops).await
}
