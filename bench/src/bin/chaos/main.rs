//! Chaos run against the running dev stack: a bounded workload of messages
//! and profile edits while each part (broker, MongoDB, Redis and the three
//! services) is killed with SIGKILL and restarted with `./dev up`, at random.
//! Afterwards it waits until the views hold everything and says whether an
//! acknowledged write was lost or a write counted twice.
//!
//! `./dev chaos [--duration 3m] [--faults redis,projector] [--seed N]`.
//! It talks only to the URLs given (127.0.0.1 by default) and leaves the
//! stack running.
//!
//! `run` goes through the phases in order; each lives in its module:
//! `setup` (preflight, users, baseline), `workload` (the pairs' writes,
//! with `faults` killing parts meanwhile through `processes`), `verdict`
//! (the final check) and `report`. `client` is how they talk to the stack.
#![allow(clippy::print_stdout)]

mod client;
mod faults;
mod processes;
mod report;
mod setup;
mod verdict;
mod workload;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use platform::config::parse_duration;
use uuid::Uuid;

use crate::client::Env;
use crate::processes::{dev_up, forget_dead, leave_stack_running};
use crate::report::{Findings, print_findings, print_verdict};
use crate::setup::{preflight, prepare};
use crate::verdict::final_check;
use crate::workload::run_workload;

const PARTS: [&str; 6] = ["broker", "mongodb", "redis", "command-api", "projector", "query-api"];
/// How long a fault may take to converge, and the final check to pass.
const CONVERGE_WITHIN: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Parser)]
#[command(about = "DevConnect chaos run: kill -9 and restart each part under a workload, then check the views")]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    command_url: String,
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    query_url: String,
    /// The projector's ops endpoints (/readyz, /progress).
    #[arg(long, default_value = "http://127.0.0.1:8082")]
    projector_url: String,
    /// The dev stack's state directory (pids/<name>.pid, logs/).
    #[arg(long, default_value = ".devconnect/dev")]
    state_dir: PathBuf,
    /// The dev script; `<dev> up` restarts what is not running.
    #[arg(long, default_value = "./dev")]
    dev: PathBuf,
    /// The whole run, setup and final check included: 180s, 3m or plain seconds.
    #[arg(long, default_value = "180s", value_parser = parse_duration)]
    duration: Duration,
    /// The parts to kill, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "broker,mongodb,redis,command-api,projector,query-api",
        value_parser = PARTS)]
    faults: Vec<String>,
    /// Seed of the fault order and pauses (printed, to repeat a run).
    #[arg(long)]
    seed: Option<u64>,
    /// Sender/recipient pairs, one worker each.
    #[arg(long, default_value_t = 4)]
    pairs: usize,
    /// Pause between two writes of a worker.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    message_interval: Duration,
    /// How often each sender edits its profile.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    edit_interval: Duration,
}

/// When each phase of the run ends.
#[derive(Debug, Clone, Copy)]
struct Timeline {
    started: Instant,
    /// What the final check gets.
    final_window: Duration,
    /// Writes and faults stop here...
    workload_end: Instant,
    /// ...and the final check here.
    hard_end: Instant,
}

impl Timeline {
    fn new(args: &Args, started: Instant) -> anyhow::Result<Self> {
        anyhow::ensure!(args.pairs > 0, "--pairs must be at least 1");
        anyhow::ensure!(args.duration >= Duration::from_secs(30), "--duration must be at least 30s");
        // The final check gets a minute, or a third of a short run.
        let final_window = CONVERGE_WITHIN.min(args.duration / 3);
        let hard_end = started + args.duration;
        let workload_end = hard_end - final_window;
        Ok(Self { started, final_window, workload_end, hard_end })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    let code = tokio::select! {
        code = run(Arc::clone(&args)) => code?,
        _ = tokio::signal::ctrl_c() => {
            // A part may be down right now: bring back whatever is.
            println!("\ninterrupted: running `{} up` so that nothing stays down (log: logs/chaos-restarts.log)", args.dev.display());
            tokio::time::sleep(Duration::from_secs(1)).await;
            forget_dead(&args.state_dir);
            let mut child = dev_up(&args, "interrupted: restarting whatever is down")?;
            let _ = tokio::time::timeout(Duration::from_secs(180), child.wait()).await;
            130
        }
    };
    std::process::exit(code)
}

/// The run's phases, in order; returns the exit code (0 when it passes).
async fn run(args: Arc<Args>) -> anyhow::Result<i32> {
    let started = Instant::now();
    let timeline = Timeline::new(&args, started)?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    let env = Arc::new(env_for(&args, started)?);
    println!(
        "chaos run {}: seed {seed}, {} pairs, {}s in all (the final check gets {}s), faults: {}",
        env.run,
        args.pairs,
        args.duration.as_secs(),
        timeline.final_window.as_secs(),
        args.faults.join(", ")
    );
    preflight(&env).await?;
    let (baseline, pairs) = prepare(&env, &args, timeline.workload_end).await?;
    let (pairs, mut fault_run) = run_workload(&env, &args, pairs, &baseline.probe, seed, &timeline).await?;
    let check = final_check(&env, &pairs, &baseline, timeline.hard_end).await;
    let findings = Findings::of(&pairs, check);
    print_findings(&env, &args, &pairs, &baseline, &findings, &fault_run, &timeline).await;
    leave_stack_running(&args, &env, &mut fault_run).await?;
    Ok(print_verdict(&findings, &fault_run))
}

/// The client for this run, with a fresh run id its users and texts carry.
fn env_for(args: &Args, started: Instant) -> anyhow::Result<Env> {
    Ok(Env {
        http: reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .build()?,
        command: args.command_url.trim_end_matches('/').to_owned(),
        query: args.query_url.trim_end_matches('/').to_owned(),
        projector: args.projector_url.trim_end_matches('/').to_owned(),
        run: Uuid::new_v4().simple().to_string()[..8].to_owned(),
        started,
    })
}
