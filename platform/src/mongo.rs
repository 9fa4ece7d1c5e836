use mongodb::{Client, options::ClientOptions};

/// Connects with `retryWrites` forced off: on SecantusDB the server keeps a
/// record per retryable write and slows ~15x after ~10k writes (docs/stack.md).
/// The projector retries whole batches itself, idempotently.
pub async fn connect(uri: &str, app_name: &str) -> anyhow::Result<Client> {
    let mut options = ClientOptions::parse(uri).await?;
    options.retry_writes = Some(false);
    options.app_name = Some(app_name.to_owned());
    options.server_selection_timeout = Some(std::time::Duration::from_secs(5));
    options.connect_timeout = Some(std::time::Duration::from_secs(3));
    Ok(Client::with_options(options)?)
}

/// True when the server answers a ping.
pub async fn ping(client: &Client) -> bool {
    client.database("admin").run_command(mongodb::bson::doc! { "ping": 1 }).await.is_ok()
}

/// The documents of `collection` whose `_id` is one of `ids` (string ids),
/// in no particular order: a point lookup by `_id`, the one read the servers
/// we run answer fast at any size. No ids, no round trip.
pub async fn find_by_ids<T>(collection: &mongodb::Collection<T>, ids: &[String]) -> mongodb::error::Result<Vec<T>>
where
    T: serde::de::DeserializeOwned + Send + Sync,
{
    use futures::TryStreamExt;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let wanted: Vec<mongodb::bson::Bson> = ids.iter().map(|id| mongodb::bson::Bson::String(id.clone())).collect();
    collection.find(mongodb::bson::doc! { "_id": { "$in": wanted } }).await?.try_collect().await
}
