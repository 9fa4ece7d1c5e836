//! Prints latency and throughput of DevConnect's commands and reads, beside
//! the raw floor of the same servers measured in the same run: a plain
//! produce to the same broker and a plain Redis GET. Run it against a
//! running stack (`./dev up`, then `./dev bench`).
#![allow(clippy::print_stdout)]

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use rdkafka::producer::FutureRecord;
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(about = "DevConnect benchmark")]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    command_url: String,
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    query_url: String,
    #[arg(long, default_value = "127.0.0.1:19092")]
    kafka_brokers: String,
    #[arg(long, default_value = "redis://127.0.0.1:16379/")]
    redis_url: String,
    #[arg(long, default_value = "mongodb://127.0.0.1:27117/?retryWrites=false&directConnection=true")]
    mongo_uri: String,
    #[arg(long, default_value = "devconnect")]
    mongo_database: String,
    /// The deployment's topic prefix (empty for the dev stack).
    #[arg(long, default_value = "")]
    topic_prefix: String,
    /// Users to seed (straight into user-events, as an import would) before
    /// measuring the feed; 0 skips seeding.
    #[arg(long, default_value_t = 100_000)]
    feed_users: usize,
    /// Operations per measurement at concurrency 1.
    #[arg(long, default_value_t = 200)]
    serial_ops: usize,
    /// Operations per measurement at concurrency 64.
    #[arg(long, default_value_t = 1280)]
    parallel_ops: usize,
}

const PASSWORD: &str = "Bench#Pass1";

#[derive(Debug, Clone, Copy)]
struct Stats {
    p50_ms: f64,
    p99_ms: f64,
    per_sec: f64,
}

/// Runs `ops` operations, `concurrency` at a time; op `i` is `f(i)`.
async fn measure<F, Fut>(concurrency: usize, ops: usize, f: F) -> anyhow::Result<Stats>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let f = Arc::new(f);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers = (0..concurrency).map(|_| {
        let (f, next) = (Arc::clone(&f), Arc::clone(&next));
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= ops {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let t = Instant::now();
                f(i).await?;
                latencies.push(t.elapsed());
            }
        })
    });
    let mut all: Vec<Duration> = Vec::with_capacity(ops);
    for worker in futures::future::join_all(workers).await {
        all.extend(worker??);
    }
    let elapsed = started.elapsed();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)].as_secs_f64() * 1e3;
    Ok(Stats { p50_ms: pct(0.50), p99_ms: pct(0.99), per_sec: all.len() as f64 / elapsed.as_secs_f64() })
}

fn row(name: &str, c: usize, s: Stats, floor: Option<Stats>) {
    let ratio =
        floor.map_or(String::new(), |f| format!("{:>8.1}x {:>8.1}x", s.p50_ms / f.p50_ms, f.per_sec / s.per_sec));
    println!("{name:<34} {c:>3} {:>9.2} {:>9.2} {:>10.0}   {ratio}", s.p50_ms, s.p99_ms, s.per_sec);
}

struct Api {
    http: reqwest::Client,
    command: String,
    query: String,
}

impl Api {
    async fn post(&self, path: &str, body: &Value, token: Option<&str>) -> anyhow::Result<reqwest::Response> {
        let mut req = self.http.post(format!("{}{path}", self.command)).json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await?;
        anyhow::ensure!(res.status().is_success(), "POST {path}: {}", res.status());
        Ok(res)
    }

    async fn signup(&self, email: &str) -> anyhow::Result<String> {
        let body = json!({"firstName": "Bench", "lastName": "Mark", "emailId": email, "password": PASSWORD, "skills": ["rust"]});
        let v: Value = self.post("/v1/auth/signup", &body, None).await?.json().await?;
        Ok(v["userId"].as_str().unwrap_or_default().to_owned())
    }

    /// The user id of an account the run already created.
    async fn user_id_of(&self, email: &str) -> anyhow::Result<String> {
        let token = self.login(email).await?;
        let v = self.profile(&token, None).await;
        match v {
            Ok(v) => Ok(v["userId"].as_str().unwrap_or_default().to_owned()),
            Err(_) => anyhow::bail!("{email} not in the views yet"),
        }
    }

    async fn login(&self, email: &str) -> anyhow::Result<String> {
        let v: Value =
            self.post("/v1/auth/login", &json!({"emailId": email, "password": PASSWORD}), None).await?.json().await?;
        Ok(v["token"].as_str().unwrap_or_default().to_owned())
    }

    async fn edit(&self, token: &str, about: &str) -> anyhow::Result<String> {
        let res = self
            .http
            .patch(format!("{}/v1/profile", self.command))
            .bearer_auth(token)
            .json(&json!({"about": about}))
            .send()
            .await?;
        anyhow::ensure!(res.status().is_success(), "PATCH /v1/profile: {}", res.status());
        Ok(res.headers().get("x-consistency-token").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned())
    }

    /// POST that answers `{requestId}`.
    async fn request_id(&self, path: &str, token: &str) -> anyhow::Result<String> {
        let v: Value = self.post(path, &json!({}), Some(token)).await?.json().await?;
        Ok(v["requestId"].as_str().unwrap_or_default().to_owned())
    }

    async fn get_ok(&self, path: &str, token: &str) -> anyhow::Result<Value> {
        let res = self.http.get(format!("{}{path}", self.query)).bearer_auth(token).send().await?;
        anyhow::ensure!(res.status().is_success(), "GET {path}: {}", res.status());
        Ok(res.json().await?)
    }

    async fn profile(&self, token: &str, consistency: Option<&str>) -> anyhow::Result<Value> {
        let mut req = self.http.get(format!("{}/v1/profile", self.query)).bearer_auth(token);
        if let Some(c) = consistency {
            req = req.header("x-consistency-token", c);
        }
        let res = req.send().await?;
        anyhow::ensure!(res.status().is_success(), "GET /v1/profile: {}", res.status());
        Ok(res.json().await?)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let api = Arc::new(Api {
        http: reqwest::Client::builder().pool_max_idle_per_host(128).build()?,
        command: args.command_url.clone(),
        query: args.query_url.clone(),
    });
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let (serial, parallel) = (args.serial_ops, args.parallel_ops);

    // The raw floor: the same broker, the same Redis, no DevConnect code.
    let topic = format!("bench-raw-{run}");
    platform::kafka::ensure_topics(&args.kafka_brokers, std::slice::from_ref(&topic), 3, 1).await?;
    let producer = Arc::new(platform::kafka::event_producer(&args.kafka_brokers, Duration::from_secs(10))?);
    let payload = Arc::new(vec![b'x'; 400]);
    let warm = FutureRecord::to(&topic).key("warm").payload(payload.as_slice());
    producer.send(warm, Duration::from_secs(10)).await.map_err(|(e, _)| e)?;
    let produce = |c: usize, ops: usize| {
        let (producer, payload, topic) = (Arc::clone(&producer), Arc::clone(&payload), topic.clone());
        measure(c, ops, move |i| {
            let (producer, payload, topic) = (Arc::clone(&producer), Arc::clone(&payload), topic.clone());
            async move {
                let key = format!("k{i}");
                let record = FutureRecord::to(&topic).key(&key).payload(payload.as_slice());
                producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e)?;
                Ok(())
            }
        })
    };
    let produce_1 = produce(1, serial).await?;
    let produce_64 = produce(64, parallel).await?;

    let redis = redis::Client::open(args.redis_url.as_str())?.get_multiplexed_async_connection().await?;
    let raw_key = format!("bench:raw:{run}");
    let user_sized = "x".repeat(350);
    redis::cmd("SET").arg(&raw_key).arg(&user_sized).query_async::<()>(&mut redis.clone()).await?;
    let redis_get = |c: usize, ops: usize| {
        let (redis, key) = (redis.clone(), raw_key.clone());
        measure(c, ops, move |_| {
            let (mut redis, key) = (redis.clone(), key.clone());
            async move {
                redis::cmd("GET").arg(&key).query_async::<Option<String>>(&mut redis).await?;
                Ok(())
            }
        })
    };
    let get_1 = redis_get(1, serial * 5).await?;
    let get_64 = redis_get(64, parallel * 5).await?;

    // Commands. Each op of a parallel run works on its own user, as real
    // traffic does; one user's commands are serialised by design.
    let email = {
        let run = run.clone();
        move |phase: &str, i: usize| format!("bench-{run}-{phase}-{i}@example.com")
    };
    let signup = |c: usize, ops: usize, phase: &'static str| {
        let (api, email) = (Arc::clone(&api), email.clone());
        measure(c, ops, move |i| {
            let (api, e) = (Arc::clone(&api), email(phase, i));
            async move { api.signup(&e).await.map(|_| ()) }
        })
    };
    let signup_1 = signup(1, serial / 4, "s1").await?;
    let signup_64 = signup(64, parallel / 4, "s64").await?;
    let login = |c: usize, ops: usize, phase: &'static str, users: usize| {
        let (api, email) = (Arc::clone(&api), email.clone());
        measure(c, ops, move |i| {
            let (api, e) = (Arc::clone(&api), email(phase, i % users));
            async move { api.login(&e).await.map(|_| ()) }
        })
    };
    let login_1 = login(1, serial / 4, "s1", serial / 4).await?;
    let login_64 = login(64, parallel / 4, "s64", parallel / 4).await?;

    let mut tokens = Vec::new();
    for i in 0..64 {
        tokens.push(api.login(&email("s64", i)).await?);
    }
    let tokens = Arc::new(tokens);
    let edit = |c: usize, ops: usize| {
        let (api, tokens) = (Arc::clone(&api), Arc::clone(&tokens));
        measure(c, ops, move |i| {
            let (api, tokens) = (Arc::clone(&api), Arc::clone(&tokens));
            async move { api.edit(&tokens[i % 64], &format!("edit {i}")).await.map(|_| ()) }
        })
    };
    let edit_1 = edit(1, serial).await?;
    let edit_64 = edit(64, parallel).await?;

    // Reads: warm the cache, then read.
    for t in tokens.iter() {
        let c = api.edit(t, "warm").await?;
        api.profile(t, Some(&c)).await?;
        api.profile(t, None).await?;
    }
    let read = |c: usize, ops: usize| {
        let (api, tokens) = (Arc::clone(&api), Arc::clone(&tokens));
        measure(c, ops, move |i| {
            let (api, tokens) = (Arc::clone(&api), Arc::clone(&tokens));
            async move { api.profile(&tokens[i % 64], None).await.map(|_| ()) }
        })
    };
    let read_1 = read(1, serial * 5).await?;
    let read_64 = read(64, parallel * 5).await?;

    // Ack → visible: after the command's answer, poll the plain (cached)
    // read until the new value shows. This is what a client without the
    // consistency token would see.
    let mut lags = Vec::new();
    for i in 0..100 {
        let token = &tokens[i % 64];
        let marker = format!("lag {run} {i}");
        api.edit(token, &marker).await?;
        let acked = Instant::now();
        loop {
            let v = api.profile(token, None).await?;
            if v["about"] == marker.as_str() {
                break;
            }
            anyhow::ensure!(acked.elapsed() < Duration::from_secs(10), "edit {i} not visible after 10 s");
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        lags.push(acked.elapsed());
    }
    lags.sort();
    let lag_ms = |p: f64| lags[((lags.len() as f64 * p) as usize).min(lags.len() - 1)].as_secs_f64() * 1e3;

    // Connection requests: each op a distinct pair. Senders are gold, so
    // the daily limit does not cap the benchmark.
    let mut senders = Vec::new();
    for i in 0..64 {
        let token = api.login(&email("s64", i)).await?;
        let res = api
            .http
            .put(format!("{}/v1/membership", api.command))
            .bearer_auth(&token)
            .json(&json!({"tier": "gold"}))
            .send()
            .await?;
        anyhow::ensure!(res.status().is_success(), "upgrade: {}", res.status());
        senders.push(token);
    }
    let recipients_64: Vec<(String, String)> = {
        let mut v = Vec::new();
        for i in 64..(parallel / 4).max(65) {
            let e = email("s64", i);
            v.push((api.user_id_of(&e).await?, api.login(&e).await?));
        }
        v
    };
    let recipients_1: Vec<(String, String)> = {
        let mut v = Vec::new();
        for i in 0..serial / 4 {
            let e = email("s1", i);
            v.push((api.user_id_of(&e).await?, api.login(&e).await?));
        }
        v
    };
    let (senders, recipients_64, recipients_1) = (Arc::new(senders), Arc::new(recipients_64), Arc::new(recipients_1));
    let request_ids_64 = Arc::new(std::sync::Mutex::new(vec![String::new(); recipients_64.len()]));
    let request_ids_1 = Arc::new(std::sync::Mutex::new(vec![String::new(); recipients_1.len()]));
    let send_phase = |c: usize, recipients: Arc<Vec<(String, String)>>, ids: Arc<std::sync::Mutex<Vec<String>>>| {
        let (api, senders) = (Arc::clone(&api), Arc::clone(&senders));
        let ops = recipients.len();
        measure(c, ops, move |i| {
            let (api, senders, recipients, ids) =
                (Arc::clone(&api), Arc::clone(&senders), Arc::clone(&recipients), Arc::clone(&ids));
            async move {
                let id = api
                    .request_id(&format!("/v1/requests/send/interested/{}", recipients[i].0), &senders[i % 64])
                    .await?;
                ids.lock().map_err(|_| anyhow::anyhow!("poisoned"))?[i] = id;
                Ok(())
            }
        })
    };
    let send_1 = send_phase(1, Arc::clone(&recipients_1), Arc::clone(&request_ids_1)).await?;
    let send_64 = send_phase(64, Arc::clone(&recipients_64), Arc::clone(&request_ids_64)).await?;
    let review_phase = |c: usize, recipients: Arc<Vec<(String, String)>>, ids: Arc<std::sync::Mutex<Vec<String>>>| {
        let api = Arc::clone(&api);
        let ids: Arc<Vec<String>> = Arc::new(ids.lock().map(|v| v.clone()).unwrap_or_default());
        measure(c, recipients.len(), move |i| {
            let (api, recipients, ids) = (Arc::clone(&api), Arc::clone(&recipients), Arc::clone(&ids));
            async move {
                api.request_id(&format!("/v1/requests/review/accepted/{}", ids[i]), &recipients[i].1).await.map(|_| ())
            }
        })
    };
    let review_1 = review_phase(1, Arc::clone(&recipients_1), request_ids_1).await?;
    let review_64 = review_phase(64, Arc::clone(&recipients_64), request_ids_64).await?;

    // Messages, between the pairs the review phase connected.
    let pairs: Arc<Vec<(String, String)>> =
        Arc::new((0..recipients_64.len()).map(|i| (senders[i % 64].clone(), recipients_64[i].0.clone())).collect());
    let message_phase = |c: usize, ops: usize| {
        let (api, pairs) = (Arc::clone(&api), Arc::clone(&pairs));
        measure(c, ops, move |i| {
            let (api, pairs) = (Arc::clone(&api), Arc::clone(&pairs));
            async move {
                let (token, to) = &pairs[i % pairs.len()];
                api.post(&format!("/v1/messages/{to}"), &json!({"text": format!("bench message {i}")}), Some(token))
                    .await?;
                Ok(())
            }
        })
    };
    let message_1 = message_phase(1, serial).await?;
    let message_64 = message_phase(64, parallel).await?;

    // History: one conversation with 120 messages; the newest page comes from
    // Redis, a page before the newest 50 from MongoDB.
    let (talker, listener) = (pairs[0].0.clone(), pairs[0].1.clone());
    let mut ids = Vec::new();
    let mut consistency = String::new();
    for i in 0..120 {
        let res = api
            .http
            .post(format!("{}/v1/messages/{listener}", api.command))
            .bearer_auth(&talker)
            .json(&json!({"text": format!("history {i}")}))
            .send()
            .await?;
        anyhow::ensure!(res.status().is_success(), "message: {}", res.status());
        consistency =
            res.headers().get("x-consistency-token").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let v: Value = res.json().await?;
        ids.push(v["messageId"].as_str().unwrap_or_default().to_owned());
    }
    // A read carrying the last write's consistency token reads MongoDB and
    // refills the cache; plain reads after it see the whole conversation.
    let res = api
        .http
        .get(format!("{}/v1/messages/{listener}?limit=50", api.query))
        .bearer_auth(&talker)
        .header("x-consistency-token", &consistency)
        .send()
        .await?;
    anyhow::ensure!(res.status().is_success(), "history: {}", res.status());
    let older_than = Arc::new(ids[120 - 60].clone());
    let (talker, listener) = (Arc::new(talker), Arc::new(listener));
    let history = |c: usize, ops: usize, before: Option<Arc<String>>| {
        let (api, talker, listener) = (Arc::clone(&api), Arc::clone(&talker), Arc::clone(&listener));
        measure(c, ops, move |_| {
            let (api, talker, listener, before) =
                (Arc::clone(&api), Arc::clone(&talker), Arc::clone(&listener), before.clone());
            async move {
                let query = before.map_or_else(String::new, |b| format!("&before={b}"));
                let v = api.get_ok(&format!("/v1/messages/{listener}?limit=50{query}"), &talker).await?;
                anyhow::ensure!(
                    v["items"].as_array().is_some_and(|a| a.len() == 50),
                    "history page not full: {} items",
                    v["items"].as_array().map_or(0, Vec::len)
                );
                Ok(())
            }
        })
    };
    let history_redis_1 = history(1, serial * 2, None).await?;
    let history_redis_64 = history(64, parallel * 2, None).await?;
    let history_mongo_1 = history(1, serial, Some(Arc::clone(&older_than))).await?;
    let history_mongo_64 = history(64, parallel / 2, Some(Arc::clone(&older_than))).await?;

    // Stream delivery: from the command's acknowledgement to the message
    // arriving on the recipient's open SSE stream.
    let recipient_token = recipients_64[1].1.clone();
    let sender_token = pairs[1].0.clone();
    let recipient_id = recipients_64[1].0.clone();
    let mut stream = api.http.get(format!("{}/v1/stream", api.query)).bearer_auth(&recipient_token).send().await?;
    anyhow::ensure!(stream.status().is_success(), "stream: {}", stream.status());
    let mut stream_lags = Vec::new();
    let mut buffer = String::new();
    for i in 0..100 {
        let marker = format!("stream {run} {i}");
        api.post(&format!("/v1/messages/{recipient_id}"), &json!({"text": marker}), Some(&sender_token)).await?;
        let acked = Instant::now();
        while !buffer.contains(&marker) {
            let chunk = tokio::time::timeout(Duration::from_secs(10), stream.chunk()).await??;
            let chunk = chunk.ok_or_else(|| anyhow::anyhow!("stream ended"))?;
            buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
        stream_lags.push(acked.elapsed());
        buffer.clear();
    }
    drop(stream);
    stream_lags.sort();
    let stream_ms =
        |p: f64| stream_lags[((stream_lags.len() as f64 * p) as usize).min(stream_lags.len() - 1)].as_secs_f64() * 1e3;

    // The feed at scale: seed users straight into the log, wait until the
    // views hold them, then read feed pages beside a plain MongoDB query.
    let client = mongodb::Client::with_uri_str(&args.mongo_uri).await?;
    let generation =
        views::generation::Generations::new(client.clone(), &args.mongo_database).current_or_create().await?;
    let mongo = client.database(&generation.database(&args.mongo_database));
    let users = mongo.collection::<mongodb::bson::Document>("users");
    let feed_directory = generation.redis_keys(&views::keys::RedisKeys::new("")).feed_directory();
    if args.feed_users > 0 {
        let last_per_partition = seed_users(&args, &run, args.feed_users, &producer).await?;
        let started = Instant::now();
        // Each partition is applied in order: once its last seeded user is
        // in the view, all of that partition's are. Point reads by _id only,
        // so the wait does not load the database it is measuring.
        for user_id in last_per_partition {
            while users.find_one(mongodb::bson::doc! { "_id": &user_id }).await?.is_none() {
                anyhow::ensure!(
                    started.elapsed() < Duration::from_secs(900),
                    "seeded users not projected within 15 min"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        println!("seeded {} users; projected in {:.1} s", args.feed_users, started.elapsed().as_secs_f64());
    }
    let in_view = users.estimated_document_count().await?;
    let viewer = Arc::new(senders[0].clone());
    let feed = |c: usize, ops: usize, page: usize| {
        let (api, viewer) = (Arc::clone(&api), Arc::clone(&viewer));
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
    };
    let feed_1 = feed(1, serial, 1).await?;
    let feed_64 = feed(64, parallel, 1).await?;
    // A deep page, within what the view holds (page 1000 at 100 000 users).
    let deep_page = (in_view as usize / 50 / 2).clamp(1, 1000);
    let feed_deep = feed(1, serial / 4, deep_page).await?;
    // The feed's floor: its two primitive reads, done plainly: 51 ids from
    // the directory, and 50 users by _id from MongoDB.
    let directory = redis::cmd("ZREVRANGE")
        .arg(&feed_directory)
        .arg(0)
        .arg(50)
        .query_async::<Vec<String>>(&mut redis.clone())
        .await?;
    let page_ids: Arc<Vec<mongodb::bson::Bson>> =
        Arc::new(directory.iter().take(50).map(|id| mongodb::bson::Bson::String(id.clone())).collect());
    let zrange = |c: usize, ops: usize| {
        let (redis, feed_directory) = (redis.clone(), feed_directory.clone());
        measure(c, ops, move |_| {
            let (mut redis, key) = (redis.clone(), feed_directory.clone());
            async move {
                let ids: Vec<String> = redis::cmd("ZREVRANGE").arg(key).arg(0).arg(50).query_async(&mut redis).await?;
                anyhow::ensure!(ids.len() == 51, "a full window");
                Ok(())
            }
        })
    };
    let mongo_in = |c: usize, ops: usize| {
        let (users, page_ids) = (users.clone(), Arc::clone(&page_ids));
        measure(c, ops, move |_| {
            let (users, page_ids) = (users.clone(), Arc::clone(&page_ids));
            async move {
                use futures::TryStreamExt;
                let filter = mongodb::bson::doc! { "_id": { "$in": page_ids.as_ref().clone() } };
                let page: Vec<mongodb::bson::Document> = users.find(filter).await?.try_collect().await?;
                anyhow::ensure!(page.len() == 50, "raw $in page not full: {} docs", page.len());
                Ok(())
            }
        })
    };
    let raw_zrange_1 = zrange(1, serial).await?;
    let raw_zrange_64 = zrange(64, parallel).await?;
    let raw_in_1 = mongo_in(1, serial).await?;
    let raw_in_64 = mongo_in(64, parallel).await?;
    // For context: what the plain query costs on this server (no index use).
    let naive = {
        let users = users.clone();
        measure(1, 3, move |_| {
            let users = users.clone();
            async move {
                use futures::TryStreamExt;
                let page: Vec<mongodb::bson::Document> = users
                    .find(mongodb::bson::doc! {})
                    .sort(mongodb::bson::doc! {"_id": -1})
                    .limit(50)
                    .await?
                    .try_collect()
                    .await?;
                anyhow::ensure!(page.len() == 50, "raw sorted page not full: {} docs", page.len());
                Ok(())
            }
        })
        .await?
    };

    println!("\nDevConnect benchmark (run {run})");
    println!(
        "{:<34} {:>3} {:>9} {:>9} {:>10}   {:>9} {:>9}",
        "operation", "c", "p50 ms", "p99 ms", "ops/s", "p50/floor", "floor/thru"
    );
    row("raw: produce (acks=all)", 1, produce_1, None);
    row("raw: produce (acks=all)", 64, produce_64, None);
    row("raw: redis GET", 1, get_1, None);
    row("raw: redis GET", 64, get_64, None);
    row("POST /v1/auth/signup", 1, signup_1, Some(produce_1));
    row("POST /v1/auth/signup", 64, signup_64, Some(produce_64));
    row("POST /v1/auth/login", 1, login_1, Some(produce_1));
    row("POST /v1/auth/login", 64, login_64, Some(produce_64));
    row("PATCH /v1/profile", 1, edit_1, Some(produce_1));
    row("PATCH /v1/profile", 64, edit_64, Some(produce_64));
    row("GET /v1/profile (cached)", 1, read_1, Some(get_1));
    row("GET /v1/profile (cached)", 64, read_64, Some(get_64));
    row("POST /v1/requests/send", 1, send_1, Some(produce_1));
    row("POST /v1/requests/send", 64, send_64, Some(produce_64));
    row("POST /v1/requests/review", 1, review_1, Some(produce_1));
    row("POST /v1/requests/review", 64, review_64, Some(produce_64));
    row("POST /v1/messages/{to}", 1, message_1, Some(produce_1));
    row("POST /v1/messages/{to}", 64, message_64, Some(produce_64));
    row("GET history newest 50 (Redis)", 1, history_redis_1, Some(get_1));
    row("GET history newest 50 (Redis)", 64, history_redis_64, Some(get_64));
    row("GET history older 50 (MongoDB)", 1, history_mongo_1, Some(raw_in_1));
    row("GET history older 50 (MongoDB)", 64, history_mongo_64, Some(raw_in_64));
    println!(
        "ack -> message on the recipient's open stream (100 messages): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        stream_ms(0.5),
        stream_ms(0.99),
        stream_ms(1.0)
    );
    println!("feed, with {in_view} users in the view:");
    row("raw: redis ZREVRANGE 51", 1, raw_zrange_1, None);
    row("raw: redis ZREVRANGE 51", 64, raw_zrange_64, None);
    row("raw: mongo find 50 by _id $in", 1, raw_in_1, None);
    row("raw: mongo find 50 by _id $in", 64, raw_in_64, None);
    row("raw: mongo find sort(_id) limit 50", 1, naive, None);
    row("GET /v1/feed page 1, limit 50", 1, feed_1, Some(raw_in_1));
    row("GET /v1/feed page 1, limit 50", 64, feed_64, Some(raw_in_64));
    row(&format!("GET /v1/feed page {deep_page}, limit 50"), 1, feed_deep, Some(raw_in_1));
    println!("(feed ratios are against the plain MongoDB $in of 50 ids, the dearer of its two primitive reads)");
    println!(
        "ack -> visible in query (cached read, 100 edits): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lag_ms(0.5),
        lag_ms(0.99),
        lag_ms(1.0)
    );
    println!("(signup and login include argon2id hashing: 19 MiB, 2 passes, on this machine's cores)");
    Ok(())
}

/// Seeds `count` registrations straight into user-events (pipelined), as a
/// bulk import would. They carry no credentials, so nobody can log in as
/// them; the command API learns of them at its next start.
async fn seed_users(
    args: &Args,
    run: &str,
    count: usize,
    producer: &rdkafka::producer::FutureProducer,
) -> anyhow::Result<Vec<String>> {
    use events::user::{Profile, UserEvent, UserRegistered};
    use events::{Envelope, Event, EventMetadata, Topic, TopicNames};
    let topic = TopicNames::new(args.topic_prefix.clone()).name(Topic::UserEvents);
    let started = Instant::now();
    let mut in_flight = futures::stream::FuturesUnordered::new();
    let mut last: std::collections::HashMap<i32, (i64, String)> = std::collections::HashMap::new();
    for i in 0..count {
        let user_id = uuid::Uuid::now_v7();
        let envelope = Envelope {
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
        };
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

/// Keeps, per partition, the user id at the highest offset.
fn note_last(last: &mut std::collections::HashMap<i32, (i64, String)>, (partition, offset, id): (i32, i64, String)) {
    let entry = last.entry(partition).or_insert((-1, String::new()));
    if offset > entry.0 {
        *entry = (offset, id);
    }
}
