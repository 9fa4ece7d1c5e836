//! Before any fault: every service answers, the probe user and the
//! connected pairs exist, and the stats baseline is read once the
//! projector has caught up, so the verdict counts only this run.

use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

use crate::Args;
use crate::client::{Env, User, done};
use crate::workload::Pair;

/// What the setup made and read, which the final check compares against.
pub struct Baseline {
    /// A user of its own whose profile edits probe each fault's recovery.
    pub probe: User,
    /// The UTC days the stats are summed over: today, and as many days
    /// after as the run may span.
    pub from: String,
    pub to: String,
    /// `messagesSent` over those days before the workload.
    pub messages_sent: i64,
}

impl Baseline {
    pub fn days(&self) -> (&str, &str) {
        (self.from.as_str(), self.to.as_str())
    }
}

/// Everything answers before anything is killed.
pub async fn preflight(env: &Env) -> anyhow::Result<()> {
    let ready_by = Instant::now() + Duration::from_secs(30);
    for (name, base) in [("command-api", &env.command), ("query-api", &env.query), ("projector", &env.projector)] {
        while !env.ready(base).await {
            anyhow::ensure!(
                Instant::now() < ready_by,
                "{name} at {base} is not ready (is the stack up, the projector caught up?)"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    Ok(())
}

/// The probe user, the connected pairs and the stats baseline, before any
/// fault; fails if that leaves no time for the workload.
pub async fn prepare(env: &Env, args: &Args, workload_end: Instant) -> anyhow::Result<(Baseline, Vec<Pair>)> {
    let setup_by = (Instant::now() + Duration::from_secs(60)).min(workload_end);
    let probe = env.user("probe", "Probe", "chaos probe", setup_by).await.context("creating the probe user")?;
    let pairs = futures::future::try_join_all((1..=args.pairs).map(|i| setup_pair(env, i, setup_by))).await?;
    let today = chrono::Utc::now().date_naive();
    let from = today.format("%Y-%m-%d").to_string();
    let span = (args.duration.as_secs() / 86_400 + 1).min(365) as i64;
    let to = (today + chrono::Duration::days(span)).format("%Y-%m-%d").to_string();
    let days = (from.as_str(), to.as_str());
    // The baseline once the projector has caught up with what came before.
    let caught_up_by = Instant::now() + Duration::from_secs(20);
    while env.projector_lag().await != Some(0) && Instant::now() < caught_up_by {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let baseline_by = Instant::now() + Duration::from_secs(20);
    let baseline = loop {
        match env.messages_sent(&probe.token, days).await {
            Ok(n) => break n,
            Err(err) if Instant::now() >= baseline_by => return Err(err.context("reading the baseline stats")),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    anyhow::ensure!(
        Instant::now() + Duration::from_secs(10) < workload_end,
        "setup left no time for the workload: use a longer --duration"
    );
    println!(
        "{} setup: {} connected pairs and a probe user; messagesSent since {from}: {baseline}; workload for {}s",
        env.t(),
        pairs.len(),
        workload_end.saturating_duration_since(Instant::now()).as_secs()
    );
    Ok((Baseline { probe, from, to, messages_sent: baseline }, pairs))
}

pub async fn setup_pair(env: &Env, index: usize, deadline: Instant) -> anyhow::Result<Pair> {
    let about = format!("chaos {} pair {index}, not edited yet", env.run);
    let sender = env.user(&format!("s{index}"), "Sender", &about, deadline).await?;
    let recipient = env.user(&format!("r{index}"), "Recipient", "chaos recipient", deadline).await?;
    let key = Uuid::new_v4().to_string();
    let path = format!("/v1/requests/send/interested/{}", recipient.id);
    let sent = env.write(Method::POST, &path, Some(&sender.token), &json!({}), &key, deadline, None).await;
    let (v, _) = done(sent).with_context(|| format!("pair {index}: sending the request"))?;
    let request_id = v["requestId"].as_str().context("send answered no requestId")?.to_owned();
    let key = Uuid::new_v4().to_string();
    let path = format!("/v1/requests/review/accepted/{request_id}");
    let accepted = env.write(Method::POST, &path, Some(&recipient.token), &json!({}), &key, deadline, None).await;
    done(accepted).with_context(|| format!("pair {index}: accepting the request"))?;
    Ok(Pair {
        index,
        sender,
        recipient,
        acked: Vec::new(),
        last_message_token: None,
        unknown_message: None,
        rejected: Vec::new(),
        about,
        about_token: None,
        unknown_about: None,
        edits: 0,
    })
}
