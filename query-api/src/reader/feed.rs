//! The feed: every user but the viewer and those they are related to,
//! newest first, paged. The order comes from the feed directory in Redis
//! (rebuilt from MongoDB when it is missing), the profiles by id.

use std::time::Instant;

use futures::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};

use super::{ReadError, ViewReader};
use views::{UserDoc, collections};

impl ViewReader {
    /// A page of people the viewer has no request with in either direction,
    /// newest first: the viewer's `relations` document says whom to
    /// exclude, the feed directory in Redis gives the order, and profiles
    /// come by id. While the directory is missing (a cache loss) this falls
    /// back to one MongoDB query, slow at scale, and rebuilds it.
    pub async fn feed(&self, viewer: &str, page: u64, limit: u64) -> Result<Vec<UserDoc>, ReadError> {
        let relations = self.relations(viewer).await?;
        let mut excluded: std::collections::HashSet<String> = relations.related.into_iter().collect();
        excluded.insert(viewer.to_owned());
        if !self.cache.usable() {
            metrics::counter!("feed_reads_total", "path" => "mongo").increment(1);
            return self.feed_from_mongo(excluded, page, limit).await;
        }
        match self.feed_ids_from_directory(&excluded, page, limit).await {
            Ok(Some(ids)) => {
                metrics::counter!("feed_reads_total", "path" => "directory").increment(1);
                self.users_by_id(&ids).await
            }
            Ok(None) => {
                metrics::counter!("feed_reads_total", "path" => "mongo").increment(1);
                self.feed_from_mongo(excluded, page, limit).await
            }
            Err(err) => {
                self.cache.failed(&err);
                metrics::counter!("feed_reads_total", "path" => "mongo").increment(1);
                self.feed_from_mongo(excluded, page, limit).await
            }
        }
    }

    /// The ids of feed page `page`, exactly as `feed_from_mongo` would
    /// order them, or `None` when the directory is not complete.
    pub(super) async fn feed_ids_from_directory(
        &self,
        excluded: &std::collections::HashSet<String>,
        page: u64,
        limit: u64,
    ) -> Result<Option<Vec<String>>, redis::RedisError> {
        let mut redis = self.redis.clone();
        let directory = self.keys.feed_directory();
        let complete: Option<f64> = redis::cmd("ZSCORE")
            .arg(&directory)
            .arg(views::keys::FEED_DIRECTORY_COMPLETE)
            .query_async(&mut redis)
            .await?;
        if complete.is_none() {
            self.spawn_directory_rebuild();
            return Ok(None);
        }
        let mut ranks_of = redis::pipe();
        for id in excluded {
            ranks_of.cmd("ZREVRANK").arg(&directory).arg(id);
        }
        let ranks: Vec<Option<u64>> = ranks_of.query_async(&mut redis).await?;
        let mut ranks: Vec<u64> = ranks.into_iter().flatten().collect();
        ranks.sort_unstable();
        // The rank of the page's first entry once excluded members are
        // skipped: each excluded member at or before it pushes it one on.
        let mut start = (page - 1) * limit;
        for rank in &ranks {
            if *rank <= start {
                start += 1;
            }
        }
        let stop = start + limit + ranks.len() as u64 - 1;
        let window: Vec<String> =
            redis::cmd("ZREVRANGE").arg(&directory).arg(start).arg(stop).query_async(&mut redis).await?;
        Ok(Some(
            window
                .into_iter()
                .filter(|id| id != views::keys::FEED_DIRECTORY_COMPLETE && !excluded.contains(id))
                .take(limit as usize)
                .collect(),
        ))
    }

    pub(super) async fn feed_from_mongo(
        &self,
        excluded: std::collections::HashSet<String>,
        page: u64,
        limit: u64,
    ) -> Result<Vec<UserDoc>, ReadError> {
        let excluded: Vec<Bson> = excluded.into_iter().map(Bson::String).collect();
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

    /// At start: if the feed directory is not complete (first deploy, cache
    /// loss while down), rebuild it now rather than on the first feed read.
    pub(super) fn prepare_feed_directory_in_background(&self) {
        let reader = self.clone();
        tokio::spawn(async move { reader.prepare_feed_directory().await });
    }

    pub async fn prepare_feed_directory(&self) {
        let mut redis = self.redis.clone();
        let complete: Result<Option<f64>, _> = redis::cmd("ZSCORE")
            .arg(self.keys.feed_directory())
            .arg(views::keys::FEED_DIRECTORY_COMPLETE)
            .query_async(&mut redis)
            .await;
        if !matches!(complete, Ok(Some(_))) {
            self.spawn_directory_rebuild();
        }
    }

    pub(super) fn spawn_directory_rebuild(&self) {
        let reader = self.clone();
        tokio::spawn(async move {
            if let Err(err) = reader.rebuild_directory().await {
                tracing::warn!(error = %err, "rebuilding the feed directory failed; the next feed read retries");
            }
        });
    }

    /// Refills the feed directory from the `users` collection: one scan,
    /// once, by whoever takes the lock. The projector's own ZADDs during the
    /// scan merge in, as ZADD only ever adds.
    pub(super) async fn rebuild_directory(&self) -> anyhow::Result<()> {
        let mut redis = self.redis.clone();
        let lock = self.keys.feed_directory_rebuilding();
        let taken: Option<String> =
            redis::cmd("SET").arg(&lock).arg(1).arg("NX").arg("EX").arg(300).query_async(&mut redis).await?;
        if taken.is_none() {
            return Ok(());
        }
        let started = Instant::now();
        let directory = self.keys.feed_directory();
        let mut ids =
            self.db.collection::<Document>(collections::USERS).find(doc! {}).projection(doc! { "_id": 1 }).await?;
        let (mut chunk, mut total) = (Vec::with_capacity(1000), 0usize);
        while let Some(d) = ids.try_next().await? {
            if let Ok(id) = d.get_str("_id") {
                chunk.push((0, id.to_owned()));
            }
            if chunk.len() == 1000 {
                total += chunk.len();
                redis::cmd("ZADD").arg(&directory).arg(&chunk).query_async::<()>(&mut redis).await?;
                chunk.clear();
            }
        }
        if !chunk.is_empty() {
            total += chunk.len();
            redis::cmd("ZADD").arg(&directory).arg(&chunk).query_async::<()>(&mut redis).await?;
        }
        redis::pipe()
            .zadd(&directory, views::keys::FEED_DIRECTORY_COMPLETE, -1)
            .ignore()
            .del(&lock)
            .ignore()
            .query_async::<()>(&mut redis)
            .await?;
        tracing::info!(
            users = total,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "feed directory rebuilt from MongoDB"
        );
        Ok(())
    }
}
