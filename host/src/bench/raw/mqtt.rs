//! The raw mqtt client's own publish and consume loops, without Wasmill in between: the
//! figures `wasmill bench --pubsub mqtt` quotes its own as a ratio of.

use std::time::Duration;

use bytes::Bytes;
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, EventLoop};

use super::{RAW_PUBLISH_WINDOW, RawBenchFigures, raw_bench_message};
use crate::error::{Error, Result};
use crate::pubsub::mqtt::{
    MqttConfig, REQUEST_QUEUE, base_options, envelope, leave_nagle_on, parse_url, poll_until,
};

/// The raw client's throughput: QoS 1 publishes until every PUBACK is in, then a consumer
/// (subscribed before, not reading meanwhile) reads and PUBACKs them; in rounds of about
/// 1 MiB of messages.
pub async fn run(url: &str, messages: usize, payload_size: usize) -> Result<RawBenchFigures> {
    let broker = parse_url(url, None)?;
    let config = MqttConfig::default();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let topic = format!("raw_bench_{id}");
    let limit = Duration::from_secs(60);
    let round = crate::pubsub::bench_round(payload_size);

    let mut options = base_options(&broker, &config, format!("wasmill-raw-sub-{id}"));
    // Like a subscription's client (and rumqttc's default).
    leave_nagle_on(&mut options);
    options
        .set_manual_acks(true)
        .set_receive_maximum(Some(u16::MAX))
        .set_outgoing_inflight_upper_limit(1);
    let (consumer, mut consumer_loop) = AsyncClient::new(options, round + 16);
    consumer
        .subscribe(topic.clone(), QoS::AtLeastOnce)
        .await
        .map_err(|e| bench_err("subscribe", e))?;
    bench_poll(&mut consumer_loop, limit, |ev| {
        matches!(ev, Event::Incoming(Packet::SubAck(_)))
    })
    .await?;

    let options = base_options(&broker, &config, format!("wasmill-raw-pub-{id}"));
    let (producer, mut producer_loop) = AsyncClient::new(options, REQUEST_QUEUE);
    let payload = Bytes::from(vec![b'x'; payload_size]);
    let (mut publish_time, mut consume_time) = (Duration::ZERO, Duration::ZERO);
    let mut consumed = 0;
    let mut left = messages;
    while left > 0 {
        let n = left.min(round);
        left -= n;
        let start = std::time::Instant::now();
        // Like `wasmill bench`: wait for the PUBACKs of each window before the next.
        let mut window_start = 0;
        while window_start < n {
            let w = RAW_PUBLISH_WINDOW.min(n - window_start);
            window_start += w;
            let feeder = {
                let (producer, topic, payload) = (producer.clone(), topic.clone(), payload.clone());
                tokio::spawn(async move {
                    for _ in 0..w {
                        let m = raw_bench_message(&payload, start);
                        if producer
                            .publish_with_properties(
                                topic.as_str(),
                                QoS::AtLeastOnce,
                                false,
                                m.payload.clone(),
                                envelope(&m),
                            )
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                })
            };
            let mut acked = 0;
            let published = bench_poll(&mut producer_loop, limit, |ev| {
                if matches!(ev, Event::Incoming(Packet::PubAck(_))) {
                    acked += 1;
                }
                acked == w
            })
            .await;
            feeder.abort();
            published?;
        }
        publish_time += start.elapsed();

        let start = std::time::Instant::now();
        let (mut got, mut acked) = (0, 0);
        let mut ack_failed = None;
        bench_poll(&mut consumer_loop, limit, |ev| {
            match ev {
                Event::Incoming(Packet::Publish(p)) => {
                    got += 1;
                    if let Err(e) = consumer.try_ack(p) {
                        ack_failed = Some(e.to_string());
                        return true;
                    }
                }
                Event::Outgoing(Outgoing::PubAck(_)) => acked += 1,
                _ => {}
            }
            acked == n
        })
        .await?;
        if let Some(e) = ack_failed {
            return Err(bench_err("ack", e));
        }
        consumed += got;
        consume_time += start.elapsed();
    }
    // Leave (both sessions are clean: nothing stays on the broker).
    let _ = consumer.try_disconnect();
    let _ = bench_poll(&mut consumer_loop, Duration::from_secs(2), |ev| {
        matches!(ev, Event::Outgoing(Outgoing::Disconnect))
    })
    .await;
    let _ = producer.try_disconnect();
    let _ = bench_poll(&mut producer_loop, Duration::from_secs(2), |ev| {
        matches!(ev, Event::Outgoing(Outgoing::Disconnect))
    })
    .await;
    Ok(RawBenchFigures {
        publish_per_sec: messages as f64 / publish_time.as_secs_f64().max(1e-9),
        consume_per_sec: consumed as f64 / consume_time.as_secs_f64().max(1e-9),
    })
}

fn bench_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::pubsub_msg("mqtt", format!("raw bench: {what}: {e}"))
}

/// [`poll_until`] for the raw benchmark's errors.
async fn bench_poll(
    eventloop: &mut EventLoop,
    limit: Duration,
    done: impl FnMut(&Event) -> bool,
) -> Result<()> {
    poll_until(eventloop, limit, done)
        .await
        .map_err(|e| bench_err("poll", e))
}
