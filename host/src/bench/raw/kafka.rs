//! The raw librdkafka client's own publish and consume loops, without Wasmill in between: the
//! figures `wasmill bench --pubsub kafka` quotes its own as a ratio of.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::{RAW_PUBLISH_WINDOW, RawBenchFigures, raw_bench_message};
use crate::error::Result;
use crate::pubsub::kafka::{KafkaConfig, UUID_HEADER, kerr};

/// The raw client's throughput on a fresh topic of the configured partitions: publish with
/// the producer settings the backend uses ([`RAW_PUBLISH_WINDOW`] deliveries awaited at a
/// time), then consume in a fresh group and commit every [`RAW_PUBLISH_WINDOW`] messages.
/// Each message carries the uuid header and one metadata header, as a bench message does.
pub async fn run(
    config: &KafkaConfig,
    messages: usize,
    payload_size: usize,
) -> Result<RawBenchFigures> {
    let topic = format!("raw_bench_{}", uuid::Uuid::new_v4().simple());
    let admin: AdminClient<DefaultClientContext> = config
        .client()?
        .create()
        .map_err(|e| kerr("admin client", e))?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let new = NewTopic::new(
        &topic,
        config.partitions,
        TopicReplication::Fixed(config.replication_factor),
    );
    admin
        .create_topics([&new], &options)
        .await
        .map_err(|e| kerr("create topic", e))?;
    let producer: FutureProducer = config
        .producer()?
        .create()
        .map_err(|e| kerr("producer", e))?;

    let payload = Bytes::from(vec![b'x'; payload_size]);
    let start = Instant::now();
    let mut window = Vec::with_capacity(RAW_PUBLISH_WINDOW);
    for i in 0..messages {
        let m = raw_bench_message(&payload, start);
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: UUID_HEADER,
                value: Some(m.uuid.as_str()),
            })
            .insert(Header {
                key: "sent_at",
                value: Some(m.metadata.get("sent_at")),
            });
        let record = FutureRecord::<str, [u8]>::to(&topic)
            .payload(&payload[..])
            .headers(headers);
        window.push(producer.send(record, Duration::from_secs(10)));
        if window.len() == RAW_PUBLISH_WINDOW || i + 1 == messages {
            for r in futures::future::join_all(window.drain(..)).await {
                r.map_err(|(e, _)| kerr("publish", e))?;
            }
        }
    }
    let publish = start.elapsed();

    let group = format!("raw_bench_{}", uuid::Uuid::new_v4().simple());
    let consumer: StreamConsumer = config
        .consumer(&group, false)?
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| kerr("consumer", e))?;
    consumer
        .subscribe(&[&topic])
        .map_err(|e| kerr("subscribe", e))?;
    let start = Instant::now();
    let mut got = 0;
    while got < messages {
        match tokio::time::timeout(Duration::from_secs(10), consumer.recv()).await {
            Ok(Ok(m)) => {
                got += 1;
                if got % RAW_PUBLISH_WINDOW == 0 || got == messages {
                    consumer
                        .commit_message(&m, CommitMode::Async)
                        .map_err(|e| kerr("commit", e))?;
                }
                let _ = m.payload();
            }
            _ => break,
        }
    }
    let consume = start.elapsed();
    drop(consumer);
    let _ = admin.delete_topics(&[&topic], &options).await;
    Ok(RawBenchFigures {
        publish_per_sec: messages as f64 / publish.as_secs_f64(),
        consume_per_sec: got as f64 / consume.as_secs_f64(),
    })
}
