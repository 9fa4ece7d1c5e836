//! A test environment: its own Redis and the three services, started,
//! stopped, crashed and restarted.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::JWT_SECRET;
use crate::processes::{Proc, Servers, free_port, wait_for_port};

/// Everything one test needs: its own Redis, the three services, a client.
#[derive(Debug)]
pub struct TestEnv {
    pub id: String,
    pub servers: Servers,
    pub dir: PathBuf,
    pub redis_port: u16,
    pub command_port: u16,
    pub query_port: u16,
    pub projector_port: u16,
    pub projector_group: String,
    pub extra_env: Vec<(String, String)>,
    pub redis: Option<Proc>,
    pub command_api: Option<Proc>,
    pub projector: Option<Proc>,
    pub query_api: Option<Proc>,
    /// Command APIs besides the first, with their ports: started when
    /// `DEVCONNECT_TEST_COMMAND_APIS` asks for more than one, and then
    /// every API request goes to the next instance in turn (`command_url`).
    pub more_command_apis: Vec<(u16, Proc)>,
    pub(crate) rotation: std::sync::atomic::AtomicUsize,
    pub http: reqwest::Client,
}

impl TestEnv {
    /// Starts a fresh environment with default settings.
    pub async fn start() -> Self {
        Self::start_with(Vec::new()).await
    }

    /// Starts a fresh environment, with extra environment variables for the services.
    pub async fn start_with(extra_env: Vec<(&str, &str)>) -> Self {
        Self::start_on(Servers::from_env(), extra_env).await
    }

    /// Starts a fresh environment against `servers` (e.g. a private MongoDB
    /// that the test kills), with extra environment variables.
    pub async fn start_on(servers: Servers, extra_env: Vec<(&str, &str)>) -> Self {
        let id = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let dir = std::env::temp_dir().join("devconnect-tests").join(&id);
        std::fs::create_dir_all(&dir).expect("test dir");
        let mut env = TestEnv {
            id: id.clone(),
            servers,
            dir,
            redis_port: free_port(),
            command_port: free_port(),
            query_port: free_port(),
            projector_port: free_port(),
            projector_group: format!("{id}-projector"),
            extra_env: extra_env.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
            redis: None,
            command_api: None,
            projector: None,
            query_api: None,
            more_command_apis: Vec::new(),
            rotation: std::sync::atomic::AtomicUsize::new(0),
            http: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("http client"),
        };
        env.start_redis().await;
        env.start_command_api().await;
        let instances: usize =
            std::env::var("DEVCONNECT_TEST_COMMAND_APIS").ok().and_then(|n| n.parse().ok()).unwrap_or(1);
        for _ in 1..instances {
            let started = env.start_another_command_api().await;
            env.more_command_apis.push(started);
        }
        env.settle_command_apis().await;
        env.start_projector().await;
        env.start_query_api().await;
        env
    }

    pub fn database(&self) -> String {
        self.id.clone()
    }

    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.redis_port)
    }

    pub async fn start_redis(&mut self) {
        let log = self.dir.join("redis.log");
        let child = Command::new(&self.servers.redis_server)
            .args(["--bind", "127.0.0.1", "--port", &self.redis_port.to_string(), "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::from(std::fs::File::create(&log).expect("log")))
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.redis = Some(Proc { name: "redis".into(), child, log });
        wait_for_port(self.redis_port).await;
    }

    /// The environment every service of this test environment gets.
    pub fn service_env(&self) -> Vec<(String, String)> {
        let mut vars = vec![
            ("DEVCONNECT_KAFKA_BROKERS", self.servers.kafka.clone()),
            ("DEVCONNECT_TOPIC_PREFIX", format!("{}-", self.id)),
            ("DEVCONNECT_MONGO_URI", self.servers.mongo_uri.clone()),
            ("DEVCONNECT_MONGO_DATABASE", self.database()),
            ("DEVCONNECT_REDIS_URL", self.redis_url()),
            ("DEVCONNECT_JWT_SECRET", JWT_SECRET.to_owned()),
            ("DEVCONNECT_COMMAND_API_ADDR", format!("127.0.0.1:{}", self.command_port)),
            ("DEVCONNECT_QUERY_API_ADDR", format!("127.0.0.1:{}", self.query_port)),
            ("DEVCONNECT_PROJECTOR_ADDR", format!("127.0.0.1:{}", self.projector_port)),
            ("DEVCONNECT_PROJECTOR_GROUP", self.projector_group.clone()),
            // Switch-overs reach the services quickly.
            ("DEVCONNECT_VIEW_GENERATION_POLL", "200ms".to_owned()),
            // Several environments share two cores under `./dev test`: a
            // read-your-write may wait longer than a client would.
            ("DEVCONNECT_CONSISTENCY_WAIT", "20s".to_owned()),
            ("RUST_LOG", "info".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect::<Vec<_>>();
        vars.extend(self.extra_env.iter().cloned());
        vars
    }

    /// Spawns one of our binaries with the given environment.
    pub fn spawn(&self, binary: &str, env: &[(String, String)]) -> Proc {
        self.spawn_logged(binary, &[], env, &format!("{binary}.log"))
    }

    /// Spawns a binary with arguments, its stderr appended to `log_name`.
    fn spawn_logged(&self, binary: &str, args: &[&str], env: &[(String, String)], log_name: &str) -> Proc {
        let path = self.servers.bin_dir.join(binary);
        assert!(path.exists(), "{} is missing: `./dev test` builds it before the tests", path.display());
        let log = self.dir.join(log_name);
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("log file");
        let child = Command::new(&path)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap_or_else(|e| panic!("start {binary} {args:?}: {e}"));
        let name = [binary].iter().chain(args).copied().collect::<Vec<_>>().join(" ");
        Proc { name, child, log }
    }

    /// Starts one more command API on a port of its own, in the same group
    /// as the first (docs/scale-out.md), and returns it once it is ready:
    /// it then serves what the group assigned it and forwards the rest.
    pub async fn start_another_command_api(&mut self) -> (u16, Proc) {
        let port = free_port();
        let mut env = self.service_env();
        env.push(("DEVCONNECT_COMMAND_API_ADDR".to_owned(), format!("127.0.0.1:{port}")));
        let proc = self.spawn_logged("command-api", &[], &env, &format!("command-api-{port}.log"));
        (port, self.until_ready(proc, port).await)
    }

    /// With several command APIs: waits until each is ready (every
    /// partition has a live owner) and serves a share of the partitions,
    /// so the group has settled before a test sends commands.
    pub async fn settle_command_apis(&self) {
        if self.more_command_apis.is_empty() {
            return;
        }
        let ports: Vec<u16> =
            std::iter::once(self.command_port).chain(self.more_command_apis.iter().map(|(p, _)| *p)).collect();
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut settled_since: Option<Instant> = None;
        loop {
            let mut settled = true;
            for port in &ports {
                let ready = self.http.get(format!("http://127.0.0.1:{port}/readyz")).send().await;
                let served =
                    self.counter_at(&format!("http://127.0.0.1:{port}/metrics"), "command_api_partitions_served").await;
                settled &= ready.is_ok_and(|r| r.status().is_success()) && served > 0;
            }
            match (settled, settled_since) {
                (true, Some(since)) if since.elapsed() >= Duration::from_secs(2) => return,
                (true, None) => settled_since = Some(Instant::now()),
                (false, _) => settled_since = None,
                _ => {}
            }
            assert!(Instant::now() < deadline, "the command APIs did not share the partitions within 90 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn start_service(&mut self, binary: &str, port: u16) -> Proc {
        let proc = self.spawn(binary, &self.service_env());
        self.until_ready(proc, port).await
    }

    /// Waits for `proc`'s `/readyz` on `port` (90 s at most).
    async fn until_ready(&self, mut proc: Proc, port: u16) -> Proc {
        let binary = proc.name.clone();
        let url = format!("http://127.0.0.1:{port}/readyz");
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(r) = self.http.get(&url).send().await
                && r.status().is_success()
            {
                return proc;
            }
            if let Some(status) = proc.exited() {
                panic!("{binary} exited ({status}) during start-up:\n{}", proc.log_text());
            }
            assert!(Instant::now() < deadline, "{binary} not ready within 90 s:\n{}", proc.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn start_command_api(&mut self) {
        let p = self.start_service("command-api", self.command_port).await;
        self.command_api = Some(p);
    }

    /// Starts the projector without waiting for it to be ready.
    pub fn spawn_projector(&mut self) {
        let proc = self.spawn("projector", &self.service_env());
        self.projector = Some(proc);
    }

    pub async fn start_projector(&mut self) {
        let p = self.start_service("projector", self.projector_port).await;
        self.projector = Some(p);
    }

    pub async fn start_query_api(&mut self) {
        let p = self.start_service("query-api", self.query_port).await;
        self.query_api = Some(p);
    }

    pub async fn restart_command_api(&mut self) {
        if let Some(mut p) = self.command_api.take() {
            p.kill();
        }
        self.start_command_api().await;
        self.settle_command_apis().await;
    }

    /// Stops Redis (SIGKILL); `start_redis` starts it again, empty, on the
    /// same port.
    pub fn stop_redis(&mut self) {
        if let Some(mut p) = self.redis.take() {
            p.kill();
        }
    }

    /// Kills the projector (SIGKILL) and starts a new one at once, without
    /// waiting for it: a crash and a supervisor's restart.
    pub fn crash_and_restart_projector(&mut self) {
        if let Some(mut p) = self.projector.take() {
            p.crash();
        }
        self.spawn_projector();
    }

    pub fn stop_projector(&mut self) {
        if let Some(mut p) = self.projector.take() {
            p.kill();
        }
    }

    /// Runs a projector operation (`replay`, `redrive-dead-letters`) with
    /// this environment's settings plus `extra`.
    pub fn projector_operation(&self, args: &[&str], extra: &[(&str, &str)]) -> Proc {
        let mut vars = self.service_env();
        vars.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = format!("projector-{}-{run}.log", args.first().copied().unwrap_or("run"));
        self.spawn_logged("projector", args, &vars, &log)
    }

    /// Waits until the projector reports no lag, twice across a watermark
    /// refresh (it reads the topics' ends once a second).
    pub async fn projector_caught_up(&self) {
        let url = format!("http://127.0.0.1:{}/progress", self.projector_port);
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut zero_since: Option<Instant> = None;
        loop {
            let progress: Value = self.http.get(&url).send().await.expect("progress").json().await.expect("json");
            if progress["lag"] == 0 {
                let since = *zero_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_millis(1_500) {
                    return;
                }
            } else {
                zero_since = None;
            }
            assert!(Instant::now() < deadline, "the projector did not catch up: {progress}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
