//! Applies a plan: one MongoDB transaction with the view changes and the
//! checkpoint (so the checkpoint never runs ahead of the views), then the
//! Redis caches in one pipeline.

use std::time::Duration;

use chrono::Utc;
use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use mongodb::{Client, Database};
use redis::aio::ConnectionManager;
use views::keys::RedisKeys;
use views::{CheckpointDoc, ConversationCache, MessageDoc, PresenceDoc, SessionDoc, UserDoc, collections};

use crate::plan::Plan;
use platform::mongo::find_by_ids;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("mongodb: {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error("mongodb rejected a write: {detail}")]
    WriteErrors { codes: Vec<i32>, detail: String },
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

impl StoreError {
    /// Whether trying again later can succeed without any fix: outages,
    /// timeouts, write conflicts (another writer, or the open transaction
    /// of a projector that was killed, which the server aborts after about
    /// a minute). Only other errors can mean a poison event.
    pub fn is_transient(&self) -> bool {
        use mongodb::error::{ErrorKind, TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT};
        const WRITE_CONFLICT: i32 = 112;
        match self {
            StoreError::Redis(_) => true,
            StoreError::WriteErrors { codes, .. } => codes.contains(&WRITE_CONFLICT),
            StoreError::Mongo(err) => match err.kind.as_ref() {
                _ if err.contains_label(TRANSIENT_TRANSACTION_ERROR)
                    || err.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) =>
                {
                    true
                }
                ErrorKind::Command(command) => command.code == WRITE_CONFLICT,
                ErrorKind::Write(_) | ErrorKind::InvalidArgument { .. } | ErrorKind::BsonSerialization(_) => false,
                _ => true,
            },
        }
    }
}

#[derive(Clone)]
pub struct ViewStore {
    client: Client,
    db: Database,
    redis: ConnectionManager,
    keys: RedisKeys,
    /// Whether to add live updates to users' streams. A rebuild does not:
    /// it replays history, which connected clients have already been told.
    publish_live_updates: bool,
}

impl std::fmt::Debug for ViewStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewStore").field("db", &self.db.name()).finish_non_exhaustive()
    }
}

impl ViewStore {
    pub fn new(client: Client, database: &str, redis: ConnectionManager, keys: RedisKeys) -> Self {
        let db = client.database(database);
        Self { client, db, redis, keys, publish_live_updates: true }
    }

    pub fn without_live_updates(mut self) -> Self {
        self.publish_live_updates = false;
        self
    }

    /// Marks the feed directory as holding every projected user. True at
    /// the end of a rebuild: every batch's Redis writes were acknowledged
    /// before its offsets moved, and every user's registration was applied.
    pub async fn mark_feed_directory_complete(&self) -> Result<(), StoreError> {
        let mut redis = self.redis.clone();
        redis::cmd("ZADD")
            .arg(self.keys.feed_directory())
            .arg(-1)
            .arg(views::keys::FEED_DIRECTORY_COMPLETE)
            .query_async::<()>(&mut redis)
            .await?;
        Ok(())
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    pub async fn mongo_reachable(&self) -> bool {
        platform::mongo::ping(&self.client).await
    }

    pub async fn redis_reachable(&self) -> bool {
        let mut redis = self.redis.clone();
        redis::cmd("PING").query_async::<String>(&mut redis).await.is_ok()
    }

    /// One `update` command with many statements: the fastest batched write
    /// the servers we run offer (STACK.md), and it works on MongoDB 7.
    fn update_command(collection: &str, statements: &[Document]) -> Document {
        doc! { "update": collection, "updates": statements.to_vec(), "ordered": true }
    }

    fn check_write_errors(reply: &Document) -> Result<(), StoreError> {
        match reply.get_array("writeErrors") {
            Ok(errors) if !errors.is_empty() => Err(StoreError::WriteErrors {
                codes: errors.iter().filter_map(|e| e.as_document()?.get_i32("code").ok()).collect(),
                detail: format!("{errors:?}"),
            }),
            _ => Ok(()),
        }
    }

    pub async fn apply(&self, plan: &Plan) -> Result<(), StoreError> {
        self.apply_mongo(plan).await?;
        self.refresh_caches(plan).await
    }

    async fn apply_mongo(&self, plan: &Plan) -> Result<(), StoreError> {
        let checkpoints: Vec<Document> = plan
            .checkpoints
            .iter()
            .map(|((topic, partition), next)| {
                doc! {
                    "q": { "_id": CheckpointDoc::id_for(topic, *partition) },
                    "u": [ { "$set": {
                        "topic": topic.as_str(),
                        "partition": *partition,
                        "nextOffset": { "$max": [ { "$ifNull": ["$nextOffset", 0_i64] }, *next ] },
                    } } ],
                    "upsert": true,
                }
            })
            .collect();
        let mut session = self.client.start_session().await?;
        session.start_transaction().await?;
        // Processed-id keys first: if another projector applied these events
        // meanwhile (a rebalance), the duplicate key aborts this transaction
        // and the retry finds them processed.
        if !plan.processed.is_empty() {
            let ids: Vec<Document> = plan.processed.iter().map(|id| doc! { "_id": id.to_string() }).collect();
            let insert = doc! { "insert": collections::PROCESSED_EVENTS, "documents": ids, "ordered": true };
            let result = self.db.run_command(insert).session(&mut session).await;
            if let Err(err) = result.map_err(StoreError::from).and_then(|reply| Self::check_write_errors(&reply)) {
                let _ = session.abort_transaction().await;
                return Err(err);
            }
        }
        let batches = [
            (collections::USERS, &plan.users),
            (collections::SESSIONS, &plan.sessions),
            (collections::CONNECTION_REQUESTS, &plan.requests),
            (collections::RELATIONS, &plan.relations),
            (collections::MESSAGES, &plan.messages),
            (collections::PRESENCE, &plan.presence),
            (collections::NOTIFICATIONS, &plan.notifications),
            (collections::NOTIFICATION_COUNTERS, &plan.notification_counters),
            (collections::DAILY_STATS, &plan.daily_stats),
            (collections::CHECKPOINTS, &checkpoints),
        ];
        for (collection, statements) in batches {
            if statements.is_empty() {
                continue;
            }
            let result = self.db.run_command(Self::update_command(collection, statements)).session(&mut session).await;
            match result.map_err(StoreError::from).and_then(|reply| Self::check_write_errors(&reply)) {
                Ok(()) => {}
                Err(err) => {
                    let _ = session.abort_transaction().await;
                    return Err(err);
                }
            }
        }
        session.commit_transaction().await?;
        Ok(())
    }

    /// Reads back what the batch touched and writes it to Redis with
    /// versioned sets, so a cache entry never goes back in time.
    async fn refresh_caches(&self, plan: &Plan) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        let mut writes = 0;
        if !plan.touched_users.is_empty() {
            let ids: Vec<String> = plan.touched_users.iter().cloned().collect();
            let users = find_by_ids(&self.db.collection::<UserDoc>(collections::USERS), &ids).await?;
            let directory = self.keys.feed_directory();
            for user in users {
                // Idempotent: a member is added once (score 0, ordered by id).
                pipe.zadd(&directory, &user.user_id, 0).ignore();
                let json = serde_json::to_string(&user).unwrap_or_default();
                views::cache::pipe_set_if_newer(
                    &mut pipe,
                    &self.keys.user(&user.user_id),
                    user.version,
                    &json,
                    views::ttl::USER,
                );
                writes += 1;
            }
        }
        if !plan.touched_sessions.is_empty() {
            let ids: Vec<String> = plan.touched_sessions.iter().cloned().collect();
            let sessions = find_by_ids(&self.db.collection::<SessionDoc>(collections::SESSIONS), &ids).await?;
            let now = Utc::now();
            for session in sessions.into_iter().filter(|s| s.expires_at > now) {
                let ttl = (session.expires_at - now).to_std().unwrap_or(Duration::from_secs(1));
                let json = serde_json::to_string(&session).unwrap_or_default();
                views::cache::pipe_set_if_newer(
                    &mut pipe,
                    &self.keys.session(&session.session_id),
                    session.version,
                    &json,
                    ttl,
                );
                writes += 1;
            }
        }
        if !plan.touched_presence.is_empty() {
            let ids: Vec<String> = plan.touched_presence.iter().cloned().collect();
            let docs = find_by_ids(&self.db.collection::<PresenceDoc>(collections::PRESENCE), &ids).await?;
            for presence in docs {
                let json = serde_json::to_string(&presence).unwrap_or_default();
                let key = self.keys.presence(&presence.user_id);
                views::cache::pipe_set_if_newer(&mut pipe, &key, presence.version, &json, views::ttl::PRESENCE);
                writes += 1;
            }
        }
        for pair in &plan.touched_conversations {
            // Rewritten whole from MongoDB: a redelivered event cannot
            // append a message twice.
            let newest: Vec<MessageDoc> = self
                .db
                .collection::<MessageDoc>(collections::MESSAGES)
                .find(doc! { "pairKey": pair })
                .sort(doc! { "_id": -1 })
                .limit(views::CACHED_MESSAGES as i64)
                .await?
                .try_collect()
                .await?;
            let cache = ConversationCache::new(newest);
            let json = serde_json::to_string(&cache).unwrap_or_default();
            views::cache::pipe_set_if_newer(
                &mut pipe,
                &self.keys.conversation(pair),
                cache.version,
                &json,
                views::ttl::CONVERSATION,
            );
            writes += 1;
        }
        if self.publish_live_updates {
            writes += self.publish_stream_entries(plan, &mut pipe).await?;
        }
        if writes > 0 {
            let mut redis = self.redis.clone();
            pipe.query_async::<()>(&mut redis).await?;
        }
        Ok(())
    }

    /// Adds this batch's live updates to the users' streams. Only events new
    /// in the batch are here (processed-id keys), so a replay or a
    /// redelivered batch publishes nothing twice.
    async fn publish_stream_entries(&self, plan: &Plan, pipe: &mut redis::Pipeline) -> Result<usize, StoreError> {
        let mut entries: Vec<(String, &str, String)> =
            plan.stream.iter().map(|(user, kind, json)| (user.clone(), *kind, json.to_string())).collect();
        if !plan.presence_changes.is_empty() {
            let ids: Vec<String> = plan.presence_changes.iter().map(|(user, _)| user.clone()).collect();
            let relations =
                find_by_ids(&self.db.collection::<views::RelationsDoc>(collections::RELATIONS), &ids).await?;
            let connections: std::collections::HashMap<&str, &Vec<String>> =
                relations.iter().map(|r| (r.user_id.as_str(), &r.connections)).collect();
            for (user, json) in &plan.presence_changes {
                let text = json.to_string();
                entries.push((user.clone(), "presence", text.clone()));
                for other in connections.get(user.as_str()).copied().into_iter().flatten() {
                    entries.push((other.clone(), "presence", text.clone()));
                }
            }
        }
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
        }
        Ok(entries.len())
    }

    /// Which of these event ids were already applied (processed-id keys).
    pub async fn already_processed(
        &self,
        ids: &[uuid::Uuid],
    ) -> Result<std::collections::HashSet<uuid::Uuid>, StoreError> {
        let ids: Vec<String> = ids.iter().map(uuid::Uuid::to_string).collect();
        let found = find_by_ids(&self.db.collection::<Document>(collections::PROCESSED_EVENTS), &ids).await?;
        Ok(found.iter().filter_map(|d| d.get_str("_id").ok()?.parse().ok()).collect())
    }

    /// The indexes the query API's reads rely on. Idempotent.
    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        use mongodb::IndexModel;
        let requests = self.db.collection::<Document>(collections::CONNECTION_REQUESTS);
        requests
            .create_index(IndexModel::builder().keys(doc! { "toUserId": 1, "status": 1, "createdAt": -1 }).build())
            .await?;
        let notifications = self.db.collection::<Document>(collections::NOTIFICATIONS);
        notifications.create_index(IndexModel::builder().keys(doc! { "userId": 1, "_id": -1 }).build()).await?;
        let messages = self.db.collection::<Document>(collections::MESSAGES);
        messages.create_index(IndexModel::builder().keys(doc! { "pairKey": 1, "_id": -1 }).build()).await?;
        Ok(())
    }

    /// The applied position per partition, as the checkpoints say.
    pub async fn checkpoints(&self) -> Result<Vec<CheckpointDoc>, StoreError> {
        Ok(self.db.collection::<CheckpointDoc>(collections::CHECKPOINTS).find(doc! {}).await?.try_collect().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::StoreError;

    #[test]
    fn conflicts_are_transient_and_rejected_writes_are_not() {
        let conflict = StoreError::WriteErrors { codes: vec![112], detail: String::new() };
        let rejected = StoreError::WriteErrors { codes: vec![2], detail: String::new() };
        assert!(conflict.is_transient());
        assert!(!rejected.is_transient());
    }
}
