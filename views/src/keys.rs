//! Redis key formats. A deployment-wide prefix (empty by default) lets
//! several environments share one Redis.

/// A member of the feed directory (score -1, so it sorts after every user)
/// present only once the directory holds every projected user. It lives
/// inside the set so that losing the set, by a flush or by eviction, also
/// loses the claim that it is complete.
pub const FEED_DIRECTORY_COMPLETE: &str = "~complete";

/// The member of a cached `related:` set that says it holds everyone the
/// user has a request with (the same idea as `FEED_DIRECTORY_COMPLETE`: a
/// lost key loses the claim with it). Not a user id, which is a UUID.
pub const RELATED_COMPLETE: &str = "~complete";

/// The member of a cached `connections:` list that says it holds every
/// connection. `!` sorts before every digit, so it is the last member
/// newest first and a page reaching it has reached the end.
pub const CONNECTIONS_COMPLETE: &str = "!complete";

#[derive(Debug, Clone, Default)]
pub struct RedisKeys {
    /// The deployment prefix: live streams and technical state.
    prefix: String,
    /// The deployment prefix plus the view generation: cached views.
    views: String,
}

impl RedisKeys {
    pub fn new(prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        Self { views: prefix.clone(), prefix }
    }

    /// The keys of one view generation (see `generation`).
    pub fn for_generation(&self, generation: &str) -> Self {
        Self { prefix: self.prefix.clone(), views: format!("{}{generation}:", self.prefix) }
    }

    /// Matches every cached view of this generation (and nothing else).
    pub fn view_pattern(&self) -> String {
        format!("{}*", self.views)
    }

    pub fn user(&self, user_id: &str) -> String {
        format!("{}user:{user_id}", self.views)
    }

    pub fn session(&self, session_id: &str) -> String {
        format!("{}session:{session_id}", self.views)
    }

    pub fn presence(&self, user_id: &str) -> String {
        format!("{}presence:{user_id}", self.views)
    }

    /// A user's live updates (a Redis stream, capped): what `GET /v1/stream`
    /// delivers, and resumes from by entry id. Not a view: a delivery
    /// channel, so it lives outside generations and a switch does not cut
    /// open streams off (a rebuild does not re-announce history).
    pub fn user_stream(&self, user_id: &str) -> String {
        format!("{}stream:{user_id}", self.prefix)
    }

    /// A conversation's newest messages; `pair_key` is `min:max` of the two ids.
    pub fn conversation(&self, pair_key: &str) -> String {
        format!("{}messages:{pair_key}", self.views)
    }

    /// Sorted set of every user id, all with score 0, so Redis orders them
    /// by member: uuid v7 strings sort by creation time, exactly as the
    /// `users` collection sorts by `_id`. This is the feed's order.
    /// SecantusDB sorts a collection without using an index (~3 s per sorted
    /// query at 100 000 users), so the order lives here and MongoDB serves
    /// profiles by `_id` only.
    pub fn feed_directory(&self) -> String {
        format!("{}feed:users", self.views)
    }

    /// Everyone the user has a request with, either direction (what the
    /// feed leaves out): a Redis set, plus `RELATED_COMPLETE` once filled.
    /// Add-only, like the `relations` document it caches; no expiry.
    pub fn related(&self, user_id: &str) -> String {
        format!("{}related:{user_id}", self.views)
    }

    /// The user's connections, newest first: a sorted set with every score
    /// 0 whose members are `ConnectionDoc::cache_member`, so Redis orders
    /// them by (connected at, request id) exactly as the `connections`
    /// collection's index does; plus `CONNECTIONS_COMPLETE` once filled.
    /// Add-only; no expiry.
    pub fn connections(&self, user_id: &str) -> String {
        format!("{}connections:{user_id}", self.views)
    }

    /// Set when the projector has filled every cache of this generation from
    /// MongoDB (`warm_caches`). Its absence means Redis lost its data (or
    /// never had it): the projector then fills everything again, so keys
    /// without expiry are never left half-missing for good.
    pub fn caches_filled(&self) -> String {
        format!("{}caches:filled", self.views)
    }

    /// The offset up to which the projector has refreshed the caches of a
    /// partition's batches, raised in the refresh's own pipeline. A
    /// checkpoint that stays ahead of it names a refresh that a crash cut
    /// off and nobody redid (self-healing.md).
    pub fn refreshed(&self, topic: &str, partition: i32) -> String {
        format!("{}refreshed:{topic}:{partition}", self.views)
    }

    /// Held by the projector that is filling the caches.
    pub fn caches_filling(&self) -> String {
        format!("{}caches:filling", self.views)
    }

    /// Held by whoever is rebuilding the feed directory.
    pub fn feed_directory_rebuilding(&self) -> String {
        format!("{}feed:users:rebuilding", self.views)
    }

    /// Pub/sub channel on which the command API announces each append, so a
    /// projector idling with its partitions paused resumes at once
    /// (`projector/src/wake.rs`). Outside generations: it names the log,
    /// not a view.
    pub fn log_appended(&self) -> String {
        format!("{}log:appended", self.prefix)
    }

    /// A revoked session, written through by the command API the moment a
    /// logout or password change is appended, so it takes effect before the
    /// projector catches up. Outside generations: a view switch must not
    /// forget it. Losing it (a flush) falls back to the projected session.
    pub fn revoked_session(&self, session_id: &str) -> String {
        format!("{}revoked:{session_id}", self.prefix)
    }

    /// Technical state of the command API (may be lost): failed log-ins.
    pub fn ratelimit(&self, who: &str, endpoint: &str) -> String {
        format!("{}ratelimit:{who}:{endpoint}", self.prefix)
    }
}
