//! Owner markers fence a command API that lost its claim
//! (docs/scale-out.md §2): paused past a successor's start, it wakes up
//! with a model that lacks the successor's writes. It must acknowledge
//! nothing decided on that model, and no reader may count what it sent.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use test_support::{PASSWORD, TestEnv, eventually, free_port};

/// The value of a counter in a `/metrics` text; 0 when absent.
async fn counter(env: &TestEnv, url: &str, series: &str) -> u64 {
    let text = env.http.get(url).send().await.expect("metrics").text().await.expect("text");
    let prefix = format!("{series} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn a_command_api_paused_past_its_successors_start_acknowledges_nothing_the_successor_lacks() {
    let mut env = TestEnv::start().await;
    let email = env.email("contested");
    let signup = TestEnv::signup_body(&email);

    // A is paused (SIGSTOP) with a model that has never seen `email`.
    let first = env.command_api.take().expect("command api");
    let first_port = env.command_port;
    first.pause();

    // B starts on the same topics: it claims every partition and signs the email up.
    env.command_port = free_port();
    env.start_command_api().await;
    let second_port = env.command_port;
    let (owner, _) = env.signup(&email).await;

    // A wakes up. Its model says the email is free, so it decides a sign-up
    // and appends it, under the epoch of its old claim. B's marker lies
    // before that record: A must not answer it as a success.
    first.resume();
    env.command_port = first_port;
    let stale = env.command(Method::POST, "/v1/auth/signup", Some(&signup), None).await;
    assert_eq!(stale.status, StatusCode::SERVICE_UNAVAILABLE, "a fenced instance answered: {:?}", stale.body);
    assert_eq!(stale.header("retry-after").as_deref(), Some("1"), "{:?}", stale.headers);
    assert!(
        first.log_text().contains("was claimed again at offset"),
        "A must have been fenced by B's marker (not merely timed out):\n{}",
        first.log_text()
    );

    // A heals by itself: it claims anew and reads B's sign-up into its
    // model, so a retry is refused as a client error.
    eventually("A serves again with B's writes in its model", Duration::from_secs(30), || async {
        let retry = env.command(Method::POST, "/v1/auth/signup", Some(&signup), None).await;
        match (retry.status, retry.code()) {
            (StatusCode::CONFLICT, "email_taken") => Ok(()),
            other => Err(format!("{other:?}: {:?}", retry.body)),
        }
    })
    .await;

    // A's record is in the log, and every reader ignores it: the views hold
    // the one account B acknowledged.
    let registrations = env
        .read_topic(events::Topic::UserEvents)
        .await
        .into_iter()
        .filter(|(payload, _)| String::from_utf8_lossy(payload).contains(&email))
        .count();
    assert_eq!(registrations, 2, "both sign-ups were appended: B's, and A's fenced one");
    env.projector_caught_up().await;
    let users = env.views_db().await.collection::<mongodb::bson::Document>("users");
    let stored: Vec<String> = users
        .distinct("_id", mongodb::bson::doc! { "emailId": &email })
        .await
        .expect("users")
        .into_iter()
        .filter_map(|id| id.as_str().map(str::to_owned))
        .collect();
    assert_eq!(stored, vec![owner.clone()], "the views hold exactly B's account");
    let projector_metrics = format!("http://127.0.0.1:{}/metrics", env.projector_port);
    assert!(
        counter(&env, &projector_metrics, "projector_fenced_records_total").await >= 1,
        "the projector ignored A's record by the owner rule"
    );

    // A's new claim in turn supersedes B's: B's next append is not answered
    // either, and B heals the same way. Both log-ins land on the account B made.
    env.command_port = second_port;
    let superseded = env.login_reply(&email, PASSWORD).await;
    assert_eq!(superseded.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", superseded.body);
    let login = eventually("B serves again", Duration::from_secs(30), || async {
        let reply = env.login_reply(&email, PASSWORD).await;
        if reply.status == StatusCode::OK { Ok(reply) } else { Err(format!("{}: {:?}", reply.status, reply.body)) }
    })
    .await;
    assert_eq!(login.body["userId"], owner.as_str());
    let profile =
        env.query("/v1/profile", login.body["token"].as_str().expect("token"), Some(&login.consistency())).await;
    assert_eq!((profile.status, profile.body["userId"].as_str()), (StatusCode::OK, Some(owner.as_str())));
    env.command_api = Some(first);
}
