//! Connection requests: each op a distinct pair, sent and then accepted.

use std::sync::{Arc, Mutex};

use crate::Run;
use crate::measure::{Pair, Stats, measure};

/// (user id, token) of each recipient.
pub type Recipients = Arc<Vec<(String, String)>>;
type RequestIds = Arc<Mutex<Vec<String>>>;

pub struct Requests {
    pub send: Pair,
    pub review: Pair,
    /// Tokens of the 64 (gold) senders.
    pub senders: Arc<Vec<String>>,
    /// The recipients of the parallel run, each now connected with the
    /// sender `i % 64`.
    pub recipients_64: Recipients,
}

pub async fn measure_requests(run: &Run) -> anyhow::Result<Requests> {
    let senders = Arc::new(gold_senders(run).await?);
    let recipients_64 = Arc::new(recipients(run, "s64", 64..(run.parallel / 4).max(65)).await?);
    let recipients_1 = Arc::new(recipients(run, "s1", 0..run.serial / 4).await?);
    let request_ids_64 = Arc::new(Mutex::new(vec![String::new(); recipients_64.len()]));
    let request_ids_1 = Arc::new(Mutex::new(vec![String::new(); recipients_1.len()]));
    let send = Pair {
        one: send(run, 1, &senders, Arc::clone(&recipients_1), Arc::clone(&request_ids_1)).await?,
        many: send(run, 64, &senders, Arc::clone(&recipients_64), Arc::clone(&request_ids_64)).await?,
    };
    let review = Pair {
        one: review(run, 1, Arc::clone(&recipients_1), request_ids_1).await?,
        many: review(run, 64, Arc::clone(&recipients_64), request_ids_64).await?,
    };
    Ok(Requests { send, review, senders, recipients_64 })
}

/// The first 64 users of the parallel sign-ups, made gold so that the
/// daily limit does not cap the benchmark.
async fn gold_senders(run: &Run) -> anyhow::Result<Vec<String>> {
    let mut senders = Vec::new();
    for i in 0..64 {
        let token = run.api.login(&run.email("s64", i)).await?;
        run.api.upgrade_to_gold(&token).await?;
        senders.push(token);
    }
    Ok(senders)
}

/// (user id, token) of the users `range` of a sign-up phase.
async fn recipients(run: &Run, phase: &str, range: std::ops::Range<usize>) -> anyhow::Result<Vec<(String, String)>> {
    let mut v = Vec::new();
    for i in range {
        let e = run.email(phase, i);
        v.push((run.api.user_id_of(&e).await?, run.api.login(&e).await?));
    }
    Ok(v)
}

/// Sender `i % 64` asks recipient `i`; the request ids land in `ids`.
async fn send(
    run: &Run,
    c: usize,
    senders: &Arc<Vec<String>>,
    recipients: Recipients,
    ids: RequestIds,
) -> anyhow::Result<Stats> {
    let (api, senders) = (Arc::clone(&run.api), Arc::clone(senders));
    let ops = recipients.len();
    measure(c, ops, move |i| {
        let (api, senders, recipients, ids) =
            (Arc::clone(&api), Arc::clone(&senders), Arc::clone(&recipients), Arc::clone(&ids));
        async move {
            let id =
                api.request_id(&format!("/v1/requests/send/interested/{}", recipients[i].0), &senders[i % 64]).await?;
            ids.lock().map_err(|_| anyhow::anyhow!("poisoned"))?[i] = id;
            Ok(())
        }
    })
    .await
}

/// Recipient `i` accepts request `ids[i]`.
async fn review(run: &Run, c: usize, recipients: Recipients, ids: RequestIds) -> anyhow::Result<Stats> {
    let api = Arc::clone(&run.api);
    let ids: Arc<Vec<String>> = Arc::new(ids.lock().map(|v| v.clone()).unwrap_or_default());
    measure(c, recipients.len(), move |i| {
        let (api, recipients, ids) = (Arc::clone(&api), Arc::clone(&recipients), Arc::clone(&ids));
        async move {
            api.request_id(&format!("/v1/requests/review/accepted/{}", ids[i]), &recipients[i].1).await.map(|_| ())
        }
    })
    .await
}
