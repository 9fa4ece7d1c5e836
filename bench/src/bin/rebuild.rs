//! Rebuild benchmark: seeds a realistic mix of events into topics of their
//! own, measures the raw consume rate of those topics (the floor: records
//! read and dropped), then runs `projector replay` over them and measures
//! the rebuild rate and the time until readers are switched over. Then
//! the store's own floor: the rebuilt documents inserted again into a
//! scratch database (same indexes, same batches), so the last line's ratio
//! is the rebuild's documents/s over the store's bulk-insert documents/s.
//!
//! Everything lives under a fresh run id (topic prefix, MongoDB database,
//! Redis prefix), so it neither disturbs nor is disturbed by the dev stack's
//! own views. `./dev bench-rebuild [--events N]`.
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bench::{Rng, Seeder};
use chrono::Utc;
use clap::Parser;
use events::connection::{ConnectionEvent, ConnectionRequested, ConnectionReviewed, RequestStatus, pair_key};
use events::message::{MessageDelivered, MessageEvent, MessageRead, MessageSent};
use events::notification::NotificationRead;
use events::presence::{PresenceEvent, PresenceSignal};
use events::user::{
    CredentialsSet, MembershipChanged, Profile, ProfileUpdated, SessionStarted, Tier, UserEvent, UserRegistered,
};
use events::{Envelope, Event, EventMetadata, NotificationEvent, Topic, TopicNames};
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use uuid::Uuid;

#[derive(Debug, Clone, Parser)]
#[command(about = "DevConnect rebuild benchmark")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:19092")]
    kafka_brokers: String,
    #[arg(long, default_value = "mongodb://127.0.0.1:27117/?retryWrites=false&directConnection=true")]
    mongo_uri: String,
    #[arg(long, default_value = "redis://127.0.0.1:16379/")]
    redis_url: String,
    /// Events to seed (a record holds one or two).
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// The projector binary that runs the rebuild.
    #[arg(long)]
    projector: PathBuf,
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// Rebuild the topics of an earlier run instead of seeding new ones.
    #[arg(long)]
    reuse_run: Option<String>,
    /// Extra environment for the projector, NAME=VALUE (e.g. batch size).
    #[arg(long = "projector-env")]
    projector_env: Vec<String>,
    /// Keep the run's database and Redis keys afterwards.
    #[arg(long)]
    keep: bool,
}

/// The state a realistic history needs: versions per aggregate, and what
/// later events can refer to.
struct History {
    rng: Rng,
    users: Vec<Uuid>,
    positions: HashMap<Uuid, usize>,
    user_versions: Vec<u64>,
    presence_versions: Vec<u64>,
    notification_versions: Vec<u64>,
    pair_versions: HashMap<String, u64>,
    conversation_versions: HashMap<String, u64>,
    open_requests: Vec<(Uuid, Uuid, Uuid)>,
    connected: Vec<(Uuid, Uuid)>,
    unread_messages: Vec<(Uuid, Uuid, Uuid, bool)>,
    unread_notifications: Vec<(usize, Uuid)>,
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

fn envelope(aggregate: String, version: u64, actor: Option<Uuid>, event: Event) -> Envelope {
    Envelope {
        event_id: Uuid::now_v7(),
        aggregate_id: aggregate,
        aggregate_version: version,
        occurred_at: Utc::now(),
        metadata: EventMetadata {
            actor,
            correlation_id: "bench-rebuild".into(),
            idempotency_key: None,
            request_fingerprint: None,
        },
        event,
    }
}

impl History {
    fn new(users: usize) -> Self {
        Self {
            rng: Rng::new(0x9e37_79b9_7f4a_7c15),
            users: Vec::with_capacity(users),
            positions: HashMap::with_capacity(users),
            user_versions: Vec::with_capacity(users),
            presence_versions: vec![0; users],
            notification_versions: vec![0; users],
            pair_versions: HashMap::new(),
            conversation_versions: HashMap::new(),
            open_requests: Vec::new(),
            connected: Vec::new(),
            unread_messages: Vec::new(),
            unread_notifications: Vec::new(),
        }
    }

    fn index(&self, user: Uuid) -> usize {
        self.positions.get(&user).copied().unwrap_or(0)
    }

    fn user_event(&mut self, i: usize, event: UserEvent) -> Vec<Envelope> {
        self.user_versions[i] += 1;
        let user = self.users[i];
        vec![envelope(user.to_string(), self.user_versions[i], Some(user), Event::User(event))]
    }

    fn register(&mut self) -> Vec<Envelope> {
        let user = Uuid::now_v7();
        let i = self.users.len();
        self.users.push(user);
        self.positions.insert(user, i);
        self.user_versions.push(2);
        let registered =
            UserRegistered { user_id: user, email_id: format!("bench{i}@example.com"), profile: profile(i) };
        vec![
            envelope(user.to_string(), 1, None, Event::User(UserEvent::Registered(registered))),
            envelope(
                user.to_string(),
                2,
                None,
                Event::User(UserEvent::CredentialsSet(CredentialsSet { password_hash: "$argon2id$bench".into() })),
            ),
        ]
    }

    fn two_users(&mut self) -> (usize, usize) {
        let a = self.rng.below(self.users.len());
        let b = (a + 1 + self.rng.below(self.users.len() - 1)) % self.users.len();
        (a, b)
    }

    /// One command's events, by a realistic weight.
    fn next_record(&mut self) -> Vec<Envelope> {
        let roll = self.rng.below(100);
        let n = self.users.len();
        match roll {
            0..8 => {
                let i = self.rng.below(n);
                let expires_at = Utc::now() + chrono::Duration::hours(8);
                self.user_event(i, UserEvent::SessionStarted(SessionStarted { session_id: Uuid::new_v4(), expires_at }))
            }
            8..12 => {
                let i = self.rng.below(n);
                self.user_event(i, UserEvent::ProfileUpdated(ProfileUpdated { profile: profile(i + 1) }))
            }
            12..13 => {
                let i = self.rng.below(n);
                self.user_event(i, UserEvent::MembershipChanged(MembershipChanged { tier: Tier::Gold }))
            }
            13..18 => self.request(),
            18..22 if !self.open_requests.is_empty() => self.review(),
            22..52 if !self.connected.is_empty() => self.message(),
            52..70 if !self.unread_messages.is_empty() => self.mark_message(),
            70..73 if !self.unread_notifications.is_empty() => self.read_notification(),
            _ => self.presence(),
        }
    }

    /// A connection request (a quarter of them ignored).
    fn request(&mut self) -> Vec<Envelope> {
        let (a, b) = self.two_users();
        let (from, to) = (self.users[a], self.users[b]);
        let pair = pair_key(from, to);
        let version = self.pair_versions.entry(pair.clone()).or_insert(0);
        *version += 1;
        let request_id = Uuid::now_v7();
        let status = if self.rng.below(4) == 0 { RequestStatus::Ignored } else { RequestStatus::Interested };
        if status == RequestStatus::Interested {
            self.open_requests.push((request_id, from, to));
        }
        let requested =
            ConnectionRequested { request_id, from_user_id: from, to_user_id: to, status, slot_reserved: false };
        let envelope = envelope(pair, *version, Some(from), Event::Connection(ConnectionEvent::Requested(requested)));
        if status == RequestStatus::Interested {
            self.unread_notifications.push((b, envelope.event_id));
        }
        vec![envelope]
    }

    /// A review of an open request (a third rejected).
    fn review(&mut self) -> Vec<Envelope> {
        let (request_id, from, to) = self.open_requests.swap_remove(self.rng.below(self.open_requests.len()));
        let pair = pair_key(from, to);
        let version = self.pair_versions.entry(pair.clone()).or_insert(0);
        *version += 1;
        let status = if self.rng.below(3) == 0 { RequestStatus::Rejected } else { RequestStatus::Accepted };
        if status == RequestStatus::Accepted {
            self.connected.push((from, to));
        }
        let reviewed = ConnectionReviewed { request_id, status, reviewed_at: Utc::now() };
        let envelope = envelope(pair, *version, Some(to), Event::Connection(ConnectionEvent::Reviewed(reviewed)));
        if status == RequestStatus::Accepted {
            self.unread_notifications.push((self.index(from), envelope.event_id));
        }
        vec![envelope]
    }

    /// A message between connected users.
    fn message(&mut self) -> Vec<Envelope> {
        let (a, b) = self.connected[self.rng.below(self.connected.len())];
        let (from, to) = if self.rng.below(2) == 0 { (a, b) } else { (b, a) };
        let pair = pair_key(from, to);
        let version = self.conversation_versions.entry(pair.clone()).or_insert(0);
        *version += 1;
        let message_id = Uuid::now_v7();
        self.unread_messages.push((message_id, from, to, false));
        let text = format!("message {message_id} about rust and kafka");
        let sent = MessageSent { message_id, from_user_id: from, to_user_id: to, text };
        let envelope = envelope(pair, *version, Some(from), Event::Message(MessageEvent::Sent(sent)));
        if self.rng.below(2) == 0 {
            self.unread_notifications.push((self.index(to), envelope.event_id));
        }
        vec![envelope]
    }

    /// A delivery, then a read, of an unread message.
    fn mark_message(&mut self) -> Vec<Envelope> {
        let at = self.rng.below(self.unread_messages.len());
        let (message_id, from, to, delivered) = self.unread_messages[at];
        let pair = pair_key(from, to);
        let version = self.conversation_versions.entry(pair.clone()).or_insert(0);
        *version += 1;
        let event = if delivered {
            self.unread_messages.swap_remove(at);
            MessageEvent::Read(MessageRead { message_id, read_at: Utc::now() })
        } else {
            self.unread_messages[at].3 = true;
            MessageEvent::Delivered(MessageDelivered { message_id, delivered_at: Utc::now() })
        };
        vec![envelope(pair, *version, Some(to), Event::Message(event))]
    }

    /// A notification read.
    fn read_notification(&mut self) -> Vec<Envelope> {
        let (owner, notification_id) =
            self.unread_notifications.swap_remove(self.rng.below(self.unread_notifications.len()));
        self.notification_versions[owner] += 1;
        let user = self.users[owner];
        let read = NotificationEvent::Read(NotificationRead { notification_id });
        vec![envelope(user.to_string(), self.notification_versions[owner], Some(user), Event::Notification(read))]
    }

    /// A heartbeat, now and then an offline.
    fn presence(&mut self) -> Vec<Envelope> {
        let i = self.rng.below(self.users.len());
        self.presence_versions[i] += 1;
        let user = self.users[i];
        let signal = if self.rng.below(12) == 0 {
            PresenceEvent::Offline(PresenceSignal {})
        } else {
            PresenceEvent::Heartbeat(PresenceSignal {})
        };
        vec![envelope(user.to_string(), self.presence_versions[i], Some(user), Event::Presence(signal))]
    }
}

/// Produces `events` events; returns (records, events) per type.
async fn seed(args: &Args, topics: &TopicNames) -> anyhow::Result<(usize, HashMap<&'static str, usize>)> {
    let mut seeder = Seeder::new(&args.kafka_brokers, topics.clone())?;
    let users = (args.events / 50).max(10);
    let mut history = History::new(users);
    let (mut records, mut events, mut mix) = (0usize, 0usize, HashMap::new());
    let started = Instant::now();
    while events < args.events {
        let commit = if history.users.len() < users { history.register() } else { history.next_record() };
        for e in &commit {
            *mix.entry(e.event.event_type()).or_insert(0) += 1;
        }
        events += commit.len();
        records += 1;
        seeder.send(&commit).await?;
    }
    seeder.finish().await?;
    println!("seeded {events} events in {records} records ({users} users) in {:.1} s", started.elapsed().as_secs_f64());
    Ok((records, mix))
}

/// The floor: read every record of the topics from offset 0 and drop it.
fn raw_consume(args: &Args, topics: &TopicNames) -> anyhow::Result<(usize, usize, Duration)> {
    let consumer: BaseConsumer = platform::kafka::client_config(&args.kafka_brokers)
        .set("group.id", format!("bench-raw-{}", Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let mut assignment = rdkafka::TopicPartitionList::new();
    let mut ends = HashMap::new();
    for topic in Topic::EVENT_TOPICS.iter().map(|t| topics.name(*t)) {
        for partition in 0..args.partitions {
            let (_, high) = consumer.fetch_watermarks(&topic, partition, Duration::from_secs(10))?;
            if high > 0 {
                assignment.add_partition_offset(&topic, partition, rdkafka::Offset::Beginning)?;
                ends.insert((topic.clone(), partition), high);
            }
        }
    }
    let started = Instant::now();
    consumer.assign(&assignment)?;
    let (mut records, mut bytes) = (0usize, 0usize);
    let mut left = ends.len();
    while left > 0 {
        let Some(message) = consumer.poll(Duration::from_secs(10)) else {
            anyhow::bail!("raw consume stalled with {left} partitions to go");
        };
        let message = message?;
        records += 1;
        bytes += message.payload().map_or(0, <[u8]>::len);
        if ends.get(&(message.topic().to_owned(), message.partition())) == Some(&(message.offset() + 1)) {
            left -= 1;
        }
    }
    Ok((records, bytes, started.elapsed()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let run = args.reuse_run.clone().unwrap_or_else(|| format!("rb{:x}", Utc::now().timestamp_millis()));
    let prefix = format!("{run}-");
    let topics = TopicNames::new(prefix.clone());
    println!("rebuild benchmark, run {run}");

    let (records, mix) = if args.reuse_run.is_none() {
        let names: Vec<String> = Topic::ALL.iter().map(|t| topics.name(*t)).collect();
        platform::kafka::ensure_topics(&args.kafka_brokers, &names, args.partitions, 1).await?;
        let (records, mix) = seed(&args, &topics).await?;
        (Some(records), mix)
    } else {
        (None, HashMap::new())
    };
    print_mix(mix);

    let (floor_args, floor_topics) = (args.clone(), topics.clone());
    let (raw_records, raw_bytes, raw_time) =
        tokio::task::spawn_blocking(move || raw_consume(&floor_args, &floor_topics)).await??;
    if let Some(seeded) = records {
        anyhow::ensure!(raw_records == seeded, "read {raw_records} records, seeded {seeded}");
    }
    let raw_rate = raw_records as f64 / raw_time.as_secs_f64();

    // The rebuild, as an operator runs it.
    let client = mongodb::Client::with_uri_str(&args.mongo_uri).await?;
    let generations = views::generation::Generations::new(client.clone(), &run);
    let before = generations.current_or_create().await?;
    let (switched, applied, log_path, peak_rss) = timed_replay(&args, &run, &generations, &before).await?;
    let rebuild_rate = applied as f64 / switched.as_secs_f64();
    let events_per_record = applied as f64 / raw_records as f64;
    let rebuilt = generations.pointer().await?.map(|p| p.current.database(&run));
    let rebuilt = rebuilt.ok_or_else(|| anyhow::anyhow!("no generation after the rebuild"))?;
    let floor = insert_floor(&client, &rebuilt, &format!("{run}_floor")).await?;
    let documents = floor.documents;
    let floor_rate = documents as f64 / floor.seconds;
    let rebuild_docs_rate = documents as f64 / switched.as_secs_f64();

    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!("| events rebuilt | {applied} in {raw_records} records ({:.1} MB) |", raw_bytes as f64 / 1e6);
    println!(
        "| raw consume (floor) | {raw_rate:.0} records/s = {:.0} events/s ({:.1} s) |",
        raw_rate * events_per_record,
        raw_time.as_secs_f64()
    );
    println!("| rebuild, to switch-over | {rebuild_rate:.0} events/s |");
    println!("| ratio rebuild / raw consume | {:.3} |", rebuild_rate / (raw_rate * events_per_record));
    println!("| time until switch-over | {:.1} s |", switched.as_secs_f64());
    println!("| replay peak resident memory | {:.0} MB |", peak_rss as f64 / 1e6);
    println!("| final documents | {documents} ({}) |", floor.per_collection.join(", "));
    println!(
        "| bulk-insert floor: the same documents, same indexes, batches of 10 000 | {floor_rate:.0} docs/s ({:.1} s) |",
        floor.seconds
    );
    println!("replay log: {}", log_path.display());

    if !args.keep {
        drop_run(&args, &run, &client, &generations).await?;
        println!("dropped the run's views (its topics stay: {prefix}*)");
    }
    println!(
        "rebuild: {applied} events in {:.1} s = {rebuild_rate:.0} events/s; {documents} documents; floor {floor_rate:.0} docs/s; ratio {:.2}",
        switched.as_secs_f64(),
        rebuild_docs_rate / floor_rate
    );
    Ok(())
}

/// The store's own bulk-insert rate for the rebuilt documents: every
/// document of `source` inserted again into `scratch`, collection by
/// collection, with the same indexes, in batches of 10 000 (as the
/// rebuild sends them). Reading them is not timed. `scratch` is dropped.
struct Floor {
    documents: u64,
    seconds: f64,
    per_collection: Vec<String>,
}

async fn insert_floor(client: &mongodb::Client, source: &str, scratch: &str) -> anyhow::Result<Floor> {
    use futures::TryStreamExt;
    use mongodb::bson::{Document, doc};
    let (source, scratch) = (client.database(source), client.database(scratch));
    let mut names = source.list_collection_names().await?;
    names.sort();
    let (mut documents, mut seconds, mut per_collection) = (0u64, 0.0, Vec::new());
    for name in names {
        let from = source.collection::<Document>(&name);
        let docs: Vec<Document> = from.find(doc! {}).await?.try_collect().await?;
        if docs.is_empty() {
            continue;
        }
        let indexes: Vec<mongodb::IndexModel> = from.list_indexes().await?.try_collect().await?;
        let to = scratch.collection::<Document>(&name);
        for index in indexes {
            if index.keys != doc! { "_id": 1 } {
                to.create_index(mongodb::IndexModel::builder().keys(index.keys).build()).await?;
            }
        }
        let started = Instant::now();
        for batch in docs.chunks(10_000) {
            let reply = scratch.run_command(doc! { "insert": &name, "documents": batch, "ordered": false }).await?;
            // A rejected document would make the floor look faster than it is.
            let rejected = reply.get_array("writeErrors").map_or(0, Vec::len);
            anyhow::ensure!(rejected == 0, "the floor's insert into {name} rejected {rejected} documents: {reply}");
        }
        seconds += started.elapsed().as_secs_f64();
        documents += docs.len() as u64;
        per_collection.push(format!("{name} {}", docs.len()));
    }
    scratch.drop().await?;
    Ok(Floor { documents, seconds, per_collection })
}

/// The mix of event types seeded, largest first.
fn print_mix(mix: HashMap<&'static str, usize>) {
    let mut mix: Vec<_> = mix.into_iter().collect();
    mix.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    if !mix.is_empty() {
        let total: usize = mix.iter().map(|(_, n)| n).sum();
        let shares: Vec<String> =
            mix.iter().map(|(t, n)| format!("{t} {:.1}%", *n as f64 * 100.0 / total as f64)).collect();
        println!("mix: {}", shares.join(", "));
    }
}

/// Runs `projector replay` on the run's topics, as an operator would;
/// returns the time until readers switched, the events applied, the
/// replay's log and its peak resident memory.
async fn timed_replay(
    args: &Args,
    run: &str,
    generations: &views::generation::Generations,
    before: &views::generation::Generation,
) -> anyhow::Result<(Duration, u64, std::path::PathBuf, u64)> {
    let log_path = std::env::temp_dir().join(format!("{run}-replay.log"));
    let log = std::fs::File::create(&log_path)?;
    let started = Instant::now();
    let mut replay = tokio::process::Command::new(&args.projector)
        .args(["replay", "--progress", "log", "--drop-after", "0s"])
        .env("DEVCONNECT_KAFKA_BROKERS", &args.kafka_brokers)
        .env("DEVCONNECT_TOPIC_PREFIX", format!("{run}-"))
        .env("DEVCONNECT_TOPIC_PARTITIONS", args.partitions.to_string())
        .env("DEVCONNECT_MONGO_URI", &args.mongo_uri)
        .env("DEVCONNECT_MONGO_DATABASE", run)
        .env("DEVCONNECT_REDIS_URL", &args.redis_url)
        .env("DEVCONNECT_REDIS_PREFIX", format!("{run}:"))
        .env("DEVCONNECT_PROJECTOR_GROUP", format!("{run}-projector"))
        .envs(args.projector_env.iter().filter_map(|kv| kv.split_once('=')))
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()?;
    let pid = replay.id();
    let mut peak_rss = 0u64;
    let switched = loop {
        peak_rss = peak_rss.max(pid.map_or(0, resident_peak));
        if let Some(status) = replay.try_wait()? {
            anyhow::ensure!(status.success(), "the replay failed; its log: {}", log_path.display());
        }
        let pointer = generations.pointer().await?;
        if pointer.is_some_and(|p| &p.current != before) {
            break started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The peak so far covers the rebuild; what follows is the old
    // generation's drop.
    peak_rss = peak_rss.max(pid.map_or(0, resident_peak));
    replay.wait().await?;
    let text = std::fs::read_to_string(&log_path)?;
    let applied: u64 = text
        .lines()
        .filter(|l| l.contains("readers switched"))
        .find_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("events=")?.parse().ok()))
        .ok_or_else(|| anyhow::anyhow!("no summary in {}", log_path.display()))?;
    Ok((switched, applied, log_path, peak_rss))
}

/// The peak resident set of a process so far (`VmHWM`), in bytes; 0 once
/// it is gone.
fn resident_peak(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The replay dropped the generation it replaced; this drops the one it
/// built, every Redis key of the run, and the pointer's database.
async fn drop_run(
    args: &Args,
    run: &str,
    client: &mongodb::Client,
    generations: &views::generation::Generations,
) -> anyhow::Result<()> {
    // The replay dropped the generation it replaced; this drops the one
    // it built, every Redis key of the run, and the pointer's database.
    if let Some(pointer) = generations.pointer().await? {
        client.database(&pointer.current.database(run)).drop().await?;
    }
    let mut redis = platform::redis_conn::connect(&args.redis_url)?;
    views::generation::delete_keys_matching(&mut redis, &format!("{run}:*")).await?;
    client.database(run).drop().await?;
    // Not deleted: Tansu 0.6 answers DeleteTopics by losing its storage
    // task (every later request fails until a restart), measured.
    Ok(())
}
