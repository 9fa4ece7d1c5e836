//! The views are derived (docs/design.md §1, §8): rebuilding them from offset 0
//! (into a new generation, over themselves, after a total loss, or killed
//! and resumed) gives the same views, and readers switch over without
//! seeing a half-built one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::TryStreamExt;

use events::Topic;
use reqwest::{Method, StatusCode};
use serde_json::json;
use test_support::{LEGACY_RECORD, LEGACY_USER, PASSWORD, TestEnv, assert_same_views, wait_exit};

fn ok(reply: &test_support::Reply, what: &str) -> String {
    assert!(reply.status.is_success(), "{what}: {} {:?}", reply.status, reply.body);
    reply.consistency()
}

/// Every event type, through the HTTP APIs, plus one recorded v1 event.
/// Returns a token and the consistency tokens of the writes.
async fn mixed_workload(env: &TestEnv) -> (String, Vec<String>) {
    let (a, a_token) = env.user("alice").await;
    let (b, b_token) = env.user("bob").await;
    let (_, c_token) = env.user("carol").await;
    let (d, d_token) = env.user("dave").await;
    let mut writes = Vec::new();
    let c = |m, p: String, body: Option<serde_json::Value>, token: &str| {
        let token = token.to_owned();
        async move { env.command(m, &p, body.as_ref(), Some(&token)).await }
    };
    let edit =
        c(Method::PATCH, "/v1/profile".into(), Some(json!({"about": "$about {braces}", "skills": ["rust"]})), &a_token);
    writes.push(ok(&edit.await, "profile"));
    writes.push(ok(&c(Method::PUT, "/v1/membership".into(), Some(json!({"tier": "gold"})), &b_token).await, "tier"));
    let (second, _) = env.login(&env.email("carol"), PASSWORD).await;
    writes.push(ok(&c(Method::POST, "/v1/auth/logout".into(), None, &second).await, "logout"));
    let change = json!({"currentPassword": PASSWORD, "newPassword": "N3w!password"});
    writes.push(ok(&c(Method::PUT, "/v1/profile/password".into(), Some(change), &d_token).await, "password"));

    writes.push(ok(&env.connect(&a_token, &b, &b_token).await, "connect"));
    writes.push(ok(&c(Method::POST, format!("/v1/requests/send/ignored/{a}"), None, &c_token).await, "ignore"));
    let asked = c(Method::POST, format!("/v1/requests/send/interested/{a}"), None, &d_token).await;
    writes.push(ok(&asked, "ask"));
    let request = asked.body["requestId"].as_str().expect("request id").to_owned();
    writes
        .push(ok(&c(Method::POST, format!("/v1/requests/review/rejected/{request}"), None, &a_token).await, "reject"));

    let sent = c(Method::POST, format!("/v1/messages/{a}"), Some(json!({"text": "hi alice"})), &b_token).await;
    writes.push(ok(&sent, "message"));
    let message = sent.body["messageId"].as_str().expect("message id").to_owned();
    writes.push(ok(&c(Method::POST, format!("/v1/messages/{message}/delivered"), None, &a_token).await, "delivered"));
    writes.push(ok(&c(Method::POST, format!("/v1/messages/{message}/read"), None, &a_token).await, "read"));
    let reply = c(Method::POST, format!("/v1/messages/{b}"), Some(json!({"text": "hello bob"})), &a_token).await;
    writes.push(ok(&reply, "reply"));

    writes.push(ok(&c(Method::POST, "/v1/presence/heartbeat".into(), None, &c_token).await, "heartbeat"));
    writes.push(ok(&c(Method::POST, "/v1/presence/offline".into(), None, &c_token).await, "offline"));
    writes.push(ok(&c(Method::POST, "/v1/presence/heartbeat".into(), None, &a_token).await, "heartbeat"));

    let inbox = env.query("/v1/notifications", &b_token, writes.last().map(String::as_str)).await;
    let first = inbox.body["items"][0]["notificationId"].as_str().expect("a notification").to_owned();
    writes.push(ok(&c(Method::POST, format!("/v1/notifications/{first}/read"), None, &b_token).await, "notified"));

    env.produce_raw(Topic::UserEvents, LEGACY_USER, LEGACY_RECORD.trim().as_bytes(), &[]).await;
    for consistency in &writes {
        let reply = env.query("/v1/profile", &a_token, Some(consistency)).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    }
    let legacy = env.wait_for_user(&a_token, LEGACY_USER).await;
    // Upcast: v1 kept the raw email and a comma-separated skills string.
    assert_eq!(legacy["skills"], json!(["cobol", "compilers"]), "{legacy}");
    let _ = d;
    (a_token, writes)
}

/// The projector updates Redis just after MongoDB: take snapshots until two
/// in a row agree.
async fn settled_snapshot(env: &TestEnv, generation: &str) -> Vec<String> {
    let mut last = env.view_snapshot(generation).await;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let next = env.view_snapshot(generation).await;
        if next == last {
            return next;
        }
        last = next;
    }
    panic!("the views of {generation} never settled");
}

fn count(snapshot: &[String], prefix: &str) -> usize {
    snapshot.iter().filter(|line| line.starts_with(prefix)).count()
}

async fn replay(env: &TestEnv, args: &[&str]) -> String {
    let mut all = vec!["replay", "--progress", "log", "--drop-after", "1s"];
    all.extend_from_slice(args);
    let mut proc = env.projector_operation(&all, &[("DEVCONNECT_PROJECTOR_MAX_BATCH", "20")]);
    let status = wait_exit(&mut proc, Duration::from_secs(180)).await;
    assert!(status.success(), "replay failed:\n{}", proc.log_text());
    proc.log_text()
}

async fn database_names(env: &TestEnv) -> Vec<String> {
    env.mongo_client().await.list_database_names().await.expect("databases")
}

/// Reads that must keep answering 200 while something happens.
struct ReadsDuring {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(u64, Vec<String>)>,
}

impl ReadsDuring {
    fn start(env: &TestEnv, token: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, token, http, base) = (Arc::clone(&stop), token.to_owned(), env.http.clone(), env.query_url(""));
        let task = tokio::spawn(async move {
            let (done, mut failures) = (AtomicU64::new(0), Vec::new());
            while !flag.load(Ordering::Relaxed) {
                for path in ["/v1/profile", "/v1/feed", "/v1/connections", "/v1/notifications"] {
                    let reply = http.get(format!("{base}{path}")).bearer_auth(&token).send().await;
                    match reply {
                        Ok(r) if r.status() == StatusCode::OK => {
                            let body: serde_json::Value = r.json().await.unwrap_or_default();
                            // A half-built view would show alice without her
                            // connection or her profile edit.
                            let items = body["items"].as_array().map_or(0, Vec::len);
                            if path == "/v1/connections" && items != 1 {
                                failures.push(format!("{path}: {body}"));
                            }
                            // Everyone else is related to alice but grace.
                            if path == "/v1/feed" && (items != 1 || body["items"][0]["userId"] != LEGACY_USER) {
                                failures.push(format!("{path}: {body}"));
                            }
                            if path == "/v1/profile" && body["about"] != "$about {braces}" {
                                failures.push(format!("{path}: {body}"));
                            }
                        }
                        Ok(r) => failures.push(format!("{path}: {}", r.status())),
                        Err(e) => failures.push(format!("{path}: {e}")),
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (done.load(Ordering::Relaxed), failures)
        });
        Self { stop, task }
    }

    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("reader task")
    }
}

#[tokio::test]
async fn a_rebuild_switches_readers_to_identical_views_and_drops_the_old_ones() {
    let env = TestEnv::start().await;
    let (token, _) = mixed_workload(&env).await;
    let old = env.current_generation().await;
    let before = settled_snapshot(&env, &old).await;
    for (prefix, at_least) in [
        ("users:", 5),
        ("sessions:", 5),
        ("connection_requests:", 3),
        ("relations:", 4),
        // alice and bob, one for each side.
        ("connections:", 2),
        ("messages:", 2),
        ("presence:", 2),
        ("notifications:", 3),
        ("notification_counters:", 2),
        ("daily_stats:", 1),
        ("processed_events:", 10),
        ("checkpoints:", 1),
        ("redis user:", 5),
        ("redis session:", 4),
        ("redis messages:", 1),
        ("redis presence:", 2),
        ("redis feed:users", 1),
    ] {
        assert!(count(&before, prefix) >= at_least, "{prefix} in {before:#?}");
    }
    // The upcast v1 user is a view like any other.
    assert!(before.iter().any(|l| l.starts_with("users:") && l.contains("grace.hopper@example.com")), "{before:#?}");

    // The projector reports its lag per partition, and that it caught up.
    let ops = format!("http://127.0.0.1:{}", env.projector_port);
    let metrics = env.http.get(format!("{ops}/metrics")).send().await.expect("metrics").text().await.expect("text");
    for series in ["projector_applied_offset{", "projector_high_watermark{", "projector_lag{"] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }
    assert!(metrics.contains(&format!("topic=\"{}\"", env.topic(Topic::UserEvents))), "{metrics}");
    let ready: serde_json::Value =
        env.http.get(format!("{ops}/readyz")).send().await.expect("readyz").json().await.expect("json");
    assert_eq!(ready["checks"]["caughtUp"], true, "{ready}");

    let reads = ReadsDuring::start(&env, &token);
    let log = replay(&env, &[]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (served, failures) = reads.finish().await;
    assert!(served > 20, "reads ran during the rebuild: {served}");
    assert!(failures.is_empty(), "reads failed or saw a partial view during the rebuild: {failures:#?}");
    assert!(log.contains("readers switched to the new generation"), "{log}");

    let new = env.current_generation().await;
    assert_ne!(new, old, "a new generation");
    assert_same_views(&settled_snapshot(&env, &new).await, &before, "rebuilt views equal the originals");
    // The old generation is gone, from MongoDB and from Redis.
    assert!(!database_names(&env).await.contains(&format!("{}_{old}", env.database())));
    let mut redis = env.redis().await;
    let leftovers: Vec<String> =
        redis::cmd("KEYS").arg(format!("{old}:*")).query_async(&mut redis).await.expect("keys");
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Live projection moved on with the readers: a new write shows up.
    let edit = env.command(Method::PATCH, "/v1/profile", Some(&json!({"about": "after"})), Some(&token)).await;
    let read = env.query("/v1/profile", &token, Some(&ok(&edit, "edit"))).await;
    assert_eq!(read.body["about"], "after", "{:?}", read.body);
    let after_edit = settled_snapshot(&env, &new).await;

    // Twice: the same again.
    replay(&env, &[]).await;
    let third = env.current_generation().await;
    assert_ne!(third, new);
    assert_same_views(&settled_snapshot(&env, &third).await, &after_edit, "a second rebuild gives the same views");
}

#[tokio::test]
async fn a_rebuild_killed_at_random_points_resumes_to_identical_views() {
    let env = TestEnv::start().await;
    mixed_workload(&env).await;
    // Enough history that a rebuild in chunks of one event takes seconds, so
    // the kills land in the middle of it.
    let ids: Vec<String> = env
        .views_db()
        .await
        .collection::<mongodb::bson::Document>("users")
        .find(mongodb::bson::doc! {})
        .await
        .expect("users")
        .try_collect::<Vec<_>>()
        .await
        .expect("users")
        .iter()
        .filter_map(|u| u.get_str("_id").ok().map(str::to_owned))
        .collect();
    env.produce_heartbeats(&ids, 1_500).await;
    env.projector_caught_up().await;
    let generation = env.current_generation().await;
    let before = settled_snapshot(&env, &generation).await;

    let mut seed = u64::from_le_bytes(uuid::Uuid::new_v4().as_bytes()[..8].try_into().expect("8 bytes"));
    let mut kills = Vec::new();
    for _ in 0..3 {
        let mut proc = env.projector_operation(
            &["replay", "--progress", "log", "--drop-after", "1s"],
            // Chunks of one event: the kills land between and inside
            // chunk writes, and later chunks find earlier ones' documents.
            &[("DEVCONNECT_PROJECTOR_MAX_BATCH", "3"), ("DEVCONNECT_REPLAY_CHUNK_EVENTS", "1")],
        );
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let after = Duration::from_millis(300 + (seed >> 33) % 1_500);
        tokio::time::sleep(after).await;
        assert!(proc.exited().is_none(), "the rebuild ended before the kill at {after:?}:\n{}", proc.log_text());
        proc.crash();
        kills.push(after);
    }
    assert_eq!(env.current_generation().await, generation, "no killed rebuild switched readers");
    let log = replay(&env, &[]).await;
    assert!(log.contains("resumed=true"), "the last run resumed the killed ones' generation:\n{log}");
    let rebuilt = env.current_generation().await;
    assert_ne!(rebuilt, generation);
    let what = format!("killed at {kills:?}, the resumed rebuild gives the same views");
    assert_same_views(&settled_snapshot(&env, &rebuilt).await, &before, &what);
    // Nothing is left behind by the interrupted runs.
    let prefix = format!("{}_", env.database());
    let generations: Vec<String> = database_names(&env).await.into_iter().filter(|n| n.starts_with(&prefix)).collect();
    assert_eq!(generations, vec![format!("{prefix}{rebuilt}")], "killed at {kills:?}");
}

#[tokio::test]
async fn in_place_replays_change_nothing_and_rebuild_after_a_total_loss() {
    let mut env = TestEnv::start().await;
    let (token, _) = mixed_workload(&env).await;
    let generation = env.current_generation().await;
    let before = settled_snapshot(&env, &generation).await;

    // Over the existing views: everything applied again changes nothing.
    env.stop_projector();
    let log = replay(&env, &["--in-place"]).await;
    assert!(log.contains("views re-applied in place"), "{log}");
    assert_eq!(env.current_generation().await, generation);
    assert_same_views(&settled_snapshot(&env, &generation).await, &before, "re-applying changes nothing");

    // Total loss: MongoDB and Redis empty.
    let client = env.mongo_client().await;
    for name in database_names(&env).await.into_iter().filter(|n| n.starts_with(&env.database())) {
        client.database(&name).drop().await.expect("drop");
    }
    let mut redis = env.redis().await;
    let () = redis::cmd("FLUSHALL").query_async(&mut redis).await.expect("flushall");
    replay(&env, &["--in-place"]).await;
    let rebuilt = env.current_generation().await;
    assert_same_views(&settled_snapshot(&env, &rebuilt).await, &before, "rebuilt in place from nothing");

    // The services carry on: reads from the rebuilt views, new writes projected.
    env.start_projector().await;
    let edit = env.command(Method::PATCH, "/v1/profile", Some(&json!({"about": "back"})), Some(&token)).await;
    let read = env.query("/v1/profile", &token, Some(&ok(&edit, "edit"))).await;
    assert_eq!((read.status, read.body["about"].as_str()), (StatusCode::OK, Some("back")), "{:?}", read.body);
}

#[tokio::test]
async fn a_rebuild_hands_an_undecodable_record_to_the_per_event_path() {
    let env = TestEnv::start().await;
    let (a, a_token) = env.user("ada").await;
    env.produce_raw(Topic::UserEvents, &a, b"{ not an event", &[]).await;
    // Written after the poison: the coalescing stops before it, and the
    // per-event worker applies the rest (and dead-letters the poison).
    let (_, b_token) = env.user("bob").await;
    let edit =
        env.command(Method::PATCH, "/v1/profile", Some(&json!({"about": "after the poison"})), Some(&a_token)).await;
    let read = env.query("/v1/profile", &a_token, Some(&ok(&edit, "edit"))).await;
    assert_eq!(read.body["about"], "after the poison", "{:?}", read.body);
    let _ = b_token;
    env.projector_caught_up().await;
    let generation = env.current_generation().await;
    let before = settled_snapshot(&env, &generation).await;

    let log = replay(&env, &[]).await;
    assert!(log.contains("coalescing stops before it"), "{log}");
    assert!(log.contains("readers switched"), "{log}");
    let rebuilt = env.current_generation().await;
    assert_ne!(rebuilt, generation);
    assert_same_views(&settled_snapshot(&env, &rebuilt).await, &before, "a rebuild past a poison record");
}

#[tokio::test]
async fn a_rebuild_of_empty_topics_switches_to_empty_views() {
    // A new deployment: nothing to apply, nothing to cache, still a switch.
    // The topics hold only the command API's owner markers (one per
    // partition, at offset 0), which the rebuild reads past.
    let env = TestEnv::start().await;
    let old = env.current_generation().await;
    let log = replay(&env, &[]).await;
    assert!(log.contains("readers switched") && log.contains(" events=0 "), "{log}");
    let new = env.current_generation().await;
    assert_ne!(new, old);
    let views = env.view_snapshot(&new).await;
    let empty = |line: &String| {
        line.starts_with("redis feed:users")
            || line.starts_with("redis caches:filled")
            || line.starts_with("redis refreshed:")
            || (line.starts_with("checkpoints:") && line.contains("\"epoch\": 0, \"nextOffset\": 1,"))
    };
    assert!(views.iter().all(empty), "{views:#?}");
    assert_eq!(views.iter().filter(|l| l.starts_with("checkpoints:")).count(), 15, "{views:#?}");
}

#[tokio::test]
async fn services_racing_to_create_the_first_generation_all_use_the_stored_one() {
    // After a total loss every service notices the missing pointer at once
    // and offers its own generation; whatever the store answers each of
    // them, all must end up on the one it kept.
    let servers = test_support::Servers::from_env();
    let client = mongodb::Client::with_uri_str(&servers.mongo_uri).await.expect("mongo client");
    let base = format!("race{}", uuid::Uuid::now_v7().simple());
    let generations = views::generation::Generations::new(client.clone(), &base);
    for trial in 0..30 {
        let answers = futures::future::join_all((0..6).map(|_| generations.current_or_create())).await;
        let stored = generations.pointer().await.expect("pointer").expect("a pointer").current;
        for answer in answers {
            assert_eq!(answer.expect("current_or_create"), stored, "trial {trial}");
        }
        client.database(&base).drop().await.expect("drop");
    }
}
