//! Steady-state reads come from Redis alone: profiles, relation sets and
//! connection lists are kept there without expiry by the projector. And
//! because nothing expires, every way Redis can end up behind MongoDB is
//! healed without a read having to notice: a projector killed between its
//! transaction and its cache refresh, and a Redis that lost its data.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use test_support::{Servers, TestEnv, eventually, free_port, mongo_uri, start_private_mongo};

/// Four users: `a` connected with `b`, a pending request from `a` to `c`,
/// and `d`, related to nobody.
struct Graph {
    a: String,
    a_token: String,
    b: String,
    c: String,
    d: String,
}

async fn graph(env: &TestEnv) -> Graph {
    let (a, a_token) = env.user("a").await;
    let (b, b_token) = env.user("b").await;
    let (c, _) = env.user("c").await;
    let (d, _) = env.user("d").await;
    let sent = env.command(Method::POST, &format!("/v1/requests/send/interested/{c}"), None, Some(&a_token)).await;
    assert_eq!(sent.status, StatusCode::CREATED, "{:?}", sent.body);
    // Last: the acceptance is then the newest connection record, whichever
    // partition each pair hashes to (`undone_refresh_is_healed` relies on it).
    env.connect(&a_token, &b, &b_token).await;
    Graph { a, a_token, b, c, d }
}

/// Waits until plain (cached) reads show `graph`: `a`'s connections are
/// `b`, and `a`'s feed is `d` alone.
async fn wait_for_graph(env: &TestEnv, graph: &Graph) {
    eventually("the graph is in the cached reads", Duration::from_secs(30), || async {
        let connections = env.query("/v1/connections", &graph.a_token, None).await;
        let feed = env.query("/v1/feed", &graph.a_token, None).await;
        let seen = (connections.user_ids(), feed.user_ids());
        if seen == (vec![graph.b.clone()], vec![graph.d.clone()]) { Ok(()) } else { Err(format!("{seen:?}")) }
    })
    .await;
}

/// Every read a signed-in user makes in steady state, answered quickly,
/// with what `graph` holds.
async fn assert_reads(env: &TestEnv, graph: &Graph, when: &str) {
    let started = Instant::now();
    let own = env.query("/v1/profile", &graph.a_token, None).await;
    assert_eq!((own.status, &own.body["userId"]), (StatusCode::OK, &json!(graph.a)), "{when}: {own:?}");
    let public = env.query(&format!("/v1/users/{}", graph.c), &graph.a_token, None).await;
    assert_eq!((public.status, &public.body["userId"]), (StatusCode::OK, &json!(graph.c)), "{when}: {public:?}");
    let connections = env.query("/v1/connections", &graph.a_token, None).await;
    assert_eq!((connections.status, connections.user_ids()), (StatusCode::OK, vec![graph.b.clone()]), "{when}");
    let feed = env.query("/v1/feed", &graph.a_token, None).await;
    assert_eq!((feed.status, feed.user_ids()), (StatusCode::OK, vec![graph.d.clone()]), "{when}");
    // MongoDB's server selection alone would take seconds.
    assert!(started.elapsed() < Duration::from_secs(2), "{when}: reads took {:?}", started.elapsed());
}

#[tokio::test]
async fn steady_state_reads_need_no_mongodb() {
    let dir = std::env::temp_dir().join(format!("devconnect-mongo-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let port = free_port();
    let mongo = start_private_mongo(&dir, port).await;
    let mut servers = Servers::from_env();
    servers.mongo_uri = mongo_uri(port);
    let env = TestEnv::start_on(servers, Vec::new()).await;
    let graph = graph(&env).await;
    wait_for_graph(&env, &graph).await;

    // Hung, not gone: a read that needed it would wait.
    mongo.pause();
    assert_reads(&env, &graph, "MongoDB hung").await;
    mongo.resume();

    // Not one of these reads went to MongoDB, not even the first: the
    // projector filled the sets as it applied the events.
    for series in [r#"connection_reads_total{path="mongo"}"#, r#"feed_reads_total{path="mongo"}"#] {
        assert_eq!(env.query_counter(series).await, 0, "{series}");
    }
    assert!(env.query_counter(r#"connection_reads_total{path="redis"}"#).await > 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// What a projector killed after its transaction and before its cache
/// refresh leaves behind: MongoDB and the checkpoint hold the batch, Redis
/// holds what came before it. `killed`: as a killed member that keeps its
/// partitions leaves it, seen by a projector that stays up; else after a
/// shutdown, seen by the restarted projector.
async fn undone_refresh_is_healed(killed: bool) {
    // A short stall window, so that the watch for unrefreshed batches acts
    // within the test.
    let mut env = TestEnv::start_with(vec![("DEVCONNECT_PROJECTOR_STALL_AFTER", "3s")]).await;
    let graph = graph(&env).await;
    wait_for_graph(&env, &graph).await;
    let edit = env.command(Method::PATCH, "/v1/profile", Some(&json!({"about": "newest"})), Some(&graph.a_token)).await;
    assert_eq!(edit.status, StatusCode::OK, "{:?}", edit.body);
    let durable = env.query("/v1/profile", &graph.a_token, Some(&edit.consistency())).await;
    assert_eq!(durable.body["about"], "newest");
    env.projector_caught_up().await;
    if killed {
        // A killed member can keep its partitions on our broker while
        // nothing new arrives, and then no owner re-reads the batch. The
        // projector that stays up sees exactly what that leaves (below):
        // checkpoints ahead of the refreshed marks, nothing to re-read. Its
        // watch for unrefreshed batches must notice.
    } else {
        // A shutdown leaves the group: the restart owns the partitions and
        // re-reads the last batch (refreshFrom).
        env.projector.as_mut().expect("projector running").terminate();
        env.projector = None;
    }

    // Put Redis back to before the last batches: the profile one version
    // older, the connection missing from a's list (the acceptance was the
    // last record on the pair's partition), and the refreshed marks behind
    // the checkpoints, as a refresh cut off by a kill leaves them (killed
    // variant only).
    let mut redis = env.redis().await;
    let user_key = env.view_key(&format!("user:{}", graph.a)).await;
    let cached: String = redis::cmd("GET").arg(&user_key).query_async(&mut redis).await.expect("cached profile");
    let mut older: Value = serde_json::from_str(&cached).expect("json");
    older["about"] = json!("older");
    older["version"] = json!(older["version"].as_u64().expect("version") - 1);
    let _: () = redis::cmd("SET").arg(&user_key).arg(older.to_string()).query_async(&mut redis).await.expect("set");
    let list_key = env.view_key(&format!("connections:{}", graph.a)).await;
    let members: Vec<String> =
        redis::cmd("ZRANGE").arg(&list_key).arg(0).arg(-1).query_async(&mut redis).await.expect("zrange");
    let connection = members.iter().find(|m| m.ends_with(&graph.b)).expect("b in a's list").clone();
    let _: () = redis::cmd("ZREM").arg(&list_key).arg(&connection).query_async(&mut redis).await.expect("zrem");
    let marks: Vec<String> =
        redis::cmd("KEYS").arg(env.view_key("refreshed:*").await).query_async(&mut redis).await.expect("keys");
    assert!(!marks.is_empty(), "the projector marks what it refreshed");
    if killed {
        // After a shutdown the marks stay, so only the re-read of the last
        // batch can heal: that is what that variant tests.
        for mark in marks {
            let _: () = redis::cmd("SET").arg(&mark).arg(0).query_async(&mut redis).await.expect("set");
        }
    }
    let stale = env.query("/v1/profile", &graph.a_token, None).await;
    assert_eq!(stale.body["about"], "older", "the cache is what a killed projector left");
    assert_eq!(env.query("/v1/connections", &graph.a_token, None).await.user_ids(), Vec::<String>::new());
    // The caches count as whole, so no refill for a lost Redis will mend
    // them: only what the restart does about the undone refresh can.
    let filled: bool =
        redis::cmd("EXISTS").arg(env.view_key("caches:filled").await).query_async(&mut redis).await.expect("exists");
    assert!(filled, "the fill marker is set");

    // Nothing else happens: no new event touches either key.
    if !killed {
        env.start_projector().await;
    }
    eventually("the caches are refreshed by the projector", Duration::from_secs(60), || async {
        let own = env.query("/v1/profile", &graph.a_token, None).await;
        let connections = env.query("/v1/connections", &graph.a_token, None).await;
        let seen = (own.body["about"].clone(), connections.user_ids());
        if seen == (json!("newest"), vec![graph.b.clone()]) { Ok(()) } else { Err(format!("{seen:?}")) }
    })
    .await;
    assert_reads(&env, &graph, "after the restart").await;
}

#[tokio::test]
async fn a_projector_stopped_before_its_cache_refresh_leaves_no_stale_cache() {
    undone_refresh_is_healed(false).await;
}

#[tokio::test]
async fn a_refresh_that_nobody_redoes_is_noticed_and_every_cache_filled_again() {
    undone_refresh_is_healed(true).await;
}

#[tokio::test]
async fn a_redis_that_lost_its_data_is_filled_again_without_waiting_for_reads() {
    let mut env = TestEnv::start().await;
    let graph = graph(&env).await;
    wait_for_graph(&env, &graph).await;
    let filled = env.view_key("caches:filled").await;
    let related = env.view_key(&format!("related:{}", graph.a)).await;
    let profile = env.view_key(&format!("user:{}", graph.d)).await;

    // Restarted without persistence: everything is gone.
    env.stop_redis();
    env.start_redis().await;
    let mut redis = env.redis().await;
    eventually("the projector fills every cache again", Duration::from_secs(30), || {
        let mut redis = redis.clone();
        let (filled, related, profile) = (filled.clone(), related.clone(), profile.clone());
        async move {
            let marker: bool =
                redis::cmd("EXISTS").arg(&filled).query_async(&mut redis).await.map_err(|e| e.to_string())?;
            let members: Vec<String> =
                redis::cmd("SMEMBERS").arg(&related).query_async(&mut redis).await.map_err(|e| e.to_string())?;
            let user: Option<String> =
                redis::cmd("GET").arg(&profile).query_async(&mut redis).await.map_err(|e| e.to_string())?;
            let mut members = members;
            members.sort();
            if marker && user.is_some() && members.len() == 3 {
                Ok(members)
            } else {
                Err(format!("{marker} {members:?} {user:?}"))
            }
        }
    })
    .await;
    let members: Vec<String> = redis::cmd("SMEMBERS").arg(&related).query_async(&mut redis).await.expect("smembers");
    let mut expected = vec![graph.b.clone(), graph.c.clone(), views::keys::RELATED_COMPLETE.to_owned()];
    expected.sort();
    let mut members = members;
    members.sort();
    assert_eq!(members, expected);
    let list: Vec<String> = redis::cmd("ZRANGE")
        .arg(env.view_key(&format!("connections:{}", graph.a)).await)
        .arg(0)
        .arg(-1)
        .query_async(&mut redis)
        .await
        .expect("zrange");
    assert_eq!(list.len(), 2, "the marker and b: {list:?}");
    assert!(list[0] == views::keys::CONNECTIONS_COMPLETE && list[1].ends_with(&graph.b), "{list:?}");
    // (The first read after the restart may find its Redis connection
    // broken and read MongoDB for a second: that is the outage fallback,
    // not a cache miss, so no counter is asserted here.)
    assert_reads(&env, &graph, "after the refill").await;
}
