//! Infrastructure the three programs share deliberately. Nothing here knows
//! about the domain: no event handling, no view shapes, no business rules.

pub mod auth;
pub mod config;
pub mod http;
pub mod kafka;
pub mod mongo;
pub mod redis_conn;
pub mod telemetry;

/// Retries a start-up step for up to 60 s while a dependency comes up.
pub async fn with_retry<T, F, Fut>(what: &str, mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(err) if std::time::Instant::now() < deadline => {
                tracing::warn!(error = %err, "{what} failed; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(err) => return Err(err.context(format!("{what} kept failing for 60 s"))),
        }
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
