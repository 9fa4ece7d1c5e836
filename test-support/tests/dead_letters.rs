//! A poison record never stops the projector: it goes to the dead-letter
//! topic with the reason and its origin, and a re-drive appends dead
//! letters back to their topics once a fix makes them readable.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use events::Topic;
use serde_json::json;
use test_support::{LEGACY_RECORD, LEGACY_USER, TestEnv, wait_exit};

type Letter = (Vec<u8>, BTreeMap<String, String>);

async fn dead_letters(env: &TestEnv, at_least: usize) -> Vec<Letter> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let letters = env.read_topic(Topic::DeadLetters).await;
        if letters.len() >= at_least {
            return letters;
        }
        assert!(Instant::now() < deadline, "expected {at_least} dead letters, found {}", letters.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn redrive(env: &TestEnv, args: &[&str]) -> String {
    let mut all = vec!["redrive-dead-letters"];
    all.extend_from_slice(args);
    let mut proc = env.projector_operation(&all, &[]);
    let status = wait_exit(&mut proc, Duration::from_secs(60)).await;
    assert!(status.success(), "{}", proc.log_text());
    proc.log_text()
}

#[tokio::test]
async fn poison_records_are_dead_lettered_and_redriven_after_a_fix() {
    let env = TestEnv::start().await;
    let (_, token) = env.user("first").await;
    let user_events = env.topic(Topic::UserEvents);

    // Bytes no version can read, and an event type this version does not know.
    env.produce_raw(Topic::UserEvents, "poison", b"\x00 not json {", &[]).await;
    let unknown = json!([{
        "eventId": uuid::Uuid::now_v7(), "type": "user.teleported", "schemaVersion": 1,
        "aggregateId": uuid::Uuid::now_v7(), "aggregateVersion": 1, "occurredAt": "2026-11-01T10:00:00Z",
        "actor": null, "correlationId": "poison-test", "data": {}
    }]);
    env.produce_raw(Topic::UserEvents, "unknown", unknown.to_string().as_bytes(), &[]).await;

    // The projector goes on: a user signing up afterwards is projected.
    env.user("second").await;
    let letters = dead_letters(&env, 2).await;
    assert_eq!(letters.len(), 2, "{letters:?}");
    for (payload, headers) in &letters {
        assert_eq!(headers.get("dlq-origin-topic"), Some(&user_events), "{headers:?}");
        assert!(headers.get("dlq-origin-partition").is_some_and(|p| p.parse::<i32>().is_ok()), "{headers:?}");
        assert!(headers.get("dlq-origin-offset").is_some_and(|o| o.parse::<i64>().is_ok()), "{headers:?}");
        assert!(headers.get("dlq-reason").is_some_and(|r| r.starts_with("undecodable")), "{headers:?}");
        assert!(!payload.is_empty(), "the original bytes are kept");
    }
    assert!(letters.iter().any(|(p, _)| p.starts_with(b"\x00 not json")));
    let ops = format!("http://127.0.0.1:{}/metrics", env.projector_port);
    let metrics = env.http.get(ops).send().await.expect("metrics").text().await.expect("text");
    let dead_lettered = metrics
        .lines()
        .find_map(|l| l.strip_prefix("projector_dead_letters_total "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert_eq!(dead_lettered, Some(2.0), "{metrics}");

    // After a fix: a letter an older projector could not read (here made by
    // hand: a v1 registration) is now readable.
    env.produce_raw(
        Topic::DeadLetters,
        LEGACY_USER,
        LEGACY_RECORD.trim().as_bytes(),
        &[("dlq-origin-topic", &user_events), ("dlq-reason", "undecodable: unknown schema version")],
    )
    .await;
    let dry = redrive(&env, &["--dry-run"]).await;
    assert_eq!(dry.matches("would re-drive").count(), 3, "{dry}");
    let log = redrive(&env, &[]).await;
    assert_eq!(log.matches("re-driven partition=").count(), 3, "{log}");

    // The readable one reaches the views; the still-broken two come back.
    let grace = env.wait_for_user(&token, LEGACY_USER).await;
    assert_eq!(grace["firstName"], "Grace", "{grace}");
    let letters = dead_letters(&env, 5).await;
    assert_eq!(letters.len(), 5, "the two still-broken letters were dead-lettered again");
    // A second re-drive starts after the first: only those two.
    let again = redrive(&env, &["--dry-run"]).await;
    assert_eq!(again.matches("would re-drive").count(), 2, "{again}");
}
