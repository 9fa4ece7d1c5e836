use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use platform::config::{HttpArgs, JwtArgs, LogArgs, MongoArgs, RateLimitArgs, RedisArgs, parse_duration};

/// The read side of DevConnect: serves the views, Redis first, MongoDB second.
#[derive(Debug, Clone, Parser)]
#[command(name = "query-api", version, about)]
pub struct Config {
    #[arg(long, env = "DEVCONNECT_QUERY_API_ADDR", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub mongo: MongoArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub jwt: JwtArgs,
    #[command(flatten)]
    pub rate_limits: RateLimitArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub log: LogArgs,
    /// How often to read new revocation records: the longest a logout takes
    /// to hold here when Redis has lost its `revoked:` keys.
    #[arg(long, env = "DEVCONNECT_REVOCATION_POLL", default_value = "250ms", value_parser = parse_duration)]
    pub revocation_poll: Duration,
    /// Longest a read carrying X-Consistency-Token waits for the views.
    #[arg(long, env = "DEVCONNECT_CONSISTENCY_WAIT", default_value = "5s", value_parser = parse_duration)]
    pub consistency_wait: Duration,
    /// Live streams (`/v1/stream`) one user may hold open at once on this
    /// process; past it 429 too_many_streams.
    #[arg(long, env = "DEVCONNECT_STREAMS_PER_USER", default_value_t = 5)]
    pub streams_per_user: usize,
    /// Live streams this process holds open in all. They share one Redis
    /// connection; each costs a task and a bounded buffer.
    #[arg(long, env = "DEVCONNECT_STREAMS_TOTAL", default_value_t = 10_000)]
    pub streams_total: usize,
}
