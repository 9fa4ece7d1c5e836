//! Versioned cache writes. Every cached document carries the aggregate
//! version it reflects; a write only lands if it is newer than what is
//! there. This keeps a slow read-through refill in the query API from
//! overwriting a newer value the projector just wrote, and makes a
//! redelivered event a no-op.

use std::time::Duration;

const SET_IF_NEWER: &str = r"
local current = redis.call('GET', KEYS[1])
if current then
  local ok, doc = pcall(cjson.decode, current)
  if ok and type(doc) == 'table' and doc.version and tonumber(doc.version) >= tonumber(ARGV[1]) then
    return 0
  end
end
if ARGV[3] == '0' then
  redis.call('SET', KEYS[1], ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
";

const RAISE: &str = r"
local current = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) > current then redis.call('SET', KEYS[1], ARGV[1]) end
return 0
";

/// Adds to a pipeline: raise the number at `key` to `value`, never lower
/// it (a slower writer with an older value changes nothing).
pub fn pipe_raise(pipe: &mut redis::Pipeline, key: &str, value: i64) {
    pipe.cmd("EVAL").arg(RAISE).arg(1).arg(key).arg(value).ignore();
}

/// How long a cache entry lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Kept until replaced: a view every steady-state read relies on (a
    /// profile), which the projector keeps current and which a read must
    /// never have to fetch from MongoDB.
    Never,
    /// Dropped after this long (raised to one millisecond, as Redis
    /// rejects `PX 0`).
    After(Duration),
}

impl Expiry {
    /// The script's argument: milliseconds, or 0 for no expiry.
    fn millis(self) -> u64 {
        match self {
            Expiry::Never => 0,
            Expiry::After(ttl) => ttl.as_millis().clamp(1, u128::from(u64::MAX)) as u64,
        }
    }
}

/// Adds a versioned write to a pipeline as a plain `EVAL`, which unlike
/// `EVALSHA` cannot fail with NOSCRIPT after a Redis restart.
pub fn pipe_set_if_newer(pipe: &mut redis::Pipeline, key: &str, version: u64, json: &str, expiry: Expiry) {
    pipe.cmd("EVAL").arg(SET_IF_NEWER).arg(1).arg(key).arg(version).arg(json).arg(expiry.millis()).ignore();
}

/// Adds to a pipeline the writes that fill a cached set (`SADD`) or a
/// cached list (a sorted set with every score 0, ordered by member) from
/// MongoDB: its members, then `complete`, the member that says the key
/// holds everything. Both are add-only, so a fill merges with whatever the
/// projector added meanwhile: what MongoDB held when the fill read it, plus
/// every later addition, is all there is.
pub fn pipe_fill(pipe: &mut redis::Pipeline, key: &str, kind: CachedSet, members: &[String], complete: &str) {
    for chunk in members.chunks(1000) {
        match kind {
            CachedSet::Set => pipe.cmd("SADD").arg(key).arg(chunk).ignore(),
            CachedSet::Ordered => {
                pipe.cmd("ZADD").arg(key).arg(chunk.iter().map(|m| (0, m)).collect::<Vec<_>>()).ignore()
            }
        };
    }
    match kind {
        CachedSet::Set => pipe.cmd("SADD").arg(key).arg(complete).ignore(),
        CachedSet::Ordered => pipe.cmd("ZADD").arg(key).arg(0).arg(complete).ignore(),
    };
}

/// The two shapes of an add-only cached collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CachedSet {
    /// A Redis set: membership only.
    Set,
    /// A Redis sorted set with every score 0: ordered by member.
    Ordered,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_never_zero_milliseconds_unless_it_is_never() {
        assert_eq!(Expiry::Never.millis(), 0);
        assert_eq!(Expiry::After(Duration::ZERO).millis(), 1);
        assert_eq!(Expiry::After(Duration::from_secs(2)).millis(), 2000);
    }
}
