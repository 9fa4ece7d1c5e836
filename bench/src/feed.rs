//! The feed at scale: seed users straight into the log, wait until the
//! views hold them, then read feed pages beside the plain reads the feed is
//! made of.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};
use rdkafka::producer::{FutureProducer, FutureRecord};
use redis::aio::MultiplexedConnection;

use crate::measure::{Pair, Stats, measure};
use crate::{Args, Run};

pub struct Feed {
    /// Users in the view when the feed was read.
    pub in_view: u64,
    /// Page 1, limit 50.
    pub first_page: Pair,
    pub deep_page: usize,
    pub deep: Stats,
    /// The feed's floor: its two primitive reads, done plainly.
    pub raw_zrange: Pair,
    pub raw_in: Pair,
    /// For context: what the plain sorted query costs on this server.
    pub naive: Stats,
}

pub async fn measure_feed(
    args: &Args,
    run: &Run,
    producer: &FutureProducer,
    redis: &MultiplexedConnection,
    viewer: &str,
) -> anyhow::Result<Feed> {
    let client = mongodb::Client::with_uri_str(&args.mongo_uri).await?;
    let generation =
        views::generation::Generations::new(client.clone(), &args.mongo_database).current_or_create().await?;
    let mongo = client.database(&generation.database(&args.mongo_database));
    let users = mongo.collection::<Document>("users");
    let feed_directory = generation.redis_keys(&views::keys::RedisKeys::new("")).feed_directory();
    if args.feed_users > 0 {
        seed_and_wait(args, run, producer, &users).await?;
    }
    let in_view = users.estimated_document_count().await?;
    let viewer = Arc::new(viewer.to_owned());
    let feed = |c: usize, ops: usize, page: usize| feed_page(run, c, ops, page, Arc::clone(&viewer));
    let first_page = Pair { one: feed(1, run.serial, 1).await?, many: feed(64, run.parallel, 1).await? };
    // A deep page, within what the view holds (page 1000 at 100 000 users).
    let deep_page = (in_view as usize / 50 / 2).clamp(1, 1000);
    let deep = feed(1, run.serial / 4, deep_page).await?;
    // The feed's floor: its two primitive reads, done plainly: 51 ids from
    // the directory, and 50 users by _id from MongoDB.
    let directory = redis::cmd("ZREVRANGE")
        .arg(&feed_directory)
        .arg(0)
        .arg(50)
        .query_async::<Vec<String>>(&mut redis.clone())
        .await?;
    let page_ids: Arc<Vec<Bson>> = Arc::new(directory.iter().take(50).map(|id| Bson::String(id.clone())).collect());
    let zrange = |c: usize, ops: usize| raw_zrange(redis, &feed_directory, c, ops);
    let raw_zrange = Pair { one: zrange(1, run.serial).await?, many: zrange(64, run.parallel).await? };
    let mongo_in = |c: usize, ops: usize| raw_in(&users, &page_ids, c, ops);
    let raw_in = Pair { one: mongo_in(1, run.serial).await?, many: mongo_in(64, run.parallel).await? };
    let naive = naive_sorted_page(&users).await?;
    Ok(Feed { in_view, first_page, deep_page, deep, raw_zrange, raw_in, naive })
}

/// Seeds `--feed-users` users and waits until the view holds them all.
async fn seed_and_wait(
    args: &Args,
    run: &Run,
    producer: &FutureProducer,
    users: &mongodb::Collection<Document>,
) -> anyhow::Result<()> {
    let last_per_partition = seed_users(args, &run.id, args.feed_users, producer).await?;
    let started = Instant::now();
    // Each partition is applied in order: once its last seeded user is
    // in the view, all of that partition's are. Point reads by _id only,
    // so the wait does not load the database it is measuring.
    for user_id in last_per_partition {
        while users.find_one(doc! { "_id": &user_id }).await?.is_none() {
            anyhow::ensure!(started.elapsed() < Duration::from_secs(900), "seeded users not projected within 15 min");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    println!("seeded {} users; projected in {:.1} s", args.feed_users, started.elapsed().as_secs_f64());
    Ok(())
}

/// Reads of a full feed page `page` (limit 50).
async fn feed_page(run: &Run, c: usize, ops: usize, page: usize, viewer: Arc<String>) -> anyhow::Result<Stats> {
    let api = Arc::clone(&run.api);
    measure(c, ops, move |_| {
        let (api, viewer) = (Arc::clone(&api), Arc::clone(&viewer));
        async move {
            let v = api.get_ok(&format!("/v1/feed?page={page}&limit=50"), &viewer).await?;
            anyhow::ensure!(
                v["items"].as_array().is_some_and(|a| a.len() == 50),
                "feed page not full: {} items",
                v["items"].as_array().map_or(0, Vec::len)
            );
            Ok(())
        }
    })
    .await
}

/// `ZREVRANGE` of the first 51 ids of the directory.
async fn raw_zrange(
    redis: &MultiplexedConnection,
    feed_directory: &str,
    c: usize,
    ops: usize,
) -> anyhow::Result<Stats> {
    let (redis, feed_directory) = (redis.clone(), feed_directory.to_owned());
    measure(c, ops, move |_| {
        let (mut redis, key) = (redis.clone(), feed_directory.clone());
        async move {
            let ids: Vec<String> = redis::cmd("ZREVRANGE").arg(key).arg(0).arg(50).query_async(&mut redis).await?;
            anyhow::ensure!(ids.len() == 51, "a full window");
            Ok(())
        }
    })
    .await
}

/// 50 users by `_id` with one `$in`.
async fn raw_in(
    users: &mongodb::Collection<Document>,
    page_ids: &Arc<Vec<Bson>>,
    c: usize,
    ops: usize,
) -> anyhow::Result<Stats> {
    let (users, page_ids) = (users.clone(), Arc::clone(page_ids));
    measure(c, ops, move |_| {
        let (users, page_ids) = (users.clone(), Arc::clone(&page_ids));
        async move {
            let filter = doc! { "_id": { "$in": page_ids.as_ref().clone() } };
            let page: Vec<Document> = users.find(filter).await?.try_collect().await?;
            anyhow::ensure!(page.len() == 50, "raw $in page not full: {} docs", page.len());
            Ok(())
        }
    })
    .await
}

/// The plain query (no index use on this server), three times.
async fn naive_sorted_page(users: &mongodb::Collection<Document>) -> anyhow::Result<Stats> {
    let users = users.clone();
    measure(1, 3, move |_| {
        let users = users.clone();
        async move {
            let page: Vec<Document> = users.find(doc! {}).sort(doc! {"_id": -1}).limit(50).await?.try_collect().await?;
            anyhow::ensure!(page.len() == 50, "raw sorted page not full: {} docs", page.len());
            Ok(())
        }
    })
    .await
}

/// Seeds `count` registrations straight into user-events (pipelined), as a
/// bulk import would. They carry no credentials, so nobody can log in as
/// them; the command API learns of them at its next start.
async fn seed_users(args: &Args, run: &str, count: usize, producer: &FutureProducer) -> anyhow::Result<Vec<String>> {
    use events::{Topic, TopicNames};
    let topic = TopicNames::new(args.topic_prefix.clone()).name(Topic::UserEvents);
    let started = Instant::now();
    let mut in_flight = futures::stream::FuturesUnordered::new();
    let mut last: HashMap<i32, (i64, String)> = HashMap::new();
    for i in 0..count {
        let envelope = seed_registration(run, i);
        let payload = events::encode_record(std::slice::from_ref(&envelope));
        let key = envelope.aggregate_id.clone();
        let producer = producer.clone();
        let payload_key = key.clone();
        let topic = topic.clone();
        in_flight.push(async move {
            producer
                .send(FutureRecord::to(&topic).key(&payload_key).payload(&payload), Duration::from_secs(30))
                .await
                .map(|delivery| (delivery.partition, delivery.offset, key))
                .map_err(|(e, _)| anyhow::anyhow!("seeding: {e}"))
        });
        if in_flight.len() >= 2000
            && let Some(r) = futures::StreamExt::next(&mut in_flight).await
        {
            note_last(&mut last, r?);
        }
    }
    while let Some(r) = futures::StreamExt::next(&mut in_flight).await {
        note_last(&mut last, r?);
    }
    println!("produced {count} seed registrations in {:.1} s", started.elapsed().as_secs_f64());
    Ok(last.into_values().map(|(_, id)| id).collect())
}

/// The `i`th seeded registration of this run.
fn seed_registration(run: &str, i: usize) -> events::Envelope {
    use events::user::{Profile, UserEvent, UserRegistered};
    use events::{Envelope, Event, EventMetadata};
    let user_id = uuid::Uuid::now_v7();
    Envelope {
        event_id: uuid::Uuid::now_v7(),
        aggregate_id: user_id.to_string(),
        aggregate_version: 1,
        occurred_at: chrono::Utc::now(),
        metadata: EventMetadata {
            actor: None,
            correlation_id: format!("bench-seed-{run}"),
            idempotency_key: None,
            request_fingerprint: None,
        },
        event: Event::User(UserEvent::Registered(UserRegistered {
            user_id,
            email_id: format!("seed-{run}-{i}@example.com"),
            profile: Profile {
                first_name: "Seed".into(),
                last_name: format!("User{i}"),
                age: Some(30),
                gender: None,
                about: Some(format!("seeded by bench run {run}")),
                skills: vec!["rust".into()],
                photo_url: None,
            },
        })),
    }
}

/// Keeps, per partition, the user id at the highest offset.
fn note_last(last: &mut HashMap<i32, (i64, String)>, (partition, offset, id): (i32, i64, String)) {
    let entry = last.entry(partition).or_insert((-1, String::new()));
    if offset > entry.0 {
        *entry = (offset, id);
    }
}
