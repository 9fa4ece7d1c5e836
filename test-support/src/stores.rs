//! The environment's views in MongoDB and Redis: the generation readers
//! use, and snapshots to compare two sets of views.

use serde_json::Value;

use crate::TestEnv;

impl TestEnv {
    pub async fn mongo_client(&self) -> mongodb::Client {
        mongodb::Client::with_uri_str(&self.servers.mongo_uri).await.expect("mongo client")
    }

    /// The base database: it holds the view generation pointer.
    pub async fn mongo(&self) -> mongodb::Database {
        self.mongo_client().await.database(&self.database())
    }

    /// The view generation readers use now.
    pub async fn current_generation(&self) -> String {
        let pointer = self
            .mongo()
            .await
            .collection::<mongodb::bson::Document>(views::generation::CONTROL_COLLECTION)
            .find_one(mongodb::bson::doc! {})
            .await
            .expect("pointer");
        pointer.and_then(|p| p.get_str("current").ok().map(str::to_owned)).expect("a current view generation")
    }

    /// The database of the current view generation.
    pub async fn views_db(&self) -> mongodb::Database {
        let generation = self.current_generation().await;
        self.mongo_client().await.database(&format!("{}_{generation}", self.database()))
    }

    /// A cache key of the current view generation, e.g. `user:<id>`.
    pub async fn view_key(&self, key: &str) -> String {
        format!("{}:{key}", self.current_generation().await)
    }

    /// Every view of `generation` as comparable lines: each MongoDB
    /// document and each Redis key of the generation, canonical (sets
    /// sorted, fields sorted) and without what is volatile (TTLs; the
    /// generation's own name; when a processed id was recorded; where a
    /// partition's last batch began). Equal
    /// lines, equal views.
    pub async fn view_snapshot(&self, generation: &str) -> Vec<String> {
        use futures::TryStreamExt;
        use mongodb::bson::{Document, doc};
        let db = self.mongo_client().await.database(&format!("{}_{generation}", self.database()));
        let mut names = db.list_collection_names().await.expect("collections");
        names.sort();
        let mut lines = Vec::new();
        for name in names {
            let docs: Vec<Document> = db
                .collection::<Document>(&name)
                .find(doc! {})
                .sort(doc! {"_id": 1})
                .await
                .expect("find")
                .try_collect()
                .await
                .expect("docs");
            lines.extend(docs.into_iter().map(|mut d| {
                if name == views::collections::PROCESSED_EVENTS {
                    d.remove("at");
                }
                if name == views::collections::CHECKPOINTS {
                    // Where the last batch began: how the log was cut
                    // into batches, not what the views hold.
                    d.remove("refreshFrom");
                    d.remove("refreshEpoch");
                }
                format!("{name}: {}", canonical_document(d))
            }));
        }
        let mut redis = self.redis().await;
        let prefix = format!("{generation}:");
        let mut keys: Vec<String> =
            redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut redis).await.expect("keys");
        keys.sort();
        for key in keys {
            let kind: String = redis::cmd("TYPE").arg(&key).query_async(&mut redis).await.expect("type");
            let value = match kind.as_str() {
                "string" => {
                    let text: String = redis::cmd("GET").arg(&key).query_async(&mut redis).await.expect("get");
                    serde_json::from_str::<Value>(&text).map_or(text, |v| canonical_json(v).to_string())
                }
                "zset" => {
                    let members: Vec<(String, f64)> = redis::cmd("ZRANGE")
                        .arg(&key)
                        .arg(0)
                        .arg(-1)
                        .arg("WITHSCORES")
                        .query_async(&mut redis)
                        .await
                        .expect("zrange");
                    format!("{members:?}")
                }
                "set" => {
                    let mut members: Vec<String> =
                        redis::cmd("SMEMBERS").arg(&key).query_async(&mut redis).await.expect("smembers");
                    members.sort();
                    format!("{members:?}")
                }
                other => format!("<{other}>"),
            };
            lines.push(format!("redis {}: {value}", &key[prefix.len()..]));
        }
        lines
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.redis_url())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("redis connection")
    }
}

/// Asserts two view snapshots are equal, printing only the lines that differ.
#[track_caller]
pub fn assert_same_views(actual: &[String], expected: &[String], what: &str) {
    if actual == expected {
        return;
    }
    let missing: Vec<&String> = expected.iter().filter(|l| !actual.contains(l)).collect();
    let extra: Vec<&String> = actual.iter().filter(|l| !expected.contains(l)).collect();
    // Same lines, differently arranged: say where.
    let first_difference = actual.iter().zip(expected).position(|(a, e)| a != e);
    let at = first_difference.map(|i| (&actual[i], &expected[i]));
    panic!(
        "{what}: the views differ\nmissing: {missing:#?}\nunexpected: {extra:#?}\n{} lines, {} expected; first difference (actual, expected): {at:#?}",
        actual.len(),
        expected.len()
    );
}

/// Sorted fields, sorted sets: `$addToSet` appends in arrival order, and
/// events of different pairs arrive from different partitions; an upsert
/// with `$inc` creates fields in the order their first increments arrive.
pub fn canonical_document(document: mongodb::bson::Document) -> mongodb::bson::Document {
    let mut fields: Vec<(String, mongodb::bson::Bson)> = document.into_iter().collect();
    for (name, value) in &mut fields {
        if let mongodb::bson::Bson::Array(list) = value
            && matches!(name.as_str(), "related" | "connections")
        {
            list.sort_by_key(ToString::to_string);
        }
    }
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    fields.into_iter().collect()
}

/// The same for cached JSON: object fields sorted.
fn canonical_json(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut fields: Vec<(String, Value)> = map.into_iter().map(|(k, v)| (k, canonical_json(v))).collect();
            fields.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(fields.into_iter().collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(canonical_json).collect()),
        other => other,
    }
}
