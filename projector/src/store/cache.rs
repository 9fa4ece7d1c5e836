//! The Redis side of the store: caches refreshed from what a batch wrote
//! (versioned, so an entry never goes back in time), the live-stream
//! entries, the warm-up of a new generation, and the repair of keys whose
//! refresh failed while Redis was away.

use chrono::Utc;
use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use views::cache::Expiry;
use views::{
    ConnectionDoc, ConversationCache, MessageDoc, PresenceDoc, RelationsDoc, SessionDoc, UserDoc, collections,
};

use platform::mongo::find_by_ids;

use super::{Mode, StoreError, ViewStore};
use crate::plan::Plan;

impl ViewStore {
    /// Fills this generation's caches from its MongoDB views, as per-batch
    /// refreshes would have left them: every user (and the feed directory),
    /// every user's relation set and connection list (with their
    /// completeness markers), every live session, every presence, and each
    /// conversation's newest messages. One scan per collection, written in
    /// pipelines of 1000. Also run after Redis lost its data (`verify`).
    pub async fn warm_caches(&self) -> Result<u64, StoreError> {
        let mut written = 0;
        // What the scans below will cover at least, for the refreshed marks.
        let covered = self.checkpoints().await?;
        let mut pipe = redis::pipe();
        // Relations first, each user's completeness marker after: a marker
        // must never stand in a key before the members MongoDB held.
        let mut relations = self.db.collection::<RelationsDoc>(collections::RELATIONS).find(doc! {}).await?;
        while let Some(relations) = relations.try_next().await? {
            for chunk in relations.related.chunks(1000) {
                pipe.cmd("SADD").arg(self.keys.related(&relations.user_id)).arg(chunk).ignore();
                written += self.flush_when_full(&mut pipe).await?;
            }
        }
        let mut connections = self.db.collection::<ConnectionDoc>(collections::CONNECTIONS).find(doc! {}).await?;
        while let Some(connection) = connections.try_next().await? {
            pipe.zadd(self.keys.connections(&connection.user_id), connection.cache_member(), 0).ignore();
            written += self.flush_when_full(&mut pipe).await?;
        }
        let mut users = self.db.collection::<UserDoc>(collections::USERS).find(doc! {}).await?;
        let directory = self.keys.feed_directory();
        while let Some(user) = users.try_next().await? {
            self.cache_user(&mut pipe, &directory, &user);
            pipe.sadd(self.keys.related(&user.user_id), views::keys::RELATED_COMPLETE).ignore();
            pipe.zadd(self.keys.connections(&user.user_id), views::keys::CONNECTIONS_COMPLETE, 0).ignore();
            written += self.flush_when_full(&mut pipe).await?;
        }
        let now = Utc::now();
        let mut sessions = self.db.collection::<SessionDoc>(collections::SESSIONS).find(doc! {}).await?;
        while let Some(session) = sessions.try_next().await? {
            self.cache_session(&mut pipe, &session, now);
            written += self.flush_when_full(&mut pipe).await?;
        }
        let mut presence = self.db.collection::<PresenceDoc>(collections::PRESENCE).find(doc! {}).await?;
        while let Some(doc) = presence.try_next().await? {
            self.cache_presence(&mut pipe, &doc);
            written += self.flush_when_full(&mut pipe).await?;
        }
        // One sorted scan, newest first within each conversation: memory
        // stays at one conversation's newest messages.
        let mut messages = self
            .db
            .collection::<MessageDoc>(collections::MESSAGES)
            .find(doc! {})
            .sort(doc! { "pairKey": 1, "_id": -1 })
            .await?;
        let mut newest: Vec<MessageDoc> = Vec::new();
        loop {
            let next = messages.try_next().await?;
            if next.as_ref().is_none_or(|m| newest.first().is_some_and(|n| n.pair_key != m.pair_key))
                && !newest.is_empty()
            {
                let pair = newest[0].pair_key.clone();
                self.cache_conversation(&mut pipe, &pair, &ConversationCache::new(std::mem::take(&mut newest)));
                written += self.flush_when_full(&mut pipe).await?;
            }
            let Some(message) = next else { break };
            if newest.len() < views::CACHED_MESSAGES {
                newest.push(message);
            }
        }
        // Every user was scanned, and the projector adds each new one as it
        // goes: the directory is complete, and so is every cache.
        pipe.zadd(&directory, views::keys::FEED_DIRECTORY_COMPLETE, -1).ignore();
        for checkpoint in &covered {
            let key = self.keys.refreshed(&checkpoint.topic, checkpoint.partition);
            views::cache::pipe_raise(&mut pipe, &key, checkpoint.next_offset);
        }
        pipe.set(self.keys.caches_filled(), 1).ignore();
        let mut redis = self.redis.clone();
        pipe.query_async::<()>(&mut redis).await?;
        Ok(written + pipe.len() as u64)
    }

    /// Whether this generation's caches are known to be whole: filled once
    /// (`warm_caches`) and not lost since (the marker goes with the data).
    pub async fn caches_filled(&self) -> Result<bool, StoreError> {
        let mut redis = self.redis.clone();
        Ok(redis::cmd("EXISTS").arg(self.keys.caches_filled()).query_async::<bool>(&mut redis).await?)
    }

    /// How far the caches of each of `partitions` were refreshed
    /// (`RedisKeys::refreshed`); `None` where nothing says.
    pub async fn refreshed_positions(&self, partitions: &[(String, i32)]) -> Result<Vec<Option<i64>>, StoreError> {
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> =
            partitions.iter().map(|(topic, partition)| self.keys.refreshed(topic, *partition)).collect();
        let mut redis = self.redis.clone();
        Ok(redis::cmd("MGET").arg(&keys).query_async(&mut redis).await?)
    }

    /// Drops the fill marker, so that the caches count as lost until a
    /// projector has filled them again.
    pub async fn forget_caches_filled(&self) -> Result<(), StoreError> {
        let mut redis = self.redis.clone();
        Ok(redis::cmd("DEL").arg(self.keys.caches_filled()).query_async::<()>(&mut redis).await?)
    }

    /// Redis' `run_id`, which changes on every restart: a restart with
    /// persistence may have lost its last writes and keep the marker.
    pub async fn redis_run_id(&self) -> Result<Option<String>, StoreError> {
        let mut redis = self.redis.clone();
        let info: String = redis::cmd("INFO").arg("server").query_async(&mut redis).await?;
        Ok(info.lines().find_map(|line| line.strip_prefix("run_id:")).map(|id| id.trim().to_owned()))
    }

    /// Fills every cache again unless another projector is doing it now
    /// (a lock that expires, in case that one dies). Returns whether it ran.
    pub async fn refill_caches(&self) -> Result<bool, StoreError> {
        let mut redis = self.redis.clone();
        let lock = self.keys.caches_filling();
        let taken: Option<String> =
            redis::cmd("SET").arg(&lock).arg(1).arg("NX").arg("EX").arg(600).query_async(&mut redis).await?;
        if taken.is_none() {
            return Ok(false);
        }
        let filled = self.warm_caches().await;
        let _: Result<(), _> = redis::cmd("DEL").arg(&lock).query_async(&mut redis).await;
        filled.map(|_| true)
    }

    // What each view looks like in Redis, in one place for the per-batch
    // refresh and the warm-up after a rebuild: versioned sets, so a cache
    // entry never goes back in time.

    /// A user's profile, and their member of the feed directory
    /// (idempotent: score 0, ordered by id).
    pub(super) fn cache_user(&self, pipe: &mut redis::Pipeline, directory: &str, user: &UserDoc) {
        pipe.zadd(directory, &user.user_id, 0).ignore();
        let json = serde_json::to_string(user).unwrap_or_default();
        views::cache::pipe_set_if_newer(pipe, &self.keys.user(&user.user_id), user.version, &json, Expiry::Never);
    }

    /// A session until it expires; false (nothing cached) once it has.
    pub(super) fn cache_session(
        &self,
        pipe: &mut redis::Pipeline,
        session: &SessionDoc,
        now: chrono::DateTime<Utc>,
    ) -> bool {
        let Ok(ttl) = (session.expires_at - now).to_std() else { return false };
        let json = serde_json::to_string(session).unwrap_or_default();
        let key = self.keys.session(&session.session_id);
        views::cache::pipe_set_if_newer(pipe, &key, session.version, &json, Expiry::After(ttl));
        true
    }

    pub(super) fn cache_presence(&self, pipe: &mut redis::Pipeline, presence: &PresenceDoc) {
        let json = serde_json::to_string(presence).unwrap_or_default();
        let key = self.keys.presence(&presence.user_id);
        views::cache::pipe_set_if_newer(pipe, &key, presence.version, &json, Expiry::After(views::ttl::PRESENCE));
    }

    pub(super) fn cache_conversation(&self, pipe: &mut redis::Pipeline, pair: &str, cache: &ConversationCache) {
        let json = serde_json::to_string(cache).unwrap_or_default();
        let key = self.keys.conversation(pair);
        views::cache::pipe_set_if_newer(pipe, &key, cache.version, &json, Expiry::After(views::ttl::CONVERSATION));
    }

    /// Sends the pipeline once it holds 1000 commands; returns how many it sent.
    pub(super) async fn flush_when_full(&self, pipe: &mut redis::Pipeline) -> Result<u64, StoreError> {
        if pipe.len() < 1000 {
            return Ok(0);
        }
        let mut redis = self.redis.clone();
        pipe.query_async::<()>(&mut redis).await?;
        let sent = pipe.len() as u64;
        pipe.clear();
        Ok(sent)
    }

    /// Whether this store refreshes caches per batch (not while rebuilding).
    pub fn refreshes_caches(&self) -> bool {
        self.mode == Mode::Live
    }

    /// Every cache key a plan's refresh writes (besides stream entries,
    /// which are a delivery channel, not a cache).
    pub fn cache_keys(&self, plan: &Plan) -> Vec<String> {
        let users = plan.touched_users.iter().map(|id| self.keys.user(id));
        let sessions = plan.touched_sessions.iter().map(|id| self.keys.session(id));
        let presence = plan.touched_presence.iter().map(|id| self.keys.presence(id));
        let conversations = plan.touched_conversations.keys().map(|pair| self.keys.conversation(pair));
        let related = plan.related_added.iter().map(|(user, _)| self.keys.related(user));
        let connections = plan.connections_added.iter().map(|(user, _)| self.keys.connections(user));
        let mut keys: Vec<String> =
            users.chain(sessions).chain(presence).chain(conversations).chain(related).chain(connections).collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// Records cache keys that may now be stale (their refresh failed).
    pub async fn record_stale(&self, keys: &[String]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let statements: Vec<Document> = keys.iter().map(Self::stale_statement).collect();
        let reply = self.db.run_command(Self::update_command(collections::STALE_CACHES, &statements)).await?;
        Self::check_write_errors(&reply)
    }

    pub(super) fn stale_statement(key: &String) -> Document {
        doc! { "q": { "_id": key }, "u": { "$set": { "_id": key } }, "upsert": true }
    }

    /// Whether cache keys wait to be dropped (a Redis outage, possibly
    /// before a restart of this process).
    pub async fn has_stale_caches(&self) -> Result<bool, StoreError> {
        Ok(self.db.collection::<Document>(collections::STALE_CACHES).find_one(doc! {}).await?.is_some())
    }

    /// Once Redis answers: deletes every cache key recorded as stale (a
    /// reader then refills it from MongoDB, versioned), puts every user
    /// touched meanwhile into the feed directory, and forgets the records.
    /// Returns how many keys it dropped.
    pub async fn repair_caches(&self) -> Result<usize, StoreError> {
        let mut redis = self.redis.clone();
        redis::cmd("PING").query_async::<String>(&mut redis).await?;
        let stale: Vec<Document> =
            self.db.collection::<Document>(collections::STALE_CACHES).find(doc! {}).await?.try_collect().await?;
        let keys: Vec<String> = stale.iter().filter_map(|d| d.get_str("_id").ok().map(str::to_owned)).collect();
        let user_prefix = self.keys.user("");
        let directory = self.keys.feed_directory();
        for chunk in keys.chunks(1000) {
            let mut pipe = redis::pipe();
            pipe.cmd("UNLINK").arg(chunk).ignore();
            for key in chunk {
                if let Some(user_id) = key.strip_prefix(&user_prefix) {
                    pipe.zadd(&directory, user_id, 0).ignore();
                }
            }
            pipe.query_async::<()>(&mut redis).await?;
        }
        for chunk in keys.chunks(1000) {
            let ids: Vec<mongodb::bson::Bson> = chunk.iter().map(|k| k.clone().into()).collect();
            self.db
                .collection::<Document>(collections::STALE_CACHES)
                .delete_many(doc! { "_id": { "$in": ids } })
                .await?;
        }
        Ok(keys.len())
    }

    /// Reads back what the batch touched and writes it to Redis with
    /// versioned sets, so a cache entry never goes back in time.
    pub async fn refresh_caches(&self, plan: &Plan) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        let mut writes = 0;
        if !plan.touched_users.is_empty() {
            let ids: Vec<String> = plan.touched_users.iter().cloned().collect();
            let users = find_by_ids(&self.db.collection::<UserDoc>(collections::USERS), &ids).await?;
            let directory = self.keys.feed_directory();
            for user in users {
                self.cache_user(&mut pipe, &directory, &user);
                writes += 1;
            }
        }
        if !plan.touched_sessions.is_empty() {
            let ids: Vec<String> = plan.touched_sessions.iter().cloned().collect();
            let sessions = find_by_ids(&self.db.collection::<SessionDoc>(collections::SESSIONS), &ids).await?;
            let now = Utc::now();
            for session in sessions {
                writes += usize::from(self.cache_session(&mut pipe, &session, now));
            }
        }
        if !plan.touched_presence.is_empty() {
            let ids: Vec<String> = plan.touched_presence.iter().cloned().collect();
            let docs = find_by_ids(&self.db.collection::<PresenceDoc>(collections::PRESENCE), &ids).await?;
            for presence in docs {
                self.cache_presence(&mut pipe, &presence);
                writes += 1;
            }
        }
        // Add-only, and added whether or not the key is filled yet: a
        // reader filling it from MongoDB meanwhile merges with these.
        for user in &plan.registered {
            pipe.sadd(self.keys.related(user), views::keys::RELATED_COMPLETE).ignore();
            pipe.zadd(self.keys.connections(user), views::keys::CONNECTIONS_COMPLETE, 0).ignore();
            writes += 1;
        }
        for (user, other) in &plan.related_added {
            pipe.sadd(self.keys.related(user), other).ignore();
            writes += 1;
        }
        for (user, member) in &plan.connections_added {
            pipe.zadd(self.keys.connections(user), member, 0).ignore();
            writes += 1;
        }
        writes += self.update_conversation_caches(plan, &mut pipe).await?;
        for ((topic, partition), next) in &plan.checkpoints {
            views::cache::pipe_raise(&mut pipe, &self.keys.refreshed(topic, *partition), *next);
            writes += 1;
        }
        writes += self.publish_stream_entries(plan, &mut pipe).await?;
        if writes > 0 {
            let mut redis = self.redis.clone();
            pipe.query_async::<()>(&mut redis).await?;
        }
        Ok(())
    }

    /// Folds the messages this batch changed into the cached conversations:
    /// one MongoDB read for all of them and one Redis `MGET`. Only a
    /// conversation with no cache entry (new, expired, flushed) is read
    /// afresh, with a sorted query of its own.
    pub(super) async fn update_conversation_caches(
        &self,
        plan: &Plan,
        pipe: &mut redis::Pipeline,
    ) -> Result<usize, StoreError> {
        if plan.touched_conversations.is_empty() {
            return Ok(0);
        }
        let collection = self.db.collection::<MessageDoc>(collections::MESSAGES);
        let ids: Vec<String> = plan.touched_conversations.values().flatten().cloned().collect();
        let mut changed: std::collections::HashMap<String, Vec<MessageDoc>> = std::collections::HashMap::new();
        for message in find_by_ids(&collection, &ids).await? {
            changed.entry(message.pair_key.clone()).or_default().push(message);
        }
        let keys: Vec<String> = plan.touched_conversations.keys().map(|pair| self.keys.conversation(pair)).collect();
        let mut redis = self.redis.clone();
        let cached: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut redis).await?;
        for (pair, cached) in plan.touched_conversations.keys().zip(cached) {
            let touched = changed.remove(pair.as_str()).unwrap_or_default();
            let cache = match cached.and_then(|json| serde_json::from_str::<ConversationCache>(&json).ok()) {
                Some(cache) => cache.merged(touched),
                None => ConversationCache::new(
                    collection
                        .find(doc! { "pairKey": pair })
                        .sort(doc! { "_id": -1 })
                        .limit(views::CACHED_MESSAGES as i64)
                        .await?
                        .try_collect()
                        .await?,
                ),
            };
            self.cache_conversation(pipe, pair, &cache);
        }
        Ok(keys.len())
    }

    /// Adds this batch's live updates to the users' streams. Only events new
    /// in the batch are here (records past the stored checkpoint, ids not
    /// processed, presence that changed), so a redelivered batch publishes
    /// nothing twice.
    pub(super) async fn publish_stream_entries(
        &self,
        plan: &Plan,
        pipe: &mut redis::Pipeline,
    ) -> Result<usize, StoreError> {
        let mut entries: Vec<(String, &str, String)> =
            plan.stream.iter().map(|(user, update)| (user.clone(), update.kind(), update.data())).collect();
        if !plan.presence_changes.is_empty() {
            let ids: Vec<String> = plan.presence_changes.iter().map(|(user, _)| user.clone()).collect();
            let relations =
                find_by_ids(&self.db.collection::<views::RelationsDoc>(collections::RELATIONS), &ids).await?;
            let connections: std::collections::HashMap<&str, &Vec<String>> =
                relations.iter().map(|r| (r.user_id.as_str(), &r.connections)).collect();
            // The user's own stream, and at most `presence_fanout` of their
            // connections': the work of one change is bounded whatever the
            // number of connections (docs/api.md, "Live stream").
            for (user, view) in &plan.presence_changes {
                let update = views::LiveUpdate::Presence(view.clone());
                let (kind, text) = (update.kind(), update.data());
                entries.push((user.clone(), kind, text.clone()));
                let others = connections.get(user.as_str()).copied().into_iter().flatten();
                for other in others.take(self.streams.presence_fanout) {
                    entries.push((other.clone(), kind, text.clone()));
                }
            }
        }
        let ttl_ms = self.streams.ttl.as_millis().clamp(1, u128::from(u64::MAX)) as u64;
        let mut keys = std::collections::BTreeSet::new();
        for (user, kind, json) in &entries {
            pipe.cmd("XADD")
                .arg(self.keys.user_stream(user))
                .arg("MAXLEN")
                .arg("~")
                .arg(views::STREAM_LENGTH)
                .arg("*")
                .arg("kind")
                .arg(*kind)
                .arg("data")
                .arg(json)
                .ignore();
            keys.insert(self.keys.user_stream(user));
        }
        // Each key lives `ttl` past its newest entry: a user with no news
        // for that long leaves nothing behind (docs/domain.md "Redis keys").
        for key in &keys {
            pipe.cmd("PEXPIRE").arg(key).arg(ttl_ms).ignore();
        }
        Ok(entries.len())
    }
}
