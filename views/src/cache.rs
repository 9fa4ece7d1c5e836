//! Versioned cache writes. Every cached document carries the aggregate
//! version it reflects; a write only lands if it is newer than what is
//! there. This keeps a slow read-through refill in the query API from
//! overwriting a newer value the projector just wrote, and makes a
//! redelivered event a no-op.

use std::time::Duration;

use redis::Script;

const SET_IF_NEWER: &str = r"
local current = redis.call('GET', KEYS[1])
if current then
  local ok, doc = pcall(cjson.decode, current)
  if ok and type(doc) == 'table' and doc.version and tonumber(doc.version) >= tonumber(ARGV[1]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
";

/// The script; load it once and reuse it (it is sent by SHA after the first call).
pub fn set_if_newer_script() -> Script {
    Script::new(SET_IF_NEWER)
}

/// Adds a versioned write to a pipeline or invocation. `ttl` of zero is
/// raised to one millisecond, as Redis rejects `PX 0`.
pub fn set_if_newer<'a>(
    script: &'a Script,
    key: &str,
    version: u64,
    json: &str,
    ttl: Duration,
) -> redis::ScriptInvocation<'a> {
    let ttl_ms = ttl.as_millis().clamp(1, u128::from(u64::MAX)) as u64;
    let mut invocation = script.key(key);
    invocation.arg(version).arg(json).arg(ttl_ms);
    invocation
}

/// Adds a versioned write to a pipeline as a plain `EVAL`, which unlike
/// `EVALSHA` cannot fail with NOSCRIPT after a Redis restart.
pub fn pipe_set_if_newer(pipe: &mut redis::Pipeline, key: &str, version: u64, json: &str, ttl: Duration) {
    let ttl_ms = ttl.as_millis().clamp(1, u128::from(u64::MAX)) as u64;
    pipe.cmd("EVAL").arg(SET_IF_NEWER).arg(1).arg(key).arg(version).arg(json).arg(ttl_ms).ignore();
}
