//! Infrastructure the three programs share deliberately. Nothing here knows
//! about the domain: no event handling, no view shapes, no business rules.

pub mod auth;
pub mod config;
pub mod error_code;
pub mod http;
pub mod kafka;
pub mod mongo;
pub mod rate_limit;
pub mod redis_conn;
pub mod telemetry;

/// Retries a step until it succeeds, waiting 0.5 s, doubling up to 5 s,
/// with one log line per failed attempt. A dependency that is down is a
/// reason to wait and report not-ready, never to exit: the process carries
/// on by itself when the broker, MongoDB or Redis comes back.
pub async fn with_retry<T, F, Fut>(what: &str, mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut backoff = Backoff::new(std::time::Duration::from_millis(500), std::time::Duration::from_secs(5));
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(err) => {
                tracing::warn!(error = %format!("{err:#}"), retry_in_ms = backoff.next_delay().as_millis() as u64, "{what} failed; retrying");
                backoff.wait().await;
            }
        }
    }
}

/// Exponential backoff: each wait doubles, up to a ceiling; `reset` after a
/// success. One instance per thing retried, so each logs once per step.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: std::time::Duration,
    max: std::time::Duration,
    next: std::time::Duration,
}

impl Backoff {
    pub fn new(first: std::time::Duration, max: std::time::Duration) -> Self {
        Self { first, max, next: first }
    }

    /// How long the next `wait` sleeps.
    pub fn next_delay(&self) -> std::time::Duration {
        self.next
    }

    /// The delay to use now; the next one doubles.
    pub fn step(&mut self) -> std::time::Duration {
        let now = self.next;
        self.next = (self.next * 2).min(self.max);
        now
    }

    pub async fn wait(&mut self) {
        tokio::time::sleep(self.step()).await;
    }

    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// Waits for SIGINT or SIGTERM: the signal for a graceful shutdown.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received");
}
