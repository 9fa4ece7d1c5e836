use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use platform::config::{KafkaArgs, LogArgs, MongoArgs, RedisArgs, parse_duration};

/// Builds the MongoDB views and Redis caches from the event topics.
///
/// Without a subcommand it projects continuously into the current view
/// generation, following the generation pointer when a rebuild switches it.
#[derive(Debug, Clone, Parser)]
#[command(name = "projector", version, about)]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<Operation>,
    /// Address of the ops endpoints (/healthz, /readyz, /metrics, /progress).
    #[arg(long, env = "DEVCONNECT_PROJECTOR_ADDR", default_value = "127.0.0.1:8082", global = true)]
    pub listen: SocketAddr,
    /// Base name of the consumer groups: each view generation is built by
    /// the group `<name>.<generation>`.
    #[arg(long, env = "DEVCONNECT_PROJECTOR_GROUP", default_value = "devconnect-projector", global = true)]
    pub group_id: String,
    #[command(flatten)]
    pub tuning: Tuning,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub mongo: MongoArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Clone, Args)]
pub struct Tuning {
    /// Most records applied in one batch.
    #[arg(long, env = "DEVCONNECT_PROJECTOR_MAX_BATCH", default_value_t = 1000, global = true)]
    pub max_batch: usize,
    /// A batch is applied once no record arrived for this long. Keep it
    /// above the fetch wait: records arrive one fetch at a time, and a gap
    /// shorter than a fetch would cut every batch down to one fetch's worth
    /// (measured: ~30 records per batch at 5 ms against a 10 ms fetch wait).
    #[arg(long, env = "DEVCONNECT_PROJECTOR_LINGER", default_value = "15ms", value_parser = parse_duration, global = true)]
    pub linger: Duration,
    /// A batch is applied once it has been filling for this long.
    #[arg(long, env = "DEVCONNECT_PROJECTOR_MAX_BATCH_TIME", default_value = "250ms", value_parser = parse_duration, global = true)]
    pub max_batch_time: Duration,
    /// Longest the broker may hold a fetch when no records are waiting. Tansu
    /// holds a fetch for the full wait even when records arrive, so the
    /// librdkafka default (500 ms) would become the projection lag.
    #[arg(long, env = "DEVCONNECT_PROJECTOR_FETCH_WAIT", default_value = "10ms", value_parser = parse_duration, global = true)]
    pub fetch_wait: Duration,
    /// After this long without a record (and nothing left to apply), the
    /// projector pauses its partitions: no fetch at all until the command
    /// API announces an append or the watermark poll sees records
    /// (`wake.rs`). An idle Tansu otherwise answers a fetch every
    /// `fetch_wait`, at most of a core. `0s` never pauses.
    #[arg(long, env = "DEVCONNECT_PROJECTOR_IDLE_PAUSE", default_value = "2s", value_parser = parse_duration, global = true)]
    pub idle_pause: Duration,
    /// How long a heartbeat keeps a user online.
    #[arg(long, env = "DEVCONNECT_PRESENCE_TTL", default_value = "5m", value_parser = parse_duration, global = true)]
    pub presence_ttl: Duration,
    /// Attempts at applying a batch that fails with an error that is not
    /// transient (MongoDB rejected a write), before its records are applied
    /// one by one and any that still fail are dead-lettered. Outages and
    /// write conflicts are retried without limit: they are not poison.
    #[arg(long, env = "DEVCONNECT_PROJECTOR_APPLY_ATTEMPTS", default_value_t = 5, global = true)]
    pub apply_attempts: u32,
    /// How long a partition of another group member may lag without moving
    /// before this projector rejoins the group to take it over. Above the
    /// consumer session timeout (10 s) plus a rebalance, so a live member's
    /// pause or a normal rebalance never triggers it.
    #[arg(long, env = "DEVCONNECT_PROJECTOR_STALL_AFTER", default_value = "20s", value_parser = parse_duration, global = true)]
    pub stall_after: Duration,
    /// Most records behind the topics' ends at which /readyz still says
    /// caught up.
    #[arg(long, env = "DEVCONNECT_PROJECTOR_READY_LAG", default_value_t = 100, global = true)]
    pub ready_lag: i64,
    /// How often the continuous projector prunes what no event can need
    /// again: expired processed-id keys and long-ended sessions.
    #[arg(long, env = "DEVCONNECT_PROJECTOR_PRUNE_EVERY", default_value = "10m", value_parser = parse_duration, global = true)]
    pub prune_every: Duration,
    /// How long a processed-id key is kept after it was recorded. It only
    /// guards against a second record of the same event (a re-driven dead
    /// letter): re-drive within this time (docs/design.md §3).
    #[arg(long, env = "DEVCONNECT_PROJECTOR_PROCESSED_RETENTION", default_value = "7d", value_parser = parse_duration, global = true)]
    pub processed_retention: Duration,
    /// How long a session document is kept after the session ended: a
    /// margin for clocks that disagree (its tokens are refused on expiry).
    #[arg(long, env = "DEVCONNECT_PROJECTOR_SESSION_RETENTION", default_value = "1h", value_parser = parse_duration, global = true)]
    pub session_retention: Duration,
    /// A live stream (`stream:<user>`) expires this long after its newest
    /// entry: longer than any client waits before resuming.
    #[arg(long, env = "DEVCONNECT_STREAM_TTL", default_value = "24h", value_parser = parse_duration, global = true)]
    pub stream_ttl: Duration,
    /// Most connections one presence change is published to (besides the
    /// user's own stream).
    #[arg(long, env = "DEVCONNECT_PRESENCE_FANOUT_MAX", default_value_t = 1000, global = true)]
    pub presence_fanout_max: usize,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Operation {
    /// Rebuilds every view from offset 0 into a new generation while the
    /// current one keeps serving, switches readers over once caught up,
    /// then drops the old generation. Run again after an interruption, it
    /// resumes the unfinished generation.
    Replay(ReplayArgs),
    /// Appends the records in the dead-letter topic back to the topics they
    /// came from, once whatever made them fail has been fixed.
    RedriveDeadLetters(RedriveArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// Re-apply every event from offset 0 over the current generation
    /// instead of building a new one: for a store that lost its views
    /// (MongoDB and Redis empty), or to prove a replay changes nothing.
    /// Stop the continuous projector first.
    #[arg(long)]
    pub in_place: bool,
    /// How long readers get to move to the new generation before the old
    /// one is dropped: above the services' generation poll plus the
    /// longest request.
    #[arg(long, env = "DEVCONNECT_REPLAY_DROP_AFTER", default_value = "10s", value_parser = parse_duration)]
    pub drop_after: Duration,
    /// Keep the old generation instead of dropping it.
    #[arg(long)]
    pub keep_old: bool,
    /// Events folded in memory per chunk by a rebuild into a new
    /// generation before it writes them (docs/design.md §16): the memory
    /// bound of a rebuild. Larger chunks write fewer statements.
    #[arg(long, env = "DEVCONNECT_REPLAY_CHUNK_EVENTS", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub chunk_events: u64,
    /// Rebuild with one guarded statement per event, as the live
    /// projector writes, instead of folding chunks (slower; for comparison).
    #[arg(long)]
    pub per_event: bool,
    /// Progress display: a bar on a terminal, log lines otherwise.
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: ProgressStyle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressStyle {
    Auto,
    Bar,
    Log,
}

#[derive(Debug, Clone, Args)]
pub struct RedriveArgs {
    /// List what would be re-driven, and re-drive nothing.
    #[arg(long)]
    pub dry_run: bool,
}
