//! The chaos run's HTTP client: writes retried with one Idempotency-Key
//! until their answer is definitive, and the reads the setup and the
//! checks make. Every other module talks to the stack through `Env`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::workload::Pair;

pub const PASSWORD: &str = "Chaos#Pass1";
pub const CONSISTENCY_HEADER: &str = "x-consistency-token";
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// The answer to a write retried until it is definitive.
pub enum Write {
    /// 2xx: the body and the consistency token.
    Done { body: Value, token: Option<String> },
    /// 4xx: refused; nothing was written.
    Rejected(String),
    /// The deadline passed before a definitive answer: it may or may not have landed.
    Unknown,
}

/// Counts the writes currently being retried while it lives.
pub struct RetryMark<'a>(Option<&'a AtomicUsize>, bool);

impl RetryMark<'_> {
    fn set(&mut self) {
        if !self.1 {
            self.1 = true;
            if let Some(c) = self.0 {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for RetryMark<'_> {
    fn drop(&mut self) {
        if let (Some(c), true) = (self.0, self.1) {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub token: String,
}

pub struct Env {
    pub http: reqwest::Client,
    pub command: String,
    pub query: String,
    pub projector: String,
    pub run: String,
    pub started: Instant,
}

impl Env {
    /// `[ 42s]`: seconds since the start of the run.
    pub fn t(&self) -> String {
        format!("[{:>4}s]", self.started.elapsed().as_secs())
    }

    /// Sends the same request with the same Idempotency-Key until the
    /// answer is definitive (2xx or 4xx) or `deadline` passes. 5xx, 408,
    /// 429, timeouts and refused connections leave the outcome unknown.
    #[allow(clippy::too_many_arguments)]
    pub async fn write(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: &Value,
        key: &str,
        deadline: Instant,
        retrying: Option<&AtomicUsize>,
    ) -> Write {
        let url = format!("{}{path}", self.command);
        let mut mark = RetryMark(retrying, false);
        let mut backoff = Duration::from_millis(100);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Write::Unknown;
            }
            let mut req = self
                .http
                .request(method.clone(), &url)
                .header(IDEMPOTENCY_HEADER, key)
                .timeout(left.min(Duration::from_secs(10)))
                .json(body);
            if let Some(b) = bearer {
                req = req.bearer_auth(b);
            }
            if let Ok(res) = req.send().await {
                let status = res.status();
                let token = res.headers().get(CONSISTENCY_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
                if status.is_success() {
                    // A body lost on the way is asked for again: the retry replays it.
                    if let Ok(bytes) = res.bytes().await {
                        let body = if bytes.is_empty() {
                            Value::Null
                        } else {
                            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
                        };
                        return Write::Done { body, token };
                    }
                } else if status.is_client_error()
                    && status != StatusCode::TOO_MANY_REQUESTS
                    && status != StatusCode::REQUEST_TIMEOUT
                {
                    let text = res.text().await.unwrap_or_default();
                    return Write::Rejected(format!("{} {path}: {status} {}", method, text.trim()));
                }
            }
            mark.set();
            tokio::time::sleep(backoff.min(deadline.saturating_duration_since(Instant::now()))).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// A GET on the query API; anything but 2xx is an error.
    pub async fn read(&self, path: &str, bearer: &str, consistency: Option<&str>) -> anyhow::Result<Value> {
        let mut req = self.http.get(format!("{}{path}", self.query)).bearer_auth(bearer);
        if let Some(c) = consistency {
            req = req.header(CONSISTENCY_HEADER, c);
        }
        let res = req.send().await.with_context(|| format!("GET {path}"))?;
        let status = res.status();
        if !status.is_success() {
            let text = res.text().await.unwrap_or_default();
            anyhow::bail!("GET {path}: {status} {}", text.trim());
        }
        Ok(res.json().await?)
    }

    pub async fn ready(&self, base: &str) -> bool {
        let res = self.http.get(format!("{base}/readyz")).timeout(Duration::from_secs(3)).send().await;
        res.is_ok_and(|r| r.status().is_success())
    }

    /// The projector's total lag, if it knows it.
    pub async fn projector_lag(&self) -> Option<i64> {
        let res = self.http.get(format!("{}/progress", self.projector)).timeout(Duration::from_secs(3)).send().await;
        let v: Value = res.ok()?.json().await.ok()?;
        v["lag"].as_i64()
    }

    /// A fresh account, logged in.
    pub async fn user(&self, label: &str, last_name: &str, about: &str, deadline: Instant) -> anyhow::Result<User> {
        let email = format!("chaos-{}-{label}@example.com", self.run);
        let body = json!({"firstName": "Chaos", "lastName": last_name, "emailId": email, "password": PASSWORD,
            "about": about, "skills": ["chaos"]});
        let key = Uuid::new_v4().to_string();
        let (v, _) = done(self.write(Method::POST, "/v1/auth/signup", None, &body, &key, deadline, None).await)?;
        let id = v["userId"].as_str().context("signup answered no userId")?.to_owned();
        let body = json!({"emailId": email, "password": PASSWORD});
        let key = Uuid::new_v4().to_string();
        let (v, _) = done(self.write(Method::POST, "/v1/auth/login", None, &body, &key, deadline, None).await)?;
        let token = v["token"].as_str().context("login answered no token")?.to_owned();
        Ok(User { id, token })
    }

    /// Sum of `messagesSent` over `from..=to` (UTC days).
    pub async fn messages_sent(&self, bearer: &str, days: (&str, &str)) -> anyhow::Result<i64> {
        let v = self.read(&format!("/v1/stats/daily?from={}&to={}", days.0, days.1), bearer, None).await?;
        let days = v["days"].as_array().context("stats answered no days")?;
        Ok(days.iter().filter_map(|d| d["messagesSent"].as_i64()).sum())
    }

    /// Every message of a conversation as `(messageId, text)`, newest first,
    /// paging with `before`.
    pub async fn history(&self, pair: &Pair, consistency: Option<&str>) -> anyhow::Result<Vec<(String, String)>> {
        let mut items = Vec::new();
        let mut before: Option<String> = None;
        for _ in 0..100_000 {
            let path = match &before {
                None => format!("/v1/messages/{}?limit=50", pair.recipient.id),
                Some(b) => format!("/v1/messages/{}?limit=50&before={b}", pair.recipient.id),
            };
            let page = self.read(&path, &pair.sender.token, consistency).await?;
            for item in page["items"].as_array().map(Vec::as_slice).unwrap_or_default() {
                let id = item["messageId"].as_str().unwrap_or_default().to_owned();
                items.push((id, item["text"].as_str().unwrap_or_default().to_owned()));
            }
            match page["nextBefore"].as_str() {
                Some(next) if before.as_deref() != Some(next) => before = Some(next.to_owned()),
                _ => return Ok(items),
            }
        }
        anyhow::bail!("the history of pair {} did not end", pair.index)
    }
}

pub fn done(w: Write) -> anyhow::Result<(Value, Option<String>)> {
    match w {
        Write::Done { body, token } => Ok((body, token)),
        Write::Rejected(why) => anyhow::bail!("{why}"),
        Write::Unknown => anyhow::bail!("no definitive answer in time"),
    }
}
