//! The projector: consumes the event topics and builds the views.
//! It never decides anything (ARCHITECTURE.md).

pub mod config;
pub mod plan;
pub mod store;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use events::Topic;
use metrics_exporter_prometheus::PrometheusHandle;
use rdkafka::consumer::StreamConsumer;
use views::keys::RedisKeys;

use crate::config::Config;
use crate::store::ViewStore;
use crate::worker::{Progress, Worker, WorkerSettings};

#[derive(Clone)]
struct OpsState {
    store: ViewStore,
    metrics: PrometheusHandle,
    progress: Progress,
}

async fn readyz(State(state): State<OpsState>) -> Response {
    let (mongo, redis) = (state.store.mongo_reachable().await, state.store.redis_reachable().await);
    platform::http::readiness_response(&[("mongo", mongo), ("redis", redis)])
}

async fn progress_report(State(state): State<OpsState>) -> axum::Json<serde_json::Value> {
    let progress = state.progress.read().unwrap_or_else(std::sync::PoisonError::into_inner);
    let items: Vec<_> = progress
        .iter()
        .map(|((topic, partition), next)| serde_json::json!({"topic": topic, "partition": partition, "nextOffset": next}))
        .collect();
    axum::Json(serde_json::json!({ "applied": items }))
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let metrics = platform::http::install_metrics()?;
    let topics = config.kafka.topics();
    let brokers = config.kafka.brokers.clone();
    let names: Vec<String> = Topic::ALL.iter().map(|t| topics.name(*t)).collect();
    platform::with_retry("creating topics", || {
        platform::kafka::ensure_topics(&brokers, &names, config.kafka.partitions, config.kafka.replication)
    })
    .await?;

    let mongo = platform::mongo::connect(&config.mongo.uri, "devconnect-projector").await?;
    let redis = platform::redis_conn::connect(&config.redis.url)?;
    let store = ViewStore::new(mongo, &config.mongo.database, redis, RedisKeys::new(config.redis.prefix.clone()));
    platform::with_retry("creating indexes", || async { Ok(store.ensure_indexes().await?) }).await?;

    let consumer: StreamConsumer = platform::kafka::client_config(&brokers)
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", config.fetch_wait.as_millis().to_string())
        .create()?;
    let dead_letters = platform::kafka::event_producer(&brokers, Duration::from_secs(30))?;
    let progress = Progress::default();

    let ops = OpsState { store: store.clone(), metrics, progress: Arc::clone(&progress) };
    let router = axum::Router::new()
        .route("/healthz", get(platform::http::healthz))
        .route("/readyz", get(readyz))
        .route("/progress", get(progress_report))
        .route("/metrics", get(|State(s): State<OpsState>| async move { platform::http::metrics_response(&s.metrics) }))
        .with_state(ops);
    let listener =
        tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    let server = tokio::spawn(platform::http::serve(listener, platform::http::with_common_layers(router)));

    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        platform::shutdown_signal().await;
        let _ = stop.send(true);
    });
    let worker = Worker {
        consumer,
        dead_letters,
        topics,
        store,
        settings: WorkerSettings {
            max_batch: config.max_batch,
            linger: config.linger,
            max_batch_time: config.max_batch_time,
            presence_ttl: chrono::Duration::from_std(config.presence_ttl).unwrap_or(chrono::Duration::minutes(5)),
        },
        progress,
    };
    tracing::info!(group = %config.group_id, "projecting");
    worker.run(stopped).await?;
    server.await??;
    Ok(())
}
