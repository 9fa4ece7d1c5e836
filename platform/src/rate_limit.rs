//! Request rate limits per caller and endpoint group, in fixed windows.
//!
//! Who is counted: the user of a valid access token, else the client
//! address (sign-up, log-in and refresh are always counted per address).
//! What is counted: every request of the group, answered or not, before
//! the handler runs; past the limit the answer is 429 `rate_limited` with
//! `Retry-After`. The counters live in Redis so that every instance of a
//! service shares them; an INCR is atomic, so forty requests at once get
//! exactly `limit` passes.
//!
//! When Redis is unreachable the limits still hold, counted in this
//! process's memory (per instance, so with N instances a caller may get N
//! times the limit until Redis is back). Failing open would hand a flood
//! the whole system exactly when one dependency is down; failing closed
//! would turn a cache outage into a total outage, which reads are built to
//! survive. Password checks are different: their limiter
//! (`command-api/src/throttle.rs`) fails closed, because a guess is worth
//! more to an attacker than a request.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use redis::aio::ConnectionManager;

use crate::auth::JwtKeys;
use crate::http::{ErrorCode, error_response};

/// At most `limit` requests per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub limit: u64,
    pub window: Duration,
}

/// Whom a group's requests are counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// The user of the access token (requests without a valid one are not
    /// counted: they get a cheap 401 from the handler).
    User,
    /// The client address: for requests made before there is a user.
    Client,
}

/// An endpoint group: a name (its counter and its configuration key), whom
/// it counts, and its default rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Group {
    pub name: &'static str,
    pub subject: Subject,
    pub default: Rule,
}

/// Every group of every service, in one place: one `DEVCONNECT_RATE_LIMITS`
/// value can be given to all services, each taking its own groups, while a
/// name no service knows is still refused.
pub mod catalog {
    use super::{Group, Rule, Subject};
    use std::time::Duration;

    const fn per(limit: u64, seconds: u64) -> Rule {
        Rule { limit, window: Duration::from_secs(seconds) }
    }

    // The command API. Defaults are generous for a person and tight for a script.
    /// Accounts created from one address.
    pub const SIGNUP: Group = Group { name: "signup", subject: Subject::Client, default: per(60, 600) };
    /// Log-ins and refreshes from one address (wrong passwords have their
    /// own, stricter limit per account).
    pub const AUTH: Group = Group { name: "auth", subject: Subject::Client, default: per(120, 60) };
    /// Profile, password, membership and log-out.
    pub const ACCOUNT: Group = Group { name: "account", subject: Subject::User, default: per(60, 60) };
    pub const REQUESTS: Group = Group { name: "requests", subject: Subject::User, default: per(120, 60) };
    pub const MESSAGES: Group = Group { name: "messages", subject: Subject::User, default: per(300, 60) };
    /// Heartbeats come every 30 s or so from each open client.
    pub const PRESENCE: Group = Group { name: "presence", subject: Subject::User, default: per(120, 60) };
    pub const NOTIFICATIONS: Group = Group { name: "notifications", subject: Subject::User, default: per(300, 60) };
    pub const COMMAND_API: [Group; 7] = [SIGNUP, AUTH, ACCOUNT, REQUESTS, MESSAGES, PRESENCE, NOTIFICATIONS];

    // The query API.
    /// Reads of every kind: a busy client page makes a handful a second; a
    /// scraper makes far more.
    pub const READS: Group = Group { name: "reads", subject: Subject::User, default: per(1200, 60) };
    /// Opening live streams (how many stay open is capped apart).
    pub const STREAM: Group = Group { name: "stream", subject: Subject::User, default: per(60, 60) };
    pub const QUERY_API: [Group; 2] = [READS, STREAM];

    pub fn is_known(name: &str) -> bool {
        COMMAND_API.iter().chain(QUERY_API.iter()).any(|g| g.name == name)
    }
}

/// The groups' rules after `DEVCONNECT_RATE_LIMITS` overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules(HashMap<&'static str, Rule>);

impl Rules {
    /// Parses `group=limit/window,...` (e.g. `messages=300/1m,signup=20/10m`)
    /// over the defaults of this service's `groups`. Groups of the other
    /// service are skipped, so one value can serve both; a name no service
    /// knows, or a malformed rule, is an error naming it, so a typo cannot
    /// silently leave a limit at its default.
    pub fn parse(groups: &[Group], overrides: &str) -> Result<Self, String> {
        let mut rules: HashMap<&'static str, Rule> = groups.iter().map(|g| (g.name, g.default)).collect();
        for item in overrides.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, rule) = item.split_once('=').ok_or_else(|| format!("{item:?}: expected group=limit/window"))?;
            let name = name.trim();
            if !catalog::is_known(name) {
                let known: Vec<&str> =
                    catalog::COMMAND_API.iter().chain(catalog::QUERY_API.iter()).map(|g| g.name).collect();
                return Err(format!("unknown rate-limit group {name:?} (known: {})", known.join(", ")));
            }
            let (limit, window) =
                rule.split_once('/').ok_or_else(|| format!("{item:?}: expected group=limit/window"))?;
            let limit: u64 = limit.trim().parse().map_err(|_| format!("{item:?}: the limit is not a number"))?;
            let window = crate::config::parse_duration(window)?;
            if limit == 0 || window.is_zero() {
                return Err(format!("{item:?}: the limit and the window must be positive"));
            }
            if let Some(group) = groups.iter().find(|g| g.name == name) {
                rules.insert(group.name, Rule { limit, window });
            }
        }
        Ok(Self(rules))
    }

    fn get(&self, group: &Group) -> Rule {
        self.0.get(group.name).copied().unwrap_or(group.default)
    }
}

/// Counts one hit; answers how long until the window ends when over the
/// limit. Sets the window's expiry with the first hit.
const HIT: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if n > tonumber(ARGV[1]) then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]); ttl = tonumber(ARGV[2]) end
  return ttl
end
return 0
";

/// Longest a rate check waits for Redis before counting locally.
pub const REDIS_BUDGET: Duration = Duration::from_millis(250);

/// After a Redis failure, how long to count locally before trying again.
const REDIS_PAUSE: Duration = Duration::from_secs(1);

/// Fixed windows counted in this process: the fallback while Redis is away.
#[derive(Debug, Default)]
struct LocalWindows {
    /// key → (window start, hits).
    windows: HashMap<String, (Instant, u64)>,
}

impl LocalWindows {
    fn hit(&mut self, key: String, rule: Rule, now: Instant) -> Result<(), Duration> {
        // Bounded memory: windows long over are dropped once the map is large.
        if self.windows.len() > 100_000 {
            self.windows.retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(24 * 3600));
        }
        let (start, hits) = self.windows.entry(key).or_insert((now, 0));
        if now.duration_since(*start) >= rule.window {
            *start = now;
            *hits = 0;
        }
        *hits += 1;
        if *hits > rule.limit { Err(rule.window.saturating_sub(now.duration_since(*start))) } else { Ok(()) }
    }
}

#[derive(Debug, Default)]
struct LocalCounters {
    windows: LocalWindows,
    redis_down_since: Option<Instant>,
}

/// A hit added to a caller's pipeline (`RateLimiter::pipe_hit`), waiting
/// for its reply (`RateLimiter::settle`).
#[derive(Debug)]
pub struct PendingHit {
    key: String,
    rule: Rule,
}

pub struct RateLimiter {
    redis: ConnectionManager,
    /// Redis key prefix (the deployment's `DEVCONNECT_REDIS_PREFIX`).
    prefix: String,
    rules: Rules,
    local: Mutex<LocalCounters>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter").field("rules", &self.rules).finish_non_exhaustive()
    }
}

impl RateLimiter {
    pub fn new(redis: ConnectionManager, prefix: impl Into<String>, rules: Rules) -> Self {
        Self { redis, prefix: prefix.into(), rules, local: Mutex::default() }
    }

    fn local(&self) -> std::sync::MutexGuard<'_, LocalCounters> {
        self.local.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a request of `who` in `group`: `Err(retry after)` past the limit.
    pub async fn hit(&self, group: &Group, who: &str) -> Result<(), Duration> {
        let mut pipe = redis::pipe();
        let pending = match self.pipe_hit(&mut pipe, group, who) {
            Ok(pending) => pending,
            Err(counted_here) => return counted_here,
        };
        let mut redis = self.redis.clone();
        let reply = match tokio::time::timeout(REDIS_BUDGET, pipe.query_async::<(i64,)>(&mut redis)).await {
            Ok(Ok((wait_ms,))) => Ok(wait_ms),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err(format!("no answer within {} ms", REDIS_BUDGET.as_millis())),
        };
        self.settle(pending, reply)
    }

    /// Adds the hit to `pipe`, so that a caller can count it in a round
    /// trip to Redis it makes anyway (the query API's session check), then
    /// hands the hit's reply to `settle`. While Redis is known to be down
    /// the hit is counted in this process at once: `Err(the result)`.
    pub fn pipe_hit(
        &self,
        pipe: &mut redis::Pipeline,
        group: &Group,
        who: &str,
    ) -> Result<PendingHit, Result<(), Duration>> {
        let rule = self.rules.get(group);
        let key = format!("{}ratelimit:{who}:{}", self.prefix, group.name);
        if self.local().redis_down_since.is_some_and(|since| since.elapsed() < REDIS_PAUSE) {
            return Err(self.local().windows.hit(key, rule, Instant::now()));
        }
        let window_ms = rule.window.as_millis().max(1) as u64;
        // EVAL, not EVALSHA: a pipeline cannot load the script after a
        // Redis restart answered NOSCRIPT.
        pipe.cmd("EVAL").arg(HIT).arg(1).arg(&key).arg(rule.limit).arg(window_ms);
        Ok(PendingHit { key, rule })
    }

    /// The outcome of a hit added by `pipe_hit`, from Redis' reply (the
    /// milliseconds to wait, 0 within the limit) or why there was none;
    /// without a reply the hit is counted in this process.
    pub fn settle(&self, hit: PendingHit, reply: Result<i64, String>) -> Result<(), Duration> {
        match reply {
            Ok(wait_ms) => {
                if self.local().redis_down_since.take().is_some() {
                    tracing::info!("redis is back; rate limits are shared again");
                }
                if wait_ms > 0 { Err(Duration::from_millis(wait_ms as u64)) } else { Ok(()) }
            }
            Err(error) => {
                self.redis_failed(&error);
                self.local().windows.hit(hit.key, hit.rule, Instant::now())
            }
        }
    }

    fn redis_failed(&self, error: &str) {
        let mut local = self.local();
        if local.redis_down_since.is_none() {
            tracing::warn!(error, "rate limits cannot reach redis; counting in this process until it is back");
        }
        local.redis_down_since = Some(Instant::now());
    }
}

/// What the middleware needs: the limiter, the keys to tell who is asking,
/// and the service's map from a request to its group.
#[derive(Clone)]
pub struct RateLimitState {
    pub limiter: Arc<RateLimiter>,
    pub keys: Arc<JwtKeys>,
    pub group_of: fn(&axum::http::Method, &str) -> Option<&'static Group>,
}

/// On a request another instance of the service already counted (it
/// forwarded the request here, and vouched for it): not counted again.
#[derive(Debug, Clone, Copy)]
pub struct CountedUpstream;

/// The middleware: counts the request against its group, or answers 429.
pub async fn enforce(State(state): State<RateLimitState>, mut request: Request, next: Next) -> Response {
    let Some(group) = (state.group_of)(request.method(), request.uri().path()) else {
        return next.run(request).await;
    };
    if request.extensions().get::<CountedUpstream>().is_some() {
        return next.run(request).await;
    }
    let who = match group.subject {
        Subject::Client => client_of(&request).map(|ip| format!("client:{ip}")),
        Subject::User => {
            let (mut parts, body) = request.into_parts();
            let claims = crate::auth::request_claims(&mut parts.extensions, &parts.headers, &state.keys);
            request = Request::from_parts(parts, body);
            claims.map(|claims| format!("user:{}", claims.sub))
        }
    };
    let Some(who) = who else { return next.run(request).await };
    match state.limiter.hit(group, &who).await {
        Ok(()) => next.run(request).await,
        Err(retry_after) => {
            metrics::counter!("rate_limited_total", "group" => group.name).increment(1);
            let message = format!("too many {} requests; retry later", group.name);
            let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            error_response(StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited, &message, Some(seconds))
                .into_response()
        }
    }
}

fn client_of(request: &Request) -> Option<IpAddr> {
    request.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    use catalog::{COMMAND_API, MESSAGES, QUERY_API, READS, SIGNUP};

    #[test]
    fn overrides_replace_defaults_and_typos_are_errors() {
        let rules = Rules::parse(&COMMAND_API, " messages=5/10s, reads=1/1m ").expect("valid");
        assert_eq!(rules.get(&MESSAGES), Rule { limit: 5, window: Duration::from_secs(10) });
        assert_eq!(rules.get(&SIGNUP), SIGNUP.default);
        let query = Rules::parse(&QUERY_API, " messages=5/10s, reads=1/1m ").expect("one value serves both");
        assert_eq!(query.get(&READS), Rule { limit: 1, window: Duration::from_secs(60) });
        assert_eq!(Rules::parse(&COMMAND_API, "").expect("empty"), Rules::parse(&COMMAND_API, " , ").expect("too"));
        for bad in ["mesages=5/1m", "messages=5", "messages=x/1m", "messages=0/1m", "messages=5/0s", "messages=5/1y"] {
            assert!(Rules::parse(&COMMAND_API, bad).is_err(), "{bad}");
            assert!(Rules::parse(&QUERY_API, bad).is_err(), "{bad}: refused by every service");
        }
    }

    #[test]
    fn group_names_are_unique_across_services() {
        let mut names: Vec<&str> = COMMAND_API.iter().chain(QUERY_API.iter()).map(|g| g.name).collect();
        names.sort_unstable();
        let count = names.len();
        names.dedup();
        assert_eq!(names.len(), count);
    }

    #[test]
    fn local_windows_count_and_reset() {
        let mut local = LocalWindows::default();
        let rule = Rule { limit: 2, window: Duration::from_secs(10) };
        let start = Instant::now();
        assert!(local.hit("k".into(), rule, start).is_ok());
        assert!(local.hit("k".into(), rule, start).is_ok());
        let wait = local.hit("k".into(), rule, start + Duration::from_secs(4)).expect_err("the third is over");
        assert_eq!(wait, Duration::from_secs(6));
        assert!(local.hit("other".into(), rule, start).is_ok(), "per key");
        assert!(local.hit("k".into(), rule, start + Duration::from_secs(10)).is_ok(), "a new window");
    }
}
