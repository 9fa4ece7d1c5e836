//! Helpers for the integration tests and the benchmark: start the real
//! programs on free ports against the real broker, MongoDB and Redis, and
//! talk HTTP to them.
//!
//! `./dev test` starts one broker and one MongoDB for the run and passes
//! their addresses in `DEVCONNECT_TEST_*`. Each [`TestEnv`] then gets its own
//! topic prefix, its own database and its own redis-server process, so tests
//! run in parallel without seeing each other.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

pub const JWT_SECRET: &str = "integration-tests-secret-0123456789abcdef";
pub const PASSWORD: &str = "Sup3r$ecret";

/// A user registered by an older version of the command API: recorded
/// `user.registered` v1 bytes, which readers must upcast.
pub const LEGACY_USER: &str = "0190f5a2-6c1e-7a4b-9d3e-000000000001";
pub const LEGACY_RECORD: &str = include_str!("../../events/tests/fixtures/user.registered.v1.json");

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the integration tests through `./dev test`, which starts the servers they need")
    })
}

/// The shared servers of this test run.
#[derive(Debug, Clone)]
pub struct Servers {
    pub kafka: String,
    pub mongo_uri: String,
    pub redis_server: PathBuf,
    pub bin_dir: PathBuf,
}

impl Servers {
    pub fn from_env() -> Self {
        Self {
            kafka: required_env("DEVCONNECT_TEST_KAFKA_BROKERS"),
            mongo_uri: required_env("DEVCONNECT_TEST_MONGO_URI"),
            redis_server: required_env("DEVCONNECT_TEST_REDIS_SERVER").into(),
            bin_dir: required_env("DEVCONNECT_TEST_BIN_DIR").into(),
        }
    }
}

/// A port nothing listens on, never the same twice in this process.
///
/// Asking the OS for port 0 and releasing it races: under a parallel test
/// run two environments could get the same number, and one service would
/// then fail to bind while its readiness check was answered by another
/// environment's service. Ports come instead from a counter in a range below
/// Linux's ephemeral ports (32768+), so the OS does not hand them out either.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ =
        NEXT.compare_exchange(0, 20_000 + (std::process::id() % 40) as u16 * 250, Ordering::SeqCst, Ordering::SeqCst);
    loop {
        let port = NEXT.fetch_add(1, Ordering::SeqCst);
        assert!(port < 32_000, "ran out of test ports");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A child process killed when dropped.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGKILL: no graceful shutdown, as in a crash.
    pub fn crash(&mut self) {
        self.kill();
    }

    /// SIGSTOP: the process holds its state and its sockets but answers
    /// nothing, as a hung server does.
    pub fn pause(&self) {
        signal(self.child.id(), "-STOP");
    }

    /// SIGCONT after `pause`.
    pub fn resume(&self) {
        signal(self.child.id(), "-CONT");
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn signal(pid: u32, which: &str) {
    let status = Command::new("kill").args([which, &pid.to_string()]).status().expect("kill");
    assert!(status.success(), "kill {which} {pid} failed");
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

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
    pub http: reqwest::Client,
}

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
    }

    pub fn consistency(&self) -> String {
        self.header("x-consistency-token").expect("a successful write carries X-Consistency-Token")
    }

    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("<no error code>")
    }
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
            http: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("http client"),
        };
        env.start_redis().await;
        env.start_command_api().await;
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

    async fn start_service(&mut self, binary: &str, port: u16) -> Proc {
        let mut proc = self.spawn(binary, &self.service_env());
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

    pub fn command_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.command_port)
    }

    pub fn query_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.query_port)
    }

    /// Sends a request and reads the reply; `headers` are (name, value) pairs.
    pub async fn send(&self, method: Method, url: &str, body: Option<&Value>, headers: &[(&str, &str)]) -> Reply {
        let mut request = self.http.request(method, url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        let body =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        Reply { status, headers, body }
    }

    pub async fn command(&self, method: Method, path: &str, body: Option<&Value>, token: Option<&str>) -> Reply {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth.as_deref().map(|a| vec![("authorization", a)]).unwrap_or_default();
        self.send(method, &self.command_url(path), body, &headers).await
    }

    /// A read; with a consistency token it waits for that write.
    pub async fn query(&self, path: &str, token: &str, consistency: Option<&str>) -> Reply {
        let auth = format!("Bearer {token}");
        let mut headers = vec![("authorization", auth.as_str())];
        if let Some(c) = consistency {
            headers.push(("x-consistency-token", c));
        }
        self.send(Method::GET, &self.query_url(path), None, &headers).await
    }

    pub fn signup_body(email: &str) -> Value {
        json!({
            "firstName": "Ada", "lastName": "Lovelace", "emailId": email, "password": PASSWORD,
            "age": 36, "gender": "female", "about": "Analytical engines", "skills": ["rust", "math"],
            "photoUrl": "https://example.com/ada.png"
        })
    }

    /// Signs up; returns the user id and the consistency token.
    pub async fn signup(&self, email: &str) -> (String, String) {
        let reply = self.command(Method::POST, "/v1/auth/signup", Some(&Self::signup_body(email)), None).await;
        assert_eq!(reply.status, StatusCode::CREATED, "signup {email}: {:?}", reply.body);
        (reply.body["userId"].as_str().expect("userId").to_owned(), reply.consistency())
    }

    /// Logs in; returns the token and the consistency token.
    pub async fn login(&self, email: &str, password: &str) -> (String, String) {
        let reply = self.login_reply(email, password).await;
        assert_eq!(reply.status, StatusCode::OK, "login {email}: {:?}", reply.body);
        (reply.body["token"].as_str().expect("token").to_owned(), reply.consistency())
    }

    /// The whole answer to a log-in, whatever it is.
    pub async fn login_reply(&self, email: &str, password: &str) -> Reply {
        let body = json!({ "emailId": email, "password": password });
        self.command(Method::POST, "/v1/auth/login", Some(&body), None).await
    }

    /// Spends a refresh token, with an `Idempotency-Key` if given.
    pub async fn refresh(&self, refresh_token: &str, idempotency_key: Option<&str>) -> Reply {
        let body = json!({ "refreshToken": refresh_token });
        let headers: Vec<(&str, &str)> = idempotency_key.map(|k| ("idempotency-key", k)).into_iter().collect();
        self.send(Method::POST, &self.command_url("/v1/auth/refresh"), Some(&body), &headers).await
    }

    /// Signs up and logs in a user named `name`, and waits until the views
    /// hold them (a user's events share one partition, so the log-in's
    /// consistency token covers the registration): (user id, token).
    pub async fn user(&self, name: &str) -> (String, String) {
        let email = self.email(name);
        let (user_id, _) = self.signup(&email).await;
        let (token, consistency) = self.login(&email, PASSWORD).await;
        let projected = self.query("/v1/profile", &token, Some(&consistency)).await;
        assert_eq!(projected.status, StatusCode::OK, "{name} never reached the views: {:?}", projected.body);
        (user_id, token)
    }

    /// `a` sends `b` an interested request and `b` accepts it; returns the
    /// acceptance (its consistency token covers the connection).
    pub async fn connect(&self, a_token: &str, b: &str, b_token: &str) -> Reply {
        let sent = self.command(Method::POST, &format!("/v1/requests/send/interested/{b}"), None, Some(a_token)).await;
        assert_eq!(sent.status, StatusCode::CREATED, "{:?}", sent.body);
        let id = sent.body["requestId"].as_str().expect("requestId").to_owned();
        let accepted =
            self.command(Method::POST, &format!("/v1/requests/review/accepted/{id}"), None, Some(b_token)).await;
        assert_eq!(accepted.status, StatusCode::OK, "{:?}", accepted.body);
        accepted
    }

    /// The value of one counter in the query API's `/metrics`, e.g.
    /// `feed_reads_total{path="mongo"}`; 0 when it has not counted yet.
    pub async fn query_counter(&self, series: &str) -> u64 {
        let text = self.http.get(self.query_url("/metrics")).send().await.expect("metrics").text().await.expect("text");
        let prefix = format!("{series} ");
        text.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
    }

    /// A unique email for this environment.
    pub fn email(&self, name: &str) -> String {
        format!("{name}.{}@example.com", self.id)
    }

    pub async fn mongo_client(&self) -> mongodb::Client {
        mongodb::Client::with_uri_str(&self.servers.mongo_uri).await.expect("mongo client")
    }

    /// The base database: it holds the view generation pointer.
    pub async fn mongo(&self) -> mongodb::Database {
        self.mongo_client().await.database(&self.database())
    }

    /// The view generation readers use now.
    pub async fn current_generation(&self) -> String {
        let pointer = self
            .mongo()
            .await
            .collection::<mongodb::bson::Document>(views::generation::CONTROL_COLLECTION)
            .find_one(mongodb::bson::doc! {})
            .await
            .expect("pointer");
        pointer.and_then(|p| p.get_str("current").ok().map(str::to_owned)).expect("a current view generation")
    }

    /// The database of the current view generation.
    pub async fn views_db(&self) -> mongodb::Database {
        let generation = self.current_generation().await;
        self.mongo_client().await.database(&format!("{}_{generation}", self.database()))
    }

    /// A cache key of the current view generation, e.g. `user:<id>`.
    pub async fn view_key(&self, key: &str) -> String {
        format!("{}:{key}", self.current_generation().await)
    }

    /// Every view of `generation` as comparable lines: each MongoDB
    /// document and each Redis key of the generation, canonical (sets
    /// sorted, fields sorted) and without what is volatile (TTLs; the
    /// generation's own name; when a processed id was recorded). Equal
    /// lines, equal views.
    pub async fn view_snapshot(&self, generation: &str) -> Vec<String> {
        use futures::TryStreamExt;
        use mongodb::bson::{Document, doc};
        let db = self.mongo_client().await.database(&format!("{}_{generation}", self.database()));
        let mut names = db.list_collection_names().await.expect("collections");
        names.sort();
        let mut lines = Vec::new();
        for name in names {
            let docs: Vec<Document> = db
                .collection::<Document>(&name)
                .find(doc! {})
                .sort(doc! {"_id": 1})
                .await
                .expect("find")
                .try_collect()
                .await
                .expect("docs");
            lines.extend(docs.into_iter().map(|mut d| {
                if name == views::collections::PROCESSED_EVENTS {
                    d.remove("at");
                }
                format!("{name}: {}", canonical_document(d))
            }));
        }
        let mut redis = self.redis().await;
        let prefix = format!("{generation}:");
        let mut keys: Vec<String> =
            redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut redis).await.expect("keys");
        keys.sort();
        for key in keys {
            let kind: String = redis::cmd("TYPE").arg(&key).query_async(&mut redis).await.expect("type");
            let value = match kind.as_str() {
                "string" => {
                    let text: String = redis::cmd("GET").arg(&key).query_async(&mut redis).await.expect("get");
                    serde_json::from_str::<Value>(&text).map_or(text, |v| canonical_json(v).to_string())
                }
                "zset" => {
                    let members: Vec<(String, f64)> = redis::cmd("ZRANGE")
                        .arg(&key)
                        .arg(0)
                        .arg(-1)
                        .arg("WITHSCORES")
                        .query_async(&mut redis)
                        .await
                        .expect("zrange");
                    format!("{members:?}")
                }
                other => format!("<{other}>"),
            };
            lines.push(format!("redis {}: {value}", &key[prefix.len()..]));
        }
        lines
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

    /// The full name of a topic in this environment.
    pub fn topic(&self, topic: events::Topic) -> String {
        events::TopicNames::new(format!("{}-", self.id)).name(topic)
    }

    /// Appends raw bytes to a topic, as a foreign or older producer would.
    pub async fn produce_raw(&self, topic: events::Topic, key: &str, payload: &[u8], headers: &[(&str, &str)]) {
        use rdkafka::message::{Header, OwnedHeaders};
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.servers.kafka)
            .set("partitioner", "murmur2_random")
            .create()
            .expect("producer");
        let mut owned = OwnedHeaders::new();
        for (name, value) in headers {
            owned = owned.insert(Header { key: name, value: Some(*value) });
        }
        let name = self.topic(topic);
        let record = FutureRecord::to(&name).key(key).payload(payload).headers(owned);
        producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| e).expect("produce");
    }

    /// Appends `count` heartbeat records for `users` straight to the
    /// presence topic, as a busy history would hold: something for a
    /// rebuild to chew on. Versions start at 1000, above any the API gave.
    pub async fn produce_heartbeats(&self, users: &[String], count: usize) {
        use events::presence::{PresenceEvent, PresenceSignal};
        use events::{Envelope, Event, EventMetadata};
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.servers.kafka)
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "5")
            .create()
            .expect("producer");
        let topic = self.topic(events::Topic::PresenceEvents);
        let records: Vec<(String, Vec<u8>)> = (0..count)
            .map(|i| {
                let user = &users[i % users.len()];
                let envelope = Envelope {
                    event_id: uuid::Uuid::now_v7(),
                    aggregate_id: user.clone(),
                    aggregate_version: 1000 + (i / users.len()) as u64,
                    occurred_at: chrono::Utc::now(),
                    metadata: EventMetadata {
                        actor: user.parse().ok(),
                        correlation_id: format!("history-{i}"),
                        idempotency_key: None,
                        request_fingerprint: None,
                    },
                    event: Event::Presence(PresenceEvent::Heartbeat(PresenceSignal {})),
                };
                (user.clone(), events::encode_record(&[envelope]))
            })
            .collect();
        let sends = records.iter().map(|(key, payload)| {
            producer.send(FutureRecord::to(&topic).key(key).payload(payload), Duration::from_secs(30))
        });
        for result in futures::future::join_all(sends).await {
            result.map_err(|(e, _)| e).expect("produce");
        }
    }

    /// Waits until `user_id`'s public profile can be read, and returns it.
    pub async fn wait_for_user(&self, token: &str, user_id: &str) -> Value {
        for _ in 0..200 {
            let reply = self.query(&format!("/v1/users/{user_id}"), token, None).await;
            if reply.status == StatusCode::OK {
                return reply.body;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{user_id} never reached the views");
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

    /// The records of a topic with their headers, from offset 0 up to its
    /// current end.
    pub async fn read_topic(&self, topic: events::Topic) -> Vec<(Vec<u8>, std::collections::BTreeMap<String, String>)> {
        use rdkafka::Message;
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::message::Headers;
        let name = self.topic(topic);
        let kafka = self.servers.kafka.clone();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &kafka)
                .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
                .set("enable.auto.commit", "false")
                .create()
                .expect("consumer");
            let metadata = consumer.fetch_metadata(Some(&name), Duration::from_secs(10)).expect("metadata");
            let mut records = Vec::new();
            for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
                let (_, high) =
                    consumer.fetch_watermarks(&name, partition.id(), Duration::from_secs(10)).expect("watermarks");
                if high == 0 {
                    continue;
                }
                let mut assignment = rdkafka::TopicPartitionList::new();
                assignment.add_partition_offset(&name, partition.id(), rdkafka::Offset::Beginning).expect("assignment");
                consumer.assign(&assignment).expect("assign");
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    assert!(Instant::now() < deadline, "reading {name} timed out");
                    let Some(message) = consumer.poll(Duration::from_millis(200)) else { continue };
                    let message = message.expect("message");
                    let headers = message
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| {
                                    (
                                        h.key.to_owned(),
                                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    records.push((message.payload().unwrap_or_default().to_vec(), headers));
                    if message.offset() + 1 >= high {
                        break;
                    }
                }
            }
            records
        })
        .await
        .expect("reader")
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.redis_url())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("redis connection")
    }
}

/// Starts a server of our test stack listening on `port`, its stderr
/// appended to `<dir>/<name>-<port>.log`, and waits until the port answers.
async fn start_private_server(name: &str, dir: &std::path::Path, port: u16, command: &mut Command) -> Proc {
    let log = dir.join(format!("{name}-{port}.log"));
    let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("log file");
    let child =
        command.stdout(Stdio::null()).stderr(Stdio::from(file)).spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
    wait_for_port(port).await;
    Proc { name: name.into(), child, log }
}

/// A private broker with durable storage in `dir`, for tests that stop and
/// restart the broker itself (the shared one must stay up).
pub async fn start_private_broker(dir: &std::path::Path, port: u16) -> Proc {
    let url = format!("tcp://127.0.0.1:{port}");
    let mut tansu = Command::new(required_env("DEVCONNECT_TEST_TANSU"));
    tansu
        .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine"])
        .arg(format!("sqlite:///{}", dir.join("broker.db").display()));
    start_private_server("broker", dir, port, &mut tansu).await
}

/// A private MongoDB-wire server (SecantusDB) with durable storage in
/// `dir`, for tests that kill the database itself.
pub async fn start_private_mongo(dir: &std::path::Path, port: u16) -> Proc {
    let storage = dir.join("mongo");
    std::fs::create_dir_all(&storage).expect("mongo dir");
    let mut secantus = Command::new(required_env("DEVCONNECT_TEST_SECANTUS_PYTHON"));
    secantus
        .args(["-m", "secantus", "--host", "127.0.0.1", "--port", &port.to_string(), "--log-level", "WARNING"])
        .arg("--storage-path")
        .arg(&storage);
    start_private_server("mongodb", dir, port, &mut secantus).await
}

/// The connection string of a private MongoDB on `port`.
pub fn mongo_uri(port: u16) -> String {
    format!("mongodb://127.0.0.1:{port}/?retryWrites=false&directConnection=true")
}

/// Retries `check` every 200 ms until it returns `Some`, for at most
/// `within`; panics with the last observation otherwise.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) => {
                assert!(Instant::now() < deadline, "{what}: not within {within:?}; last seen: {last}");
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Asserts two view snapshots are equal, printing only the lines that differ.
#[track_caller]
pub fn assert_same_views(actual: &[String], expected: &[String], what: &str) {
    if actual == expected {
        return;
    }
    let missing: Vec<&String> = expected.iter().filter(|l| !actual.contains(l)).collect();
    let extra: Vec<&String> = actual.iter().filter(|l| !expected.contains(l)).collect();
    panic!("{what}: the views differ\nmissing: {missing:#?}\nunexpected: {extra:#?}");
}

/// Waits for a process to exit, at most `within`.
pub async fn wait_exit(proc: &mut Proc, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = proc.exited() {
            return status;
        }
        assert!(Instant::now() < deadline, "{} did not finish within {within:?}:\n{}", proc.name, proc.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sorted fields, sorted sets: `$addToSet` appends in arrival order, and
/// events of different pairs arrive from different partitions; an upsert
/// with `$inc` creates fields in the order their first increments arrive.
pub fn canonical_document(document: mongodb::bson::Document) -> mongodb::bson::Document {
    let mut fields: Vec<(String, mongodb::bson::Bson)> = document.into_iter().collect();
    for (name, value) in &mut fields {
        if let mongodb::bson::Bson::Array(list) = value
            && matches!(name.as_str(), "related" | "connections")
        {
            list.sort_by_key(ToString::to_string);
        }
    }
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    fields.into_iter().collect()
}

/// The same for cached JSON: object fields sorted.
fn canonical_json(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut fields: Vec<(String, Value)> = map.into_iter().map(|(k, v)| (k, canonical_json(v))).collect();
            fields.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(fields.into_iter().collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(canonical_json).collect()),
        other => other,
    }
}

pub async fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
