//! Several command APIs behave as one (docs/scale-out.md): the group hands
//! each a share of the partitions, any of them accepts any command and
//! forwards it to the owner, and a killed one's partitions move to the
//! others without losing an acknowledged write.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use test_support::{PASSWORD, Proc, Reply, TestEnv, eventually};

/// Three command APIs on one broker: the environment's own plus two more.
struct Three {
    env: TestEnv,
    ports: Vec<u16>,
    extra: Vec<Proc>,
}

impl Three {
    async fn start() -> Self {
        Self::start_with(Vec::new()).await
    }

    async fn start_with(extra_env: Vec<(&str, &str)>) -> Self {
        let mut env = TestEnv::start_with(extra_env).await;
        let mut ports = vec![env.command_port];
        let mut extra = Vec::new();
        for _ in 0..2 {
            let (port, proc) = env.start_another_command_api().await;
            ports.push(port);
            extra.push(proc);
        }
        let three = Self { env, ports, extra };
        three.until_settled().await;
        three
    }

    /// Until every instance is ready, which includes every partition having
    /// a live owner, and the group has spread the partitions out.
    async fn until_settled(&self) {
        eventually("the three instances to share the partitions", Duration::from_secs(90), || async {
            let mut serving = 0;
            for port in &self.ports {
                let ready = self.env.send(Method::GET, &url(*port, "/readyz"), None, &[]).await;
                if ready.status != StatusCode::OK {
                    return Err(format!("{port}: {:?}", ready.body));
                }
                let served = self.env.counter_at(&url(*port, "/metrics"), "command_api_partitions_served").await;
                serving += u64::from(served > 0);
            }
            // Three partitions, three members: one each once settled.
            if serving == 3 { Ok(()) } else { Err(format!("{serving} instances serve partitions")) }
        })
        .await;
    }

    async fn at(&self, i: usize, method: Method, path: &str, body: Option<&Value>, token: Option<&str>) -> Reply {
        let port = self.ports[i % self.ports.len()];
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth.as_deref().map(|a| vec![("authorization", a)]).unwrap_or_default();
        self.env.send(method, &url(port, path), body, &headers).await
    }

    /// Requests forwarded by all instances together.
    async fn forwarded(&self) -> u64 {
        let mut total = 0;
        for port in &self.ports {
            total += self.env.counter_at(&url(*port, "/metrics"), "forwarded_requests_total").await;
        }
        total
    }
}

fn url(port: u16, path: &str) -> String {
    format!("http://127.0.0.1:{port}{path}")
}

/// A sign-up from instance `i` on, retried as a client would while a
/// partition moves (503); returns the user id.
async fn signup_at(three: &Three, i: usize, email: &str) -> String {
    let body = TestEnv::signup_body(email);
    let (status, reply) =
        until_answered(three, i, "/v1/auth/signup", Some(&body), None, &format!("signup-{email}")).await;
    assert_eq!(status, StatusCode::CREATED, "signup at {i}: {reply:?}");
    reply["userId"].as_str().expect("userId").to_owned()
}

/// A log-in from instance `i` on, retried likewise; returns the token.
async fn login_at(three: &Three, i: usize, email: &str) -> String {
    let body = json!({ "emailId": email, "password": PASSWORD });
    let (status, reply) =
        until_answered(three, i, "/v1/auth/login", Some(&body), None, &format!("login-{email}")).await;
    assert_eq!(status, StatusCode::OK, "login at {i}: {reply:?}");
    reply["token"].as_str().expect("token").to_owned()
}

#[tokio::test]
async fn twenty_simultaneous_signups_with_one_email_spread_over_three_instances_create_one_account() {
    let three = Three::start().await;
    let email = three.env.email("race");
    let attempts = (0..20).map(|i| {
        let spelled = if i % 2 == 0 { email.clone() } else { email.to_uppercase() };
        let body = TestEnv::signup_body(&spelled);
        let three = &three;
        async move { three.at(i, Method::POST, "/v1/auth/signup", Some(&body), None).await }
    });
    let replies = futures::future::join_all(attempts).await;
    let created = replies.iter().filter(|r| r.status == StatusCode::CREATED).count();
    let taken = replies.iter().filter(|r| r.status == StatusCode::CONFLICT && r.code() == "email_taken").count();
    assert_eq!((created, taken), (1, 19), "{:?}", replies.iter().map(|r| (r.status, r.code())).collect::<Vec<_>>());
    assert!(three.forwarded().await > 0, "two of three instances do not own the email: they must have forwarded");
}

#[tokio::test]
async fn signups_logins_requests_and_logouts_through_any_instance_behave_as_one_api() {
    let three = Three::start().await;
    let (ada_email, bob_email) = (three.env.email("ada"), three.env.email("bob"));
    let ada = signup_at(&three, 0, &ada_email).await;
    let bob = signup_at(&three, 1, &bob_email).await;
    // Logged in at instances other than the ones that took the sign-ups.
    let ada_token = login_at(&three, 2, &ada_email).await;
    let bob_token = login_at(&three, 0, &bob_email).await;

    // A request sent through one instance, reviewed through another.
    let sent = three.at(1, Method::POST, &format!("/v1/requests/send/interested/{bob}"), None, Some(&ada_token)).await;
    assert_eq!(sent.status, StatusCode::CREATED, "{:?}", sent.body);
    let request_id = sent.body["requestId"].as_str().expect("requestId").to_owned();
    let again = three.at(2, Method::POST, &format!("/v1/requests/send/interested/{ada}"), None, Some(&bob_token)).await;
    assert_eq!((again.status, again.code()), (StatusCode::CONFLICT, "request_exists"), "one request per pair");
    let path = format!("/v1/requests/review/accepted/{request_id}");
    let reviewed = three.at(2, Method::POST, &path, None, Some(&bob_token)).await;
    assert_eq!(reviewed.status, StatusCode::OK, "{:?}", reviewed.body);
    let message = json!({ "text": "hello from any instance" });
    let sent = three.at(0, Method::POST, &format!("/v1/messages/{bob}"), Some(&message), Some(&ada_token)).await;
    assert_eq!(sent.status, StatusCode::CREATED, "{:?}", sent.body);

    // The views hold what every instance acknowledged.
    let connections = three.env.query("/v1/connections", &ada_token, Some(&reviewed.consistency())).await;
    assert_eq!(connections.status, StatusCode::OK, "{:?}", connections.body);
    assert_eq!(connections.user_ids(), vec![bob.clone()]);

    // A logout acknowledged by one instance holds at once on every other,
    // for commands on the user's own partition and on a pair's alike.
    let out = three.at(1, Method::POST, "/v1/auth/logout", None, Some(&ada_token)).await;
    assert_eq!(out.status, StatusCode::NO_CONTENT, "{:?}", out.body);
    let carol = signup_at(&three, 2, &three.env.email("carol")).await;
    for i in 0..3 {
        let patch = json!({ "about": "after logout" });
        let refused = three.at(i, Method::PATCH, "/v1/profile", Some(&patch), Some(&ada_token)).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "profile at {i}: {:?}", refused.body);
        let path = format!("/v1/requests/send/interested/{carol}");
        let refused = three.at(i, Method::POST, &path, None, Some(&ada_token)).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "request at {i}: {:?}", refused.body);
    }
    assert!(three.forwarded().await > 0);
}

#[tokio::test]
async fn twenty_simultaneous_requests_by_a_free_user_through_three_instances_stop_at_ten() {
    let three = Three::start().await;
    let sender_email = three.env.email("sender");
    signup_at(&three, 0, &sender_email).await;
    let token = login_at(&three, 1, &sender_email).await;
    // Twenty recipients: their pairs fall on every partition, so the
    // requests are decided by all three owners.
    let recipients = futures::future::join_all((0..20).map(|n| {
        let three = &three;
        async move { signup_at(three, n, &three.env.email(&format!("recipient{n}"))).await }
    }))
    .await;
    let sends = recipients.iter().enumerate().map(|(i, to)| {
        let (three, token) = (&three, &token);
        async move { three.at(i, Method::POST, &format!("/v1/requests/send/interested/{to}"), None, Some(token)).await }
    });
    let replies = futures::future::join_all(sends).await;
    let sent = replies.iter().filter(|r| r.status == StatusCode::CREATED).count();
    let limited =
        replies.iter().filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS && r.code() == "daily_limit_reached");
    assert_eq!(
        (sent, limited.count()),
        (10, 10),
        "{:?}",
        replies.iter().map(|r| (r.status, r.code().to_owned())).collect::<Vec<_>>()
    );
    let retry_after: u64 = replies
        .iter()
        .find(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .and_then(|r| r.header("retry-after"))
        .and_then(|v| v.parse().ok())
        .expect("Retry-After on a 429");
    assert!((1..=86_400).contains(&retry_after), "until UTC midnight: {retry_after}");
}

#[tokio::test]
async fn a_forged_forwarded_header_neither_skips_the_limits_nor_claims_another_address() {
    let three = Three::start().await;
    let email = three.env.email("guarded");
    signup_at(&three, 0, &email).await;
    // Failed log-ins are limited per account (5 per window) whatever the
    // header claims: a forged hop is dropped, not trusted.
    let body = json!({ "emailId": email, "password": "Wrong-password-1" });
    let mut statuses = Vec::new();
    for i in 0..7 {
        let headers = [("x-devconnect-forwarded", "198.51.100.9 1 00ff")];
        let reply =
            three.env.send(Method::POST, &url(three.ports[i % 3], "/v1/auth/login"), Some(&body), &headers).await;
        statuses.push(reply.status);
    }
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count(), 2, "{statuses:?}");
    let mut rejected = 0;
    for port in &three.ports {
        rejected += three.env.counter_at(&url(*port, "/metrics"), "forwarded_header_rejected_total").await;
    }
    assert_eq!(rejected, 7, "every forged header is counted as dropped");
}

/// The port of the instance the routing table names for `partition`, with
/// how long ago it renewed the entry.
async fn owner_in_table(three: &Three, partition: i32) -> Option<(u16, u64)> {
    let client = redis::Client::open(three.env.redis_url()).expect("redis url");
    let mut redis = client.get_multiplexed_async_connection().await.expect("redis");
    let table = format!("command-owners:{}-", three.env.id);
    let entry: Option<String> = redis::cmd("HGET").arg(&table).arg(partition).query_async(&mut redis).await.ok()?;
    let entry = entry?;
    let mut fields = entry.split('|');
    let (_epoch, url, at) = (fields.next()?, fields.next()?, fields.next()?.parse::<u64>().ok()?);
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut redis).await.ok()?;
    let port = url.rsplit(':').next()?.parse().ok()?;
    Some((port, (secs * 1000 + micros / 1000).saturating_sub(at)))
}

#[tokio::test]
async fn an_owner_paused_past_its_session_acknowledges_nothing_its_successor_lacks() {
    let three = Three::start().await;
    let email = three.env.email("paused");
    let partition = events::owner::partition_for(email.as_bytes(), 3);
    let (owner_port, _) = owner_in_table(&three, partition).await.expect("the email's partition has an owner");
    let owner_index = three.ports.iter().position(|p| *p == owner_port).expect("one of the three");
    let others: Vec<usize> = (0..3).filter(|i| *i != owner_index).collect();
    {
        let owner = if owner_index == 0 { three.env.command_api.as_ref() } else { three.extra.get(owner_index - 1) };
        owner.expect("the owner's process").pause();
    }

    // Past its session (6 s): the others heal the group and one of them
    // claims the partition and publishes a fresh route.
    eventually("another instance to take the paused owner's partition", Duration::from_secs(90), || async {
        match owner_in_table(&three, partition).await {
            Some((port, age)) if port != owner_port && age < 2000 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // Taken over a moment ago: the new owner may still be claiming (503),
    // and a client retries.
    let body = TestEnv::signup_body(&email);
    let (status, created) = until_answered(&three, others[0], "/v1/auth/signup", Some(&body), None, "paused").await;
    assert_eq!(status, StatusCode::CREATED, "{created:?}");
    let successor = created["userId"].as_str().expect("userId").to_owned();

    // The paused owner wakes up believing it still owns the partition, with
    // a model that never saw the sign-up. Whatever it learns first (the
    // group's new assignment, or the successor's marker when it reads its
    // own record back), it must not acknowledge a second account.
    {
        let owner = if owner_index == 0 { three.env.command_api.as_ref() } else { three.extra.get(owner_index - 1) };
        owner.expect("the owner's process").resume();
    }
    let body = TestEnv::signup_body(&email);
    let woken = three.at(owner_index, Method::POST, "/v1/auth/signup", Some(&body), None).await;
    assert!(
        woken.status == StatusCode::CONFLICT || woken.status == StatusCode::SERVICE_UNAVAILABLE,
        "the woken owner answered {}: {:?}",
        woken.status,
        woken.body
    );
    eventually("the woken instance to answer as one API again", Duration::from_secs(60), || async {
        let again = three.at(owner_index, Method::POST, "/v1/auth/signup", Some(&body), None).await;
        match (again.status, again.code()) {
            (StatusCode::CONFLICT, "email_taken") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let credentials = json!({ "emailId": email, "password": PASSWORD });
    let login = three.at(owner_index, Method::POST, "/v1/auth/login", Some(&credentials), None).await;
    assert_eq!(login.status, StatusCode::OK, "{:?}", login.body);
    assert_eq!(login.body["userId"].as_str(), Some(successor.as_str()), "the one account is the successor's");
}

/// Sends one request until it gets an answer that is not a 503, starting
/// at instance `i` and moving to the next on a 503 or a refused
/// connection, always with the same `Idempotency-Key`: a client's retry.
async fn until_answered(
    three: &Three,
    i: usize,
    path: &str,
    body: Option<&Value>,
    token: Option<&str>,
    key: &str,
) -> (StatusCode, Value) {
    for attempt in 0..600 {
        let port = three.ports[(i + attempt) % three.ports.len()];
        let mut request = three.env.http.post(url(port, path)).header("idempotency-key", key);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Ok(reply) = request.send().await {
            let status = reply.status();
            let body: Value = reply.json().await.unwrap_or(Value::Null);
            if status != StatusCode::SERVICE_UNAVAILABLE {
                return (status, body);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{path} ({key}) never answered");
}

#[tokio::test]
async fn killing_one_of_three_instances_under_load_loses_no_acknowledged_write() {
    // Thirty edits per user and dozens of sign-ups from one address in
    // seconds: past the default rate limits, which are not under test here.
    let limits = ("DEVCONNECT_RATE_LIMITS", "account=10000/1m,signup=10000/1m,auth=10000/1m,requests=10000/1m");
    let mut three = Three::start_with(vec![limits]).await;
    // Users spread over the partitions, each with a session.
    let mut users = Vec::new();
    for n in 0..6 {
        let email = three.env.email(&format!("load{n}"));
        let id = signup_at(&three, n, &email).await;
        let token = login_at(&three, n + 1, &email).await;
        users.push((id, token));
    }
    // A free sender and twenty recipients, for the limit's race below.
    let sender_email = three.env.email("racer");
    signup_at(&three, 0, &sender_email).await;
    let sender = login_at(&three, 2, &sender_email).await;
    let mut recipients = Vec::new();
    for n in 0..20 {
        recipients.push(signup_at(&three, n, &three.env.email(&format!("target{n}"))).await);
    }
    let victim = three.extra.remove(0);
    // While the instance dies and its partitions move: twenty sign-ups of
    // one email and twenty requests of one free sender, each retried by its
    // client until it gets an answer.
    let races = async {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let email = three.env.email("contested");
        let signups = (0..20).map(|i| {
            let body = TestEnv::signup_body(&email);
            let three = &three;
            async move { until_answered(three, i, "/v1/auth/signup", Some(&body), None, &format!("race-{i}")).await }
        });
        let sends = recipients.iter().enumerate().map(|(i, to)| {
            let (three, sender) = (&three, &sender);
            let path = format!("/v1/requests/send/interested/{to}");
            async move { until_answered(three, i, &path, None, Some(sender), &format!("send-{i}")).await }
        });
        futures::future::join(futures::future::join_all(signups), futures::future::join_all(sends)).await
    };
    let load = async {
        // Each user edits their profile over and over, through every
        // instance in turn; a 503 is retried with the same key.
        let mut acknowledged: Vec<(usize, u32)> = Vec::new();
        for round in 0..30u32 {
            for (n, (_, token)) in users.iter().enumerate() {
                let key = format!("load-{n}-{round}");
                let patch = json!({ "about": format!("round {round}") });
                for attempt in 0.. {
                    // A client (or its load balancer) moves on from an
                    // instance that does not answer.
                    let port = three.ports[(n + round as usize + attempt) % 3];
                    let reply = three
                        .env
                        .http
                        .patch(url(port, "/v1/profile"))
                        .bearer_auth(token)
                        .header("idempotency-key", &key)
                        .json(&patch)
                        .send()
                        .await;
                    match reply {
                        Ok(reply) if reply.status() == StatusCode::OK => {
                            acknowledged.push((n, round));
                            break;
                        }
                        Ok(reply) => {
                            let status = reply.status();
                            let body = reply.text().await.unwrap_or_default();
                            assert!(
                                status == StatusCode::SERVICE_UNAVAILABLE,
                                "only 503 may stand between a retry and its answer: {status} {body}"
                            );
                        }
                        Err(_) => {}
                    }
                    assert!(attempt < 200, "user {n} round {round} never acknowledged");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        acknowledged
    };
    let kill = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut victim = victim;
        victim.kill();
    };
    let (acknowledged, (), (signups, sends)) = tokio::join!(load, kill, races);
    assert_eq!(acknowledged.len(), 6 * 30);
    let count =
        |answers: &[(StatusCode, Value)], status: StatusCode| answers.iter().filter(|(s, _)| *s == status).count();
    assert_eq!(
        (count(&signups, StatusCode::CREATED), count(&signups, StatusCode::CONFLICT)),
        (1, 19),
        "one account for the email, whatever died meanwhile: {signups:?}"
    );
    assert_eq!(
        (count(&sends, StatusCode::CREATED), count(&sends, StatusCode::TOO_MANY_REQUESTS)),
        (10, 10),
        "the daily limit holds through the failover: {sends:?}"
    );
    // Every user's last acknowledged write is what the views hold.
    three.env.projector_caught_up().await;
    for (n, (id, token)) in users.iter().enumerate() {
        let profile = three.env.query("/v1/profile", token, None).await;
        assert_eq!(profile.body["about"], "round 29", "user {n} ({id}): {:?}", profile.body);
    }
    // The survivors took the dead instance's partitions over.
    three.ports.remove(1);
    let path = "/v1/auth/signup";
    for n in 0..6 {
        let body = TestEnv::signup_body(&three.env.email(&format!("after{n}")));
        let reply = three.at(n, Method::POST, path, Some(&body), None).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    }
}
