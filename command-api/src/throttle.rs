//! Brute-force limits on log-in (DOMAIN.md): failed attempts counted per
//! account and per client address in fixed windows in Redis. Technical state
//! that may be lost (DESIGN.md §1).

use std::net::IpAddr;
use std::time::Duration;

use redis::aio::ConnectionManager;
use views::keys::RedisKeys;

#[derive(Debug, Clone)]
pub struct LoginLimits {
    pub per_account: u64,
    pub per_client: u64,
    pub window: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ThrottleError {
    #[error("too many failed log-ins; retry in {retry_after_secs}s")]
    Limited { retry_after_secs: u64 },
    #[error("redis: {0}")]
    Unavailable(#[from] redis::RedisError),
}

#[derive(Clone)]
pub struct LoginThrottle {
    redis: ConnectionManager,
    keys: RedisKeys,
    limits: LoginLimits,
}

impl std::fmt::Debug for LoginThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginThrottle").field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl LoginThrottle {
    pub fn new(redis: ConnectionManager, keys: RedisKeys, limits: LoginLimits) -> Self {
        Self { redis, keys, limits }
    }

    fn account_key(&self, email: &str) -> String {
        self.keys.ratelimit(&format!("account:{email}"), "login")
    }

    fn client_key(&self, client: IpAddr) -> String {
        self.keys.ratelimit(&format!("client:{client}"), "login")
    }

    /// Refuses when either counter reached its limit, with the seconds left
    /// in that window.
    pub async fn check(&self, email: &str, client: IpAddr) -> Result<(), ThrottleError> {
        let (account, client) = (self.account_key(email), self.client_key(client));
        let mut redis = self.redis.clone();
        let (a_count, a_ttl, c_count, c_ttl): (Option<u64>, i64, Option<u64>, i64) =
            redis::pipe().get(&account).pttl(&account).get(&client).pttl(&client).query_async(&mut redis).await?;
        let window_ms = self.limits.window.as_millis() as i64;
        let over = |count: Option<u64>, limit: u64, ttl_ms: i64| {
            (count.unwrap_or(0) >= limit).then_some(if ttl_ms > 0 { ttl_ms } else { window_ms })
        };
        let wait_ms = over(a_count, self.limits.per_account, a_ttl)
            .into_iter()
            .chain(over(c_count, self.limits.per_client, c_ttl))
            .max();
        match wait_ms {
            Some(ms) => Err(ThrottleError::Limited { retry_after_secs: (ms as u64).div_ceil(1000).max(1) }),
            None => Ok(()),
        }
    }

    pub async fn record_failure(&self, email: &str, client: IpAddr) -> Result<(), ThrottleError> {
        let window_secs = self.limits.window.as_secs().max(1) as i64;
        let mut redis = self.redis.clone();
        let mut pipe = redis::pipe();
        for key in [self.account_key(email), self.client_key(client)] {
            // NX: the window starts at the first failure and is not extended.
            pipe.incr(&key, 1).ignore().cmd("EXPIRE").arg(&key).arg(window_secs).arg("NX").ignore();
        }
        pipe.query_async::<()>(&mut redis).await?;
        Ok(())
    }

    pub async fn reset_account(&self, email: &str) -> Result<(), ThrottleError> {
        let mut redis = self.redis.clone();
        redis::cmd("DEL").arg(self.account_key(email)).query_async::<()>(&mut redis).await?;
        Ok(())
    }
}
