//! The raw clients' loops `wasmill bench --pubsub KIND` compares Wasmill with: each broker's
//! own client publishing and consuming what a bench message carries, with nothing of Wasmill
//! in between. They live here, not in the backends, so no benchmark code ships in a backend.

use crate::message::Message;

#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sqlite")]
pub mod sqlite;

/// How many messages the raw clients' publish loops send before waiting for their confirms:
/// the batch `wasmill bench` publishes per call, so both publish loops wait equally often.
pub const RAW_PUBLISH_WINDOW: usize = 100;

/// Throughput of a broker's own client, measured without Wasmill in between, so that
/// `wasmill bench` can quote Wasmill's figures as a ratio of the raw client's.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RawBenchFigures {
    /// Messages published per second (publish loop alone).
    pub publish_per_sec: f64,
    /// Messages consumed and acknowledged per second (consume loop alone).
    pub consume_per_sec: f64,
}

/// A message as the raw clients' publish loops send it: what a `wasmill bench` message carries
/// (an id and one metadata pair, the time it was sent, `since` the loop started), so the raw
/// client and Wasmill put the same content on the broker and read the same back. Each raw loop
/// encodes it its own way, as the backend's envelope does (fields, headers, properties).
pub fn raw_bench_message(payload: &bytes::Bytes, since: std::time::Instant) -> Message {
    Message::new(payload.clone()).with_metadata("sent_at", since.elapsed().as_nanos().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raw_bench_message_carries_what_a_bench_message_does() {
        let payload = bytes::Bytes::from_static(b"xyz");
        let m = raw_bench_message(&payload, std::time::Instant::now());
        assert_eq!(&m.payload[..], b"xyz");
        assert!(!m.uuid.is_empty());
        assert_eq!(m.metadata.len(), 1);
        assert!(m.metadata.get("sent_at").parse::<u128>().is_ok());
        assert_ne!(
            m.uuid,
            raw_bench_message(&payload, std::time::Instant::now()).uuid
        );
    }

    /// Each raw loop runs against the machine's server and reports figures above zero.
    async fn positive(
        kind: &str,
        run: impl std::future::Future<Output = crate::error::Result<RawBenchFigures>>,
    ) {
        let f = run
            .await
            .unwrap_or_else(|e| panic!("{kind} raw loop: {}", e.report()));
        eprintln!("{kind} raw loop: {f:?}");
        assert!(
            f.publish_per_sec > 0.0 && f.consume_per_sec > 0.0,
            "{kind}: {f:?}"
        );
    }

    #[cfg(feature = "sqlite")]
    #[tokio::test]
    async fn sqlite_raw_loop() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("b.db").display());
        positive("sqlite", sqlite::run(&url, 200, 100)).await;
    }

    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn redis_raw_loop() {
        positive("redis", redis::run("redis://127.0.0.1:6379", 300, 100)).await;
    }

    #[cfg(feature = "nats")]
    #[tokio::test]
    async fn nats_raw_loop() {
        positive("nats", nats::run("nats://127.0.0.1:4222", 300, 100)).await;
    }

    #[cfg(feature = "postgres")]
    #[tokio::test]
    async fn postgres_raw_loop() {
        let url = "postgres://postgres@127.0.0.1:5432/test";
        positive("postgres", postgres::run(url, 300, 100)).await;
    }

    #[cfg(feature = "mysql")]
    #[tokio::test]
    async fn mysql_raw_loop() {
        positive(
            "mysql",
            mysql::run("mysql://root@127.0.0.1:3306/test", 300, 100),
        )
        .await;
    }

    #[cfg(feature = "amqp")]
    #[tokio::test]
    async fn amqp_raw_loop() {
        let url = "amqp://guest:guest@127.0.0.1:5672/%2f";
        positive("amqp", amqp::run(url, 300, 100)).await;
    }

    #[cfg(feature = "mqtt")]
    #[tokio::test]
    async fn mqtt_raw_loop() {
        positive("mqtt", mqtt::run("mqtt://127.0.0.1:1883", 500, 100)).await;
    }

    #[cfg(feature = "kafka")]
    #[tokio::test]
    async fn kafka_raw_loop() {
        let config = crate::pubsub::kafka::KafkaConfig {
            url: crate::pubsub::testkit::kafka_url(),
            ..Default::default()
        };
        positive("kafka", kafka::run(&config, 300, 100)).await;
    }
}
