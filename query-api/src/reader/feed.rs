//! The feed: every user but the viewer and those they are related to,
//! newest first, paged. The order comes from the feed directory in Redis
//! (rebuilt from MongoDB when it is missing), the profiles by id.

use std::time::Instant;

use futures::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};

use super::{ReadError, ViewReader};
use views::{UserDoc, collections};

/// One round trip for a feed page's ids: checks that the directory and
/// the viewer's `related:` set are complete, finds each excluded member's
/// rank, and returns the window that holds the page once they are skipped.
/// Replies `{"ok", ids...}`, or `{"no-directory"}` / `{"no-related"}`.
/// KEYS: directory, related set. ARGV: first rank of the page (as if
/// nobody were excluded), page size, directory marker, related marker,
/// viewer.
const FEED_PAGE: &str = r"
if not redis.call('ZSCORE', KEYS[1], ARGV[3]) then return {'no-directory'} end
if redis.call('SISMEMBER', KEYS[2], ARGV[4]) == 0 then return {'no-related'} end
local excluded = redis.call('SMEMBERS', KEYS[2])
table.insert(excluded, ARGV[5])
local skip = {}
local ranks = {}
for _, id in ipairs(excluded) do
  skip[id] = true
  local rank = redis.call('ZREVRANK', KEYS[1], id)
  if rank then table.insert(ranks, rank) end
end
table.sort(ranks)
local start = tonumber(ARGV[1])
for _, rank in ipairs(ranks) do
  if rank <= start then start = start + 1 end
end
local window = redis.call('ZREVRANGE', KEYS[1], start, start + tonumber(ARGV[2]) + #ranks - 1)
local reply = {'ok'}
for _, id in ipairs(window) do
  if not skip[id] then table.insert(reply, id) end
end
return reply
";

/// What the directory said about a page.
enum DirectoryPage {
    Ids(Vec<String>),
    /// The directory is not complete: rebuilding it, read MongoDB.
    NoDirectory,
    /// The viewer's `related:` set is not filled yet.
    NoRelated,
}

impl ViewReader {
    /// A page of people the viewer has no request with in either direction,
    /// newest first: the viewer's `related:` set says whom to exclude, the
    /// feed directory gives the order (both in Redis, one script), and
    /// profiles come by id. A `related:` set not filled yet is filled from
    /// the `relations` document; while the directory is missing (a cache
    /// loss) this falls back to one MongoDB query, slow at scale, and
    /// rebuilds it.
    pub async fn feed(&self, viewer: &str, page: u64, limit: u64) -> Result<Vec<UserDoc>, ReadError> {
        if self.cache.usable() {
            for _ in 0..2 {
                match self.page_from_directory(viewer, page, limit).await {
                    Ok(DirectoryPage::Ids(ids)) => {
                        metrics::counter!("feed_reads_total", "path" => "directory").increment(1);
                        return self.users_by_id(&ids).await;
                    }
                    Ok(DirectoryPage::NoRelated) => {
                        self.related(viewer).await?;
                    }
                    Ok(DirectoryPage::NoDirectory) => {
                        self.spawn_directory_rebuild();
                        break;
                    }
                    Err(err) => {
                        self.cache.failed(&err);
                        break;
                    }
                }
            }
        }
        let mut excluded = self.related(viewer).await?;
        excluded.insert(viewer.to_owned());
        metrics::counter!("feed_reads_total", "path" => "mongo").increment(1);
        self.feed_from_mongo(excluded, page, limit).await
    }

    /// The ids of feed page `page`, exactly as `feed_from_mongo` would
    /// order them, when the directory and the viewer's set are complete.
    async fn page_from_directory(&self, viewer: &str, page: u64, limit: u64) -> redis::RedisResult<DirectoryPage> {
        let mut redis = self.redis.clone();
        static SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| redis::Script::new(FEED_PAGE));
        let reply: Vec<String> = SCRIPT
            .key(self.keys.feed_directory())
            .key(self.keys.related(viewer))
            .arg((page - 1) * limit)
            .arg(limit)
            .arg(views::keys::FEED_DIRECTORY_COMPLETE)
            .arg(views::keys::RELATED_COMPLETE)
            .arg(viewer)
            .invoke_async(&mut redis)
            .await?;
        let mut reply = reply.into_iter();
        Ok(match reply.next().as_deref() {
            Some("ok") => DirectoryPage::Ids(
                reply.filter(|id| id != views::keys::FEED_DIRECTORY_COMPLETE).take(limit as usize).collect(),
            ),
            Some("no-related") => DirectoryPage::NoRelated,
            _ => DirectoryPage::NoDirectory,
        })
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
