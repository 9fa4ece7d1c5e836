//! GET /v1/stream: live notifications, messages and presence changes,
//! only the caller's own, resumable with Last-Event-ID.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use test_support::TestEnv;

#[derive(Debug, Clone)]
struct SseEvent {
    id: String,
    kind: String,
    data: Value,
}

/// A Redis stream id (`<ms>-<seq>`) as a comparable pair.
fn stream_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or_else(|| panic!("not a stream id: {id}"));
    (ms.parse().expect("ms"), seq.parse().expect("seq"))
}

/// Reads server-sent events off a live response.
struct SseReader {
    response: reqwest::Response,
    buffer: String,
}

impl SseReader {
    async fn open(env: &TestEnv, token: &str, last_event_id: Option<&str>) -> Self {
        let mut request =
            env.http.get(env.query_url("/v1/stream")).bearer_auth(token).timeout(Duration::from_secs(600));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.expect("stream opens");
        assert_eq!(response.status(), StatusCode::OK);
        let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert!(content_type.starts_with("text/event-stream"), "{content_type}");
        SseReader { response, buffer: String::new() }
    }

    /// The next event within `within`, skipping keep-alive comments.
    async fn next(&mut self, within: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut kind, mut data) = (String::new(), String::new(), String::new());
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        kind = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if kind.is_empty() {
                    continue; // a keep-alive comment
                }
                return Some(SseEvent { id, kind, data: serde_json::from_str(&data).expect("JSON data") });
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk()).await.ok()?.expect("stream read")?;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// The next event of `kind` matching `pred`, skipping others.
    async fn expect(&mut self, kind: &str, pred: impl Fn(&Value) -> bool) -> SseEvent {
        loop {
            let event = self.next(Duration::from_secs(20)).await.unwrap_or_else(|| panic!("no {kind} event arrived"));
            if event.kind == kind && pred(&event.data) {
                return event;
            }
        }
    }
}

#[tokio::test]
async fn the_stream_delivers_only_the_callers_events_and_resumes() {
    let env = TestEnv::start().await;
    let (a, a_token) = env.user("a").await;
    let (b, b_token) = env.user("b").await;
    let (_, c_token) = env.user("c").await;
    let accepted = env.connect(&a_token, &b, &b_token).await;
    let projected = env.query("/v1/profile", &a_token, Some(&accepted.consistency())).await;
    assert_eq!(projected.status, StatusCode::OK, "{:?}", projected.body);

    let mut a_stream = SseReader::open(&env, &a_token, None).await;
    let mut b_stream = SseReader::open(&env, &b_token, None).await;
    let mut c_stream = SseReader::open(&env, &c_token, None).await;

    let sent =
        env.command(Method::POST, &format!("/v1/messages/{b}"), Some(&json!({"text": "live!"})), Some(&a_token)).await;
    assert_eq!(sent.status, StatusCode::CREATED);
    let message_id = sent.body["messageId"].clone();
    let got = b_stream.expect("message", |d| d["messageId"] == message_id).await;
    assert_eq!((got.data["text"].as_str(), got.data["fromUserId"].as_str()), (Some("live!"), Some(a.as_str())));
    let note = b_stream.expect("notification", |d| d["messageId"] == message_id).await;
    assert_eq!(note.data["type"], "message");
    assert!(note.data["notificationId"].is_string(), "the REST shape: {:?}", note.data);
    a_stream.expect("message", |d| d["messageId"] == message_id).await;
    // Isolation: by now b has both; c, who is in none of it, has nothing.
    assert!(c_stream.next(Duration::from_millis(500)).await.is_none(), "c saw someone else's event");

    // Presence goes to connections: a sees b come online; c does not.
    let beat = env.command(Method::POST, "/v1/presence/heartbeat", None, Some(&b_token)).await;
    assert_eq!(beat.status, StatusCode::NO_CONTENT);
    let presence = a_stream.expect("presence", |d| d["userId"] == b.as_str()).await;
    assert_eq!(presence.data["online"], true);
    assert!(c_stream.next(Duration::from_millis(500)).await.is_none(), "c saw a stranger's presence");

    // Resumption: what arrives while b is away is delivered on reconnect,
    // and nothing before the Last-Event-ID comes again.
    let resume_from = note.id.clone();
    let seen_before = [got.id.clone(), note.id.clone()];
    drop(b_stream);
    let away = env
        .command(Method::POST, &format!("/v1/messages/{b}"), Some(&json!({"text": "while away"})), Some(&a_token))
        .await;
    let away_id = away.body["messageId"].clone();
    let projected = env.query("/v1/profile", &b_token, Some(&away.consistency())).await;
    assert_eq!(projected.status, StatusCode::OK, "{:?}", projected.body);
    let mut b_again = SseReader::open(&env, &b_token, Some(&resume_from)).await;
    let mut resumed = Vec::new();
    loop {
        let event = b_again.next(Duration::from_secs(20)).await.expect("the message sent while away is resumed");
        let done = event.kind == "message" && event.data["messageId"] == away_id;
        resumed.push(event);
        if done {
            break;
        }
    }
    // Every resumed event is newer than the one resumed from, and nothing
    // delivered before comes again: a server that ignored Last-Event-ID
    // and replayed the stream from its start fails here.
    for event in &resumed {
        assert!(stream_id(&event.id) > stream_id(&resume_from), "{} is not after {resume_from}: {resumed:?}", event.id);
        assert!(!seen_before.contains(&event.id), "{} was delivered before: {resumed:?}", event.id);
        assert_ne!(event.data["messageId"], message_id, "an event before Last-Event-ID came again: {event:?}");
    }

    let bad = env
        .send(
            Method::GET,
            &env.query_url("/v1/stream"),
            None,
            &[("authorization", &format!("Bearer {b_token}")), ("last-event-id", "nope")],
        )
        .await;
    assert_eq!((bad.status, bad.code()), (StatusCode::BAD_REQUEST, "last_event_id_invalid"));
    let anonymous = env.send(Method::GET, &env.query_url("/v1/stream"), None, &[]).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
}

/// Reads until the stream ends; returns what it delivered meanwhile, or
/// panics if it is still open after `within`.
async fn until_closed(stream: &mut SseReader, within: Duration) -> Vec<SseEvent> {
    let deadline = tokio::time::Instant::now() + within;
    let mut delivered = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(!left.is_zero(), "the stream is still open after {within:?}; delivered {delivered:?}");
        let chunk = tokio::time::timeout(left, stream.response.chunk()).await;
        match chunk {
            Ok(Ok(Some(bytes))) => {
                stream.buffer.push_str(&String::from_utf8_lossy(&bytes));
                while let Some(end) = stream.buffer.find("\n\n") {
                    let frame: String = stream.buffer.drain(..end + 2).collect();
                    if frame.contains("event:") {
                        delivered.push(SseEvent { id: String::new(), kind: frame.clone(), data: Value::Null });
                    }
                }
            }
            Ok(Ok(None) | Err(_)) => return delivered,
            Err(_) => panic!("the stream is still open after {within:?}; delivered {delivered:?}"),
        }
    }
}

#[tokio::test]
async fn an_open_stream_ends_soon_after_its_session_is_revoked() {
    let env = TestEnv::start().await;
    let (_, a_token) = env.user("a").await;
    let (b, b_token) = env.user("b").await;
    let accepted = env.connect(&a_token, &b, &b_token).await;
    let projected = env.query("/v1/profile", &a_token, Some(&accepted.consistency())).await;
    assert_eq!(projected.status, StatusCode::OK);
    let (second, _) = env.login(&env.email("b"), test_support::PASSWORD).await;
    let mut stream = SseReader::open(&env, &second, None).await;

    let logout = env.command(Method::POST, "/v1/auth/logout", None, Some(&second)).await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    let logged_out = tokio::time::Instant::now();
    // A private message a second later must not reach the logged-out stream.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent = env
        .command(Method::POST, &format!("/v1/messages/{b}"), Some(&json!({"text": "private"})), Some(&a_token))
        .await;
    assert_eq!(sent.status, StatusCode::CREATED);
    let delivered = until_closed(&mut stream, Duration::from_secs(8)).await;
    assert!(logged_out.elapsed() < Duration::from_secs(5), "closed only after {:?}", logged_out.elapsed());
    assert!(delivered.is_empty(), "delivered after the logout: {delivered:?}");
    // The live session's stream is unaffected.
    let mut live = SseReader::open(&env, &b_token, None).await;
    let again = env
        .command(Method::POST, &format!("/v1/messages/{b}"), Some(&json!({"text": "still here"})), Some(&a_token))
        .await;
    let id = again.body["messageId"].clone();
    live.expect("message", |d| d["messageId"] == id).await;
}

#[tokio::test]
async fn an_open_stream_ends_when_its_token_expires() {
    let env = TestEnv::start_with(vec![("DEVCONNECT_SESSION_TTL", "6s")]).await;
    let email = env.email("short");
    env.signup(&email).await;
    let (token, _) = env.login(&email, test_support::PASSWORD).await;
    let opened = tokio::time::Instant::now();
    let mut stream = SseReader::open(&env, &token, None).await;
    until_closed(&mut stream, Duration::from_secs(15)).await;
    let lasted = opened.elapsed();
    assert!(lasted < Duration::from_secs(10), "the stream outlived its token by {lasted:?}");
    // `exp` has whole seconds: past the second it names, the token is refused.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let expired = env.query("/v1/profile", &token, None).await;
    assert_eq!(expired.status, StatusCode::UNAUTHORIZED);
}

/// Opens a stream and keeps the response, whatever its status.
async fn open_raw(env: &TestEnv, token: &str) -> reqwest::Response {
    env.http
        .get(env.query_url("/v1/stream"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(600))
        .send()
        .await
        .expect("the query API answers")
}

#[tokio::test]
async fn forty_simultaneous_streams_of_one_user_open_only_up_to_the_cap() {
    let env = TestEnv::start_with(vec![("DEVCONNECT_STREAMS_PER_USER", "5")]).await;
    let (_, token) = env.user("greedy").await;
    let replies = futures::future::join_all((0..40).map(|_| open_raw(&env, &token))).await;
    let open: Vec<&reqwest::Response> = replies.iter().filter(|r| r.status() == StatusCode::OK).collect();
    assert_eq!(open.len(), 5, "{:?}", replies.iter().map(reqwest::Response::status).collect::<Vec<_>>());
    for refused in replies.iter().filter(|r| r.status() != StatusCode::OK) {
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(refused.headers().get("retry-after").is_some(), "429 carries Retry-After");
    }
    let (_, other) = env.user("modest").await;
    let theirs = open_raw(&env, &other).await;
    assert_eq!(theirs.status(), StatusCode::OK, "the cap is per user");
}

#[tokio::test]
async fn streams_are_capped_in_total_and_share_one_redis_connection() {
    let env =
        TestEnv::start_with(vec![("DEVCONNECT_STREAMS_PER_USER", "20"), ("DEVCONNECT_STREAMS_TOTAL", "20")]).await;
    let (_, a_token) = env.user("a").await;
    let (b, b_token) = env.user("b").await;
    let accepted = env.connect(&a_token, &b, &b_token).await;
    assert_eq!(env.query("/v1/profile", &a_token, Some(&accepted.consistency())).await.status, StatusCode::OK);
    let mut redis = env.redis().await;
    let clients = |list: String| list.lines().filter(|l| !l.trim().is_empty()).count();
    let before = clients(redis::cmd("CLIENT").arg("LIST").query_async(&mut redis).await.expect("CLIENT LIST"));

    let mut streams = Vec::new();
    for _ in 0..20 {
        streams.push(SseReader::open(&env, &b_token, None).await);
    }
    let refused = open_raw(&env, &a_token).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS, "21st stream on a server capped at 20");
    let after = clients(redis::cmd("CLIENT").arg("LIST").query_async(&mut redis).await.expect("CLIENT LIST"));
    assert!(after <= before + 1, "20 streams opened {} Redis connections", after.saturating_sub(before));

    // And every one of them gets the message.
    let text = json!({"text": "to all"});
    let sent = env.command(Method::POST, &format!("/v1/messages/{b}"), Some(&text), Some(&a_token)).await;
    let id = sent.body["messageId"].clone();
    assert!(!id.is_null());
    for stream in &mut streams {
        stream.expect("message", |d| d["messageId"] == id).await;
    }
}
