//! Private messages between connections: rules, read receipts, and history
//! paging across the Redis (newest 50) / MongoDB boundary.

use reqwest::{Method, StatusCode};
use serde_json::json;
use test_support::{Reply, TestEnv};

async fn message(env: &TestEnv, token: &str, to: &str, text: &str) -> Reply {
    env.command(Method::POST, &format!("/v1/messages/{to}"), Some(&json!({ "text": text })), Some(token)).await
}

async fn history_count(env: &TestEnv, path: &str) -> u64 {
    env.query_counter(&format!("history_reads_total{{path=\"{path}\"}}")).await
}

#[tokio::test]
async fn messages_between_connections_with_read_receipts() {
    let env = TestEnv::start().await;
    let (a, a_token) = env.user("a").await;
    let (b, b_token) = env.user("b").await;
    let (c, _) = env.user("c").await;

    let early = message(&env, &a_token, &b, "too soon").await;
    assert_eq!((early.status, early.code()), (StatusCode::FORBIDDEN, "not_connected"));
    env.connect(&a_token, &b, &b_token).await;

    let unknown = uuid::Uuid::new_v4().to_string();
    for (to, text, status, code) in [
        (c.as_str(), "hi", StatusCode::FORBIDDEN, "not_connected"),
        (a.as_str(), "hi", StatusCode::BAD_REQUEST, "cannot_message_self"),
        (unknown.as_str(), "hi", StatusCode::NOT_FOUND, "user_not_found"),
        (b.as_str(), "   ", StatusCode::BAD_REQUEST, "text_empty"),
        (b.as_str(), &"x".repeat(2001), StatusCode::BAD_REQUEST, "text_too_long"),
        ("nope", "hi", StatusCode::BAD_REQUEST, "user_id_invalid"),
    ] {
        let reply = message(&env, &a_token, to, text).await;
        assert_eq!((reply.status, reply.code()), (status, code), "to {to}: {text:.10}");
    }

    let hello = message(&env, &a_token, &b, "hello").await;
    assert_eq!(hello.status, StatusCode::CREATED, "{:?}", hello.body);
    let hi = message(&env, &b_token, &a, "hi back").await;
    let hi_id = hi.body["messageId"].as_str().expect("messageId").to_owned();

    let page = env.query(&format!("/v1/messages/{b}"), &a_token, Some(&hi.consistency())).await;
    assert_eq!(page.status, StatusCode::OK, "{:?}", page.body);
    let texts: Vec<&str> =
        page.body["items"].as_array().expect("items").iter().map(|m| m["text"].as_str().expect("text")).collect();
    assert_eq!(texts, vec!["hi back", "hello"], "newest first");
    assert_eq!(page.body["nextBefore"], serde_json::Value::Null);
    assert_eq!(page.body["items"][0]["fromUserId"], b.as_str());
    assert_eq!(page.body["items"][0]["readAt"], serde_json::Value::Null);
    // The same conversation from the other side.
    assert_eq!(env.query(&format!("/v1/messages/{a}"), &b_token, None).await.body["items"], page.body["items"]);
    // Someone else's conversation is not yours to read.
    let (c_token, _) = env.login(&env.email("c"), test_support::PASSWORD).await;
    let stranger = env.query(&format!("/v1/messages/{b}"), &c_token, None).await;
    assert!(stranger.body["items"].as_array().is_some_and(Vec::is_empty), "{stranger:?}");

    let not_mine = env.command(Method::POST, &format!("/v1/messages/{hi_id}/read"), None, Some(&b_token)).await;
    assert_eq!((not_mine.status, not_mine.code()), (StatusCode::FORBIDDEN, "not_message_recipient"));
    let missing = env.command(Method::POST, &format!("/v1/messages/{unknown}/read"), None, Some(&a_token)).await;
    assert_eq!((missing.status, missing.code()), (StatusCode::NOT_FOUND, "message_not_found"));
    // Sent -> delivered -> read.
    let sender_delivers =
        env.command(Method::POST, &format!("/v1/messages/{hi_id}/delivered"), None, Some(&b_token)).await;
    assert_eq!((sender_delivers.status, sender_delivers.code()), (StatusCode::FORBIDDEN, "not_message_recipient"));
    let delivered = env.command(Method::POST, &format!("/v1/messages/{hi_id}/delivered"), None, Some(&a_token)).await;
    assert_eq!(delivered.status, StatusCode::NO_CONTENT);
    let page = env.query(&format!("/v1/messages/{b}"), &a_token, Some(&delivered.consistency())).await;
    let delivered_at = page.body["items"][0]["deliveredAt"].as_str().expect("deliveredAt").to_owned();
    assert_eq!(page.body["items"][0]["readAt"], serde_json::Value::Null);
    let read = env.command(Method::POST, &format!("/v1/messages/{hi_id}/read"), None, Some(&a_token)).await;
    assert_eq!(read.status, StatusCode::NO_CONTENT);
    let again = env.command(Method::POST, &format!("/v1/messages/{hi_id}/read"), None, Some(&a_token)).await;
    assert_eq!(again.status, StatusCode::NO_CONTENT, "reading twice is harmless");
    assert!(again.header("x-consistency-token").is_none(), "and appends nothing");

    let page = env.query(&format!("/v1/messages/{b}"), &a_token, Some(&read.consistency())).await;
    assert!(page.body["items"][0]["readAt"].is_string(), "{:?}", page.body);
    assert_eq!(page.body["items"][0]["deliveredAt"], delivered_at.as_str(), "reading keeps the delivery time");
    assert_eq!(page.body["items"][1]["readAt"], serde_json::Value::Null);
    let after_read = env.command(Method::POST, &format!("/v1/messages/{hi_id}/delivered"), None, Some(&a_token)).await;
    assert_eq!(after_read.status, StatusCode::NO_CONTENT);
    assert!(after_read.header("x-consistency-token").is_none(), "delivered after read appends nothing");
    // Read without a delivery first: delivered when read.
    let hello_id = hello.body["messageId"].as_str().expect("id").to_owned();
    let read_hello = env.command(Method::POST, &format!("/v1/messages/{hello_id}/read"), None, Some(&b_token)).await;
    let page = env.query(&format!("/v1/messages/{a}"), &b_token, Some(&read_hello.consistency())).await;
    assert_eq!(page.body["items"][1]["deliveredAt"], page.body["items"][1]["readAt"], "{:?}", page.body);
    assert!(page.body["items"][1]["readAt"].is_string());

    for (query, code) in
        [("limit=101", "limit_too_large"), ("limit=0", "limit_invalid"), ("before=x", "before_invalid")]
    {
        let reply = env.query(&format!("/v1/messages/{b}?{query}"), &a_token, None).await;
        assert_eq!((reply.status, reply.code()), (StatusCode::BAD_REQUEST, code), "{query}");
    }
    let widest = env.query(&format!("/v1/messages/{b}?limit=100"), &a_token, None).await;
    assert_eq!(widest.status, StatusCode::OK, "limit may be 100: {:?}", widest.body);
}

#[tokio::test]
async fn history_pages_cross_from_redis_to_mongodb() {
    let env = TestEnv::start().await;
    let (_, a_token) = env.user("a").await;
    let (b, b_token) = env.user("b").await;
    env.connect(&a_token, &b, &b_token).await;
    let mut sent = Vec::new();
    let mut last = None;
    for i in 0..62 {
        let reply = message(&env, &a_token, &b, &format!("message {i}")).await;
        assert_eq!(reply.status, StatusCode::CREATED);
        sent.push(reply.body["messageId"].as_str().expect("id").to_owned());
        last = Some(reply.consistency());
    }
    // Wait once for the views, then page with plain (cache-first) reads.
    let first = env.query(&format!("/v1/messages/{b}?limit=20"), &a_token, last.as_deref()).await;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    let from_mongo = history_count(&env, "mongo").await;

    let mut seen = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let query = match &before {
            Some(b) => format!("?limit=20&before={b}"),
            None => "?limit=20".to_owned(),
        };
        let page = env.query(&format!("/v1/messages/{b}{query}"), &a_token, None).await;
        assert_eq!(page.status, StatusCode::OK, "{:?}", page.body);
        seen.extend(
            page.body["items"]
                .as_array()
                .expect("items")
                .iter()
                .map(|m| m["messageId"].as_str().expect("id").to_owned()),
        );
        match page.body["nextBefore"].as_str() {
            Some(next) => before = Some(next.to_owned()),
            None => break,
        }
        assert!(seen.len() <= 62, "paging does not end");
    }
    sent.reverse();
    assert_eq!(seen, sent, "every message once, newest first");
    assert!(history_count(&env, "mongo").await > from_mongo, "pages past the newest 50 come from MongoDB");
}
