//! Any part can crash, and the views converge to exactly what was
//! acknowledged, with no operator: the projector killed under load, MongoDB
//! killed after a batch, the broker killed, Redis stopped or hung, Redis
//! flushed while the projector is behind. Throughout, a logged-out token
//! stays refused on both APIs.
#![allow(clippy::print_stderr)] // each test reports how long convergence took

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use test_support::{
    PASSWORD, Servers, TestEnv, eventually, free_port, mongo_uri, start_private_broker, start_private_mongo,
};

/// Two connected users, `a` and `b`, plus a second session of `a` that was
/// logged out.
struct Cast {
    a_token: String,
    b: String,
    b_token: String,
    revoked: String,
}

async fn cast(env: &TestEnv) -> Cast {
    let (_, a_token) = env.user("a").await;
    let (b, b_token) = env.user("b").await;
    env.connect(&a_token, &b, &b_token).await;
    let (revoked, _) = env.login(&env.email("a"), PASSWORD).await;
    let logout = env.command(Method::POST, "/v1/auth/logout", None, Some(&revoked)).await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT, "{:?}", logout.body);
    Cast { a_token, b, b_token, revoked }
}

/// A logged-out token is refused by both APIs.
async fn assert_refused(env: &TestEnv, token: &str, when: &str) {
    let read = env.query("/v1/connections", token, None).await;
    assert_eq!(read.status, StatusCode::UNAUTHORIZED, "{when}: the query API let a revoked token in: {:?}", read.body);
    let write = env.command(Method::PATCH, "/v1/profile", Some(&json!({"about": "intruder"})), Some(token)).await;
    // While the broker is down the command API may not be serving at all
    // (503, re-reading the log): that refuses too.
    assert!(
        [StatusCode::UNAUTHORIZED, StatusCode::SERVICE_UNAVAILABLE].contains(&write.status),
        "{when}: the command API let a revoked token in: {write:?}"
    );
}

/// Posts one command with an Idempotency-Key, retried while the answer is
/// a 503 or no answer at all (its outcome is unknown then: the append may
/// have landed), for up to 60 s; returns the 201's body. Anything else
/// fails the test.
async fn post_until_definitive(http: &reqwest::Client, url: &str, token: &str, body: Option<&Value>) -> Value {
    let key = uuid::Uuid::new_v4().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut request = http.post(url).bearer_auth(token).header("idempotency-key", &key);
        if let Some(body) = body {
            request = request.json(body);
        }
        match request.send().await {
            Ok(reply) if reply.status() == StatusCode::CREATED => return reply.json().await.expect("json"),
            Ok(reply) if reply.status() != StatusCode::SERVICE_UNAVAILABLE => {
                panic!("{url} refused: {} {:?}", reply.status(), reply.text().await);
            }
            _ => {
                assert!(Instant::now() < deadline, "{url}: no definitive answer within 60 s");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Sends `count` messages from one user to another, one every `gap`, with
/// a client of its own (so it runs while the test kills things); returns
/// their ids, every one acknowledged.
async fn send_messages(command_url: String, token: String, to: String, count: usize, gap: Duration) -> Vec<String> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
    let url = format!("{command_url}/v1/messages/{to}");
    let mut acknowledged = Vec::new();
    for i in 0..count {
        let body = json!({ "text": format!("message {i}") });
        let sent = post_until_definitive(&http, &url, &token, Some(&body)).await;
        acknowledged.push(sent["messageId"].as_str().expect("messageId").to_owned());
        tokio::time::sleep(gap).await;
    }
    acknowledged
}

/// Each of `tokens` sends `to` an interested request, one every `gap`.
async fn send_requests(command_url: String, tokens: Vec<String>, to: String, gap: Duration) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
    let url = format!("{command_url}/v1/requests/send/interested/{to}");
    for token in tokens {
        post_until_definitive(&http, &url, &token, None).await;
        tokio::time::sleep(gap).await;
    }
}

/// Every message id of the conversation, newest first, paging through.
async fn conversation(env: &TestEnv, token: &str, other: &str) -> Result<Vec<String>, String> {
    let mut ids = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let path = match &before {
            Some(b) => format!("/v1/messages/{other}?limit=50&before={b}"),
            None => format!("/v1/messages/{other}?limit=50"),
        };
        let page = env.query(&path, token, None).await;
        if page.status != StatusCode::OK {
            return Err(format!("history: {} {:?}", page.status, page.body));
        }
        for item in page.body["items"].as_array().into_iter().flatten() {
            ids.push(item["messageId"].as_str().unwrap_or_default().to_owned());
        }
        match page.body["nextBefore"].as_str() {
            Some(next) => before = Some(next.to_owned()),
            None => return Ok(ids),
        }
    }
}

/// Waits until the views hold exactly what was acknowledged: every message
/// once, `b`'s unread count (one request, one per message), and today's
/// counts. Then, once the projector has nothing left to apply, checks again:
/// equal, not merely reached (nothing counted twice).
/// Today's counts a test expects besides its messages.
#[derive(Debug, Clone, Copy)]
struct Counts {
    signups: u64,
    logins: u64,
    /// Connection requests to `b` (one from `a`, plus any others).
    requests: u64,
}

/// The cast alone: two signups, three log-ins (one session logged out),
/// one request.
const CAST: Counts = Counts { signups: 2, logins: 3, requests: 1 };

async fn assert_converged(env: &TestEnv, cast: &Cast, messages: &[String], counts: Counts, within: Duration) {
    let started = Instant::now();
    let expected_unread = counts.requests + messages.len() as u64;
    let check = || async {
        let mut seen = conversation(env, &cast.a_token, &cast.b).await?;
        seen.sort();
        let mut wanted = messages.to_vec();
        wanted.sort();
        if seen != wanted {
            return Err(format!("messages: {} in the views, {} acknowledged", seen.len(), wanted.len()));
        }
        let inbox = env.query("/v1/notifications", &cast.b_token, None).await;
        if inbox.body["unreadCount"] != expected_unread {
            return Err(format!("unread: {:?}, expected {expected_unread}", inbox.body["unreadCount"]));
        }
        let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
        let stats = env.query(&format!("/v1/stats/daily?from={today}&to={today}"), &cast.a_token, None).await;
        let day = &stats.body["days"][0];
        let seen = (&day["signups"], &day["logins"], &day["requestsSent"], &day["messagesSent"]);
        let wanted = (&json!(counts.signups), &json!(counts.logins), &json!(counts.requests), &json!(messages.len()));
        if seen != wanted {
            return Err(format!("daily stats {seen:?}, expected {wanted:?}"));
        }
        Ok(())
    };
    eventually("the views converge", within, check).await;
    let converged = started.elapsed();
    env.projector_caught_up().await;
    check().await.unwrap_or_else(|e| panic!("after catching up, the views moved past what was acknowledged: {e}"));
    eprintln!("converged {converged:?} after the last fault");
}

#[tokio::test]
async fn projector_killed_three_times_under_load_converges_exactly() {
    let mut env = TestEnv::start().await;
    let cast = cast(&env).await;
    let mut senders = Vec::new();
    for i in 0..6 {
        senders.push(env.user(&format!("sender{i}")).await.1);
    }
    let workload = tokio::spawn(send_messages(
        env.command_url(""),
        cast.a_token.clone(),
        cast.b.clone(),
        60,
        Duration::from_millis(100),
    ));
    // Requests and their notifications in the same batches as the messages.
    let requests =
        tokio::spawn(send_requests(env.command_url(""), senders, cast.b.clone(), Duration::from_millis(900)));
    // Three crashes within ten seconds, each restarted at once, in the
    // middle of batches of messages.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        env.crash_and_restart_projector();
    }
    let messages = workload.await.expect("workload");
    assert_eq!(messages.len(), 60, "the command API does not need the projector");
    requests.await.expect("requests");
    assert_refused(&env, &cast.revoked, "after the crashes").await;
    // The dead members' partitions are taken over (after their sessions
    // expire and nobody advances them for DEVCONNECT_PROJECTOR_STALL_AFTER).
    let counts = Counts { signups: 8, logins: 9, requests: 7 };
    assert_converged(&env, &cast, &messages, counts, Duration::from_secs(60)).await;
    let metrics = env
        .http
        .get(format!("http://127.0.0.1:{}/metrics", env.projector_port))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let unowned = metrics
        .lines()
        .find_map(|l| l.strip_prefix("projector_unowned_partitions "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert_eq!(unowned, Some(0.0), "{metrics}");
}

#[tokio::test]
async fn mongodb_killed_right_after_a_batch_is_healed_from_the_log() {
    let dir = std::env::temp_dir().join(format!("devconnect-mongo-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let port = free_port();
    let mut mongo = start_private_mongo(&dir, port).await;
    let mut servers = Servers::from_env();
    servers.mongo_uri = mongo_uri(port);
    let env = TestEnv::start_on(servers, Vec::new()).await;
    let cast = cast(&env).await;

    // Messages keep coming before, during and after the outage: the first
    // batch after MongoDB's return must not paper over a batch it lost.
    let workload = tokio::spawn(send_messages(
        env.command_url(""),
        cast.a_token.clone(),
        cast.b.clone(),
        150,
        Duration::from_millis(30),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let edit = env.command(Method::PATCH, "/v1/profile", Some(&json!({"about": "after"})), Some(&cast.a_token)).await;
    assert_eq!(edit.status, StatusCode::OK, "{:?}", edit.body);
    let read = env.query("/v1/profile", &cast.a_token, Some(&edit.consistency())).await;
    assert_eq!((read.status, &read.body["about"]), (StatusCode::OK, &json!("after")));
    // At once: within the server's sync window, so it may lose the batch.
    mongo.crash();
    assert_refused(&env, &cast.revoked, "while MongoDB is down").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _mongo = start_private_mongo(&dir, port).await;
    let messages = workload.await.expect("workload");
    assert_eq!(messages.len(), 150, "the command API does not need MongoDB for messages");

    eventually("the edit is read back with its consistency token", Duration::from_secs(60), || async {
        let read = env.query("/v1/profile", &cast.a_token, Some(&edit.consistency())).await;
        if read.status == StatusCode::OK && read.body["about"] == "after" { Ok(()) } else { Err(format!("{read:?}")) }
    })
    .await;
    assert_converged(&env, &cast, &messages, CAST, Duration::from_secs(60)).await;
    assert_refused(&env, &cast.revoked, "after MongoDB came back").await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_projector_outlives_a_broker_crash_and_catches_up() {
    let dir = std::env::temp_dir().join(format!("devconnect-broker-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let port = free_port();
    let mut broker = start_private_broker(&dir, port).await;
    let brokers = format!("127.0.0.1:{port}");
    let mut env = TestEnv::start_with(vec![
        ("DEVCONNECT_KAFKA_BROKERS", brokers.as_str()),
        ("DEVCONNECT_KAFKA_DELIVERY_TIMEOUT", "2s"),
    ])
    .await;
    // The test's own reads of topics go to the private broker too.
    env.servers.kafka = brokers.clone();
    let cast = cast(&env).await;
    // Messages keep coming before, during and after the crash: a broker
    // killed under load must come back usable (Tansu 0.6's storage died on
    // the idempotent producer's state after such a restart).
    let workload = tokio::spawn(send_messages(
        env.command_url(""),
        cast.a_token.clone(),
        cast.b.clone(),
        100,
        Duration::from_millis(30),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.crash();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Reads go on from the views meanwhile.
    let profile = env.query("/v1/profile", &cast.a_token, None).await;
    assert_eq!(profile.status, StatusCode::OK, "{:?}", profile.body);
    assert_refused(&env, &cast.revoked, "while the broker is down").await;
    let projector = env.projector.as_mut().expect("projector");
    assert!(projector.exited().is_none(), "the projector exited:\n{}", projector.log_text());

    let broker = start_private_broker(&dir, port).await;
    let messages = workload.await.expect("workload");
    assert_eq!(messages.len(), 100, "every message ends acknowledged once the broker is back");
    assert_converged(&env, &cast, &messages, CAST, Duration::from_secs(60)).await;
    let projector = env.projector.as_mut().expect("projector");
    assert!(projector.exited().is_none(), "the projector exited:\n{}", projector.log_text());
    assert!(!broker.log_text().contains("panicked"), "the broker crashed inside:\n{}", broker.log_text());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn views_advance_while_redis_is_down_and_logout_holds() {
    let mut env = TestEnv::start().await;
    let cast = cast(&env).await;
    let (second, _) = env.login(&env.email("b"), PASSWORD).await;

    env.stop_redis();
    // A logout while Redis is down holds on both APIs within a second.
    let logout = env.command(Method::POST, "/v1/auth/logout", None, Some(&second)).await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT, "{:?}", logout.body);
    // Within one second of the 204 (the query API polls the durable
    // revocation records every 250 ms; Redis cannot help here).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_refused(&env, &second, "redis down").await;
    assert_refused(&env, &cast.revoked, "redis down").await;

    // Writes are acknowledged, and the MongoDB views keep advancing.
    let messages = send_messages(env.command_url(""), cast.a_token.clone(), cast.b.clone(), 5, Duration::ZERO).await;
    assert_eq!(messages.len(), 5);
    let edit = env.command(Method::PATCH, "/v1/profile", Some(&json!({"about": "during"})), Some(&cast.a_token)).await;
    assert_eq!(edit.status, StatusCode::OK, "{:?}", edit.body);
    let read = env.query("/v1/profile", &cast.a_token, Some(&edit.consistency())).await;
    assert_eq!((read.status, &read.body["about"]), (StatusCode::OK, &json!("during")), "views stalled: {read:?}");

    // Redis comes back empty.
    env.start_redis().await;
    assert_refused(&env, &second, "redis back, empty").await;
    assert_refused(&env, &cast.revoked, "redis back, empty").await;
    assert_converged(&env, &cast, &messages, Counts { logins: 4, ..CAST }, Duration::from_secs(60)).await;
    let cached = env.query("/v1/profile", &cast.a_token, None).await;
    assert_eq!(cached.body["about"], "during");
}

#[tokio::test]
async fn a_hung_redis_leaves_no_stale_cache_behind() {
    let env = TestEnv::start().await;
    let (a, token) = env.user("a").await;
    let first = env.command(Method::PATCH, "/v1/profile", Some(&json!({"about": "before"})), Some(&token)).await;
    assert_eq!(env.query("/v1/profile", &token, Some(&first.consistency())).await.status, StatusCode::OK);
    let key = env.view_key(&format!("user:{a}")).await;
    let mut redis = env.redis().await;
    eventually("the profile is cached", Duration::from_secs(10), || {
        let (mut redis, key) = (redis.clone(), key.clone());
        async move {
            let cached: Option<String> =
                redis::cmd("GET").arg(&key).query_async(&mut redis).await.map_err(|e| e.to_string())?;
            match cached {
                Some(json) if json.contains("before") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;

    // Hung, not gone: Redis keeps the old entry while the projector cannot
    // refresh it.
    let redis_proc = env.redis.as_ref().expect("redis");
    redis_proc.pause();
    // Two batches: the views must not wait for Redis after the first.
    for about in ["during", "during, again"] {
        let edit = env.command(Method::PATCH, "/v1/profile", Some(&json!({ "about": about })), Some(&token)).await;
        assert_eq!(edit.status, StatusCode::OK, "{:?}", edit.body);
        let durable = env.query("/v1/profile", &token, Some(&edit.consistency())).await;
        assert_eq!((durable.status, &durable.body["about"]), (StatusCode::OK, &json!(about)), "{durable:?}");
    }
    redis_proc.resume();

    // Once Redis answers, the old entry is dropped or replaced, never kept.
    eventually("the cache holds no stale profile", Duration::from_secs(30), || {
        let (mut redis, key) = (redis.clone(), key.clone());
        async move {
            let cached: Option<String> =
                redis::cmd("GET").arg(&key).query_async(&mut redis).await.map_err(|e| e.to_string())?;
            match cached {
                Some(json) if json.contains("before") => Err(json),
                _ => Ok(()),
            }
        }
    })
    .await;
    let read = env.query("/v1/profile", &token, None).await;
    assert_eq!(read.body["about"], "during, again", "{read:?}");
    let _: () = redis::cmd("PING").query_async(&mut redis).await.expect("redis answers");
}

#[tokio::test]
async fn a_flushed_redis_does_not_bring_a_logged_out_token_back() {
    let mut env = TestEnv::start().await;
    let (_, token) = env.user("a").await;
    // The projector is behind: it never sees the new session or its logout.
    env.stop_projector();
    let (second, _) = env.login(&env.email("a"), PASSWORD).await;
    let logout = env.command(Method::POST, "/v1/auth/logout", None, Some(&second)).await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    let mut redis = env.redis().await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut redis).await.expect("flushall");
    // Within one second of the 204, with the write-through key gone and the
    // session never projected.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_refused(&env, &second, "redis flushed, projector stopped").await;
    // The live session still works.
    assert_eq!(env.query("/v1/connections", &token, None).await.status, StatusCode::OK);

    // And after the projector is back, still.
    env.start_projector().await;
    env.projector_caught_up().await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut redis).await.expect("flushall");
    assert_refused(&env, &second, "projector back, redis flushed again").await;
}
