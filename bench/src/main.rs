//! Prints latency and throughput of DevConnect's commands and reads, beside
//! the raw floor of the same servers measured in the same run: a plain
//! produce to the same broker and a plain Redis GET. Run it against a
//! running stack (`./dev up`, then `./dev bench`).
#![allow(clippy::print_stdout)]

mod accounts;
mod api;
mod feed;
mod floor;
mod loaded;
mod messages;
mod report;
mod requests;

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

/// Quiet before each "after idle" edit: above the projector's default idle
/// pause (2 s).
pub const IDLE_GAP: Duration = Duration::from_secs(3);

use crate::api::Api;
// Shared with the other benchmark binaries.
use bench::measure;

#[derive(Debug, Parser)]
#[command(about = "DevConnect benchmark")]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    command_url: String,
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    query_url: String,
    #[arg(long, default_value = "127.0.0.1:19092")]
    kafka_brokers: String,
    #[arg(long, default_value = "redis://127.0.0.1:16379/")]
    redis_url: String,
    #[arg(long, default_value = "mongodb://127.0.0.1:27117/?retryWrites=false&directConnection=true")]
    mongo_uri: String,
    #[arg(long, default_value = "devconnect")]
    mongo_database: String,
    /// The deployment's topic prefix (empty for the dev stack).
    #[arg(long, default_value = "")]
    topic_prefix: String,
    /// Users to seed (straight into user-events, as an import would) before
    /// measuring the feed; 0 skips seeding.
    #[arg(long, default_value_t = 100_000)]
    feed_users: usize,
    /// Seconds of each sustained read (wrk) at the end.
    #[arg(long, default_value_t = 15)]
    wrk_seconds: u64,
    /// Operations per measurement at concurrency 1.
    #[arg(long, default_value_t = 200)]
    serial_ops: usize,
    /// Operations per measurement at concurrency 64.
    #[arg(long, default_value_t = 1280)]
    parallel_ops: usize,
}

/// What every phase needs: the APIs, this run's id and how many
/// operations a measurement makes.
struct Run {
    api: Arc<Api>,
    /// Names what this run creates (accounts, topics, keys).
    id: String,
    /// Operations per measurement at concurrency 1.
    serial: usize,
    /// Operations per measurement at concurrency 64.
    parallel: usize,
}

impl Run {
    /// The email of account `i` of a sign-up phase of this run.
    fn email(&self, phase: &str, i: usize) -> String {
        email(&self.id, phase, i)
    }
}

/// The email of account `i` of a sign-up phase of run `run`.
fn email(run: &str, phase: &str, i: usize) -> String {
    format!("bench-{run}-{phase}-{i}@example.com")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let run = Run {
        api: Arc::new(Api {
            http: reqwest::Client::builder().pool_max_idle_per_host(128).build()?,
            command: args.command_url.clone(),
            query: args.query_url.clone(),
        }),
        id: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
        serial: args.serial_ops,
        parallel: args.parallel_ops,
    };
    // The raw floor: the same broker, the same Redis, no DevConnect code.
    let (producer, produce) = floor::produce(&args, &run).await?;
    let (redis, redis_get) = floor::redis_get(&args, &run).await?;
    let accounts = accounts::commands(&run).await?;
    let profile_reads = accounts::profile_reads(&run, &accounts.tokens).await?;
    let visible = accounts::ack_to_visible(&run, &accounts.tokens, 100, Duration::ZERO).await?;
    // Above the projector's default idle pause (2 s): each edit finds it
    // paused, so this is the wake-up (projector/src/wake.rs).
    let visible_after_idle = accounts::ack_to_visible(&run, &accounts.tokens, 10, IDLE_GAP).await?;
    let requests = requests::measure_requests(&run).await?;
    let pairs = messages::pairs(&requests);
    let messages = messages::send(&run, &pairs).await?;
    let history = messages::history(&run, &pairs).await?;
    let stream = messages::stream_delivery(&run, &pairs, &requests).await?;
    let feed = feed::measure_feed(&args, &run, &producer, &redis, &requests.senders[0]).await?;
    // Own profile of one user; connections and feed of a sender, who has
    // connections and, after `measure_feed`, the seeded users to page.
    let (profile_token, sender) = (accounts.tokens[0].clone(), requests.senders[0].clone());
    let loaded = {
        let args = (args.wrk_seconds, args.redis_url.clone(), args.query_url.clone());
        tokio::task::spawn_blocking(move || loaded::measure(&args, &profile_token, &sender, &sender)).await??
    };
    let report = report::Report {
        run: run.id.clone(),
        produce,
        redis_get,
        accounts,
        profile_reads,
        visible,
        visible_after_idle,
        requests,
        messages,
        history,
        stream,
        feed,
        loaded,
    };
    report.print();
    Ok(())
}
