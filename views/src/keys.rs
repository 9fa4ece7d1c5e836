//! Redis key formats. A deployment-wide prefix (empty by default) lets
//! several environments share one Redis.

/// A member of the feed directory (score -1, so it sorts after every user)
/// present only once the directory holds every projected user. It lives
/// inside the set so that losing the set, by a flush or by eviction, also
/// loses the claim that it is complete.
pub const FEED_DIRECTORY_COMPLETE: &str = "~complete";

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

    pub fn presence(&self, user_id: &str) -> String {
        format!("{}presence:{user_id}", self.prefix)
    }

    /// A user's live updates (a Redis stream, capped): what `GET /v1/stream`
    /// delivers, and resumes from by entry id.
    pub fn user_stream(&self, user_id: &str) -> String {
        format!("{}stream:{user_id}", self.prefix)
    }

    /// A conversation's newest messages; `pair_key` is `min:max` of the two ids.
    pub fn conversation(&self, pair_key: &str) -> String {
        format!("{}messages:{pair_key}", self.prefix)
    }

    /// Sorted set of every user id, all with score 0, so Redis orders them
    /// by member: uuid v7 strings sort by creation time, exactly as the
    /// `users` collection sorts by `_id`. This is the feed's order.
    /// SecantusDB sorts a collection without using an index (~3 s per sorted
    /// query at 100 000 users), so the order lives here and MongoDB serves
    /// profiles by `_id` only.
    pub fn feed_directory(&self) -> String {
        format!("{}feed:users", self.prefix)
    }

    /// Held by whoever is rebuilding the feed directory.
    pub fn feed_directory_rebuilding(&self) -> String {
        format!("{}feed:users:rebuilding", self.prefix)
    }

    /// Technical state of the command API (may be lost): failed log-ins.
    pub fn ratelimit(&self, who: &str, endpoint: &str) -> String {
        format!("{}ratelimit:{who}:{endpoint}", self.prefix)
    }
}
