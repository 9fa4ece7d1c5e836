//! An idle projector pauses its partitions (no fetches: Tansu would
//! otherwise answer one every 10 ms) and wakes for every write: on the
//! command API's announcement, and without one (a record produced straight
//! into a topic) from its watermark poll. Nothing waits forever either way.

use std::time::{Duration, Instant};

use events::Topic;
use reqwest::{Method, StatusCode};
use serde_json::json;
use test_support::{LEGACY_RECORD, LEGACY_USER, TestEnv};

/// The projector's `projector_idle_paused` gauge (absent before the first
/// decision: not paused).
async fn paused(env: &TestEnv) -> bool {
    let url = format!("http://127.0.0.1:{}/metrics", env.projector_port);
    let text = env.http.get(url).send().await.expect("metrics").text().await.expect("text");
    text.lines().any(|line| line.starts_with("projector_idle_paused") && line.trim_end().ends_with(" 1"))
}

async fn wait_until_paused(env: &TestEnv) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !paused(env).await {
        assert!(Instant::now() < deadline, "the idle projector never paused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_idle_projector_pauses_and_wakes_for_announced_and_unannounced_records() {
    let env = TestEnv::start_with(vec![("DEVCONNECT_PROJECTOR_IDLE_PAUSE", "500ms")]).await;
    let (_, token) = env.user("idler").await;

    // Announced: a write through the command API, read without a
    // consistency token (nothing but the projection makes it visible).
    wait_until_paused(&env).await;
    let edit = env.command(Method::PATCH, "/v1/profile", Some(&json!({"about": "awake"})), Some(&token)).await;
    assert_eq!(edit.status, StatusCode::OK, "{:?}", edit.body);
    wait_for_about(&env, &token, "awake", "an announced write").await;

    // Unannounced: a record straight into the topic, as an import or a
    // redrive writes; the watermark poll finds it.
    wait_until_paused(&env).await;
    env.produce_raw(Topic::UserEvents, LEGACY_USER, LEGACY_RECORD.trim().as_bytes(), &[]).await;
    let imported = tokio::time::timeout(Duration::from_secs(15), env.wait_for_user(&token, LEGACY_USER)).await;
    assert!(imported.is_ok(), "a record nobody announced was never projected");
    // And, quiet again, it pauses again.
    wait_until_paused(&env).await;
}

/// Polls the caller's profile (no consistency token) until `about` shows.
async fn wait_for_about(env: &TestEnv, token: &str, about: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let read = env.query("/v1/profile", token, None).await;
        if read.body["about"] == about {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: never visible: {} {:?}", read.status, read.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_paused_projector_still_wakes_when_redis_is_killed_and_again_once_it_is_back() {
    let mut env = TestEnv::start_with(vec![("DEVCONNECT_PROJECTOR_IDLE_PAUSE", "500ms")]).await;
    let (_, token) = env.user("sleeper").await;
    wait_until_paused(&env).await;

    // The wake-up channel is gone with Redis (kill -9): the announcement is
    // lost, and the watermark poll must find the write.
    env.stop_redis();
    let edit = env.command(Method::PATCH, "/v1/profile", Some(&json!({"about": "no redis"})), Some(&token)).await;
    assert_eq!(edit.status, StatusCode::OK, "{:?}", edit.body);
    wait_for_about(&env, &token, "no redis", "a write while Redis was down").await;

    // Redis back (empty): the listener subscribes again; idle, it pauses,
    // and the next write wakes it.
    env.start_redis().await;
    wait_until_paused(&env).await;
    let edit = env.command(Method::PATCH, "/v1/profile", Some(&json!({"about": "redis back"})), Some(&token)).await;
    assert_eq!(edit.status, StatusCode::OK, "{:?}", edit.body);
    wait_for_about(&env, &token, "redis back", "a write after Redis came back").await;
}
