//! Start benchmark: seeds the command API's own topics with a history
//! (sign-ups, log-ins, requests, messages), starts the command API on them
//! and measures the time until `/readyz` answers 200 and its resident memory.
//! Run 1 reads the log from offset 0 (no snapshot yet) and then writes a
//! snapshot; run 2 starts from that snapshot plus the tail.
//!
//! Everything lives under a fresh run id (topic prefix, MongoDB database).
//! The last line is exactly:
//! `command-api ready: <s> s at <events> events (from snapshot at <offset sum>); rss <MB> MB`
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bench::{Rng, Seeder};
use chrono::Utc;
use clap::Parser;
use events::connection::{ConnectionEvent, ConnectionRequested, ConnectionReviewed, RequestStatus, pair_key};
use events::message::{MessageEvent, MessageSent};
use events::user::{CredentialsSet, Profile, SessionStarted, UserEvent, UserRegistered};
use events::{Envelope, Event, EventMetadata, Topic, TopicNames};
use mongodb::bson::{Document, doc};
use uuid::Uuid;

#[derive(Debug, Clone, Parser)]
#[command(about = "DevConnect command-API start benchmark")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:19092")]
    kafka_brokers: String,
    #[arg(long, default_value = "mongodb://127.0.0.1:27117/?retryWrites=false&directConnection=true")]
    mongo_uri: String,
    #[arg(long, default_value = "redis://127.0.0.1:16379/")]
    redis_url: String,
    /// Events to seed.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Users among them (each a registration and credentials: two events);
    /// default one per 20 events. The rest: 10 % log-ins, 10 % requests and
    /// acceptances, 80 % messages.
    #[arg(long)]
    users: Option<usize>,
    /// The command-api binary.
    #[arg(long)]
    command_api: PathBuf,
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// DEVCONNECT_SNAPSHOT_EVERY for the command API.
    #[arg(long, default_value_t = 50_000)]
    snapshot_every: u64,
    /// Measure one start only, without a snapshot (none is written).
    #[arg(long)]
    no_snapshot: bool,
}

fn profile(i: usize) -> Profile {
    Profile {
        first_name: "Bench".into(),
        last_name: format!("User{i}"),
        age: Some(20 + (i % 40) as u8),
        gender: None,
        about: Some(format!("I write software, number {i}")),
        skills: vec!["rust".into(), "kafka".into()],
        photo_url: None,
    }
}

fn envelope(aggregate: String, version: u64, actor: Uuid, event: Event) -> Envelope {
    Envelope {
        event_id: Uuid::now_v7(),
        aggregate_id: aggregate,
        aggregate_version: version,
        occurred_at: Utc::now(),
        metadata: EventMetadata {
            actor: Some(actor),
            correlation_id: "bench-start".into(),
            idempotency_key: None,
            request_fingerprint: None,
        },
        event,
    }
}

/// What was seeded.
#[derive(Debug, Default)]
struct Seeded {
    events: usize,
    users: usize,
    messages: usize,
}

async fn seed(args: &Args, topics: &TopicNames) -> anyhow::Result<Seeded> {
    let mut seeder = Seeder::new(&args.kafka_brokers, topics.clone())?;
    let target_users = args.users.unwrap_or(args.events / 20).max(2);
    let mut rng = Rng::new(0x5eed);
    let mut users: Vec<Uuid> = Vec::with_capacity(target_users);
    let mut versions: Vec<u64> = Vec::with_capacity(target_users);
    let mut pairs: HashMap<String, u64> = HashMap::new();
    let mut conversations: HashMap<String, u64> = HashMap::new();
    let mut seeded = Seeded::default();
    let started = Instant::now();
    // A real argon2id PHC string is about this long.
    let hash = format!("$argon2id$v=19$m=19456,t=2,p=1${}${}", "s".repeat(22), "h".repeat(43));
    while seeded.events < args.events {
        let commit = if users.len() < target_users {
            let user = Uuid::now_v7();
            let i = users.len();
            users.push(user);
            versions.push(2);
            let registered =
                UserRegistered { user_id: user, email_id: format!("bench{i}@example.com"), profile: profile(i) };
            let credentials = CredentialsSet { password_hash: hash.clone() };
            vec![
                envelope(user.to_string(), 1, user, Event::User(UserEvent::Registered(registered))),
                envelope(user.to_string(), 2, user, Event::User(UserEvent::CredentialsSet(credentials))),
            ]
        } else {
            let a = rng.below(users.len());
            let b = (a + 1 + rng.below(users.len() - 1)) % users.len();
            let (from, to) = (users[a], users[b]);
            match rng.below(10) {
                0 => {
                    versions[a] += 1;
                    let expires_at = Utc::now() + chrono::Duration::days(7);
                    let started = SessionStarted { session_id: Uuid::now_v7(), expires_at };
                    vec![envelope(from.to_string(), versions[a], from, Event::User(UserEvent::SessionStarted(started)))]
                }
                1 => {
                    let pair = pair_key(from, to);
                    let version = pairs.entry(pair.clone()).or_insert(0);
                    if *version > 0 {
                        continue;
                    }
                    let request_id = Uuid::now_v7();
                    let requested = ConnectionRequested {
                        request_id,
                        from_user_id: from,
                        to_user_id: to,
                        status: RequestStatus::Interested,
                        slot_reserved: false,
                    };
                    let reviewed =
                        ConnectionReviewed { request_id, status: RequestStatus::Accepted, reviewed_at: Utc::now() };
                    *version = 2;
                    // Two commands; sent as two records.
                    let first =
                        vec![envelope(pair.clone(), 1, from, Event::Connection(ConnectionEvent::Requested(requested)))];
                    seeder.send_and_wait(&first).await?;
                    seeded.events += 1;
                    vec![envelope(pair, 2, to, Event::Connection(ConnectionEvent::Reviewed(reviewed)))]
                }
                _ => {
                    let pair = pair_key(from, to);
                    let version = conversations.entry(pair.clone()).or_insert(0);
                    *version += 1;
                    let message_id = Uuid::now_v7();
                    let text = format!("message {message_id} about rust and kafka");
                    let sent = MessageSent { message_id, from_user_id: from, to_user_id: to, text };
                    seeded.messages += 1;
                    vec![envelope(pair, *version, from, Event::Message(MessageEvent::Sent(sent)))]
                }
            }
        };
        seeded.events += commit.len();
        seeder.send(&commit).await?;
    }
    seeder.finish().await?;
    seeded.users = users.len();
    println!(
        "seeded {} events ({} users, {} messages) in {:.1} s",
        seeded.events,
        seeded.users,
        seeded.messages,
        started.elapsed().as_secs_f64()
    );
    Ok(seeded)
}

fn rss_mb(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for {pid}"))?;
    Ok(kb / 1024.0)
}

/// Starts the command API, waits for `/readyz`, and reports.
async fn start(args: &Args, run: &str, log: &std::path::Path) -> anyhow::Result<(tokio::process::Child, f64, f64)> {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.local_addr()?.port()
    };
    let file = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let every = if args.no_snapshot { 0 } else { args.snapshot_every };
    let started = Instant::now();
    let mut child = tokio::process::Command::new(&args.command_api)
        .env("DEVCONNECT_KAFKA_BROKERS", &args.kafka_brokers)
        .env("DEVCONNECT_TOPIC_PREFIX", format!("{run}-"))
        .env("DEVCONNECT_TOPIC_PARTITIONS", args.partitions.to_string())
        .env("DEVCONNECT_MONGO_URI", &args.mongo_uri)
        .env("DEVCONNECT_MONGO_DATABASE", run)
        .env("DEVCONNECT_REDIS_URL", &args.redis_url)
        .env("DEVCONNECT_JWT_SECRET", "bench-start-secret-bench-start-secret-0123")
        .env("DEVCONNECT_COMMAND_API_ADDR", format!("127.0.0.1:{port}"))
        .env("DEVCONNECT_SNAPSHOT_EVERY", every.to_string())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(file))
        .kill_on_drop(true)
        .spawn()?;
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/readyz");
    loop {
        if let Ok(r) = http.get(&url).send().await
            && r.status().is_success()
        {
            break;
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("the command API exited ({status}); its log: {}", log.display());
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(1800), "not ready in 30 minutes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ready = started.elapsed().as_secs_f64();
    let pid = child.id().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    let rss = rss_mb(pid)?;
    Ok((child, ready, rss))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let run = format!("bs{:x}", Utc::now().timestamp_millis());
    let topics = TopicNames::new(format!("{run}-"));
    println!("command-API start benchmark, run {run}");
    let names: Vec<String> = Topic::ALL.iter().map(|t| topics.name(*t)).collect();
    platform::kafka::ensure_topics(&args.kafka_brokers, &names, args.partitions, 1).await?;
    let seeded = seed(&args, &topics).await?;
    let log = std::env::temp_dir().join(format!("{run}-command-api.log"));
    let mongo = mongodb::Client::with_uri_str(&args.mongo_uri).await?;
    let snapshots = mongo.database(&run).collection::<Document>("command_snapshots");

    let (mut first, ready, rss) = start(&args, &run, &log).await?;
    let line = |ready: f64, offset: i64, rss: f64| {
        format!(
            "command-api ready: {ready:.2} s at {} events (from snapshot at {offset}); rss {rss:.0} MB",
            seeded.events
        )
    };
    let per = |rss: f64| {
        format!(
            "  ({} users, {} messages; {:.2} KB per event)",
            seeded.users,
            seeded.messages,
            rss * 1024.0 / seeded.events as f64
        )
    };
    println!("{}", line(ready, 0, rss));
    println!("{}", per(rss));
    if args.no_snapshot {
        first.kill().await?;
        return Ok(());
    }
    let waiting = Instant::now();
    let offset_sum = loop {
        if let Some(m) = snapshots.find_one(doc! { "_id": "manifest" }).await? {
            break m.get_i64("offsetSum")?;
        }
        anyhow::ensure!(waiting.elapsed() < Duration::from_secs(600), "no snapshot within 10 minutes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let peak = rss_mb(first.id().unwrap_or_default()).unwrap_or(0.0);
    println!("snapshot written {:.1} s after ready; rss then {peak:.0} MB", waiting.elapsed().as_secs_f64());
    first.kill().await?;
    let (mut second, ready, rss) = start(&args, &run, &log).await?;
    second.kill().await?;
    let text = std::fs::read_to_string(&log)?;
    for l in text.lines().filter(|l| l.contains("snapshot written") || l.contains("loaded from snapshot")) {
        println!("  log: {}", l.chars().take(300).collect::<String>());
    }
    println!("{}", per(rss));
    println!("{}", line(ready, offset_sum, rss));
    Ok(())
}
