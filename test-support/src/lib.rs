//! Helpers for the integration tests and the benchmark: start the real
//! programs on free ports against the real broker, MongoDB and Redis, and
//! talk HTTP to them.
//!
//! `./dev test` starts one broker and one MongoDB for the run and passes
//! their addresses in `DEVCONNECT_TEST_*`. Each [`TestEnv`] then gets its own
//! topic prefix, its own database and its own redis-server process, so tests
//! run in parallel without seeing each other.

//!
//! `processes` holds the servers and child processes, `env` starts and
//! stops an environment's services, `client` talks HTTP to them, `users`
//! signs users up and connects them, `kafka` writes and reads topics, and
//! `stores` reads the views in MongoDB and Redis. Everything a test uses is
//! re-exported here.

use std::time::{Duration, Instant};

mod client;
mod env;
mod kafka;
mod processes;
mod proxy;
mod stores;
mod users;

pub use client::Reply;
pub use env::TestEnv;
pub use processes::{
    Proc, Servers, free_port, mongo_uri, start_private_broker, start_private_broker_advertising, start_private_mongo,
    wait_exit, wait_for_port,
};
pub use proxy::HoldingProxy;
pub use stores::{assert_same_views, canonical_document};

pub const JWT_SECRET: &str = "integration-tests-secret-0123456789abcdef";
pub const PASSWORD: &str = "Sup3r$ecret";

/// A user registered by an older version of the command API: recorded
/// `user.registered` v1 bytes, which readers must upcast.
pub const LEGACY_USER: &str = "0190f5a2-6c1e-7a4b-9d3e-000000000001";
pub const LEGACY_RECORD: &str = include_str!("../../events/tests/fixtures/user.registered.v1.json");

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
