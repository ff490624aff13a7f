//! The raw redis client's own publish and consume loops, without Wasmill in between: the
//! figures `wasmill bench --pubsub redis` quotes its own as a ratio of.

use bytes::Bytes;
use redis::Value;

use super::{RawBenchFigures, raw_bench_message};
use crate::error::Result;
use crate::pubsub::redis::{parse_read, rerr};

/// The raw client's throughput: XADD in pipelines of 100 (each entry with the fields a Wasmill
/// message has), then XREADGROUP COUNT 100 + XACK.
pub async fn run(url: &str, messages: usize, payload_size: usize) -> Result<RawBenchFigures> {
    let client = redis::Client::open(url).map_err(|e| rerr("open", e))?;
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| rerr("connect", e))?;
    let topic = format!("raw_bench_{}", uuid::Uuid::new_v4().simple());
    let payload = Bytes::from(vec![b'x'; payload_size]);
    let start = std::time::Instant::now();
    let mut sent = 0;
    while sent < messages {
        let n = 100.min(messages - sent);
        let mut pipe = redis::pipe();
        for _ in 0..n {
            // The fields a Wasmill message has: uuid, metadata as JSON, payload.
            let m = raw_bench_message(&payload, start);
            let metadata = format!(r#"{{"sent_at":"{}"}}"#, m.metadata.get("sent_at"));
            pipe.cmd("XADD")
                .arg(&topic)
                .arg("*")
                .arg("uuid")
                .arg(&m.uuid)
                .arg("metadata")
                .arg(metadata)
                .arg("payload")
                .arg(&m.payload[..]);
        }
        pipe.query_async::<Value>(&mut con)
            .await
            .map_err(|e| rerr("XADD", e))?;
        sent += n;
    }
    let publish = start.elapsed();
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&topic)
        .arg("g")
        .arg("0")
        .query_async::<Value>(&mut con)
        .await
        .map_err(|e| rerr("XGROUP", e))?;
    let start = std::time::Instant::now();
    let mut got = 0;
    while got < messages {
        let v: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("g")
            .arg("c")
            .arg("COUNT")
            .arg(100)
            .arg("STREAMS")
            .arg(&topic)
            .arg(">")
            .query_async(&mut con)
            .await
            .map_err(|e| rerr("XREADGROUP", e))?;
        let entries = parse_read(v);
        if entries.is_empty() {
            break;
        }
        let mut ack = redis::cmd("XACK");
        ack.arg(&topic).arg("g");
        for e in &entries {
            ack.arg(&e.id);
        }
        ack.query_async::<i64>(&mut con)
            .await
            .map_err(|e| rerr("XACK", e))?;
        got += entries.len();
    }
    let consume = start.elapsed();
    redis::cmd("DEL")
        .arg(&topic)
        .query_async::<i64>(&mut con)
        .await
        .map_err(|e| rerr("DEL", e))?;
    Ok(RawBenchFigures {
        publish_per_sec: messages as f64 / publish.as_secs_f64(),
        consume_per_sec: got as f64 / consume.as_secs_f64(),
    })
}
