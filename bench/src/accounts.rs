//! Account commands and the profile read. Each op of a parallel run works
//! on its own user, as real traffic does; one user's commands are
//! serialised by design.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::Run;
use crate::measure::{Pair, measure};

pub struct Accounts {
    pub signup: Pair,
    pub login: Pair,
    pub edit: Pair,
    /// Tokens of the first 64 users of the parallel sign-ups.
    pub tokens: Arc<Vec<String>>,
}

pub async fn commands(run: &Run) -> anyhow::Result<Accounts> {
    let (serial, parallel) = (run.serial, run.parallel);
    let signup = |c: usize, ops: usize, phase: &'static str| {
        let (api, run) = (Arc::clone(&run.api), run.id.clone());
        measure(c, ops, move |i| {
            let (api, e) = (Arc::clone(&api), crate::email(&run, phase, i));
            async move { api.signup(&e).await.map(|_| ()) }
        })
    };
    let signup = Pair { one: signup(1, serial / 4, "s1").await?, many: signup(64, parallel / 4, "s64").await? };
    let login = |c: usize, ops: usize, phase: &'static str, users: usize| {
        let (api, run) = (Arc::clone(&run.api), run.id.clone());
        measure(c, ops, move |i| {
            let (api, e) = (Arc::clone(&api), crate::email(&run, phase, i % users));
            async move { api.login(&e).await.map(|_| ()) }
        })
    };
    let login = Pair {
        one: login(1, serial / 4, "s1", serial / 4).await?,
        many: login(64, parallel / 4, "s64", parallel / 4).await?,
    };

    let mut tokens = Vec::new();
    for i in 0..64 {
        tokens.push(run.api.login(&run.email("s64", i)).await?);
    }
    let tokens = Arc::new(tokens);
    let edit = |c: usize, ops: usize| {
        let (api, tokens) = (Arc::clone(&run.api), Arc::clone(&tokens));
        measure(c, ops, move |i| {
            let (api, tokens) = (Arc::clone(&api), Arc::clone(&tokens));
            async move { api.edit(&tokens[i % 64], &format!("edit {i}")).await.map(|_| ()) }
        })
    };
    let edit = Pair { one: edit(1, serial).await?, many: edit(64, parallel).await? };
    Ok(Accounts { signup, login, edit, tokens })
}

/// Reads of the own profile: warm the cache, then read.
pub async fn profile_reads(run: &Run, tokens: &Arc<Vec<String>>) -> anyhow::Result<Pair> {
    for t in tokens.iter() {
        let c = run.api.edit(t, "warm").await?;
        run.api.profile(t, Some(&c)).await?;
        run.api.profile(t, None).await?;
    }
    let read = |c: usize, ops: usize| {
        let (api, tokens) = (Arc::clone(&run.api), Arc::clone(tokens));
        measure(c, ops, move |i| {
            let (api, tokens) = (Arc::clone(&api), Arc::clone(&tokens));
            async move { api.profile(&tokens[i % 64], None).await.map(|_| ()) }
        })
    };
    Ok(Pair { one: read(1, run.serial * 5).await?, many: read(64, run.parallel * 5).await? })
}

/// Ack → visible: after the command's answer, poll the plain (cached)
/// read until the new value shows. This is what a client without the
/// consistency token would see. The lags of `edits` edits, sorted, each
/// sent `gap` after the previous one became visible (a gap above the
/// projector's idle pause measures the wake-up from idle).
pub async fn ack_to_visible(
    run: &Run,
    tokens: &[String],
    edits: usize,
    gap: Duration,
) -> anyhow::Result<Vec<Duration>> {
    let mut lags = Vec::new();
    for i in 0..edits {
        tokio::time::sleep(gap).await;
        let token = &tokens[i % 64];
        let marker = format!("lag {} {} {i}", run.id, gap.as_millis());
        run.api.edit(token, &marker).await?;
        let acked = Instant::now();
        loop {
            let v = run.api.profile(token, None).await?;
            if v["about"] == marker.as_str() {
                break;
            }
            anyhow::ensure!(acked.elapsed() < Duration::from_secs(10), "edit {i} not visible after 10 s");
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        lags.push(acked.elapsed());
    }
    lags.sort();
    Ok(lags)
}
