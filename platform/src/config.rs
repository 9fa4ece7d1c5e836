//! Configuration pieces shared by the services, flattened into each
//! service's own clap struct. Every flag can be set from the environment.

use std::time::Duration;

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Bootstrap servers, comma-separated.
    #[arg(long = "kafka-brokers", env = "DEVCONNECT_KAFKA_BROKERS")]
    pub brokers: String,
    /// Prepended to every topic name (lets isolated environments share a broker).
    #[arg(long = "topic-prefix", env = "DEVCONNECT_TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,
    /// Partitions of each topic when this program creates it.
    #[arg(long = "topic-partitions", env = "DEVCONNECT_TOPIC_PARTITIONS", default_value_t = 3)]
    pub partitions: i32,
    /// Replication factor of each topic when this program creates it.
    #[arg(long = "topic-replication", env = "DEVCONNECT_TOPIC_REPLICATION", default_value_t = 1)]
    pub replication: i32,
}

impl KafkaArgs {
    pub fn topics(&self) -> events::TopicNames {
        events::TopicNames::new(self.topic_prefix.clone())
    }
}

#[derive(Debug, Clone, Args)]
pub struct MongoArgs {
    /// MongoDB connection string.
    #[arg(long = "mongo-uri", env = "DEVCONNECT_MONGO_URI")]
    pub uri: String,
    /// Base name of the view databases: each view generation lives in
    /// `<name>_<generation>`, and `<name>` holds the generation pointer.
    #[arg(long = "mongo-database", env = "DEVCONNECT_MONGO_DATABASE", default_value = "devconnect")]
    pub database: String,
    /// How often to re-read which view generation is current: the longest a
    /// switch-over takes to reach this process.
    #[arg(long = "view-generation-poll", env = "DEVCONNECT_VIEW_GENERATION_POLL", default_value = "1s", value_parser = parse_duration)]
    pub generation_poll: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    /// Redis URL, e.g. redis://127.0.0.1:6379/0.
    #[arg(long = "redis-url", env = "DEVCONNECT_REDIS_URL")]
    pub url: String,
    /// Prepended to every Redis key.
    #[arg(long = "redis-prefix", env = "DEVCONNECT_REDIS_PREFIX", default_value = "")]
    pub prefix: String,
}

#[derive(Clone, Args)]
pub struct JwtArgs {
    /// HS256 secret for session tokens; at least 32 bytes. No default on purpose.
    #[arg(long = "jwt-secret", env = "DEVCONNECT_JWT_SECRET", hide_env_values = true)]
    pub secret: String,
}

impl std::fmt::Debug for JwtArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtArgs { secret: <redacted> }")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    #[arg(long = "log-format", env = "DEVCONNECT_LOG_FORMAT", value_enum, default_value = "text")]
    pub format: LogFormat,
}

/// Parses durations such as `250ms`, `5s`, `10m`, `8h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("not a duration: {s:?} (try 5s, 250ms, 8h)"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86_400),
        _ => return Err(format!("unknown duration unit in {s:?} (use ms, s, m, h, d)")),
    };
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("8h"), Ok(Duration::from_secs(8 * 3600)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }
}
