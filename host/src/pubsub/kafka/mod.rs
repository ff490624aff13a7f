//! Kafka, through librdkafka (the `rdkafka` crate, its vendored source built statically).
//!
//! - **Topics** are created on first use (publish or subscribe) with `partitions` and
//!   `replication_factor`; an existing topic is left as it is. `remove_topic` deletes one.
//! - **Publish**: every message with `acks=all`, one request in flight per connection (a retry
//!   cannot reorder a partition); `publish` returns once the broker acknowledged every message
//!   of the call. The uuid travels in the `_watermill_message_uuid` header (as Watermill's
//!   Kafka marshaler does) and each metadata entry in a header of its own. With
//!   `partition_key = "KEY"`, the metadata value of `KEY` is the Kafka key, so messages with
//!   the same value share a partition and its order.
//! - **Subscribe**: a consumer of its own per subscription, in the Kafka group
//!   `{consumer_group}.{topic}` (default group `wasmill`): one Kafka group per topic, so a
//!   handler starting or stopping rebalances only its own topic's consumers (one group across
//!   topics stalled every handler of the group at each rebalance, and on Tansu never settled).
//!   A new group starts at the beginning of the topic. At-least-once: an offset is
//!   committed only after the handler acked the message, in batches every `commit_interval`,
//!   never past an unacked message of the same partition ([`consume`]). A nack delivers the
//!   message again from memory, in its partition's order. A consumer that dies (a host killed)
//!   loses its partitions after `session_timeout`; their next owner reads from the last commit,
//!   so what was handled but not committed comes again (a duplicate), nothing is lost.
//! - **Reconnect**: librdkafka's own; a broker that goes away and comes back is found again.
//! - **Tails** (`wasmill tail`, SSE): a group of their own that starts at the topic's end and
//!   is deleted when the tail ends.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::kit::redacted;
use super::{Publisher, SubscribeOptions, Subscriber, Subscription, closed};
use crate::error::{Error, Result};
use crate::message::Message;
use crate::pubsub::registry::{self, Backend};

mod config;
mod consume;
mod offsets;
#[cfg(test)]
mod tests;

pub use config::KafkaConfig;

const NAME: &str = "kafka";

/// The header carrying a message's uuid (the name Watermill's Kafka marshaler uses).
pub const UUID_HEADER: &str = "_watermill_message_uuid";

pub(crate) fn kerr(what: impl std::fmt::Display, e: KafkaError) -> Error {
    Error::pubsub(NAME, what.to_string(), e)
}

/// The Kafka pub/sub; publisher and subscriber in one.
#[derive(Clone)]
pub struct KafkaPubSub {
    /// Replaced by a new one before a topic is deleted ([`KafkaPubSub::retire_producer`]).
    producer: Arc<RwLock<FutureProducer>>,
    config: Arc<KafkaConfig>,
    group: String,
    /// Tails start at the end of a topic (and their group is deleted when they end).
    start_at_end: bool,
    /// Topics known to exist (created or found), so each is created once.
    created: Arc<Mutex<HashSet<String>>>,
    closed: CancellationToken,
    /// The subscriptions' consumers, awaited by `close` (they commit, then leave the group).
    tasks: TaskTracker,
}

impl KafkaPubSub {
    /// Connects to the cluster `config.url` names: fails with a clear error when no broker
    /// answers within `publish_timeout`.
    pub async fn connect(config: KafkaConfig) -> Result<Self> {
        let url = redacted(&config.url);
        let producer: FutureProducer = config
            .producer()?
            .create()
            .map_err(|e| kerr(format!("producer for {url}"), e))?;
        // librdkafka connects lazily: ask for the cluster's metadata once, so a wrong address
        // is an error now rather than a publish that times out later.
        let probe = producer.clone();
        let timeout = config.publish_timeout;
        tokio::task::spawn_blocking(move || probe.client().fetch_metadata(None, timeout))
            .await
            .map_err(|e| Error::pubsub(NAME, "metadata", e))?
            .map_err(|e| kerr(format!("connect {url}"), e))?;
        let group = config.group().to_string();
        Ok(KafkaPubSub {
            producer: Arc::new(RwLock::new(producer)),
            config: Arc::new(config),
            group,
            start_at_end: false,
            created: Arc::default(),
            closed: CancellationToken::new(),
            tasks: TaskTracker::new(),
        })
    }

    /// The same connection whose subscriptions use consumer group `group`, starting at the end
    /// of a topic when `start_at_end` (tails).
    pub fn in_group(&self, group: &str, start_at_end: bool) -> KafkaPubSub {
        KafkaPubSub {
            group: group.to_string(),
            start_at_end,
            closed: CancellationToken::new(),
            tasks: TaskTracker::new(),
            ..self.clone()
        }
    }

    /// Creates `topic` unless this backend already knows it exists.
    async fn ensure_topic(&self, topic: &str) -> Result<()> {
        if self.known(topic) {
            return Ok(());
        }
        let new = NewTopic::new(
            topic,
            self.config.partitions,
            TopicReplication::Fixed(self.config.replication_factor),
        );
        let options = AdminOptions::new().operation_timeout(Some(self.config.publish_timeout));
        let results = self
            .admin()?
            .create_topics([&new], &options)
            .await
            .map_err(|e| kerr(format!("create topic {topic}"), e))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(Error::pubsub_msg(
                        NAME,
                        format!("create topic {name}: {code}"),
                    ));
                }
            }
        }
        self.created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.to_string());
        Ok(())
    }

    /// An admin client for one operation. Not kept: librdkafka 2.12's admin client, holding a
    /// topic it created in its metadata cache, crashed (a NULL topic name in its cache lookup)
    /// refreshing that topic's metadata by id after the topic was deleted (seen on Tansu 0.6,
    /// which answers an unknown topic id without a name).
    fn admin(&self) -> Result<AdminClient<DefaultClientContext>> {
        self.config
            .client()?
            .create()
            .map_err(|e| kerr("admin client", e))
    }

    /// The producer publishes go through now.
    fn producer(&self) -> FutureProducer {
        self.producer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts a new producer in place of the current one, and destroys the old one once the
    /// publishes still using it are done. Done before a topic is deleted: librdkafka 2.12
    /// crashed the process (SIGSEGV in `rd_kafka_metadata_update_op`: a NULL topic name in its
    /// metadata cache lookup) when a topic its producer had produced to was deleted under it
    /// (librdkafka #5093, open; seen in CI's kafka suite, reproduced here within six rounds of
    /// remove and re-create).
    async fn retire_producer(&self) -> Result<()> {
        let fresh: FutureProducer = self
            .config
            .producer()?
            .create()
            .map_err(|e| kerr("producer", e))?;
        let old = std::mem::replace(
            &mut *self.producer.write().unwrap_or_else(|p| p.into_inner()),
            fresh,
        );
        let timeout = self.config.publish_timeout;
        tokio::task::spawn_blocking(move || {
            // What was queued is delivered (or times out) before the client goes.
            let _ = old.flush(timeout);
            drop(old);
        })
        .await
        .map_err(|e| Error::pubsub(NAME, "retire producer", e))
    }

    fn known(&self, topic: &str) -> bool {
        self.created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(topic)
    }

    fn headers(msg: &Message) -> OwnedHeaders {
        let mut headers = OwnedHeaders::new_with_capacity(msg.metadata.len() + 1).insert(Header {
            key: UUID_HEADER,
            value: Some(msg.uuid.as_str()),
        });
        for (k, v) in msg.metadata.iter() {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        headers
    }
}

#[async_trait]
impl Publisher for KafkaPubSub {
    async fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<()> {
        if self.closed.is_cancelled() {
            return Err(closed(NAME));
        }
        self.ensure_topic(topic).await?;
        let producer = self.producer();
        let mut deliveries = Vec::with_capacity(messages.len());
        for msg in &messages {
            let key = self
                .config
                .partition_key
                .as_deref()
                .and_then(|k| msg.metadata.get_opt(k));
            let mut record = FutureRecord::<str, [u8]>::to(topic)
                .payload(&msg.payload[..])
                .headers(Self::headers(msg));
            if let Some(key) = key {
                record = record.key(key);
            }
            // Queued in order; a full local queue is waited out, bounded by publish_timeout.
            deliveries.push(producer.send(record, self.config.publish_timeout));
        }
        for (result, msg) in futures::future::join_all(deliveries)
            .await
            .into_iter()
            .zip(&messages)
        {
            result.map_err(|(e, _)| kerr(format!("publish {} to {topic}", msg.uuid), e))?;
        }
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        self.closed.cancel();
        Ok(())
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

#[async_trait]
impl Subscriber for KafkaPubSub {
    async fn subscribe_with(&self, topic: &str, options: SubscribeOptions) -> Result<Subscription> {
        if self.closed.is_cancelled() {
            return Err(closed(NAME));
        }
        self.ensure_topic(topic).await?;
        let consumer = consume::TopicConsumer::subscribe(
            &self
                .config
                .consumer(&kafka_group(&self.group, topic), self.start_at_end)?,
            topic,
        )?;
        let (sub, sender) = Subscription::channel(options.max_in_flight, &self.closed);
        let delay = self.config.redelivery_delay;
        self.tasks
            .spawn(consumer.run(sender, options.max_in_flight, delay));
        Ok(sub)
    }

    async fn subscribe_initialize(&self, topic: &str) -> Result<()> {
        // A new group starts at the beginning of the topic: creating it is enough for
        // messages published before the first subscription to be kept for it.
        self.ensure_topic(topic).await
    }

    async fn close(&self) -> Result<()> {
        self.closed.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        Ok(())
    }

    async fn remove_topic(&self, topic: &str) -> Result<bool> {
        self.retire_producer().await?;
        let options = AdminOptions::new().operation_timeout(Some(self.config.publish_timeout));
        let results = self
            .admin()?
            .delete_topics(&[topic], &options)
            .await
            .map_err(|e| kerr(format!("delete topic {topic}"), e))?;
        self.created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(topic);
        Ok(results.iter().any(|r| r.is_ok()))
    }

    async fn end_tail(&self, topic: &str) -> Result<()> {
        Subscriber::close(self).await?;
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(5)));
        let group = kafka_group(&self.group, topic);
        // Best effort: a broker without the DeleteGroups API keeps an empty group around.
        if let Err(e) = self.admin()?.delete_groups(&[&group], &options).await {
            tracing::debug!(backend = NAME, %group, error = %e, "delete tail group");
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

/// This backend in the registry's table ([`registry::BACKENDS`]).
pub const BACKEND: registry::BackendKind = registry::BackendKind {
    name: "kafka",
    check: |name, table| {
        let cfg: KafkaConfig = registry::settings(name, table)?;
        cfg.bootstrap()
            .map(|_| ())
            .map_err(|e| Error::Config(format!("pubsub.{name}.url: {e}")))
    },
    connect: |name, table| {
        Box::pin(async move {
            let cfg: KafkaConfig = registry::settings(&name, &table)?;
            let ps = KafkaPubSub::connect(cfg).await?;
            Ok(Backend::shared(&name, "kafka", ps.clone())
                .with_tail(move || ps.in_group(&registry::tail_group(), true)))
        })
    },
    raw_bench: Some(|name, table, messages, payload_size| {
        Box::pin(async move {
            let cfg: KafkaConfig = registry::settings(&name, &table)?;
            crate::bench::raw::kafka::run(&cfg, messages, payload_size).await
        })
    }),
};

/// The Kafka group of `group`'s subscriptions to `topic`: one per topic, so that a subscription
/// joining or leaving rebalances only its own topic's consumers, never the other handlers of
/// the group.
pub fn kafka_group(group: &str, topic: &str) -> String {
    format!("{group}.{topic}")
}
