//! The write side. See ARCHITECTURE.md for how a command flows.

pub mod config;
pub mod domain;
pub mod error;
pub mod event_log;
pub mod http;
pub mod locks;
pub mod log_follower;
pub mod model;
pub mod ownership;
pub mod password;
pub mod rate_groups;
pub mod routing;
pub mod service;
pub mod snapshot;
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
use crate::snapshot::{SealKey, SnapshotStore};
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
    let advertised = config.advertised_url()?;
    let routes = Arc::new(routing::Routes::new(
        redis.clone(),
        &config.redis.prefix,
        &config.kafka.topic_prefix,
        advertised.clone(),
        routing::HopKey::derive(&config.jwt.secret),
    )?);
    let membership = ownership::Membership::join(
        &brokers,
        &format!("{}{}", config.kafka.topic_prefix, config.group),
        owned_topics.clone(),
    )?;
    let follower = log_follower::LogFollower::new(&brokers, config.follow_fetch_wait, config.delivery_timeout)?;
    tokio::spawn(Arc::clone(&follower).run());
    let service = Arc::new(CommandService::new(
        EventLog::new(&brokers, topics, config.delivery_timeout)?,
        LoginThrottle::new(redis.clone(), redis_keys.clone(), limits),
        redis,
        redis_keys,
        revocations,
        config.session_policy()?,
        service::Cluster { follower, routes: Arc::clone(&routes) },
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
        routes: Arc::clone(&routes),
    };
    let server = tokio::spawn(platform::http::serve(listener, http::router(state)));

    // Serve /healthz at once, but commands only once the model is caught up.
    let snapshots = SnapshotStore::new(&mongo, &config.mongo.database, SealKey::derive(&config.jwt.secret));
    let first = first_assignment(&membership).await;
    let caught_up = catch_up_write_model(&service, &snapshots, &brokers, &owned_topics, &first).await?;
    tracing::info!(url = %advertised, partitions = ?first, "serving the partitions the group assigned");
    if config.snapshot_every > 0 {
        let snapshotter = Arc::clone(&service);
        let every = config.snapshot_every;
        // A start that read more than `every` records of tail writes one soon.
        let last = if caught_up.from_snapshot > 0 { caught_up.commits.saturating_sub(caught_up.records) } else { 0 };
        tokio::spawn(async move { write_snapshots(&snapshotter, &snapshots, every, last).await });
    }
    let owner = Arc::clone(&service);
    let member = membership.clone();
    tokio::spawn(async move { owner.keep_ownership(&brokers, &owned_topics, &member).await });
    let pruner = Arc::clone(&service);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(600));
        loop {
            every.tick().await;
            pruner.prune().await;
        }
    });
    let served = server.await;
    membership.leave();
    // The member thread sends LeaveGroup; give it a moment before exiting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    served??;
    Ok(())
}

/// The group's first assignment to this member. A member that gets none
/// within the wait (more instances than partitions, or a group still
/// settling) starts serving with none, forwarding every command, and claims
/// what is assigned later.
async fn first_assignment(membership: &ownership::Membership) -> ownership::Assigned {
    let mut assigned = membership.watch();
    let waited = tokio::time::timeout(Duration::from_secs(15), assigned.wait_for(|a| !a.is_empty()))
        .await
        .map(|seen| seen.map(|a| a.clone()));
    match waited {
        Ok(Ok(first)) => first,
        _ => {
            tracing::warn!("the group assigned no partition to this instance within 15 s; serving none for now");
            ownership::Assigned::new()
        }
    }
}

/// How the start read the write model.
struct CaughtUp {
    /// Records read from the log.
    records: u64,
    /// Offset sum of the snapshot it started from (0: none).
    from_snapshot: i64,
    /// Commits the model holds.
    commits: u64,
}

/// Fills the model from the latest snapshot plus each partition's tail (or
/// from offset 0), then opens the service to commands.
async fn catch_up_write_model(
    service: &CommandService,
    snapshots: &SnapshotStore,
    brokers: &str,
    owned_topics: &[String],
    assigned: &ownership::Assigned,
) -> anyhow::Result<CaughtUp> {
    let started = Instant::now();
    let from_snapshot = load_snapshot(snapshots, owned_topics, service).await;
    let records = platform::with_retry("claiming the partitions and reading the log into the write model", || async {
        let read = service.claim(brokers, owned_topics, assigned, true).await;
        if let Err(err) = &read
            && err.is::<event_log::LogBehindModel>()
        {
            tracing::warn!(error = %err, "the snapshot is ahead of the log; ignoring it and reading from offset 0");
            service.replace_model(model::WriteModel::default()).await;
        }
        read
    })
    .await?;
    service.mark_ready();
    let (offset_sum, commits) = {
        let model = service.model_lock().read().unwrap_or_else(std::sync::PoisonError::into_inner);
        (model.offset_sum(), model.commits_applied())
    };
    tracing::info!(
        records,
        from_snapshot_offset_sum = from_snapshot,
        offset_sum,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "write model caught up with the log; ready"
    );
    Ok(CaughtUp { records, from_snapshot, commits })
}

/// Puts the latest usable snapshot into the service's model. Returns the
/// offset sum it covers (0: none, the model starts empty). A snapshot that
/// cannot be used is ignored with one log line.
async fn load_snapshot(store: &SnapshotStore, owned_topics: &[String], service: &CommandService) -> i64 {
    let started = Instant::now();
    match store.load(owned_topics).await {
        Ok(loaded) => {
            let offset_sum = loaded.model.offset_sum();
            tracing::info!(
                snapshot = %loaded.snapshot_id,
                offset_sum,
                bytes = loaded.bytes,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "write model loaded from snapshot"
            );
            service.replace_model(loaded.model).await;
            metrics::gauge!("write_model_snapshot_offset").set(offset_sum as f64);
            offset_sum
        }
        Err(snapshot::Unusable::Absent) => {
            tracing::info!("no write-model snapshot; reading the log from offset 0");
            0
        }
        Err(why) => {
            tracing::warn!(reason = %why, "ignoring the write-model snapshot; reading the log from offset 0");
            0
        }
    }
}

/// Writes a snapshot whenever `every` records were applied since the last
/// one. The model is cloned under its read lock (commands wait only for the
/// clone); serialising and storing run on the copy.
async fn write_snapshots(service: &CommandService, store: &SnapshotStore, every: u64, mut last: u64) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !service.is_ready() {
            continue;
        }
        let applied = service.model_lock().read().unwrap_or_else(std::sync::PoisonError::into_inner).commits_applied();
        if applied.saturating_sub(last) < every {
            continue;
        }
        let cloning = Instant::now();
        let copy = service.model_copy();
        let clone_ms = cloning.elapsed().as_millis() as u64;
        let offset_sum = copy.offset_sum();
        match store.save(copy).await {
            Ok(_) => {
                last = applied;
                metrics::gauge!("write_model_snapshot_offset").set(offset_sum as f64);
                tracing::debug!(clone_ms, "model cloned for the snapshot");
            }
            Err(err) => {
                tracing::warn!(
                    error = format!("{err:#}"),
                    "writing a write-model snapshot failed; trying again in a minute"
                );
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        }
    }
}
