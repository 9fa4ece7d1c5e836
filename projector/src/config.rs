use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use platform::config::{KafkaArgs, LogArgs, MongoArgs, RedisArgs, parse_duration};

/// Builds the MongoDB views and Redis caches from the event topics.
#[derive(Debug, Clone, Parser)]
#[command(name = "projector", version, about)]
pub struct Config {
    /// Address of the ops endpoints (/healthz, /readyz, /metrics).
    #[arg(long, env = "DEVCONNECT_PROJECTOR_ADDR", default_value = "127.0.0.1:8082")]
    pub listen: SocketAddr,
    /// Consumer group; a new group starts from offset 0 (a rebuild).
    #[arg(long, env = "DEVCONNECT_PROJECTOR_GROUP", default_value = "devconnect-projector")]
    pub group_id: String,
    /// Most records applied in one batch.
    #[arg(long, env = "DEVCONNECT_PROJECTOR_MAX_BATCH", default_value_t = 1000)]
    pub max_batch: usize,
    /// A batch is applied once no record arrived for this long. Keep it
    /// above the fetch wait: records arrive one fetch at a time, and a gap
    /// shorter than a fetch would cut every batch down to one fetch's worth
    /// (measured: ~30 records per batch at 5 ms against a 10 ms fetch wait).
    #[arg(long, env = "DEVCONNECT_PROJECTOR_LINGER", default_value = "15ms", value_parser = parse_duration)]
    pub linger: Duration,
    /// A batch is applied once it has been filling for this long.
    #[arg(long, env = "DEVCONNECT_PROJECTOR_MAX_BATCH_TIME", default_value = "250ms", value_parser = parse_duration)]
    pub max_batch_time: Duration,
    /// Longest the broker may hold a fetch when no records are waiting. Tansu
    /// holds a fetch for the full wait even when records arrive, so the
    /// librdkafka default (500 ms) would become the projection lag.
    #[arg(long, env = "DEVCONNECT_PROJECTOR_FETCH_WAIT", default_value = "10ms", value_parser = parse_duration)]
    pub fetch_wait: Duration,
    /// How long a heartbeat keeps a user online.
    #[arg(long, env = "DEVCONNECT_PRESENCE_TTL", default_value = "5m", value_parser = parse_duration)]
    pub presence_ttl: Duration,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub mongo: MongoArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub log: LogArgs,
}
