//! The two APIs as the benchmark calls them.

use reqwest::Response;
use serde_json::{Value, json};

pub const PASSWORD: &str = "Bench#Pass1";

pub struct Api {
    pub http: reqwest::Client,
    pub command: String,
    pub query: String,
}

impl Api {
    pub async fn post(&self, path: &str, body: &Value, token: Option<&str>) -> anyhow::Result<Response> {
        let mut req = self.http.post(format!("{}{path}", self.command)).json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await?;
        anyhow::ensure!(res.status().is_success(), "POST {path}: {}", res.status());
        Ok(res)
    }

    pub async fn signup(&self, email: &str) -> anyhow::Result<String> {
        let body = json!({"firstName": "Bench", "lastName": "Mark", "emailId": email, "password": PASSWORD, "skills": ["rust"]});
        let v: Value = self.post("/v1/auth/signup", &body, None).await?.json().await?;
        Ok(v["userId"].as_str().unwrap_or_default().to_owned())
    }

    /// The user id of an account the run already created.
    pub async fn user_id_of(&self, email: &str) -> anyhow::Result<String> {
        let token = self.login(email).await?;
        let v = self.profile(&token, None).await;
        match v {
            Ok(v) => Ok(v["userId"].as_str().unwrap_or_default().to_owned()),
            Err(_) => anyhow::bail!("{email} not in the views yet"),
        }
    }

    pub async fn login(&self, email: &str) -> anyhow::Result<String> {
        let v: Value =
            self.post("/v1/auth/login", &json!({"emailId": email, "password": PASSWORD}), None).await?.json().await?;
        Ok(v["token"].as_str().unwrap_or_default().to_owned())
    }

    pub async fn edit(&self, token: &str, about: &str) -> anyhow::Result<String> {
        let res = self
            .http
            .patch(format!("{}/v1/profile", self.command))
            .bearer_auth(token)
            .json(&json!({"about": about}))
            .send()
            .await?;
        anyhow::ensure!(res.status().is_success(), "PATCH /v1/profile: {}", res.status());
        Ok(consistency_token(&res))
    }

    /// Makes the token's user gold, so the daily request limit does not
    /// cap the benchmark.
    pub async fn upgrade_to_gold(&self, token: &str) -> anyhow::Result<()> {
        let res = self
            .http
            .put(format!("{}/v1/membership", self.command))
            .bearer_auth(token)
            .json(&json!({"tier": "gold"}))
            .send()
            .await?;
        anyhow::ensure!(res.status().is_success(), "upgrade: {}", res.status());
        Ok(())
    }

    /// POST that answers `{requestId}`.
    pub async fn request_id(&self, path: &str, token: &str) -> anyhow::Result<String> {
        let v: Value = self.post(path, &json!({}), Some(token)).await?.json().await?;
        Ok(v["requestId"].as_str().unwrap_or_default().to_owned())
    }

    /// Sends a message; returns its id and the write's consistency token.
    pub async fn send_message(&self, token: &str, to: &str, text: &str) -> anyhow::Result<(String, String)> {
        let res = self
            .http
            .post(format!("{}/v1/messages/{to}", self.command))
            .bearer_auth(token)
            .json(&json!({"text": text}))
            .send()
            .await?;
        anyhow::ensure!(res.status().is_success(), "message: {}", res.status());
        let consistency = consistency_token(&res);
        let v: Value = res.json().await?;
        Ok((v["messageId"].as_str().unwrap_or_default().to_owned(), consistency))
    }

    pub async fn get_ok(&self, path: &str, token: &str) -> anyhow::Result<Value> {
        let res = self.http.get(format!("{}{path}", self.query)).bearer_auth(token).send().await?;
        anyhow::ensure!(res.status().is_success(), "GET {path}: {}", res.status());
        Ok(res.json().await?)
    }

    pub async fn profile(&self, token: &str, consistency: Option<&str>) -> anyhow::Result<Value> {
        let mut req = self.http.get(format!("{}/v1/profile", self.query)).bearer_auth(token);
        if let Some(c) = consistency {
            req = req.header("x-consistency-token", c);
        }
        let res = req.send().await?;
        anyhow::ensure!(res.status().is_success(), "GET /v1/profile: {}", res.status());
        Ok(res.json().await?)
    }
}

fn consistency_token(res: &Response) -> String {
    res.headers().get("x-consistency-token").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
}
