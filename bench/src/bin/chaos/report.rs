//! The report: what the final check found, what else happened (unknown
//! outcomes, refusals, faults not injected), and the summary lines that
//! end in the verdict, PASS or FAIL, which is also the exit code.

use std::collections::HashSet;

use crate::client::Env;
use crate::faults::FaultRun;
use crate::setup::Baseline;
use crate::verdict::{FinalCheck, Verdict, read_and_evaluate};
use crate::workload::Pair;
use crate::{Args, Timeline};

/// The final check's verdict beside what the workload was told.
pub struct Findings<'a> {
    pub verdict: Verdict,
    pub last_error: Option<anyhow::Error>,
    pub ended_at: std::time::Instant,
    pub acked_messages: usize,
    pub edits: usize,
    /// Pairs whose last write had no definitive answer at the deadline.
    pub unknown: usize,
    pub rejected: Vec<&'a String>,
}

impl<'a> Findings<'a> {
    pub fn of(pairs: &'a [Pair], check: FinalCheck) -> Self {
        let FinalCheck { last, last_error, ended_at } = check;
        let acked_messages: usize = pairs.iter().map(|p| p.acked.len()).sum();
        let edits: usize = pairs.iter().map(|p| p.edits).sum();
        let unknown = pairs.iter().filter(|p| p.unknown_message.is_some() || p.unknown_about.is_some()).count();
        let rejected: Vec<&String> = pairs.iter().flat_map(|p| &p.rejected).collect();
        let verdict = match last {
            Some(v) => v,
            None => {
                // Nothing could be read: nothing acknowledged is confirmed.
                let why = last_error.as_ref().map_or("no read succeeded".to_owned(), |e| format!("{e:#}"));
                Verdict {
                    lines: vec![format!("  the views could not be read: {why}")],
                    lost: acked_messages + edits,
                    ..Verdict::default()
                }
            }
        };
        Findings { verdict, last_error, ended_at, acked_messages, edits, unknown, rejected }
    }
}

/// The views checked, per pair, then what else the run saw. A check that
/// is not clean is read again from MongoDB, to tell a stale cache from a
/// missing view.
pub async fn print_findings(
    env: &Env,
    args: &Args,
    pairs: &[Pair],
    baseline: &Baseline,
    findings: &Findings<'_>,
    fault_run: &FaultRun,
    timeline: &Timeline,
) {
    let Findings { verdict, last_error, ended_at, unknown, rejected, .. } = findings;
    println!(
        "\n{} views checked{} (reads as a client makes them, cache first):",
        env.t(),
        if verdict.clean() {
            String::new()
        } else {
            format!(", still not holding everything after {}s", timeline.final_window.as_secs())
        }
    );
    for line in &verdict.lines {
        println!("{line}");
    }
    if let Some(err) = last_error {
        println!("  the last attempt to read failed: {err:#}");
    }
    if !verdict.clean() {
        // Tell a stale cache from a missing view: the same reads from MongoDB.
        match read_and_evaluate(env, pairs, &baseline.probe.token, baseline.days(), baseline.messages_sent, true).await
        {
            Ok(durable) => println!(
                "  durable re-read (MongoDB, with consistency tokens): lost {}, counted twice {}",
                durable.lost, durable.twice
            ),
            Err(err) => println!("  durable re-read failed: {err:#}"),
        }
    }
    if *unknown > 0 {
        println!(
            "  {unknown} writes were still unanswered at the deadline (the views may or may not hold them; both pass)"
        );
    }
    for why in rejected.iter().take(5) {
        println!("  refused: {why}");
    }
    for note in &fault_run.notes {
        println!("  note: {note}");
    }
    let tried: HashSet<&str> = fault_run.records.iter().map(|r| r.name.as_str()).collect();
    let skipped: Vec<&str> = args.faults.iter().map(String::as_str).filter(|f| !tried.contains(f)).collect();
    if !skipped.is_empty() {
        println!("  not injected (no time left; a longer --duration): {}", skipped.join(", "));
    }
    println!("  check ended {}s into the run", ended_at.saturating_duration_since(timeline.started).as_secs());
}

/// The summary lines and PASS or FAIL (with why); returns the exit code.
pub fn print_verdict(findings: &Findings<'_>, fault_run: &FaultRun) -> i32 {
    let Findings { verdict, acked_messages, edits, rejected, .. } = findings;
    let all_converged = fault_run.records.iter().all(|r| r.converged.is_ok());
    let events = acked_messages + edits;
    let pass = verdict.clean() && rejected.is_empty() && all_converged && events > 0;
    let faults_line = if fault_run.records.is_empty() {
        "none".to_owned()
    } else {
        fault_run
            .records
            .iter()
            .map(|r| match &r.converged {
                Ok(d) => format!("{} {:.1}s", r.name, d.as_secs_f64()),
                Err(why) => format!("{} {why}", r.name),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !pass {
        let mut why = Vec::new();
        if !verdict.clean() {
            why.push("the views differ from what was acknowledged");
        }
        if !rejected.is_empty() {
            why.push("writes were refused");
        }
        if !all_converged {
            why.push("a fault did not converge in time");
        }
        if events == 0 {
            why.push("nothing was acknowledged");
        }
        println!("  FAIL because {}", why.join("; "));
    }
    println!("events acknowledged: {events}");
    println!("views checked: {}", verdict.checked);
    println!("lost: {}", verdict.lost);
    println!("counted twice: {}", verdict.twice);
    println!("faults: {faults_line}");
    println!("verdict: {}", if pass { "PASS" } else { "FAIL" });
    if pass { 0 } else { 1 }
}
