//! Presence: online for the TTL after a heartbeat, offline after `offline`
//! or expiry, last-seen kept. The TTL is shortened for the test, but kept
//! above the longest consistency wait, so a slow machine cannot see the
//! heartbeat expire before the read that waits for it returns.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use test_support::TestEnv;

#[tokio::test]
async fn heartbeats_expire_and_offline_is_immediate() {
    let env = TestEnv::start_with(vec![("DEVCONNECT_PRESENCE_TTL", "8s"), ("DEVCONNECT_CONSISTENCY_WAIT", "5s")]).await;
    let (a, a_token) = env.user("a").await;
    let (_, b_token) = env.user("b").await;
    let path = format!("/v1/presence/{a}");

    // Wait until a is in the views: a's events share one partition, so a
    // consistency token from a's latest log-in covers the registration.
    let (_, a_projected) = env.login(&env.email("a"), test_support::PASSWORD).await;
    let never = env.query(&path, &b_token, Some(&a_projected)).await;
    assert_eq!(never.status, StatusCode::OK, "{:?}", never.body);
    assert_eq!((never.body["online"].as_bool(), never.body["lastSeen"].is_null()), (Some(false), true));

    let beat = env.command(Method::POST, "/v1/presence/heartbeat", None, Some(&a_token)).await;
    assert_eq!(beat.status, StatusCode::NO_CONTENT);
    let beat_at = Instant::now();
    let online = env.query(&path, &b_token, Some(&beat.consistency())).await;
    assert_eq!(online.body["online"], true, "{:?}", online.body);
    let last_seen = online.body["lastSeen"].as_str().expect("lastSeen").to_owned();

    // Expiry: wait for the TTL to pass, polling within a bound.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let reply = env.query(&path, &b_token, None).await;
        if reply.body["online"] == false {
            assert!(beat_at.elapsed() >= Duration::from_secs(7), "offline too early: {:?}", beat_at.elapsed());
            assert_eq!(reply.body["lastSeen"], last_seen.as_str(), "last seen kept");
            break;
        }
        assert!(Instant::now() < deadline, "still online long after the TTL");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let beat = env.command(Method::POST, "/v1/presence/heartbeat", None, Some(&a_token)).await;
    assert_eq!(env.query(&path, &b_token, Some(&beat.consistency())).await.body["online"], true);
    let off = env.command(Method::POST, "/v1/presence/offline", None, Some(&a_token)).await;
    assert_eq!(off.status, StatusCode::NO_CONTENT);
    let offline = env.query(&path, &b_token, Some(&off.consistency())).await;
    assert_eq!(offline.body["online"], false, "{:?}", offline.body);
    assert!(offline.body["lastSeen"].as_str().expect("lastSeen") > last_seen.as_str());

    let unknown = env.query(&format!("/v1/presence/{}", uuid::Uuid::new_v4()), &b_token, None).await;
    assert_eq!((unknown.status, unknown.code()), (StatusCode::NOT_FOUND, "user_not_found"));
    let bad = env.query("/v1/presence/nope", &b_token, None).await;
    assert_eq!((bad.status, bad.code()), (StatusCode::BAD_REQUEST, "user_id_invalid"));
    let anonymous = env.command(Method::POST, "/v1/presence/heartbeat", None, None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
}
