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
