//! Talking HTTP to the two APIs: a request, its reply read whole.

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::TestEnv;

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
    }

    pub fn consistency(&self) -> String {
        self.header("x-consistency-token").expect("a successful write carries X-Consistency-Token")
    }

    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("<no error code>")
    }

    /// The `userId` of each of a list's `items` (feed, connections), in order.
    pub fn user_ids(&self) -> Vec<String> {
        self.body["items"]
            .as_array()
            .unwrap_or_else(|| panic!("items: {self:?}"))
            .iter()
            .map(|p| p["userId"].as_str().expect("userId").to_owned())
            .collect()
    }
}

impl TestEnv {
    /// The command API's URL of `path`. With several command APIs
    /// (`DEVCONNECT_TEST_COMMAND_APIS`), API requests go round-robin over
    /// them, so the whole suite runs as clients of several instances would;
    /// operations endpoints (`/metrics`, `/readyz`) stay on the first.
    pub fn command_url(&self, path: &str) -> String {
        let mut port = self.command_port;
        if path.starts_with("/v1/") && !self.more_command_apis.is_empty() {
            let turn = self.rotation.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let index = turn % (self.more_command_apis.len() + 1);
            if index > 0 {
                port = self.more_command_apis[index - 1].0;
            }
        }
        format!("http://127.0.0.1:{port}{path}")
    }

    pub fn query_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.query_port)
    }

    /// Sends a request and reads the reply; `headers` are (name, value) pairs.
    pub async fn send(&self, method: Method, url: &str, body: Option<&Value>, headers: &[(&str, &str)]) -> Reply {
        let mut request = self.http.request(method, url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        let body =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        Reply { status, headers, body }
    }

    pub async fn command(&self, method: Method, path: &str, body: Option<&Value>, token: Option<&str>) -> Reply {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth.as_deref().map(|a| vec![("authorization", a)]).unwrap_or_default();
        self.send(method, &self.command_url(path), body, &headers).await
    }

    /// A read; with a consistency token it waits for that write.
    pub async fn query(&self, path: &str, token: &str, consistency: Option<&str>) -> Reply {
        let auth = format!("Bearer {token}");
        let mut headers = vec![("authorization", auth.as_str())];
        if let Some(c) = consistency {
            headers.push(("x-consistency-token", c));
        }
        self.send(Method::GET, &self.query_url(path), None, &headers).await
    }

    /// The value of one counter in the query API's `/metrics`, e.g.
    /// `feed_reads_total{path="mongo"}`; 0 when it has not counted yet.
    pub async fn query_counter(&self, series: &str) -> u64 {
        self.counter_at(&self.query_url("/metrics"), series).await
    }

    /// The value of one counter in the `/metrics` text at `url`; 0 when it
    /// has not counted yet.
    pub async fn counter_at(&self, url: &str, series: &str) -> u64 {
        let text = self.http.get(url).send().await.expect("metrics").text().await.expect("text");
        let prefix = format!("{series} ");
        text.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
    }
}
