//! View generations (docs/design.md §8). Every complete set of views lives in a
//! generation of its own: a MongoDB database `<base>_<id>` and a Redis key
//! namespace `<prefix><id>:`. One pointer document in the base database
//! says which generation readers use. A rebuild fills a new generation
//! while readers keep using the current one, then moves the pointer, in
//! one single-document write, so no reader ever sees a half-built view.
//!
//! Everyone who touches views follows the pointer: the query API (reads)
//! and the projector (writes). They poll it; a switch reaches them within
//! one poll. The command API writes no generation's keys (its revocation
//! write-through goes to `revoked:<session>`, outside generations).

use std::time::Duration;

use chrono::{DateTime, Utc};
use mongodb::bson::doc;
use mongodb::options::ReturnDocument;
use mongodb::{Client, Collection, Database};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::keys::RedisKeys;

/// The collection in the base database holding the pointer.
pub const CONTROL_COLLECTION: &str = "view_generations";
const POINTER_ID: &str = "pointer";

/// One generation of views, named by a sortable id (`g` + creation time in
/// hex milliseconds). Ids are never reused, so neither is a consumer group:
/// a rebuild after MongoDB lost everything cannot inherit the offsets of a
/// group that wrote views which no longer exist.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Generation(String);

impl Generation {
    pub fn fresh() -> Self {
        Self(format!("g{:x}", Utc::now().timestamp_millis()))
    }

    pub fn id(&self) -> &str {
        &self.0
    }

    /// The MongoDB database holding this generation's collections.
    pub fn database(&self, base: &str) -> String {
        format!("{base}_{}", self.0)
    }

    /// Where this generation's cache keys live.
    pub fn redis_keys(&self, base: &RedisKeys) -> RedisKeys {
        base.for_generation(&self.0)
    }

    /// The consumer group that builds this generation.
    pub fn consumer_group(&self, base: &str) -> String {
        format!("{base}.{}", self.0)
    }
}

impl std::fmt::Display for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The pointer document.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pointer {
    #[serde(rename = "_id")]
    pub id: String,
    /// What readers use.
    pub current: Generation,
    /// A rebuild under way, resumed if its process dies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub building: Option<Generation>,
    /// The generation `current` replaced, until it has been dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired: Option<Generation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switched_at: Option<DateTime<Utc>>,
}

/// Reads and moves the pointer.
#[derive(Debug, Clone)]
pub struct Generations {
    client: Client,
    base: String,
    pointer: Collection<Pointer>,
}

impl Generations {
    pub fn new(client: Client, base_database: &str) -> Self {
        let pointer = client.database(base_database).collection(CONTROL_COLLECTION);
        Self { client, base: base_database.to_owned(), pointer }
    }

    /// The database of a generation.
    pub fn database(&self, generation: &Generation) -> Database {
        self.client.database(&generation.database(&self.base))
    }

    pub async fn pointer(&self) -> mongodb::error::Result<Option<Pointer>> {
        self.pointer.find_one(doc! { "_id": POINTER_ID }).await
    }

    /// The current generation, creating a first one when there is none yet
    /// (a new deployment, or MongoDB lost everything). Concurrent callers
    /// agree: the first upsert wins, the rest read its value.
    ///
    /// The answer is always the stored pointer, never the value we offered:
    /// SecantusDB answers some of several simultaneous upserts with no
    /// document at all (measured: about one race in four with four callers),
    /// and taking that as "ours was inserted" once sent a rebuild into a
    /// generation nobody pointed at (docs/stack.md).
    pub async fn current_or_create(&self) -> mongodb::error::Result<Generation> {
        loop {
            let fresh = Generation::fresh();
            let upserted = self
                .pointer
                .find_one_and_update(doc! { "_id": POINTER_ID }, doc! { "$setOnInsert": { "current": fresh.id() } })
                .upsert(true)
                .return_document(ReturnDocument::After)
                .await?;
            if let Some(pointer) = upserted {
                return Ok(pointer.current);
            }
            if let Some(pointer) = self.pointer().await? {
                return Ok(pointer.current);
            }
            // Dropped again between the two statements (a total loss in
            // progress): offer a generation once more.
        }
    }

    /// The generation a rebuild should fill: the one a previous rebuild
    /// left unfinished (it resumes from its checkpoints), or a new one.
    /// Returns it and whether it is resumed.
    pub async fn start_rebuild(&self) -> mongodb::error::Result<(Generation, bool)> {
        self.current_or_create().await?;
        let fresh = Generation::fresh();
        let claimed = self
            .pointer
            .find_one_and_update(
                doc! { "_id": POINTER_ID, "building": { "$exists": false } },
                doc! { "$set": { "building": fresh.id() } },
            )
            .await?;
        if claimed.is_some() {
            return Ok((fresh, false));
        }
        let pointer = self.pointer().await?;
        match pointer.and_then(|p| p.building) {
            Some(building) => Ok((building, true)),
            // Finished between the two statements: start another.
            None => Box::pin(self.start_rebuild()).await,
        }
    }

    /// Points readers at `generation`, in one single-document write (a
    /// compare-and-set on the current value), and returns the generation
    /// it replaced, now `retired` until dropped.
    pub async fn switch_to(&self, generation: &Generation) -> mongodb::error::Result<Option<Generation>> {
        loop {
            let Some(pointer) = self.pointer().await? else {
                self.current_or_create().await?;
                continue;
            };
            if &pointer.current == generation {
                return Ok(None);
            }
            let mut change = doc! { "$set": {
                "current": generation.id(),
                "retired": pointer.current.id(),
                "switchedAt": Utc::now().to_rfc3339(),
            } };
            if pointer.building.as_ref() == Some(generation) {
                change.insert("$unset", doc! { "building": "" });
            }
            let moved =
                self.pointer.update_one(doc! { "_id": POINTER_ID, "current": pointer.current.id() }, change).await?;
            if moved.modified_count == 1 {
                return Ok(Some(pointer.current));
            }
        }
    }

    /// Drops a generation's MongoDB database and Redis keys, then clears
    /// it from `retired`. Refuses the current generation.
    pub async fn drop_generation(
        &self,
        generation: &Generation,
        redis: &mut redis::aio::ConnectionManager,
        base_keys: &RedisKeys,
    ) -> anyhow::Result<u64> {
        let pointer = self.pointer().await?;
        anyhow::ensure!(
            pointer.as_ref().is_none_or(|p| &p.current != generation),
            "refusing to drop {generation}: readers use it"
        );
        self.database(generation).drop().await?;
        let removed = delete_keys_matching(redis, &generation.redis_keys(base_keys).view_pattern()).await?;
        self.pointer
            .update_one(doc! { "_id": POINTER_ID, "retired": generation.id() }, doc! { "$unset": { "retired": "" } })
            .await?;
        Ok(removed)
    }

    /// Databases of generations that nothing points at any more: left by a
    /// rebuild that was abandoned, or a drop that did not finish.
    pub async fn orphans(&self) -> mongodb::error::Result<Vec<Generation>> {
        let pointer = self.pointer().await?;
        let prefix = format!("{}_", self.base);
        let names = self.client.list_database_names().await?;
        Ok(names
            .iter()
            .filter_map(|name| name.strip_prefix(&prefix))
            .filter(|id| id.starts_with('g') && id[1..].chars().all(|c| c.is_ascii_hexdigit()))
            .map(|id| Generation(id.to_owned()))
            .filter(|g| pointer.as_ref().is_none_or(|p| &p.current != g && p.building.as_ref() != Some(g)))
            .collect())
    }
}

/// Deletes the keys matching `pattern`, returning how many. SCAN + UNLINK:
/// never a blocking `KEYS` on a live server.
pub async fn delete_keys_matching(redis: &mut redis::aio::ConnectionManager, pattern: &str) -> redis::RedisResult<u64> {
    let mut cursor: u64 = 0;
    let mut removed = 0;
    loop {
        let (next, keys): (u64, Vec<String>) =
            redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000).query_async(redis).await?;
        if !keys.is_empty() {
            removed += redis::cmd("UNLINK").arg(&keys).query_async::<u64>(redis).await?;
        }
        if next == 0 {
            return Ok(removed);
        }
        cursor = next;
    }
}

/// The generation in use, kept current by a background poll of the pointer.
#[derive(Debug, Clone)]
pub struct CurrentGeneration(watch::Receiver<Generation>);

impl CurrentGeneration {
    /// Reads the pointer (creating it if there is none), then polls it every
    /// `poll`. A failed poll keeps the last known generation: a MongoDB
    /// outage must not move readers anywhere.
    pub async fn follow(generations: Generations, poll: Duration) -> mongodb::error::Result<Self> {
        let first = generations.current_or_create().await?;
        tracing::info!(generation = %first, "using view generation");
        let (publish, current) = watch::channel(first);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(poll).await;
                let next = match generations.pointer().await {
                    Ok(Some(pointer)) => pointer.current,
                    // The pointer vanished: MongoDB lost everything. The
                    // first to notice creates a generation again.
                    Ok(None) => match generations.current_or_create().await {
                        Ok(generation) => generation,
                        Err(_) => continue,
                    },
                    Err(err) => {
                        tracing::warn!(error = %err, "reading the view generation pointer failed");
                        continue;
                    }
                };
                if *publish.borrow() != next {
                    tracing::info!(generation = %next, "switching to view generation");
                }
                publish.send_if_modified(|held| {
                    let changed = *held != next;
                    *held = next.clone();
                    changed
                });
                if publish.is_closed() {
                    return;
                }
            }
        });
        Ok(Self(current))
    }

    pub fn get(&self) -> Generation {
        self.0.borrow().clone()
    }

    /// Resolves when the generation changes.
    pub async fn changed(&mut self) -> Generation {
        if self.0.changed().await.is_err() {
            // The poller is gone (fixed): never changes.
            std::future::pending::<()>().await;
        }
        self.0.borrow_and_update().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_derive_from_the_id() {
        let generation = Generation("g19aac3f2e10".into());
        assert_eq!(generation.database("devconnect"), "devconnect_g19aac3f2e10");
        assert_eq!(generation.consumer_group("devconnect-projector"), "devconnect-projector.g19aac3f2e10");
        let keys = generation.redis_keys(&RedisKeys::new("prod:"));
        assert_eq!(keys.user("u1"), "prod:g19aac3f2e10:user:u1");
        assert_eq!(keys.view_pattern(), "prod:g19aac3f2e10:*");
        // Live streams and rate limits are not views: outside generations.
        assert_eq!(keys.user_stream("u1"), "prod:stream:u1");
        assert_eq!(keys.ratelimit("a", "login"), "prod:ratelimit:a:login");
    }

    #[test]
    fn fresh_ids_sort_by_creation() {
        let first = Generation::fresh();
        std::thread::sleep(Duration::from_millis(2));
        let second = Generation::fresh();
        assert!(first.id() < second.id(), "{first} {second}");
    }
}
