//! Storage that does not only grow (docs/design.md §3, "What the projector
//! may forget"): processed-id keys and ended sessions are pruned, live
//! streams expire, and heartbeats leave nothing behind but the presence
//! document. Pruning must never count an event twice, nor let a token in.

use std::time::Duration;

use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use test_support::{PASSWORD, TestEnv, eventually, wait_exit};

async fn processed_ids(env: &TestEnv) -> u64 {
    env.views_db().await.collection::<Document>("processed_events").count_documents(doc! {}).await.expect("count")
}

/// Today's analytics counts.
async fn today(env: &TestEnv, token: &str, consistency: Option<&str>) -> Value {
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let stats = env.query(&format!("/v1/stats/daily?from={today}&to={today}"), token, consistency).await;
    assert_eq!(stats.status, StatusCode::OK, "{:?}", stats.body);
    let day = &stats.body["days"][0];
    json!([day["signups"], day["logins"], day["requestsSent"], day["requestsAccepted"], day["messagesSent"]])
}

/// Waits until today's counts are `expected`; they must never pass them.
/// A restarted projector may take a while to get its partitions back on
/// our dev broker (docs/self-healing.md, "Partition ownership").
async fn counts_reach(env: &TestEnv, token: &str, expected: &Value) {
    eventually("the counts", Duration::from_secs(90), || async {
        let now = today(env, token, None).await;
        let over = now
            .as_array()
            .into_iter()
            .flatten()
            .zip(expected.as_array().into_iter().flatten())
            .any(|(n, e)| n.as_i64() > e.as_i64());
        assert!(!over, "counted twice: {now}, expected {expected}");
        if now == *expected { Ok(()) } else { Err(now.to_string()) }
    })
    .await;
}

async fn send(env: &TestEnv, token: &str, to: &str, text: &str) -> String {
    let reply =
        env.command(Method::POST, &format!("/v1/messages/{to}"), Some(&json!({ "text": text })), Some(token)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    reply.consistency()
}

async fn unread(env: &TestEnv, token: &str) -> Value {
    env.query("/v1/notifications", token, None).await.body["unreadCount"].clone()
}

#[tokio::test]
async fn pruned_processed_ids_never_count_an_event_twice() {
    let mut env = TestEnv::start_with(vec![
        ("DEVCONNECT_PROJECTOR_PRUNE_EVERY", "300ms"),
        ("DEVCONNECT_PROJECTOR_PROCESSED_RETENTION", "1s"),
    ])
    .await;
    let (_, a_token) = env.user("a").await;
    let (b, b_token) = env.user("b").await;
    env.connect(&a_token, &b, &b_token).await;
    let mut last = String::new();
    for text in ["one", "two", "three"] {
        last = send(&env, &a_token, &b, text).await;
    }
    // signups, logins, requests sent, accepted, messages.
    let expected = json!([2, 2, 1, 1, 3]);
    assert_eq!(today(&env, &a_token, Some(&last)).await, expected);
    assert_eq!(unread(&env, &b_token).await, json!(4), "a request and three messages");

    // Every counted event's key goes once it is older than the retention.
    eventually("the processed ids are pruned", Duration::from_secs(30), || async {
        match processed_ids(&env).await {
            0 => Ok(()),
            n => Err(format!("{n} processed ids left")),
        }
    })
    .await;

    // A crash and restart: nothing counted twice, new events counted once.
    env.crash_and_restart_projector();
    send(&env, &a_token, &b, "four").await;
    let expected = json!([2, 2, 1, 1, 4]);
    counts_reach(&env, &a_token, &expected).await;
    env.projector_caught_up().await;

    // Everything applied again from offset 0 over these views, with the
    // keys gone: the stored checkpoints say what was applied, so nothing
    // is counted again.
    env.stop_projector();
    let mut replay = env.projector_operation(
        &["replay", "--in-place", "--progress", "log"],
        &[("DEVCONNECT_PROJECTOR_MAX_BATCH", "3")],
    );
    let status = wait_exit(&mut replay, Duration::from_secs(180)).await;
    assert!(status.success(), "replay failed:\n{}", replay.log_text());
    assert_eq!(today(&env, &a_token, None).await, expected, "after replay --in-place");
    assert_eq!(unread(&env, &b_token).await, json!(5));

    env.start_projector().await;
    send(&env, &a_token, &b, "five").await;
    counts_reach(&env, &a_token, &json!([2, 2, 1, 1, 5])).await;
    assert_eq!(unread(&env, &b_token).await, json!(6));
}

/// The presence entries about `user` in `whose` live stream.
async fn presence_entries(env: &TestEnv, whose: &str, user: &str) -> Vec<bool> {
    let mut redis = env.redis().await;
    let entries: Vec<(String, std::collections::HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(format!("stream:{whose}"))
        .arg("-")
        .arg("+")
        .query_async(&mut redis)
        .await
        .expect("xrange");
    entries
        .into_iter()
        .filter_map(|(_, fields)| {
            let data: Value = serde_json::from_str(fields.get("data")?).ok()?;
            (fields.get("kind")? == "presence" && data["userId"] == user).then(|| data["online"] == true)
        })
        .collect()
}

#[tokio::test]
async fn heartbeats_publish_changes_only_to_a_bounded_fan_out_and_streams_expire() {
    let env = TestEnv::start_with(vec![("DEVCONNECT_PRESENCE_FANOUT_MAX", "1"), ("DEVCONNECT_STREAM_TTL", "1h")]).await;
    let (a, a_token) = env.user("a").await;
    let (b, b_token) = env.user("b").await;
    let (c, c_token) = env.user("c").await;
    env.connect(&a_token, &b, &b_token).await;
    let accepted = env.connect(&c_token, &b, &b_token).await;
    let settled = env.query("/v1/profile", &b_token, Some(&accepted.consistency())).await;
    assert_eq!(settled.status, StatusCode::OK);
    let before = processed_ids(&env).await;

    for _ in 0..5 {
        let beat = env.command(Method::POST, "/v1/presence/heartbeat", None, Some(&b_token)).await;
        assert_eq!(beat.status, StatusCode::NO_CONTENT);
        env.query("/v1/profile", &b_token, Some(&beat.consistency())).await;
    }
    let off = env.command(Method::POST, "/v1/presence/offline", None, Some(&b_token)).await;
    let offline = env.query(&format!("/v1/presence/{b}"), &a_token, Some(&off.consistency())).await;
    assert_eq!(offline.body["online"], false, "{:?}", offline.body);

    // Heartbeats count nothing, so they record no processed ids.
    assert_eq!(processed_ids(&env).await, before, "heartbeats left processed ids");
    // Coming online and going offline: two changes, not six entries.
    let own = eventually("b's own stream has both changes", Duration::from_secs(10), || async {
        let own = presence_entries(&env, &b, &b).await;
        if own.len() >= 2 { Ok(own) } else { Err(format!("{own:?}")) }
    })
    .await;
    assert_eq!(own, vec![true, false], "only changes are published");
    // Each change went to one of b's two connections (the cap), the same one.
    let (to_a, to_c) = (presence_entries(&env, &a, &b).await, presence_entries(&env, &c, &b).await);
    let mut seen = [to_a.clone(), to_c.clone()];
    seen.sort();
    assert_eq!(seen, [vec![], vec![true, false]], "a saw {to_a:?}, c saw {to_c:?}");

    // Every live stream expires some time after its newest entry.
    let mut redis = env.redis().await;
    let keys: Vec<String> = redis::cmd("KEYS").arg("stream:*").query_async(&mut redis).await.expect("keys");
    assert!(keys.len() >= 3, "{keys:?}");
    for key in keys {
        let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut redis).await.expect("pttl");
        assert!((1..=3_600_000).contains(&ttl), "{key} expires in {ttl} ms");
    }
}

/// The sessions of `user` in the view: (id, expiresAt).
async fn sessions_of(env: &TestEnv, user: &str) -> Vec<(String, String)> {
    let found: Vec<Document> = env
        .views_db()
        .await
        .collection::<Document>("sessions")
        .find(doc! { "userId": user })
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("sessions");
    found
        .iter()
        .map(|s| {
            (s.get_str("_id").unwrap_or_default().to_owned(), s.get_str("expiresAt").unwrap_or_default().to_owned())
        })
        .collect()
}

#[tokio::test]
async fn ended_sessions_leave_the_view_and_let_no_token_in() {
    let env = TestEnv::start_with(vec![
        ("DEVCONNECT_SESSION_TTL", "8s"),
        ("DEVCONNECT_PROJECTOR_PRUNE_EVERY", "300ms"),
        ("DEVCONNECT_PROJECTOR_SESSION_RETENTION", "1s"),
    ])
    .await;
    let (a, first) = env.user("a").await;
    let (revoked, logged_in) = env.login(&env.email("a"), PASSWORD).await;
    assert_eq!(env.query("/v1/profile", &revoked, Some(&logged_in)).await.status, StatusCode::OK);
    let logout = env.command(Method::POST, "/v1/auth/logout", None, Some(&revoked)).await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    let refused = env.query("/v1/profile", &revoked, Some(&logout.consistency())).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    let ended = sessions_of(&env, &a).await;
    assert_eq!(ended.len(), 2, "{ended:?}");
    // A live session is cached no longer than it lives.
    let mut redis = env.redis().await;
    let key = env.view_key(&format!("session:{}", ended[0].0)).await;
    let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut redis).await.expect("pttl");
    assert!((1..=8_000).contains(&ttl), "{key} is cached for {ttl} ms");

    // Both end; their documents go, but only after they ended.
    eventually("ended sessions are pruned", Duration::from_secs(40), || async {
        match sessions_of(&env, &a).await {
            left if left.is_empty() => Ok(()),
            left => Err(format!("{left:?}")),
        }
    })
    .await;
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    for (id, ends) in &ended {
        assert!(ends.as_str() < now.as_str(), "{id} was pruned before it ended at {ends}");
    }
    // Their tokens stay refused: by expiry, not by a document.
    for token in [&first, &revoked] {
        assert_eq!(env.query("/v1/profile", token, None).await.status, StatusCode::UNAUTHORIZED);
    }

    // A session that lives is left alone, pass after pass.
    let (live, logged_in) = env.login(&env.email("a"), PASSWORD).await;
    assert_eq!(env.query("/v1/profile", &live, Some(&logged_in)).await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sessions_of(&env, &a).await.len(), 1);
    assert_eq!(env.query("/v1/profile", &live, None).await.status, StatusCode::OK);
}
