//! Write-model snapshots (docs/design.md §14): the command API starts from
//! its latest snapshot plus the tail of each partition, every rule still
//! holds after it, and a snapshot that cannot be read is ignored.

use std::time::Duration;

use mongodb::bson::{Binary, Document, doc, spec::BinarySubtype};
use reqwest::{Method, StatusCode};
use serde_json::json;
use test_support::{PASSWORD, Reply, TestEnv, eventually};

fn command_log(env: &TestEnv) -> String {
    env.command_api.as_ref().expect("command API running").log_text()
}

async fn command_metric(env: &TestEnv, name: &str) -> Option<f64> {
    let text = env.http.get(env.command_url("/metrics")).send().await.ok()?.text().await.ok()?;
    text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

/// What was written before the restart, and what must hold after it.
struct Before {
    emails: Vec<String>,
    live_token: String,
    revoked_token: String,
    signup_body: serde_json::Value,
    signup: Reply,
    message_to: String,
    message: Reply,
}

const SIGNUP_KEY: &str = "snapshot-signup-1";
const MESSAGE_KEY: &str = "snapshot-message-1";

async fn message(env: &TestEnv, token: &str, to: &str) -> Reply {
    let auth = format!("Bearer {token}");
    let headers = [("idempotency-key", MESSAGE_KEY), ("authorization", auth.as_str())];
    env.send(Method::POST, &env.command_url(&format!("/v1/messages/{to}")), Some(&json!({"text": "hi"})), &headers)
        .await
}

async fn write_history(env: &TestEnv) -> Before {
    let mut emails = Vec::new();
    let mut users = Vec::new();
    for name in ["ada", "bob", "cy"] {
        let email = env.email(name);
        let (id, _) = env.signup(&email).await;
        let (token, _) = env.login(&email, PASSWORD).await;
        emails.push(email);
        users.push((id, token));
    }
    let accepted = env.connect(&users[0].1, &users[1].0, &users[1].1).await;
    assert_eq!(accepted.status, StatusCode::OK);
    let sent = message(env, &users[0].1, &users[1].0).await;
    assert_eq!(sent.status, StatusCode::CREATED, "{:?}", sent.body);
    let logout = env.command(Method::POST, "/v1/auth/logout", None, Some(&users[2].1)).await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    let email = env.email("dee");
    let body = TestEnv::signup_body(&email);
    let signup = env
        .send(Method::POST, &env.command_url("/v1/auth/signup"), Some(&body), &[("idempotency-key", SIGNUP_KEY)])
        .await;
    assert_eq!(signup.status, StatusCode::CREATED);
    emails.push(email);
    Before {
        emails,
        live_token: users[0].1.clone(),
        revoked_token: users[2].1.clone(),
        signup_body: body,
        signup,
        message_to: users[1].0.clone(),
        message: sent,
    }
}

/// Every rule the model decides on, checked over HTTP.
async fn rules_hold(env: &TestEnv, before: &Before) {
    for email in &before.emails {
        let again = env.command(Method::POST, "/v1/auth/signup", Some(&TestEnv::signup_body(email)), None).await;
        assert_eq!((again.status, again.code()), (StatusCode::CONFLICT, "email_taken"), "{email}");
    }
    let retry = env
        .send(
            Method::POST,
            &env.command_url("/v1/auth/signup"),
            Some(&before.signup_body),
            &[("idempotency-key", SIGNUP_KEY)],
        )
        .await;
    assert_eq!((retry.status, &retry.body), (StatusCode::CREATED, &before.signup.body));
    assert_eq!(retry.header("idempotent-replayed").as_deref(), Some("true"));
    assert_eq!(retry.consistency(), before.signup.consistency(), "no second registration");

    let resent = message(env, &before.live_token, &before.message_to).await;
    assert_eq!((resent.status, &resent.body), (StatusCode::CREATED, &before.message.body));
    assert_eq!(resent.consistency(), before.message.consistency(), "no second message");

    let edit = env
        .command(Method::PATCH, "/v1/profile", Some(&json!({"about": "still here"})), Some(&before.live_token))
        .await;
    assert_eq!(edit.status, StatusCode::OK, "a live session stays live: {:?}", edit.body);
    let revoked =
        env.command(Method::PATCH, "/v1/profile", Some(&json!({"about": "gone"})), Some(&before.revoked_token)).await;
    assert_eq!(revoked.status, StatusCode::UNAUTHORIZED, "a revoked session stays revoked");
}

#[tokio::test]
async fn the_command_api_starts_from_its_snapshot_and_ignores_one_it_cannot_read() {
    let mut env = TestEnv::start_with(vec![("DEVCONNECT_SNAPSHOT_EVERY", "5")]).await;
    let before = write_history(&env).await;
    eventually("a snapshot is written", Duration::from_secs(30), || async {
        command_log(&env).contains("write-model snapshot written").then_some(()).ok_or_else(|| "not yet".to_owned())
    })
    .await;
    // A tail after the snapshot: a sign-up the restart must read from the log.
    let tail_email = env.email("tail");
    env.signup(&tail_email).await;

    env.restart_command_api().await;
    let log = command_log(&env);
    assert!(log.contains("write model loaded from snapshot"), "{log}");
    let offset = command_metric(&env, "write_model_snapshot_offset").await.unwrap_or(0.0);
    assert!(offset > 0.0, "the metric names the snapshot's offsets: {offset}");
    rules_hold(&env, &before).await;
    let tail = env.command(Method::POST, "/v1/auth/signup", Some(&TestEnv::signup_body(&tail_email)), None).await;
    assert_eq!((tail.status, tail.code()), (StatusCode::CONFLICT, "email_taken"), "the tail was read");
    env.login(&tail_email, PASSWORD).await;

    // Garbage where the snapshot's bytes live: ignored, the log read from 0.
    let snapshots = env.mongo().await.collection::<Document>("command_snapshots");
    let garbage = Binary { subtype: BinarySubtype::Generic, bytes: b"not a snapshot at all".to_vec() };
    let hit = snapshots
        .update_many(doc! { "_id": { "$ne": "manifest" } }, doc! { "$set": { "data": garbage } })
        .await
        .expect("corrupt the chunks");
    assert!(hit.matched_count >= 1);
    let written = command_log(&env).matches("write-model snapshot written").count();
    env.restart_command_api().await;
    let log = command_log(&env);
    assert!(log.contains("ignoring the write-model snapshot"), "{log}");
    rules_hold(&env, &before).await;
    // Having read everything from offset 0, it writes a fresh snapshot.
    eventually("a fresh snapshot", Duration::from_secs(30), || async {
        (command_log(&env).matches("write-model snapshot written").count() > written)
            .then_some(())
            .ok_or_else(|| "not yet".to_owned())
    })
    .await;

    // A manifest of an unknown format version: ignored too.
    snapshots
        .update_one(doc! { "_id": "manifest" }, doc! { "$set": { "formatVersion": 99 } })
        .await
        .expect("bump the version");
    env.restart_command_api().await;
    let ignored = command_log(&env).matches("ignoring the write-model snapshot").count();
    assert!(ignored >= 2, "{}", command_log(&env));
    rules_hold(&env, &before).await;
}
