//! The projector: consumes the event topics and builds the views.
//! It never decides anything (ARCHITECTURE.md).

pub mod coalesce;
pub mod config;
pub mod leases;
pub mod markers;
pub mod plan;
pub mod positions;
pub mod prune;
pub mod redrive;
pub mod replay;
pub mod store;
pub mod wake;
pub mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use events::{Topic, TopicNames};
use metrics_exporter_prometheus::PrometheusHandle;
use rdkafka::consumer::StreamConsumer;
use redis::aio::ConnectionManager;
use views::generation::{CurrentGeneration, Generation, Generations};
use views::keys::RedisKeys;

use crate::config::{Config, Operation};
use crate::positions::{Positions, StallWatch, StartAtCheckpoints};
use crate::store::ViewStore;
use crate::worker::{Ended, Partitions, Stops, Worker, WorkerSettings};

/// Connections and names every mode of the projector uses.
#[derive(Clone)]
pub struct Pipeline {
    pub config: Config,
    pub topics: TopicNames,
    pub mongo: mongodb::Client,
    pub redis: ConnectionManager,
    pub keys: RedisKeys,
    pub generations: Generations,
    /// This process's transaction sessions, so a successor can abort
    /// what it leaves open if it dies mid-batch.
    pub leases: leases::SessionLeases,
    /// Woken by the command API's append announcements (`wake.rs`).
    pub wake: Arc<tokio::sync::Notify>,
}

impl Pipeline {
    pub async fn connect(config: Config) -> anyhow::Result<Self> {
        let topics = config.kafka.topics();
        let brokers = config.kafka.brokers.clone();
        let names: Vec<String> = Topic::ALL.iter().map(|t| topics.name(*t)).collect();
        platform::with_retry("creating topics", || {
            platform::kafka::ensure_topics(&brokers, &names, config.kafka.partitions, config.kafka.replication)
        })
        .await?;
        let mongo = platform::mongo::connect(&config.mongo.uri, "devconnect-projector").await?;
        let redis = platform::redis_conn::connect(&config.redis.url)?;
        let keys = RedisKeys::new(config.redis.prefix.clone());
        let generations = Generations::new(mongo.clone(), &config.mongo.database);
        let leases = leases::SessionLeases::new(&mongo, &config.mongo.database);
        Ok(Self { config, topics, mongo, redis, keys, generations, leases, wake: Arc::default() })
    }

    pub fn event_topics(&self) -> Vec<String> {
        Topic::EVENT_TOPICS.iter().map(|t| self.topics.name(*t)).collect()
    }

    /// The view store of one generation, with its indexes in place.
    pub async fn store(&self, generation: &Generation) -> anyhow::Result<ViewStore> {
        let store = ViewStore::new(
            self.mongo.clone(),
            &generation.database(&self.config.mongo.database),
            self.redis.clone(),
            generation.redis_keys(&self.keys),
            self.leases.clone(),
        )
        .with_streams(store::StreamSettings {
            ttl: self.config.tuning.stream_ttl,
            presence_fanout: self.config.tuning.presence_fanout_max,
        });
        platform::with_retry("creating indexes", || async { Ok(store.ensure_indexes().await?) }).await?;
        Ok(store)
    }

    /// A worker that fills `store` (of `generation`) in the generation's
    /// consumer group. With `from_checkpoints`, partitions start where the
    /// store says it is; without, at offset 0 (re-applying everything).
    pub async fn worker(
        &self,
        generation: &Generation,
        store: ViewStore,
        from_checkpoints: bool,
        group_suffix: &str,
        partitions: Partitions,
    ) -> anyhow::Result<Worker> {
        let positions = Positions::default();
        let markers = markers::Markers::default();
        if from_checkpoints {
            let checkpoints =
                platform::with_retry("reading checkpoints", || async { Ok(store.checkpoints().await?) }).await?;
            for checkpoint in checkpoints {
                positions.set_applied(&checkpoint.topic, checkpoint.partition, checkpoint.next_offset);
                positions.set_refresh_from(&checkpoint.topic, checkpoint.partition, checkpoint.refresh_from);
                markers.seed(&checkpoint);
            }
        }
        let group = format!("{}{group_suffix}", generation.consumer_group(&self.config.group_id));
        let tuning = &self.config.tuning;
        let consumer: StreamConsumer<StartAtCheckpoints> = platform::kafka::client_config(&self.config.kafka.brokers)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", tuning.fetch_wait.as_millis().to_string())
            // A projector killed outright holds its partitions until its
            // session expires: keep that short (librdkafka's default is 45 s).
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "2000")
            .create_with_context(StartAtCheckpoints { positions: positions.clone() })?;
        Ok(Worker {
            consumer,
            dead_letters: tokio::sync::OnceCell::new(),
            dead_letter_brokers: self.config.kafka.brokers.clone(),
            topics: self.topics.clone(),
            store,
            settings: WorkerSettings {
                max_batch: tuning.max_batch,
                linger: tuning.linger,
                max_batch_time: tuning.max_batch_time,
                presence_ttl: chrono::Duration::from_std(tuning.presence_ttl).unwrap_or(chrono::Duration::minutes(5)),
                apply_attempts: tuning.apply_attempts.max(1),
                idle_pause: tuning.idle_pause,
            },
            positions,
            markers,
            events_applied: Arc::new(AtomicU64::new(0)),
            partitions,
            stalls: StallWatch::new(tuning.stall_after),
            caches_degraded: AtomicBool::new(false),
            rewound: std::sync::Mutex::default(),
            cache_loss: worker::CacheLossWatch::default(),
            wake: Arc::clone(&self.wake),
        })
    }
}

/// The projector's own endpoints: health, readiness, progress, metrics.
async fn spawn_ops_server(
    listen: std::net::SocketAddr,
    ops: OpsState,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let router = axum::Router::new()
        .route("/healthz", get(platform::http::healthz))
        .route("/readyz", get(readyz))
        .route("/progress", get(progress_report))
        .route("/metrics", get(metrics_report))
        .with_state(ops);
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    Ok(tokio::spawn(platform::http::serve(
        listener,
        platform::http::with_common_layers(router, platform::http::InFlight::new(64)),
    )))
}

/// What the continuous projection does after a worker ends.
struct Restarts {
    /// Before building a worker again after a failure.
    failures: platform::Backoff,
    /// Rejoins that brought nothing (no event applied in between). Tansu
    /// 0.6 can keep a group stuck on a dead leader that no leave or join
    /// clears (docs/self-healing.md, "Partition ownership"); after two
    /// fruitless rejoins this member moves to a group of its own
    /// (`group_suffix`). Safe: where a partition starts is the store's
    /// checkpoint, never the group's offsets, and applying is idempotent.
    fruitless_rejoins: u32,
    group_suffix: String,
}

impl Restarts {
    fn new() -> Self {
        Self {
            failures: platform::Backoff::new(Duration::from_millis(500), Duration::from_secs(5)),
            fruitless_rejoins: 0,
            group_suffix: String::new(),
        }
    }

    /// Breaks on a shutdown; otherwise the next worker may be built.
    async fn after(
        &mut self,
        ended: anyhow::Result<Ended>,
        applied: u64,
        current: &CurrentGeneration,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
    ) -> std::ops::ControlFlow<()> {
        match ended {
            Ok(Ended::GenerationChanged) => {
                tracing::info!(generation = %current.get(), "the view generation changed; moving to it");
            }
            Ok(Ended::Rejoin) => {
                self.fruitless_rejoins = if applied == 0 { self.fruitless_rejoins + 1 } else { 1 };
                if self.fruitless_rejoins > 2 {
                    self.group_suffix = format!(".r{}", chrono::Utc::now().timestamp_millis());
                    self.fruitless_rejoins = 0;
                    tracing::warn!(group_suffix = %self.group_suffix, "rejoining did not help; moving to a consumer group of its own");
                } else {
                    tracing::info!("building the consumer afresh (leaving and joining the group)");
                }
            }
            Ok(Ended::Shutdown | Ended::CaughtUp) => return std::ops::ControlFlow::Break(()),
            Err(err) => {
                tracing::warn!(error = %format!("{err:#}"), retry_in_ms = self.failures.next_delay().as_millis() as u64, "the projection stopped; starting it again");
                tokio::select! {
                    () = self.failures.wait() => {}
                    _ = shutdown.changed() => return std::ops::ControlFlow::Break(()),
                }
            }
        }
        std::ops::ControlFlow::Continue(())
    }
}

/// What the ops endpoints look at: the worker of the moment.
#[derive(Clone)]
struct OpsState {
    metrics: PrometheusHandle,
    active: Arc<RwLock<Option<Active>>>,
    ready_lag: i64,
}

#[derive(Clone)]
struct Active {
    /// The consumer group, which names the generation too.
    projection: String,
    generation: Generation,
    store: ViewStore,
    positions: Positions,
}

impl OpsState {
    fn active(&self) -> Option<Active> {
        self.active.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// Ready when MongoDB and Redis answer and the views are within
/// `ready_lag` records of the topics' ends.
async fn readyz(State(state): State<OpsState>) -> Response {
    let Some(active) = state.active() else {
        return platform::http::readiness_response(&[("projecting", false)]);
    };
    let (mongo, redis) = (active.store.mongo_reachable().await, active.store.redis_reachable().await);
    let lag = active.positions.total_lag();
    let caught_up = lag.is_some_and(|lag| lag <= state.ready_lag);
    let mut response =
        platform::http::readiness_response(&[("mongo", mongo), ("redis", redis), ("caughtUp", caught_up)]);
    let headers = response.headers_mut();
    if let Ok(value) = lag.map_or("unknown".to_owned(), |l| l.to_string()).parse() {
        headers.insert("x-projection-lag", value);
    }
    response
}

async fn progress_report(State(state): State<OpsState>) -> Response {
    let Some(active) = state.active() else {
        return axum::Json(serde_json::json!({ "partitions": [] })).into_response();
    };
    let partitions: Vec<_> = active
        .positions
        .snapshot()
        .into_iter()
        .map(|((topic, partition), p)| {
            serde_json::json!({"topic": topic, "partition": partition, "applied": p.applied, "highWatermark": p.high, "lag": p.lag()})
        })
        .collect();
    axum::Json(serde_json::json!({
        "generation": active.generation.id(),
        "lag": active.positions.total_lag(),
        "partitions": partitions,
    }))
    .into_response()
}

/// The lag gauges are set from the live positions at each scrape, so a
/// scrape never shows an older position than `/readyz` would.
async fn metrics_report(State(state): State<OpsState>) -> Response {
    if let Some(active) = state.active() {
        active.positions.export_metrics(&active.projection);
    }
    platform::http::metrics_response(&state.metrics)
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    match config.command.clone() {
        None => project_continuously(config).await,
        Some(Operation::Replay(args)) => replay::run(Pipeline::connect(config).await?, args).await,
        Some(Operation::RedriveDeadLetters(args)) => redrive::run(Pipeline::connect(config).await?, args).await,
    }
}

/// The service: projects into the current generation, and moves to the
/// next one when a rebuild switches the pointer.
async fn project_continuously(config: Config) -> anyhow::Result<()> {
    let metrics = platform::http::install_metrics()?;
    let listen = config.listen;
    let pipeline = Pipeline::connect(config).await?;
    let _heartbeat = pipeline.leases.spawn_heartbeat();
    let _wake_listener = wake::spawn_listener(
        pipeline.config.redis.url.clone(),
        pipeline.keys.log_appended(),
        Arc::clone(&pipeline.wake),
    );
    let current = platform::with_retry("reading the view generation", || async {
        Ok(CurrentGeneration::follow(pipeline.generations.clone(), pipeline.config.mongo.generation_poll).await?)
    })
    .await?;

    let ops = OpsState { metrics, active: Arc::default(), ready_lag: pipeline.config.tuning.ready_lag };
    let server = spawn_ops_server(listen, ops.clone()).await?;

    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        platform::shutdown_signal().await;
        let _ = stop.send(true);
    });
    // Nothing but a shutdown ends this loop: a worker that fails (the
    // broker, MongoDB or Redis gone) is built afresh after a backoff, and
    // its partitions start again at the store's checkpoints.
    let mut restarts = Restarts::new();
    loop {
        let generation = current.get();
        let store = pipeline.store(&generation).await?;
        let suffix = restarts.group_suffix.clone();
        let worker = pipeline.worker(&generation, store.clone(), true, &suffix, Partitions::Group).await?;
        let applied = Arc::clone(&worker.events_applied);
        let group = format!("{}{suffix}", generation.consumer_group(&pipeline.config.group_id));
        let poller = positions::spawn_watermark_poller(
            &pipeline.config.kafka.brokers,
            pipeline.event_topics(),
            worker.positions.clone(),
            Duration::from_secs(1),
        )?;
        *ops.active.write().unwrap_or_else(PoisonError::into_inner) = Some(Active {
            projection: group.clone(),
            generation: generation.clone(),
            store: store.clone(),
            positions: worker.positions.clone(),
        });
        tracing::info!(%group, %generation, "projecting");
        let tuning = &pipeline.config.tuning;
        let pruner = prune::spawn(
            store,
            prune::PruneSettings {
                every: tuning.prune_every,
                processed_retention: tuning.processed_retention,
                session_retention: tuning.session_retention,
            },
        );
        let stops =
            Stops { shutdown: stopped.clone(), follow: Some(current.clone()), generation, when_caught_up: false };
        let ended = worker.run(stops).await;
        poller.abort();
        pruner.abort();
        let applied = applied.load(std::sync::atomic::Ordering::Relaxed);
        if restarts.after(ended, applied, &current, &mut stopped.clone()).await.is_break() {
            break;
        }
    }
    server.await??;
    Ok(())
}
