//! Reads the views: Redis first, MongoDB second, refilling Redis on a miss
//! with a versioned write (never older than what is cached).

use std::time::{Duration, Instant};

use futures::TryStreamExt;
use mongodb::bson::Bson;
use mongodb::bson::doc;
use mongodb::{Client, Database};
use redis::aio::ConnectionManager;
use serde::Serialize;
use serde::de::DeserializeOwned;
use views::keys::RedisKeys;
use views::{CheckpointDoc, ConnectionRequestDoc, ConsistencyToken, RelationsDoc, SessionDoc, UserDoc, collections};

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

#[derive(Clone)]
pub struct ViewReader {
    client: Client,
    db: Database,
    redis: ConnectionManager,
    keys: RedisKeys,
}

impl std::fmt::Debug for ViewReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewReader").field("db", &self.db.name()).finish_non_exhaustive()
    }
}

impl ViewReader {
    pub fn new(client: Client, database: &str, redis: ConnectionManager, keys: RedisKeys) -> Self {
        let db = client.database(database);
        Self { client, db, redis, keys }
    }

    pub async fn mongo_reachable(&self) -> bool {
        platform::mongo::ping(&self.client).await
    }

    pub async fn redis_reachable(&self) -> bool {
        let mut redis = self.redis.clone();
        redis::cmd("PING").query_async::<String>(&mut redis).await.is_ok()
    }

    /// A cache hit, or `None` on a miss or when Redis is down (a cache
    /// outage degrades to MongoDB reads, it does not fail them).
    async fn cached<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        let mut redis = self.redis.clone();
        match redis::cmd("GET").arg(key).query_async::<Option<String>>(&mut redis).await {
            Ok(Some(json)) => {
                let value = serde_json::from_str(&json).ok();
                metrics::counter!("cache_reads_total", "result" => if value.is_some() { "hit" } else { "corrupt" })
                    .increment(1);
                value
            }
            Ok(None) => {
                metrics::counter!("cache_reads_total", "result" => "miss").increment(1);
                None
            }
            Err(err) => {
                metrics::counter!("cache_reads_total", "result" => "error").increment(1);
                tracing::warn!(error = %err, "redis read failed; reading MongoDB");
                None
            }
        }
    }

    async fn refill<T: Serialize>(&self, key: &str, version: u64, value: &T, ttl: Duration) {
        let json = serde_json::to_string(value).unwrap_or_default();
        let mut pipe = redis::pipe();
        views::cache::pipe_set_if_newer(&mut pipe, key, version, &json, ttl);
        let mut redis = self.redis.clone();
        if let Err(err) = pipe.query_async::<()>(&mut redis).await {
            tracing::warn!(error = %err, key, "cache refill failed");
        }
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
            self.refill(&key, user.version, user, views::ttl::USER).await;
        }
        Ok(user)
    }

    pub async fn session(&self, session_id: &str) -> Result<Option<SessionDoc>, ReadError> {
        let key = self.keys.session(session_id);
        if let Some(session) = self.cached::<SessionDoc>(&key).await {
            return Ok(Some(session));
        }
        let session =
            self.db.collection::<SessionDoc>(collections::SESSIONS).find_one(doc! { "_id": session_id }).await?;
        if let Some(s) = &session
            && let Ok(ttl) = (s.expires_at - chrono::Utc::now()).to_std()
        {
            self.refill(&key, s.version, s, ttl).await;
        }
        Ok(session)
    }

    async fn relations(&self, user_id: &str) -> Result<RelationsDoc, ReadError> {
        let found =
            self.db.collection::<RelationsDoc>(collections::RELATIONS).find_one(doc! { "_id": user_id }).await?;
        Ok(found.unwrap_or_default())
    }

    /// Users by id, in the order of `ids`, skipping any not projected yet.
    pub async fn users_by_id(&self, ids: &[String]) -> Result<Vec<UserDoc>, ReadError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let wanted: Vec<Bson> = ids.iter().map(|id| Bson::String(id.clone())).collect();
        let found: Vec<UserDoc> = self
            .db
            .collection::<UserDoc>(collections::USERS)
            .find(doc! { "_id": { "$in": wanted } })
            .await?
            .try_collect()
            .await?;
        let mut by_id: std::collections::HashMap<String, UserDoc> =
            found.into_iter().map(|u| (u.user_id.clone(), u)).collect();
        Ok(ids.iter().filter_map(|id| by_id.remove(id)).collect())
    }

    /// A page of people the viewer has no request with in either direction,
    /// newest first. Two reads at any size: the viewer's relations document
    /// (its `related` set is what to exclude) and one `_id`-ordered query.
    pub async fn feed(&self, viewer: &str, page: u64, limit: u64) -> Result<Vec<UserDoc>, ReadError> {
        let relations = self.relations(viewer).await?;
        let mut excluded: Vec<Bson> = relations.related.into_iter().map(Bson::String).collect();
        excluded.push(Bson::String(viewer.to_owned()));
        let users = self
            .db
            .collection::<UserDoc>(collections::USERS)
            .find(doc! { "_id": { "$nin": excluded } })
            .sort(doc! { "_id": -1 })
            .skip((page - 1) * limit)
            .limit(limit as i64)
            .await?
            .try_collect()
            .await?;
        Ok(users)
    }

    pub async fn connections(&self, viewer: &str) -> Result<Vec<UserDoc>, ReadError> {
        let relations = self.relations(viewer).await?;
        self.users_by_id(&relations.connections).await
    }

    /// Pending `interested` requests to the viewer, newest first.
    pub async fn requests_received(&self, viewer: &str) -> Result<Vec<ConnectionRequestDoc>, ReadError> {
        let requests = self
            .db
            .collection::<ConnectionRequestDoc>(collections::CONNECTION_REQUESTS)
            .find(doc! { "toUserId": viewer, "status": "interested" })
            .sort(doc! { "createdAt": -1 })
            .await?
            .try_collect()
            .await?;
        Ok(requests)
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
