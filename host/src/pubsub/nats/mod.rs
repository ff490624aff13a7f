//! NATS JetStream: one stream per topic (file storage), a durable pull consumer per consumer
//! group, explicit acks.
//!
//! - Stream name: the topic with every character outside `[A-Za-z0-9_-]` replaced by `_`
//!   (JetStream forbids `.`, `*`, `>` and spaces in names); its subject is the topic itself.
//! - Publish waits for JetStream's ack (a publisher confirm). The uuid travels in the
//!   `Wasmill-Uuid` header and metadata in headers of their own names.
//! - Consumer group: a durable consumer named after the group (default `wasmill`),
//!   `DeliverPolicy::All` so a new group reads earlier messages, `max_ack_pending` = 512 (or
//!   four times the largest `max_in_flight` of its subscriptions), shared by the group's
//!   subscriptions.
//! - Delivery: pull requests of 128 with a 1 s expiry, all on one inbox per subscription
//!   ([`pull`]), the next sent while the last is delivered; a subscription that ends sends no
//!   more and gives back (`Nak`) at once what its open requests still bring. Messages are
//!   handed over `max_in_flight` at a time from memory, by the consumer's own task
//!   ([`super::read_ahead`]).
//! - Ack = `Ack`, sent in the background. A nacked message is delivered again by the subscription itself after its
//!   redelivery delay (with an `InProgress` to the server, which restarts its `ack_wait`), so
//!   one in flight keeps the stream's order; one held so long that its `ack_wait` could run
//!   out (half of it) is given back with `Nak` instead.
//! - Reconnect: the client reconnects by itself; the pull loop re-creates its pull requests
//!   (and the consumer) after an error, with backoff, logging the URL.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod pull;

use self::pull::{PullInbox, Pulled};
use super::ack_batcher::AckBatcher;
use super::read_ahead::{Fetched, Fetcher, ReadAhead, ReadAheadOptions};
use super::{Publisher, SubscribeOptions, Subscriber, Subscription, closed};
use crate::error::{Error, Result};
use crate::message::Message;

const NAME: &str = "nats";
const UUID_HEADER: &str = "Wasmill-Uuid";

/// Settings of `kind = "nats"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// `nats://host:port`.
    pub url: String,
    /// Consumer group (durable consumer name; default `wasmill`).
    pub consumer_group: Option<String>,
    /// How long JetStream waits for an ack before redelivering.
    #[serde(with = "crate::config::duration")]
    pub ack_wait: Duration,
    /// Bound on publish and setup calls.
    #[serde(with = "crate::config::duration")]
    pub request_timeout: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".into(),
            consumer_group: None,
            ack_wait: Duration::from_secs(30),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// The JetStream pub/sub; publisher and subscriber in one.
#[derive(Clone)]
pub struct NatsPubSub {
    js: jetstream::Context,
    config: Arc<NatsConfig>,
    closed: CancellationToken,
    /// Background work of ended subscriptions (their last acks), awaited by `close`.
    tasks: TaskTracker,
    only_new: bool,
    /// Topics whose stream this process already created or found, so publishing costs no
    /// extra round trip per call.
    known_streams: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

fn nerr(what: impl std::fmt::Display, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::pubsub(NAME, what.to_string(), e)
}

/// The stream name of a topic.
pub fn stream_name(topic: &str) -> String {
    topic
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl NatsPubSub {
    /// Connects to the server at `config.url`.
    pub async fn connect(config: NatsConfig) -> Result<Self> {
        let client = tokio::time::timeout(
            config.request_timeout,
            async_nats::ConnectOptions::new()
                .retry_on_initial_connect()
                .connect(config.url.as_str()),
        )
        .await
        .map_err(|_| Error::pubsub_msg(NAME, format!("connect {}: timed out", config.url)))?
        .map_err(|e| nerr(format!("connect {}", config.url), e))?;
        let mut js = jetstream::new(client);
        js.set_timeout(config.request_timeout);
        Ok(NatsPubSub {
            js,
            config: Arc::new(config),
            closed: CancellationToken::new(),
            tasks: TaskTracker::new(),
            only_new: false,
            known_streams: Arc::default(),
        })
    }

    fn group(&self) -> String {
        self.config
            .consumer_group
            .clone()
            .unwrap_or_else(|| "wasmill".into())
    }

    /// The same server with another consumer group; with `only_new`, it starts at the end.
    pub fn in_group(&self, group: &str, only_new: bool) -> NatsPubSub {
        let mut config = (*self.config).clone();
        config.consumer_group = Some(group.to_string());
        NatsPubSub {
            config: Arc::new(config),
            only_new,
            // Closing it leaves this backend open; closing this backend closes it.
            closed: self.closed.child_token(),
            tasks: TaskTracker::new(),
            ..self.clone()
        }
    }

    async fn stream(&self, topic: &str) -> Result<jetstream::stream::Stream> {
        let name = stream_name(topic);
        let created = self
            .js
            .get_or_create_stream(jetstream::stream::Config {
                name: name.clone(),
                subjects: vec![topic.to_string()],
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await;
        match created {
            Ok(stream) => Ok(stream),
            // When several subscribers (or processes) create the stream at the same moment,
            // the losers of the race are told "subjects overlap" or "name already in use":
            // the stream is there, so look it up. If it still is not, the first error stands.
            Err(first) => self
                .js
                .get_stream(&name)
                .await
                .map_err(|_| nerr(format!("create stream for {topic}"), first)),
        }
    }

    async fn consumer(
        &self,
        topic: &str,
        max_in_flight: usize,
    ) -> Result<jetstream::consumer::PullConsumer> {
        let group = stream_name(&self.group());
        let stream = self.stream(topic).await?;
        let config = jetstream::consumer::pull::Config {
            durable_name: Some(group.clone()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: self.config.ack_wait,
            // Two open requests and the acks of a third batch still travelling.
            max_ack_pending: (4 * max_in_flight.max(READ_AHEAD)) as i64,
            deliver_policy: if self.only_new {
                jetstream::consumer::DeliverPolicy::New
            } else {
                jetstream::consumer::DeliverPolicy::All
            },
            // A tail (only new messages, a group of its own) that its host never ended (the
            // host was killed) is deleted by the server after a while.
            inactive_threshold: if self.only_new {
                TAIL_INACTIVE_THRESHOLD
            } else {
                Duration::ZERO
            },
            ..Default::default()
        };
        let mut consumer: jetstream::consumer::PullConsumer =
            match stream.get_or_create_consumer(&group, config.clone()).await {
                Ok(consumer) => consumer,
                // Same race as for the stream: another subscriber of the group created it.
                Err(first) => stream
                    .get_consumer(&group)
                    .await
                    .map_err(|_| nerr(format!("create consumer {group} of {topic}"), first))?,
            };
        // The durable consumer may exist with a smaller window (created by
        // `subscribe_initialize`, or by a subscription with less in flight): widen it, never
        // narrow it, so the subscription gets the concurrency it asked for.
        let current = consumer.cached_info().config.max_ack_pending;
        if current >= 0 && current < config.max_ack_pending {
            let widened = jetstream::consumer::pull::Config {
                deliver_policy: consumer.cached_info().config.deliver_policy,
                ..config
            };
            consumer = stream
                .update_consumer(widened)
                .await
                .map_err(|e| nerr(format!("widen consumer {group} of {topic}"), e))?;
        }
        Ok(consumer)
    }
}

#[async_trait]
impl Publisher for NatsPubSub {
    async fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<()> {
        if self.closed.is_cancelled() {
            return Err(closed(NAME));
        }
        let known = self
            .known_streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(topic);
        if !known {
            self.stream(topic).await?;
            self.known_streams
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(topic.to_string());
        }
        // Send every message, then wait for the acks in order: one round trip per call.
        let mut acks = Vec::with_capacity(messages.len());
        for m in messages {
            let ack = self
                .js
                .publish_with_headers(topic.to_string(), headers(&m), m.payload.clone())
                .await
                .map_err(|e| nerr(format!("publish to {topic}"), e))?;
            acks.push(ack);
        }
        for ack in acks {
            if let Err(e) = ack.await {
                // Perhaps the stream went away: look it up again on the next call.
                self.known_streams
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(topic);
                return Err(nerr(format!("publish to {topic}: no ack"), e));
            }
        }
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        self.closed.cancel();
        // The last acks of ended subscriptions are handed to the client, and everything the
        // client holds reaches the server, before close returns.
        self.tasks.close();
        let _ = tokio::time::timeout(FLUSH_TIMEOUT, self.tasks.wait()).await;
        let flushed = tokio::time::timeout(FLUSH_TIMEOUT, self.js.client().flush()).await;
        if !matches!(flushed, Ok(Ok(()))) {
            tracing::debug!("nats: flush on close did not complete: {flushed:?}");
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

#[async_trait]
impl Subscriber for NatsPubSub {
    async fn subscribe_initialize(&self, topic: &str) -> Result<()> {
        self.consumer(topic, 1).await.map(|_| ())
    }

    async fn subscribe_with(&self, topic: &str, options: SubscribeOptions) -> Result<Subscription> {
        if self.closed.is_cancelled() {
            return Err(closed(NAME));
        }
        let consumer = self.consumer(topic, options.max_in_flight).await?;
        let max = options.max_in_flight.max(1);
        let fetcher = NatsFetch::new(self.clone(), topic, consumer, max);
        let options = ReadAheadOptions {
            max_in_flight: max,
            read_count: READ_AHEAD.max(max),
            // Soon the server would redeliver them while they are still held here.
            max_wait: self.config.ack_wait / 2,
            redelivery_delay: Duration::ZERO,
        };
        Ok(Subscription::pull(
            ReadAhead::new(fetcher, options),
            &self.closed,
        ))
    }

    async fn close(&self) -> Result<()> {
        Publisher::close(self).await
    }

    async fn end_tail(&self, topic: &str) -> Result<()> {
        Publisher::close(self).await?;
        let group = stream_name(&self.group());
        match self
            .js
            .get_stream(stream_name(topic))
            .await
            .map_err(|e| nerr(format!("stream of {topic}"), e))?
            .delete_consumer(&group)
            .await
        {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    jetstream::stream::ConsumerErrorKind::JetStream(ref j)
                        if j.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(nerr(format!("delete consumer {group} of {topic}"), e)),
        }
    }

    async fn remove_topic(&self, topic: &str) -> Result<bool> {
        self.known_streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(topic);
        match self.js.delete_stream(stream_name(topic)).await {
            Ok(status) => Ok(status.success),
            Err(e)
                if matches!(
                    e.kind(),
                    jetstream::context::DeleteStreamErrorKind::JetStream(ref j)
                        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(nerr(format!("remove {topic}"), e)),
        }
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

fn to_message(m: &async_nats::Message) -> Message {
    let mut uuid = String::new();
    let mut metadata = crate::message::Metadata::new();
    if let Some(h) = &m.headers {
        for (k, values) in h.iter() {
            let Some(v) = values.first() else { continue };
            if AsRef::<str>::as_ref(k) == UUID_HEADER {
                uuid = v.as_str().to_string();
            } else {
                metadata.set(k.to_string(), v.as_str());
            }
        }
    }
    // The payload is shared with the client's buffer, not copied.
    let mut msg = Message::with_uuid(uuid, m.payload.clone());
    msg.metadata = metadata;
    msg
}

/// How long one pull request waits on the server for messages. Requests are bounded rather
/// than endless so that one the server lost (a restart) is known to be gone soon, and a
/// subscription that ends waits at most this long for what its requests still bring.
const PULL_EXPIRY: Duration = Duration::from_secs(1);

/// How many messages one pull request asks for (or `max_in_flight`, if larger). Up to two
/// requests are open at once, and the consumer's `max_ack_pending` is four times this: the
/// next request waits on the server while the last one is delivered and its acks travel. A
/// subscription hands them over `max_in_flight` at a time, from memory, with no round trip
/// each, and delivers a nacked one again itself, so one in flight keeps the stream's order.
const READ_AHEAD: usize = 128;

/// Most acks one background batch carries.
const ACK_BATCH: usize = 256;

/// How long a flush of the connection may take (the server may be away).
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the server keeps a tail's consumer that nobody reads (its host was killed before
/// `end_tail`).
const TAIL_INACTIVE_THRESHOLD: Duration = Duration::from_secs(600);

/// How a subscription reads its durable consumer: pull requests of `READ_AHEAD` messages
/// (or `max_in_flight`, if larger) on one inbox ([`pull::PullInbox`]), the next one sent
/// while the last is delivered. Acks, progress and naks go out in the background.
struct NatsFetch {
    pubsub: NatsPubSub,
    topic: String,
    consumer: jetstream::consumer::PullConsumer,
    max_in_flight: usize,
    /// The subscription's inbox, once opened.
    inbox: Option<PullInbox>,
    backoff: Duration,
    acks: AckBatcher<(Receipt, AckKind)>,
}

/// What a subscription keeps of a delivered message to settle it: the reply subject its
/// ack, nak or progress goes to (the client itself is the subscription's). Cheaper than a
/// `jetstream::Message`, which carries a clone of the JetStream context.
type Receipt = Option<async_nats::Subject>;

/// Sends `kind` for the delivery whose reply subject is `reply` (what
/// `jetstream::Message::ack_with` does, without a context per message).
async fn settle(
    client: &async_nats::Client,
    reply: Receipt,
    kind: AckKind,
) -> std::result::Result<(), String> {
    let Some(reply) = reply else {
        return Err("no reply subject, not a JetStream message".into());
    };
    client
        .publish(reply, kind.into())
        .await
        .map_err(|e| e.to_string())
}

impl NatsFetch {
    fn new(
        pubsub: NatsPubSub,
        topic: &str,
        consumer: jetstream::consumer::PullConsumer,
        max_in_flight: usize,
    ) -> Self {
        let client = pubsub.js.client();
        let acks = AckBatcher::spawn(ACK_BATCH, move |batch: Vec<(Receipt, AckKind)>| {
            let client = client.clone();
            async move {
                for (reply, kind) in batch {
                    settle_or_warn(&client, reply, kind).await;
                }
            }
        });
        NatsFetch {
            pubsub,
            topic: topic.to_string(),
            consumer,
            max_in_flight,
            inbox: None,
            backoff: Duration::from_millis(100),
            acks,
        }
    }

    /// The open inbox with a request waiting on the server, or the error that prevented it.
    async fn ready_inbox(&mut self) -> std::result::Result<&mut PullInbox, String> {
        if self.inbox.is_none() {
            let size = READ_AHEAD.max(self.max_in_flight);
            let inbox =
                PullInbox::open(self.consumer.clone(), &self.pubsub.js, size, PULL_EXPIRY).await?;
            self.inbox = Some(inbox);
        }
        let inbox = self.inbox.as_mut().expect("opened above");
        inbox.top_up().await?;
        Ok(inbox)
    }

    /// Logs `error`, waits the backoff (doubling it) and looks the consumer up again.
    async fn recover(&mut self, error: impl std::fmt::Display) {
        tracing::warn!(topic = %self.topic, url = %self.pubsub.config.url, "nats: {error}; retrying in {:?}", self.backoff);
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
        if let Ok(c) = self.pubsub.consumer(&self.topic, self.max_in_flight).await {
            if let Some(inbox) = &mut self.inbox {
                inbox.set_consumer(c.clone());
            }
            self.consumer = c;
        }
    }
}

#[async_trait]
impl Fetcher for NatsFetch {
    type Receipt = Receipt;

    async fn fetch(&mut self, max: usize) -> Fetched<Receipt> {
        let mut messages = Vec::new();
        let mut since = tokio::time::Instant::now();
        let inbox = match self.ready_inbox().await {
            Ok(inbox) => inbox,
            Err(e) => {
                self.recover(e).await;
                return Fetched { since, messages };
            }
        };
        // Wait for the first message, then take what already arrived.
        let mut next = Some(inbox.next().await);
        let mut failed = None;
        while let Some(pulled) = next.take() {
            match pulled {
                Pulled::Message(sent, m) => {
                    since = since.min(sent);
                    messages.push((to_message(&m), m.reply));
                    if messages.len() < max {
                        next = inbox.try_next();
                    }
                }
                Pulled::Idle => {}
                Pulled::Failed(e) => failed = Some(e),
            }
        }
        // The next request waits on the server while this batch is handed out.
        if failed.is_none()
            && let Err(e) = inbox.top_up().await
        {
            failed = Some(e);
        }
        match failed {
            Some(e) => self.recover(e).await,
            None => self.backoff = Duration::from_millis(100),
        }
        Fetched { since, messages }
    }

    fn ack(&mut self, receipts: Vec<Receipt>) {
        for m in receipts {
            self.acks.push((m, AckKind::Ack));
        }
    }

    fn nacked(&mut self, receipt: &Receipt) {
        // Redelivered from here: restart the server's ack_wait instead of giving it back.
        self.acks.push((receipt.clone(), AckKind::Progress));
    }

    fn give_back(&mut self, receipts: Vec<Receipt>) {
        for m in receipts {
            self.acks.push((m, AckKind::Nak(None)));
        }
    }

    fn finish(mut self, unsettled: Vec<Receipt>) {
        self.give_back(unsettled);
        let client = self.pubsub.js.client();
        let NatsFetch {
            pubsub,
            inbox,
            acks,
            ..
        } = self;
        let flushed = client.clone();
        pubsub.tasks.spawn(async move {
            acks.finish().await;
            // The last acks must reach the server before the connection may go, or the
            // consumer stays blocked on them until `ack_wait`.
            flush(&flushed).await;
        });
        // What the open requests still bring goes back at once.
        if let Some(inbox) = inbox {
            tokio::spawn(async move {
                inbox
                    .drain(|m: async_nats::Message| {
                        let client = client.clone();
                        async move { settle_or_warn(&client, m.reply, AckKind::Nak(None)).await }
                    })
                    .await;
                flush(&client).await;
            });
        }
    }
}

/// Waits until everything the connection has queued (acks, naks) was written to the server.
async fn flush(client: &async_nats::Client) {
    match tokio::time::timeout(FLUSH_TIMEOUT, client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!("nats: flush failed (unsent acks come back after ack_wait): {e}")
        }
        Err(_) => tracing::warn!("nats: flush timed out (unsent acks come back after ack_wait)"),
    }
}

/// [`settle`], a failure logged: JetStream then redelivers the message after `ack_wait`.
async fn settle_or_warn(client: &async_nats::Client, reply: Receipt, kind: AckKind) {
    if let Err(e) = settle(client, reply, kind).await {
        tracing::warn!("nats: {kind:?} failed (the message is redelivered after ack_wait): {e}");
    }
}

/// A message's uuid and metadata as JetStream headers.
fn headers(m: &Message) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(UUID_HEADER, m.uuid.as_str());
    for (k, v) in m.metadata.iter() {
        headers.insert(k, v);
    }
    headers
}

/// The raw client's throughput: publish, waiting for the acks of each window of
/// [`super::RAW_PUBLISH_WINDOW`], then pull and ack.
pub async fn raw_bench(
    url: &str,
    messages: usize,
    payload_size: usize,
) -> Result<super::RawBenchFigures> {
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
    let mut acks = Vec::with_capacity(super::RAW_PUBLISH_WINDOW);
    for _ in 0..messages {
        let m = super::raw_bench_message(&payload, start);
        acks.push(
            js.publish_with_headers(topic.clone(), headers(&m), m.payload.clone())
                .await
                .map_err(|e| nerr("publish", e))?,
        );
        if acks.len() == super::RAW_PUBLISH_WINDOW {
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
                m.ack().await.map_err(|e| Error::pubsub(NAME, "ack", e))?;
                got += 1;
            }
            _ => break,
        }
    }
    let consume = start.elapsed();
    let _ = js.delete_stream(&topic).await;
    Ok(super::RawBenchFigures {
        publish_per_sec: messages as f64 / publish.as_secs_f64(),
        consume_per_sec: got as f64 / consume.as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::conformance::{Features, Harness, OwnedPubSub};
    use crate::pubsub::testkit::{Kind, PrivateServer};
    use crate::pubsub::{DynPublisher, DynSubscriber};

    fn url() -> String {
        std::env::var("WASMILL_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
    }

    struct NatsHarness {
        group: String,
    }

    impl NatsHarness {
        fn new() -> Self {
            NatsHarness {
                group: crate::pubsub::conformance::unique_group(),
            }
        }
        fn config(&self, group: &str) -> NatsConfig {
            self.config_at(url(), group)
        }
        fn config_at(&self, url: String, group: &str) -> NatsConfig {
            NatsConfig {
                url,
                consumer_group: Some(group.to_string()),
                ack_wait: Duration::from_secs(5),
                ..NatsConfig::default()
            }
        }
    }

    #[async_trait]
    impl Harness for NatsHarness {
        fn features(&self) -> Features {
            // Not promised: guaranteed_order across subscribers (the group's subscriptions share
            // the messages the server pushes ahead).
            Features {
                consumer_groups: true,
                guaranteed_order_with_single_subscriber: true,
                persistent: true,
                new_subscriber_receives_old_messages: true,
                ..Features::default()
            }
        }

        async fn pubsub(&self) -> Result<(DynPublisher, DynSubscriber)> {
            let ps = NatsPubSub::connect(self.config(&self.group)).await?;
            Ok(crate::pubsub::conformance::pair(ps))
        }

        async fn subscriber_in_group(&self, group: &str) -> Result<DynSubscriber> {
            Ok(Arc::new(NatsPubSub::connect(self.config(group)).await?))
        }

        /// A private JetStream server with a file store, restarted: the streams and their
        /// consumers come back with it.
        async fn owned_pubsub(&self) -> Result<Option<OwnedPubSub>> {
            let server = PrivateServer::start(Kind::Nats).await?;
            let ps = NatsPubSub::connect(self.config_at(server.url(), &self.group)).await?;
            let (publisher, subscriber) = crate::pubsub::conformance::pair(ps);
            Ok(Some(OwnedPubSub {
                publisher,
                subscriber,
                outage: Box::new(server),
            }))
        }
    }

    crate::conformance_tests!(NatsHarness::new());

    #[tokio::test]
    async fn a_settlement_goes_to_the_reply_subject_and_needs_one() {
        let client = async_nats::connect(url()).await.unwrap();
        let err = settle(&client, None, AckKind::Ack).await.unwrap_err();
        assert!(err.contains("no reply subject"), "{err}");
        let reply = async_nats::Subject::from(client.new_inbox());
        let mut watch = client.subscribe(reply.clone()).await.unwrap();
        settle(&client, Some(reply.clone()), AckKind::Nak(None))
            .await
            .unwrap();
        settle(&client, Some(reply), AckKind::Ack).await.unwrap();
        for expected in ["-NAK", "+ACK"] {
            let got = tokio::time::timeout(Duration::from_secs(5), watch.next())
                .await
                .expect("a settlement")
                .expect("subscription open");
            assert_eq!(&got.payload[..], expected.as_bytes());
        }
    }

    #[test]
    fn stream_names_are_safe() {
        assert_eq!(stream_name("orders.created v2"), "orders_created_v2");
    }

    #[tokio::test]
    async fn raw_bench_reports_positive_figures() {
        let f = raw_bench(&url(), 300, 100).await.unwrap();
        assert!(f.publish_per_sec > 0.0 && f.consume_per_sec > 0.0);
    }
}
