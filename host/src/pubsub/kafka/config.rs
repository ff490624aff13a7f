//! The settings of `kind = "kafka"` and the librdkafka client configurations made from them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use rdkafka::ClientConfig;
use serde::Deserialize;

use super::NAME;
use crate::error::{Error, Result};
use crate::pubsub::kit::url::scheme;

/// Settings of `kind = "kafka"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// The bootstrap servers: `kafka://host:port[,host:port…]`, or `kafkas://…` for TLS (the
    /// brokers' certificates checked against the system's roots, or against `ca_file`).
    /// `brokers = "host:port,…"` is accepted as well.
    #[serde(alias = "brokers")]
    pub url: String,
    /// A PEM file of the CA that signed the brokers' certificates (with `kafkas://`).
    pub ca_file: Option<PathBuf>,
    /// The consumer group of the subscriptions (default `wasmill`, so handlers of every host
    /// share a topic's partitions).
    pub consumer_group: Option<String>,
    /// Partitions of a topic this backend creates (on first publish or subscribe).
    pub partitions: i32,
    /// Replication factor of a topic this backend creates.
    pub replication_factor: i32,
    /// A metadata key whose value is the Kafka message key, so messages with the same value go
    /// to the same partition, in order. Unset: no key (the producer spreads messages).
    pub partition_key: Option<String>,
    /// How long the group coordinator waits for a silent consumer (a killed host) before its
    /// partitions, and the messages it had not acked, go to the others.
    #[serde(with = "crate::config::duration")]
    pub session_timeout: Duration,
    /// How often acked offsets are committed (in batches, never past an unacked message of
    /// the same partition). A host killed between two commits redelivers at most this much.
    #[serde(with = "crate::config::duration")]
    pub commit_interval: Duration,
    /// Bound on one `publish` call, delivery reports included.
    #[serde(with = "crate::config::duration")]
    pub publish_timeout: Duration,
    /// Delay before a nacked message is delivered again (unless it asked for its own).
    #[serde(with = "crate::config::duration")]
    pub redelivery_delay: Duration,
    /// Extra librdkafka properties (`"compression.type" = "lz4"`, SASL settings, ...), applied
    /// last to every client.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            url: "kafka://127.0.0.1:9092".into(),
            ca_file: None,
            consumer_group: None,
            partitions: 1,
            replication_factor: 1,
            partition_key: None,
            session_timeout: Duration::from_secs(10),
            commit_interval: Duration::from_millis(500),
            publish_timeout: Duration::from_secs(10),
            redelivery_delay: Duration::ZERO,
            properties: BTreeMap::new(),
        }
    }
}

/// The default consumer group.
pub const DEFAULT_GROUP: &str = "wasmill";

impl KafkaConfig {
    /// The bootstrap servers (`host:port,…`) and whether TLS is on.
    pub fn bootstrap(&self) -> Result<(String, bool)> {
        let tls = match scheme(&self.url).as_str() {
            "" | "kafka" => false,
            "kafkas" | "ssl" => true,
            other => {
                return Err(Error::Config(format!(
                    "kafka url {:?}: unknown scheme {other:?}; expected kafka:// or kafkas:// \
                     (TLS)",
                    self.url
                )));
            }
        };
        let servers = self
            .url
            .split_once("://")
            .map_or(self.url.as_str(), |(_, rest)| rest)
            .trim_end_matches('/');
        if servers.is_empty() || servers.split(',').any(|s| !s.contains(':')) {
            return Err(Error::Config(format!(
                "kafka url {:?}: expected host:port[,host:port…]",
                self.url
            )));
        }
        if self.ca_file.is_some() && !tls {
            return Err(Error::Config(format!(
                "kafka: ca_file is set but url {:?} is not kafkas:// (TLS)",
                self.url
            )));
        }
        if self.partitions < 1 || self.replication_factor < 1 {
            return Err(Error::Config(
                "kafka: partitions and replication_factor must be at least 1".into(),
            ));
        }
        Ok((servers.to_string(), tls))
    }

    /// The settings every client shares: servers, TLS, the extra properties.
    pub fn client(&self) -> Result<ClientConfig> {
        Ok(self.with_properties(self.base()?))
    }

    /// Servers and TLS, without the extra properties.
    fn base(&self) -> Result<ClientConfig> {
        let (servers, tls) = self.bootstrap()?;
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", servers)
            .set("client.id", "wasmill")
            // librdkafka reconnects by itself; these bound how fast it tries again.
            .set("reconnect.backoff.ms", "50")
            .set("reconnect.backoff.max.ms", "2000");
        if tls {
            c.set("security.protocol", "ssl");
            if let Some(ca) = &self.ca_file {
                crate::pubsub::kit::tls::read_ca(NAME, ca)?;
                c.set("ssl.ca.location", ca.display().to_string());
            }
        }
        Ok(c)
    }

    /// `c` with the user's properties applied last: they win over the backend's own choices.
    fn with_properties(&self, mut c: ClientConfig) -> ClientConfig {
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// A producer: every message acknowledged by all in-sync replicas, retried in order.
    pub fn producer(&self) -> Result<ClientConfig> {
        let mut c = self.base()?;
        // No linger: a publish waits for its delivery reports, so waiting to fill a batch only
        // adds latency (messages still batch while a request is in flight). Measured with
        // `wasmill bench --pubsub kafka` against Tansu: the relay at concurrency 1 went from
        // 585 to 1,856 msgs/s, publishing from 50,134 to 69,088 msgs/s, against linger.ms = 1.
        c.set("acks", "all")
            .set("linger.ms", "0")
            .set(
                "message.timeout.ms",
                self.publish_timeout.as_millis().to_string(),
            )
            // One request in flight per connection: a retry cannot reorder a partition.
            .set("max.in.flight.requests.per.connection", "1");
        Ok(self.with_properties(c))
    }

    /// A consumer in `group`: offsets stored by the backend after each ack (never by
    /// librdkafka on delivery) and committed every `commit_interval` and at each rebalance. A
    /// new group starts at the beginning of the topic, or at its end for a tail.
    pub fn consumer(&self, group: &str, start_at_end: bool) -> Result<ClientConfig> {
        let mut c = self.base()?;
        c.set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.commit.interval.ms",
                self.commit_interval.as_millis().max(1).to_string(),
            )
            .set(
                "auto.offset.reset",
                if start_at_end { "latest" } else { "earliest" },
            )
            .set(
                "session.timeout.ms",
                self.session_timeout.as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                (self.session_timeout.as_millis() / 4).max(100).to_string(),
            )
            // A topic created after the subscription is picked up soon.
            .set("topic.metadata.refresh.interval.ms", "1000");
        Ok(self.with_properties(c))
    }

    /// The group of the subscriptions.
    pub fn group(&self) -> &str {
        self.consumer_group.as_deref().unwrap_or(DEFAULT_GROUP)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_url(url: &str) -> KafkaConfig {
        KafkaConfig {
            url: url.into(),
            ..KafkaConfig::default()
        }
    }

    #[test]
    fn servers_and_tls_come_from_the_url() {
        assert_eq!(
            with_url("kafka://a:9092,b:9093").bootstrap().unwrap(),
            ("a:9092,b:9093".to_string(), false)
        );
        assert_eq!(
            with_url("kafkas://a:9093/").bootstrap().unwrap(),
            ("a:9093".to_string(), true)
        );
        assert_eq!(
            with_url("a:9092").bootstrap().unwrap(),
            ("a:9092".to_string(), false)
        );
        let err = with_url("http://a:1").bootstrap().unwrap_err().to_string();
        assert!(err.contains("unknown scheme"), "{err}");
        let err = with_url("kafka://a").bootstrap().unwrap_err().to_string();
        assert!(err.contains("host:port"), "{err}");
    }

    #[test]
    fn a_ca_file_needs_tls() {
        let c = KafkaConfig {
            ca_file: Some("/tmp/ca.pem".into()),
            ..with_url("kafka://a:9092")
        };
        let err = c.bootstrap().unwrap_err().to_string();
        assert!(err.contains("ca_file"), "{err}");
    }

    #[test]
    fn offsets_are_stored_by_the_backend_and_user_properties_win() {
        let mut c = KafkaConfig::default();
        c.properties
            .insert("auto.commit.interval.ms".into(), "42".into());
        let consumer = c.consumer("g", false).unwrap();
        assert_eq!(consumer.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(consumer.get("auto.offset.reset"), Some("earliest"));
        assert_eq!(consumer.get("auto.commit.interval.ms"), Some("42"));
        let tail = c.consumer("t", true).unwrap();
        assert_eq!(tail.get("auto.offset.reset"), Some("latest"));
    }
}
