//! Accounts end to end: HTTP → command-api → Kafka → projector → MongoDB/Redis
//! → query-api, against real servers.

use reqwest::{Method, StatusCode};
use serde_json::json;
use test_support::{PASSWORD, TestEnv};

#[tokio::test]
async fn signup_login_and_read_your_own_profile() {
    let env = TestEnv::start().await;
    let email = env.email("ada");
    let (user_id, _) = env.signup(&email.to_uppercase()).await;

    let login =
        env.command(Method::POST, "/v1/auth/login", Some(&json!({"emailId": email, "password": PASSWORD})), None).await;
    assert_eq!(login.status, StatusCode::OK, "{:?}", login.body);
    assert_eq!(login.body["userId"], user_id.as_str());
    assert!(login.body["expiresAt"].is_string());
    let cookie = login.header("set-cookie").expect("token cookie");
    assert!(cookie.starts_with("token=") && cookie.contains("HttpOnly"), "{cookie}");
    let token = login.body["token"].as_str().expect("token").to_owned();

    let own = env.query("/v1/profile", &token, Some(&login.consistency())).await;
    assert_eq!(own.status, StatusCode::OK, "{:?}", own.body);
    assert_eq!(own.body["userId"], user_id.as_str());
    assert_eq!(own.body["emailId"], email.to_lowercase().as_str(), "stored lower-case");
    assert_eq!(own.body["membership"], "free");
    assert_eq!(own.body["skills"], json!(["rust", "math"]));
    assert!(own.body["createdAt"].is_string() && own.body["updatedAt"].is_string());
    let text = own.body.to_string();
    assert!(!text.contains("password") && !text.contains("argon2"), "no secrets in a read: {text}");

    // The cookie alone authenticates too.
    let cookie_pair = cookie.split(';').next().expect("pair").to_owned();
    let by_cookie = env.send(Method::GET, &env.query_url("/v1/profile"), None, &[("cookie", &cookie_pair)]).await;
    assert_eq!(by_cookie.status, StatusCode::OK);

    let public = env.query(&format!("/v1/users/{user_id}"), &token, None).await;
    assert_eq!(public.status, StatusCode::OK);
    assert_eq!(public.body["firstName"], "Ada");
    assert!(public.body.get("emailId").is_none(), "a public profile has no email: {:?}", public.body);
    assert!(public.body.get("membership").is_none());

    let unknown = env.query(&format!("/v1/users/{}", uuid::Uuid::new_v4()), &token, None).await;
    assert_eq!((unknown.status, unknown.code()), (StatusCode::NOT_FOUND, "user_not_found"));
    let bad_id = env.query("/v1/users/not-a-uuid", &token, None).await;
    assert_eq!((bad_id.status, bad_id.code()), (StatusCode::BAD_REQUEST, "user_id_invalid"));
    let bad_consistency = env.query("/v1/profile", &token, Some("garbage!")).await;
    assert_eq!(
        (bad_consistency.status, bad_consistency.code()),
        (StatusCode::BAD_REQUEST, "consistency_token_invalid")
    );

    // Nothing secret leaks into the views or the caches.
    let users = env.views_db().await.collection::<mongodb::bson::Document>("users");
    let stored = users.find_one(mongodb::bson::doc! {"_id": &user_id}).await.expect("mongo").expect("user doc");
    assert!(!stored.to_string().contains("argon2"), "{stored}");
    let mut redis = env.redis().await;
    let cached: Option<String> = redis::cmd("GET")
        .arg(env.view_key(&format!("user:{user_id}")).await)
        .query_async(&mut redis)
        .await
        .expect("redis");
    assert!(!cached.expect("projector cached the user").contains("argon2"));
}

#[tokio::test]
async fn every_signup_rule_answers_400_with_its_code() {
    let env = TestEnv::start().await;
    let cases = [
        (json!({"firstName": "A"}), "first_name_length"),
        // Zero-width characters only: nothing visible.
        (json!({"firstName": "\u{200B}\u{200B}\u{200B}"}), "first_name_length"),
        // A right-to-left override makes "nimda" display as "admin".
        (json!({"lastName": "\u{202E}nimda"}), "last_name_invalid"),
        (json!({"lastName": "x".repeat(51)}), "last_name_length"),
        (json!({"emailId": "not-an-email"}), "email_invalid"),
        (json!({"password": "weakpassword"}), "password_weak"),
        (json!({"age": 17}), "age_below_minimum"),
        (json!({"gender": "robot"}), "gender_invalid"),
        (json!({"about": "x".repeat(501)}), "about_too_long"),
        (json!({"skills": vec!["s"; 11]}), "skills_too_many"),
        (json!({"skills": ["x".repeat(31)]}), "skill_too_long"),
        (json!({"photoUrl": "javascript:alert(1)"}), "photo_url_invalid"),
        (json!({"age": "old"}), "invalid_field_type"),
    ];
    for (overrides, code) in cases {
        let mut body = TestEnv::signup_body(&env.email("rules"));
        for (k, v) in overrides.as_object().expect("object") {
            body[k] = v.clone();
        }
        let reply = env.command(Method::POST, "/v1/auth/signup", Some(&body), None).await;
        assert_eq!((reply.status, reply.code()), (StatusCode::BAD_REQUEST, code), "{body}: {:?}", reply.body);
        assert!(reply.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let mut missing = TestEnv::signup_body(&env.email("missing"));
    missing.as_object_mut().expect("object").remove("lastName");
    let reply = env.command(Method::POST, "/v1/auth/signup", Some(&missing), None).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);

    let url = env.command_url("/v1/auth/signup");
    let malformed =
        env.http.post(&url).header("content-type", "application/json").body("{nope").send().await.expect("send");
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = malformed.json().await.expect("json error");
    assert_eq!(body["error"]["code"], "malformed_json");

    let no_type = env.http.post(&url).body("{}").send().await.expect("send");
    assert_eq!(no_type.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let huge = format!("{{\"about\": \"{}\"}}", "x".repeat(70 * 1024));
    let too_big = env.http.post(&url).header("content-type", "application/json").body(huge).send().await.expect("send");
    assert_eq!(too_big.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: serde_json::Value = too_big.json().await.expect("json error");
    assert_eq!(body["error"]["code"], "payload_too_large");

    let nowhere = env.command(Method::GET, "/v1/nowhere", None, None).await;
    assert_eq!((nowhere.status, nowhere.code()), (StatusCode::NOT_FOUND, "route_not_found"));
}

#[tokio::test]
async fn twenty_simultaneous_signups_with_one_email_create_one_account() {
    let env = TestEnv::start().await;
    let email = env.email("race");
    let attempts = (0..20).map(|i| {
        // Same address, different spellings: uniqueness is case-insensitive.
        let spelled = if i % 2 == 0 { email.clone() } else { email.to_uppercase() };
        let body = TestEnv::signup_body(&spelled);
        let env = &env;
        async move { env.command(Method::POST, "/v1/auth/signup", Some(&body), None).await }
    });
    let replies = futures::future::join_all(attempts).await;
    let created = replies.iter().filter(|r| r.status == StatusCode::CREATED).count();
    let conflicts = replies.iter().filter(|r| r.status == StatusCode::CONFLICT && r.code() == "email_taken").count();
    assert_eq!((created, conflicts), (1, 19), "{:?}", replies.iter().map(|r| r.status).collect::<Vec<_>>());

    // The write model comes back from Kafka: still taken after a restart.
    let mut env = env;
    env.restart_command_api().await;
    let again = env.command(Method::POST, "/v1/auth/signup", Some(&TestEnv::signup_body(&email)), None).await;
    assert_eq!((again.status, again.code()), (StatusCode::CONFLICT, "email_taken"));
    env.login(&email, PASSWORD).await;
}

#[tokio::test]
async fn wrong_email_and_wrong_password_look_the_same_and_brute_force_is_limited() {
    let env = TestEnv::start().await;
    let email = env.email("target");
    env.signup(&email).await;
    let login = |email: String, password: &'static str| {
        let env = &env;
        async move {
            env.command(Method::POST, "/v1/auth/login", Some(&json!({"emailId": email, "password": password})), None)
                .await
        }
    };
    let wrong_password = login(email.clone(), "Wr0ng!pass").await;
    let wrong_email = login(env.email("nobody"), "Wr0ng!pass").await;
    assert_eq!(wrong_password.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong_password.status, wrong_email.status);
    assert_eq!(wrong_password.body, wrong_email.body, "identical answers");

    for _ in 0..4 {
        assert_eq!(login(email.clone(), "Wr0ng!pass").await.status, StatusCode::UNAUTHORIZED);
    }
    // Five failures in the window: even the right password now waits.
    let limited = login(email.clone(), PASSWORD).await;
    assert_eq!((limited.status, limited.code()), (StatusCode::TOO_MANY_REQUESTS, "too_many_attempts"));
    let retry_after: u64 = limited.header("retry-after").expect("Retry-After").parse().expect("seconds");
    assert!((1..=300).contains(&retry_after), "{retry_after}");
    // Another account from the same client is not locked by this one.
    let other = env.email("other");
    env.signup(&other).await;
    env.login(&other, PASSWORD).await;
}

#[tokio::test]
async fn logout_revokes_the_session_on_both_apis_at_once() {
    let env = TestEnv::start().await;
    let email = env.email("leaver");
    env.signup(&email).await;
    let (token, consistency) = env.login(&email, PASSWORD).await;
    assert_eq!(env.query("/v1/profile", &token, Some(&consistency)).await.status, StatusCode::OK);

    let logout = env.command(Method::POST, "/v1/auth/logout", None, Some(&token)).await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    // No consistency token: revocation is written through, not eventual.
    let read = env.query("/v1/profile", &token, None).await;
    assert_eq!((read.status, read.code()), (StatusCode::UNAUTHORIZED, "invalid_token"));
    let write = env.command(Method::PATCH, "/v1/profile", Some(&json!({"about": "x"})), Some(&token)).await;
    assert_eq!(write.status, StatusCode::UNAUTHORIZED);
    let twice = env.command(Method::POST, "/v1/auth/logout", None, Some(&token)).await;
    assert_eq!(twice.status, StatusCode::UNAUTHORIZED);

    for bad in ["", "Bearer nonsense", "Bearer eyJhbGciOiJub25lIn0.e30."] {
        let reply = env.send(Method::GET, &env.query_url("/v1/profile"), None, &[("authorization", bad)]).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{bad:?}");
    }
}

#[tokio::test]
async fn editing_the_profile_and_changing_the_password() {
    let env = TestEnv::start().await;
    let email = env.email("editor");
    env.signup(&email).await;
    let (mine, _) = env.login(&email, PASSWORD).await;
    let (other, other_consistency) = env.login(&email, PASSWORD).await;
    assert_eq!(env.query("/v1/profile", &other, Some(&other_consistency)).await.status, StatusCode::OK);

    let edit = env
        .command(
            Method::PATCH,
            "/v1/profile",
            Some(&json!({"firstName": "Augusta", "age": null, "skills": ["poetry"]})),
            Some(&mine),
        )
        .await;
    assert_eq!(edit.status, StatusCode::OK, "{:?}", edit.body);
    let read = env.query("/v1/profile", &mine, Some(&edit.consistency())).await;
    assert_eq!(read.body["firstName"], "Augusta");
    assert_eq!(read.body["lastName"], "Lovelace");
    assert_eq!(read.body["age"], serde_json::Value::Null);
    assert_eq!(read.body["skills"], json!(["poetry"]));

    for (body, code) in [
        (json!({"emailId": "new@example.com"}), "field_not_editable"),
        (json!({"password": "Whatever1!"}), "field_not_editable"),
        (json!({}), "empty_update"),
        (json!({"lastName": "L"}), "last_name_length"),
    ] {
        let reply = env.command(Method::PATCH, "/v1/profile", Some(&body), Some(&mine)).await;
        assert_eq!((reply.status, reply.code()), (StatusCode::BAD_REQUEST, code), "{body}");
    }

    let wrong_current = json!({"currentPassword": "Wr0ng!pass", "newPassword": "N3w!password"});
    let reply = env.command(Method::PUT, "/v1/profile/password", Some(&wrong_current), Some(&mine)).await;
    assert_eq!((reply.status, reply.code()), (StatusCode::BAD_REQUEST, "current_password_incorrect"));
    let weak = json!({"currentPassword": PASSWORD, "newPassword": "weak"});
    let reply = env.command(Method::PUT, "/v1/profile/password", Some(&weak), Some(&mine)).await;
    assert_eq!((reply.status, reply.code()), (StatusCode::BAD_REQUEST, "password_weak"));

    let change = json!({"currentPassword": PASSWORD, "newPassword": "N3w!password"});
    let reply = env.command(Method::PUT, "/v1/profile/password", Some(&change), Some(&mine)).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{:?}", reply.body);
    // Every other session is revoked at once, on both APIs; this one lives.
    assert_eq!(env.query("/v1/profile", &other, None).await.status, StatusCode::UNAUTHORIZED);
    let other_write = env.command(Method::PATCH, "/v1/profile", Some(&json!({"about": "x"})), Some(&other)).await;
    assert_eq!(other_write.status, StatusCode::UNAUTHORIZED);
    assert_eq!(env.query("/v1/profile", &mine, None).await.status, StatusCode::OK);

    let old =
        env.command(Method::POST, "/v1/auth/login", Some(&json!({"emailId": email, "password": PASSWORD})), None).await;
    assert_eq!(old.status, StatusCode::UNAUTHORIZED);
    env.login(&email, "N3w!password").await;
}

#[tokio::test]
async fn idempotency_keys_answer_retries_from_the_log_even_after_a_restart() {
    let mut env = TestEnv::start().await;
    let email = env.email("retry");
    let body = TestEnv::signup_body(&email);
    let key = [("idempotency-key", "signup-attempt-1")];
    let url = env.command_url("/v1/auth/signup");
    let first = env.send(Method::POST, &url, Some(&body), &key).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let second = env.send(Method::POST, &url, Some(&body), &key).await;
    assert_eq!(second.status, StatusCode::CREATED);
    assert_eq!(second.body, first.body);
    assert_eq!(second.header("idempotent-replayed").as_deref(), Some("true"));
    assert_eq!(second.consistency(), first.consistency(), "same write, same position");

    let mut changed = body.clone();
    changed["firstName"] = json!("Someone");
    let reused = env.send(Method::POST, &url, Some(&changed), &key).await;
    assert_eq!((reused.status, reused.code()), (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"));

    let (token, _) = env.login(&email, PASSWORD).await;
    let auth = format!("Bearer {token}");
    let edit_headers = [("idempotency-key", "edit-1"), ("authorization", auth.as_str())];
    let edit_url = env.command_url("/v1/profile");
    let edit = env.send(Method::PATCH, &edit_url, Some(&json!({"about": "once"})), &edit_headers).await;
    assert_eq!(edit.status, StatusCode::OK);

    env.restart_command_api().await;
    let again = env.send(Method::POST, &url, Some(&body), &key).await;
    assert_eq!((again.status, &again.body), (StatusCode::CREATED, &first.body));
    let edit_again = env.send(Method::PATCH, &edit_url, Some(&json!({"about": "once"})), &edit_headers).await;
    assert_eq!(edit_again.status, StatusCode::OK);
    assert_eq!(edit_again.consistency(), edit.consistency(), "no second event");

    let bad_key = env.send(Method::POST, &url, Some(&body), &[("idempotency-key", "")]).await;
    assert_eq!((bad_key.status, bad_key.code()), (StatusCode::BAD_REQUEST, "idempotency_key_invalid"));
}
