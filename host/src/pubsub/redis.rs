//! Redis Streams: one stream per topic, consumer groups, XACK on ack.
//!
//! - Publish: `XADD topic * uuid … metadata <json> payload <bytes>` (one pipeline per call).
//! - Subscribe: `XGROUP CREATE topic group 0 MKSTREAM` (a new group reads the stream from
//!   the start), then `XREADGROUP … COUNT 1 BLOCK` on a connection of its own (a blocking read
//!   on the shared connection would stall every other command). Ack = `XACK`.
//! - Nack: the entry stays pending for this consumer and is delivered again (after the
//!   message's redelivery delay, if it asked for one).
//! - Entries left pending by a consumer that died are claimed with `XAUTOCLAIM` once idle for
//!   `claim_idle`, checked every `claim_interval`.
//! - Default consumer group when none is configured: `wasmill` (so handlers of every host
//!   share a topic's messages).
//! - Reconnect: commands go through a `ConnectionManager` (reconnects by itself); the
//!   blocking reader reconnects with backoff and logs each failure with the URL.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::Value;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::{
    Publisher, SubscribeOptions, Subscriber, Subscription, SubscriptionSender, closed, wait_settled,
};
use crate::error::{Error, Result};
use crate::message::{AckState, Message};

const NAME: &str = "redis";

/// Settings of `kind = "redis"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://host:port/db`.
    pub url: String,
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
            consumer_group: None,
            max_len: None,
            claim_idle: Duration::from_secs(30),
            claim_interval: Duration::from_secs(5),
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
    /// Where a new group starts: `0` (the whole stream) or `$` (only new entries, for tails).
    group_start: &'static str,
}

fn rerr(what: impl std::fmt::Display, e: redis::RedisError) -> Error {
    Error::pubsub(NAME, what.to_string(), e)
}

fn redacted(url: &str) -> String {
    match url.split_once('@') {
        Some((scheme_user, host)) => {
            let scheme = scheme_user.split("://").next().unwrap_or("redis");
            format!("{scheme}://***@{host}")
        }
        None => url.to_string(),
    }
}

impl RedisPubSub {
    /// Connects to the server at `config.url`.
    pub async fn connect(config: RedisConfig) -> Result<Self> {
        let url = redacted(&config.url);
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| rerr(format!("invalid url {url}"), e))?;
        let commands =
            tokio::time::timeout(config.command_timeout, client.get_connection_manager())
                .await
                .map_err(|_| Error::pubsub_msg(NAME, format!("connect {url}: timed out")))?
                .map_err(|e| rerr(format!("connect {url}"), e))?;
        Ok(RedisPubSub {
            client,
            commands,
            config: Arc::new(config),
            closed: CancellationToken::new(),
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
            let metadata = serde_json::to_string(m.metadata.as_map())
                .map_err(|e| Error::pubsub(NAME, "encode metadata", e))?;
            let cmd = pipe.cmd("XADD").arg(topic);
            if let Some(n) = self.config.max_len {
                cmd.arg("MAXLEN").arg("~").arg(n);
            }
            cmd.arg("*")
                .arg("uuid")
                .arg(&m.uuid)
                .arg("metadata")
                .arg(metadata)
                .arg("payload")
                .arg(&m.payload[..]);
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

    async fn subscribe_with(
        &self,
        topic: &str,
        _options: SubscribeOptions,
    ) -> Result<Subscription> {
        if self.closed.is_cancelled() {
            return Err(closed(NAME));
        }
        self.subscribe_initialize(topic).await?;
        let (sub, sender) = Subscription::channel(1, &self.closed);
        let this = self.clone();
        let topic = topic.to_string();
        tokio::spawn(async move { this.consume(&topic, sender).await });
        Ok(sub)
    }

    async fn close(&self) -> Result<()> {
        Publisher::close(self).await
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

/// One stream entry.
struct Entry {
    id: String,
    msg: Message,
}

fn bulk(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        _ => None,
    }
}

fn parse_entry(v: &Value) -> Option<Entry> {
    let Value::Array(parts) = v else { return None };
    let id = String::from_utf8(bulk(parts.first()?)?).ok()?;
    let Value::Array(fields) = parts.get(1)? else {
        return None;
    };
    let (mut uuid, mut metadata, mut payload) = (String::new(), String::new(), Vec::new());
    for kv in fields.chunks(2) {
        let (Some(k), Some(v)) = (kv.first().and_then(bulk), kv.get(1).and_then(bulk)) else {
            continue;
        };
        match &k[..] {
            b"uuid" => uuid = String::from_utf8_lossy(&v).into_owned(),
            b"metadata" => metadata = String::from_utf8_lossy(&v).into_owned(),
            b"payload" => payload = v,
            _ => {}
        }
    }
    let mut msg = Message::with_uuid(uuid, Bytes::from(payload));
    let md: std::collections::HashMap<String, String> =
        serde_json::from_str(&metadata).unwrap_or_default();
    msg.metadata = md.into();
    Some(Entry { id, msg })
}

/// Entries of an XREADGROUP reply (`[[stream, [entry…]]…]`, RESP2 or RESP3).
fn parse_read(v: &Value) -> Vec<Entry> {
    let streams: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        Value::Map(m) => m.iter().map(|(_, v)| v).collect(),
        _ => return Vec::new(),
    };
    let mut out = Vec::new();
    for s in streams {
        let entries = match s {
            Value::Array(pair) if pair.len() == 2 => &pair[1],
            other => other,
        };
        if let Value::Array(list) = entries {
            out.extend(list.iter().filter_map(parse_entry));
        }
    }
    out
}

impl RedisPubSub {
    async fn reader(&self) -> Result<MultiplexedConnection> {
        self.client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| rerr(format!("connect {}", redacted(&self.config.url)), e))
    }

    /// Reads, delivers and acks until the subscription ends; survives server restarts.
    async fn consume(&self, topic: &str, sender: SubscriptionSender) {
        let consumer = format!("c-{}", uuid::Uuid::new_v4().simple());
        let mut backoff = Duration::from_millis(100);
        let mut last_claim = tokio::time::Instant::now();
        loop {
            if sender.is_closed() {
                return;
            }
            let mut con = match self.reader().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(topic, "redis reader: {e}; retrying in {backoff:?}");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = sender.closed() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            // After a restart the group may be gone with the stream; recreate it.
            if let Err(e) = self.create_group(&mut con, topic, self.group_start).await {
                tracing::warn!(topic, "redis: {e}");
            }
            backoff = Duration::from_millis(100);
            // First this consumer's own pending entries (id 0), then new ones (>).
            let mut from_pending = true;
            loop {
                if sender.is_closed() {
                    return;
                }
                let mut entries = Vec::new();
                if last_claim.elapsed() >= self.config.claim_interval {
                    last_claim = tokio::time::Instant::now();
                    let claimed: redis::RedisResult<Value> = redis::cmd("XAUTOCLAIM")
                        .arg(topic)
                        .arg(self.group())
                        .arg(&consumer)
                        .arg(self.config.claim_idle.as_millis() as u64)
                        .arg("0-0")
                        .arg("COUNT")
                        .arg(10)
                        .query_async(&mut con)
                        .await;
                    if let Ok(Value::Array(parts)) = &claimed
                        && let Some(Value::Array(list)) = parts.get(1)
                    {
                        entries.extend(list.iter().filter_map(parse_entry));
                    }
                }
                if entries.is_empty() {
                    let id = if from_pending { "0" } else { ">" };
                    let mut cmd = redis::cmd("XREADGROUP");
                    cmd.arg("GROUP")
                        .arg(self.group())
                        .arg(&consumer)
                        .arg("COUNT")
                        .arg(1);
                    if !from_pending {
                        cmd.arg("BLOCK").arg(self.config.block.as_millis() as u64);
                    }
                    cmd.arg("STREAMS").arg(topic).arg(id);
                    let read = tokio::select! {
                        r = cmd.query_async::<Value>(&mut con) => r,
                        _ = sender.closed() => return,
                    };
                    match read {
                        Ok(v) => entries = parse_read(&v),
                        Err(e) => {
                            if e.to_string().contains("NOGROUP") {
                                let _ = self.create_group(&mut con, topic, self.group_start).await;
                                continue;
                            }
                            tracing::warn!(topic, url = %redacted(&self.config.url), "redis read failed: {e}; reconnecting");
                            break;
                        }
                    }
                    if entries.is_empty() && from_pending {
                        from_pending = false;
                        continue;
                    }
                }
                for entry in entries {
                    if !self.deliver(topic, &entry, &sender, &mut con).await {
                        break;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = sender.closed() => return,
            }
        }
    }

    /// Delivers one entry until it is acked (nack = deliver again). Returns `false` if the
    /// subscription ended or the connection failed (the entry stays pending: not lost).
    async fn deliver(
        &self,
        topic: &str,
        entry: &Entry,
        sender: &SubscriptionSender,
        con: &mut MultiplexedConnection,
    ) -> bool {
        loop {
            let msg = entry.msg.copy();
            if sender.send(msg.clone()).await.is_err() {
                return false;
            }
            match wait_settled(&msg, sender).await {
                AckState::Acked => {
                    let r: redis::RedisResult<i64> = redis::cmd("XACK")
                        .arg(topic)
                        .arg(self.group())
                        .arg(&entry.id)
                        .query_async(con)
                        .await;
                    if let Err(e) = r {
                        tracing::warn!(topic, id = %entry.id, "XACK failed (will be redelivered): {e}");
                        return false;
                    }
                    return true;
                }
                _ if sender.is_closed() => return false,
                _ => {
                    if let Some(d) = msg.redelivery_delay() {
                        tokio::select! {
                            _ = tokio::time::sleep(d) => {}
                            _ = sender.closed() => return false,
                        }
                    }
                }
            }
        }
    }
}

/// The raw client's throughput: XADD in pipelines of 100, then XREADGROUP COUNT 100 + XACK.
pub async fn raw_bench(
    url: &str,
    messages: usize,
    payload_size: usize,
) -> Result<super::RawBenchFigures> {
    let client = redis::Client::open(url).map_err(|e| rerr("open", e))?;
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| rerr("connect", e))?;
    let topic = format!("raw_bench_{}", uuid::Uuid::new_v4().simple());
    let payload = vec![b'x'; payload_size];
    let start = std::time::Instant::now();
    let mut sent = 0;
    while sent < messages {
        let n = 100.min(messages - sent);
        let mut pipe = redis::pipe();
        for _ in 0..n {
            pipe.cmd("XADD")
                .arg(&topic)
                .arg("*")
                .arg("payload")
                .arg(&payload[..]);
        }
        pipe.query_async::<Value>(&mut con)
            .await
            .map_err(|e| rerr("XADD", e))?;
        sent += n;
    }
    let publish = start.elapsed();
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&topic)
        .arg("g")
        .arg("0")
        .query_async::<Value>(&mut con)
        .await
        .map_err(|e| rerr("XGROUP", e))?;
    let start = std::time::Instant::now();
    let mut got = 0;
    while got < messages {
        let v: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("g")
            .arg("c")
            .arg("COUNT")
            .arg(100)
            .arg("STREAMS")
            .arg(&topic)
            .arg(">")
            .query_async(&mut con)
            .await
            .map_err(|e| rerr("XREADGROUP", e))?;
        let entries = parse_read(&v);
        if entries.is_empty() {
            break;
        }
        let mut ack = redis::cmd("XACK");
        ack.arg(&topic).arg("g");
        for e in &entries {
            ack.arg(&e.id);
        }
        ack.query_async::<i64>(&mut con)
            .await
            .map_err(|e| rerr("XACK", e))?;
        got += entries.len();
    }
    let consume = start.elapsed();
    redis::cmd("DEL")
        .arg(&topic)
        .query_async::<i64>(&mut con)
        .await
        .map_err(|e| rerr("DEL", e))?;
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
        std::env::var("WASMILL_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
    }

    struct RedisHarness {
        group: String,
    }

    impl RedisHarness {
        fn new() -> Self {
            RedisHarness {
                group: format!("g-{}", uuid::Uuid::new_v4().simple()),
            }
        }
        fn config(&self, group: &str) -> RedisConfig {
            RedisConfig {
                url: url(),
                consumer_group: Some(group.to_string()),
                claim_idle: Duration::from_secs(2),
                claim_interval: Duration::from_millis(500),
                block: Duration::from_millis(200),
                ..RedisConfig::default()
            }
        }
    }

    async fn run(cmd: &str) -> Result<()> {
        let status = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .status()
            .await
            .map_err(|e| Error::io(format!("run {cmd}"), e))?;
        if !status.success() {
            return Err(Error::Other(format!("{cmd}: {status}")));
        }
        Ok(())
    }

    #[async_trait]
    impl Harness for RedisHarness {
        fn features(&self) -> Features {
            Features {
                consumer_groups: true,
                guaranteed_order_with_single_subscriber: true,
                persistent: true,
                new_subscriber_receives_old_messages: true,
                restart_server: true,
                ..Features::default()
            }
        }

        async fn pubsub(&self) -> Result<(DynPublisher, DynSubscriber)> {
            let ps = RedisPubSub::connect(self.config(&self.group)).await?;
            Ok((Arc::new(ps.clone()), Arc::new(ps)))
        }

        async fn subscriber_in_group(&self, group: &str) -> Result<DynSubscriber> {
            Ok(Arc::new(RedisPubSub::connect(self.config(group)).await?))
        }

        async fn restart_server(&self) -> Result<()> {
            // `save` keeps the streams across the restart (the server runs with --save "").
            let _ = run("redis-cli -p 6379 shutdown save").await;
            for _ in 0..50 {
                if run("redis-cli -p 6379 ping >/dev/null 2>&1").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            run("redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save '' --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log").await?;
            for _ in 0..100 {
                if run("redis-cli -p 6379 ping >/dev/null 2>&1").await.is_ok() {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(Error::Other("redis did not come back".into()))
        }

        fn server_name(&self) -> &'static str {
            NAME
        }
    }

    crate::conformance_tests!(RedisHarness::new());

    #[tokio::test]
    async fn unreachable_server_is_a_clear_error() {
        let err = RedisPubSub::connect(RedisConfig {
            url: "redis://user:secret@127.0.0.1:1".into(),
            command_timeout: Duration::from_secs(2),
            ..RedisConfig::default()
        })
        .await
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.contains("redis") && err.contains("127.0.0.1:1"),
            "{err}"
        );
        assert!(!err.contains("secret"), "password leaked: {err}");
    }

    #[tokio::test]
    async fn raw_bench_reports_positive_figures() {
        let f = raw_bench(&url(), 500, 100).await.unwrap();
        assert!(f.publish_per_sec > 0.0 && f.consume_per_sec > 0.0);
    }
}
