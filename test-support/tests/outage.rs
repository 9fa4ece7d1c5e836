//! A broker outage: writes answer 503 quickly with nothing half-written,
//! and the command API serves again, consistently, once the broker is back.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use test_support::{PASSWORD, TestEnv, free_port, start_private_broker};

#[tokio::test]
async fn a_broker_outage_gives_503_and_nothing_half_written() {
    let dir = std::env::temp_dir().join(format!("devconnect-broker-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let port = free_port();
    let mut broker = start_private_broker(&dir, port).await;
    let brokers = format!("127.0.0.1:{port}");
    let env = TestEnv::start_with(vec![
        ("DEVCONNECT_KAFKA_BROKERS", brokers.as_str()),
        ("DEVCONNECT_KAFKA_DELIVERY_TIMEOUT", "2s"),
    ])
    .await;
    let before = env.email("before");
    env.signup(&before).await;

    broker.crash();
    let during = env.email("during");
    let started = Instant::now();
    let reply = env.command(Method::POST, "/v1/auth/signup", Some(&TestEnv::signup_body(&during)), None).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", reply.body);
    assert!(matches!(reply.code(), "dependency_unavailable" | "not_ready"), "{:?}", reply.body);
    assert!(reply.header("retry-after").is_some());
    assert!(started.elapsed() < Duration::from_secs(15), "a 503 comes within the delivery timeout");

    // Same storage: the broker comes back with everything it acknowledged.
    let _broker = start_private_broker(&dir, port).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    let retried = loop {
        let reply = env.command(Method::POST, "/v1/auth/signup", Some(&TestEnv::signup_body(&during)), None).await;
        if reply.status != StatusCode::SERVICE_UNAVAILABLE {
            break reply;
        }
        assert!(Instant::now() < deadline, "command API never recovered: {:?}", reply.body);
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // The failed signup left nothing behind: the email is free, once.
    assert_eq!(retried.status, StatusCode::CREATED, "{:?}", retried.body);
    let again = env.command(Method::POST, "/v1/auth/signup", Some(&TestEnv::signup_body(&during)), None).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    env.login(&before, PASSWORD).await;
    let _ = std::fs::remove_dir_all(&dir);
}
