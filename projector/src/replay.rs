//! `projector replay`: rebuilds every view from offset 0 into a new
//! generation while the current one serves, then switches readers over
//! (docs/design.md §8).
//!
//! Crash-safe by construction: the new generation's checkpoints are written
//! with its views, so a rebuild killed at any point and run again resumes
//! where its views are, and re-applying is a no-op (versioned writes,
//! processed-id keys). Nothing readers use is touched before the switch,
//! which is one single-document write.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle as BarStyle};

use crate::Pipeline;
use crate::coalesce::{self, CoalesceSettings};
use crate::config::{ProgressStyle, ReplayArgs};
use crate::positions::{self, Positions};
use crate::worker::{Ended, Partitions, Stops};

pub async fn run(pipeline: Pipeline, args: ReplayArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let _heartbeat = pipeline.leases.spawn_heartbeat();
    let generations = &pipeline.generations;
    let (generation, resumed) = if args.in_place {
        (generations.current_or_create().await?, false)
    } else {
        drop_orphans(&pipeline).await;
        generations.start_rebuild().await?
    };
    tracing::info!(
        %generation,
        resumed,
        in_place = args.in_place,
        "rebuilding the views from the topics"
    );
    let store = pipeline.store(&generation).await?.for_rebuild();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        platform::shutdown_signal().await;
        let _ = stop.send(true);
    });
    // A new generation is first filled by folding the log into final
    // documents; the per-event worker then applies what arrived meanwhile.
    let coalesced = Arc::new(AtomicU64::new(0));
    if !args.in_place && !args.per_event {
        let positions = Positions::default();
        let progress = Progress::start(args.progress, positions.clone(), Arc::clone(&coalesced));
        let settings = CoalesceSettings {
            chunk_events: usize::try_from(args.chunk_events).unwrap_or(usize::MAX),
            presence_ttl: chrono::Duration::from_std(pipeline.config.tuning.presence_ttl)
                .unwrap_or(chrono::Duration::minutes(5)),
        };
        let outcome = coalesce::run(&pipeline, &store, settings, &coalesced, &positions, stopped.clone()).await;
        progress.finish();
        if outcome?.interrupted {
            tracing::warn!(%generation, "rebuild interrupted; run it again to resume where it stopped");
            return Ok(());
        }
    }
    // In place, everything is re-applied from offset 0 (over whatever is
    // there); a new generation starts where its own checkpoints are.
    let suffix = if args.in_place { ".replay-in-place" } else { "" };
    let worker = pipeline.worker(&generation, store.clone(), !args.in_place, suffix, Partitions::All).await?;
    let positions = worker.positions.clone();
    let events = Arc::clone(&worker.events_applied);
    let poller = positions::spawn_watermark_poller(
        &pipeline.config.kafka.brokers,
        pipeline.event_topics(),
        positions.clone(),
        Duration::from_millis(500),
    )?;
    let progress = Progress::start(args.progress, positions.clone(), Arc::clone(&events));
    let stops = Stops { shutdown: stopped, follow: None, generation: generation.clone(), when_caught_up: true };
    let ended = worker.run(stops).await;
    poller.abort();
    progress.finish();
    let applied = events.load(Ordering::Relaxed) + coalesced.load(Ordering::Relaxed);
    match ended? {
        Ended::CaughtUp => {}
        Ended::Shutdown | Ended::GenerationChanged | Ended::Rejoin => {
            tracing::warn!(%generation, applied, "rebuild interrupted; run it again to resume where it stopped");
            return Ok(());
        }
    }
    let warming = Instant::now();
    let cached = store.warm_caches().await?;
    tracing::info!(writes = cached, seconds = warming.elapsed().as_secs_f64(), "caches warmed");
    let rebuilt_in = started.elapsed();
    let rate = applied as f64 / rebuilt_in.as_secs_f64().max(0.001);
    if args.in_place {
        tracing::info!(%generation, events = applied, seconds = rebuilt_in.as_secs_f64(), events_per_second = rate as u64, "views re-applied in place");
        return Ok(());
    }
    let retired = generations.switch_to(&generation).await?;
    tracing::info!(
        %generation,
        events = applied,
        records = positions.total_applied(),
        seconds_to_switch = started.elapsed().as_secs_f64(),
        events_per_second = rate as u64,
        "caught up; readers switched to the new generation"
    );
    let Some(retired) = retired else { return Ok(()) };
    if args.keep_old {
        tracing::info!(%retired, "keeping the old generation (--keep-old)");
        return Ok(());
    }
    // Services re-read the pointer every few seconds at most; requests
    // already running on the old generation finish first.
    tokio::time::sleep(args.drop_after).await;
    let mut redis = pipeline.redis.clone();
    let keys = generations.drop_generation(&retired, &mut redis, &pipeline.keys).await?;
    tracing::info!(%retired, redis_keys = keys, "dropped the old generation");
    Ok(())
}

/// Generations nothing points at (an abandoned rebuild, an interrupted
/// drop): dropped, best effort.
async fn drop_orphans(pipeline: &Pipeline) {
    let orphans = match pipeline.generations.orphans().await {
        Ok(orphans) => orphans,
        Err(err) => {
            tracing::warn!(error = %err, "listing old generations failed; leaving them");
            return;
        }
    };
    let mut redis = pipeline.redis.clone();
    for orphan in orphans {
        match pipeline.generations.drop_generation(&orphan, &mut redis, &pipeline.keys).await {
            Ok(keys) => tracing::info!(generation = %orphan, redis_keys = keys, "dropped a leftover generation"),
            Err(err) => tracing::warn!(generation = %orphan, error = %err, "dropping a leftover generation failed"),
        }
    }
}

/// A progress bar on a terminal, a log line every few seconds otherwise.
struct Progress {
    task: tokio::task::JoinHandle<()>,
    bar: Option<ProgressBar>,
}

impl Progress {
    fn start(style: ProgressStyle, positions: Positions, events: Arc<AtomicU64>) -> Self {
        let use_bar = match style {
            ProgressStyle::Bar => true,
            ProgressStyle::Log => false,
            ProgressStyle::Auto => std::io::stderr().is_terminal(),
        };
        let started = Instant::now();
        let summary = move |positions: &Positions| {
            let applied = events.load(Ordering::Relaxed);
            let rate = applied as f64 / started.elapsed().as_secs_f64().max(0.001);
            let lag: Vec<String> = positions.lag_per_topic().into_iter().map(|(t, l)| format!("{t}={l}")).collect();
            (applied, rate, lag.join(" "))
        };
        if use_bar {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(
                BarStyle::with_template("{elapsed_precise} [{wide_bar}] {pos}/{len} records  {msg}")
                    .unwrap_or_else(|_| BarStyle::default_bar()),
            );
            let shown = bar.clone();
            let task = tokio::spawn(async move {
                loop {
                    shown.set_length(positions.total_high().max(0) as u64);
                    shown.set_position(positions.total_applied().max(0) as u64);
                    let (applied, rate, lag) = summary(&positions);
                    shown.set_message(format!("{applied} events  {rate:.0} events/s  lag: {lag}"));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
            Self { task, bar: Some(bar) }
        } else {
            let task = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    let (applied, rate, lag) = summary(&positions);
                    tracing::info!(
                        records = positions.total_applied(),
                        of = positions.total_high(),
                        events = applied,
                        events_per_second = rate as u64,
                        lag = %lag,
                        "rebuilding"
                    );
                }
            });
            Self { task, bar: None }
        }
    }

    fn finish(self) {
        self.task.abort();
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
