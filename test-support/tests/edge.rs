//! Limits at the edge: a client that trickles its body does not hold a
//! request open for ever; it gets a 4xx once the body timeout passes.

use std::time::{Duration, Instant};

use test_support::TestEnv;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn a_client_trickling_its_body_is_cut_off_with_a_client_error() {
    let env = TestEnv::start().await;
    for port in [env.command_port, env.query_port] {
        let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
        let head = "POST /v1/auth/signup HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n";
        socket.write_all(head.as_bytes()).await.expect("head");
        socket.write_all(b"{\"firstName\"").await.expect("a first bit of body");
        let started = Instant::now();
        // Then nothing more: the server must answer by itself.
        let mut reply = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(25), async {
            let mut buffer = [0_u8; 1024];
            loop {
                match socket.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        reply.extend_from_slice(&buffer[..n]);
                        if reply.windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                }
            }
        })
        .await;
        assert!(read.is_ok(), "port {port}: still waiting for the body after 25 s");
        let text = String::from_utf8_lossy(&reply);
        let status: u16 = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        assert!((400..500).contains(&status), "port {port}: a client's stall is a 4xx, got {text:?}");
        if port == env.command_port {
            // It did wait for the body (the query API reads none, and
            // answers at once).
            assert!(started.elapsed() >= Duration::from_secs(5), "cut off too early ({:?}): {text}", started.elapsed());
        }
    }
}

/// A consistency token the command API did not sign (another topic,
/// partition or offset, past the end of the log, or the old unsigned
/// format) is a client's mistake: 400 at once, not a 5 s wait and a 503.
#[tokio::test]
async fn a_forged_consistency_token_is_refused_at_once() {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    let env = TestEnv::start().await;
    let (_, token) = env.user("ada").await;
    let edit = serde_json::json!({"about": "x"});
    let genuine = env.command(reqwest::Method::PATCH, "/v1/profile", Some(&edit), Some(&token)).await.consistency();
    let ok = env.query("/v1/profile", &token, Some(&genuine)).await;
    assert_eq!(ok.status, reqwest::StatusCode::OK, "{:?}", ok.body);

    let signed = String::from_utf8(URL_SAFE_NO_PAD.decode(&genuine).expect("base64")).expect("utf-8");
    let fields: Vec<&str> = signed.split('|').collect();
    let [version, topic, partition, offset, tag] = fields[..] else { panic!("unexpected token layout: {signed}") };
    let forge = |topic: &str, partition: &str, offset: &str| {
        URL_SAFE_NO_PAD.encode(format!("{version}|{topic}|{partition}|{offset}|{tag}"))
    };
    let forgeries = [
        ("an unknown topic", forge("no-such-topic", partition, offset)),
        ("an unknown partition", forge(topic, "999", offset)),
        ("an offset past the end of the log", forge(topic, partition, "999999999999")),
        ("the unsigned v1 format", URL_SAFE_NO_PAD.encode(format!("v1|{topic}|{partition}|{offset}"))),
        ("no tag", URL_SAFE_NO_PAD.encode(format!("{version}|{topic}|{partition}|{offset}"))),
    ];
    for (what, forged) in forgeries {
        let started = Instant::now();
        let reply = env.query("/v1/profile", &token, Some(&forged)).await;
        assert_eq!(
            (reply.status, reply.code()),
            (reqwest::StatusCode::BAD_REQUEST, "consistency_token_invalid"),
            "{what}: {:?}",
            reply.body
        );
        assert!(started.elapsed() < Duration::from_secs(1), "{what}: answered only after {:?}", started.elapsed());
    }
}

/// Past the bound on requests in flight, a request is answered at once with
/// 503 `overloaded` and Retry-After instead of queueing; the rest are served.
#[tokio::test]
async fn requests_past_the_in_flight_bound_are_shed_with_retry_after() {
    let env = TestEnv::start_with(vec![("DEVCONNECT_MAX_IN_FLIGHT", "4")]).await;
    // Sign-ups hash a password: slow enough that forty overlap.
    let replies = futures::future::join_all((0..40).map(|i| {
        let (env, body) = (&env, TestEnv::signup_body(&env.email(&format!("crowd{i}"))));
        async move { env.command(reqwest::Method::POST, "/v1/auth/signup", Some(&body), None).await }
    }))
    .await;
    let (mut created, mut shed) = (0, 0);
    for reply in &replies {
        match reply.status.as_u16() {
            201 => created += 1,
            503 => {
                assert_eq!(reply.code(), "overloaded", "{:?}", reply.body);
                assert_eq!(reply.header("retry-after").as_deref(), Some("1"));
                shed += 1;
            }
            other => panic!("neither served nor shed: {other} {:?}", reply.body),
        }
    }
    assert!(created >= 4 && shed > 0, "{created} created, {shed} shed");
    let later = TestEnv::signup_body(&env.email("later"));
    let after = env.command(reqwest::Method::POST, "/v1/auth/signup", Some(&later), None).await;
    assert_eq!(after.status, reqwest::StatusCode::CREATED, "the bound frees up as requests finish");
}
