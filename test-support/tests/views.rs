//! The views are derived: they survive a cache loss, and rebuilding them
//! from offset 0 (over nothing, or over themselves) gives the same views.

use mongodb::bson::{Document, doc};
use reqwest::{Method, StatusCode};
use serde_json::json;
use test_support::{PASSWORD, TestEnv};

/// Every document of the view collections, sorted, as comparable text.
async fn snapshot(env: &TestEnv) -> Vec<String> {
    use futures::TryStreamExt;
    let db = env.mongo().await;
    let mut all = Vec::new();
    for name in [
        "users",
        "sessions",
        "connection_requests",
        "relations",
        "messages",
        "presence",
        "notifications",
        "notification_counters",
        "daily_stats",
        "processed_events",
    ] {
        let docs: Vec<Document> = db
            .collection::<Document>(name)
            .find(doc! {})
            .sort(doc! {"_id": 1})
            .await
            .expect("find")
            .try_collect()
            .await
            .expect("docs");
        all.extend(docs.into_iter().map(|d| format!("{name}: {}", canonical(d))));
    }
    all
}

/// Sets are compared as sets: `$addToSet` appends in arrival order, and
/// events of different pairs arrive from different partitions.
/// Field order carries no meaning either: an upsert with `$inc` creates
/// fields in the order their first increments happen to arrive.
fn canonical(mut d: Document) -> Document {
    for field in ["related", "connections"] {
        if let Ok(list) = d.get_array_mut(field) {
            list.sort_by_key(|v| v.to_string());
        }
    }
    let mut fields: Vec<(String, mongodb::bson::Bson)> = d.into_iter().collect();
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    fields.into_iter().collect()
}

/// Waits until the projector's checkpoints cover `token`, by asking the
/// query API (which waits on the same checkpoints) for a consistent read.
async fn caught_up(env: &TestEnv, token: &str, consistency: &str) {
    let reply = env.query("/v1/profile", token, Some(consistency)).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
}

async fn all_caught_up(env: &TestEnv, writes: &[(String, String)]) {
    futures::future::join_all(writes.iter().map(|(token, consistency)| caught_up(env, token, consistency))).await;
}

#[tokio::test]
async fn redis_loss_keeps_reads_sessions_and_revocations() {
    let env = TestEnv::start().await;
    let email = env.email("flush");
    let (user_id, _) = env.signup(&email).await;
    let (live, consistency) = env.login(&email, PASSWORD).await;
    let (revoked, _) = env.login(&email, PASSWORD).await;
    caught_up(&env, &live, &consistency).await;
    let logout = env.command(Method::POST, "/v1/auth/logout", None, Some(&revoked)).await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    caught_up(&env, &live, &logout.consistency()).await;

    let mut redis = env.redis().await;
    let () = redis::cmd("FLUSHALL").query_async(&mut redis).await.expect("flushall");

    let own = env.query("/v1/profile", &live, None).await;
    assert_eq!(own.status, StatusCode::OK, "reads fall back to MongoDB: {:?}", own.body);
    assert_eq!(own.body["userId"], user_id.as_str());
    let again = env.query("/v1/profile", &revoked, None).await;
    assert_eq!(again.status, StatusCode::UNAUTHORIZED, "a revoked session stays revoked");
    // The read refilled the cache.
    let cached: Option<String> =
        redis::cmd("GET").arg(format!("user:{user_id}")).query_async(&mut redis).await.expect("get");
    assert!(cached.is_some(), "read-through refill");
    // Writes still work too (the throttle counters are technical state).
    env.login(&email, PASSWORD).await;
}

#[tokio::test]
async fn rebuilding_from_offset_zero_gives_the_same_views() {
    let mut env = TestEnv::start().await;
    // Each user's last write: users spread over partitions, and a rebuild
    // is only complete once every partition has caught up.
    let mut last_writes = Vec::new();
    let mut users: Vec<(String, String)> = Vec::new();
    for name in ["r1", "r2", "r3"] {
        let email = env.email(name);
        let (user_id, _) = env.signup(&email).await;
        let (token, _) = env.login(&email, PASSWORD).await;
        let edit = env
            .command(Method::PATCH, "/v1/profile", Some(&json!({"about": format!("I am {name}")})), Some(&token))
            .await;
        assert_eq!(edit.status, StatusCode::OK);
        let (second, _) = env.login(&email, PASSWORD).await;
        let logout = env.command(Method::POST, "/v1/auth/logout", None, Some(&second)).await;
        assert_eq!(logout.status, StatusCode::NO_CONTENT);
        last_writes.push((token.clone(), logout.consistency()));
        users.push((user_id, token));
    }
    // The social graph too: a request accepted, another ignored.
    let sent = env
        .command(Method::POST, &format!("/v1/requests/send/interested/{}", users[1].0), None, Some(&users[0].1))
        .await;
    assert_eq!(sent.status, StatusCode::CREATED);
    let request = sent.body["requestId"].as_str().expect("id").to_owned();
    let accepted =
        env.command(Method::POST, &format!("/v1/requests/review/accepted/{request}"), None, Some(&users[1].1)).await;
    assert_eq!(accepted.status, StatusCode::OK);
    let ignored =
        env.command(Method::POST, &format!("/v1/requests/send/ignored/{}", users[0].0), None, Some(&users[2].1)).await;
    assert_eq!(ignored.status, StatusCode::CREATED);
    let hello = env
        .command(
            Method::POST,
            &format!("/v1/messages/{}", users[0].0),
            Some(&json!({"text": "thanks!"})),
            Some(&users[1].1),
        )
        .await;
    assert_eq!(hello.status, StatusCode::CREATED, "{:?}", hello.body);
    let hello_id = hello.body["messageId"].as_str().expect("id").to_owned();
    let read = env.command(Method::POST, &format!("/v1/messages/{hello_id}/read"), None, Some(&users[0].1)).await;
    assert_eq!(read.status, StatusCode::NO_CONTENT);
    last_writes.push((users[0].1.clone(), read.consistency()));
    let beat = env.command(Method::POST, "/v1/presence/heartbeat", None, Some(&users[2].1)).await;
    assert_eq!(beat.status, StatusCode::NO_CONTENT);
    last_writes.push((users[2].1.clone(), beat.consistency()));
    let upgraded = env.command(Method::PUT, "/v1/membership", Some(&json!({"tier": "gold"})), Some(&users[2].1)).await;
    assert_eq!(upgraded.status, StatusCode::OK);
    last_writes.push((users[1].1.clone(), accepted.consistency()));
    last_writes.push((users[2].1.clone(), ignored.consistency()));
    last_writes.push((users[2].1.clone(), upgraded.consistency()));
    all_caught_up(&env, &last_writes).await;
    let before = snapshot(&env).await;
    assert_eq!(before.iter().filter(|d| d.starts_with("users:")).count(), 3);
    assert_eq!(before.iter().filter(|d| d.starts_with("connection_requests:")).count(), 2);
    assert_eq!(before.iter().filter(|d| d.starts_with("relations:")).count(), 3);
    assert_eq!(before.iter().filter(|d| d.starts_with("messages:")).count(), 1);
    assert_eq!(before.iter().filter(|d| d.starts_with("presence:")).count(), 1);
    // request (r1 -> r2) + accepted + the message: three notifications.
    assert_eq!(before.iter().filter(|d| d.starts_with("notifications:")).count(), 3);
    assert_eq!(before.iter().filter(|d| d.starts_with("daily_stats:")).count(), 1);

    // Replay over the existing views: applying everything again is a no-op.
    env.stop_projector();
    env.projector_group = format!("{}-again", env.projector_group);
    env.start_projector().await;
    all_caught_up(&env, &last_writes).await;
    assert_eq!(snapshot(&env).await, before, "replaying over existing views changes nothing");

    // Total loss: drop every view and cache, rebuild from offset 0.
    env.stop_projector();
    env.mongo().await.drop().await.expect("drop database");
    let mut redis = env.redis().await;
    let () = redis::cmd("FLUSHALL").query_async(&mut redis).await.expect("flushall");
    env.projector_group = format!("{}-rebuild", env.projector_group);
    env.start_projector().await;
    all_caught_up(&env, &last_writes).await;
    assert_eq!(snapshot(&env).await, before, "rebuilt views equal the originals");
}

#[tokio::test]
async fn ops_endpoints_and_api_documents() {
    let env = TestEnv::start().await;
    for base in [env.command_url(""), env.query_url(""), format!("http://127.0.0.1:{}", env.projector_port)] {
        let health = env.http.get(format!("{base}/healthz")).send().await.expect("healthz");
        assert!(health.status().is_success(), "{base}");
        let ready: serde_json::Value =
            env.http.get(format!("{base}/readyz")).send().await.expect("readyz").json().await.expect("json");
        assert_eq!(ready["ready"], true, "{base}: {ready}");
        let metrics =
            env.http.get(format!("{base}/metrics")).send().await.expect("metrics").text().await.expect("text");
        assert!(metrics.contains("http_requests_total"), "{base}: {metrics}");
    }
    for (base, path) in [(env.command_url(""), "/v1/auth/signup"), (env.query_url(""), "/v1/profile")] {
        let doc: serde_json::Value =
            env.http.get(format!("{base}/openapi.json")).send().await.expect("openapi").json().await.expect("json");
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")), "{doc}");
        assert!(doc["paths"].get(path).is_some(), "{path} documented");
        let docs = env.http.get(format!("{base}/docs/")).send().await.expect("docs");
        assert_eq!(docs.status(), StatusCode::OK);
        assert!(docs.text().await.expect("html").contains("swagger"), "the explorer page is served locally");
    }
    // The correlation id comes back, and is echoed from the client when sane.
    let reply = env.send(Method::GET, &env.command_url("/healthz"), None, &[("x-correlation-id", "trace-me-42")]).await;
    assert_eq!(reply.header("x-correlation-id").as_deref(), Some("trace-me-42"));
}

#[tokio::test]
async fn services_refuse_to_start_without_a_proper_secret() {
    let env = TestEnv::start().await;
    for binary in ["command-api", "query-api"] {
        for secret in [None, Some("too-short")] {
            let mut vars: Vec<(String, String)> = vec![
                ("DEVCONNECT_KAFKA_BROKERS".into(), env.servers.kafka.clone()),
                ("DEVCONNECT_MONGO_URI".into(), env.servers.mongo_uri.clone()),
                ("DEVCONNECT_REDIS_URL".into(), env.redis_url()),
                ("DEVCONNECT_COMMAND_API_ADDR".into(), format!("127.0.0.1:{}", test_support::free_port())),
                ("DEVCONNECT_QUERY_API_ADDR".into(), format!("127.0.0.1:{}", test_support::free_port())),
            ];
            if let Some(s) = secret {
                vars.push(("DEVCONNECT_JWT_SECRET".into(), s.into()));
            }
            let mut proc = env.spawn(binary, &vars);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            let status = loop {
                if let Some(status) = proc.exited() {
                    break status;
                }
                assert!(std::time::Instant::now() < deadline, "{binary} started without a valid secret");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            };
            assert!(!status.success());
            assert!(
                proc.log_text().contains("DEVCONNECT_JWT_SECRET") || proc.log_text().contains("jwt-secret"),
                "{}",
                proc.log_text()
            );
        }
    }
}
