//! Reads the views: Redis first, MongoDB second, refilling Redis on a miss
//! with a versioned write (never older than what is cached).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use mongodb::bson::Bson;
use mongodb::bson::{Document, doc};
use mongodb::{Client, Database};
use redis::aio::ConnectionManager;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cursor::Cursor;

mod feed;
mod session;
pub use session::{CallerLookup, RateHit};
use views::cache::{CachedSet, Expiry};
use views::documents::sortable_time;
use views::generation::{CurrentGeneration, Generation};
use views::keys::RedisKeys;
use views::{
    CheckpointDoc, ConnectionDoc, ConnectionRequestDoc, ConsistencyToken, ConversationCache, DailyStatsDoc, MessageDoc,
    NotificationCounterDoc, NotificationDoc, PresenceDoc, RelationsDoc, SessionDoc, UserDoc, collections,
};

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("mongodb: {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error("the views did not reach the requested position within {0:?}")]
    ConsistencyTimeout(Duration),
}

/// Where a read may come from: a read-your-writes read skips the cache, as
/// the projector updates Redis just after the MongoDB transaction it waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    CacheFirst,
    Durable,
}

/// Remembers a Redis failure for a second: reads during an outage then go
/// straight to MongoDB instead of each waiting for Redis to time out, and
/// the outage is logged when it starts and when it ends, not per request.
#[derive(Debug, Clone, Default)]
struct CacheHealth {
    skip_until_ms: Arc<AtomicI64>,
    down: Arc<AtomicBool>,
}

const CACHE_RETRY_AFTER_MS: i64 = 1000;

impl CacheHealth {
    fn usable(&self) -> bool {
        chrono::Utc::now().timestamp_millis() >= self.skip_until_ms.load(Ordering::Relaxed)
    }

    fn failed(&self, err: &redis::RedisError) {
        self.skip_until_ms.store(chrono::Utc::now().timestamp_millis() + CACHE_RETRY_AFTER_MS, Ordering::Relaxed);
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %err, "redis unavailable; reading MongoDB until it answers");
        }
        metrics::counter!("cache_failures_total").increment(1);
    }

    fn answered(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            tracing::info!("redis answers again");
        }
    }

    /// The result of a Redis call, with the failure remembered.
    fn observe<T>(&self, result: redis::RedisResult<T>) -> Option<T> {
        match result {
            Ok(value) => {
                self.answered();
                Some(value)
            }
            Err(err) => {
                self.failed(&err);
                None
            }
        }
    }
}

/// Hands out a reader for the view generation currently in use. A request
/// takes one reader and keeps it, so all its reads come from one
/// generation, and every generation readers are pointed at is complete.
#[derive(Clone)]
pub struct ViewSource {
    client: Client,
    base_database: String,
    redis: ConnectionManager,
    base_keys: RedisKeys,
    current: CurrentGeneration,
    reader: Arc<RwLock<Option<ViewReader>>>,
    cache: CacheHealth,
}

impl std::fmt::Debug for ViewSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewSource").field("generation", &self.current.get()).finish_non_exhaustive()
    }
}

impl ViewSource {
    pub fn new(
        client: Client,
        base_database: &str,
        redis: ConnectionManager,
        base_keys: RedisKeys,
        current: CurrentGeneration,
    ) -> Self {
        let base_database = base_database.to_owned();
        Self { client, base_database, redis, base_keys, current, reader: Arc::default(), cache: CacheHealth::default() }
    }

    /// The reader of the current generation.
    pub fn reader(&self) -> ViewReader {
        let generation = self.current.get();
        if let Some(reader) = self.reader.read().unwrap_or_else(PoisonError::into_inner).as_ref()
            && reader.generation == generation
        {
            return reader.clone();
        }
        let reader = ViewReader {
            db: self.client.database(&generation.database(&self.base_database)),
            client: self.client.clone(),
            redis: self.redis.clone(),
            keys: generation.redis_keys(&self.base_keys),
            generation,
            cache: self.cache.clone(),
        };
        let mut held = self.reader.write().unwrap_or_else(PoisonError::into_inner);
        if held.as_ref().is_none_or(|r| r.generation != reader.generation) {
            tracing::info!(generation = %reader.generation, "reading view generation");
            metrics::counter!("view_generation_switches_total").increment(1);
            reader.prepare_feed_directory_in_background();
            *held = Some(reader.clone());
        }
        reader
    }
}

/// The fields a newest-first list is ordered by: a time stored as
/// `sortable_time`, then an id.
#[derive(Debug, Clone, Copy)]
struct Order {
    time: &'static str,
    id: &'static str,
}

#[derive(Clone)]
pub struct ViewReader {
    client: Client,
    db: Database,
    redis: ConnectionManager,
    /// This generation's cache keys (and the deployment-wide ones).
    keys: RedisKeys,
    generation: Generation,
    cache: CacheHealth,
}

impl std::fmt::Debug for ViewReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewReader").field("db", &self.db.name()).finish_non_exhaustive()
    }
}

impl ViewReader {
    pub async fn mongo_reachable(&self) -> bool {
        platform::mongo::ping(&self.client).await
    }

    /// The id of the newest entry of a live-stream key ("0-0" when empty).
    pub async fn newest_stream_entry(&self, key: &str) -> redis::RedisResult<String> {
        let mut redis = self.redis.clone();
        let newest: Vec<(String, Vec<(String, String)>)> =
            redis::cmd("XREVRANGE").arg(key).arg("+").arg("-").arg("COUNT").arg(1).query_async(&mut redis).await?;
        Ok(newest.into_iter().next().map_or_else(|| "0-0".to_owned(), |(id, _)| id))
    }

    pub async fn redis_reachable(&self) -> bool {
        let mut redis = self.redis.clone();
        redis::cmd("PING").query_async::<String>(&mut redis).await.is_ok()
    }

    /// A cache hit, or `None` on a miss or when Redis is down (a cache
    /// outage degrades to MongoDB reads, it does not fail them).
    async fn cached<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        if !self.cache.usable() {
            metrics::counter!("cache_reads_total", "result" => "skipped").increment(1);
            return None;
        }
        let mut redis = self.redis.clone();
        let read = redis::cmd("GET").arg(key).query_async::<Option<String>>(&mut redis).await;
        match self.cache.observe(read) {
            Some(Some(json)) => {
                let value = serde_json::from_str(&json).ok();
                metrics::counter!("cache_reads_total", "result" => if value.is_some() { "hit" } else { "corrupt" })
                    .increment(1);
                value
            }
            Some(None) => {
                metrics::counter!("cache_reads_total", "result" => "miss").increment(1);
                None
            }
            None => {
                metrics::counter!("cache_reads_total", "result" => "error").increment(1);
                None
            }
        }
    }

    async fn refill<T: Serialize>(&self, key: &str, version: u64, value: &T, expiry: Expiry) {
        if !self.cache.usable() {
            return;
        }
        let json = serde_json::to_string(value).unwrap_or_default();
        let mut pipe = redis::pipe();
        views::cache::pipe_set_if_newer(&mut pipe, key, version, &json, expiry);
        self.write_cache(&pipe).await;
    }

    /// Sends cache writes, remembering a Redis failure (`CacheHealth`).
    async fn write_cache(&self, pipe: &redis::Pipeline) {
        let mut redis = self.redis.clone();
        self.cache.observe(pipe.query_async::<()>(&mut redis).await);
    }

    pub async fn user(&self, user_id: &str, freshness: Freshness) -> Result<Option<UserDoc>, ReadError> {
        let key = self.keys.user(user_id);
        if freshness == Freshness::CacheFirst
            && let Some(user) = self.cached::<UserDoc>(&key).await
        {
            return Ok(Some(user));
        }
        let user = self.db.collection::<UserDoc>(collections::USERS).find_one(doc! { "_id": user_id }).await?;
        if let Some(user) = &user {
            self.refill(&key, user.version, user, Expiry::Never).await;
        }
        Ok(user)
    }

    /// Everyone the user has a request with, either direction: the
    /// `related:` set, or, until it is filled, the `relations` document
    /// (which then fills it).
    async fn related(&self, user_id: &str) -> Result<std::collections::HashSet<String>, ReadError> {
        let key = self.keys.related(user_id);
        if self.cache.usable() {
            let mut redis = self.redis.clone();
            let cached = redis::cmd("SMEMBERS").arg(&key).query_async::<Vec<String>>(&mut redis).await;
            if let Some(mut members) = self.cache.observe(cached)
                && members.iter().any(|m| m == views::keys::RELATED_COMPLETE)
            {
                members.retain(|m| m != views::keys::RELATED_COMPLETE);
                return Ok(members.into_iter().collect());
            }
        }
        let relations =
            self.db.collection::<RelationsDoc>(collections::RELATIONS).find_one(doc! { "_id": user_id }).await?;
        let related = relations.map(|r| r.related).unwrap_or_default();
        self.fill(&key, CachedSet::Set, &related, views::keys::RELATED_COMPLETE).await;
        Ok(related.into_iter().collect())
    }

    /// Fills an add-only cached set from what MongoDB held (`pipe_fill`).
    async fn fill(&self, key: &str, kind: CachedSet, members: &[String], complete: &str) {
        if !self.cache.usable() {
            return;
        }
        let mut pipe = redis::pipe();
        views::cache::pipe_fill(&mut pipe, key, kind, members, complete);
        self.write_cache(&pipe).await;
    }

    /// Users by id, in the order of `ids`, skipping any not projected yet:
    /// Redis first (one MGET), MongoDB for the misses (one `$in`).
    pub async fn users_by_id(&self, ids: &[String]) -> Result<Vec<UserDoc>, ReadError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.keys.user(id)).collect();
        let mut redis = self.redis.clone();
        let cached: Vec<Option<String>> = if self.cache.usable() {
            self.cache.observe(redis::cmd("MGET").arg(&keys).query_async(&mut redis).await).unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut by_id: std::collections::HashMap<String, UserDoc> = cached
            .into_iter()
            .flatten()
            .filter_map(|json| serde_json::from_str::<UserDoc>(&json).ok())
            .map(|u| (u.user_id.clone(), u))
            .collect();
        let missing: Vec<String> = ids.iter().filter(|id| !by_id.contains_key(*id)).cloned().collect();
        for user in self.users_from_mongo(&missing).await? {
            self.refill(&self.keys.user(&user.user_id), user.version, &user, Expiry::Never).await;
            by_id.insert(user.user_id.clone(), user);
        }
        Ok(ids.iter().filter_map(|id| by_id.remove(id)).collect())
    }

    async fn users_from_mongo(&self, ids: &[String]) -> Result<Vec<UserDoc>, ReadError> {
        Ok(platform::mongo::find_by_ids(&self.db.collection::<UserDoc>(collections::USERS), ids).await?)
    }

    /// A page of the viewer's connections, newest first (`connectedAt`,
    /// then `requestId`), after `before`: at most `limit` + 1, the extra
    /// one saying that another page exists. From the `connections:` list
    /// in Redis, which orders its members exactly as the collection's
    /// index does; until that list is filled (or for a read-your-writes
    /// read), from MongoDB, which then fills it.
    pub async fn connections(
        &self,
        viewer: &str,
        before: Option<&Cursor>,
        limit: usize,
        freshness: Freshness,
    ) -> Result<Vec<ConnectionDoc>, ReadError> {
        if freshness == Freshness::CacheFirst
            && let Some(page) = self.cached_connections(viewer, before, limit + 1).await
        {
            metrics::counter!("connection_reads_total", "path" => "redis").increment(1);
            return Ok(page);
        }
        metrics::counter!("connection_reads_total", "path" => "mongo").increment(1);
        let order = Order { time: "connectedAt", id: "requestId" };
        let page =
            self.newest_first(collections::CONNECTIONS, doc! { "userId": viewer }, order, before, limit + 1).await?;
        if freshness == Freshness::CacheFirst {
            let all: Vec<ConnectionDoc> = self
                .db
                .collection::<ConnectionDoc>(collections::CONNECTIONS)
                .find(doc! { "userId": viewer })
                .await?
                .try_collect()
                .await?;
            let members: Vec<String> = all.iter().map(ConnectionDoc::cache_member).collect();
            let key = self.keys.connections(viewer);
            self.fill(&key, CachedSet::Ordered, &members, views::keys::CONNECTIONS_COMPLETE).await;
        }
        Ok(page)
    }

    /// `count` connections after `before` from the cached list, or `None`
    /// when it is not filled (or Redis is unusable). One round trip: the
    /// completeness marker and the page.
    async fn cached_connections(
        &self,
        viewer: &str,
        before: Option<&Cursor>,
        count: usize,
    ) -> Option<Vec<ConnectionDoc>> {
        if !self.cache.usable() {
            return None;
        }
        let key = self.keys.connections(viewer);
        let below = before.map_or_else(
            || "+".to_owned(),
            |cursor| format!("({}", ConnectionDoc::cache_position(&cursor.at, &cursor.id)),
        );
        let mut read = redis::pipe();
        read.zscore(&key, views::keys::CONNECTIONS_COMPLETE);
        read.cmd("ZREVRANGEBYLEX").arg(&key).arg(below).arg("-").arg("LIMIT").arg(0).arg(count);
        let mut redis = self.redis.clone();
        let (complete, members): (Option<f64>, Vec<String>) = self.cache.observe(read.query_async(&mut redis).await)?;
        complete?;
        Some(members.iter().filter_map(|member| ConnectionDoc::from_cache_member(viewer, member)).collect())
    }

    /// A page of the pending `interested` requests to the viewer, newest
    /// first (`createdAt`, then the request id), after `before`: at most
    /// `limit` + 1, as `connections`.
    pub async fn requests_received(
        &self,
        viewer: &str,
        before: Option<&Cursor>,
        limit: usize,
    ) -> Result<Vec<ConnectionRequestDoc>, ReadError> {
        let order = Order { time: "createdAt", id: "_id" };
        let filter = doc! { "toUserId": viewer, "status": "interested" };
        self.newest_first(collections::CONNECTION_REQUESTS, filter, order, before, limit + 1).await
    }

    /// The first `count` documents matching `filter` in `order`, newest
    /// first, strictly after `before`. "After (t, id)" is "time < t, or
    /// time = t and id < id": two queries (the same instant, then older),
    /// each an index prefix plus one range, rather than an `$or` that
    /// SecantusDB answers by scanning the collection. The first is almost
    /// always empty, but the order must not skip what it finds.
    async fn newest_first<T>(
        &self,
        collection: &str,
        filter: Document,
        order: Order,
        before: Option<&Cursor>,
        count: usize,
    ) -> Result<Vec<T>, ReadError>
    where
        T: DeserializeOwned + Send + Sync,
    {
        let collection = self.db.collection::<T>(collection);
        let sort = doc! { order.time: -1, order.id: -1 };
        let mut found = Vec::new();
        let mut older = filter.clone();
        if let Some(cursor) = before {
            let at = sortable_time::format(&cursor.at);
            let mut same_instant = filter;
            same_instant.insert(order.time, &at);
            same_instant.insert(order.id, doc! { "$lt": &cursor.id });
            found = collection.find(same_instant).sort(sort.clone()).limit(count as i64).await?.try_collect().await?;
            older.insert(order.time, doc! { "$lt": at });
        }
        if found.len() < count {
            let rest: Vec<T> =
                collection.find(older).sort(sort).limit((count - found.len()) as i64).await?.try_collect().await?;
            found.extend(rest);
        }
        Ok(found)
    }

    pub async fn presence(&self, user_id: &str, freshness: Freshness) -> Result<Option<PresenceDoc>, ReadError> {
        let key = self.keys.presence(user_id);
        if freshness == Freshness::CacheFirst
            && let Some(presence) = self.cached::<PresenceDoc>(&key).await
        {
            return Ok(Some(presence));
        }
        let presence =
            self.db.collection::<PresenceDoc>(collections::PRESENCE).find_one(doc! { "_id": user_id }).await?;
        if let Some(p) = &presence {
            self.refill(&key, p.version, p, Expiry::After(views::ttl::PRESENCE)).await;
        }
        Ok(presence)
    }

    /// The user's newest notifications (at most `limit`), and the unread count.
    pub async fn notifications(
        &self,
        user_id: &str,
        unread_only: bool,
        limit: i64,
    ) -> Result<(Vec<NotificationDoc>, i64), ReadError> {
        let mut filter = doc! { "userId": user_id };
        if unread_only {
            filter.insert("readAt", Bson::Null);
        }
        let items: Vec<NotificationDoc> = self
            .db
            .collection::<NotificationDoc>(collections::NOTIFICATIONS)
            .find(filter)
            .sort(doc! { "_id": -1 })
            .limit(limit)
            .await?
            .try_collect()
            .await?;
        let counter = self
            .db
            .collection::<NotificationCounterDoc>(collections::NOTIFICATION_COUNTERS)
            .find_one(doc! { "_id": user_id })
            .await?;
        Ok((items, counter.map_or(0, |c| c.unread)))
    }

    /// The counts of the days in `ids` (YYYY-MM-DD) that have any.
    pub async fn daily_stats(&self, days: &[String]) -> Result<Vec<DailyStatsDoc>, ReadError> {
        Ok(platform::mongo::find_by_ids(&self.db.collection::<DailyStatsDoc>(collections::DAILY_STATS), days).await?)
    }

    /// A page of a conversation, newest first, older than `before` when
    /// given. The newest 50 come from `messages:<a>:<b>` (refilled from
    /// MongoDB on a miss); a page reaching past them comes from MongoDB.
    pub async fn history(
        &self,
        pair: &str,
        before: Option<&str>,
        limit: usize,
        freshness: Freshness,
    ) -> Result<Vec<MessageDoc>, ReadError> {
        let key = self.keys.conversation(pair);
        let cached = match freshness {
            Freshness::CacheFirst => self.cached::<ConversationCache>(&key).await,
            Freshness::Durable => None,
        };
        let cached = match cached {
            Some(cache) => cache,
            None => {
                let newest = self.messages_before(pair, None, views::CACHED_MESSAGES).await?;
                let cache = ConversationCache::new(newest);
                self.refill(&key, cache.version, &cache, Expiry::After(views::ttl::CONVERSATION)).await;
                cache
            }
        };
        let start = match before {
            None => Some(0),
            Some(b) => cached.items.iter().position(|m| m.message_id == b).map(|i| i + 1),
        };
        if let Some(start) = start {
            let page: Vec<MessageDoc> = cached.items.iter().skip(start).take(limit).cloned().collect();
            let whole_conversation = cached.items.len() < views::CACHED_MESSAGES;
            if page.len() == limit || whole_conversation {
                metrics::counter!("history_reads_total", "path" => "redis").increment(1);
                return Ok(page);
            }
        }
        metrics::counter!("history_reads_total", "path" => "mongo").increment(1);
        self.messages_before(pair, before, limit).await
    }

    async fn messages_before(
        &self,
        pair: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<MessageDoc>, ReadError> {
        let mut filter = doc! { "pairKey": pair };
        if let Some(before) = before {
            filter.insert("_id", doc! { "$lt": before });
        }
        Ok(self
            .db
            .collection::<MessageDoc>(collections::MESSAGES)
            .find(filter)
            .sort(doc! { "_id": -1 })
            .limit(limit as i64)
            .await?
            .try_collect()
            .await?)
    }

    /// Waits until the views include the write the token points at.
    /// Polls the checkpoint the projector writes in the same transaction as
    /// the views, so "covered" means the views hold it.
    pub async fn wait_for(&self, token: &ConsistencyToken, limit: Duration) -> Result<(), ReadError> {
        let id = CheckpointDoc::id_for(&token.topic, token.partition);
        let checkpoints = self.db.collection::<CheckpointDoc>(collections::CHECKPOINTS);
        let started = Instant::now();
        let mut pause = Duration::from_millis(2);
        loop {
            let covered =
                checkpoints.find_one(doc! { "_id": &id }).await?.is_some_and(|c| c.next_offset > token.offset);
            if covered {
                metrics::histogram!("consistency_wait_seconds").record(started.elapsed().as_secs_f64());
                return Ok(());
            }
            if started.elapsed() >= limit {
                return Err(ReadError::ConsistencyTimeout(limit));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(25));
        }
    }
}
