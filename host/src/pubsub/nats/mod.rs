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

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind};
use async_trait::async_trait;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod pull;

use self::pull::{PullInbox, Pulled};
use super::ack_batcher::AckBatcher;
use super::kit::url::scheme;
use super::kit::{Reconnect, redacted, tls};
use super::read_ahead::{Fetched, Fetcher, ReadAhead, ReadAheadOptions};
use super::{Publisher, SubscribeOptions, Subscriber, Subscription, closed};
use crate::error::{Error, Result};
use crate::message::Message;
use crate::pubsub::registry::{self, Backend};

mod fetch;

use fetch::*;

const NAME: &str = "nats";
const UUID_HEADER: &str = "Wasmill-Uuid";

/// Settings of `kind = "nats"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// `nats://host:port`, or `tls://host:port` to require TLS (the server's certificate
    /// checked against the system's roots and `ca_file`).
    pub url: String,
    /// A PEM file of a CA to trust besides the system's roots (TLS is then required).
    pub ca_file: Option<PathBuf>,
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
            ca_file: None,
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

pub(crate) fn nerr(
    what: impl std::fmt::Display,
    e: impl std::error::Error + Send + Sync + 'static,
) -> Error {
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

/// Whether a failed connect is one that trying again cannot fix: TLS (a certificate the client
/// does not trust comes as an I/O error of kind `InvalidData`), credentials, a bad URL.
fn refused_for_good(e: &async_nats::ConnectError) -> bool {
    use async_nats::ConnectErrorKind as Kind;
    let invalid_data = std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData);
    match e.kind() {
        Kind::Tls | Kind::Authentication | Kind::AuthorizationViolation | Kind::ServerParse => true,
        Kind::Io => invalid_data,
        _ => false,
    }
}

impl NatsPubSub {
    /// Connects to the server at `config.url`.
    pub async fn connect(config: NatsConfig) -> Result<Self> {
        let shown = redacted(&config.url);
        let tls = match config.ca_file.is_some() || scheme(&config.url) == "tls" {
            true => Some(tls::client_config(NAME, config.ca_file.as_ref())?),
            false => None,
        };
        let options = |retry: bool| {
            let mut options = async_nats::ConnectOptions::new();
            if retry {
                options = options.retry_on_initial_connect();
            }
            if let Some(tls) = &tls {
                options = options
                    .tls_client_config(rustls::ClientConfig::clone(tls))
                    .require_tls(true);
            }
            options
        };
        let timed_out = || Error::pubsub_msg(NAME, format!("connect {shown}: timed out"));
        // One attempt first: a certificate or credentials the server refuses is an error to
        // report now, not to retry forever; a server not up yet is waited for as before.
        let first = tokio::time::timeout(
            config.request_timeout,
            options(false).connect(config.url.as_str()),
        )
        .await;
        let client = match first {
            Ok(Ok(client)) => client,
            Ok(Err(e)) if refused_for_good(&e) => {
                return Err(nerr(format!("connect {shown}"), e));
            }
            _ => tokio::time::timeout(
                config.request_timeout,
                options(true).connect(config.url.as_str()),
            )
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| nerr(format!("connect {shown}"), e))?,
        };
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

/// A message's uuid and metadata as JetStream headers.
pub(crate) fn headers(m: &Message) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(UUID_HEADER, m.uuid.as_str());
    for (k, v) in m.metadata.iter() {
        headers.insert(k, v);
    }
    headers
}

/// This backend in the registry's table ([`registry::BACKENDS`]).
pub const BACKEND: registry::BackendKind = registry::BackendKind {
    name: "nats",
    check: registry::check_as::<NatsConfig>,
    connect: |name, table| {
        Box::pin(async move {
            let cfg: NatsConfig = registry::settings(&name, &table)?;
            let ps = NatsPubSub::connect(cfg).await?;
            Ok(Backend::shared(&name, "nats", ps.clone())
                .with_tail(move || ps.in_group(&registry::tail_group(), true)))
        })
    },
    raw_bench: Some(|name, table, messages, payload_size| {
        Box::pin(async move {
            let cfg: NatsConfig = registry::settings(&name, &table)?;
            crate::bench::raw::nats::run(&cfg.url, messages, payload_size).await
        })
    }),
};

#[cfg(test)]
mod tests;
