//! Messages between the pairs the review phase connected: sending, the
//! history (Redis for the newest page, MongoDB before it) and delivery on
//! an open live stream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::Run;
use crate::measure::{Pair, Stats, measure};
use crate::requests::Requests;

/// (sender token, recipient user id) of each connected pair.
pub type Pairs = Arc<Vec<(String, String)>>;

/// The connected pairs: sender `i % 64` and recipient `i`.
pub fn pairs(requests: &Requests) -> Pairs {
    let (senders, recipients) = (&requests.senders, &requests.recipients_64);
    Arc::new((0..recipients.len()).map(|i| (senders[i % 64].clone(), recipients[i].0.clone())).collect())
}

pub async fn send(run: &Run, pairs: &Pairs) -> anyhow::Result<Pair> {
    let message_phase = |c: usize, ops: usize| {
        let (api, pairs) = (Arc::clone(&run.api), Arc::clone(pairs));
        measure(c, ops, move |i| {
            let (api, pairs) = (Arc::clone(&api), Arc::clone(&pairs));
            async move {
                let (token, to) = &pairs[i % pairs.len()];
                api.post(&format!("/v1/messages/{to}"), &json!({"text": format!("bench message {i}")}), Some(token))
                    .await?;
                Ok(())
            }
        })
    };
    Ok(Pair { one: message_phase(1, run.serial).await?, many: message_phase(64, run.parallel).await? })
}

pub struct History {
    /// The newest 50, from Redis.
    pub newest: Pair,
    /// 50 before the newest 50, from MongoDB.
    pub older: Pair,
}

/// History: one conversation with 120 messages; the newest page comes from
/// Redis, a page before the newest 50 from MongoDB.
pub async fn history(run: &Run, pairs: &Pairs) -> anyhow::Result<History> {
    let api = &run.api;
    let (talker, listener) = (pairs[0].0.clone(), pairs[0].1.clone());
    let mut ids = Vec::new();
    let mut consistency = String::new();
    for i in 0..120 {
        let (id, written) = api.send_message(&talker, &listener, &format!("history {i}")).await?;
        consistency = written;
        ids.push(id);
    }
    // A read carrying the last write's consistency token reads MongoDB and
    // refills the cache; plain reads after it see the whole conversation.
    let res = api
        .http
        .get(format!("{}/v1/messages/{listener}?limit=50", api.query))
        .bearer_auth(&talker)
        .header("x-consistency-token", &consistency)
        .send()
        .await?;
    anyhow::ensure!(res.status().is_success(), "history: {}", res.status());
    let older_than = Arc::new(ids[120 - 60].clone());
    let (talker, listener) = (Arc::new(talker), Arc::new(listener));
    let page = |c: usize, ops: usize, before: Option<Arc<String>>| {
        history_page(run, c, ops, (Arc::clone(&talker), Arc::clone(&listener)), before)
    };
    let newest = Pair { one: page(1, run.serial * 2, None).await?, many: page(64, run.parallel * 2, None).await? };
    let older = Pair {
        one: page(1, run.serial, Some(Arc::clone(&older_than))).await?,
        many: page(64, run.parallel / 2, Some(Arc::clone(&older_than))).await?,
    };
    Ok(History { newest, older })
}

/// Reads of one full page of the conversation, the newest or `before`.
async fn history_page(
    run: &Run,
    c: usize,
    ops: usize,
    (talker, listener): (Arc<String>, Arc<String>),
    before: Option<Arc<String>>,
) -> anyhow::Result<Stats> {
    let api = Arc::clone(&run.api);
    measure(c, ops, move |_| {
        let (api, talker, listener, before) =
            (Arc::clone(&api), Arc::clone(&talker), Arc::clone(&listener), before.clone());
        async move {
            let query = before.map_or_else(String::new, |b| format!("&before={b}"));
            let v = api.get_ok(&format!("/v1/messages/{listener}?limit=50{query}"), &talker).await?;
            anyhow::ensure!(
                v["items"].as_array().is_some_and(|a| a.len() == 50),
                "history page not full: {} items",
                v["items"].as_array().map_or(0, Vec::len)
            );
            Ok(())
        }
    })
    .await
}

/// Stream delivery: from the command's acknowledgement to the message
/// arriving on the recipient's open SSE stream. The lags of 100 messages,
/// sorted.
pub async fn stream_delivery(run: &Run, pairs: &Pairs, requests: &Requests) -> anyhow::Result<Vec<Duration>> {
    let api = &run.api;
    let recipient_token = requests.recipients_64[1].1.clone();
    let sender_token = pairs[1].0.clone();
    let recipient_id = requests.recipients_64[1].0.clone();
    let mut stream = api.http.get(format!("{}/v1/stream", api.query)).bearer_auth(&recipient_token).send().await?;
    anyhow::ensure!(stream.status().is_success(), "stream: {}", stream.status());
    let mut stream_lags = Vec::new();
    let mut buffer = String::new();
    for i in 0..100 {
        let marker = format!("stream {} {i}", run.id);
        api.post(&format!("/v1/messages/{recipient_id}"), &json!({"text": marker}), Some(&sender_token)).await?;
        let acked = Instant::now();
        while !buffer.contains(&marker) {
            let chunk = tokio::time::timeout(Duration::from_secs(10), stream.chunk()).await??;
            let chunk = chunk.ok_or_else(|| anyhow::anyhow!("stream ended"))?;
            buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
        stream_lags.push(acked.elapsed());
        buffer.clear();
    }
    drop(stream);
    stream_lags.sort();
    Ok(stream_lags)
}
