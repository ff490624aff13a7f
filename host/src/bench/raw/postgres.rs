//! The raw postgres client's own publish and consume loops, without Wasmill in between: the
//! figures `wasmill bench --pubsub postgres` quotes its own as a ratio of.

use super::RawBenchFigures;
use crate::error::Result;
use crate::pubsub::postgres::{PostgresConfig, PostgresPubSub, db_err, lock_topic};

/// The raw client's throughput: INSERTs in transactions of 100, then one SELECT + UPDATE per
/// message (what the backend does, without Wasmill around it).
pub async fn run(url: &str, messages: usize, payload_size: usize) -> Result<RawBenchFigures> {
    let ps = PostgresPubSub::connect(PostgresConfig {
        url: url.to_string(),
        ..PostgresConfig::default()
    })
    .await?;
    let topic = format!("raw_bench_{}", uuid::Uuid::new_v4().simple());
    let payload = vec![b'x'; payload_size];
    let start = std::time::Instant::now();
    let mut sent = 0;
    while sent < messages {
        let n = 100.min(messages - sent);
        let mut tx = ps.pool.begin().await.map_err(|e| db_err("begin", e))?;
        lock_topic(&mut tx, &topic).await?;
        for _ in 0..n {
            sqlx::query("INSERT INTO wasmill_messages (topic, uuid, metadata, payload) VALUES ($1, $2, '{}', $3)")
                .bind(&topic)
                .bind(uuid::Uuid::new_v4().to_string())
                .bind(&payload[..])
                .execute(&mut *tx)
                .await
                .map_err(|e| db_err("insert", e))?;
        }
        tx.commit().await.map_err(|e| db_err("commit", e))?;
        sent += n;
    }
    let publish = start.elapsed();
    ps.ensure_group(&topic).await?;
    let start = std::time::Instant::now();
    let mut got = 0;
    loop {
        let mut tx = ps.pool.begin().await.map_err(|e| db_err("begin", e))?;
        let Some((offset, _)) = ps.next_row(&mut tx, &topic).await? else {
            break;
        };
        sqlx::query(
            "UPDATE wasmill_offsets SET acked = $1 WHERE topic = $2 AND consumer_group = $3",
        )
        .bind(offset)
        .bind(&topic)
        .bind(ps.group())
        .execute(&mut *tx)
        .await
        .map_err(|e| db_err("ack", e))?;
        tx.commit().await.map_err(|e| db_err("commit", e))?;
        got += 1;
    }
    let consume = start.elapsed();
    Ok(RawBenchFigures {
        publish_per_sec: messages as f64 / publish.as_secs_f64(),
        consume_per_sec: got as f64 / consume.as_secs_f64(),
    })
}
