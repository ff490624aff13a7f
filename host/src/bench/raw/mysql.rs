//! The raw mysql client's own publish and consume loops, without Wasmill in between: the
//! figures `wasmill bench --pubsub mysql` quotes its own as a ratio of.

use std::time::Instant;

use sqlx::{AssertSqlSafe, Row};

use super::RawBenchFigures;
use crate::error::Result;
use crate::pubsub::Publisher;
use crate::pubsub::mysql::{MysqlConfig, MysqlPubSub, Row3, db_err};

/// The raw client's throughput: multi-row INSERTs in transactions of 100 under the topic
/// lock, then transactions that claim the offset row, read 100 rows and advance the offset,
/// written with sqlx's transaction API as a hand-written client would (the backend itself
/// renews its claim in one round trip and reads the next rows while a batch is delivered).
pub async fn run(url: &str, messages: usize, payload_size: usize) -> Result<RawBenchFigures> {
    let ps = MysqlPubSub::connect(MysqlConfig {
        url: url.to_string(),
        consumer_group: Some("raw_bench".into()),
        ..MysqlConfig::default()
    })
    .await?;
    let topic = format!("raw_bench_{}", uuid::Uuid::new_v4().simple());
    let table = ps.ensure_topic(&topic).await?;
    ps.ensure_group(&table).await?;
    let figures = bench_loops(&ps, &table, messages, payload_size).await;
    // Leave nothing behind, whatever happened.
    let _ = sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS `{table}`")))
        .execute(&ps.pool)
        .await;
    let _ = sqlx::query("DELETE FROM wasmill_offsets WHERE topic_table = ?")
        .bind(&table)
        .execute(&ps.pool)
        .await;
    let _ = sqlx::query("DELETE FROM wasmill_topics WHERE name = ?")
        .bind(&table)
        .execute(&ps.pool)
        .await;
    ps.forget_table(&table);
    Publisher::close(&ps).await?;
    figures
}

async fn bench_loops(
    ps: &MysqlPubSub,
    table: &str,
    messages: usize,
    payload_size: usize,
) -> Result<RawBenchFigures> {
    let payload = vec![b'x'; payload_size];
    let uuids: Vec<String> = (0..messages)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    let start = Instant::now();
    for chunk in uuids.chunks(100) {
        let rows: Vec<Row3<'_>> = chunk
            .iter()
            .map(|u| (u.as_str(), "{}".to_string(), &payload[..]))
            .collect();
        ps.publish_rows(table, &rows, &[]).await?;
    }
    let publish = start.elapsed();

    let start = Instant::now();
    let mut got = 0usize;
    let read = format!(
        "SELECT `offset`, uuid, metadata, payload FROM `{table}` WHERE `offset` > ? ORDER BY `offset` LIMIT 100"
    );
    loop {
        let mut tx = ps.pool.begin().await.map_err(|e| db_err("begin", e))?;
        let acked: i64 = sqlx::query_scalar(
            "SELECT acked FROM wasmill_offsets WHERE topic_table = ? AND consumer_group = ? FOR UPDATE",
        )
        .bind(table)
        .bind(ps.group())
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| db_err("claim offset", e))?;
        let rows = sqlx::query(AssertSqlSafe(read.clone()))
            .bind(acked)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| db_err("read", e))?;
        let Some(last) = rows.last() else { break };
        let last: i64 = last.try_get(0).map_err(|e| db_err("read offset", e))?;
        got += rows.len();
        sqlx::query(
            "UPDATE wasmill_offsets SET acked = ? WHERE topic_table = ? AND consumer_group = ?",
        )
        .bind(last)
        .bind(table)
        .bind(ps.group())
        .execute(&mut *tx)
        .await
        .map_err(|e| db_err("ack", e))?;
        tx.commit().await.map_err(|e| db_err("commit", e))?;
    }
    let consume = start.elapsed();
    Ok(RawBenchFigures {
        publish_per_sec: messages as f64 / publish.as_secs_f64().max(1e-9),
        consume_per_sec: got as f64 / consume.as_secs_f64().max(1e-9),
    })
}
