//! Owner markers fence a command API that lost its claim
//! (docs/scale-out.md §2): paused past a successor's start, it wakes up
//! with a model that lacks the successor's writes. It must acknowledge
//! nothing decided on that model, and no reader may count what it sent.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use test_support::{
    HoldingProxy, PASSWORD, Proc, Servers, TestEnv, eventually, free_port, start_private_broker_advertising, wait_exit,
};

/// The ids of the accounts the views hold for `email`.
async fn accounts_in_views(env: &TestEnv, email: &str) -> Vec<String> {
    let users = env.views_db().await.collection::<mongodb::bson::Document>("users");
    users
        .distinct("_id", mongodb::bson::doc! { "emailId": email })
        .await
        .expect("users")
        .into_iter()
        .filter_map(|id| id.as_str().map(str::to_owned))
        .collect()
}

/// The `about` of user `id` in the views.
async fn about_of(env: &TestEnv, id: &str) -> String {
    let users = env.views_db().await.collection::<mongodb::bson::Document>("users");
    let doc = users.find_one(mongodb::bson::doc! { "_id": id }).await.expect("find").expect("the user's document");
    doc.get_str("about").map(str::to_owned).unwrap_or_default()
}

/// How many records of user-events mention `text`.
async fn records_mentioning(env: &TestEnv, text: &str) -> usize {
    let records = env.read_topic(events::Topic::UserEvents).await;
    records.iter().filter(|(payload, _)| String::from_utf8_lossy(payload).contains(text)).count()
}

#[tokio::test]
async fn a_command_api_paused_past_its_successors_start_acknowledges_nothing_the_successor_lacks() {
    let mut env = TestEnv::start().await;
    let email = env.email("contested");
    let signup = TestEnv::signup_body(&email);
    // A user of A's, to edit once A has lost its claim.
    let editor_email = env.email("editor");
    let (editor, _) = env.signup(&editor_email).await;
    let (editor_token, _) = env.login(&editor_email, PASSWORD).await;

    // A is paused (SIGSTOP) with a model that has never seen `email`.
    let first = env.command_api.take().expect("command api");
    let first_port = env.command_port;
    first.pause();

    // B starts on the same topics, in a group of its own: the group
    // protocol cannot tell A it lost anything (as while the broker has not
    // yet expired a paused member), so only the markers in the log decide
    // between them. B claims every partition and signs the email up.
    env.command_port = free_port();
    env.extra_env.push(("DEVCONNECT_COMMAND_API_GROUP".to_owned(), "successor".to_owned()));
    env.start_command_api().await;
    let second_port = env.command_port;
    let (owner, _) = env.signup(&email).await;
    // The projector reads B's markers, then stops: A's record arrives while
    // it is down, and it must judge it by the epochs its checkpoints stored.
    env.projector_caught_up().await;
    env.stop_projector();

    // A wakes up still believing it owns every partition. An edit is valid
    // whatever A's model has read since, so A decides it and appends it
    // under the epoch of its old claim. B's marker lies before that record:
    // A must not answer it as a success.
    first.resume();
    env.command_port = first_port;
    let fenced_edit = json!({ "about": "written by a fenced owner" });
    let stale = env.command(Method::PATCH, "/v1/profile", Some(&fenced_edit), Some(&editor_token)).await;
    assert_eq!(stale.status, StatusCode::SERVICE_UNAVAILABLE, "a fenced instance answered: {:?}", stale.body);
    assert_eq!(stale.header("retry-after").as_deref(), Some("1"), "{:?}", stale.headers);
    assert!(
        first.log_text().contains("was claimed again at offset"),
        "A must have been fenced by B's marker (not merely timed out):\n{}",
        first.log_text()
    );
    // Nor does it acknowledge a second account for the email: its model
    // either never saw B's sign-up (then its append is fenced, 503) or has
    // read it by now (409), or it forwards to B, which refuses it.
    let second = env.command(Method::POST, "/v1/auth/signup", Some(&signup), None).await;
    assert!(
        [StatusCode::SERVICE_UNAVAILABLE, StatusCode::CONFLICT].contains(&second.status),
        "a second account: {:?}",
        second.body
    );

    env.start_projector().await;

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

    // A's fenced edit is in the log, and every reader ignores it: the views
    // hold the one account B acknowledged, and the editor's profile as it was.
    assert_eq!(records_mentioning(&env, "written by a fenced owner").await, 1, "A's edit was appended");
    env.projector_caught_up().await;
    assert_eq!(accounts_in_views(&env, &email).await, vec![owner.clone()], "the views hold exactly B's account");
    assert_ne!(about_of(&env, &editor).await, "written by a fenced owner", "the views ignore the fenced edit");
    let projector_metrics = format!("http://127.0.0.1:{}/metrics", env.projector_port);
    assert!(
        env.counter_at(&projector_metrics, "projector_fenced_records_total").await >= 1,
        "the projector ignored A's record by the owner rule"
    );
    // A rebuild from offset 0 (the coalescing path) judges it the same way.
    let mut replay = env.projector_operation(&["replay", "--progress", "log", "--drop-after", "1s"], &[]);
    let status = wait_exit(&mut replay, Duration::from_secs(180)).await;
    assert!(status.success(), "replay failed:\n{}", replay.log_text());
    assert_eq!(accounts_in_views(&env, &email).await, vec![owner.clone()], "the rebuilt views hold B's account");
    assert_ne!(about_of(&env, &editor).await, "written by a fenced owner", "the rebuilt views ignore the fenced edit");

    // A does not claim over B: a re-claim gives up what another instance
    // claimed since, and fresh claims follow the group's assignment, so the
    // two do not fence each other back and forth. Log-ins through either
    // land on B's account.
    env.command_port = second_port;
    let login = eventually("B serves", Duration::from_secs(30), || async {
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

/// The hole the owner markers close in a single writer: a send that timed
/// out (503) can still reach the broker after the command API has read the
/// log again and served newer commands. Here the broker's clients are held
/// at a proxy: the sign-up's produce request waits there past its timeout,
/// the command API claims its partitions anew over fresh connections, and
/// only then is the request delivered. It lands behind the new markers, so
/// no reader may count it: the retry (which the model, rightly, allows)
/// makes the one account.
/// A private broker whose clients all go through a `HoldingProxy`, and an
/// environment on it whose appends time out after 2 s.
async fn behind_a_holding_proxy() -> (TestEnv, HoldingProxy, Proc) {
    let dir = std::env::temp_dir().join(format!("devconnect-held-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (broker_port, proxy_port) = (free_port(), free_port());
    let proxy = HoldingProxy::start(proxy_port, broker_port).await;
    let broker = start_private_broker_advertising(&dir, broker_port, proxy_port).await;
    let servers = Servers { kafka: format!("127.0.0.1:{proxy_port}"), ..Servers::from_env() };
    let env = TestEnv::start_on(servers, vec![("DEVCONNECT_KAFKA_DELIVERY_TIMEOUT", "2s")]).await;
    env.signup(&env.email("warm")).await;
    (env, proxy, broker)
}

#[tokio::test]
async fn a_send_that_lands_after_its_timeout_counts_for_no_reader() {
    let (mut env, proxy, _broker) = behind_a_holding_proxy().await;
    let email = env.email("late");
    let signup = TestEnv::signup_body(&email);

    proxy.hold_open_connections();
    let timed_out = env.command(Method::POST, "/v1/auth/signup", Some(&signup), None).await;
    assert_eq!(timed_out.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", timed_out.body);
    // The command API claims every partition anew (fresh connections pass)
    // and reads the log: ready again while the first send is still held.
    let ready = env.command_url("/readyz");
    eventually("the command API resynced", Duration::from_secs(30), || async {
        let status = env.http.get(&ready).send().await.map_err(|e| e.to_string())?.status();
        if status.is_success() { Ok(()) } else { Err(status.to_string()) }
    })
    .await;
    proxy.release();
    eventually("the held sign-up landed", Duration::from_secs(30), || async {
        match records_mentioning(&env, &email).await {
            1 => Ok(()),
            n => Err(format!("{n} records")),
        }
    })
    .await;

    // The model never held the late record, so the email is free to it:
    let (user, _) = env.signup(&email).await;
    assert_eq!(records_mentioning(&env, &email).await, 2);
    env.projector_caught_up().await;
    assert_eq!(accounts_in_views(&env, &email).await, vec![user.clone()], "only the acknowledged account");
    let projector_metrics = format!("http://127.0.0.1:{}/metrics", env.projector_port);
    assert!(env.counter_at(&projector_metrics, "projector_fenced_records_total").await >= 1);

    // A model read from the log afresh agrees: the email is taken, by `user`.
    env.restart_command_api().await;
    let again = env.command(Method::POST, "/v1/auth/signup", Some(&signup), None).await;
    assert_eq!((again.status, again.code()), (StatusCode::CONFLICT, "email_taken"), "{:?}", again.body);
    let login = env.login_reply(&email, PASSWORD).await;
    assert_eq!((login.status, login.body["userId"].as_str()), (StatusCode::OK, Some(user.as_str())));
}

/// A command waiting for the locks of one whose outcome turned unknown must
/// not decide on the model that lacks it. Here sign-up A's produce request
/// is held past its timeout while sign-up B of the same email waits for
/// the email's lock; then the request is delivered, ahead of anything B
/// could send on the same connection. Had B decided, both would count.
#[tokio::test]
async fn a_command_queued_behind_an_unknown_outcome_does_not_decide_on_the_stale_model() {
    let (env, proxy, _broker) = behind_a_holding_proxy().await;
    let email = env.email("queued");
    let signup = TestEnv::signup_body(&email);

    proxy.hold_open_connections();
    let url = env.command_url("/v1/auth/signup");
    let first = tokio::spawn({
        let (http, url, signup) = (env.http.clone(), url.clone(), signup.clone());
        async move { http.post(&url).json(&signup).send().await.expect("first").status() }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = tokio::spawn({
        let (http, url, signup) = (env.http.clone(), url.clone(), signup.clone());
        async move {
            let reply = http.post(&url).json(&signup).send().await.expect("second");
            (reply.status(), reply.text().await.unwrap_or_default())
        }
    });
    assert_eq!(first.await.expect("first"), StatusCode::SERVICE_UNAVAILABLE, "the held sign-up timed out");
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.release();
    let (status, body) = second.await.expect("second");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "the queued sign-up decided on a stale model: {body}");

    // Healed, the email has exactly one account, whichever sign-up made it.
    let settled = eventually("a sign-up of the email is settled", Duration::from_secs(30), || async {
        let reply = env.command(Method::POST, "/v1/auth/signup", Some(&signup), None).await;
        match reply.status {
            StatusCode::CREATED | StatusCode::CONFLICT => Ok(reply),
            other => Err(format!("{other}: {:?}", reply.body)),
        }
    })
    .await;
    env.projector_caught_up().await;
    let accounts = accounts_in_views(&env, &email).await;
    assert_eq!(accounts.len(), 1, "one account for the email: {accounts:?} ({:?})", settled.body);
    let login = env.login_reply(&email, PASSWORD).await;
    assert_eq!((login.status, login.body["userId"].as_str()), (StatusCode::OK, Some(accounts[0].as_str())));
}
