//! Sessions over HTTP against the real servers: short access tokens,
//! rotating refresh tokens whose reuse ends the session, the cap on
//! sessions per user, and logout keys bound to their session.

use std::time::Duration;

use futures::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::json;
use test_support::{PASSWORD, Reply, TestEnv};

fn tokens(reply: &Reply) -> (String, String) {
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let token = reply.body["token"].as_str().expect("token").to_owned();
    let refresh = reply.body["refreshToken"].as_str().expect("refreshToken").to_owned();
    (token, refresh)
}

/// A cheap authenticated write: 204 while the session lives, 401 after.
async fn heartbeat(env: &TestEnv, token: &str) -> StatusCode {
    env.command(Method::POST, "/v1/presence/heartbeat", None, Some(token)).await.status
}

#[tokio::test]
async fn a_refresh_token_rotates_once_and_its_reuse_ends_the_whole_session() {
    let env = TestEnv::start().await;
    let email = env.email("rotator");
    env.signup(&email).await;
    let login = env.login_reply(&email, PASSWORD).await;
    let (first_access, first_refresh) = tokens(&login);
    let access_ends: chrono::DateTime<chrono::Utc> =
        login.body["expiresAt"].as_str().expect("expiresAt").parse().expect("RFC 3339");
    let session_ends: chrono::DateTime<chrono::Utc> =
        login.body["refreshExpiresAt"].as_str().expect("refreshExpiresAt").parse().expect("RFC 3339");
    let access_life = access_ends - chrono::Utc::now();
    assert!(access_life <= chrono::Duration::minutes(15), "access tokens live minutes: {access_life}");
    assert!(session_ends > access_ends + chrono::Duration::days(1), "the session outlives its access tokens");

    let rotated = env.refresh(&first_refresh, None).await;
    let (second_access, second_refresh) = tokens(&rotated);
    assert_ne!(second_refresh, first_refresh);
    assert_eq!(rotated.body["refreshExpiresAt"], login.body["refreshExpiresAt"], "the session's end is fixed");
    let read = env.query("/v1/profile", &second_access, Some(&rotated.consistency())).await;
    assert_eq!(read.status, StatusCode::OK, "the new access token reads: {:?}", read.body);
    assert_eq!(heartbeat(&env, &first_access).await, StatusCode::NO_CONTENT, "the old access token lives on");

    // The spent token again: someone kept a copy. The session ends for
    // every token of it, on both APIs.
    let reused = env.refresh(&first_refresh, None).await;
    assert_eq!((reused.status, reused.code()), (StatusCode::UNAUTHORIZED, "refresh_token_reused"));
    let after = env.refresh(&second_refresh, None).await;
    assert_eq!((after.status, after.code()), (StatusCode::UNAUTHORIZED, "invalid_token"), "the family is over");
    for token in [&first_access, &second_access] {
        assert_eq!(heartbeat(&env, token).await, StatusCode::UNAUTHORIZED);
        let read = env.query("/v1/profile", token, None).await;
        assert_eq!((read.status, read.code()), (StatusCode::UNAUTHORIZED, "invalid_token"));
    }
}

#[tokio::test]
async fn forty_parallel_spends_of_one_refresh_token_buy_at_most_one_pair_and_end_the_session() {
    let env = TestEnv::start().await;
    let email = env.email("racer");
    env.signup(&email).await;
    let (access, refresh) = tokens(&env.login_reply(&email, PASSWORD).await);

    let replies = join_all((0..40).map(|_| env.refresh(&refresh, None))).await;
    let won: Vec<&Reply> = replies.iter().filter(|r| r.status == StatusCode::OK).collect();
    assert_eq!(won.len(), 1, "one spend wins: {:?}", replies.iter().map(|r| r.status).collect::<Vec<_>>());
    for reply in replies.iter().filter(|r| r.status != StatusCode::OK) {
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{:?}", reply.body);
        assert!(["refresh_token_reused", "invalid_token"].contains(&reply.code()), "{:?}", reply.body);
    }
    assert!(replies.iter().any(|r| r.code() == "refresh_token_reused"));
    // The others were reuse, so even the winner's pair is dead.
    let (won_access, won_refresh) = tokens(won[0]);
    assert_eq!(env.refresh(&won_refresh, None).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(heartbeat(&env, &won_access).await, StatusCode::UNAUTHORIZED);
    assert_eq!(heartbeat(&env, &access).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_retried_refresh_with_its_idempotency_key_gets_the_same_pair_not_a_reuse_verdict() {
    let env = TestEnv::start().await;
    let email = env.email("retrier");
    env.signup(&email).await;
    let (_, refresh) = tokens(&env.login_reply(&email, PASSWORD).await);
    let first = env.refresh(&refresh, Some("refresh-1")).await;
    let retry = env.refresh(&refresh, Some("refresh-1")).await;
    assert_eq!(tokens(&first), tokens(&retry), "the retry answers what the first attempt bought");
    assert_eq!(retry.header("idempotent-replayed").as_deref(), Some("true"));
    let (access, _) = tokens(&retry);
    assert_eq!(heartbeat(&env, &access).await, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn expired_access_tokens_are_refused_and_a_refresh_revives_the_session() {
    let env = TestEnv::start_with(vec![("DEVCONNECT_ACCESS_TOKEN_TTL", "2s")]).await;
    let email = env.email("sleeper");
    env.signup(&email).await;
    let (access, refresh) = tokens(&env.login_reply(&email, PASSWORD).await);
    assert_eq!(heartbeat(&env, &access).await, StatusCode::NO_CONTENT);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(heartbeat(&env, &access).await, StatusCode::UNAUTHORIZED);
    assert_eq!(env.query("/v1/profile", &access, None).await.status, StatusCode::UNAUTHORIZED);
    let (fresh, _) = tokens(&env.refresh(&refresh, None).await);
    assert_eq!(heartbeat(&env, &fresh).await, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn logout_and_a_password_change_end_the_refresh_tokens_too() {
    let env = TestEnv::start().await;
    let email = env.email("ender");
    env.signup(&email).await;
    let (access, refresh) = tokens(&env.login_reply(&email, PASSWORD).await);
    let logout = env.command(Method::POST, "/v1/auth/logout", None, Some(&access)).await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    let after_logout = env.refresh(&refresh, None).await;
    assert_eq!((after_logout.status, after_logout.code()), (StatusCode::UNAUTHORIZED, "invalid_token"));

    let (kept, kept_refresh) = tokens(&env.login_reply(&email, PASSWORD).await);
    let (_, other_refresh) = tokens(&env.login_reply(&email, PASSWORD).await);
    let change = json!({"currentPassword": PASSWORD, "newPassword": "An0ther$ecret"});
    let changed = env.command(Method::PUT, "/v1/profile/password", Some(&change), Some(&kept)).await;
    assert_eq!(changed.status, StatusCode::NO_CONTENT, "{:?}", changed.body);
    assert_eq!(env.refresh(&other_refresh, None).await.status, StatusCode::UNAUTHORIZED, "other sessions end");
    assert_eq!(env.refresh(&kept_refresh, None).await.status, StatusCode::OK, "the changing session stays");
}

#[tokio::test]
async fn what_is_not_a_refresh_token_of_a_live_session_gets_401_or_400() {
    let env = TestEnv::start().await;
    let email = env.email("forger");
    env.signup(&email).await;
    let (access, _) = tokens(&env.login_reply(&email, PASSWORD).await);
    for bad in [access.as_str(), "", "nonsense", "eyJhbGciOiJub25lIn0.e30.", &"x".repeat(10_000)] {
        let reply = env.refresh(bad, None).await;
        assert_eq!((reply.status, reply.code()), (StatusCode::UNAUTHORIZED, "invalid_token"), "{:.40}", bad);
    }
    let url = env.command_url("/v1/auth/refresh");
    for body in [json!({}), json!({"refreshToken": 7}), json!([])] {
        let reply = env.send(Method::POST, &url, Some(&body), &[]).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}: {:?}", reply.body);
    }
}

#[tokio::test]
async fn forty_log_ins_four_at_a_time_leave_only_the_newest_sessions_up_to_the_cap() {
    let env = TestEnv::start_with(vec![("DEVCONNECT_MAX_SESSIONS_PER_USER", "3")]).await;
    let email = env.email("hoarder");
    env.signup(&email).await;
    // Four at a time: more than five log-ins of one account in flight at
    // once are refused by the guessing limit, which counts before it knows.
    let mut access = Vec::new();
    for _ in 0..10 {
        let logins = join_all((0..4).map(|_| env.login_reply(&email, PASSWORD))).await;
        access.extend(logins.iter().map(|r| tokens(r).0));
    }
    let mut alive = 0;
    for token in &access {
        if heartbeat(&env, token).await == StatusCode::NO_CONTENT {
            alive += 1;
        }
    }
    assert_eq!(alive, 3, "the cap holds under concurrency");
    let (newest, _) = tokens(&env.login_reply(&email, PASSWORD).await);
    assert_eq!(heartbeat(&env, &newest).await, StatusCode::NO_CONTENT, "a log-in is never refused for the cap");
}

#[tokio::test]
async fn a_logout_key_sent_again_by_another_session_is_not_a_retry() {
    let env = TestEnv::start().await;
    let email = env.email("keyholder");
    env.signup(&email).await;
    let (first, _) = env.login(&email, PASSWORD).await;
    let (second, _) = env.login(&email, PASSWORD).await;
    let logout = |token: String, key: &'static str| {
        let env = &env;
        async move {
            let auth = format!("Bearer {token}");
            let headers = [("authorization", auth.as_str()), ("idempotency-key", key)];
            env.send(Method::POST, &env.command_url("/v1/auth/logout"), None, &headers).await
        }
    };
    assert_eq!(logout(first.clone(), "bye").await.status, StatusCode::NO_CONTENT);
    assert_eq!(logout(first.clone(), "bye").await.status, StatusCode::NO_CONTENT, "a true retry answers the same");
    let reused = logout(second.clone(), "bye").await;
    assert_eq!((reused.status, reused.code()), (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"));
    assert_eq!(heartbeat(&env, &second).await, StatusCode::NO_CONTENT, "nothing was revoked silently");
    assert_eq!(logout(second.clone(), "bye-2").await.status, StatusCode::NO_CONTENT);
    assert_eq!(heartbeat(&env, &second).await, StatusCode::UNAUTHORIZED);
}
