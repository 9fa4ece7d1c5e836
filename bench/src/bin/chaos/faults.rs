//! The faults: every ~20–30 s a part is killed, restarted after a pause,
//! and timed until a probe write is readable again and the projector is
//! ready. Each chosen part once, in random order, before any twice.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bench::Rng;
use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

use crate::client::{Env, User, Write};
use crate::processes::{dev_up, kill_part, wait_dev_up};
use crate::workload::Progress;
use crate::{Args, CONVERGE_WITHIN};

pub struct FaultRecord {
    pub name: String,
    /// From the restart until the probe is readable and the projector ready.
    pub converged: Result<Duration, String>,
}

/// Until a probe write is readable with its consistency token and the
/// projector is ready; the time since `restart`.
pub async fn converge(
    env: &Env,
    probe: &User,
    label: &str,
    restart: Instant,
    deadline: Instant,
) -> Result<Duration, String> {
    let not_in_time = |what: &str| format!("did not converge within {}s ({what})", CONVERGE_WITHIN.as_secs());
    let value = format!("chaos {} probe {label}", env.run);
    let key = Uuid::new_v4().to_string();
    let body = json!({"about": value});
    let token = match env.write(Method::PATCH, "/v1/profile", Some(&probe.token), &body, &key, deadline, None).await {
        Write::Done { token: Some(token), .. } => token,
        Write::Done { token: None, .. } => return Err("the probe write answered no consistency token".into()),
        Write::Rejected(why) => return Err(format!("probe write refused: {why}")),
        Write::Unknown => return Err(not_in_time("probe write still unanswered")),
    };
    loop {
        let seen = env.read("/v1/profile", &probe.token, Some(&token)).await;
        if seen.is_ok_and(|v| v["about"].as_str() == Some(value.as_str())) {
            break;
        }
        if Instant::now() >= deadline {
            return Err(not_in_time("probe write not readable"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    loop {
        if env.ready(&env.projector).await {
            return Ok(restart.elapsed());
        }
        if Instant::now() >= deadline {
            return Err(not_in_time("projector not ready"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub struct FaultRun {
    pub records: Vec<FaultRecord>,
    /// A `dev up` still running when the loop ended.
    pub pending: Option<tokio::process::Child>,
    pub notes: Vec<String>,
}

/// Every ~20–30 s: kill the next part, wait 2–5 s, `dev up`, measure the
/// time to converge. Each chosen part once (random order) before any twice.
pub async fn fault_loop(
    env: Arc<Env>,
    args: Arc<Args>,
    probe: User,
    mut rng: Rng,
    workload_end: Instant,
    hard_end: Instant,
    progress: Arc<Progress>,
) -> FaultRun {
    let mut run = FaultRun { records: Vec::new(), pending: None, notes: Vec::new() };
    let mut queue: Vec<String> = Vec::new();
    let mut untried: HashSet<String> = args.faults.iter().cloned().collect();
    let mut next_at = Instant::now() + Duration::from_secs(5);
    loop {
        tokio::time::sleep_until(next_at.into()).await;
        // Room to kill, restart and see some traffic before the workload ends.
        if Instant::now() + Duration::from_secs(20) > workload_end {
            break;
        }
        if let Some(child) = run.pending.as_mut() {
            if !wait_dev_up(child, workload_end - Duration::from_secs(20), &mut run.notes).await {
                break;
            }
            run.pending = None;
        }
        if queue.is_empty() {
            queue = rng.shuffled(&args.faults);
            queue.reverse();
        }
        let Some(name) = queue.pop() else { break };
        let started = Instant::now();
        let number = run.records.len() + 1;
        let killed = kill_part(&args, &name).await;
        let pause = rng.secs(2, 5);
        tokio::time::sleep(pause).await;
        let restart = Instant::now();
        let why = format!("run {}: restart after killing {name}", env.run);
        match dev_up(&args, &why) {
            Ok(child) => run.pending = Some(child),
            Err(err) => run.notes.push(format!("{err:#}")),
        }
        let deadline = (restart + CONVERGE_WITHIN).min(hard_end - Duration::from_secs(10));
        let converged = converge(&env, &probe, &format!("fault {number}"), restart, deadline).await;
        let killed = match killed {
            Ok(pid) => format!("killed (pid {pid})"),
            Err(why) => format!("not killed: {why}"),
        };
        let result = match &converged {
            Ok(d) => format!("converged in {:.1}s", d.as_secs_f64()),
            Err(why) => why.clone(),
        };
        println!("{} fault {number}: {name} {killed}, restarted after {:.1}s, {result}", env.t(), pause.as_secs_f64());
        progress.faults.fetch_add(1, Ordering::Relaxed);
        untried.remove(&name);
        run.records.push(FaultRecord { name, converged });
        // 20–30 s apart, closer if that is what leaves room for every part once.
        let mut gap = rng.secs(20, 30);
        if !untried.is_empty() {
            let room = workload_end.saturating_duration_since(started).saturating_sub(Duration::from_secs(20));
            gap = gap.min(room / untried.len() as u32);
        }
        next_at = (started + gap).max(Instant::now() + Duration::from_secs(2));
    }
    run
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bench::Rng;

    use crate::PARTS;

    #[test]
    fn the_order_covers_every_fault_once_and_repeats_with_the_seed() {
        let faults: Vec<String> = PARTS.iter().map(|p| (*p).to_owned()).collect();
        let a = Rng::new(42).shuffled(&faults);
        let b = Rng::new(42).shuffled(&faults);
        assert_eq!(a, b);
        let mut sorted = a.clone();
        sorted.sort();
        let mut expected = faults.clone();
        expected.sort();
        assert_eq!(sorted, expected);
        let mut rng = Rng::new(7);
        for _ in 0..100 {
            let d = rng.secs(2, 5);
            assert!(d >= Duration::from_secs(2) && d <= Duration::from_secs(5));
        }
    }
}
