//! RabbitMQ (AMQP 0-9-1, through lapin), laid out as Watermill's AMQP "durable pub/sub".
//!
//! - Topology: per topic a durable exchange named after the topic (`fanout` unless configured
//!   otherwise); per consumer group a durable queue `{topic}_{group}` bound to it (without a
//!   group, a queue named `{topic}`). Every group gets every message; the subscribers of one
//!   group share its queue. `subscribe_initialize` declares exchange, queue and binding, so
//!   messages published before the first subscription are kept.
//! - Publish: persistent messages (delivery mode 2) on a channel in confirm mode; `publish`
//!   returns once the broker confirmed every message (a nack is an error). The uuid travels in
//!   the `_watermill_message_uuid` header (Watermill's name) and in `message_id` when it fits,
//!   metadata in headers of their own names, the payload as the body.
//! - Consume: `basic.qos(prefetch)` (default 128, at least `max_in_flight`), messages handed
//!   over `max_in_flight` at a time; ack = `basic.ack`, written in the background: the next
//!   delivery waits for the last one's settlement, not for its ack to reach the socket. A
//!   nacked message is delivered again by the subscription itself after `nack_requeue_delay`
//!   (or the message's own redelivery delay, so that a poisoned message does not spin a
//!   core): requeued, it would come back behind the messages the channel already holds, so
//!   one in flight keeps publish order.
//!   When the subscription ends, the acks of what its consumer settled are sent first, then
//!   its channel closes and the broker requeues whatever it held unacked; `close` waits
//!   (bounded) for ended subscriptions so their last acks go out before the connection does.
//! - Reconnect: the publisher and the subscriptions each use a connection that is reopened
//!   when found dead. While the broker is away `publish` fails (the caller retries; the next
//!   call reconnects). A dead channel's unacked messages are requeued by the broker and each
//!   subscription reopens its channel with backoff. An ack that comes after its channel died
//!   is lost and the message is delivered again: at-least-once.
//! - Tail: an exclusive, auto-delete, server-named queue bound to the topic's exchange; it
//!   sees new messages without taking any from the groups' queues.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::uri::AMQPUri;
use lapin::{
    Acker, BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
    ExchangeKind,
};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::kit::url::scheme;
use super::kit::{Reconnect, redacted, tls};
use super::{
    Publisher, SubscribeOptions, Subscriber, Subscription, SubscriptionSender, closed,
    settle_redelivering,
};
use crate::error::{Error, Result};
use crate::message::{Message, Metadata};
use crate::pubsub::registry::{self, Backend};
use lapin::tcp::OwnedTLSConfig;

mod config;
mod consume;
mod link;
mod publish;

pub use config::*;
use link::*;
pub(crate) use link::{open_connection, parse_uri};
pub(crate) use publish::properties;
use publish::*;

const NAME: &str = "amqp";
/// The header carrying the message uuid (the name Watermill's AMQP marshaler uses).
const UUID_HEADER: &str = "_watermill_message_uuid";

/// How long handing one ack to the connection may take.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a subscription checks that its channel is still open.
const CHANNEL_CHECK: Duration = Duration::from_secs(1);

/// Default prefetch: messages the broker pushes ahead of the acks.
const READ_AHEAD: usize = 128;

pub(crate) fn lerr(what: impl std::fmt::Display, e: lapin::Error) -> Error {
    Error::pubsub(NAME, what.to_string(), e)
}

/// `s` as an AMQP short string (names, header keys: at most 255 bytes).
fn short(what: &str, s: &str) -> Result<ShortString> {
    ShortString::try_new(s).map_err(|e| Error::pubsub(NAME, format!("{what} {s:?}"), e))
}

/// The RabbitMQ pub/sub; publisher and subscriber in one.
#[derive(Clone)]
pub struct AmqpPubSub {
    config: Arc<AmqpConfig>,
    publishing: Arc<PublishSide>,
    consuming: Arc<Link>,
    closed: CancellationToken,
    /// The subscriptions' tasks: `close` lets their last acks out before the connection goes.
    tasks: TaskTracker,
    /// A tail: exclusive throw-away queues instead of the group's queue.
    tail: bool,
}

impl AmqpPubSub {
    /// Connects to the broker at `config.url` (the publishing connection; subscriptions open
    /// theirs on first use).
    pub async fn connect(config: AmqpConfig) -> Result<Self> {
        let uri = parse_uri(&config.url)?;
        let tls = tls_config(&config)?;
        let closed = CancellationToken::new();
        let publishing = Arc::new(PublishSide {
            link: Link::new(uri.clone(), tls.clone(), &config, closed.clone()),
            channel: Mutex::new(None),
        });
        publishing.link.get().await?;
        Ok(AmqpPubSub {
            consuming: Arc::new(Link::new(uri, tls, &config, closed.clone())),
            config: Arc::new(config),
            publishing,
            closed,
            tasks: TaskTracker::new(),
            tail: false,
        })
    }

    /// A subscriber that reads new messages of a topic through an exclusive, auto-delete queue
    /// of its own, so it takes nothing from the groups' queues. Closing it leaves this pub/sub
    /// open; closing this pub/sub closes it.
    pub fn tail_subscriber(&self) -> AmqpPubSub {
        let closed = self.closed.child_token();
        AmqpPubSub {
            consuming: Arc::new(Link::new(
                self.consuming.uri.clone(),
                self.consuming.tls.clone(),
                &self.config,
                closed.clone(),
            )),
            closed,
            tasks: TaskTracker::new(),
            tail: true,
            ..self.clone()
        }
    }

    /// The queue of this pub/sub's consumer group for `topic`.
    pub fn queue_name(&self, topic: &str) -> String {
        match &self.config.consumer_group {
            Some(group) => format!("{topic}_{group}"),
            None => topic.to_string(),
        }
    }

    async fn declare_exchange(&self, channel: &Channel, topic: &str) -> Result<()> {
        channel
            .exchange_declare(
                short("topic", topic)?,
                self.config.exchange_type.kind(),
                ExchangeDeclareOptions {
                    durable: self.config.durable,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| lerr(format!("declare exchange {topic}"), e))
    }

    /// Declares the topic's exchange and this subscriber's queue bound to it; returns the
    /// queue's name.
    async fn declare_queue(&self, channel: &Channel, topic: &str) -> Result<ShortString> {
        self.declare_exchange(channel, topic).await?;
        let mut arguments = FieldTable::default();
        let (name, options) = if self.tail {
            let options = QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            };
            (ShortString::default(), options)
        } else {
            if let Some(expires) = self.config.queue_expires {
                let ms = i64::try_from(expires.as_millis())
                    .unwrap_or(i64::MAX)
                    .max(1);
                arguments.insert("x-expires".into(), AMQPValue::LongLongInt(ms));
            }
            let options = QueueDeclareOptions {
                durable: self.config.durable,
                ..QueueDeclareOptions::default()
            };
            (short("queue", &self.queue_name(topic))?, options)
        };
        let queue = channel
            .queue_declare(name, options, arguments)
            .await
            .map_err(|e| lerr(format!("declare queue for {topic}"), e))?;
        let name = queue.name().clone();
        channel
            .queue_bind(
                name.clone(),
                short("topic", topic)?,
                short("topic", topic)?,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| lerr(format!("bind queue {name} to {topic}"), e))?;
        Ok(name)
    }

    /// A channel consuming this subscriber's queue of `topic`.
    /// [`Self::open_consumer`] within `connect_timeout`: a broker that goes away between the
    /// requests of the setup would otherwise leave one waiting for a reply forever.
    async fn open_consumer_bounded(
        &self,
        topic: &str,
        max_in_flight: usize,
    ) -> Result<(Channel, Consumer)> {
        let limit = self.config.connect_timeout;
        tokio::time::timeout(limit, self.open_consumer(topic, max_in_flight))
            .await
            .unwrap_or_else(|_| {
                Err(Error::pubsub_msg(
                    NAME,
                    format!("subscribe to {topic}: no answer within {limit:?}"),
                ))
            })
    }

    async fn open_consumer(
        &self,
        topic: &str,
        max_in_flight: usize,
    ) -> Result<(Channel, Consumer)> {
        let conn = self.consuming.get().await?;
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| lerr(format!("open channel for {topic}"), e))?;
        let queue = self.declare_queue(&channel, topic).await?;
        let prefetch = self
            .config
            .prefetch
            .unwrap_or_else(|| u16::try_from(max_in_flight.max(READ_AHEAD)).unwrap_or(u16::MAX))
            .max(1);
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| lerr(format!("set prefetch of {queue}"), e))?;
        let tag = format!("wasmill-{}", uuid::Uuid::new_v4().simple());
        let consumer = channel
            .basic_consume(
                queue.clone(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| lerr(format!("consume {queue}"), e))?;
        Ok((channel, consumer))
    }

    async fn publish_confirmed(
        &self,
        topic: &str,
        messages: &[Message],
        properties: Vec<BasicProperties>,
    ) -> Result<()> {
        let pc = self.publishing.channel().await?;
        if !pc.is_declared(topic) {
            self.declare_exchange(&pc.channel, topic).await?;
            pc.mark_declared(topic);
        }
        let exchange = short("topic", topic)?;
        let mut confirms = Vec::with_capacity(messages.len());
        for (m, props) in messages.iter().zip(properties) {
            let confirm = pc
                .channel
                .basic_publish(
                    exchange.clone(),
                    exchange.clone(),
                    BasicPublishOptions::default(),
                    &m.payload,
                    props,
                )
                .await
                .map_err(|e| lerr(format!("publish to {topic}"), e))?;
            confirms.push(confirm);
        }
        for confirm in confirms {
            let confirmation = confirm
                .await
                .map_err(|e| lerr(format!("publish to {topic}: no confirm"), e))?;
            if let Confirmation::Nack(_) = confirmation {
                return Err(Error::pubsub_msg(
                    NAME,
                    format!("publish to {topic}: the broker refused a message (nack)"),
                ));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Subscriber for AmqpPubSub {
    async fn subscribe_initialize(&self, topic: &str) -> Result<()> {
        if self.closed.is_cancelled() {
            return Err(closed(NAME));
        }
        if self.tail {
            // A tail's queue lives only while it consumes.
            return Ok(());
        }
        let conn = self.consuming.get().await?;
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| lerr(format!("open channel for {topic}"), e))?;
        let declared = self.declare_queue(&channel, topic).await;
        close_channel(&channel).await;
        declared.map(|_| ())
    }

    async fn subscribe_with(&self, topic: &str, options: SubscribeOptions) -> Result<Subscription> {
        if self.closed.is_cancelled() {
            return Err(closed(NAME));
        }
        let max_in_flight = options.max_in_flight.max(1);
        let first = self.open_consumer_bounded(topic, max_in_flight).await?;
        let (sub, sender) = Subscription::channel(max_in_flight, &self.closed);
        let this = self.clone();
        let topic = topic.to_string();
        self.tasks.spawn(async move {
            this.consume(&topic, max_in_flight, first, sender).await;
        });
        Ok(sub)
    }

    async fn close(&self) -> Result<()> {
        Publisher::close(self).await
    }

    /// Deletes the topic's exchange and this consumer group's queue, with its messages. The
    /// queues of other groups stay (RabbitMQ lists a topic's queues only through its
    /// management API); unbound, they get nothing new. Runs on a connection of its own, so it
    /// works after [`Subscriber::close`] too.
    async fn remove_topic(&self, topic: &str) -> Result<bool> {
        if self.tail {
            return Ok(false);
        }
        let (exchange, queue) = (
            short("topic", topic)?,
            short("queue", &self.queue_name(topic))?,
        );
        let conn = open_connection(
            &self.consuming.uri,
            &self.consuming.tls,
            &self.consuming.url,
            self.config.connect_timeout,
        )
        .await?;
        let removed = remove_exchange_and_queue(&conn, exchange, queue).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, "OK".into())).await;
        self.publishing.forget(topic).await;
        removed
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

/// Deletes `exchange` and `queue` where they exist; whether either did.
async fn remove_exchange_and_queue(
    conn: &Connection,
    exchange: ShortString,
    queue: ShortString,
) -> Result<bool> {
    let channel = || async {
        conn.create_channel()
            .await
            .map_err(|e| lerr("open channel to remove a topic", e))
    };
    // A passive declare of something missing fails and closes its channel: one channel each.
    let probe = channel().await?;
    let queue_exists = probe
        .queue_declare(
            queue.clone(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .is_ok();
    close_channel(&probe).await;
    let probe = channel().await?;
    let exchange_exists = probe
        .exchange_declare(
            exchange.clone(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                passive: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .is_ok();
    close_channel(&probe).await;
    let channel = channel().await?;
    if queue_exists {
        channel
            .queue_delete(queue.clone(), QueueDeleteOptions::default())
            .await
            .map_err(|e| lerr(format!("delete queue {queue}"), e))?;
    }
    if exchange_exists {
        channel
            .exchange_delete(exchange.clone(), ExchangeDeleteOptions::default())
            .await
            .map_err(|e| lerr(format!("delete exchange {exchange}"), e))?;
    }
    close_channel(&channel).await;
    Ok(queue_exists || exchange_exists)
}

async fn close_channel(channel: &Channel) {
    if channel.status().connected() {
        let _ = tokio::time::timeout(Duration::from_secs(2), channel.close(200, "OK".into())).await;
    }
}

/// This backend in the registry's table ([`registry::BACKENDS`]).
pub const BACKEND: registry::BackendKind = registry::BackendKind {
    name: "amqp",
    check: registry::check_as::<AmqpConfig>,
    connect: |name, table| {
        Box::pin(async move {
            let cfg: AmqpConfig = registry::settings(&name, &table)?;
            let ps = AmqpPubSub::connect(cfg).await?;
            // An exclusive auto-delete queue of its own: reads without taking from the groups.
            Ok(Backend::shared(&name, "amqp", ps.clone()).with_tail(move || ps.tail_subscriber()))
        })
    },
    raw_bench: Some(|name, table, messages, payload_size| {
        Box::pin(async move {
            let cfg: AmqpConfig = registry::settings(&name, &table)?;
            crate::bench::raw::amqp::run(&cfg.url, messages, payload_size).await
        })
    }),
};

#[cfg(test)]
mod tests;
