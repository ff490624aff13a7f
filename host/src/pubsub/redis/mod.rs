//! Redis Streams: one stream per topic, consumer groups, XACK on ack.
//!
//! - Publish: `XADD topic * uuid … [metadata <json>] payload <bytes>` (one pipeline per call;
//!   empty metadata is left out).
//! - Subscribe: `XGROUP CREATE topic group 0 MKSTREAM` (a new group reads the stream from
//!   the start), then `XREADGROUP … COUNT read_count BLOCK` on a connection of its own (a
//!   blocking read on the shared connection would stall every other command). The entries
//!   read are delivered from memory by the consumer's own task ([`super::read_ahead`]),
//!   `max_in_flight` unacked at a time; entries read but not delivered when the subscription
//!   ends are handed back to the group (`XCLAIM … IDLE`) for the next `XAUTOCLAIM`.
//!   Ack = `XACK`, sent in the background, many ids per command.
//! - Nack: the entry stays pending for this consumer and is delivered again (after the
//!   message's redelivery delay, if it asked for one).
//! - Entries left pending by a consumer that died are claimed with `XAUTOCLAIM` once idle for
//!   `claim_idle`, checked every `claim_interval`.
//! - Default consumer group when none is configured: `wasmill` (so handlers of every host
//!   share a topic's messages).
//! - Reconnect: commands go through a `ConnectionManager` (reconnects by itself); the
//!   blocking reader reconnects with backoff and logs each failure with the URL.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::Value;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ack_batcher::AckBatcher;
use super::kit::url::scheme;
use super::kit::{Reconnect, redacted, tls};
use super::read_ahead::{Fetched, Fetcher, ReadAhead, ReadAheadOptions};
use super::{Publisher, SubscribeOptions, Subscriber, Subscription, closed};
use crate::error::{Error, Result};
use crate::message::Message;
use crate::pubsub::registry::{self, Backend};

mod delayed;
mod fetch;

pub(crate) use fetch::parse_read;
use fetch::*;

const NAME: &str = "redis";

/// Most ids one background `XACK` carries.
const ACK_BATCH: usize = 256;

/// Reads a subscription keeps in flight while it delivers a full batch: the server answers
/// one while the client parses the other (profiled with one: the consumer waited for the
/// reply's parsing, the server for the next read).
const READS_AHEAD: usize = 2;

/// Settings of `kind = "redis"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://host:port/db`, or `rediss://host:port/db` for TLS (the server's certificate
    /// checked against the system's roots, or against `ca_file` alone when it is set).
    pub url: String,
    /// A PEM file of the CA that signed the server's certificate (with `rediss://`).
    pub ca_file: Option<PathBuf>,
    /// Consumer group of the subscriptions (default `wasmill`).
    pub consumer_group: Option<String>,
    /// Trim streams to about this many entries on publish (`MAXLEN ~`); unbounded when unset.
    pub max_len: Option<u64>,
    /// How long an entry must sit unacked with a consumer before another may claim it.
    #[serde(with = "crate::config::duration")]
    pub claim_idle: Duration,
    /// How often to look for such entries.
    #[serde(with = "crate::config::duration")]
    pub claim_interval: Duration,
    /// How many entries one read takes (at least the subscription's `max_in_flight`): they
    /// are delivered one after another from memory, without a round trip each. Entries read
    /// but not delivered when a subscription ends are handed back to the group at once.
    pub read_count: usize,
    /// How long one blocking read waits (bounds how fast a close is noticed).
    #[serde(with = "crate::config::duration")]
    pub block: Duration,
    /// Bound on each command, so a dead server turns into an error, not a hang.
    #[serde(with = "crate::config::duration")]
    pub command_timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            ca_file: None,
            consumer_group: None,
            max_len: None,
            claim_idle: Duration::from_secs(30),
            claim_interval: Duration::from_secs(5),
            read_count: 100,
            block: Duration::from_millis(500),
            command_timeout: Duration::from_secs(5),
        }
    }
}

/// The Redis Streams pub/sub; publisher and subscriber in one.
#[derive(Clone)]
pub struct RedisPubSub {
    client: redis::Client,
    commands: ConnectionManager,
    config: Arc<RedisConfig>,
    closed: CancellationToken,
    /// Background work of ended subscriptions (their last acks), awaited by `close`.
    tasks: TaskTracker,
    /// Where a new group starts: `0` (the whole stream) or `$` (only new entries, for tails).
    group_start: &'static str,
}

pub(crate) fn rerr(what: impl std::fmt::Display, e: redis::RedisError) -> Error {
    Error::pubsub(NAME, what.to_string(), e)
}

/// The client for `config`: TLS with `rediss://`, trusting `ca_file` when set.
fn client(config: &RedisConfig) -> Result<redis::Client> {
    let url = redacted(&config.url);
    let tls = scheme(&config.url) == "rediss";
    if tls {
        tls::install_provider();
    }
    let client = match &config.ca_file {
        None => redis::Client::open(config.url.as_str()),
        Some(_) if !tls => {
            return Err(Error::pubsub_msg(
                NAME,
                format!("ca_file is set but url {url} is not rediss:// (TLS)"),
            ));
        }
        Some(ca) => redis::Client::build_with_tls(
            config.url.as_str(),
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(tls::read_ca_pem(NAME, ca)?.into_bytes()),
            },
        ),
    };
    client.map_err(|e| rerr(format!("invalid url {url}"), e))
}

impl RedisPubSub {
    /// Connects to the server at `config.url`.
    pub async fn connect(config: RedisConfig) -> Result<Self> {
        let url = redacted(&config.url);
        let client = client(&config)?;
        let manager = tokio::time::timeout(config.command_timeout, client.get_connection_manager());
        let commands = match manager.await {
            Ok(made) => made.map_err(|e| rerr(format!("connect {url}"), e))?,
            Err(_) => {
                // The manager retries quietly: one direct attempt tells why (a certificate the
                // client does not trust, a refused password, a server that is not there).
                let direct = client.get_multiplexed_async_connection();
                let cause = match tokio::time::timeout(config.command_timeout, direct).await {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_string(),
                };
                return Err(Error::pubsub_msg(NAME, format!("connect {url}: {cause}")));
            }
        };
        Ok(RedisPubSub {
            client,
            commands,
            config: Arc::new(config),
            closed: CancellationToken::new(),
            tasks: TaskTracker::new(),
            group_start: "0",
        })
    }

    fn group(&self) -> &str {
        self.config.consumer_group.as_deref().unwrap_or("wasmill")
    }

    /// The same server with another consumer group (for a tail that must not steal messages);
    /// with `only_new`, the group starts at the end of the stream.
    pub fn in_group(&self, group: &str, only_new: bool) -> RedisPubSub {
        let mut config = (*self.config).clone();
        config.consumer_group = Some(group.to_string());
        RedisPubSub {
            config: Arc::new(config),
            group_start: if only_new { "$" } else { "0" },
            // Closing it leaves this backend open; closing this backend closes it.
            closed: self.closed.child_token(),
            tasks: TaskTracker::new(),
            ..self.clone()
        }
    }

    async fn create_group(
        &self,
        con: &mut impl redis::aio::ConnectionLike,
        topic: &str,
        start: &str,
    ) -> Result<()> {
        let r: redis::RedisResult<Value> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(topic)
            .arg(self.group())
            .arg(start)
            .arg("MKSTREAM")
            .query_async(con)
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("BUSYGROUP") => Ok(()),
            Err(e) => Err(rerr(format!("create group {} on {topic}", self.group()), e)),
        }
    }
}

#[async_trait]
impl Publisher for RedisPubSub {
    async fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<()> {
        if self.closed.is_cancelled() {
            return Err(closed(NAME));
        }
        let mut pipe = redis::pipe();
        for m in &messages {
            if let Some(due) = super::delay::due_millis(m) {
                pipe.cmd("ZADD")
                    .arg(delayed::key(topic))
                    .arg(due)
                    .arg(delayed::member(m));
                continue;
            }
            let cmd = pipe.cmd("XADD").arg(topic);
            if let Some(n) = self.config.max_len {
                cmd.arg("MAXLEN").arg("~").arg(n);
            }
            cmd.arg("*").arg("uuid").arg(&m.uuid);
            // Empty metadata is left out (read back as empty).
            if !m.metadata.is_empty() {
                cmd.arg("metadata")
                    .arg(super::stored::encode_metadata(&m.metadata));
            }
            cmd.arg("payload").arg(&m.payload[..]);
        }
        let mut con = self.commands.clone();
        tokio::time::timeout(
            self.config.command_timeout,
            pipe.query_async::<Value>(&mut con),
        )
        .await
        .map_err(|_| Error::pubsub_msg(NAME, format!("publish to {topic}: timed out")))?
        .map_err(|e| rerr(format!("publish to {topic}"), e))?;
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        self.closed.cancel();
        // The last acks of ended subscriptions reach the server before close returns.
        self.tasks.close();
        if tokio::time::timeout(self.config.command_timeout, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("redis: acks still unsent at close (they are redelivered)");
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

#[async_trait]
impl Subscriber for RedisPubSub {
    async fn subscribe_initialize(&self, topic: &str) -> Result<()> {
        let mut con = self.commands.clone();
        self.create_group(&mut con, topic, self.group_start).await
    }

    async fn subscribe_with(&self, topic: &str, options: SubscribeOptions) -> Result<Subscription> {
        if self.closed.is_cancelled() {
            return Err(closed(NAME));
        }
        self.subscribe_initialize(topic).await?;
        let options = ReadAheadOptions {
            max_in_flight: options.max_in_flight,
            read_count: self.config.read_count,
            // Soon another consumer could claim them while this one still holds them.
            max_wait: self.config.claim_idle / 2,
            redelivery_delay: Duration::ZERO,
        };
        let source = ReadAhead::new(RedisFetch::new(self.clone(), topic), options);
        Ok(Subscription::pull(source, &self.closed))
    }

    async fn close(&self) -> Result<()> {
        Publisher::close(self).await
    }

    async fn end_tail(&self, topic: &str) -> Result<()> {
        // Its readers stop first: a read that finds no group makes it again.
        Publisher::close(self).await?;
        let mut con = self.commands.clone();
        // A reader dropped mid-way may have sent its XGROUP CREATE on its own connection just
        // before: it can reach the server after the first DESTROY, so destroy once more a
        // moment later (DESTROY of a missing group is a no-op).
        for pause in [Duration::ZERO, TAIL_SETTLE] {
            tokio::time::sleep(pause).await;
            tokio::time::timeout(
                self.config.command_timeout,
                redis::cmd("XGROUP")
                    .arg("DESTROY")
                    .arg(topic)
                    .arg(self.group())
                    .query_async::<Value>(&mut con),
            )
            .await
            .map_err(|_| Error::pubsub_msg(NAME, format!("destroy group of {topic}: timed out")))?
            .map_err(|e| rerr(format!("destroy group {} of {topic}", self.group()), e))?;
        }
        Ok(())
    }

    async fn remove_topic(&self, topic: &str) -> Result<bool> {
        let mut con = self.commands.clone();
        let deleted: i64 = tokio::time::timeout(
            self.config.command_timeout,
            redis::cmd("DEL")
                .arg(topic)
                .arg(delayed::key(topic))
                .query_async(&mut con),
        )
        .await
        .map_err(|_| Error::pubsub_msg(NAME, format!("remove {topic}: timed out")))?
        .map_err(|e| rerr(format!("remove {topic}"), e))?;
        Ok(deleted > 0)
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

/// How long after destroying a tail's group `end_tail` destroys it once more.
const TAIL_SETTLE: Duration = Duration::from_millis(200);

/// This backend in the registry's table ([`registry::BACKENDS`]).
pub const BACKEND: registry::BackendKind = registry::BackendKind {
    name: "redis",
    check: registry::check_as::<RedisConfig>,
    connect: |name, table| {
        Box::pin(async move {
            let cfg: RedisConfig = registry::settings(&name, &table)?;
            let ps = RedisPubSub::connect(cfg).await?;
            Ok(Backend::shared(&name, "redis", ps.clone())
                .with_tail(move || ps.in_group(&registry::tail_group(), true)))
        })
    },
    raw_bench: Some(|name, table, messages, payload_size| {
        Box::pin(async move {
            let cfg: RedisConfig = registry::settings(&name, &table)?;
            crate::bench::raw::redis::run(&cfg.url, messages, payload_size).await
        })
    }),
};

#[cfg(test)]
mod tests;
