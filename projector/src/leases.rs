//! Transactions orphaned by a projector that died mid-batch.
//!
//! A projector killed between `startTransaction` and `commitTransaction`
//! leaves its transaction open on the server, holding its documents:
//! everyone else's write to them fails with WriteConflict until the server
//! aborts it (about 60 s on SecantusDB, `transactionLifetimeLimitSeconds`
//! on MongoDB). That would hold the views back for a minute after every
//! crash. So each projector process records the logical session ids it
//! runs transactions on, under an incarnation id with a heartbeat, and any
//! projector that finds an incarnation whose heartbeat stopped kills that
//! incarnation's sessions (`killSessions`), which aborts their transactions.
//!
//! Killing the sessions of a process that was only paused is harmless: its
//! transaction fails, and it retries the batch, as after any conflict.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::Utc;
use futures::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};

/// The collection, in the base database: sessions are server-wide, and a
/// dead process may have held a transaction in any generation.
pub const COLLECTION: &str = "projector_sessions";

/// How often a live process says so.
const HEARTBEAT: Duration = Duration::from_secs(3);
/// Silence after which a process counts as dead.
const DEAD_AFTER: chrono::Duration = chrono::Duration::seconds(10);

#[derive(Debug, Clone)]
pub struct SessionLeases {
    incarnation: String,
    collection: mongodb::Collection<Document>,
    admin: mongodb::Database,
    known: Arc<Mutex<HashSet<Vec<u8>>>>,
}

impl SessionLeases {
    pub fn new(client: &mongodb::Client, base_database: &str) -> Self {
        Self {
            incarnation: uuid::Uuid::new_v4().to_string(),
            collection: client.database(base_database).collection(COLLECTION),
            admin: client.database("admin"),
            known: Arc::default(),
        }
    }

    /// Records `lsid` (a session's `{id: UUID}`) before its first
    /// transaction. The driver pools server sessions, so this writes once
    /// per pooled session, not once per batch.
    pub async fn note(&self, lsid: &Document) -> mongodb::error::Result<()> {
        let key = mongodb::bson::to_vec(lsid).unwrap_or_default();
        if self.known.lock().unwrap_or_else(PoisonError::into_inner).contains(&key) {
            return Ok(());
        }
        self.collection
            .update_one(
                doc! { "_id": &self.incarnation },
                doc! { "$addToSet": { "lsids": lsid.clone() }, "$set": { "seenAt": Utc::now().timestamp_millis() } },
            )
            .upsert(true)
            .await?;
        self.known.lock().unwrap_or_else(PoisonError::into_inner).insert(key);
        Ok(())
    }

    /// Keeps this incarnation alive until the task is aborted.
    pub fn spawn_heartbeat(&self) -> tokio::task::JoinHandle<()> {
        let leases = self.clone();
        tokio::spawn(async move {
            loop {
                let beat = leases
                    .collection
                    .update_one(
                        doc! { "_id": &leases.incarnation },
                        doc! { "$set": { "seenAt": Utc::now().timestamp_millis() } },
                    )
                    .upsert(true)
                    .await;
                if let Err(err) = beat {
                    tracing::debug!(error = %err, "session lease heartbeat failed");
                }
                tokio::time::sleep(HEARTBEAT).await;
            }
        })
    }

    /// Kills the sessions of every incarnation that stopped beating, which
    /// aborts the transactions they left open; returns how many sessions.
    pub async fn reap(&self) -> mongodb::error::Result<usize> {
        let dead_before = (Utc::now() - DEAD_AFTER).timestamp_millis();
        let dead: Vec<Document> = self
            .collection
            .find(doc! { "_id": { "$ne": &self.incarnation }, "seenAt": { "$lt": dead_before } })
            .await?
            .try_collect()
            .await?;
        let mut killed = 0;
        for incarnation in dead {
            let lsids: Vec<Bson> = incarnation.get_array("lsids").cloned().unwrap_or_default();
            if !lsids.is_empty() {
                killed += lsids.len();
                self.admin.run_command(doc! { "killSessions": lsids }).await?;
            }
            if let Some(id) = incarnation.get("_id") {
                self.collection.delete_one(doc! { "_id": id.clone() }).await?;
            }
        }
        if killed > 0 {
            tracing::info!(sessions = killed, "aborted the transactions of projectors that died mid-batch");
        }
        Ok(killed)
    }
}
