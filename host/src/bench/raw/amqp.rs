//! The raw amqp client's own publish and consume loops, without Wasmill in between: the
//! figures `wasmill bench --pubsub amqp` quotes its own as a ratio of.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{FieldTable, ShortString};
use lapin::{Confirmation, ExchangeKind};

use super::{RAW_PUBLISH_WINDOW, RawBenchFigures, raw_bench_message};
use crate::error::{Error, Result};
use crate::pubsub::amqp::{lerr, open_connection, parse_uri, properties};

/// The raw client's throughput: persistent messages to a durable fanout exchange with
/// publisher confirms (awaited [`RAW_PUBLISH_WINDOW`] at a time), then consume (prefetch 256) and ack each.
/// Each message carries what one of `wasmill bench`'s carries on the wire (a message id, the
/// uuid header and one metadata header, the send time), so both put the same bytes on the
/// broker.
pub async fn run(url: &str, messages: usize, payload_size: usize) -> Result<RawBenchFigures> {
    let uri = parse_uri(url)?;
    let tls = OwnedTLSConfig::default();
    let conn = open_connection(&uri, &tls, url, Duration::from_secs(10)).await?;
    let channel = conn
        .create_channel()
        .await
        .map_err(|e| lerr("open channel", e))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| lerr("enable publisher confirms", e))?;
    let name = format!("raw_bench_{}", uuid::Uuid::new_v4().simple());
    let short_name: ShortString = name.as_str().into();
    channel
        .exchange_declare(
            short_name.clone(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| lerr("declare exchange", e))?;
    channel
        .queue_declare(
            short_name.clone(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| lerr("declare queue", e))?;
    channel
        .queue_bind(
            short_name.clone(),
            short_name.clone(),
            ShortString::default(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| lerr("bind queue", e))?;

    let payload = Bytes::from(vec![b'x'; payload_size]);
    let start = std::time::Instant::now();
    let mut confirms = Vec::with_capacity(RAW_PUBLISH_WINDOW);
    for i in 0..messages {
        let props = properties(&raw_bench_message(&payload, start), true)?;
        confirms.push(
            channel
                .basic_publish(
                    short_name.clone(),
                    ShortString::default(),
                    BasicPublishOptions::default(),
                    &payload,
                    props,
                )
                .await
                .map_err(|e| lerr("publish", e))?,
        );
        if confirms.len() == RAW_PUBLISH_WINDOW || i + 1 == messages {
            for c in confirms.drain(..) {
                if let Confirmation::Nack(_) = c.await.map_err(|e| lerr("publish confirm", e))? {
                    return Err(Error::pubsub_msg(
                        "amqp",
                        "raw bench: the broker nacked a message",
                    ));
                }
            }
        }
    }
    let publish = start.elapsed();

    channel
        .basic_qos(256, BasicQosOptions::default())
        .await
        .map_err(|e| lerr("set prefetch", e))?;
    let mut consumer = channel
        .basic_consume(
            short_name.clone(),
            "raw_bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| lerr("consume", e))?;
    let start = std::time::Instant::now();
    let mut got = 0;
    while got < messages {
        match tokio::time::timeout(Duration::from_secs(10), consumer.next()).await {
            Ok(Some(Ok(d))) => {
                d.acker
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(|e| lerr("ack", e))?;
                got += 1;
            }
            _ => break,
        }
    }
    let consume = start.elapsed();
    drop(consumer);
    let _ = channel
        .queue_delete(short_name.clone(), QueueDeleteOptions::default())
        .await;
    let _ = channel
        .exchange_delete(short_name, ExchangeDeleteOptions::default())
        .await;
    let _ = conn.close(200, "OK".into()).await;
    Ok(RawBenchFigures {
        publish_per_sec: messages as f64 / publish.as_secs_f64(),
        consume_per_sec: got as f64 / consume.as_secs_f64(),
    })
}
