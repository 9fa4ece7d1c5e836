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

#[derive(Clone, Args)]
pub struct MongoArgs {
    /// MongoDB connection string (may carry credentials: `--help` hides it).
    #[arg(long = "mongo-uri", env = "DEVCONNECT_MONGO_URI", hide_env_values = true)]
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

#[derive(Clone, Args)]
pub struct RedisArgs {
    /// Redis URL, e.g. redis://:password@127.0.0.1:6379/0 (`--help` hides it).
    #[arg(long = "redis-url", env = "DEVCONNECT_REDIS_URL", hide_env_values = true)]
    pub url: String,
    /// Prepended to every Redis key.
    #[arg(long = "redis-prefix", env = "DEVCONNECT_REDIS_PREFIX", default_value = "")]
    pub prefix: String,
}

#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Requests handled at once; past it new ones get 503 overloaded with
    /// Retry-After rather than a queue that grows without bound.
    #[arg(long = "max-in-flight", env = "DEVCONNECT_MAX_IN_FLIGHT", default_value_t = 1024)]
    pub max_in_flight: usize,
}

#[derive(Debug, Clone, Args)]
pub struct RateLimitArgs {
    /// Overrides of the request rate limits, `group=limit/window` comma-
    /// separated, e.g. `messages=100/1m,signup=10/10m`. Unknown groups are
    /// refused at start; `--help` of each service names its groups.
    #[arg(long = "rate-limits", env = "DEVCONNECT_RATE_LIMITS", default_value = "")]
    pub overrides: String,
}

impl std::fmt::Debug for MongoArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoArgs")
            .field("uri", &without_credentials(&self.uri))
            .field("database", &self.database)
            .field("generation_poll", &self.generation_poll)
            .finish()
    }
}

impl std::fmt::Debug for RedisArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisArgs").field("url", &without_credentials(&self.url)).field("prefix", &self.prefix).finish()
    }
}

/// A connection URL with its `user:password@` part replaced, for logs.
pub fn without_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://<redacted>@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
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
    fn credentials_never_reach_a_log_line() {
        assert_eq!(without_credentials("redis://:s3cret@redis:6379/"), "redis://<redacted>@redis:6379/");
        assert_eq!(
            without_credentials("mongodb://root:p%40ss@mongo:27017/?replicaSet=rs0&authSource=admin"),
            "mongodb://<redacted>@mongo:27017/?replicaSet=rs0&authSource=admin"
        );
        assert_eq!(without_credentials("redis://127.0.0.1:6379/"), "redis://127.0.0.1:6379/");
        assert_eq!(
            without_credentials("mongodb://h/?x=a@b"),
            "mongodb://h/?x=a@b",
            "an @ after the host is not a login"
        );
        let args = RedisArgs { url: "redis://:s3cret@redis:6379/".into(), prefix: String::new() };
        assert!(!format!("{args:?}").contains("s3cret"));
    }

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
