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
    /// How long a started batch waits for more records.
    #[arg(long, env = "DEVCONNECT_PROJECTOR_LINGER", default_value = "5ms", value_parser = parse_duration)]
    pub linger: Duration,
    /// Longest the broker may hold a fetch when no records are waiting. Tansu
    /// holds a fetch for the full wait even when records arrive, so the
    /// librdkafka default (500 ms) would become the projection lag.
    #[arg(long, env = "DEVCONNECT_PROJECTOR_FETCH_WAIT", default_value = "10ms", value_parser = parse_duration)]
    pub fetch_wait: Duration,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub mongo: MongoArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub log: LogArgs,
}
