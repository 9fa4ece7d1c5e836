//! Process control of the dev stack's parts: which run (their pid files),
//! killing one with SIGKILL, and `./dev up` to bring back what is down.
//! The only module that touches processes or the state directory.

use std::io::Write as _;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::client::Env;
use crate::faults::FaultRun;
use crate::{Args, PARTS};

/// The pid a part runs under, if its pid file names a live process.
pub fn running_pid(state_dir: &Path, name: &str) -> Option<u32> {
    let raw = std::fs::read_to_string(state_dir.join("pids").join(format!("{name}.pid"))).ok()?;
    let pid: u32 = raw.trim().parse().ok()?;
    process_state(pid).filter(|s| *s != 'Z').map(|_| pid)
}

/// Removes the pid files of zombies: `kill -0` succeeds on a zombie, so
/// `./dev up` would not start the part again where nobody reaps orphans.
pub fn forget_dead(state_dir: &Path) {
    for name in PARTS {
        let pid_file = state_dir.join("pids").join(format!("{name}.pid"));
        let pid = std::fs::read_to_string(&pid_file).ok().and_then(|raw| raw.trim().parse::<u32>().ok());
        if pid.and_then(process_state) == Some('Z') {
            let _ = std::fs::remove_file(&pid_file);
        }
    }
}

/// The state letter of /proc/<pid>/stat (R, S, D, Z, ...), None if gone.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    after_name.trim_start().chars().next()
}

/// Opens the restart log for appending, with a line saying why.
pub fn restart_log(state_dir: &Path, why: &str) -> anyhow::Result<std::fs::File> {
    let dir = state_dir.join("logs");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("chaos-restarts.log");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(file, "\n=== chaos {} {why}", chrono::Utc::now().to_rfc3339())?;
    Ok(file)
}

/// Starts `<dev> up`, its output appended to logs/chaos-restarts.log.
pub fn dev_up(args: &Args, why: &str) -> anyhow::Result<tokio::process::Child> {
    let log = restart_log(&args.state_dir, why)?;
    let err = log.try_clone()?;
    tokio::process::Command::new(&args.dev)
        .arg("up")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err))
        .spawn()
        .with_context(|| format!("running {} up", args.dev.display()))
}

/// Kills a part with SIGKILL and waits until it is gone (or a zombie,
/// whose pid file then goes, see `forget_dead`).
pub async fn kill_part(args: &Args, name: &str) -> Result<u32, String> {
    let Some(pid) = running_pid(&args.state_dir, name) else {
        forget_dead(&args.state_dir);
        return Err("was not running".into());
    };
    let status = tokio::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .await
        .map_err(|e| format!("kill -9 {pid}: {e}"))?;
    if !status.success() {
        return Err(format!("kill -9 {pid} failed ({status})"));
    }
    for _ in 0..50 {
        if process_state(pid).is_none_or(|s| s == 'Z') {
            forget_dead(&args.state_dir);
            return Ok(pid);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("pid {pid} still alive 5 s after kill -9"))
}

/// Waits for a `dev up` to end, until `until`; false if it still runs.
pub async fn wait_dev_up(child: &mut tokio::process::Child, until: Instant, notes: &mut Vec<String>) -> bool {
    match tokio::time::timeout(until.saturating_duration_since(Instant::now()), child.wait()).await {
        Ok(Ok(status)) if status.success() => true,
        Ok(Ok(status)) => {
            notes.push(format!("`dev up` exited with {status} (see logs/chaos-restarts.log)"));
            true
        }
        Ok(Err(err)) => {
            notes.push(format!("waiting for `dev up`: {err}"));
            true
        }
        Err(_) => false,
    }
}

/// Leaves the stack running: waits for a `dev up` the faults left running,
/// then restarts anything that is down.
pub async fn leave_stack_running(args: &Args, env: &Env, fault_run: &mut FaultRun) -> anyhow::Result<()> {
    if let Some(child) = fault_run.pending.as_mut() {
        let mut notes = Vec::new();
        if !wait_dev_up(child, Instant::now() + Duration::from_secs(60), &mut notes).await {
            println!("  a `dev up` is still running (see logs/chaos-restarts.log)");
        }
        for note in notes {
            println!("  note: {note}");
        }
    }
    let down: Vec<&str> = PARTS.into_iter().filter(|p| running_pid(&args.state_dir, p).is_none()).collect();
    if !down.is_empty() {
        forget_dead(&args.state_dir);
        println!("  {} not running at the end: `dev up` again", down.join(", "));
        let mut child = dev_up(args, &format!("run {}: final restart of {}", env.run, down.join(", ")))?;
        let _ = tokio::time::timeout(Duration::from_secs(180), child.wait()).await;
    }
    Ok(())
}
