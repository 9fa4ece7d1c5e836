//! The social graph end to end: requests, reviews, feed, connections,
//! requests received and membership tiers, against the real stack.

use reqwest::{Method, StatusCode};
use serde_json::json;
use test_support::{Reply, TestEnv};

async fn send(env: &TestEnv, token: &str, status: &str, to: &str) -> Reply {
    env.command(Method::POST, &format!("/v1/requests/send/{status}/{to}"), None, Some(token)).await
}

async fn review(env: &TestEnv, token: &str, status: &str, request_id: &str) -> Reply {
    env.command(Method::POST, &format!("/v1/requests/review/{status}/{request_id}"), None, Some(token)).await
}

fn ids(reply: &Reply) -> Vec<String> {
    reply.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|p| p["userId"].as_str().expect("userId").to_owned())
        .collect()
}

#[tokio::test]
async fn requests_reviews_connections_and_the_feed() {
    let env = TestEnv::start().await;
    let (a, a_token) = env.user("a").await;
    let (b, b_token) = env.user("b").await;
    let (c, c_token) = env.user("c").await;
    let (d, _) = env.user("d").await;

    let sent = send(&env, &a_token, "interested", &b).await;
    assert_eq!(sent.status, StatusCode::CREATED, "{:?}", sent.body);
    let request_id = sent.body["requestId"].as_str().expect("requestId").to_owned();

    let unknown = uuid::Uuid::new_v4().to_string();
    for (token, status, to, expected, code) in [
        (&a_token, "interested", &a, StatusCode::BAD_REQUEST, "cannot_request_self"),
        (&a_token, "interested", &unknown, StatusCode::NOT_FOUND, "user_not_found"),
        (&a_token, "interested", &b, StatusCode::CONFLICT, "request_exists"),
        (&b_token, "ignored", &a, StatusCode::CONFLICT, "request_exists"),
        (&a_token, "accepted", &c, StatusCode::BAD_REQUEST, "status_invalid"),
        (&a_token, "interested", &"not-a-uuid".to_owned(), StatusCode::BAD_REQUEST, "user_id_invalid"),
    ] {
        let reply = send(&env, token, status, to).await;
        assert_eq!((reply.status, reply.code()), (expected, code), "{status} -> {to}");
    }

    let received = env.query("/v1/requests/received", &b_token, Some(&sent.consistency())).await;
    assert_eq!(received.status, StatusCode::OK);
    let items = received.body["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{:?}", received.body);
    assert_eq!(items[0]["requestId"], request_id.as_str());
    assert_eq!(items[0]["from"]["userId"], a.as_str());
    assert!(items[0]["from"].get("emailId").is_none(), "never an email: {:?}", items[0]);
    assert!(items[0]["createdAt"].is_string());
    assert!(
        env.query("/v1/requests/received", &a_token, None).await.body["items"].as_array().expect("items").is_empty()
    );

    for (token, status, id, expected, code) in [
        (&c_token, "accepted", &request_id, StatusCode::FORBIDDEN, "not_request_recipient"),
        (&a_token, "accepted", &request_id, StatusCode::FORBIDDEN, "not_request_recipient"),
        (&b_token, "maybe", &request_id, StatusCode::BAD_REQUEST, "status_invalid"),
        (&b_token, "accepted", &unknown, StatusCode::NOT_FOUND, "request_not_found"),
        (&b_token, "accepted", &"nope".to_owned(), StatusCode::BAD_REQUEST, "request_id_invalid"),
    ] {
        let reply = review(&env, token, status, id).await;
        assert_eq!((reply.status, reply.code()), (expected, code), "{status} {id}");
    }
    let accepted = review(&env, &b_token, "accepted", &request_id).await;
    assert_eq!(accepted.status, StatusCode::OK, "{:?}", accepted.body);
    assert_eq!(accepted.body["requestId"], request_id.as_str());
    let again = review(&env, &b_token, "rejected", &request_id).await;
    assert_eq!((again.status, again.code()), (StatusCode::CONFLICT, "request_not_pending"));

    let b_connections = env.query("/v1/connections", &b_token, Some(&accepted.consistency())).await;
    assert_eq!(ids(&b_connections), vec![a.clone()]);
    assert!(b_connections.body["items"][0].get("emailId").is_none());
    assert_eq!(ids(&env.query("/v1/connections", &a_token, None).await), vec![b.clone()]);
    assert!(
        env.query("/v1/requests/received", &b_token, None).await.body["items"].as_array().expect("items").is_empty()
    );

    // Feed: never the viewer, nobody with a request either way.
    let ignored = send(&env, &a_token, "ignored", &c).await;
    assert_eq!(ignored.status, StatusCode::CREATED);
    let feed = env.query("/v1/feed?page=1&limit=50", &a_token, Some(&ignored.consistency())).await;
    assert_eq!(feed.status, StatusCode::OK, "{:?}", feed.body);
    assert_eq!((feed.body["page"].as_u64(), feed.body["limit"].as_u64()), (Some(1), Some(50)));
    assert_eq!(ids(&feed), vec![d.clone()], "a sees only d");
    let c_feed = ids(&env.query("/v1/feed", &c_token, None).await);
    assert!(!c_feed.contains(&a) && !c_feed.contains(&c), "{c_feed:?}");
    assert!(c_feed.contains(&b) && c_feed.contains(&d), "{c_feed:?}");
    // An ignored request cannot be reviewed, and is not "received".
    let ignored_id = ignored.body["requestId"].as_str().expect("id").to_owned();
    let reply = review(&env, &c_token, "accepted", &ignored_id).await;
    assert_eq!((reply.status, reply.code()), (StatusCode::CONFLICT, "request_not_pending"));

    let paged = env.query("/v1/feed?page=2&limit=1", &c_token, None).await;
    assert_eq!(ids(&paged).len(), 1);
    assert_ne!(ids(&paged), ids(&env.query("/v1/feed?page=1&limit=1", &c_token, None).await));
    for (query, code) in [
        ("limit=51", "limit_too_large"),
        ("limit=0", "limit_invalid"),
        ("page=abc", "page_invalid"),
        ("page=0", "page_invalid"),
        // Its offset overflowed MongoDB's skip and answered 503.
        ("page=200000000000000000&limit=50", "page_too_large"),
        ("page=1000001", "page_too_large"),
        ("page=99999999999999999999999", "page_invalid"),
    ] {
        let reply = env.query(&format!("/v1/feed?{query}"), &a_token, None).await;
        assert_eq!((reply.status, reply.code()), (StatusCode::BAD_REQUEST, code), "{query}");
    }
}

#[tokio::test]
async fn fifty_simultaneous_sends_between_two_people_create_one_request() {
    let mut env = TestEnv::start().await;
    let (a, a_token) = env.user("a").await;
    let (b, b_token) = env.user("b").await;
    let sends = (0..50).map(|i| {
        let (token, to) = if i % 2 == 0 { (&a_token, &b) } else { (&b_token, &a) };
        let env = &env;
        async move { send(env, token, "interested", to).await }
    });
    let replies = futures::future::join_all(sends).await;
    let created = replies.iter().filter(|r| r.status == StatusCode::CREATED).count();
    let conflicts = replies.iter().filter(|r| (r.status, r.code()) == (StatusCode::CONFLICT, "request_exists")).count();
    assert_eq!((created, conflicts), (1, 49), "{:?}", replies.iter().map(|r| r.status).collect::<Vec<_>>());

    env.restart_command_api().await;
    assert_eq!(send(&env, &a_token, "interested", &b).await.status, StatusCode::CONFLICT);
    assert_eq!(send(&env, &b_token, "ignored", &a).await.status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn the_daily_limit_follows_the_tier_and_survives_a_restart() {
    let mut env = TestEnv::start().await;
    let (_, sender) = env.user("sender").await;
    let mut recipients = Vec::new();
    for i in 0..22 {
        recipients.push(env.signup(&env.email(&format!("to{i}"))).await.0);
    }
    let sends = recipients[..20].iter().map(|to| {
        let (env, sender) = (&env, &sender);
        async move { send(env, sender, "interested", to).await }
    });
    let replies = futures::future::join_all(sends).await;
    let created = replies.iter().filter(|r| r.status == StatusCode::CREATED).count();
    let limited: Vec<&Reply> = replies.iter().filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS).collect();
    assert_eq!((created, limited.len()), (10, 10), "free tier: 10 a day");
    for reply in &limited {
        assert_eq!(reply.code(), "daily_limit_reached");
        let retry: u64 = reply.header("retry-after").expect("Retry-After").parse().expect("seconds");
        let now = chrono::Utc::now();
        let midnight = (now.date_naive() + chrono::Duration::days(1)).and_hms_opt(0, 0, 0).expect("midnight").and_utc();
        let expected = (midnight - now).num_seconds().max(1) as u64;
        assert!(retry.abs_diff(expected) <= 5, "Retry-After {retry} s, next UTC midnight in {expected} s");
    }

    env.restart_command_api().await;
    let after_restart = send(&env, &sender, "interested", &recipients[20]).await;
    assert_eq!(after_restart.status, StatusCode::TOO_MANY_REQUESTS, "the count comes back from Kafka");

    let bad = env.command(Method::PUT, "/v1/membership", Some(&json!({"tier": "platinum"})), Some(&sender)).await;
    assert_eq!((bad.status, bad.code()), (StatusCode::BAD_REQUEST, "tier_invalid"));
    let upgrade = env.command(Method::PUT, "/v1/membership", Some(&json!({"tier": "silver"})), Some(&sender)).await;
    assert_eq!(upgrade.status, StatusCode::OK, "{:?}", upgrade.body);
    assert_eq!(upgrade.body["tier"], "silver");
    let own = env.query("/v1/profile", &sender, Some(&upgrade.consistency())).await;
    assert_eq!(own.body["membership"], "silver");
    assert_eq!(
        send(&env, &sender, "interested", &recipients[20]).await.status,
        StatusCode::CREATED,
        "silver: 100 a day"
    );

    let downgrade = env.command(Method::PUT, "/v1/membership", Some(&json!({"tier": "free"})), Some(&sender)).await;
    assert_eq!(downgrade.status, StatusCode::OK);
    assert_eq!(send(&env, &sender, "interested", &recipients[21]).await.status, StatusCode::TOO_MANY_REQUESTS);
}

async fn feed_path_count(env: &TestEnv, path: &str) -> u64 {
    env.query_counter(&format!("feed_reads_total{{path=\"{path}\"}}")).await
}

/// Every page, at several sizes, against the order computed here: all users
/// but the viewer and those related to them, newest (largest uuid v7) first.
async fn assert_feed_pages(env: &TestEnv, token: &str, expected: &[String]) {
    for limit in [1usize, 2, 3, 50] {
        let mut seen = Vec::new();
        for page in 1..=expected.len().div_ceil(limit) + 1 {
            let reply = env.query(&format!("/v1/feed?page={page}&limit={limit}"), token, None).await;
            assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
            seen.extend(ids(&reply));
        }
        assert_eq!(seen, expected, "limit {limit}");
    }
}

#[tokio::test]
async fn feed_pages_are_exact_from_the_directory_and_from_mongodb() {
    let env = TestEnv::start().await;
    let (viewer, token) = env.user("viewer").await;
    let mut others = Vec::new();
    let mut last = None;
    for i in 0..6 {
        let (id, other_token) = env.user(&format!("u{i}")).await;
        let consistency = match i {
            1 => Some(send(&env, &token, "interested", &id).await),
            4 => Some(send(&env, &other_token, "ignored", &viewer).await),
            _ => None,
        };
        if let Some(reply) = consistency {
            assert_eq!(reply.status, StatusCode::CREATED);
            last = Some(reply.consistency());
        } else {
            others.push(id);
        }
    }
    let (_, consistency) = env.login(&env.email("u5"), test_support::PASSWORD).await;
    for c in [last.expect("requests sent"), consistency] {
        assert_eq!(env.query("/v1/profile", &token, Some(&c)).await.status, StatusCode::OK);
    }
    let mut expected = others.clone();
    expected.sort();
    expected.reverse();

    // The query API built the directory at start; the projector keeps it.
    assert_feed_pages(&env, &token, &expected).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while feed_path_count(&env, "directory").await == 0 {
        assert!(std::time::Instant::now() < deadline, "the feed directory was never used");
        assert_eq!(ids(&env.query("/v1/feed?limit=50", &token, None).await), expected);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let from_directory = feed_path_count(&env, "directory").await;
    assert_feed_pages(&env, &token, &expected).await;
    assert!(feed_path_count(&env, "directory").await > from_directory, "pages served from the directory");

    // A cache loss takes the directory and its completeness with it:
    // MongoDB answers until the directory is rebuilt, with the same pages.
    let from_mongo = feed_path_count(&env, "mongo").await;
    let mut redis = env.redis().await;
    let () = redis::cmd("FLUSHALL").query_async(&mut redis).await.expect("flushall");
    assert_feed_pages(&env, &token, &expected).await;
    assert!(feed_path_count(&env, "mongo").await > from_mongo, "the MongoDB path served after the flush");
    assert_feed_pages(&env, &token, &expected).await;
}
