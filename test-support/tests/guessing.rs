//! Password guessing is limited whatever the concurrency: an attempt is
//! counted before its hash is checked, for log-ins and for the current
//! password of a password change, which also checks the session first.

use reqwest::{Method, StatusCode};
use serde_json::json;
use test_support::{PASSWORD, Reply, TestEnv};

/// The per-account limit the services run with (the default).
const PER_ACCOUNT: usize = 5;

/// Sends all of `requests` at once and returns the replies.
async fn all_at_once(env: &TestEnv, requests: Vec<(Method, String, serde_json::Value, Option<String>)>) -> Vec<Reply> {
    let sends = requests
        .iter()
        .map(|(method, path, body, token)| env.command(method.clone(), path, Some(body), token.as_deref()));
    futures::future::join_all(sends).await
}

fn statuses(replies: &[Reply]) -> Vec<u16> {
    let mut all: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    all.sort_unstable();
    all
}

#[tokio::test]
async fn forty_parallel_wrong_passwords_get_no_more_verdicts_than_the_limit() {
    let env = TestEnv::start().await;
    let email = env.email("target");
    env.signup(&email).await;
    let body = json!({ "emailId": email, "password": "Wr0ng!pass" });
    let replies = all_at_once(&env, vec![(Method::POST, "/v1/auth/login".to_owned(), body, None); 40]).await;
    let verdicts = replies.iter().filter(|r| r.status == StatusCode::UNAUTHORIZED).count();
    let limited: Vec<&Reply> = replies.iter().filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS).collect();
    assert_eq!(verdicts, PER_ACCOUNT, "{:?}", statuses(&replies));
    assert_eq!(limited.len(), 40 - PER_ACCOUNT, "{:?}", statuses(&replies));
    for reply in limited {
        assert_eq!(reply.code(), "too_many_attempts");
        let retry_after: u64 = reply.header("retry-after").expect("Retry-After").parse().expect("seconds");
        assert!((1..=300).contains(&retry_after), "{retry_after}");
    }
    // The right password waits for the window too.
    let right = env
        .command(Method::POST, "/v1/auth/login", Some(&json!({ "emailId": email, "password": PASSWORD })), None)
        .await;
    assert_eq!(right.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn successful_log_ins_in_parallel_are_not_counted_as_failures() {
    let env = TestEnv::start().await;
    let email = env.email("busy");
    env.signup(&email).await;
    let body = json!({ "emailId": email, "password": PASSWORD });
    // More successes than the limit, in two waves: each success hands its
    // count back, so none is refused.
    for _ in 0..2 {
        let replies = all_at_once(&env, vec![(Method::POST, "/v1/auth/login".to_owned(), body.clone(), None); 4]).await;
        assert!(replies.iter().all(|r| r.status == StatusCode::OK), "{:?}", statuses(&replies));
    }
}

#[tokio::test]
async fn the_password_change_is_no_guessing_oracle() {
    let env = TestEnv::start().await;
    let email = env.email("owner");
    env.signup(&email).await;
    let (live, _) = env.login(&email, PASSWORD).await;
    let (logged_out, _) = env.login(&email, PASSWORD).await;
    let logout = env.command(Method::POST, "/v1/auth/logout", None, Some(&logged_out)).await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT);

    // A logged-out token learns nothing: the same 401 for a wrong and for
    // the right current password, and neither is counted.
    for current in ["Wr0ng!pass", PASSWORD] {
        let body = json!({ "currentPassword": current, "newPassword": "N3w!password" });
        let reply = env.command(Method::PUT, "/v1/profile/password", Some(&body), Some(&logged_out)).await;
        assert_eq!((reply.status, reply.code()), (StatusCode::UNAUTHORIZED, "invalid_token"), "{current}");
    }

    // A live token guessing in parallel: no more verdicts than the limit,
    // the rest 429, shared with the log-in limit of the account.
    let guess = json!({ "currentPassword": "Wr0ng!pass", "newPassword": "N3w!password" });
    let replies =
        all_at_once(&env, vec![(Method::PUT, "/v1/profile/password".to_owned(), guess, Some(live.clone())); 40]).await;
    let wrong = replies.iter().filter(|r| r.code() == "current_password_incorrect").count();
    let limited = replies.iter().filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS).count();
    assert_eq!((wrong, limited), (PER_ACCOUNT, 40 - PER_ACCOUNT), "{:?}", statuses(&replies));
    let login = env
        .command(Method::POST, "/v1/auth/login", Some(&json!({ "emailId": email, "password": PASSWORD })), None)
        .await;
    assert_eq!(login.status, StatusCode::TOO_MANY_REQUESTS, "one limit for both");
}

#[tokio::test]
async fn a_signup_flood_is_turned_away_instead_of_queueing_log_ins() {
    // Two checks may wait for the hasher; the rest are told to come back.
    let env = TestEnv::start_with(vec![("DEVCONNECT_HASH_QUEUE", "2")]).await;
    let email = env.email("regular");
    env.signup(&email).await;
    let flood: Vec<_> = (0..40)
        .map(|i| (Method::POST, "/v1/auth/signup".to_owned(), TestEnv::signup_body(&env.email(&format!("f{i}"))), None))
        .collect();
    let replies = all_at_once(&env, flood).await;
    let created = replies.iter().filter(|r| r.status == StatusCode::CREATED).count();
    let busy: Vec<&Reply> = replies.iter().filter(|r| r.status == StatusCode::SERVICE_UNAVAILABLE).collect();
    assert_eq!(created + busy.len(), 40, "only 201 or 503: {:?}", statuses(&replies));
    assert!(!busy.is_empty() && created >= 2, "{:?}", statuses(&replies));
    for reply in &busy {
        assert_eq!(reply.code(), "hasher_busy");
        assert_eq!(reply.header("retry-after").as_deref(), Some("1"));
    }
    // Nothing was half-done: a turned-away signup can simply be sent again.
    let again = env.command(Method::POST, "/v1/auth/signup", Some(&TestEnv::signup_body(&env.email("f0"))), None).await;
    assert!([StatusCode::CREATED, StatusCode::CONFLICT].contains(&again.status), "{again:?}");
    // And log-ins go through once the burst is over.
    env.login(&email, PASSWORD).await;
}
