//! The settings of `kind = "amqp"`.

use super::*;

/// The exchange type of the topics' exchanges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeType {
    /// Every bound queue gets every message (the routing key is ignored).
    #[default]
    Fanout,
    /// Queues bound with the topic as binding key get the messages.
    Direct,
    /// Like `direct`, with `*`/`#` patterns in binding keys.
    Topic,
}

impl ExchangeType {
    pub(super) fn kind(self) -> ExchangeKind {
        match self {
            ExchangeType::Fanout => ExchangeKind::Fanout,
            ExchangeType::Direct => ExchangeKind::Direct,
            ExchangeType::Topic => ExchangeKind::Topic,
        }
    }
}

/// Settings of `kind = "amqp"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmqpConfig {
    /// `amqp://user:password@host:port/vhost` (the default vhost `/` is written `%2f`), or
    /// `amqps://...` for TLS (the broker's certificate checked against the system's roots, or
    /// against `ca_file` when it is set).
    pub url: String,
    /// A PEM file of the CA that signed the broker's certificate (with `amqps://`).
    pub ca_file: Option<PathBuf>,
    /// Consumer group: subscriptions read the queue `{topic}_{group}`; without a group, the
    /// queue `{topic}`.
    pub consumer_group: Option<String>,
    /// Type of the per-topic exchanges; the topic is the routing and binding key.
    pub exchange_type: ExchangeType,
    /// Durable exchanges and queues and persistent messages (they survive a broker restart).
    pub durable: bool,
    /// Prefetch count of a subscription's channel: how many messages the broker pushes
    /// ahead of the acks. Unset: 128, or the subscription's `max_in_flight` if larger. The
    /// subscription still hands them over `max_in_flight` at a time, and a nacked message is
    /// delivered again by the subscription itself, so one in flight keeps publish order.
    /// Lower it to spread a group's messages more finely across its subscribers.
    pub prefetch: Option<u16>,
    /// Delete a group's queue after it has had no consumer for this long (RabbitMQ's
    /// `x-expires`); its messages go with it. Unset: queues live until deleted.
    #[serde(deserialize_with = "optional_duration")]
    pub queue_expires: Option<Duration>,
    /// Wait before delivering a nacked message again, unless the message asks for its own delay.
    #[serde(with = "crate::config::duration")]
    pub nack_requeue_delay: Duration,
    /// Bound on opening a connection.
    #[serde(with = "crate::config::duration")]
    pub connect_timeout: Duration,
    /// Bound on one `publish` call, confirms included.
    #[serde(with = "crate::config::duration")]
    pub publish_timeout: Duration,
    /// First wait before a subscription reconnects; doubled after each failure.
    #[serde(with = "crate::config::duration")]
    pub reconnect_backoff: Duration,
    /// Longest wait between reconnection attempts.
    #[serde(with = "crate::config::duration")]
    pub reconnect_max_backoff: Duration,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            ca_file: None,
            consumer_group: None,
            exchange_type: ExchangeType::Fanout,
            durable: true,
            prefetch: None,
            queue_expires: None,
            nack_requeue_delay: Duration::from_millis(100),
            connect_timeout: Duration::from_secs(10),
            publish_timeout: Duration::from_secs(30),
            reconnect_backoff: Duration::from_millis(100),
            reconnect_max_backoff: Duration::from_secs(5),
        }
    }
}

pub(super) fn optional_duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    crate::config::duration::parse(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}
