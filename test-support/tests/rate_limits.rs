//! Request rate limits per caller and endpoint group, under concurrency,
//! against the real servers, with Redis up and with Redis gone.

use std::time::Duration;

use futures::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::json;
use test_support::{Reply, TestEnv, wait_exit};

/// (answers with `ok`, answers 429 `rate_limited` with Retry-After); fails
/// on anything else.
fn tally(replies: &[Reply], ok: StatusCode) -> (usize, usize) {
    let mut counts = (0, 0);
    for reply in replies {
        if reply.status == ok {
            counts.0 += 1;
        } else {
            assert_eq!(
                (reply.status, reply.code()),
                (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
                "{:?}",
                reply.body
            );
            let wait: u64 = reply.header("retry-after").expect("Retry-After").parse().expect("seconds");
            assert!((1..=60).contains(&wait), "Retry-After {wait}");
            counts.1 += 1;
        }
    }
    counts
}

#[tokio::test]
async fn forty_simultaneous_requests_get_exactly_the_limit_per_user_and_group() {
    let env = TestEnv::start_with(vec![("DEVCONNECT_RATE_LIMITS", "messages=5/1m,reads=10/1m")]).await;
    let (a, a_token) = env.user("a").await;
    let (b, b_token) = env.user("b").await;
    env.connect(&a_token, &b, &b_token).await;

    let text = json!({"text": "hi"});
    let send = |token: String, to: String| {
        let (env, text) = (&env, &text);
        async move { env.command(Method::POST, &format!("/v1/messages/{to}"), Some(text), Some(&token)).await }
    };
    let sends = join_all((0..40).map(|_| send(a_token.clone(), b.clone()))).await;
    assert_eq!(tally(&sends, StatusCode::CREATED), (5, 35), "messages=5/1m");
    // Per user: b's own messages are counted apart; per group: a can still act elsewhere.
    assert_eq!(send(b_token.clone(), a.clone()).await.status, StatusCode::CREATED);
    let heartbeat = env.command(Method::POST, "/v1/presence/heartbeat", None, Some(&a_token)).await;
    assert_eq!(heartbeat.status, StatusCode::NO_CONTENT, "another group is not limited by messages");

    // A fresh user: creating it read the profile once, so 9 of 10 are left.
    let (_, c_token) = env.user("c").await;
    let reads = join_all((0..40).map(|_| env.query("/v1/feed", &c_token, None))).await;
    assert_eq!(tally(&reads, StatusCode::OK), (9, 31), "reads=10/1m");
}

#[tokio::test]
async fn signups_are_limited_per_client_address() {
    let env = TestEnv::start_with(vec![("DEVCONNECT_RATE_LIMITS", "signup=3/1m")]).await;
    let signups = join_all((0..40).map(|i| {
        let (env, body) = (&env, TestEnv::signup_body(&env.email(&format!("flood{i}"))));
        async move { env.command(Method::POST, "/v1/auth/signup", Some(&body), None).await }
    }))
    .await;
    assert_eq!(tally(&signups, StatusCode::CREATED), (3, 37));
}

#[tokio::test]
async fn with_redis_gone_the_limits_still_hold_in_each_process() {
    let mut env = TestEnv::start_with(vec![("DEVCONNECT_RATE_LIMITS", "reads=10/1m")]).await;
    let email = env.email("reader");
    env.signup(&email).await;
    let (token, consistency) = env.login(&email, test_support::PASSWORD).await;
    assert_eq!(env.query("/v1/profile", &token, Some(&consistency)).await.status, StatusCode::OK);
    env.stop_redis();
    let reads = join_all((0..40).map(|_| env.query("/v1/profile", &token, None))).await;
    // Counted afresh in memory: a client's mistake or a flood is a 4xx, never a 5xx.
    let (ok, limited) = tally(&reads, StatusCode::OK);
    assert!(ok <= 10 && limited >= 30, "{ok} read, {limited} limited");
}

#[tokio::test]
async fn a_mistyped_limit_stops_the_service_at_start_with_a_clear_error() {
    let env = TestEnv::start().await;
    for (binary, typo) in [("command-api", "mesages=5/1m"), ("query-api", "reads=ten/1m")] {
        let mut vars = env.service_env();
        vars.push(("DEVCONNECT_RATE_LIMITS".to_owned(), typo.to_owned()));
        let mut proc = env.spawn(binary, &vars);
        let status = wait_exit(&mut proc, Duration::from_secs(30)).await;
        assert!(!status.success(), "{binary} started with {typo:?}");
        let log = proc.log_text();
        assert!(log.contains("DEVCONNECT_RATE_LIMITS"), "{binary}: the error names the setting: {log}");
    }
}
