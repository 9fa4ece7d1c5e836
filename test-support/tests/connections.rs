//! The social graph end to end: requests, reviews, feed, connections,
//! requests received and membership tiers, against the real stack.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use test_support::{Reply, TestEnv, eventually, wait_exit};

async fn send(env: &TestEnv, token: &str, status: &str, to: &str) -> Reply {
    env.command(Method::POST, &format!("/v1/requests/send/{status}/{to}"), None, Some(token)).await
}

async fn review(env: &TestEnv, token: &str, status: &str, request_id: &str) -> Reply {
    env.command(Method::POST, &format!("/v1/requests/review/{status}/{request_id}"), None, Some(token)).await
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
    assert_eq!(b_connections.user_ids(), vec![a.clone()]);
    assert!(b_connections.body["items"][0].get("emailId").is_none());
    assert!(b_connections.body["items"][0]["connectedAt"].is_string(), "{:?}", b_connections.body);
    assert!(b_connections.body["nextBefore"].is_null(), "{:?}", b_connections.body);
    assert_eq!(env.query("/v1/connections", &a_token, None).await.user_ids(), vec![b.clone()]);
    assert!(
        env.query("/v1/requests/received", &b_token, None).await.body["items"].as_array().expect("items").is_empty()
    );

    // Feed: never the viewer, nobody with a request either way.
    let ignored = send(&env, &a_token, "ignored", &c).await;
    assert_eq!(ignored.status, StatusCode::CREATED);
    let feed = env.query("/v1/feed?page=1&limit=50", &a_token, Some(&ignored.consistency())).await;
    assert_eq!(feed.status, StatusCode::OK, "{:?}", feed.body);
    assert_eq!((feed.body["page"].as_u64(), feed.body["limit"].as_u64()), (Some(1), Some(50)));
    assert_eq!(feed.user_ids(), vec![d.clone()], "a sees only d");
    let c_feed = env.query("/v1/feed", &c_token, None).await.user_ids();
    assert!(!c_feed.contains(&a) && !c_feed.contains(&c), "{c_feed:?}");
    assert!(c_feed.contains(&b) && c_feed.contains(&d), "{c_feed:?}");
    // An ignored request cannot be reviewed, and is not "received".
    let ignored_id = ignored.body["requestId"].as_str().expect("id").to_owned();
    let reply = review(&env, &c_token, "accepted", &ignored_id).await;
    assert_eq!((reply.status, reply.code()), (StatusCode::CONFLICT, "request_not_pending"));

    let paged = env.query("/v1/feed?page=2&limit=1", &c_token, None).await;
    assert_eq!(paged.user_ids().len(), 1);
    assert_ne!(paged.user_ids(), env.query("/v1/feed?page=1&limit=1", &c_token, None).await.user_ids());
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
            seen.extend(reply.user_ids());
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
        assert_eq!(env.query("/v1/feed?limit=50", &token, None).await.user_ids(), expected);
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

/// Every page of the list at `path`, `limit` at a time, following
/// `nextBefore` until it is null: the items of each page.
async fn all_pages(env: &TestEnv, path: &str, token: &str, limit: usize) -> Vec<Vec<Value>> {
    let mut pages = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let url = match &before {
            None => format!("{path}?limit={limit}"),
            Some(cursor) => format!("{path}?limit={limit}&before={cursor}"),
        };
        let reply = env.query(&url, token, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{url}: {:?}", reply.body);
        pages.push(reply.body["items"].as_array().expect("items").clone());
        match reply.body.get("nextBefore") {
            Some(Value::Null) => return pages,
            Some(Value::String(cursor)) => before = Some(cursor.clone()),
            other => panic!("{url}: nextBefore must be a string or null, not {other:?}"),
        }
        assert!(pages.len() <= 20, "{path} at limit {limit} never ends: {pages:?}");
    }
}

fn sizes(pages: &[Vec<Value>]) -> Vec<usize> {
    pages.iter().map(Vec::len).collect()
}

/// One field of every item, in order, across pages.
fn field(pages: &[Vec<Value>], path: &[&str]) -> Vec<String> {
    pages
        .iter()
        .flatten()
        .map(|item| path.iter().fold(item, |v, key| &v[*key]).as_str().unwrap_or_else(|| panic!("{path:?} in {item}")))
        .map(str::to_owned)
        .collect()
}

/// Times, newest first: each no later than the one before it.
fn assert_newest_first(times: &[String], what: &str) {
    let parsed: Vec<chrono::DateTime<chrono::Utc>> =
        times.iter().map(|t| t.parse().unwrap_or_else(|e| panic!("{what}: {t}: {e}"))).collect();
    assert!(parsed.windows(2).all(|w| w[0] >= w[1]), "{what} not newest first: {times:?}");
}

/// A viewer with 7 connections and another with 7 pending requests, made in
/// a known order, page newest first at every size, with nothing missing or
/// repeated; the parameters are checked; a cursor is a position, so it
/// survives its item leaving the list; and a rebuild of the views from the
/// log gives the very same pages.
#[tokio::test]
async fn connections_and_requests_received_page_newest_first_and_survive_a_rebuild() {
    let env = TestEnv::start().await;
    let (viewer, viewer_token) = env.user("viewer").await;
    let (recipient, recipient_token) = env.user("recipient").await;
    let (mut others, mut requests, mut writes) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..7 {
        let (other, token) = env.user(&format!("u{i}")).await;
        // Connected to the viewer, in this order; and asking the recipient.
        writes.push(env.connect(&token, &viewer, &viewer_token).await.consistency());
        let sent = send(&env, &token, "interested", &recipient).await;
        assert_eq!(sent.status, StatusCode::CREATED, "{:?}", sent.body);
        writes.push(sent.consistency());
        requests.push(sent.body["requestId"].as_str().expect("requestId").to_owned());
        others.push(other);
    }
    for consistency in &writes {
        assert_eq!(env.query("/v1/profile", &viewer_token, Some(consistency)).await.status, StatusCode::OK);
    }
    let newest_first = |list: &[String]| list.iter().rev().cloned().collect::<Vec<_>>();

    let connections = all_pages(&env, "/v1/connections", &viewer_token, 3).await;
    assert_eq!(sizes(&connections), vec![3, 3, 1]);
    assert_eq!(field(&connections, &["userId"]), newest_first(&others), "newest connection first, each once");
    assert_newest_first(&field(&connections, &["connectedAt"]), "connectedAt");
    assert!(connections.iter().flatten().all(|c| c.get("emailId").is_none() && c["firstName"] == "Ada"));
    let received = all_pages(&env, "/v1/requests/received", &recipient_token, 3).await;
    assert_eq!(sizes(&received), vec![3, 3, 1]);
    assert_eq!(field(&received, &["requestId"]), newest_first(&requests), "newest request first, each once");
    assert_eq!(field(&received, &["from", "userId"]), newest_first(&others));
    assert_newest_first(&field(&received, &["createdAt"]), "createdAt");
    let cursor_of = |path: &'static str, token: &str| {
        let (env, token) = (&env, token.to_owned());
        async move {
            let reply = env.query(&format!("{path}?limit=1"), &token, None).await;
            reply.body["nextBefore"].as_str().expect("a cursor").to_owned()
        }
    };
    let connections_cursor = cursor_of("/v1/connections", &viewer_token).await;
    let requests_cursor = cursor_of("/v1/requests/received", &recipient_token).await;
    for path in ["/v1/connections", "/v1/requests/received"] {
        let (token, foreign) = if path == "/v1/connections" {
            (&viewer_token, &requests_cursor)
        } else {
            (&recipient_token, &connections_cursor)
        };
        for (limit, expected) in [(1, vec![1; 7]), (2, vec![2, 2, 2, 1]), (7, vec![7]), (100, vec![7])] {
            assert_eq!(sizes(&all_pages(&env, path, token, limit).await), expected, "{path} limit {limit}");
        }
        // No limit: the default, 50, holds all 7.
        let all = env.query(path, token, None).await;
        assert_eq!((all.body["items"].as_array().map(Vec::len), &all.body["nextBefore"]), (Some(7), &Value::Null));
        for (query, code) in [
            ("limit=0".to_owned(), "limit_invalid"),
            ("limit=abc".to_owned(), "limit_invalid"),
            ("limit=-3".to_owned(), "limit_invalid"),
            ("limit=101".to_owned(), "limit_too_large"),
            ("before=garbage".to_owned(), "cursor_invalid"),
            ("before=".to_owned(), "cursor_invalid"),
            (format!("before={foreign}"), "cursor_invalid"),
        ] {
            let reply = env.query(&format!("{path}?{query}"), token, None).await;
            assert_eq!((reply.status, reply.code()), (StatusCode::BAD_REQUEST, code), "{path}?{query}");
        }
    }

    // The cursor after the first page points at u4's request; accepting it
    // takes it out of the list, and the next page is still the rest.
    let first = env.query("/v1/requests/received?limit=3", &recipient_token, None).await;
    let cursor = first.body["nextBefore"].as_str().expect("more").to_owned();
    let accepted = review(&env, &recipient_token, "accepted", &requests[4]).await;
    assert_eq!(accepted.status, StatusCode::OK, "{:?}", accepted.body);
    let next = env
        .query(
            &format!("/v1/requests/received?limit=3&before={cursor}"),
            &recipient_token,
            Some(&accepted.consistency()),
        )
        .await;
    assert_eq!(
        field(&[next.body["items"].as_array().expect("items").clone()], &["requestId"]),
        newest_first(&requests[1..4])
    );
    let received = all_pages(&env, "/v1/requests/received", &recipient_token, 3).await;
    let mut pending = requests.clone();
    pending.remove(4);
    assert_eq!(field(&received, &["requestId"]), newest_first(&pending));

    // Rebuilt from the log into a new generation: the same pages, to the
    // nanosecond, cursors included.
    let lists = [("/v1/connections", &viewer_token), ("/v1/requests/received", &recipient_token)];
    let mut before = Vec::new();
    for (path, token) in lists {
        for limit in [2, 3] {
            before.push(all_pages(&env, path, token, limit).await);
        }
    }
    let cursors_before = env.query("/v1/connections?limit=2", &viewer_token, None).await.body["nextBefore"].clone();
    let switches = env.query_counter("view_generation_switches_total").await;
    let generation = env.current_generation().await;
    let mut replay = env.projector_operation(&["replay", "--progress", "log", "--drop-after", "1s"], &[]);
    let status = wait_exit(&mut replay, Duration::from_secs(180)).await;
    assert!(status.success(), "replay failed:\n{}", replay.log_text());
    assert_ne!(env.current_generation().await, generation, "a new generation");
    eventually("the query API reads the new generation", Duration::from_secs(20), || async {
        // A request takes the reader of the generation current then.
        env.query("/v1/profile", &viewer_token, None).await;
        let now = env.query_counter("view_generation_switches_total").await;
        if now > switches { Ok(()) } else { Err(format!("{now} switches")) }
    })
    .await;
    let mut after = Vec::new();
    for (path, token) in lists {
        for limit in [2, 3] {
            after.push(all_pages(&env, path, token, limit).await);
        }
    }
    assert_eq!(after, before, "the pages after a rebuild");
    let cursors_after = env.query("/v1/connections?limit=2", &viewer_token, None).await.body["nextBefore"].clone();
    assert_eq!(cursors_after, cursors_before);
}

/// Connections made at the very same instant are ordered by request id,
/// and a page boundary between them loses and repeats nothing. The API
/// cannot make two at one instant, so they are written into the view.
#[tokio::test]
async fn connections_at_the_same_instant_page_by_request_id() {
    let env = TestEnv::start().await;
    let (viewer, token) = env.user("viewer").await;
    let mut others = Vec::new();
    for i in 0..5 {
        others.push(env.user(&format!("u{i}")).await.0);
    }
    let at = |s: &str| s.parse::<chrono::DateTime<chrono::Utc>>().expect("time");
    // (other, connectedAt, request id): three share an instant.
    let request = |n: u32| format!("01970000-0000-7000-8000-{n:012}");
    let rows = [
        (&others[0], at("2025-03-01T10:00:00Z"), request(1)),
        (&others[1], at("2025-03-01T10:00:01.5Z"), request(2)),
        (&others[2], at("2025-03-01T10:00:01.5Z"), request(9)),
        (&others[3], at("2025-03-01T10:00:01.5Z"), request(5)),
        (&others[4], at("2025-03-01T10:00:02Z"), request(3)),
    ];
    let documents: Vec<mongodb::bson::Document> = rows
        .iter()
        .map(|(other, connected_at, request_id)| {
            let doc = views::ConnectionDoc {
                id: views::ConnectionDoc::id_for(&viewer, other),
                user_id: viewer.clone(),
                other_user_id: (*other).clone(),
                request_id: request_id.clone(),
                connected_at: *connected_at,
                version: 2,
            };
            mongodb::bson::to_document(&doc).expect("bson")
        })
        .collect();
    env.views_db().await.collection(views::collections::CONNECTIONS).insert_many(documents).await.expect("insert");
    let expected: Vec<String> = [4, 2, 3, 1, 0].iter().map(|i| others[*i].clone()).collect();
    // As after a cache loss: the list is filled from MongoDB by the first
    // read (which MongoDB answers), and paged from Redis after that. Both
    // must give the same order.
    let list_key = env.view_key(&format!("connections:{viewer}")).await;
    for limit in [1, 2, 3, 4, 5] {
        let _: () = redis::cmd("DEL").arg(&list_key).query_async(&mut env.redis().await).await.expect("del");
        let pages = all_pages(&env, "/v1/connections", &token, limit).await;
        assert_eq!(field(&pages, &["userId"]), expected, "limit {limit}");
        let again = all_pages(&env, "/v1/connections", &token, limit).await;
        assert_eq!(field(&again, &["userId"]), expected, "limit {limit}, all from Redis");
    }
    assert!(env.query_counter(r#"connection_reads_total{path="redis"}"#).await > 0);
    let first = all_pages(&env, "/v1/connections", &token, 5).await;
    assert_eq!(first[0][1]["connectedAt"], "2025-03-01T10:00:01.500Z");
}
