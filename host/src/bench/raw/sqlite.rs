//! The raw sqlite client's own publish and consume loops, without Wasmill in between: the
//! figures `wasmill bench --pubsub sqlite` quotes its own as a ratio of.

use super::RawBenchFigures;
use crate::error::Result;
use crate::pubsub::sqlite::{SqliteConfig, SqlitePubSub, db_err};

/// The raw client's throughput on a file: inserts in one transaction per 100, then reads and
/// advances an offset per message — the work the backend does, without Wasmill around it.
pub async fn run(url: &str, messages: usize, payload_size: usize) -> Result<RawBenchFigures> {
    let ps = SqlitePubSub::connect(SqliteConfig {
        url: url.to_string(),
        ..SqliteConfig::default()
    })
    .await?;
    let topic = format!("raw_bench_{}", uuid::Uuid::new_v4().simple());
    let payload = vec![b'x'; payload_size];
    let start = std::time::Instant::now();
    for chunk in (0..messages).collect::<Vec<_>>().chunks(100) {
        let mut tx = ps.pool.begin().await.map_err(|e| db_err("begin", e))?;
        for _ in chunk {
            sqlx::query("INSERT INTO wasmill_messages (topic, uuid, metadata, payload) VALUES (?, ?, '{}', ?)")
                .bind(&topic)
                .bind(uuid::Uuid::new_v4().to_string())
                .bind(&payload[..])
                .execute(&mut *tx)
                .await
                .map_err(|e| db_err("insert", e))?;
        }
        tx.commit().await.map_err(|e| db_err("commit", e))?;
    }
    let publish = start.elapsed();
    ps.ensure_group(&topic).await?;
    let start = std::time::Instant::now();
    while let Some((offset, _)) = ps.next_row(&topic).await? {
        ps.ack(&topic, offset).await?;
    }
    let consume = start.elapsed();
    Ok(RawBenchFigures {
        publish_per_sec: messages as f64 / publish.as_secs_f64(),
        consume_per_sec: messages as f64 / consume.as_secs_f64(),
    })
}
