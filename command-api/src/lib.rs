//! The write side. See ARCHITECTURE.md for how a command flows.

pub mod config;
pub mod domain;
pub mod error;
pub mod event_log;
pub mod http;
pub mod locks;
pub mod model;
pub mod password;
pub mod rate_groups;
pub mod service;
pub mod throttle;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use events::Topic;
use platform::auth::JwtKeys;
use platform::rate_limit::{RateLimitState, RateLimiter, Rules};
use views::keys::RedisKeys;

use crate::config::Config;
use crate::event_log::EventLog;
use crate::service::CommandService;
use crate::throttle::{LoginLimits, LoginThrottle};

pub async fn run(config: Config) -> anyhow::Result<()> {
    let keys = Arc::new(JwtKeys::new(&config.jwt.secret)?);
    // Checked before anything connects: a typo in a limit stops the start.
    let rate_rules = Rules::parse(&rate_groups::GROUPS, &config.rate_limits.overrides)
        .map_err(|e| anyhow::anyhow!("DEVCONNECT_RATE_LIMITS: {e}"))?;
    password::set_queue_limit(config.hash_queue);
    let metrics = platform::http::install_metrics()?;
    let topics = config.kafka.topics();
    let owned_topics: Vec<String> = Topic::EVENT_TOPICS.iter().map(|t| topics.name(*t)).collect();
    let brokers = config.kafka.brokers.clone();

    platform::with_retry("creating topics", || {
        platform::kafka::ensure_topics(&brokers, &owned_topics, config.kafka.partitions, config.kafka.replication)
    })
    .await?;
    let redis = platform::redis_conn::connect(&config.redis.url)?;
    let rate_limit = RateLimitState {
        limiter: Arc::new(RateLimiter::new(redis.clone(), config.redis.prefix.clone(), rate_rules)),
        keys: Arc::clone(&keys),
        group_of: rate_groups::group_of,
    };
    let mongo = platform::mongo::connect(&config.mongo.uri, "devconnect-command-api").await?;
    let revocations = views::revocation::collection(&mongo, &config.mongo.database);
    let redis_keys = RedisKeys::new(config.redis.prefix.clone());
    let limits = LoginLimits {
        per_account: config.login_max_failures_per_account,
        per_client: config.login_max_failures_per_client,
        window: config.login_failure_window,
    };
    let service = Arc::new(CommandService::new(
        EventLog::new(&brokers, topics, config.delivery_timeout)?,
        LoginThrottle::new(redis.clone(), redis_keys.clone(), limits),
        redis,
        redis_keys,
        revocations,
        config.session_policy()?,
    ));

    let listener =
        tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    let state = http::AppState {
        service: Arc::clone(&service),
        keys,
        metrics,
        cookie_secure: config.cookie_secure,
        consistency: views::ConsistencyKey::derive(&config.jwt.secret),
        rate_limit,
        in_flight: platform::http::InFlight::new(config.http.max_in_flight),
    };
    let server = tokio::spawn(platform::http::serve(listener, http::router(state)));

    // Serve /healthz at once, but commands only once the model is caught up.
    let started = Instant::now();
    let records = platform::with_retry("rebuilding the write model", || {
        event_log::rebuild_model(&brokers, &owned_topics, service.model_lock())
    })
    .await?;
    service.mark_ready();
    tracing::info!(
        records,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "write model rebuilt from the log; ready"
    );

    let resyncer = Arc::clone(&service);
    tokio::spawn(async move { resyncer.resync_on_failure(&brokers, &owned_topics).await });
    let pruner = Arc::clone(&service);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(600));
        loop {
            every.tick().await;
            pruner.prune().await;
        }
    });
    server.await??;
    Ok(())
}
