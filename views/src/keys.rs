//! Redis key formats. A deployment-wide prefix (empty by default) lets
//! several environments share one Redis.

#[derive(Debug, Clone, Default)]
pub struct RedisKeys {
    prefix: String,
}

impl RedisKeys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into() }
    }

    pub fn user(&self, user_id: &str) -> String {
        format!("{}user:{user_id}", self.prefix)
    }

    pub fn session(&self, session_id: &str) -> String {
        format!("{}session:{session_id}", self.prefix)
    }

    /// Technical state of the command API (may be lost): failed log-ins.
    pub fn ratelimit(&self, who: &str, endpoint: &str) -> String {
        format!("{}ratelimit:{who}:{endpoint}", self.prefix)
    }
}
