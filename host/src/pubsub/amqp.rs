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

use super::{
    Publisher, RawBenchFigures, SubscribeOptions, Subscriber, Subscription, SubscriptionSender,
    closed, settle_redelivering,
};
use crate::error::{Error, Result};
use crate::message::{Message, Metadata};

const NAME: &str = "amqp";
/// The header carrying the message uuid (the name Watermill's AMQP marshaler uses).
const UUID_HEADER: &str = "_watermill_message_uuid";

/// How long handing one ack to the connection may take.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a subscription checks that its channel is still open.
const CHANNEL_CHECK: Duration = Duration::from_secs(1);

/// Default prefetch: messages the broker pushes ahead of the acks.
const READ_AHEAD: usize = 128;

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
    fn kind(self) -> ExchangeKind {
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
    /// `amqp://user:password@host:port/vhost` (the default vhost `/` is written `%2f`).
    pub url: String,
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

fn optional_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    crate::config::duration::parse(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// The URL with its password replaced by `***` (user, host and vhost stay, for the logs).
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        _ => url.to_string(),
    }
}

fn lerr(what: impl std::fmt::Display, e: lapin::Error) -> Error {
    Error::pubsub(NAME, what.to_string(), e)
}

/// `s` as an AMQP short string (names, header keys: at most 255 bytes).
fn short(what: &str, s: &str) -> Result<ShortString> {
    ShortString::try_new(s).map_err(|e| Error::pubsub(NAME, format!("{what} {s:?}"), e))
}

fn parse_uri(url: &str) -> Result<AMQPUri> {
    // lapin's parse error quotes the whole URL, password included: do not pass it on.
    url.parse::<AMQPUri>()
        .map_err(|_| Error::pubsub_msg(NAME, format!("invalid url {}", redacted(url))))
}

async fn open_connection(uri: &AMQPUri, url: &str, timeout: Duration) -> Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name("wasmill".into());
    match tokio::time::timeout(timeout, Connection::connect_uri(uri.clone(), props)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(lerr(format!("connect {}", redacted(url)), e)),
        Err(_) => Err(Error::pubsub_msg(
            NAME,
            format!("connect {}: timed out after {timeout:?}", redacted(url)),
        )),
    }
}

/// A connection opened on first use and reopened when found dead.
struct Link {
    uri: AMQPUri,
    url: String,
    connect_timeout: Duration,
    conn: Mutex<Option<Arc<Connection>>>,
    closed: CancellationToken,
}

impl Link {
    fn new(uri: AMQPUri, config: &AmqpConfig, closed: CancellationToken) -> Link {
        Link {
            uri,
            url: config.url.clone(),
            connect_timeout: config.connect_timeout,
            conn: Mutex::new(None),
            closed,
        }
    }

    async fn get(&self) -> Result<Arc<Connection>> {
        let mut slot = self.conn.lock().await;
        if self.closed.is_cancelled() {
            return Err(closed(NAME));
        }
        if let Some(conn) = slot.as_ref()
            && conn.status().connected()
        {
            return Ok(conn.clone());
        }
        *slot = None;
        let conn = Arc::new(open_connection(&self.uri, &self.url, self.connect_timeout).await?);
        *slot = Some(conn.clone());
        Ok(conn)
    }

    async fn close(&self) {
        let conn = self.conn.lock().await.take();
        if let Some(conn) = conn
            && conn.status().connected()
        {
            let _ =
                tokio::time::timeout(Duration::from_secs(2), conn.close(200, "OK".into())).await;
        }
    }
}

/// The publishing channel (confirm mode) and the exchanges declared on it.
#[derive(Clone)]
struct PubChannel {
    channel: Channel,
    declared: Arc<std::sync::Mutex<HashSet<String>>>,
}

impl PubChannel {
    fn is_declared(&self, topic: &str) -> bool {
        self.declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(topic)
    }

    fn mark_declared(&self, topic: &str) {
        self.declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.to_string());
    }

    fn forget_declared(&self, topic: &str) {
        self.declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(topic);
    }
}

/// The publisher's connection and channel.
struct PublishSide {
    link: Link,
    channel: Mutex<Option<PubChannel>>,
}

impl PublishSide {
    async fn channel(&self) -> Result<PubChannel> {
        let mut slot = self.channel.lock().await;
        if let Some(pc) = slot.as_ref()
            && pc.channel.status().connected()
        {
            return Ok(pc.clone());
        }
        *slot = None;
        let conn = self.link.get().await?;
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| lerr("open publishing channel", e))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| lerr("enable publisher confirms", e))?;
        let pc = PubChannel {
            channel,
            declared: Arc::default(),
        };
        *slot = Some(pc.clone());
        Ok(pc)
    }

    /// Forgets that `topic`'s exchange was declared (it was deleted): the next publish
    /// declares it again.
    async fn forget(&self, topic: &str) {
        if let Some(pc) = self.channel.lock().await.as_ref() {
            pc.forget_declared(topic);
        }
    }

    async fn close(&self) {
        // Closed before the connection: a channel merely dropped asks lapin to close it in
        // the background, and that close then meets the connection's own and fails
        // ("invalid channel state: Closing"), which lapin logs as a connection error.
        if let Some(pc) = self.channel.lock().await.take() {
            close_channel(&pc.channel).await;
        }
        self.link.close().await;
    }
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
        let closed = CancellationToken::new();
        let publishing = Arc::new(PublishSide {
            link: Link::new(uri.clone(), &config, closed.clone()),
            channel: Mutex::new(None),
        });
        publishing.link.get().await?;
        Ok(AmqpPubSub {
            consuming: Arc::new(Link::new(uri, &config, closed.clone())),
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
impl Publisher for AmqpPubSub {
    async fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<()> {
        if self.closed.is_cancelled() {
            return Err(closed(NAME));
        }
        if messages.is_empty() {
            return Ok(());
        }
        let properties = messages
            .iter()
            .map(|m| properties(m, self.config.durable))
            .collect::<Result<Vec<_>>>()?;
        tokio::time::timeout(
            self.config.publish_timeout,
            self.publish_confirmed(topic, &messages, properties),
        )
        .await
        .map_err(|_| {
            Error::pubsub_msg(
                NAME,
                format!(
                    "publish to {topic}: not confirmed within {:?}",
                    self.config.publish_timeout
                ),
            )
        })?
    }

    async fn close(&self) -> Result<()> {
        self.closed.cancel();
        // Ended subscriptions ack what their consumers settled before the connection closes
        // (else the last acks fail and the broker delivers those messages again).
        self.tasks.close();
        if tokio::time::timeout(ACK_TIMEOUT, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("amqp: acks still unsent at close (the broker redelivers them)");
        }
        if !self.tail {
            self.publishing.close().await;
        }
        self.consuming.close().await;
        Ok(())
    }

    fn name(&self) -> &'static str {
        NAME
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

/// The AMQP properties carrying `m`'s uuid and metadata; `persistent` sets delivery mode 2.
fn properties(m: &Message, persistent: bool) -> Result<BasicProperties> {
    let mut headers = FieldTable::default();
    for (k, v) in m.metadata.iter() {
        headers.insert(short("metadata key", k)?, AMQPValue::LongString(v.into()));
    }
    headers.insert(
        UUID_HEADER.into(),
        AMQPValue::LongString(m.uuid.as_str().into()),
    );
    let props = BasicProperties::default()
        .with_headers(headers)
        .with_delivery_mode(if persistent { 2 } else { 1 });
    Ok(match ShortString::try_new(m.uuid.as_str()) {
        Ok(id) => props.with_message_id(id),
        Err(_) => props,
    })
}

/// A header value as text (what a Wasmill or Watermill publisher writes is a string).
fn header_text(v: &AMQPValue) -> Option<String> {
    Some(match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        _ => return None,
    })
}

fn to_message(properties: &BasicProperties, data: Vec<u8>) -> Message {
    let mut uuid = properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str().to_owned())
        .unwrap_or_default();
    let mut metadata = Metadata::new();
    if let Some(headers) = properties.headers() {
        for (k, v) in headers {
            let Some(text) = header_text(v) else { continue };
            if k.as_str() == UUID_HEADER {
                uuid = text;
            } else {
                metadata.set(k.as_str(), text);
            }
        }
    }
    let mut msg = Message::with_uuid(uuid, Bytes::from(data));
    msg.metadata = metadata;
    msg
}

/// Acks or nacks (requeue) one delivery once the consumer has settled it. If the subscription
/// ended first, nothing is sent: closing the channel requeues the message.
async fn settle(acker: Acker, msg: Message, sender: SubscriptionSender, nack_delay: Duration) {
    let uuid = msg.uuid.clone();
    if settled_acked(msg, &sender, nack_delay).await {
        send_ack(acker, uuid).await;
    }
}

/// Waits until the consumer acks `msg`, delivering it again after each nack; `false` when the
/// subscription ended first (the channel closes with it, and the broker requeues the message).
async fn settled_acked(msg: Message, sender: &SubscriptionSender, nack_delay: Duration) -> bool {
    // A nack is delivered again from here rather than requeued: the broker would put it back
    // behind the messages this channel already holds (read-ahead), out of order.
    settle_redelivering(msg, sender, nack_delay, || async {}).await
}

/// Sends the ack of the delivery `acker` belongs to, logging (not returning) a failure: the
/// broker then redelivers the message.
async fn send_ack(acker: Acker, uuid: String) {
    // Bounded: an ack handed to a connection that dies under it may never be answered, and
    // the subscription must go on to notice the broken consumer and reconnect.
    let sent = tokio::time::timeout(ACK_TIMEOUT, acker.ack(BasicAckOptions::default())).await;
    match sent {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => tracing::debug!(
            uuid = %uuid,
            "amqp: channel gone before the ack/nack; the broker redelivers the message"
        ),
        Ok(Err(e)) => tracing::warn!(
            uuid = %uuid,
            "amqp: ack failed (the broker redelivers the message): {e}"
        ),
        Err(_) => tracing::warn!(
            uuid = %uuid,
            "amqp: ack not sent within {ACK_TIMEOUT:?} (the broker redelivers the message)"
        ),
    }
}

/// The deliveries of one channel still being settled: the handler's permits (at most
/// `max_in_flight` unsettled) and the acks written after a settlement.
struct Settling {
    in_flight: Arc<tokio::sync::Semaphore>,
    acks: TaskTracker,
}

impl AmqpPubSub {
    /// Delivers `topic`'s messages until the subscription ends, reopening the channel (and
    /// the connection) whenever it breaks.
    async fn consume(
        &self,
        topic: &str,
        max_in_flight: usize,
        first: (Channel, Consumer),
        sender: SubscriptionSender,
    ) {
        let mut current = Some(first);
        let mut backoff = self.config.reconnect_backoff;
        loop {
            let (channel, mut consumer) = match current.take() {
                Some(open) => open,
                None => {
                    let opened = tokio::select! {
                        biased;
                        _ = sender.closed() => return,
                        r = self.open_consumer_bounded(topic, max_in_flight) => r,
                    };
                    match opened {
                        Ok(open) => {
                            tracing::info!(topic, "amqp: subscription resumed");
                            backoff = self.config.reconnect_backoff;
                            open
                        }
                        Err(e) => {
                            tracing::warn!(
                                topic,
                                url = %redacted(&self.config.url),
                                "amqp: {}; retrying in {backoff:?}",
                                e.report()
                            );
                            if !self.pause(&sender, &mut backoff).await {
                                return;
                            }
                            continue;
                        }
                    }
                }
            };
            let ended = self
                .pump_to_end(topic, max_in_flight, &channel, &mut consumer, &sender)
                .await;
            drop(consumer);
            close_channel(&channel).await;
            if ended {
                return;
            }
            if !self.pause(&sender, &mut backoff).await {
                return;
            }
        }
    }

    /// Waits `backoff` (then doubles it); `false` if the subscription ended meanwhile.
    async fn pause(&self, sender: &SubscriptionSender, backoff: &mut Duration) -> bool {
        let wait = *backoff;
        *backoff = (wait * 2).min(self.config.reconnect_max_backoff);
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = sender.closed() => false,
        }
    }

    /// Hands deliveries to the subscription: `true` when the subscription ended, `false` when
    /// the consumer broke (connection or channel lost, consumer cancelled by the broker).
    async fn pump(
        &self,
        topic: &str,
        max_in_flight: usize,
        settling: &Settling,
        channel: &Channel,
        consumer: &mut Consumer,
        sender: &SubscriptionSender,
    ) -> bool {
        // A consumer whose channel died is normally ended by lapin; this check makes sure a
        // subscription never waits on a dead channel.
        let mut watchdog = tokio::time::interval(CHANNEL_CHECK);
        loop {
            let next = tokio::select! {
                biased;
                _ = sender.closed() => return true,
                n = consumer.next() => n,
                _ = watchdog.tick() => {
                    if channel.status().connected() {
                        continue;
                    }
                    tracing::warn!(topic, url = %redacted(&self.config.url), "amqp: channel closed; reconnecting");
                    return false;
                }
            };
            let delivery = match next {
                Some(Ok(d)) => d,
                Some(Err(e)) => {
                    tracing::warn!(topic, url = %redacted(&self.config.url), "amqp: consumer failed: {e}; reconnecting");
                    return false;
                }
                None => {
                    tracing::warn!(topic, url = %redacted(&self.config.url), "amqp: consumer cancelled; reconnecting");
                    return false;
                }
            };
            let Delivery {
                properties,
                data,
                acker,
                ..
            } = delivery;
            let msg = to_message(&properties, data);
            // The broker pushes up to `prefetch` ahead; at most `max_in_flight` of them are
            // handed over and unsettled at once.
            let Ok(permit) = settling.in_flight.clone().acquire_owned().await else {
                return true;
            };
            if sender.send(msg.clone()).await.is_err() {
                return true;
            }
            if max_in_flight <= 1 {
                // One at a time: the next delivery waits for this one's settlement, not for
                // its ack to be written (acks on a channel keep their order; `pump_to_end`
                // waits for them before the channel closes).
                let uuid = msg.uuid.clone();
                if settled_acked(msg, sender, self.config.nack_requeue_delay).await {
                    settling.acks.spawn(send_ack(acker, uuid));
                }
                drop(permit);
            } else {
                let settled = settle(acker, msg, sender.clone(), self.config.nack_requeue_delay);
                tokio::spawn(async move {
                    settled.await;
                    drop(permit);
                });
            }
        }
    }

    /// [`Self::pump`], then, if the subscription ended, waits until the settlements it spawned
    /// are sent (each is bounded): the channel closes after them.
    async fn pump_to_end(
        &self,
        topic: &str,
        max_in_flight: usize,
        channel: &Channel,
        consumer: &mut Consumer,
        sender: &SubscriptionSender,
    ) -> bool {
        let settling = Settling {
            in_flight: Arc::new(tokio::sync::Semaphore::new(max_in_flight.max(1))),
            acks: TaskTracker::new(),
        };
        let ended = self
            .pump(topic, max_in_flight, &settling, channel, consumer, sender)
            .await;
        settling.acks.close();
        if ended {
            let all = u32::try_from(max_in_flight.max(1)).unwrap_or(u32::MAX);
            let _ = tokio::time::timeout(ACK_TIMEOUT, async {
                let _ = settling.in_flight.acquire_many(all).await;
                settling.acks.wait().await;
            })
            .await;
        }
        ended
    }
}

/// The raw client's throughput: persistent messages to a durable fanout exchange with
/// publisher confirms (awaited [`super::RAW_PUBLISH_WINDOW`] at a time), then consume (prefetch 256) and ack each.
/// Each message carries what one of `wasmill bench`'s carries on the wire (a message id, the
/// uuid header and one metadata header, the send time), so both put the same bytes on the
/// broker.
pub async fn raw_bench(url: &str, messages: usize, payload_size: usize) -> Result<RawBenchFigures> {
    let uri = parse_uri(url)?;
    let conn = open_connection(&uri, url, Duration::from_secs(10)).await?;
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
    let mut confirms = Vec::with_capacity(super::RAW_PUBLISH_WINDOW);
    for i in 0..messages {
        let props = properties(&super::raw_bench_message(&payload, start), true)?;
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
        if confirms.len() == super::RAW_PUBLISH_WINDOW || i + 1 == messages {
            for c in confirms.drain(..) {
                if let Confirmation::Nack(_) = c.await.map_err(|e| lerr("publish confirm", e))? {
                    return Err(Error::pubsub_msg(
                        NAME,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::conformance::{self, Features, Harness, OwnedPubSub};
    use crate::pubsub::testkit::Proxy;
    use crate::pubsub::{DynPublisher, DynSubscriber};

    fn url() -> String {
        std::env::var("WASMILL_TEST_AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
    }

    struct AmqpHarness {
        group: String,
    }

    impl AmqpHarness {
        fn new() -> Self {
            AmqpHarness {
                group: crate::pubsub::conformance::unique_group(),
            }
        }

        fn config(&self, group: &str) -> AmqpConfig {
            AmqpConfig {
                url: url(),
                consumer_group: Some(group.to_string()),
                // The suite's queues remove themselves once the tests are done with them.
                queue_expires: Some(Duration::from_secs(120)),
                nack_requeue_delay: Duration::from_millis(10),
                connect_timeout: Duration::from_secs(5),
                reconnect_backoff: Duration::from_millis(50),
                reconnect_max_backoff: Duration::from_secs(1),
                ..AmqpConfig::default()
            }
        }
    }

    #[async_trait]
    impl Harness for AmqpHarness {
        fn features(&self) -> Features {
            Features {
                consumer_groups: true,
                guaranteed_order_with_single_subscriber: true,
                persistent: true,
                new_subscriber_receives_old_messages: true,
                ..Features::default()
            }
        }

        async fn pubsub(&self) -> Result<(DynPublisher, DynSubscriber)> {
            let ps = AmqpPubSub::connect(self.config(&self.group)).await?;
            Ok(crate::pubsub::conformance::pair(ps))
        }

        async fn subscriber_in_group(&self, group: &str) -> Result<DynSubscriber> {
            Ok(Arc::new(AmqpPubSub::connect(self.config(group)).await?))
        }

        /// The shared broker behind a proxy of the test's own, which cuts the connections:
        /// the clients see the broker go away (and their unacked messages go back to the
        /// queue) while the broker and every other test's connections stay up.
        async fn owned_pubsub(&self) -> Result<Option<OwnedPubSub>> {
            let (proxy, url) = Proxy::for_url(&url()).await?;
            let ps = AmqpPubSub::connect(AmqpConfig {
                url,
                ..self.config(&self.group)
            })
            .await?;
            let (publisher, subscriber) = crate::pubsub::conformance::pair(ps);
            Ok(Some(OwnedPubSub {
                publisher,
                subscriber,
                outage: Box::new(proxy),
            }))
        }
    }

    crate::conformance_tests!(AmqpHarness::new());

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redacted("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redacted("amqps://u:p@ss@host?heartbeat=5"),
            "amqps://u:***@host?heartbeat=5"
        );
        assert_eq!(redacted("amqp://host:5672"), "amqp://host:5672");
        let err = parse_uri("amqp://u:secret@host:notaport/x")
            .err()
            .unwrap()
            .to_string();
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn config_parses_with_defaults() {
        let cfg: AmqpConfig = toml::from_str(
            "consumer_group = \"billing\"\nexchange_type = \"topic\"\nqueue_expires = \"1h\"\nnack_requeue_delay = \"1s\"",
        )
        .unwrap();
        assert_eq!(cfg.exchange_type, ExchangeType::Topic);
        assert_eq!(cfg.queue_expires, Some(Duration::from_secs(3600)));
        assert_eq!(cfg.nack_requeue_delay, Duration::from_secs(1));
        assert!(cfg.durable);
        assert_eq!(cfg.prefetch, None);
        assert!(toml::from_str::<AmqpConfig>("exchange = \"x\"").is_err());
        assert!(toml::from_str::<AmqpConfig>("exchange_type = \"headers\"").is_err());
    }

    #[test]
    fn messages_round_trip_through_properties() {
        let m = Message::new("body").with_metadata("k", "v");
        let props = properties(&m, true).unwrap();
        assert_eq!(props.delivery_mode(), &Some(2));
        let back = to_message(&props, b"body".to_vec());
        assert_eq!(back, m);
        let long_key = "k".repeat(300);
        assert!(properties(&Message::new("x").with_metadata(long_key, "v"), true).is_err());
        // A foreign message: uuid from message_id, non-string headers as text.
        let mut headers = FieldTable::default();
        headers.insert("n".into(), AMQPValue::LongInt(7));
        let props = BasicProperties::default()
            .with_message_id("id-1".into())
            .with_headers(headers);
        let back = to_message(&props, Vec::new());
        assert_eq!(back.uuid, "id-1");
        assert_eq!(back.metadata.get("n"), "7");
    }

    #[tokio::test]
    async fn unreachable_server_is_a_clear_error() {
        let err = AmqpPubSub::connect(AmqpConfig {
            url: "amqp://user:secret@127.0.0.1:1/%2f".into(),
            connect_timeout: Duration::from_secs(3),
            ..AmqpConfig::default()
        })
        .await
        .err()
        .unwrap();
        let text = err.report();
        assert!(
            text.contains("amqp") && text.contains("127.0.0.1:1"),
            "{text}"
        );
        assert!(!text.contains("secret"), "password leaked: {text}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn raw_bench_reports_positive_figures() {
        let f = raw_bench(&url(), 300, 100).await.unwrap();
        assert!(f.publish_per_sec > 0.0 && f.consume_per_sec > 0.0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_read_ahead_a_nacked_message_comes_back_before_later_ones() {
        let h = &AmqpHarness::new();
        let ps = AmqpPubSub::connect(h.config(&h.group)).await.unwrap();
        let topic = conformance::unique_topic("read_ahead");
        ps.subscribe_initialize(&topic).await.unwrap();
        let msgs: Vec<Message> = (0..6).map(|i| Message::new(format!("r{i}"))).collect();
        ps.publish(&topic, msgs.iter().map(Message::copy).collect())
            .await
            .unwrap();
        // Default prefetch: the broker pushes all six ahead of the acks.
        let mut sub = ps.subscribe(&topic).await.unwrap();
        let recv = async |sub: &mut Subscription| {
            tokio::time::timeout(Duration::from_secs(10), sub.recv())
                .await
                .expect("a message")
                .expect("stream ended")
        };
        for (i, expected) in msgs.iter().enumerate() {
            if i % 2 == 0 {
                let first = recv(&mut sub).await;
                assert_eq!(first.uuid, expected.uuid);
                first.nack();
            }
            let m = recv(&mut sub).await;
            assert_eq!(m.uuid, expected.uuid, "message {i} out of order");
            m.ack();
        }
        drop(sub);
        Publisher::close(&ps).await.unwrap();
    }

    // One thread, so that lapin's background futures log to this test's subscriber.
    #[tokio::test(flavor = "current_thread")]
    async fn closing_after_a_publish_logs_no_connection_error() {
        let log = crate::test_support::CapturedLog::default();
        let _guard = log.install("lapin=warn,wasmill=warn");
        let h = &AmqpHarness::new();
        let topic = conformance::unique_topic("close_logs_no_error");
        let ps = AmqpPubSub::connect(h.config(&h.group)).await.unwrap();
        ps.publish(&topic, vec![Message::new("x")]).await.unwrap();
        Publisher::close(&ps).await.unwrap();
        // Room for lapin's background work after the close.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let text = log.text();
        assert!(!text.contains("ERROR"), "close logged an error:\n{text}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_acked_just_before_close_are_not_delivered_again() {
        let h = &AmqpHarness::new();
        let topic = conformance::unique_topic("ack_before_close");
        for max_in_flight in [1, 4] {
            let ps = AmqpPubSub::connect(h.config(&h.group)).await.unwrap();
            ps.subscribe_initialize(&topic).await.unwrap();
            let msgs: Vec<Message> = (0..4).map(|i| Message::new(format!("a{i}"))).collect();
            ps.publish(&topic, msgs.iter().map(Message::copy).collect())
                .await
                .unwrap();
            let options = SubscribeOptions { max_in_flight };
            let mut sub = ps.subscribe_with(&topic, options).await.unwrap();
            for _ in 0..msgs.len() {
                let m = tokio::time::timeout(Duration::from_secs(10), sub.recv())
                    .await
                    .expect("a message")
                    .expect("stream ended");
                m.ack();
            }
            // The consumer leaves and the backend closes right after the last ack.
            drop(sub);
            Subscriber::close(&ps).await.unwrap();
            let again = AmqpPubSub::connect(h.config(&h.group)).await.unwrap();
            let mut sub = again.subscribe(&topic).await.unwrap();
            let redelivered = tokio::time::timeout(Duration::from_secs(1), sub.recv()).await;
            assert!(
                redelivered.is_err(),
                "an acked message came again (max_in_flight {max_in_flight}): {:?}",
                redelivered.ok().flatten().map(|m| m.uuid)
            );
            drop(sub);
            Subscriber::close(&again).await.unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tail_sees_new_messages_without_stealing() {
        let h = &AmqpHarness::new();
        let table: toml::Table = toml::from_str(&format!(
            "url = {:?}\nconsumer_group = {:?}\nqueue_expires = \"2m\"",
            url(),
            h.group
        ))
        .unwrap();
        let backend = crate::pubsub::registry::connect("q", "amqp", &table)
            .await
            .unwrap();
        let topic = conformance::unique_topic("tail");
        backend
            .subscriber
            .subscribe_initialize(&topic)
            .await
            .unwrap();
        let tail = backend.tail_subscriber().await.unwrap();
        let mut tail_sub = tail.subscribe(&topic).await.unwrap();
        let msgs: Vec<Message> = (0..5).map(|i| Message::new(format!("t{i}"))).collect();
        backend
            .publisher
            .publish(&topic, msgs.iter().map(Message::copy).collect())
            .await
            .unwrap();
        let seen = conformance::bulk_read(&mut tail_sub, 5, Duration::from_secs(10)).await;
        assert_eq!(seen.len(), 5);
        drop(tail_sub);
        tail.close().await.unwrap();
        // The group's queue still has every message, and the backend is still open.
        let mut sub = backend.subscriber.subscribe(&topic).await.unwrap();
        let got = conformance::bulk_read(&mut sub, 5, Duration::from_secs(10)).await;
        assert_eq!(got.len(), 5);
        drop(sub);
        backend.publisher.close().await.unwrap();
    }
}
