//! The projector reports how far behind it is: applied offset, high
//! watermark and lag per partition in /metrics, and /readyz says ready only
//! once the views hold everything the topics held.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use test_support::TestEnv;

#[tokio::test]
async fn readyz_says_caught_up_only_once_the_views_hold_everything() {
    let mut env =
        TestEnv::start_with(vec![("DEVCONNECT_PROJECTOR_MAX_BATCH", "3"), ("DEVCONNECT_PROJECTOR_READY_LAG", "0")])
            .await;
    let (user, _) = env.user("lagging").await;
    env.stop_projector();
    // A backlog: 600 heartbeats, versions 1000..=1599, applied 3 at a time.
    env.produce_heartbeats(std::slice::from_ref(&user), 600).await;
    env.spawn_projector();

    let ops = format!("http://127.0.0.1:{}", env.projector_port);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut behind = Vec::new();
    loop {
        assert!(Instant::now() < deadline, "never caught up; saw {behind:?}");
        let Ok(reply) = env.http.get(format!("{ops}/readyz")).send().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let status = reply.status();
        let lag = reply.headers().get("x-projection-lag").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body: serde_json::Value = reply.json().await.expect("json");
        if status == StatusCode::OK {
            assert_eq!(body["checks"]["caughtUp"], true, "{body}");
            break;
        }
        if body["checks"]["projecting"] == false {
            // Still starting: its worker has not joined yet.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        assert_eq!(body["checks"]["caughtUp"], false, "only lag makes it unready here: {body}");
        behind.push(lag.unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        behind.iter().any(|lag| lag.parse::<i64>().is_ok_and(|n| n > 0)),
        "it said it was behind, with a lag, while applying the backlog: {behind:?}"
    );

    // Ready means the views hold the last heartbeat.
    let presence = env
        .views_db()
        .await
        .collection::<mongodb::bson::Document>("presence")
        .find_one(mongodb::bson::doc! {"_id": &user})
        .await
        .expect("presence")
        .expect("a presence document");
    assert_eq!(presence.get_i64("version").ok().or(presence.get_i32("version").ok().map(i64::from)), Some(1599));

    // /metrics: per partition, the applied offset equals the high watermark.
    let metrics = env.http.get(format!("{ops}/metrics")).send().await.expect("metrics").text().await.expect("text");
    let value = |series: &str, partition_label: &str| -> Vec<f64> {
        metrics
            .lines()
            .filter(|l| l.starts_with(series) && l.contains(partition_label))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect()
    };
    let topic = format!("topic=\"{}\"", env.topic(events::Topic::PresenceEvents));
    let applied: f64 = value("projector_applied_offset{", &topic).iter().sum();
    let high: f64 = value("projector_high_watermark{", &topic).iter().sum();
    let lag: f64 = value("projector_lag{", &topic).iter().sum();
    // Each partition also holds the command API's owner marker.
    let markers = value("projector_high_watermark{", &topic).len() as f64;
    assert_eq!((applied, high, lag), (600.0 + markers, 600.0 + markers, 0.0), "{metrics}");
}
