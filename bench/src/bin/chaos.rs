//! Chaos run against the running dev stack: a bounded workload of messages
//! and profile edits while each part (broker, MongoDB, Redis and the three
//! services) is killed with SIGKILL and restarted with `./dev up`, at random.
//! Afterwards it waits until the views hold everything and says whether an
//! acknowledged write was lost or a write counted twice.
//!
//! `./dev chaos [--duration 3m] [--faults redis,projector] [--seed N]`.
//! It talks only to the URLs given (127.0.0.1 by default) and leaves the
//! stack running.
#![allow(clippy::print_stdout)]

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bench::Rng;
use clap::Parser;
use platform::config::parse_duration;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

const PARTS: [&str; 6] = ["broker", "mongodb", "redis", "command-api", "projector", "query-api"];
const PASSWORD: &str = "Chaos#Pass1";
/// How long a fault may take to converge, and the final check to pass.
const CONVERGE_WITHIN: Duration = Duration::from_secs(60);
const CONSISTENCY_HEADER: &str = "x-consistency-token";
const IDEMPOTENCY_HEADER: &str = "idempotency-key";

#[derive(Debug, Clone, Parser)]
#[command(about = "DevConnect chaos run: kill -9 and restart each part under a workload, then check the views")]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    command_url: String,
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    query_url: String,
    /// The projector's ops endpoints (/readyz, /progress).
    #[arg(long, default_value = "http://127.0.0.1:8082")]
    projector_url: String,
    /// The dev stack's state directory (pids/<name>.pid, logs/).
    #[arg(long, default_value = ".devconnect/dev")]
    state_dir: PathBuf,
    /// The dev script; `<dev> up` restarts what is not running.
    #[arg(long, default_value = "./dev")]
    dev: PathBuf,
    /// The whole run, setup and final check included: 180s, 3m or plain seconds.
    #[arg(long, default_value = "180s", value_parser = parse_duration)]
    duration: Duration,
    /// The parts to kill, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "broker,mongodb,redis,command-api,projector,query-api",
        value_parser = PARTS)]
    faults: Vec<String>,
    /// Seed of the fault order and pauses (printed, to repeat a run).
    #[arg(long)]
    seed: Option<u64>,
    /// Sender/recipient pairs, one worker each.
    #[arg(long, default_value_t = 4)]
    pairs: usize,
    /// Pause between two writes of a worker.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    message_interval: Duration,
    /// How often each sender edits its profile.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    edit_interval: Duration,
}

/// The answer to a write retried until it is definitive.
enum Write {
    /// 2xx: the body and the consistency token.
    Done { body: Value, token: Option<String> },
    /// 4xx: refused; nothing was written.
    Rejected(String),
    /// The deadline passed before a definitive answer: it may or may not have landed.
    Unknown,
}

/// Counts the writes currently being retried while it lives.
struct RetryMark<'a>(Option<&'a AtomicUsize>, bool);

impl RetryMark<'_> {
    fn set(&mut self) {
        if !self.1 {
            self.1 = true;
            if let Some(c) = self.0 {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for RetryMark<'_> {
    fn drop(&mut self) {
        if let (Some(c), true) = (self.0, self.1) {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[derive(Debug, Clone)]
struct User {
    id: String,
    token: String,
}

struct Env {
    http: reqwest::Client,
    command: String,
    query: String,
    projector: String,
    run: String,
    started: Instant,
}

impl Env {
    /// `[ 42s]`: seconds since the start of the run.
    fn t(&self) -> String {
        format!("[{:>4}s]", self.started.elapsed().as_secs())
    }

    /// Sends the same request with the same Idempotency-Key until the
    /// answer is definitive (2xx or 4xx) or `deadline` passes. 5xx, 408,
    /// 429, timeouts and refused connections leave the outcome unknown.
    #[allow(clippy::too_many_arguments)]
    async fn write(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: &Value,
        key: &str,
        deadline: Instant,
        retrying: Option<&AtomicUsize>,
    ) -> Write {
        let url = format!("{}{path}", self.command);
        let mut mark = RetryMark(retrying, false);
        let mut backoff = Duration::from_millis(100);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Write::Unknown;
            }
            let mut req = self
                .http
                .request(method.clone(), &url)
                .header(IDEMPOTENCY_HEADER, key)
                .timeout(left.min(Duration::from_secs(10)))
                .json(body);
            if let Some(b) = bearer {
                req = req.bearer_auth(b);
            }
            if let Ok(res) = req.send().await {
                let status = res.status();
                let token = res.headers().get(CONSISTENCY_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
                if status.is_success() {
                    // A body lost on the way is asked for again: the retry replays it.
                    if let Ok(bytes) = res.bytes().await {
                        let body = if bytes.is_empty() {
                            Value::Null
                        } else {
                            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
                        };
                        return Write::Done { body, token };
                    }
                } else if status.is_client_error()
                    && status != StatusCode::TOO_MANY_REQUESTS
                    && status != StatusCode::REQUEST_TIMEOUT
                {
                    let text = res.text().await.unwrap_or_default();
                    return Write::Rejected(format!("{} {path}: {status} {}", method, text.trim()));
                }
            }
            mark.set();
            tokio::time::sleep(backoff.min(deadline.saturating_duration_since(Instant::now()))).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// A GET on the query API; anything but 2xx is an error.
    async fn read(&self, path: &str, bearer: &str, consistency: Option<&str>) -> anyhow::Result<Value> {
        let mut req = self.http.get(format!("{}{path}", self.query)).bearer_auth(bearer);
        if let Some(c) = consistency {
            req = req.header(CONSISTENCY_HEADER, c);
        }
        let res = req.send().await.with_context(|| format!("GET {path}"))?;
        let status = res.status();
        if !status.is_success() {
            let text = res.text().await.unwrap_or_default();
            anyhow::bail!("GET {path}: {status} {}", text.trim());
        }
        Ok(res.json().await?)
    }

    async fn ready(&self, base: &str) -> bool {
        let res = self.http.get(format!("{base}/readyz")).timeout(Duration::from_secs(3)).send().await;
        res.is_ok_and(|r| r.status().is_success())
    }

    /// The projector's total lag, if it knows it.
    async fn projector_lag(&self) -> Option<i64> {
        let res = self.http.get(format!("{}/progress", self.projector)).timeout(Duration::from_secs(3)).send().await;
        let v: Value = res.ok()?.json().await.ok()?;
        v["lag"].as_i64()
    }

    /// A fresh account, logged in.
    async fn user(&self, label: &str, last_name: &str, about: &str, deadline: Instant) -> anyhow::Result<User> {
        let email = format!("chaos-{}-{label}@example.com", self.run);
        let body = json!({"firstName": "Chaos", "lastName": last_name, "emailId": email, "password": PASSWORD,
            "about": about, "skills": ["chaos"]});
        let key = Uuid::new_v4().to_string();
        let (v, _) = done(self.write(Method::POST, "/v1/auth/signup", None, &body, &key, deadline, None).await)?;
        let id = v["userId"].as_str().context("signup answered no userId")?.to_owned();
        let body = json!({"emailId": email, "password": PASSWORD});
        let key = Uuid::new_v4().to_string();
        let (v, _) = done(self.write(Method::POST, "/v1/auth/login", None, &body, &key, deadline, None).await)?;
        let token = v["token"].as_str().context("login answered no token")?.to_owned();
        Ok(User { id, token })
    }

    /// Sum of `messagesSent` over `from..=to` (UTC days).
    async fn messages_sent(&self, bearer: &str, days: (&str, &str)) -> anyhow::Result<i64> {
        let v = self.read(&format!("/v1/stats/daily?from={}&to={}", days.0, days.1), bearer, None).await?;
        let days = v["days"].as_array().context("stats answered no days")?;
        Ok(days.iter().filter_map(|d| d["messagesSent"].as_i64()).sum())
    }

    /// Every message of a conversation as `(messageId, text)`, newest first,
    /// paging with `before`.
    async fn history(&self, pair: &Pair, consistency: Option<&str>) -> anyhow::Result<Vec<(String, String)>> {
        let mut items = Vec::new();
        let mut before: Option<String> = None;
        for _ in 0..100_000 {
            let path = match &before {
                None => format!("/v1/messages/{}?limit=50", pair.recipient.id),
                Some(b) => format!("/v1/messages/{}?limit=50&before={b}", pair.recipient.id),
            };
            let page = self.read(&path, &pair.sender.token, consistency).await?;
            for item in page["items"].as_array().map(Vec::as_slice).unwrap_or_default() {
                let id = item["messageId"].as_str().unwrap_or_default().to_owned();
                items.push((id, item["text"].as_str().unwrap_or_default().to_owned()));
            }
            match page["nextBefore"].as_str() {
                Some(next) if before.as_deref() != Some(next) => before = Some(next.to_owned()),
                _ => return Ok(items),
            }
        }
        anyhow::bail!("the history of pair {} did not end", pair.index)
    }
}

fn done(w: Write) -> anyhow::Result<(Value, Option<String>)> {
    match w {
        Write::Done { body, token } => Ok((body, token)),
        Write::Rejected(why) => anyhow::bail!("{why}"),
        Write::Unknown => anyhow::bail!("no definitive answer in time"),
    }
}

/// One sender/recipient pair and what the workload was told about it.
#[derive(Debug, Clone)]
struct Pair {
    index: usize,
    sender: User,
    recipient: User,
    /// `(messageId, text)` of every message answered 201.
    acked: Vec<(String, String)>,
    last_message_token: Option<String>,
    /// The text of the message still without a definitive answer at the deadline.
    unknown_message: Option<String>,
    rejected: Vec<String>,
    /// The sender's last acknowledged `about` (the signup value at first).
    about: String,
    about_token: Option<String>,
    unknown_about: Option<String>,
    edits: usize,
}

#[derive(Default)]
struct Progress {
    messages: AtomicUsize,
    edits: AtomicUsize,
    retrying: AtomicUsize,
    rejected: AtomicUsize,
    faults: AtomicUsize,
}

async fn setup_pair(env: &Env, index: usize, deadline: Instant) -> anyhow::Result<Pair> {
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

/// Messages sender → recipient and profile edits until `end`, one write
/// at a time, each retried with its own key until definitive.
async fn worker(env: Arc<Env>, mut pair: Pair, args: Arc<Args>, end: Instant, progress: Arc<Progress>) -> Pair {
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

struct FaultRecord {
    name: String,
    /// From the restart until the probe is readable and the projector ready.
    converged: Result<Duration, String>,
}

/// The pid a part runs under, if its pid file names a live process.
fn running_pid(state_dir: &Path, name: &str) -> Option<u32> {
    let raw = std::fs::read_to_string(state_dir.join("pids").join(format!("{name}.pid"))).ok()?;
    let pid: u32 = raw.trim().parse().ok()?;
    process_state(pid).filter(|s| *s != 'Z').map(|_| pid)
}

/// Removes the pid files of zombies: `kill -0` succeeds on a zombie, so
/// `./dev up` would not start the part again where nobody reaps orphans.
fn forget_dead(state_dir: &Path) {
    for name in PARTS {
        let pid_file = state_dir.join("pids").join(format!("{name}.pid"));
        let pid = std::fs::read_to_string(&pid_file).ok().and_then(|raw| raw.trim().parse::<u32>().ok());
        if pid.and_then(process_state) == Some('Z') {
            let _ = std::fs::remove_file(&pid_file);
        }
    }
}

/// The state letter of /proc/<pid>/stat (R, S, D, Z, ...), None if gone.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    after_name.trim_start().chars().next()
}

/// Opens the restart log for appending, with a line saying why.
fn restart_log(state_dir: &Path, why: &str) -> anyhow::Result<std::fs::File> {
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
fn dev_up(args: &Args, why: &str) -> anyhow::Result<tokio::process::Child> {
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
async fn kill_part(args: &Args, name: &str) -> Result<u32, String> {
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

/// Until a probe write is readable with its consistency token and the
/// projector is ready; the time since `restart`.
async fn converge(
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

/// Waits for a `dev up` to end, until `until`; false if it still runs.
async fn wait_dev_up(child: &mut tokio::process::Child, until: Instant, notes: &mut Vec<String>) -> bool {
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

struct FaultRun {
    records: Vec<FaultRecord>,
    /// A `dev up` still running when the loop ended.
    pending: Option<tokio::process::Child>,
    notes: Vec<String>,
}

/// Every ~20–30 s: kill the next part, wait 2–5 s, `dev up`, measure the
/// time to converge. Each chosen part once (random order) before any twice.
async fn fault_loop(
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

/// What the views hold for one pair.
struct PairView {
    history: Vec<(String, String)>,
    recipient_unread: i64,
    sender_unread: i64,
    about: Option<String>,
}

async fn read_pair(env: &Env, pair: &Pair, durable: bool) -> anyhow::Result<PairView> {
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
struct Verdict {
    lines: Vec<String>,
    lost: usize,
    twice: usize,
    checked: usize,
}

impl Verdict {
    fn clean(&self) -> bool {
        self.lost == 0 && self.twice == 0
    }
}

/// Compares what the views hold with what the workload was told.
fn evaluate(pairs: &[Pair], views: &[PairView], stats_delta: i64) -> Verdict {
    let mut v = Verdict::default();
    let mut all: HashSet<&str> = HashSet::new();
    for (pair, view) in pairs.iter().zip(views) {
        let acked: HashSet<&str> = pair.acked.iter().map(|(id, _)| id.as_str()).collect();
        let acked_texts: HashSet<&str> = pair.acked.iter().map(|(_, t)| t.as_str()).collect();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut text_of: HashMap<&str, &str> = HashMap::new();
        for (id, text) in &view.history {
            *seen.entry(id.as_str()).or_default() += 1;
            text_of.insert(id.as_str(), text.as_str());
        }
        all.extend(seen.keys().copied());
        let duplicate_ids: usize = seen.values().map(|n| n - 1).sum();
        let missing = acked.iter().filter(|id| !seen.contains_key(*id)).count();
        // Messages the views hold that no 201 named: the one left unknown
        // at the deadline may have landed (once); any other is extra.
        let mut landed = 0usize;
        let mut extra = 0usize;
        let mut extras = Vec::new();
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
        let valid = acked.len() - missing + landed;
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

async fn read_and_evaluate(
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    let code = tokio::select! {
        code = run(Arc::clone(&args)) => code?,
        _ = tokio::signal::ctrl_c() => {
            // A part may be down right now: bring back whatever is.
            println!("\ninterrupted: running `{} up` so that nothing stays down (log: logs/chaos-restarts.log)", args.dev.display());
            tokio::time::sleep(Duration::from_secs(1)).await;
            forget_dead(&args.state_dir);
            let mut child = dev_up(&args, "interrupted: restarting whatever is down")?;
            let _ = tokio::time::timeout(Duration::from_secs(180), child.wait()).await;
            130
        }
    };
    std::process::exit(code)
}

async fn run(args: Arc<Args>) -> anyhow::Result<i32> {
    let started = Instant::now();
    anyhow::ensure!(args.pairs > 0, "--pairs must be at least 1");
    anyhow::ensure!(args.duration >= Duration::from_secs(30), "--duration must be at least 30s");
    // The final check gets a minute, or a third of a short run.
    let final_window = CONVERGE_WITHIN.min(args.duration / 3);
    let hard_end = started + args.duration;
    let workload_end = hard_end - final_window;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    let env = Arc::new(Env {
        http: reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .build()?,
        command: args.command_url.trim_end_matches('/').to_owned(),
        query: args.query_url.trim_end_matches('/').to_owned(),
        projector: args.projector_url.trim_end_matches('/').to_owned(),
        run: Uuid::new_v4().simple().to_string()[..8].to_owned(),
        started,
    });
    println!(
        "chaos run {}: seed {seed}, {} pairs, {}s in all (the final check gets {}s), faults: {}",
        env.run,
        args.pairs,
        args.duration.as_secs(),
        final_window.as_secs(),
        args.faults.join(", ")
    );

    // Preflight: everything answers before anything is killed.
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

    // Setup, before any fault.
    let setup_by = (Instant::now() + Duration::from_secs(60)).min(workload_end);
    let probe = env.user("probe", "Probe", "chaos probe", setup_by).await.context("creating the probe user")?;
    let pairs = futures::future::try_join_all((1..=args.pairs).map(|i| setup_pair(&env, i, setup_by))).await?;
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

    // The workload, the faults and a status line every 10 s.
    let progress = Arc::new(Progress::default());
    let workers: Vec<_> = pairs
        .into_iter()
        .map(|pair| {
            tokio::spawn(worker(Arc::clone(&env), pair, Arc::clone(&args), workload_end, Arc::clone(&progress)))
        })
        .collect();
    let faults = tokio::spawn(fault_loop(
        Arc::clone(&env),
        Arc::clone(&args),
        probe.clone(),
        Rng::new(seed),
        workload_end,
        hard_end,
        Arc::clone(&progress),
    ));
    let status = {
        let (env, progress) = (Arc::clone(&env), Arc::clone(&progress));
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
    };
    let mut pairs = Vec::with_capacity(workers.len());
    for w in workers {
        pairs.push(w.await.context("a worker panicked")?);
    }
    let mut fault_run = faults.await.context("the fault loop panicked")?;
    status.abort();
    pairs.sort_by_key(|p| p.index);

    // The final check: first until the projector has applied everything
    // (lag 0), then compare the views until they hold everything or time
    // is up. A comparison pages through every history: not polled fast.
    println!("{} workload stopped; waiting for the views to hold everything", env.t());
    let check_by = hard_end.max(Instant::now() + Duration::from_secs(15));
    let lag_by = check_by - Duration::from_secs(10);
    let mut lag = env.projector_lag().await;
    while lag != Some(0) && Instant::now() < lag_by {
        tokio::time::sleep(Duration::from_millis(500)).await;
        lag = env.projector_lag().await;
    }
    if lag != Some(0) {
        let lag = lag.map_or("unknown".to_owned(), |l| l.to_string());
        println!("{} the projector is still behind (lag {lag}); checking anyway", env.t());
    }
    let mut last: Option<Verdict> = None;
    let mut last_error: Option<anyhow::Error>;
    loop {
        match read_and_evaluate(&env, &pairs, &probe.token, days, baseline, false).await {
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
    let converged_at = Instant::now();

    // Report.
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
    println!(
        "\n{} views checked{} (reads as a client makes them, cache first):",
        env.t(),
        if verdict.clean() {
            String::new()
        } else {
            format!(", still not holding everything after {}s", final_window.as_secs())
        }
    );
    for line in &verdict.lines {
        println!("{line}");
    }
    if let Some(err) = &last_error {
        println!("  the last attempt to read failed: {err:#}");
    }
    if !verdict.clean() {
        // Tell a stale cache from a missing view: the same reads from MongoDB.
        match read_and_evaluate(&env, &pairs, &probe.token, days, baseline, true).await {
            Ok(durable) => println!(
                "  durable re-read (MongoDB, with consistency tokens): lost {}, counted twice {}",
                durable.lost, durable.twice
            ),
            Err(err) => println!("  durable re-read failed: {err:#}"),
        }
    }
    if unknown > 0 {
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
    let all_converged = fault_run.records.iter().all(|r| r.converged.is_ok());
    let tried: HashSet<&str> = fault_run.records.iter().map(|r| r.name.as_str()).collect();
    let skipped: Vec<&str> = args.faults.iter().map(String::as_str).filter(|f| !tried.contains(f)).collect();
    if !skipped.is_empty() {
        println!("  not injected (no time left; a longer --duration): {}", skipped.join(", "));
    }
    println!("  check ended {}s into the run", converged_at.saturating_duration_since(started).as_secs());

    // Leave the stack running: restart anything that is down.
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
        let mut child = dev_up(&args, &format!("run {}: final restart of {}", env.run, down.join(", ")))?;
        let _ = tokio::time::timeout(Duration::from_secs(180), child.wait()).await;
    }

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
    Ok(if pass { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

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
