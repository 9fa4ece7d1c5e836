//! The read side. It never reads Kafka (ARCHITECTURE.md).

pub mod config;
pub mod cursor;
pub mod http;
pub mod rate_groups;
pub mod reader;
pub mod streams;

use std::sync::Arc;

use anyhow::Context;
use platform::auth::JwtKeys;
use platform::rate_limit::{RateLimitState, RateLimiter, Rules};
use views::generation::{CurrentGeneration, Generations};
use views::keys::RedisKeys;

use crate::config::Config;
use crate::reader::ViewSource;
use crate::streams::{StreamHub, StreamLimits};

pub async fn run(config: Config) -> anyhow::Result<()> {
    let jwt = Arc::new(JwtKeys::new(&config.jwt.secret)?);
    // Checked before anything connects: a typo in a limit stops the start.
    let rate_rules = Rules::parse(&rate_groups::GROUPS, &config.rate_limits.overrides)
        .map_err(|e| anyhow::anyhow!("DEVCONNECT_RATE_LIMITS: {e}"))?;
    let metrics = platform::http::install_metrics()?;
    let mongo = platform::mongo::connect(&config.mongo.uri, "devconnect-query-api").await?;
    // A cache outage degrades reads to MongoDB; it does not stop the service.
    let redis = platform::redis_conn::connect(&config.redis.url)?;
    let rate_limit = RateLimitState {
        limiter: Arc::new(RateLimiter::new(redis.clone(), config.redis.prefix.clone(), rate_rules)),
        keys: Arc::clone(&jwt),
        group_of: rate_groups::group_of,
    };
    let keys = RedisKeys::new(config.redis.prefix.clone());
    let generations = Generations::new(mongo.clone(), &config.mongo.database);
    let current = platform::with_retry("reading the view generation", || async {
        Ok(CurrentGeneration::follow(generations.clone(), config.mongo.generation_poll).await?)
    })
    .await?;
    // Logouts are learnt from the durable revocation records, polled: a
    // flushed or absent Redis cannot make a revoked token pass.
    let revocations = views::revocation::RevocationList::default();
    revocations.spawn_poller(views::revocation::collection(&mongo, &config.mongo.database), config.revocation_poll);
    let views = ViewSource::new(mongo, &config.mongo.database, redis, keys.clone(), current);
    views.reader();
    let streams = StreamHub::new(StreamLimits { per_user: config.streams_per_user, total: config.streams_total });
    tokio::spawn(streams.clone().run(redis::Client::open(config.redis.url.as_str())?));
    let state = http::AppState {
        views,
        revocations,
        streams,
        keys,
        jwt,
        metrics,
        consistency_wait: config.consistency_wait,
        consistency: views::ConsistencyKey::derive(&config.jwt.secret),
        rate_limit,
        in_flight: platform::http::InFlight::new(config.http.max_in_flight),
    };
    let listener =
        tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    platform::http::serve(listener, http::router(state)).await
}
