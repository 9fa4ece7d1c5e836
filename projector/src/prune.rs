//! Storage that would otherwise only grow: the continuous projector
//! periodically forgets the processed-id keys past their retention and the
//! sessions that ended long ago, in the generation it projects into.
//!
//! Why each deletion is safe is written where it happens
//! (`ViewStore::prune_processed`, `ViewStore::prune_sessions`) and in
//! docs/design.md §3. Deletions are idempotent, so several projectors may
//! prune the same generation at once.

use std::time::Duration;

use crate::store::ViewStore;

#[derive(Debug, Clone, Copy)]
pub struct PruneSettings {
    /// How often to prune.
    pub every: Duration,
    /// How long a processed-id key is kept after it was recorded.
    pub processed_retention: Duration,
    /// How long a session document is kept after the session ended.
    pub session_retention: Duration,
}

/// What one pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub processed_dated: u64,
    pub processed: u64,
    pub sessions: u64,
}

/// The cut-offs of a pass at `now`: (processed ids recorded before, sessions
/// ended before).
pub fn cutoffs(
    now: chrono::DateTime<chrono::Utc>,
    settings: &PruneSettings,
) -> (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) {
    let back = |d: Duration| {
        chrono::Duration::from_std(d)
            .ok()
            .and_then(|d| now.checked_sub_signed(d))
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC)
    };
    (back(settings.processed_retention), back(settings.session_retention))
}

/// One pass over `store`.
pub async fn prune_once(store: &ViewStore, settings: &PruneSettings) -> Result<Pruned, crate::store::StoreError> {
    let (processed_before, sessions_before) = cutoffs(chrono::Utc::now(), settings);
    let (processed_dated, processed) = store.prune_processed(processed_before).await?;
    let sessions = store.prune_sessions(sessions_before).await?;
    Ok(Pruned { processed_dated, processed, sessions })
}

/// Prunes `store` every `settings.every` until aborted. Failures (MongoDB
/// away) are logged and tried again at the next pass.
pub fn spawn(store: ViewStore, settings: PruneSettings) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(settings.every.max(Duration::from_millis(10)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate: a projector that restarts often
        // still prunes.
        loop {
            ticks.tick().await;
            match prune_once(&store, &settings).await {
                Ok(pruned) => {
                    metrics::counter!("projector_pruned_total", "what" => "processed_events")
                        .increment(pruned.processed);
                    metrics::counter!("projector_pruned_total", "what" => "sessions").increment(pruned.sessions);
                    if pruned != Pruned::default() {
                        tracing::info!(
                            processed_ids = pruned.processed,
                            processed_ids_dated = pruned.processed_dated,
                            sessions = pruned.sessions,
                            "pruned what no event can need again"
                        );
                    }
                }
                Err(err) => tracing::warn!(error = %err, "pruning failed; trying again at the next pass"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutoffs_go_back_by_the_retentions_and_never_overflow() {
        let now = chrono::Utc::now();
        let settings = PruneSettings {
            every: Duration::from_secs(600),
            processed_retention: Duration::from_secs(7 * 86_400),
            session_retention: Duration::from_secs(3600),
        };
        let (processed, sessions) = cutoffs(now, &settings);
        assert_eq!(now - processed, chrono::Duration::days(7));
        assert_eq!(now - sessions, chrono::Duration::hours(1));
        let forever = PruneSettings { processed_retention: Duration::MAX, ..settings };
        let (processed, _) = cutoffs(now, &forever);
        assert!(processed < now - chrono::Duration::days(365 * 1000), "{processed}");
    }
}
