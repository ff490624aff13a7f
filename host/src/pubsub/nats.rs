//! NATS JetStream: one stream per topic (file storage), a durable pull consumer per consumer
//! group, explicit acks.
//!
//! - Stream name: the topic with every character outside `[A-Za-z0-9_-]` replaced by `_`
//!   (JetStream forbids `.`, `*`, `>` and spaces in names); its subject is the topic itself.
//! - Publish waits for JetStream's ack (a publisher confirm). The uuid travels in the
//!   `Wasmill-Uuid` header and metadata in headers of their own names.
//! - Consumer group: a durable consumer named after the group (default `wasmill`),
//!   `DeliverPolicy::All` so a new group reads earlier messages, `max_ack_pending` = the
//!   subscription's `max_in_flight` (1 keeps order).
//! - Ack = `Ack`; nack = `Nak(delay)` with the message's redelivery delay.
//! - Reconnect: the client reconnects by itself; the pull loop re-creates its message stream
//!   after an error, with backoff, logging the URL.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::{
    Publisher, SubscribeOptions, Subscriber, Subscription, SubscriptionSender, closed, wait_settled,
};
use crate::error::{Error, Result};
use crate::message::{AckState, Message};

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
    only_new: bool,
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
            only_new: false,
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
            ..self.clone()
        }
    }

    async fn stream(&self, topic: &str) -> Result<jetstream::stream::Stream> {
        self.js
            .get_or_create_stream(jetstream::stream::Config {
                name: stream_name(topic),
                subjects: vec![topic.to_string()],
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| nerr(format!("create stream for {topic}"), e))
    }

    async fn consumer(
        &self,
        topic: &str,
        max_in_flight: usize,
    ) -> Result<jetstream::consumer::PullConsumer> {
        let group = stream_name(&self.group());
        self.stream(topic)
            .await?
            .get_or_create_consumer(
                &group,
                jetstream::consumer::pull::Config {
                    durable_name: Some(group.clone()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: self.config.ack_wait,
                    max_ack_pending: max_in_flight.max(1) as i64,
                    deliver_policy: if self.only_new {
                        jetstream::consumer::DeliverPolicy::New
                    } else {
                        jetstream::consumer::DeliverPolicy::All
                    },
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| nerr(format!("create consumer {group} of {topic}"), e))
    }
}

#[async_trait]
impl Publisher for NatsPubSub {
    async fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<()> {
        if self.closed.is_cancelled() {
            return Err(closed(NAME));
        }
        self.stream(topic).await?;
        for m in messages {
            let mut headers = HeaderMap::new();
            headers.insert(UUID_HEADER, m.uuid.as_str());
            for (k, v) in m.metadata.iter() {
                headers.insert(k, v);
            }
            let ack = self
                .js
                .publish_with_headers(topic.to_string(), headers, m.payload.clone())
                .await
                .map_err(|e| nerr(format!("publish to {topic}"), e))?;
            ack.await
                .map_err(|e| nerr(format!("publish to {topic}: no ack"), e))?;
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
impl Subscriber for NatsPubSub {
    async fn subscribe_initialize(&self, topic: &str) -> Result<()> {
        self.consumer(topic, 1).await.map(|_| ())
    }

    async fn subscribe_with(&self, topic: &str, options: SubscribeOptions) -> Result<Subscription> {
        if self.closed.is_cancelled() {
            return Err(closed(NAME));
        }
        let consumer = self.consumer(topic, options.max_in_flight).await?;
        let (sub, sender) = Subscription::channel(options.max_in_flight, &self.closed);
        let this = self.clone();
        let topic = topic.to_string();
        let max = options.max_in_flight;
        tokio::spawn(async move { this.consume(&topic, consumer, max, sender).await });
        Ok(sub)
    }

    async fn close(&self) -> Result<()> {
        Publisher::close(self).await
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

fn to_message(m: &jetstream::Message) -> Message {
    let mut uuid = String::new();
    let mut out_md = Vec::new();
    if let Some(h) = &m.headers {
        for (k, values) in h.iter() {
            let Some(v) = values.first() else { continue };
            if AsRef::<str>::as_ref(k) == UUID_HEADER {
                uuid = v.as_str().to_string();
            } else {
                out_md.push((k.to_string(), v.as_str().to_string()));
            }
        }
    }
    let mut msg = Message::with_uuid(uuid, Bytes::copy_from_slice(&m.payload));
    for (k, v) in out_md {
        msg.metadata.set(k, v);
    }
    msg
}

impl NatsPubSub {
    async fn consume(
        &self,
        topic: &str,
        mut consumer: jetstream::consumer::PullConsumer,
        max_in_flight: usize,
        sender: SubscriptionSender,
    ) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut stream = match consumer.messages().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(topic, url = %self.config.url, "nats: pull failed: {e}; retrying in {backoff:?}");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = sender.closed() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    if let Ok(c) = self.consumer(topic, max_in_flight).await {
                        consumer = c;
                    }
                    continue;
                }
            };
            loop {
                let next = tokio::select! {
                    n = stream.next() => n,
                    _ = sender.closed() => return,
                };
                match next {
                    Some(Ok(js_msg)) => {
                        backoff = Duration::from_millis(100);
                        let msg = to_message(&js_msg);
                        if sender.send(msg.clone()).await.is_err() {
                            return;
                        }
                        let sender = sender.clone();
                        let settle = async move {
                            let kind = match wait_settled(&msg, &sender).await {
                                AckState::Acked => AckKind::Ack,
                                _ => AckKind::Nak(msg.redelivery_delay()),
                            };
                            if let Err(e) = js_msg.ack_with(kind).await {
                                tracing::warn!(
                                    "nats: ack failed (the message will be redelivered): {e}"
                                );
                            }
                        };
                        if max_in_flight <= 1 {
                            settle.await;
                        } else {
                            tokio::spawn(settle);
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(topic, url = %self.config.url, "nats: message stream error: {e}");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                    None => break,
                }
            }
        }
    }
}

/// The raw client's throughput: publish with acks, then pull and ack.
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
    let mut acks = Vec::with_capacity(256);
    for _ in 0..messages {
        acks.push(
            js.publish(topic.clone(), payload.clone())
                .await
                .map_err(|e| nerr("publish", e))?,
        );
        if acks.len() == 256 {
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
    use crate::pubsub::conformance::{Features, Harness};
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
                group: format!("g-{}", uuid::Uuid::new_v4().simple()),
            }
        }
        fn config(&self, group: &str) -> NatsConfig {
            NatsConfig {
                url: url(),
                consumer_group: Some(group.to_string()),
                ack_wait: Duration::from_secs(5),
                ..NatsConfig::default()
            }
        }
    }

    async fn sh(cmd: &str) -> bool {
        tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .status()
            .await
            .is_ok_and(|s| s.success())
    }

    async fn port_open() -> bool {
        tokio::net::TcpStream::connect("127.0.0.1:4222")
            .await
            .is_ok()
    }

    #[async_trait]
    impl Harness for NatsHarness {
        fn features(&self) -> Features {
            Features {
                consumer_groups: true,
                guaranteed_order: true,
                guaranteed_order_with_single_subscriber: true,
                persistent: true,
                new_subscriber_receives_old_messages: true,
                restart_server: true,
                ..Features::default()
            }
        }

        async fn pubsub(&self) -> Result<(DynPublisher, DynSubscriber)> {
            let ps = NatsPubSub::connect(self.config(&self.group)).await?;
            Ok((Arc::new(ps.clone()), Arc::new(ps)))
        }

        async fn subscriber_in_group(&self, group: &str) -> Result<DynSubscriber> {
            Ok(Arc::new(NatsPubSub::connect(self.config(group)).await?))
        }

        async fn restart_server(&self) -> Result<()> {
            sh("start-stop-daemon --stop --oknodo --retry 10 --exec /usr/sbin/nats-server").await;
            for _ in 0..100 {
                if !port_open().await {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            sh("start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log").await;
            for _ in 0..100 {
                if port_open().await {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(Error::Other("nats-server did not come back".into()))
        }

        fn server_name(&self) -> &'static str {
            NAME
        }
    }

    crate::conformance_tests!(NatsHarness::new());

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
