//! The views survive a cache loss; the services' ops endpoints and API
//! documents; start-up refuses bad secrets. Rebuilds: `replay.rs`.

use reqwest::{Method, StatusCode};
use test_support::{PASSWORD, TestEnv};

/// Waits until the projector's checkpoints cover `token`, by asking the
/// query API (which waits on the same checkpoints) for a consistent read.
async fn caught_up(env: &TestEnv, token: &str, consistency: &str) {
    let reply = env.query("/v1/profile", token, Some(consistency)).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
}

#[tokio::test]
async fn redis_loss_keeps_reads_sessions_and_revocations() {
    let env = TestEnv::start().await;
    let email = env.email("flush");
    let (user_id, _) = env.signup(&email).await;
    let (live, consistency) = env.login(&email, PASSWORD).await;
    let (revoked, _) = env.login(&email, PASSWORD).await;
    caught_up(&env, &live, &consistency).await;
    let logout = env.command(Method::POST, "/v1/auth/logout", None, Some(&revoked)).await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    caught_up(&env, &live, &logout.consistency()).await;

    let mut redis = env.redis().await;
    let () = redis::cmd("FLUSHALL").query_async(&mut redis).await.expect("flushall");

    let own = env.query("/v1/profile", &live, None).await;
    assert_eq!(own.status, StatusCode::OK, "reads fall back to MongoDB: {:?}", own.body);
    assert_eq!(own.body["userId"], user_id.as_str());
    let again = env.query("/v1/profile", &revoked, None).await;
    assert_eq!(again.status, StatusCode::UNAUTHORIZED, "a revoked session stays revoked");
    // The read refilled the cache.
    let cached: Option<String> = redis::cmd("GET")
        .arg(env.view_key(&format!("user:{user_id}")).await)
        .query_async(&mut redis)
        .await
        .expect("get");
    assert!(cached.is_some(), "read-through refill");
    // Writes still work too (the throttle counters are technical state).
    env.login(&email, PASSWORD).await;
}

#[tokio::test]
async fn ops_endpoints_and_api_documents() {
    let env = TestEnv::start().await;
    for base in [env.command_url(""), env.query_url(""), format!("http://127.0.0.1:{}", env.projector_port)] {
        let health = env.http.get(format!("{base}/healthz")).send().await.expect("healthz");
        assert!(health.status().is_success(), "{base}");
        let ready: serde_json::Value =
            env.http.get(format!("{base}/readyz")).send().await.expect("readyz").json().await.expect("json");
        assert_eq!(ready["ready"], true, "{base}: {ready}");
        let metrics =
            env.http.get(format!("{base}/metrics")).send().await.expect("metrics").text().await.expect("text");
        assert!(metrics.contains("http_requests_total"), "{base}: {metrics}");
    }
    for (base, path) in [(env.command_url(""), "/v1/auth/signup"), (env.query_url(""), "/v1/profile")] {
        let doc: serde_json::Value =
            env.http.get(format!("{base}/openapi.json")).send().await.expect("openapi").json().await.expect("json");
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")), "{doc}");
        assert!(doc["paths"].get(path).is_some(), "{path} documented");
        let docs = env.http.get(format!("{base}/docs/")).send().await.expect("docs");
        assert_eq!(docs.status(), StatusCode::OK);
        assert!(docs.text().await.expect("html").contains("swagger"), "the explorer page is served locally");
    }
    // The correlation id comes back, and is echoed from the client when sane.
    let reply = env.send(Method::GET, &env.command_url("/healthz"), None, &[("x-correlation-id", "trace-me-42")]).await;
    assert_eq!(reply.header("x-correlation-id").as_deref(), Some("trace-me-42"));
}

#[tokio::test]
async fn services_refuse_to_start_without_a_proper_secret() {
    let env = TestEnv::start().await;
    for binary in ["command-api", "query-api"] {
        for secret in [None, Some("too-short")] {
            let mut vars: Vec<(String, String)> = vec![
                ("DEVCONNECT_KAFKA_BROKERS".into(), env.servers.kafka.clone()),
                ("DEVCONNECT_MONGO_URI".into(), env.servers.mongo_uri.clone()),
                ("DEVCONNECT_REDIS_URL".into(), env.redis_url()),
                ("DEVCONNECT_COMMAND_API_ADDR".into(), format!("127.0.0.1:{}", test_support::free_port())),
                ("DEVCONNECT_QUERY_API_ADDR".into(), format!("127.0.0.1:{}", test_support::free_port())),
            ];
            if let Some(s) = secret {
                vars.push(("DEVCONNECT_JWT_SECRET".into(), s.into()));
            }
            let mut proc = env.spawn(binary, &vars);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            let status = loop {
                if let Some(status) = proc.exited() {
                    break status;
                }
                assert!(std::time::Instant::now() < deadline, "{binary} started without a valid secret");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            };
            assert!(!status.success());
            assert!(
                proc.log_text().contains("DEVCONNECT_JWT_SECRET") || proc.log_text().contains("jwt-secret"),
                "{}",
                proc.log_text()
            );
        }
    }
}
