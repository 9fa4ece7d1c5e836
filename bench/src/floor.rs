//! The raw floor: the same broker and the same Redis, no DevConnect code.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use redis::aio::MultiplexedConnection;

use crate::measure::{Pair, measure, plain_produce};
use crate::{Args, Run};

/// A plain produce (acks=all) of a 400-byte record to a topic of this run;
/// returns the producer too, for seeding the feed.
pub async fn produce(args: &Args, run: &Run) -> anyhow::Result<(Arc<FutureProducer>, Pair)> {
    let topic = format!("bench-raw-{}", run.id);
    platform::kafka::ensure_topics(&args.kafka_brokers, std::slice::from_ref(&topic), 3, 1).await?;
    let producer = Arc::new(platform::kafka::event_producer(&args.kafka_brokers, Duration::from_secs(10))?);
    let warm = FutureRecord::to(&topic).key("warm").payload("warm");
    producer.send(warm, Duration::from_secs(10)).await.map_err(|(e, _)| e)?;
    let one = plain_produce(&producer, &topic, 1, run.serial).await?;
    let many = plain_produce(&producer, &topic, 64, run.parallel).await?;
    let pair = Pair { one, many };
    Ok((producer, pair))
}

/// A plain Redis GET of a value the size of a cached user; returns the
/// connection too, for the feed's floor.
pub async fn redis_get(args: &Args, run: &Run) -> anyhow::Result<(MultiplexedConnection, Pair)> {
    let redis = redis::Client::open(args.redis_url.as_str())?.get_multiplexed_async_connection().await?;
    let raw_key = format!("bench:raw:{}", run.id);
    let user_sized = "x".repeat(350);
    redis::cmd("SET").arg(&raw_key).arg(&user_sized).query_async::<()>(&mut redis.clone()).await?;
    let redis_get = |c: usize, ops: usize| {
        let (redis, key) = (redis.clone(), raw_key.clone());
        measure(c, ops, move |_| {
            let (mut redis, key) = (redis.clone(), key.clone());
            async move {
                redis::cmd("GET").arg(&key).query_async::<Option<String>>(&mut redis).await?;
                Ok(())
            }
        })
    };
    let pair = Pair { one: redis_get(1, run.serial * 5).await?, many: redis_get(64, run.parallel * 5).await? };
    Ok((redis, pair))
}
