use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use platform::config::{HttpArgs, JwtArgs, KafkaArgs, LogArgs, MongoArgs, RateLimitArgs, RedisArgs, parse_duration};

/// The write side of DevConnect: validates commands against the write model
/// rebuilt from Kafka and appends their events.
#[derive(Debug, Clone, Parser)]
#[command(name = "command-api", version, about)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "DEVCONNECT_COMMAND_API_ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// How the other command APIs reach this one, to forward it the
    /// commands of its partitions. Default: `http://<listen address>`, or
    /// `http://$HOSTNAME:<port>` when listening on every interface.
    #[arg(long, env = "DEVCONNECT_COMMAND_API_ADVERTISED_URL")]
    pub advertised_url: Option<String>,
    /// The consumer group whose assignment says which partitions each
    /// command API owns (the topic prefix is put before it).
    #[arg(long, env = "DEVCONNECT_COMMAND_API_GROUP", default_value = "command-api")]
    pub group: String,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Where revocations are recorded (the base database's `revocations`,
    /// outside every view generation), so a logout holds whatever Redis does.
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
    /// Lifetime of a session, from log-in to its fixed end: how long its
    /// refresh tokens can buy new access tokens.
    #[arg(long, env = "DEVCONNECT_SESSION_TTL", default_value = "7d", value_parser = parse_duration)]
    pub session_ttl: Duration,
    /// Lifetime of an access token (never past its session's end). Short,
    /// so a stolen one is worth little; clients refresh.
    #[arg(long, env = "DEVCONNECT_ACCESS_TOKEN_TTL", default_value = "15m", value_parser = parse_duration)]
    pub access_token_ttl: Duration,
    /// Active sessions per user; a log-in past it ends the oldest. Bounds
    /// the write model and the revocation event of a password change.
    #[arg(long, env = "DEVCONNECT_MAX_SESSIONS_PER_USER", default_value_t = 10)]
    pub max_sessions_per_user: usize,
    /// How long an append may wait for the broker before the command gets 503.
    #[arg(long, env = "DEVCONNECT_KAFKA_DELIVERY_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub delivery_timeout: Duration,
    /// How long the broker may hold a fetch of the log follower, which
    /// folds the log into the write model and so confirms each append
    /// before it is answered (`log_follower`). Tansu holds every fetch this
    /// long, so it is added to a command's latency at most once; shorter
    /// costs the broker more while commands flow (the follower pauses when
    /// idle).
    #[arg(long, env = "DEVCONNECT_FOLLOW_FETCH_WAIT", default_value = "5ms", value_parser = parse_duration)]
    pub follow_fetch_wait: Duration,
    /// Failed log-ins per account per window before 429.
    #[arg(long, env = "DEVCONNECT_LOGIN_MAX_FAILURES_PER_ACCOUNT", default_value_t = 5)]
    pub login_max_failures_per_account: u64,
    /// Failed log-ins per client address per window before 429.
    #[arg(long, env = "DEVCONNECT_LOGIN_MAX_FAILURES_PER_CLIENT", default_value_t = 100)]
    pub login_max_failures_per_client: u64,
    #[arg(long, env = "DEVCONNECT_LOGIN_FAILURE_WINDOW", default_value = "5m", value_parser = parse_duration)]
    pub login_failure_window: Duration,
    /// Password checks (signup, log-in, password change) that may wait for
    /// the hasher; past that they answer 503 hasher_busy with Retry-After.
    /// A check takes ~20 ms of a core: 64 waiting is well under a second
    /// on two cores.
    #[arg(long, env = "DEVCONNECT_HASH_QUEUE", default_value_t = 64)]
    pub hash_queue: usize,
    /// Write a write-model snapshot after this many records were applied
    /// since the last one (0: never). A start then reads only the tail.
    #[arg(long, env = "DEVCONNECT_SNAPSHOT_EVERY", default_value_t = 100_000)]
    pub snapshot_every: u64,
    /// Mark the session cookie `Secure` (set behind HTTPS).
    #[arg(long, env = "DEVCONNECT_COOKIE_SECURE", default_value_t = false)]
    pub cookie_secure: bool,
}

impl Config {
    /// This instance's URL for the other instances (`advertised_url`).
    pub fn advertised_url(&self) -> anyhow::Result<String> {
        if let Some(url) = &self.advertised_url {
            let parsed =
                url::Url::parse(url).map_err(|e| anyhow::anyhow!("DEVCONNECT_COMMAND_API_ADVERTISED_URL: {e}"))?;
            anyhow::ensure!(
                matches!(parsed.scheme(), "http" | "https") && parsed.path() == "/",
                "DEVCONNECT_COMMAND_API_ADVERTISED_URL must be an http(s) URL without a path, like http://10.0.0.5:8080"
            );
            return Ok(url.trim_end_matches('/').to_owned());
        }
        if self.listen.ip().is_unspecified() {
            let host = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).ok_or_else(|| {
                anyhow::anyhow!(
                    "listening on every interface: set DEVCONNECT_COMMAND_API_ADVERTISED_URL (or HOSTNAME) so \
                     other instances can forward commands here"
                )
            })?;
            return Ok(format!("http://{host}:{}", self.listen.port()));
        }
        Ok(format!("http://{}", self.listen))
    }

    pub fn session_policy(&self) -> anyhow::Result<crate::service::SessionPolicy> {
        let duration = |name: &str, d: Duration| {
            chrono::Duration::from_std(d)
                .ok()
                .filter(|d| *d > chrono::Duration::zero())
                .ok_or_else(|| anyhow::anyhow!("{name} must be positive and below 100 years"))
        };
        anyhow::ensure!(self.max_sessions_per_user >= 1, "DEVCONNECT_MAX_SESSIONS_PER_USER must be at least 1");
        Ok(crate::service::SessionPolicy {
            session_ttl: duration("DEVCONNECT_SESSION_TTL", self.session_ttl)?,
            access_ttl: duration("DEVCONNECT_ACCESS_TOKEN_TTL", self.access_token_ttl)?,
            max_active: self.max_sessions_per_user,
        })
    }
}
