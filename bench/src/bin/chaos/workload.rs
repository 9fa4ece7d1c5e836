//! The workload: one task per sender/recipient pair writing messages and
//! profile edits, each write retried until definitive, and what each pair
//! was told, which the verdict compares the views with.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bench::Rng;
use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

use crate::client::{Env, User, Write};
use crate::faults::{FaultRun, fault_loop};
use crate::{Args, Timeline};

/// One sender/recipient pair and what the workload was told about it.
#[derive(Debug, Clone)]
pub struct Pair {
    pub index: usize,
    pub sender: User,
    pub recipient: User,
    /// `(messageId, text)` of every message answered 201.
    pub acked: Vec<(String, String)>,
    pub last_message_token: Option<String>,
    /// The text of the message still without a definitive answer at the deadline.
    pub unknown_message: Option<String>,
    pub rejected: Vec<String>,
    /// The sender's last acknowledged `about` (the signup value at first).
    pub about: String,
    pub about_token: Option<String>,
    pub unknown_about: Option<String>,
    pub edits: usize,
}

#[derive(Default)]
pub struct Progress {
    pub messages: AtomicUsize,
    pub edits: AtomicUsize,
    pub retrying: AtomicUsize,
    pub rejected: AtomicUsize,
    pub faults: AtomicUsize,
}

/// Messages sender → recipient and profile edits until `end`, one write
/// at a time, each retried with its own key until definitive.
pub async fn worker(env: Arc<Env>, mut pair: Pair, args: Arc<Args>, end: Instant, progress: Arc<Progress>) -> Pair {
    let mut next_edit = Instant::now() + args.edit_interval;
    let mut n = 0usize;
    while Instant::now() < end {
        let key = Uuid::new_v4().to_string();
        let retrying = Some(&progress.retrying);
        if Instant::now() >= next_edit {
            next_edit = Instant::now() + args.edit_interval;
            let about = format!("chaos {} pair {} edit {}", env.run, pair.index, pair.edits + 1);
            let body = json!({"about": about});
            match env.write(Method::PATCH, "/v1/profile", Some(&pair.sender.token), &body, &key, end, retrying).await {
                Write::Done { token, .. } => {
                    pair.about = about;
                    pair.about_token = token;
                    pair.edits += 1;
                    progress.edits.fetch_add(1, Ordering::Relaxed);
                }
                Write::Rejected(why) => {
                    pair.rejected.push(why);
                    progress.rejected.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Write::Unknown => {
                    pair.unknown_about = Some(about);
                    break;
                }
            }
        } else {
            n += 1;
            let text = format!("chaos {} pair {} message {n}", env.run, pair.index);
            let path = format!("/v1/messages/{}", pair.recipient.id);
            let body = json!({"text": text});
            match env.write(Method::POST, &path, Some(&pair.sender.token), &body, &key, end, retrying).await {
                Write::Done { body, token } => match body["messageId"].as_str() {
                    Some(id) => {
                        pair.acked.push((id.to_owned(), text));
                        pair.last_message_token = token;
                        progress.messages.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {
                        pair.rejected.push(format!("POST {path}: 2xx without a messageId: {body}"));
                        progress.rejected.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                },
                Write::Rejected(why) => {
                    // Nothing in this workload should be refused; stop this
                    // pair rather than repeat the refusal.
                    pair.rejected.push(why);
                    progress.rejected.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Write::Unknown => {
                    pair.unknown_message = Some(text);
                    break;
                }
            }
        }
        tokio::time::sleep(args.message_interval.min(end.saturating_duration_since(Instant::now()))).await;
    }
    pair
}

/// Runs the pairs' workers and the faults until the workload ends, with a
/// status line every 10 s; returns the pairs (in order) and the faults.
pub async fn run_workload(
    env: &Arc<Env>,
    args: &Arc<Args>,
    pairs: Vec<Pair>,
    probe: &User,
    seed: u64,
    timeline: &Timeline,
) -> anyhow::Result<(Vec<Pair>, FaultRun)> {
    let Timeline { workload_end, hard_end, .. } = *timeline;
    let progress = Arc::new(Progress::default());
    let workers: Vec<_> = pairs
        .into_iter()
        .map(|pair| tokio::spawn(worker(Arc::clone(env), pair, Arc::clone(args), workload_end, Arc::clone(&progress))))
        .collect();
    let faults = tokio::spawn(fault_loop(
        Arc::clone(env),
        Arc::clone(args),
        probe.clone(),
        Rng::new(seed),
        workload_end,
        hard_end,
        Arc::clone(&progress),
    ));
    let status = spawn_status_line(Arc::clone(env), Arc::clone(&progress), workload_end);
    let mut pairs = Vec::with_capacity(workers.len());
    for w in workers {
        pairs.push(w.await.context("a worker panicked")?);
    }
    let fault_run = faults.await.context("the fault loop panicked")?;
    status.abort();
    pairs.sort_by_key(|p| p.index);
    Ok((pairs, fault_run))
}

/// Prints what the workload and the faults did so far every 10 s, until
/// the workload ends.
fn spawn_status_line(env: Arc<Env>, progress: Arc<Progress>, workload_end: Instant) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            if Instant::now() >= workload_end {
                break;
            }
            println!(
                "{} {} messages and {} edits acknowledged, {} retrying, {} refused, {} faults",
                env.t(),
                progress.messages.load(Ordering::Relaxed),
                progress.edits.load(Ordering::Relaxed),
                progress.retrying.load(Ordering::Relaxed),
                progress.rejected.load(Ordering::Relaxed),
                progress.faults.load(Ordering::Relaxed),
            );
        }
    })
}
