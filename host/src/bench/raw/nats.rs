//! The raw nats client's own publish and consume loops, without Wasmill in between: the
//! figures `wasmill bench --pubsub nats` quotes its own as a ratio of.

use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt;

use super::{RAW_PUBLISH_WINDOW, RawBenchFigures, raw_bench_message};
use crate::error::{Error, Result};
use crate::pubsub::nats::{headers, nerr};

/// The raw client's throughput: publish, waiting for the acks of each window of
/// [`RAW_PUBLISH_WINDOW`], then pull and ack.
pub async fn run(url: &str, messages: usize, payload_size: usize) -> Result<RawBenchFigures> {
    let client = async_nats::connect(url)
        .await
        .map_err(|e| nerr("connect", e))?;
    let js = jetstream::new(client);
    let topic = format!("raw_bench_{}", uuid::Uuid::new_v4().simple());
    let stream = js
        .get_or_create_stream(jetstream::stream::Config {
            name: topic.clone(),
            subjects: vec![topic.clone()],
            ..Default::default()
        })
        .await
        .map_err(|e| nerr("create stream", e))?;
    let payload = Bytes::from(vec![b'x'; payload_size]);
    let start = std::time::Instant::now();
    let mut acks = Vec::with_capacity(RAW_PUBLISH_WINDOW);
    for _ in 0..messages {
        let m = raw_bench_message(&payload, start);
        acks.push(
            js.publish_with_headers(topic.clone(), headers(&m), m.payload.clone())
                .await
                .map_err(|e| nerr("publish", e))?,
        );
        if acks.len() == RAW_PUBLISH_WINDOW {
            for a in acks.drain(..) {
                a.await.map_err(|e| nerr("publish ack", e))?;
            }
        }
    }
    for a in acks.drain(..) {
        a.await.map_err(|e| nerr("publish ack", e))?;
    }
    let publish = start.elapsed();
    let consumer = stream
        .get_or_create_consumer(
            "raw",
            jetstream::consumer::pull::Config {
                durable_name: Some("raw".into()),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| nerr("create consumer", e))?;
    let start = std::time::Instant::now();
    let mut msgs = consumer.messages().await.map_err(|e| nerr("pull", e))?;
    let mut got = 0;
    while got < messages {
        match tokio::time::timeout(Duration::from_secs(10), msgs.next()).await {
            Ok(Some(Ok(m))) => {
                m.ack().await.map_err(|e| Error::pubsub("nats", "ack", e))?;
                got += 1;
            }
            _ => break,
        }
    }
    let consume = start.elapsed();
    let _ = js.delete_stream(&topic).await;
    Ok(RawBenchFigures {
        publish_per_sec: messages as f64 / publish.as_secs_f64(),
        consume_per_sec: got as f64 / consume.as_secs_f64(),
    })
}
