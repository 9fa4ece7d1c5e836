//! Notifications (with unread counts and marking read) and daily stats.

use reqwest::{Method, StatusCode};
use serde_json::json;
use test_support::TestEnv;

#[tokio::test]
async fn notifications_unread_counts_and_daily_stats() {
    let env = TestEnv::start().await;
    let (a, a_token) = env.user("a").await;
    let (b, b_token) = env.user("b").await;

    let sent = env.command(Method::POST, &format!("/v1/requests/send/interested/{b}"), None, Some(&a_token)).await;
    let request_id = sent.body["requestId"].as_str().expect("requestId").to_owned();
    let inbox = env.query("/v1/notifications", &b_token, Some(&sent.consistency())).await;
    assert_eq!(inbox.status, StatusCode::OK, "{:?}", inbox.body);
    assert_eq!(inbox.body["unreadCount"], 1);
    assert_eq!(inbox.body["items"][0]["type"], "connection_request");
    assert_eq!(inbox.body["items"][0]["fromUserId"], a.as_str());
    assert_eq!(inbox.body["items"][0]["requestId"], request_id.as_str());

    let accepted =
        env.command(Method::POST, &format!("/v1/requests/review/accepted/{request_id}"), None, Some(&b_token)).await;
    let a_inbox = env.query("/v1/notifications", &a_token, Some(&accepted.consistency())).await;
    assert_eq!(a_inbox.body["unreadCount"], 1);
    assert_eq!(a_inbox.body["items"][0]["type"], "request_accepted");
    assert_eq!(a_inbox.body["items"][0]["fromUserId"], b.as_str());

    let mut last = None;
    for text in ["one", "two"] {
        let reply = env
            .command(Method::POST, &format!("/v1/messages/{b}"), Some(&json!({ "text": text })), Some(&a_token))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED);
        last = Some(reply);
    }
    let last = last.expect("sent");
    let inbox = env.query("/v1/notifications", &b_token, Some(&last.consistency())).await;
    assert_eq!(inbox.body["unreadCount"], 3, "{:?}", inbox.body);
    let items = inbox.body["items"].as_array().expect("items");
    assert_eq!(items.len(), 3);
    assert_eq!(items[0]["type"], "message", "newest first");
    assert_eq!(items[0]["messageId"], last.body["messageId"]);

    let id = items[0]["notificationId"].as_str().expect("id").to_owned();
    let path = format!("/v1/notifications/{id}/read");
    let foreign = env.command(Method::POST, &path, None, Some(&a_token)).await;
    assert_eq!((foreign.status, foreign.code()), (StatusCode::FORBIDDEN, "not_your_notification"));
    let unknown = env
        .command(Method::POST, &format!("/v1/notifications/{}/read", uuid::Uuid::new_v4()), None, Some(&b_token))
        .await;
    assert_eq!((unknown.status, unknown.code()), (StatusCode::NOT_FOUND, "notification_not_found"));
    let read = env.command(Method::POST, &path, None, Some(&b_token)).await;
    assert_eq!(read.status, StatusCode::NO_CONTENT);
    let again = env.command(Method::POST, &path, None, Some(&b_token)).await;
    assert_eq!(again.status, StatusCode::NO_CONTENT);
    assert!(again.header("x-consistency-token").is_none(), "reading twice appends nothing");

    let unread = env.query("/v1/notifications?unread=true", &b_token, Some(&read.consistency())).await;
    assert_eq!(unread.body["unreadCount"], 2);
    let ids: Vec<&str> = unread.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|n| n["notificationId"].as_str().expect("id"))
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(!ids.contains(&id.as_str()));
    let all = env.query("/v1/notifications", &b_token, None).await;
    assert!(all.body["items"][0]["readAt"].is_string());
    let bad = env.query("/v1/notifications?unread=maybe", &b_token, None).await;
    assert_eq!((bad.status, bad.code()), (StatusCode::BAD_REQUEST, "unread_invalid"));

    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let stats = env.query(&format!("/v1/stats/daily?from={today}&to={today}"), &a_token, None).await;
    assert_eq!(stats.status, StatusCode::OK, "{:?}", stats.body);
    let day = &stats.body["days"][0];
    assert_eq!(day["date"], today.as_str());
    // This environment's own database: exactly this test's activity.
    assert_eq!(
        (&day["signups"], &day["logins"], &day["requestsSent"], &day["requestsAccepted"], &day["messagesSent"]),
        (&json!(2), &json!(2), &json!(1), &json!(1), &json!(2)),
        "{day}"
    );
    let week = env.query("/v1/stats/daily?from=2026-01-01&to=2026-01-07", &a_token, None).await;
    assert_eq!(week.body["days"].as_array().map(Vec::len), Some(7), "every day, zeros included");
    assert_eq!(week.body["days"][6]["date"], "2026-01-07");
    for (query, code) in [
        ("from=2026-01-02&to=2026-01-01", "date_range_invalid"),
        ("from=2020-01-01&to=2026-01-01", "date_range_too_long"),
        ("from=yesterday&to=2026-01-01", "date_invalid"),
        ("to=2026-01-01", "date_invalid"),
    ] {
        let reply = env.query(&format!("/v1/stats/daily?{query}"), &a_token, None).await;
        assert_eq!((reply.status, reply.code()), (StatusCode::BAD_REQUEST, code), "{query}");
    }
}
