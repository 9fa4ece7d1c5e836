//! Any instance accepts any command (docs/scale-out.md §1): the one that
//! receives it finds the owner of the command's partition in a routing
//! table and forwards the request there.
//!
//! The table is a Redis hash, `partition → epoch|url|renewed-at`. Owners
//! renew their entries every second. It is technical state: lost, it is
//! whole again a second later. An entry is replaced only by a higher epoch
//! (a newer owner marker in the partition) or once it has not been renewed
//! for `STALE_AFTER`, so a revoked owner that still renews cannot take a
//! partition back from its successor. An entry nobody renews is how a
//! partition that nobody serves is found (`unserved`).
//!
//! A forwarded request carries `X-DevConnect-Forwarded`: the client's
//! address, a time, and an HMAC over both under a key derived from the
//! service secret. The owner takes the client address from it (the login
//! throttle counts per client) and does not count the request against the
//! rate limits again; a client cannot forge it. An instance never forwards
//! a forwarded request: a stale table costs one 503 with `Retry-After`,
//! never a loop.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use redis::aio::ConnectionManager;

/// Header on a request one instance forwards to another.
pub const HOP_HEADER: &str = "x-devconnect-forwarded";
/// Where an instance reserves a request slot at another
/// (`http::internal`); only a request signed with the hop key is served.
pub const SLOTS_PATH: &str = "/internal/v1/request-slots";
/// An entry older than this is an owner that stopped serving (dead, paused,
/// or revoked and not replaced).
pub const STALE_AFTER: Duration = Duration::from_secs(3);
/// How long a forwarded header stays valid (clock skew between instances
/// plus the time in flight).
const HOP_VALIDITY_SECS: u64 = 60;

/// Writes `partition → epoch|url|now` unless the entry holds a higher epoch
/// that is still renewed. Redis' clock stamps it, so instances' clocks
/// never need to agree.
const RENEW: &str = r"
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then
  local epoch, url, at = string.match(current, '^(%-?%d+)|([^|]*)|(%d+)$')
  if epoch and tonumber(epoch) > tonumber(ARGV[2]) and now_ms - tonumber(at) < tonumber(ARGV[4]) then
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '|' .. ARGV[3] .. '|' .. now_ms)
return 1
";

/// Who serves a partition, as the table says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub epoch: i64,
    pub url: String,
    /// How long ago the owner last renewed the entry.
    pub age: Duration,
}

/// Signs and checks the forwarded header.
#[derive(Clone)]
pub struct HopKey(ring::hmac::Key);

impl std::fmt::Debug for HopKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HopKey(..)")
    }
}

impl HopKey {
    pub fn derive(secret: &str) -> Self {
        let derived = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes()),
            b"devconnect-forwarded-request",
        );
        Self(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, derived.as_ref()))
    }

    /// The header value vouching that `client` sent the request at `now`.
    pub fn sign(&self, client: IpAddr, now: u64) -> String {
        let claim = format!("{client} {now}");
        let tag = ring::hmac::sign(&self.0, claim.as_bytes());
        format!("{claim} {}", hex(tag.as_ref()))
    }

    /// The client address, if `value` was signed with this key within the
    /// validity window around `now`.
    pub fn verify(&self, value: &str, now: u64) -> Option<IpAddr> {
        let mut fields = value.split(' ');
        let (client, at, tag) = (fields.next()?, fields.next()?, fields.next()?);
        if fields.next().is_some() {
            return None;
        }
        let at: u64 = at.parse().ok()?;
        if at.abs_diff(now) > HOP_VALIDITY_SECS {
            return None;
        }
        let tag = unhex(tag)?;
        ring::hmac::verify(&self.0, format!("{client} {at}").as_bytes(), &tag).ok()?;
        client.parse().ok()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// The routing table and the client that forwards along it.
#[derive(Clone)]
pub struct Routes {
    redis: ConnectionManager,
    table: String,
    /// This instance's URL, as other instances reach it.
    pub me: String,
    pub hop: HopKey,
    client: reqwest::Client,
    /// The owners last read from the table: forwarding goes on from these
    /// while Redis is away or was emptied (until owners renew, ~1 s).
    last_known: std::sync::Arc<std::sync::Mutex<HashMap<i32, String>>>,
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routes").field("table", &self.table).field("me", &self.me).finish_non_exhaustive()
    }
}

impl Routes {
    /// `scope` tells deployments sharing one Redis apart (the topic prefix).
    pub fn new(redis: ConnectionManager, prefix: &str, scope: &str, me: String, hop: HopKey) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(platform::http::REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(2))
            // Never follow: the owner's answer goes back to the client as is.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            redis,
            table: format!("{prefix}command-owners:{scope}"),
            me,
            hop,
            client,
            last_known: std::sync::Arc::default(),
        })
    }

    /// Renews this instance's entries: `(partition, epoch)` of each
    /// partition it serves. Returns the partitions whose entry a higher,
    /// renewed epoch holds (another instance claimed after us).
    pub async fn renew(&self, served: &[(i32, i64)]) -> redis::RedisResult<Vec<i32>> {
        if served.is_empty() {
            return Ok(Vec::new());
        }
        // One call each: `invoke_async` loads the script where Redis lacks
        // it (a restarted Redis), which a pipelined EVALSHA would not.
        let script = redis::Script::new(RENEW);
        let stale_ms = STALE_AFTER.as_millis().to_string();
        let mut redis = self.redis.clone();
        let mut held_by_newer = Vec::new();
        for (partition, epoch) in served {
            let written: i64 = script
                .key(&self.table)
                .arg(partition)
                .arg(epoch)
                .arg(&self.me)
                .arg(&stale_ms)
                .invoke_async(&mut redis)
                .await?;
            if written == 0 {
                held_by_newer.push(*partition);
            }
        }
        Ok(held_by_newer)
    }

    /// The whole table, with each entry's age by Redis' clock.
    pub async fn table(&self) -> redis::RedisResult<HashMap<i32, Owner>> {
        let (entries, (secs, micros)): (HashMap<String, String>, (u64, u64)) =
            redis::pipe().hgetall(&self.table).cmd("TIME").query_async(&mut self.redis.clone()).await?;
        let now_ms = secs * 1000 + micros / 1000;
        let table: HashMap<i32, Owner> = entries
            .into_iter()
            .filter_map(|(partition, value)| {
                let partition = partition.parse().ok()?;
                let mut fields = value.splitn(3, '|');
                let epoch = fields.next()?.parse().ok()?;
                let url = fields.next()?.to_owned();
                let at: u64 = fields.next()?.parse().ok()?;
                Some((partition, Owner { epoch, url, age: Duration::from_millis(now_ms.saturating_sub(at)) }))
            })
            .collect();
        let mut known = self.last_known.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (partition, owner) in &table {
            known.insert(*partition, owner.url.clone());
        }
        drop(known);
        Ok(table)
    }

    /// The URL of the instance serving `partition`, unless that is this
    /// one: from the table, or, when Redis cannot say (unreachable, or
    /// emptied and not renewed yet), the owner last read from it.
    pub async fn owner_of(&self, partition: i32) -> Option<String> {
        let value: Option<String> = redis::cmd("HGET")
            .arg(&self.table)
            .arg(partition)
            .query_async(&mut self.redis.clone())
            .await
            .inspect_err(
                |err| tracing::warn!(error = %err, "reading the routing table failed; using the owner last read"),
            )
            .ok()
            .flatten();
        let from_table = value.and_then(|v| v.split('|').nth(1).map(str::to_owned)).filter(|url| !url.is_empty());
        let mut known = self.last_known.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let url = match from_table {
            Some(url) => {
                known.insert(partition, url.clone());
                url
            }
            None => known.get(&partition)?.clone(),
        };
        (url != self.me).then_some(url)
    }

    /// Asks `owner`, which serves the sender's partition, to reserve a slot
    /// of the sender's daily limit (`http::internal`).
    pub async fn reserve_slot(
        &self,
        owner: &str,
        slot: &crate::service::SlotRequest,
    ) -> Result<(), crate::service::CommandError> {
        use crate::service::CommandError;
        let unavailable = |detail: String| CommandError::Unavailable { dependency: "command-api", detail };
        let now = chrono::Utc::now().timestamp().unsigned_abs();
        let answer = self
            .client
            .post(format!("{owner}{SLOTS_PATH}"))
            .header(HOP_HEADER, self.hop.sign(IpAddr::from([127, 0, 0, 1]), now))
            .json(slot)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| unavailable(format!("reserving a request slot at {owner}: {e}")))?;
        let status = answer.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = answer
            .headers()
            .get(axum::http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let body: serde_json::Value = answer.json().await.unwrap_or_default();
        let message = body["error"]["message"].as_str().unwrap_or_default().to_owned();
        match (status.as_u16(), body["error"]["code"].as_str()) {
            (429, Some("daily_limit_reached")) => Err(crate::domain::Rejection::LimitReached {
                code: platform::error_code::ErrorCode::DailyLimitReached,
                message,
                retry_after_secs: retry_after,
            }
            .into()),
            (401, _) => Err(CommandError::Unauthenticated),
            _ => Err(unavailable(format!("reserving a request slot at {owner}: {status} {message}"))),
        }
    }

    /// Sends a request on to `owner` and returns its answer.
    pub async fn forward(
        &self,
        owner: &str,
        head: &axum::http::request::Parts,
        body: axum::body::Bytes,
        client: IpAddr,
    ) -> reqwest::Result<axum::response::Response> {
        let path = head.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut headers = head.headers.clone();
        for hop_by_hop in [axum::http::header::HOST, axum::http::header::CONNECTION, axum::http::header::CONTENT_LENGTH]
        {
            headers.remove(hop_by_hop);
        }
        let now = chrono::Utc::now().timestamp().unsigned_abs();
        if let Ok(value) = axum::http::HeaderValue::from_str(&self.hop.sign(client, now)) {
            headers.insert(HOP_HEADER, value);
        }
        let answer = self
            .client
            .request(head.method.clone(), format!("{owner}{path}"))
            .headers(headers)
            .body(body)
            .send()
            .await?;
        let status = answer.status();
        let mut headers = answer.headers().clone();
        headers.remove(axum::http::header::CONTENT_LENGTH);
        headers.remove(axum::http::header::TRANSFER_ENCODING);
        headers.remove(axum::http::header::CONNECTION);
        let body = answer.bytes().await?;
        let mut response = axum::response::Response::new(axum::body::Body::from(body));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forwarded_header_is_accepted_only_as_signed_and_fresh() {
        let key = HopKey::derive("secret-one");
        let client: IpAddr = "203.0.113.7".parse().expect("ip");
        let value = key.sign(client, 1_000);
        assert_eq!(key.verify(&value, 1_000), Some(client));
        assert_eq!(key.verify(&value, 1_059), Some(client), "within the window");
        assert_eq!(key.verify(&value, 1_061), None, "too old");
        assert_eq!(HopKey::derive("secret-two").verify(&value, 1_000), None, "another deployment's key");
        let forged = value.replacen("203.0.113.7", "198.51.100.1", 1);
        assert_eq!(key.verify(&forged, 1_000), None, "another client address under the same tag");
        for garbage in ["", "1.2.3.4", "1.2.3.4 1000", "1.2.3.4 1000 zz", "1.2.3.4 x 00", &format!("{value} extra")] {
            assert_eq!(key.verify(garbage, 1_000), None, "{garbage:?}");
        }
    }
}
