//! Users and what they do most: sign up, log in, connect.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{PASSWORD, Reply, TestEnv};

impl TestEnv {
    /// A unique email for this environment.
    pub fn email(&self, name: &str) -> String {
        format!("{name}.{}@example.com", self.id)
    }

    pub fn signup_body(email: &str) -> Value {
        json!({
            "firstName": "Ada", "lastName": "Lovelace", "emailId": email, "password": PASSWORD,
            "age": 36, "gender": "female", "about": "Analytical engines", "skills": ["rust", "math"],
            "photoUrl": "https://example.com/ada.png"
        })
    }

    /// Signs up; returns the user id and the consistency token.
    pub async fn signup(&self, email: &str) -> (String, String) {
        let reply = self.command(Method::POST, "/v1/auth/signup", Some(&Self::signup_body(email)), None).await;
        assert_eq!(reply.status, StatusCode::CREATED, "signup {email}: {:?}", reply.body);
        (reply.body["userId"].as_str().expect("userId").to_owned(), reply.consistency())
    }

    /// Logs in; returns the token and the consistency token.
    pub async fn login(&self, email: &str, password: &str) -> (String, String) {
        let reply = self.login_reply(email, password).await;
        assert_eq!(reply.status, StatusCode::OK, "login {email}: {:?}", reply.body);
        (reply.body["token"].as_str().expect("token").to_owned(), reply.consistency())
    }

    /// The whole answer to a log-in, whatever it is.
    pub async fn login_reply(&self, email: &str, password: &str) -> Reply {
        let body = json!({ "emailId": email, "password": password });
        self.command(Method::POST, "/v1/auth/login", Some(&body), None).await
    }

    /// Spends a refresh token, with an `Idempotency-Key` if given.
    pub async fn refresh(&self, refresh_token: &str, idempotency_key: Option<&str>) -> Reply {
        let body = json!({ "refreshToken": refresh_token });
        let headers: Vec<(&str, &str)> = idempotency_key.map(|k| ("idempotency-key", k)).into_iter().collect();
        self.send(Method::POST, &self.command_url("/v1/auth/refresh"), Some(&body), &headers).await
    }

    /// Signs up and logs in a user named `name`, and waits until the views
    /// hold them (a user's events share one partition, so the log-in's
    /// consistency token covers the registration): (user id, token).
    pub async fn user(&self, name: &str) -> (String, String) {
        let email = self.email(name);
        let (user_id, _) = self.signup(&email).await;
        let (token, consistency) = self.login(&email, PASSWORD).await;
        let projected = self.query("/v1/profile", &token, Some(&consistency)).await;
        assert_eq!(projected.status, StatusCode::OK, "{name} never reached the views: {:?}", projected.body);
        (user_id, token)
    }

    /// `a` sends `b` an interested request and `b` accepts it; returns the
    /// acceptance (its consistency token covers the connection).
    pub async fn connect(&self, a_token: &str, b: &str, b_token: &str) -> Reply {
        let sent = self.command(Method::POST, &format!("/v1/requests/send/interested/{b}"), None, Some(a_token)).await;
        assert_eq!(sent.status, StatusCode::CREATED, "{:?}", sent.body);
        let id = sent.body["requestId"].as_str().expect("requestId").to_owned();
        let accepted =
            self.command(Method::POST, &format!("/v1/requests/review/accepted/{id}"), None, Some(b_token)).await;
        assert_eq!(accepted.status, StatusCode::OK, "{:?}", accepted.body);
        accepted
    }

    /// Waits until `user_id`'s public profile can be read, and returns it.
    pub async fn wait_for_user(&self, token: &str, user_id: &str) -> Value {
        for _ in 0..200 {
            let reply = self.query(&format!("/v1/users/{user_id}"), token, None).await;
            if reply.status == StatusCode::OK {
                return reply.body;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{user_id} never reached the views");
    }
}
