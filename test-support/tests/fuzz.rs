//! A bounded fuzz run of both OpenAPI documents with schemathesis: every
//! operation, 25 generated examples each (plus its coverage and stateful
//! phases), against the real services, with all of schemathesis' checks:
//! whatever a client sends, the answer is never a server error, and the
//! statuses, bodies and headers are the ones the documents promise; data
//! the schema allows is accepted and data it refuses is refused.

use std::process::Command;

use reqwest::{Method, StatusCode};
use serde_json::json;
use test_support::TestEnv;

/// Who the fuzzer is: a session, and a consistency token its write got
/// (the only kind of token reads accept; `schemathesis.toml`).
struct Auth {
    token: String,
    consistency: String,
}

/// Runs schemathesis against one service's document; panics with its report
/// when any check fails.
fn fuzz(env: &TestEnv, port: u16, auth: &Auth, selection: &[&str]) {
    let st = std::env::var("DEVCONNECT_TEST_SCHEMATHESIS").expect("run through ./dev test (it installs schemathesis)");
    let report = env.dir.join(format!("schemathesis-{port}-{}.txt", selection.join("_").replace('/', "~")));
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/schemathesis.toml");
    let output = Command::new(st)
        .args(["--config-file", config, "run"])
        .arg(format!("http://127.0.0.1:{port}/openapi.json"))
        .args(["--checks", "all", "--max-examples", "25", "--seed", "20261123"])
        .args(["--request-timeout", "30", "--workers", "1"])
        .args(["--header", &format!("Authorization: Bearer {}", auth.token)])
        .env("DEVCONNECT_FUZZ_CONSISTENCY_TOKEN", &auth.consistency)
        .args(selection)
        .env("NO_COLOR", "1")
        // Its cache of found crashes goes with the test's files, not the repo.
        .current_dir(&env.dir)
        .output()
        .expect("schemathesis runs");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    std::fs::write(&report, &text).expect("report");
    assert!(output.status.success(), "schemathesis found failures ({}):\n{text}", report.display());
    assert!(text.contains("passed"), "schemathesis ran no test case:\n{text}");
}

#[tokio::test]
async fn no_request_a_client_can_send_gets_a_server_error() {
    // Lifted limits: a 429 is no server error, but it would stop the fuzzer
    // from reaching the handlers behind it.
    let lifted = "signup=1000000/1m,auth=1000000/1m,account=1000000/1m,requests=1000000/1m,messages=1000000/1m,\
                  presence=1000000/1m,notifications=1000000/1m,reads=1000000/1m,stream=1000000/1m";
    let env = TestEnv::start_with(vec![("DEVCONNECT_RATE_LIMITS", lifted)]).await;
    let (_, token) = env.user("fuzzer").await;
    let edit = env.command(Method::PATCH, "/v1/profile", Some(&json!({"about": "fuzzing"})), Some(&token)).await;
    assert_eq!(edit.status, StatusCode::OK, "{:?}", edit.body);
    let auth = Auth { token, consistency: edit.consistency() };
    let (command, query) = (env.command_port, env.query_port);
    // schemathesis is a blocking child process: off the async runtime.
    tokio::task::spawn_blocking(move || {
        // Log-out last and alone: it ends the session every other operation uses.
        fuzz(&env, command, &auth, &["--exclude-path", "/v1/auth/logout"]);
        // The live stream never ends by itself; its own tests cover it.
        fuzz(&env, query, &auth, &["--exclude-path", "/v1/stream"]);
        fuzz(&env, command, &auth, &["--include-path", "/v1/auth/logout"]);
        env
    })
    .await
    .expect("the fuzz run finished");
}
