//! The verdict: what the views hold for each pair, compared with what the
//! workload was told, counting writes lost and writes counted twice; and
//! the final check that waits for the views before comparing.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::client::Env;
use crate::setup::Baseline;
use crate::workload::Pair;

/// What the views hold for one pair.
pub struct PairView {
    pub history: Vec<(String, String)>,
    pub recipient_unread: i64,
    pub sender_unread: i64,
    pub about: Option<String>,
}

pub async fn read_pair(env: &Env, pair: &Pair, durable: bool) -> anyhow::Result<PairView> {
    let history = env.history(pair, if durable { pair.last_message_token.as_deref() } else { None }).await?;
    let recipient = env.read("/v1/notifications", &pair.recipient.token, None).await?;
    let sender = env.read("/v1/notifications", &pair.sender.token, None).await?;
    let profile =
        env.read("/v1/profile", &pair.sender.token, if durable { pair.about_token.as_deref() } else { None }).await?;
    Ok(PairView {
        history,
        recipient_unread: recipient["unreadCount"].as_i64().context("notifications answered no unreadCount")?,
        sender_unread: sender["unreadCount"].as_i64().context("notifications answered no unreadCount")?,
        about: profile["about"].as_str().map(str::to_owned),
    })
}

#[derive(Default)]
pub struct Verdict {
    pub lines: Vec<String>,
    pub lost: usize,
    pub twice: usize,
    pub checked: usize,
}

impl Verdict {
    pub fn clean(&self) -> bool {
        self.lost == 0 && self.twice == 0
    }
}

/// Compares what the views hold with what the workload was told.
/// A pair's message history against what was acknowledged.
struct HistoryCheck<'a> {
    /// Distinct message ids the views hold.
    seen: HashSet<&'a str>,
    /// Ids held more than once (each repeat counted).
    duplicate_ids: usize,
    /// Acknowledged ids the views lack.
    missing: usize,
    /// 1 when the message left unknown at the deadline landed (once).
    landed: usize,
    /// Messages no 201 named and not the unknown one, with a description.
    extra: usize,
    extras: Vec<String>,
}

fn check_history<'a>(pair: &Pair, view: &'a PairView) -> HistoryCheck<'a> {
    let acked: HashSet<&str> = pair.acked.iter().map(|(id, _)| id.as_str()).collect();
    let acked_texts: HashSet<&str> = pair.acked.iter().map(|(_, t)| t.as_str()).collect();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut text_of: HashMap<&str, &str> = HashMap::new();
    for (id, text) in &view.history {
        *seen.entry(id.as_str()).or_default() += 1;
        text_of.insert(id.as_str(), text.as_str());
    }
    let duplicate_ids: usize = seen.values().map(|n| n - 1).sum();
    let missing = acked.iter().filter(|id| !seen.contains_key(*id)).count();
    // Messages the views hold that no 201 named: the one left unknown at
    // the deadline may have landed (once); any other is extra.
    let (mut landed, mut extra, mut extras) = (0usize, 0usize, Vec::new());
    let mut unacked: Vec<&str> = seen.keys().copied().filter(|id| !acked.contains(id)).collect();
    unacked.sort_unstable();
    for id in unacked {
        let text = text_of.get(id).copied().unwrap_or_default();
        if landed == 0 && pair.unknown_message.as_deref() == Some(text) {
            landed = 1;
        } else {
            extra += 1;
            let kind = if acked_texts.contains(text) || pair.unknown_message.as_deref() == Some(text) {
                "a second append of"
            } else {
                "unexplained"
            };
            extras.push(format!("{id} ({kind} {text:?})"));
        }
    }
    HistoryCheck { seen: seen.into_keys().collect(), duplicate_ids, missing, landed, extra, extras }
}

pub fn evaluate(pairs: &[Pair], views: &[PairView], stats_delta: i64) -> Verdict {
    let mut v = Verdict::default();
    let mut all: HashSet<&str> = HashSet::new();
    for (pair, view) in pairs.iter().zip(views) {
        let HistoryCheck { seen, duplicate_ids, missing, landed, extra, extras } = check_history(pair, view);
        all.extend(seen.iter().copied());
        let valid = pair.acked.len() - missing + landed;
        let distinct = seen.len();
        // The recipient: one connection request plus one per message.
        let mut unread_note = String::new();
        let (most, least) = (1 + distinct as i64, 1 + valid as i64);
        if view.recipient_unread > most {
            v.twice += (view.recipient_unread - most) as usize;
            unread_note = format!(" (views hold {distinct} messages)");
        } else if view.recipient_unread < least {
            v.lost += (least - view.recipient_unread) as usize;
            unread_note = format!(" (expected {least})");
        }
        // The sender: one "request accepted".
        if view.sender_unread > 1 {
            v.twice += (view.sender_unread - 1) as usize;
        } else if view.sender_unread < 1 {
            v.lost += 1;
        }
        let about_ok = view.about.as_deref() == Some(pair.about.as_str())
            || (pair.unknown_about.is_some() && view.about == pair.unknown_about);
        if !about_ok {
            v.lost += 1;
        }
        v.lost += missing;
        v.twice += duplicate_ids + extra;
        v.checked += 4;
        let unknown = match (&pair.unknown_message, landed) {
            (None, _) => String::new(),
            (Some(_), 1) => " (+1 unknown, landed)".into(),
            (Some(_), _) => " (+1 unknown, not in the views)".into(),
        };
        let about = if about_ok {
            "ok".to_owned()
        } else {
            format!("{:?}, last acknowledged {:?}", view.about.as_deref().unwrap_or(""), pair.about)
        };
        v.lines.push(format!(
            "  pair {}: {} acknowledged{unknown}, {} edits · history {distinct} distinct, {missing} missing, {duplicate_ids} repeated, {extra} extra · recipient unread {}{unread_note} · sender unread {} · about {about}",
            pair.index,
            pair.acked.len(),
            pair.edits,
            view.recipient_unread,
            view.sender_unread,
        ));
        for e in extras.iter().take(5) {
            v.lines.push(format!("    extra message {e}"));
        }
    }
    let total = all.len() as i64;
    if stats_delta > total {
        v.twice += (stats_delta - total) as usize;
    } else if stats_delta < total {
        v.lost += (total - stats_delta) as usize;
    }
    v.checked += 1;
    v.lines.push(format!(
        "  stats: messagesSent {stats_delta:+} during the run, views hold {total} messages of these pairs (assumes no other traffic on the stack)"
    ));
    v
}

pub async fn read_and_evaluate(
    env: &Env,
    pairs: &[Pair],
    bearer: &str,
    days: (&str, &str),
    baseline: i64,
    durable: bool,
) -> anyhow::Result<Verdict> {
    let mut views = Vec::with_capacity(pairs.len());
    for pair in pairs {
        views.push(read_pair(env, pair, durable).await?);
    }
    let sent = env.messages_sent(bearer, days).await?;
    Ok(evaluate(pairs, &views, sent - baseline))
}

/// How the final check ended.
pub struct FinalCheck {
    /// The last comparison that could read the views.
    pub last: Option<Verdict>,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<anyhow::Error>,
    pub ended_at: Instant,
}

/// The final check: first until the projector has applied everything
/// (lag 0), then compare the views until they hold everything or time
/// is up. A comparison pages through every history: not polled fast.
pub async fn final_check(env: &Env, pairs: &[Pair], baseline: &Baseline, hard_end: Instant) -> FinalCheck {
    println!("{} workload stopped; waiting for the views to hold everything", env.t());
    let check_by = hard_end.max(Instant::now() + Duration::from_secs(15));
    wait_for_projector(env, check_by - Duration::from_secs(10)).await;
    let mut last: Option<Verdict> = None;
    let mut last_error: Option<anyhow::Error>;
    loop {
        match read_and_evaluate(env, pairs, &baseline.probe.token, baseline.days(), baseline.messages_sent, false).await
        {
            Ok(v) => {
                let clean = v.clean();
                last = Some(v);
                last_error = None;
                if clean {
                    break;
                }
            }
            Err(err) => last_error = Some(err),
        }
        if Instant::now() >= check_by {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2).min(check_by.saturating_duration_since(Instant::now()))).await;
    }
    FinalCheck { last, last_error, ended_at: Instant::now() }
}

/// Until the projector's lag is 0 or `lag_by`; says so if it is still behind.
async fn wait_for_projector(env: &Env, lag_by: Instant) {
    let mut lag = env.projector_lag().await;
    while lag != Some(0) && Instant::now() < lag_by {
        tokio::time::sleep(Duration::from_millis(500)).await;
        lag = env.projector_lag().await;
    }
    if lag != Some(0) {
        let lag = lag.map_or("unknown".to_owned(), |l| l.to_string());
        println!("{} the projector is still behind (lag {lag}); checking anyway", env.t());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::User;

    fn pair(acked: &[(&str, &str)], unknown: Option<&str>) -> Pair {
        let user = |id: &str| User { id: id.into(), token: String::new() };
        Pair {
            index: 1,
            sender: user("s"),
            recipient: user("r"),
            acked: acked.iter().map(|(id, t)| ((*id).to_owned(), (*t).to_owned())).collect(),
            last_message_token: None,
            unknown_message: unknown.map(str::to_owned),
            rejected: Vec::new(),
            about: "a2".into(),
            about_token: None,
            unknown_about: None,
            edits: 2,
        }
    }

    fn view(history: &[(&str, &str)], recipient_unread: i64, about: &str) -> PairView {
        PairView {
            history: history.iter().map(|(id, t)| ((*id).to_owned(), (*t).to_owned())).collect(),
            recipient_unread,
            sender_unread: 1,
            about: Some(about.into()),
        }
    }

    #[test]
    fn views_holding_exactly_what_was_acknowledged_pass() {
        let p = pair(&[("m1", "t1"), ("m2", "t2")], Some("t3"));
        // The unknown message landed: allowed, and counted by the stats.
        let v = evaluate(&[p], &[view(&[("m3", "t3"), ("m2", "t2"), ("m1", "t1")], 4, "a2")], 3);
        assert!(v.clean(), "{:?}", v.lines);
        assert_eq!(v.checked, 5);
    }

    #[test]
    fn a_missing_message_or_profile_is_lost() {
        let p = pair(&[("m1", "t1"), ("m2", "t2")], None);
        let v = evaluate(&[p], &[view(&[("m1", "t1")], 2, "a1")], 1);
        assert_eq!((v.lost, v.twice), (2, 0));
    }

    #[test]
    fn repeats_extras_and_overcounts_are_counted_twice() {
        let p = pair(&[("m1", "t1"), ("m2", "t2")], None);
        // m2 listed twice, m9 a second append of t1, unread and stats one too high.
        let history = [("m9", "t1"), ("m2", "t2"), ("m2", "t2"), ("m1", "t1")];
        let v = evaluate(&[p], &[view(&history, 5, "a2")], 4);
        assert_eq!((v.lost, v.twice), (0, 4));
    }
}
