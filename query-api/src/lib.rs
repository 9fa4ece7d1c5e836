//! The read side. It never reads Kafka (ARCHITECTURE.md).

pub mod config;
pub mod http;
pub mod reader;

use std::sync::Arc;

use anyhow::Context;
use platform::auth::JwtKeys;
use views::keys::RedisKeys;

use crate::config::Config;
use crate::reader::ViewReader;

pub async fn run(config: Config) -> anyhow::Result<()> {
    let jwt = Arc::new(JwtKeys::new(&config.jwt.secret)?);
    let metrics = platform::http::install_metrics()?;
    let mongo = platform::mongo::connect(&config.mongo.uri, "devconnect-query-api").await?;
    // A cache outage degrades reads to MongoDB; it does not stop the service.
    let redis = platform::redis_conn::connect(&config.redis.url)?;
    let keys = RedisKeys::new(config.redis.prefix.clone());
    let reader = ViewReader::new(mongo, &config.mongo.database, redis, keys.clone());
    let stream_redis = redis::Client::open(config.redis.url.as_str())?;
    reader.prepare_feed_directory().await;
    let state = http::AppState { reader, stream_redis, keys, jwt, metrics, consistency_wait: config.consistency_wait };
    let listener =
        tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    platform::http::serve(listener, http::router(state)).await
}
