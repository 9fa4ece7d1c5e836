//! Brute-force limits on password checks (log-in and password change):
//! attempts counted per account and per client address in fixed windows in
//! Redis, reserved before the hash is checked and taken back on success.
//! Technical state that may be lost (ARCHITECTURE.md, "Known limits");
//! while Redis is down, password checks fail closed.

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

    /// Counts an attempt before its verdict, atomically for both counters:
    /// refused (and not counted) when either is already at its limit, with
    /// the seconds left in that window. However many attempts arrive at
    /// once, no more than the limit get a verdict per window. A failed
    /// attempt leaves its count in place; `settle_success` takes it back.
    pub async fn reserve(&self, email: &str, client: IpAddr) -> Result<(), ThrottleError> {
        let window_secs = self.limits.window.as_secs().max(1);
        let mut redis = self.redis.clone();
        let wait_ms: i64 = redis::Script::new(RESERVE)
            .key(self.account_key(email))
            .key(self.client_key(client))
            .arg(self.limits.per_account)
            .arg(self.limits.per_client)
            .arg(window_secs)
            .invoke_async(&mut redis)
            .await?;
        if wait_ms > 0 {
            return Err(ThrottleError::Limited { retry_after_secs: (wait_ms as u64).div_ceil(1000).max(1) });
        }
        Ok(())
    }

    /// The attempt got no verdict (the hasher was busy): hand its count back.
    pub async fn release(&self, email: &str, client: IpAddr) -> Result<(), ThrottleError> {
        let mut redis = self.redis.clone();
        redis::Script::new(RELEASE)
            .key(self.account_key(email))
            .key(self.client_key(client))
            .invoke_async::<()>(&mut redis)
            .await?;
        Ok(())
    }

    /// The attempt succeeded: the account's failures start over, and the
    /// client's reserved count is handed back.
    pub async fn settle_success(&self, email: &str, client: IpAddr) -> Result<(), ThrottleError> {
        let mut redis = self.redis.clone();
        redis::Script::new(SETTLE_SUCCESS)
            .key(self.account_key(email))
            .key(self.client_key(client))
            .invoke_async::<()>(&mut redis)
            .await?;
        Ok(())
    }
}

/// KEYS: account, client.
const RELEASE: &str = r"
for i = 1, 2 do
  if tonumber(redis.call('GET', KEYS[i]) or '0') > 0 then redis.call('DECR', KEYS[i]) end
end
";

/// KEYS: account, client; ARGV: account limit, client limit, window (s).
/// Returns 0 when the attempt is counted, else the milliseconds until the
/// fuller window ends.
const RESERVE: &str = r"
local limits = { tonumber(ARGV[1]), tonumber(ARGV[2]) }
local wait = 0
for i = 1, 2 do
  if tonumber(redis.call('GET', KEYS[i]) or '0') >= limits[i] then
    local ttl = redis.call('PTTL', KEYS[i])
    if ttl < 0 then ttl = tonumber(ARGV[3]) * 1000 end
    if ttl > wait then wait = ttl end
  end
end
if wait > 0 then return wait end
for i = 1, 2 do
  redis.call('INCR', KEYS[i])
  redis.call('EXPIRE', KEYS[i], ARGV[3], 'NX')
end
return 0
";

/// KEYS: account, client.
const SETTLE_SUCCESS: &str = r"
redis.call('DEL', KEYS[1])
if tonumber(redis.call('GET', KEYS[2]) or '0') > 0 then redis.call('DECR', KEYS[2]) end
";
