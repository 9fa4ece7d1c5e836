//! Durable session revocations, outside every view generation.
//!
//! A logout must hold on both APIs within a second, whatever Redis does
//! (flushed, down, restarted empty) and however far behind the projector
//! is. Redis is a cache, and the session view follows the projector, so
//! neither can be the record of a revocation. The command API therefore
//! writes one document per revoked session into the base database before
//! it answers, and each query-API process keeps the set of revoked sessions
//! in memory, loaded at start and refreshed by polling (`RevocationList`).
//! A token is refused if its session is in that set, in Redis' `revoked:`
//! keys, or revoked in the session view: any one of them is enough.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::bson::doc;
use serde::{Deserialize, Serialize};

use crate::collections;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RevocationDoc {
    /// The session id (the token's `jti`).
    #[serde(rename = "_id")]
    pub session_id: String,
    pub user_id: String,
    /// When the session's last access token expires: after that every token
    /// of the session is refused anyway, and the record can go.
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub expires_at: DateTime<Utc>,
    /// When it was recorded, for the pollers' "since".
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub recorded_at: DateTime<Utc>,
}

/// The revocations collection of a base database.
pub fn collection(client: &mongodb::Client, base_database: &str) -> mongodb::Collection<RevocationDoc> {
    client.database(base_database).collection(collections::REVOCATIONS)
}

/// Records revocations (idempotent: one document per session).
pub async fn record(
    collection: &mongodb::Collection<RevocationDoc>,
    revocations: &[RevocationDoc],
) -> mongodb::error::Result<()> {
    for revocation in revocations {
        let replacement = mongodb::bson::to_document(revocation)?;
        collection
            .update_one(doc! { "_id": &revocation.session_id }, doc! { "$set": replacement })
            .upsert(true)
            .await?;
    }
    Ok(())
}

/// Deletes the records of sessions that expired: their tokens are refused
/// on expiry alone.
pub async fn prune(collection: &mongodb::Collection<RevocationDoc>) -> mongodb::error::Result<u64> {
    Ok(collection.delete_many(doc! { "expiresAt": { "$lt": Utc::now().timestamp_millis() } }).await?.deleted_count)
}

/// How far back each poll looks past the newest record it saw: records are
/// stamped by the command API before they are written, so one stamped
/// earlier can become visible later (several writers, a slow write).
const POLL_OVERLAP: chrono::Duration = chrono::Duration::seconds(10);

/// The revoked sessions, in memory, kept current by a poller.
#[derive(Debug, Clone, Default)]
pub struct RevocationList {
    revoked: Arc<RwLock<HashMap<String, DateTime<Utc>>>>,
    /// Whether the whole list was loaded once: until then nobody can say a
    /// session is not revoked, so authentication fails closed.
    loaded: Arc<AtomicBool>,
}

impl RevocationList {
    /// Whether `session_id` is known to be revoked.
    pub fn is_revoked(&self, session_id: &str) -> bool {
        self.revoked.read().unwrap_or_else(PoisonError::into_inner).contains_key(session_id)
    }

    /// Whether the list has been loaded whole at least once.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    pub fn len(&self) -> usize {
        self.revoked.read().unwrap_or_else(PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn absorb(&self, found: Vec<RevocationDoc>, now: DateTime<Utc>) {
        let mut revoked = self.revoked.write().unwrap_or_else(PoisonError::into_inner);
        revoked.retain(|_, expires_at| *expires_at > now);
        for revocation in found {
            if revocation.expires_at > now {
                revoked.insert(revocation.session_id, revocation.expires_at);
            }
        }
    }

    /// Loads every live revocation, then polls for new ones every `every`
    /// until the task is aborted. A failed poll keeps what is known (and the
    /// Redis write-through still carries new logouts) and logs once per
    /// failure streak.
    pub fn spawn_poller(
        &self,
        collection: mongodb::Collection<RevocationDoc>,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let list = self.clone();
        tokio::spawn(async move {
            let mut since: Option<DateTime<Utc>> = None;
            let mut failing = false;
            loop {
                let started = Utc::now();
                let filter = match since {
                    None => doc! { "expiresAt": { "$gt": started.timestamp_millis() } },
                    Some(since) => {
                        doc! { "recordedAt": { "$gte": (since - POLL_OVERLAP).timestamp_millis() } }
                    }
                };
                match async { collection.find(filter).await?.try_collect::<Vec<_>>().await }.await {
                    Ok(found) => {
                        tracing::debug!(found = found.len(), "revocations polled");
                        let newest = found.iter().map(|r| r.recorded_at).max();
                        list.absorb(found, started);
                        since = Some(since.into_iter().chain(newest).max().unwrap_or(started));
                        if !list.loaded.swap(true, Ordering::AcqRel) {
                            tracing::info!(revoked = list.len(), "revoked sessions loaded");
                        }
                        if failing {
                            tracing::info!("reading revocations again");
                            failing = false;
                        }
                    }
                    Err(err) => {
                        if !failing {
                            tracing::warn!(error = %err, "reading revocations failed; keeping what is known");
                            failing = true;
                        }
                    }
                }
                tokio::time::sleep(every).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revocation(id: &str, expires_at: DateTime<Utc>) -> RevocationDoc {
        RevocationDoc { session_id: id.into(), user_id: "u".into(), expires_at, recorded_at: Utc::now() }
    }

    #[test]
    fn holds_revocations_until_their_sessions_expire() {
        let list = RevocationList::default();
        let now = Utc::now();
        assert!(!list.is_loaded(), "given: nothing loaded, authentication must fail closed");
        list.absorb(vec![revocation("a", now + chrono::Duration::hours(1)), revocation("old", now)], now);
        assert!(list.is_revoked("a"));
        assert!(!list.is_revoked("old"), "an expired session needs no record");
        list.absorb(Vec::new(), now + chrono::Duration::hours(2));
        assert!(!list.is_revoked("a"), "forgotten once expired");
        assert!(list.is_empty());
    }
}
