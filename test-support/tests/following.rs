//! The command API's write model follows the log while it runs
//! (`command-api/src/log_follower.rs`): a record another writer appends
//! (an import, a re-driven dead letter) takes part in decisions at once,
//! not only after a restart.

use std::time::Duration;

use events::Topic;
use reqwest::{Method, StatusCode};
use test_support::{LEGACY_RECORD, LEGACY_USER, TestEnv, eventually};

#[tokio::test]
async fn a_user_imported_into_the_log_can_be_sent_a_request_without_a_restart() {
    let env = TestEnv::start().await;
    let (_, token) = env.user("ada").await;
    let path = format!("/v1/requests/send/interested/{LEGACY_USER}");
    let unknown = env.command(Method::POST, &path, None, Some(&token)).await;
    assert_eq!((unknown.status, unknown.code()), (StatusCode::NOT_FOUND, "user_not_found"), "{:?}", unknown.body);

    // Idle for longer than the follower's pause: the import arrives
    // unannounced, and the watermark poll must find it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    env.produce_raw(Topic::UserEvents, LEGACY_USER, LEGACY_RECORD.trim().as_bytes(), &[]).await;
    let sent = eventually("the imported user is known to the write model", Duration::from_secs(10), || async {
        let reply = env.command(Method::POST, &path, None, Some(&token)).await;
        if reply.status == StatusCode::CREATED { Ok(reply) } else { Err(format!("{}: {:?}", reply.status, reply.body)) }
    })
    .await;
    assert!(sent.body["requestId"].is_string(), "{:?}", sent.body);

    // Its events were folded once: the request exists, and a second one is refused.
    let again = env.command(Method::POST, &path, None, Some(&token)).await;
    assert_eq!((again.status, again.code()), (StatusCode::CONFLICT, "request_exists"), "{:?}", again.body);
}
