//! argon2id hashing, off the async threads (a hash costs tens of ms of CPU).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng};
use argon2::{Algorithm, Argon2, Params, Version};

/// At most one hash per core at a time. Each takes 19 MiB and a core for
/// ~20 ms; running more at once only adds latency to all of them, and under
/// a burst of 64 log-ins it held gigabytes (measured 5.5 GB resident).
fn permits() -> &'static tokio::sync::Semaphore {
    static PERMITS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    PERMITS.get_or_init(|| tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get())))
}

/// How many password checks may wait for a permit before more are turned
/// away with 503: a burst of signups must not queue log-ins for minutes.
static QUEUE_LIMIT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(64);
static WAITING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Sets the queue bound (`DEVCONNECT_HASH_QUEUE`), once at start.
pub fn set_queue_limit(limit: usize) {
    QUEUE_LIMIT.store(limit, std::sync::atomic::Ordering::Relaxed);
}

/// The hasher's queue is full: the caller should answer 503 with Retry-After.
#[derive(Debug, thiserror::Error)]
#[error("too many password checks are waiting; retry shortly")]
pub struct HasherBusy;

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error(transparent)]
    Busy(#[from] HasherBusy),
    #[error("hashing: {0}")]
    Failed(String),
}

/// A hashing permit, or `HasherBusy` when the queue is at its bound.
async fn permit() -> Result<tokio::sync::SemaphorePermit<'static>, HasherBusy> {
    use std::sync::atomic::Ordering;
    let semaphore = permits();
    if let Ok(permit) = semaphore.try_acquire() {
        return Ok(permit);
    }
    if WAITING.fetch_add(1, Ordering::AcqRel) >= QUEUE_LIMIT.load(Ordering::Relaxed) {
        WAITING.fetch_sub(1, Ordering::AcqRel);
        metrics::counter!("hasher_busy_total").increment(1);
        return Err(HasherBusy);
    }
    let permit = semaphore.acquire().await;
    WAITING.fetch_sub(1, Ordering::AcqRel);
    permit.map_err(|_| HasherBusy)
}

/// Parameters of OWASP's argon2id baseline (19 MiB, 2 passes, 1 lane).
fn hasher() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

pub async fn hash(password: String) -> Result<String, HashError> {
    let _permit = permit().await?;
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        hasher().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| HashError::Failed(e.to_string()))?
    .map_err(HashError::Failed)
}

/// Verifies `password` against `hash`; with no hash (unknown account) it
/// verifies against a fixed dummy, so both paths cost the same and the
/// response time does not reveal whether an email is registered.
pub async fn verify(password: String, hash: Option<String>) -> Result<bool, HasherBusy> {
    // A real hash made with the same parameters, so the dummy path does the
    // same work as the real one.
    static DUMMY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let salt = SaltString::generate(&mut OsRng);
        hasher().hash_password(b"no such account", &salt).map(|h| h.to_string()).unwrap_or_default()
    });
    let known = hash.is_some();
    let _permit = permit().await?;
    let matches = tokio::task::spawn_blocking(move || {
        let hash = hash.unwrap_or_else(|| DUMMY.clone());
        PasswordHash::new(&hash).is_ok_and(|parsed| hasher().verify_password(password.as_bytes(), &parsed).is_ok())
    })
    .await
    .unwrap_or(false);
    Ok(matches && known)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_argon2id_salted_and_verify() {
        let h1 = hash("Str0ng!pass".into()).await.expect("hash");
        let h2 = hash("Str0ng!pass".into()).await.expect("hash");
        assert!(h1.starts_with("$argon2id$"));
        assert_ne!(h1, h2, "salted");
        assert!(verify("Str0ng!pass".into(), Some(h1.clone())).await.expect("permit"));
        assert!(!verify("wrong".into(), Some(h1)).await.expect("permit"));
        assert!(!verify("Str0ng!pass".into(), None).await.expect("permit"));
    }
}
