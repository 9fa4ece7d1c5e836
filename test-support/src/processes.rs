//! The processes of a test: the shared servers' addresses, free ports, the
//! child processes a test starts (and kills), and private servers for the
//! tests that stop a broker or a database itself.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) fn required_env(name: &str) -> String {
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
    pub(crate) child: Child,
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

    /// SIGTERM, then waits for the exit (SIGKILL after 15 s): a shutdown
    /// that leaves the consumer group at once.
    pub fn terminate(&mut self) {
        signal(self.child.id(), "-TERM");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
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

pub async fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        tokio::time::sleep(Duration::from_millis(20)).await;
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
    start_private_broker_advertising(dir, port, port).await
}

/// A private broker listening on `port` that tells clients to connect to
/// `advertised` (a proxy in front of it, `HoldingProxy`).
pub async fn start_private_broker_advertising(dir: &std::path::Path, port: u16, advertised: u16) -> Proc {
    let url = format!("tcp://127.0.0.1:{port}");
    let advertised = format!("tcp://127.0.0.1:{advertised}");
    let mut tansu = Command::new(required_env("DEVCONNECT_TEST_TANSU"));
    tansu
        .args(["broker", "--listener-url", &url, "--advertised-listener-url", &advertised, "--storage-engine"])
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
