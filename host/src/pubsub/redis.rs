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
use super::read_ahead::{Fetched, Fetcher, ReadAhead, ReadAheadOptions};
use super::{Publisher, SubscribeOptions, Subscriber, Subscription, closed};
use crate::error::{Error, Result};
use crate::message::Message;

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
            redis::cmd("DEL").arg(topic).query_async(&mut con),
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

/// One stream entry.
struct Entry {
    id: String,
    msg: Message,
}

/// The bytes of a string value, moved out of the reply.
fn bulk(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

fn parse_entry(v: Value) -> Option<Entry> {
    let Value::Array(parts) = v else { return None };
    let mut parts = parts.into_iter();
    let id = String::from_utf8(bulk(parts.next()?)?).ok()?;
    let Value::Array(fields) = parts.next()? else {
        return None;
    };
    let (mut uuid, mut metadata, mut payload) = (String::new(), Vec::new(), Vec::new());
    let mut fields = fields.into_iter();
    while let (Some(k), Some(v)) = (fields.next(), fields.next()) {
        let (Some(k), Some(v)) = (bulk(k), bulk(v)) else {
            continue;
        };
        match &k[..] {
            b"uuid" => {
                uuid = String::from_utf8(v)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
            }
            b"metadata" => metadata = v,
            b"payload" => payload = v,
            _ => {}
        }
    }
    let mut msg = Message::with_uuid(uuid, Bytes::from(payload));
    msg.metadata = super::stored::decode_metadata(NAME, &msg.uuid, &metadata);
    Some(Entry { id, msg })
}

/// Entries of an XREADGROUP reply (`[[stream, [entry…]]…]`, RESP2 or RESP3).
fn parse_read(v: Value) -> Vec<Entry> {
    let streams: Vec<Value> = match v {
        Value::Array(a) => a,
        Value::Map(m) => m.into_iter().map(|(_, v)| v).collect(),
        _ => return Vec::new(),
    };
    let mut out = Vec::new();
    for s in streams {
        let entries = match s {
            Value::Array(mut pair) if pair.len() == 2 => pair.swap_remove(1),
            other => other,
        };
        if let Value::Array(list) = entries {
            out.extend(list.into_iter().filter_map(parse_entry));
        }
    }
    out
}

impl RedisPubSub {
    /// A connection of its own for a subscription's blocking reads. Its response timeout
    /// covers a whole `BLOCK` plus `command_timeout`: with the client's default (500 ms, the
    /// default `block` too) every read of an idle stream timed out and reconnected.
    async fn reader(&self) -> Result<MultiplexedConnection> {
        let config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(self.config.block + self.config.command_timeout));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| rerr(format!("connect {}", redacted(&self.config.url)), e))
    }

    /// Acks `ids` with one `XACK`; a failure leaves them pending, to be claimed again.
    async fn ack(&self, topic: &str, ids: &[String]) {
        let mut con = self.commands.clone();
        let r = tokio::time::timeout(
            self.config.command_timeout,
            redis::cmd("XACK")
                .arg(topic)
                .arg(self.group())
                .arg(ids)
                .query_async::<i64>(&mut con),
        )
        .await;
        let failure = match r {
            Ok(Ok(_)) => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_string(),
        };
        tracing::warn!(
            topic,
            count = ids.len(),
            "XACK failed (the entries will be redelivered): {failure}"
        );
    }

    /// Hands entries this consumer read but will not deliver back to the group: their idle
    /// time is set to `claim_idle`, so the next `XAUTOCLAIM` of any consumer takes them.
    async fn release(&self, topic: &str, consumer: &str, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        let mut con = self.commands.clone();
        let r = tokio::time::timeout(
            self.config.command_timeout,
            redis::cmd("XCLAIM")
                .arg(topic)
                .arg(self.group())
                .arg(consumer)
                .arg(0)
                .arg(ids)
                .arg("IDLE")
                .arg(self.config.claim_idle.as_millis() as u64)
                .arg("JUSTID")
                .query_async::<Value>(&mut con),
        )
        .await;
        if !matches!(r, Ok(Ok(_))) {
            tracing::debug!(
                topic,
                count = ids.len(),
                "redis: could not release undelivered entries; they are claimed after claim_idle"
            );
        }
    }
}

/// How a subscription reads its topic: `XAUTOCLAIM` of abandoned entries every
/// `claim_interval` (at once for a new subscription), else `XREADGROUP … >` with `BLOCK`, on
/// a connection of its own, reconnecting with backoff. After a full batch the next
/// [`READS_AHEAD`] reads are sent at once (pipelined on the connection, each in a task of its
/// own, taken in the order sent), so replies travel and are parsed while this batch is
/// delivered. Acks go out in the background.
struct RedisFetch {
    pubsub: RedisPubSub,
    topic: Arc<str>,
    /// This subscription's consumer name in the group.
    consumer: Arc<str>,
    con: Option<MultiplexedConnection>,
    backoff: Duration,
    last_claim: Option<tokio::time::Instant>,
    /// The reads sent ahead, oldest first.
    next: VecDeque<tokio::task::JoinHandle<Read>>,
    acks: AckBatcher<String>,
}

/// What one read brought.
struct Read {
    since: tokio::time::Instant,
    entries: Vec<Entry>,
    /// The connection failed: reconnect before the next read.
    broken: bool,
}

impl RedisFetch {
    fn new(pubsub: RedisPubSub, topic: &str) -> Self {
        let acks = {
            let this = pubsub.clone();
            let topic = topic.to_string();
            AckBatcher::spawn(ACK_BATCH, move |ids: Vec<String>| {
                let this = this.clone();
                let topic = topic.clone();
                async move { this.ack(&topic, &ids).await }
            })
        };
        RedisFetch {
            pubsub,
            topic: topic.into(),
            consumer: format!("c-{}", uuid::Uuid::new_v4().simple()).into(),
            con: None,
            backoff: Duration::from_millis(100),
            last_claim: None,
            next: VecDeque::with_capacity(READS_AHEAD),
            acks,
        }
    }

    /// The reader connection, (re)connected and with the group in place; `None` after a
    /// failure, once the backoff has passed.
    async fn connection(&mut self) -> Option<MultiplexedConnection> {
        if let Some(con) = &self.con {
            return Some(con.clone());
        }
        let ps = &self.pubsub;
        if ps.closed.is_cancelled() {
            return None;
        }
        match ps.reader().await {
            Ok(mut con) => {
                // After a restart the group may be gone with the stream; recreate it.
                if let Err(e) = ps.create_group(&mut con, &self.topic, ps.group_start).await {
                    tracing::warn!(topic = %self.topic, "redis: {e}");
                }
                self.backoff = Duration::from_millis(100);
                self.con = Some(con.clone());
                Some(con)
            }
            Err(e) => {
                tracing::warn!(topic = %self.topic, "redis reader: {e}; retrying in {:?}", self.backoff);
                tokio::time::sleep(self.backoff).await;
                self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
                None
            }
        }
    }

    /// Sends a read of up to `max` entries, finished in a task of its own. Returns whether it
    /// is a claim (`XAUTOCLAIM` then maybe `XREADGROUP`): a claim is sent only when no read is
    /// in flight, and nothing is sent behind it, since its second command would reach the
    /// server after a read sent later and take newer entries first.
    async fn send_read(&mut self, con: MultiplexedConnection, max: usize) -> bool {
        let claim = self.next.is_empty()
            && self
                .last_claim
                .is_none_or(|t| t.elapsed() >= self.pubsub.config.claim_interval);
        if claim {
            self.last_claim = Some(tokio::time::Instant::now());
        }
        let (ps, topic, consumer) = (
            self.pubsub.clone(),
            self.topic.clone(),
            self.consumer.clone(),
        );
        let mut reading =
            Box::pin(async move { read(ps, con, &topic, &consumer, max, claim).await });
        // The first poll queues the command on the connection, here, in the order reads are
        // sent; left to the spawned tasks, a later read could reach the server first.
        let first = futures::poll!(reading.as_mut());
        self.next.push_back(tokio::spawn(async move {
            match first {
                std::task::Poll::Ready(done) => done,
                std::task::Poll::Pending => reading.await,
            }
        }));
        claim
    }
}

/// One read for `consumer`: abandoned entries first when `claim` (`XAUTOCLAIM`), else new
/// ones (`XREADGROUP … BLOCK`).
async fn read(
    ps: RedisPubSub,
    mut con: MultiplexedConnection,
    topic: &str,
    consumer: &str,
    max: usize,
    claim: bool,
) -> Read {
    let since = tokio::time::Instant::now();
    let config = &ps.config;
    let read = |entries, broken| Read {
        since,
        entries,
        broken,
    };
    if claim {
        let claimed: redis::RedisResult<Value> = redis::cmd("XAUTOCLAIM")
            .arg(topic)
            .arg(ps.group())
            .arg(consumer)
            .arg(config.claim_idle.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(max)
            .query_async(&mut con)
            .await;
        if let Ok(Value::Array(mut parts)) = claimed
            && parts.len() > 1
            && let Value::Array(list) = parts.swap_remove(1)
        {
            let entries: Vec<Entry> = list.into_iter().filter_map(parse_entry).collect();
            if !entries.is_empty() {
                return read(entries, false);
            }
        }
    }
    let result = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(ps.group())
        .arg(consumer)
        .arg("COUNT")
        .arg(max)
        .arg("BLOCK")
        .arg(config.block.as_millis() as u64)
        .arg("STREAMS")
        .arg(topic)
        .arg(">")
        .query_async::<Value>(&mut con)
        .await;
    match result {
        Ok(v) => read(parse_read(v), false),
        Err(e) if e.to_string().contains("NOGROUP") => {
            // A closed subscriber's group was destroyed on purpose (`end_tail`): a read still
            // in flight must not make it again.
            if !ps.closed.is_cancelled() {
                let _ = ps.create_group(&mut con, topic, ps.group_start).await;
            }
            read(Vec::new(), false)
        }
        Err(e) => {
            tracing::warn!(topic, url = %redacted(&config.url), "redis read failed: {e}; reconnecting");
            read(Vec::new(), true)
        }
    }
}

#[async_trait]
impl Fetcher for RedisFetch {
    type Receipt = String;

    async fn fetch(&mut self, max: usize) -> Fetched<String> {
        if self.next.is_empty() {
            match self.connection().await {
                Some(con) => {
                    self.send_read(con, max).await;
                }
                None => {
                    return Fetched {
                        since: tokio::time::Instant::now(),
                        messages: Vec::new(),
                    };
                }
            }
        }
        let Some(task) = self.next.front_mut() else {
            unreachable!("a read was just sent")
        };
        // Awaited by reference: if the consumer stops waiting, the read stays here.
        let done = task.await;
        self.next.pop_front();
        let read = done.unwrap_or_else(|e| Read {
            since: tokio::time::Instant::now(),
            entries: Vec::new(),
            broken: !e.is_cancelled(),
        });
        if read.broken {
            self.con = None;
        } else if read.entries.len() >= max
            && let Some(con) = self.con.clone()
        {
            // Probably more waiting: ask now, deliver this batch meanwhile.
            while self.next.len() < READS_AHEAD {
                if self.send_read(con.clone(), max).await {
                    break;
                }
            }
        }
        Fetched {
            since: read.since,
            messages: read.entries.into_iter().map(|e| (e.msg, e.id)).collect(),
        }
    }

    fn ack(&mut self, ids: Vec<String>) {
        for id in ids {
            self.acks.push(id);
        }
    }

    fn give_back(&mut self, ids: Vec<String>) {
        let ps = self.pubsub.clone();
        let (topic, consumer) = (self.topic.clone(), self.consumer.clone());
        self.pubsub
            .tasks
            .spawn(async move { ps.release(&topic, &consumer, &ids).await });
    }

    fn finish(self, mut give_back: Vec<String>) {
        let RedisFetch {
            pubsub,
            topic,
            consumer,
            acks,
            next,
            ..
        } = self;
        let tasks = pubsub.tasks.clone();
        tasks.spawn(async move {
            // Reads sent ahead go back whole.
            for task in next {
                if let Ok(read) = task.await {
                    give_back.extend(read.entries.into_iter().map(|e| e.id));
                }
            }
            pubsub.release(&topic, &consumer, &give_back).await;
            acks.finish().await;
        });
    }
}

/// The raw client's throughput: XADD in pipelines of 100 (each entry with the fields a Wasmill
/// message has), then XREADGROUP COUNT 100 + XACK.
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
    let payload = bytes::Bytes::from(vec![b'x'; payload_size]);
    let start = std::time::Instant::now();
    let mut sent = 0;
    while sent < messages {
        let n = 100.min(messages - sent);
        let mut pipe = redis::pipe();
        for _ in 0..n {
            // The fields a Wasmill message has: uuid, metadata as JSON, payload.
            let m = super::raw_bench_message(&payload, start);
            let metadata = format!(r#"{{"sent_at":"{}"}}"#, m.metadata.get("sent_at"));
            pipe.cmd("XADD")
                .arg(&topic)
                .arg("*")
                .arg("uuid")
                .arg(&m.uuid)
                .arg("metadata")
                .arg(metadata)
                .arg("payload")
                .arg(&m.payload[..]);
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
        let entries = parse_read(v);
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
    use crate::pubsub::conformance::{Features, Harness, OwnedPubSub};
    use crate::pubsub::testkit::{Kind, PrivateServer};
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
                group: crate::pubsub::conformance::unique_group(),
            }
        }
        fn config(&self, group: &str) -> RedisConfig {
            self.config_at(url(), group)
        }
        fn config_at(&self, url: String, group: &str) -> RedisConfig {
            RedisConfig {
                url,
                consumer_group: Some(group.to_string()),
                claim_idle: Duration::from_secs(2),
                claim_interval: Duration::from_millis(500),
                block: Duration::from_millis(200),
                ..RedisConfig::default()
            }
        }
    }

    #[async_trait]
    impl Harness for RedisHarness {
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
            let ps = RedisPubSub::connect(self.config(&self.group)).await?;
            Ok(crate::pubsub::conformance::pair(ps))
        }

        async fn subscriber_in_group(&self, group: &str) -> Result<DynSubscriber> {
            Ok(Arc::new(RedisPubSub::connect(self.config(group)).await?))
        }

        /// A private server with an append-only file, restarted: the streams and their
        /// groups come back with it.
        async fn owned_pubsub(&self) -> Result<Option<OwnedPubSub>> {
            let server = PrivateServer::start(Kind::Redis).await?;
            let ps = RedisPubSub::connect(self.config_at(server.url(), &self.group)).await?;
            let (publisher, subscriber) = crate::pubsub::conformance::pair(ps);
            Ok(Some(OwnedPubSub {
                publisher,
                subscriber,
                outage: Box::new(server),
            }))
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
    async fn a_blocking_read_of_an_idle_stream_outlasts_its_block_on_the_default_settings() {
        let config = RedisConfig {
            url: url(),
            consumer_group: Some(crate::pubsub::conformance::unique_group()),
            ..RedisConfig::default()
        };
        let ps = RedisPubSub::connect(config.clone()).await.unwrap();
        let topic = format!("idle_{}", uuid::Uuid::new_v4().simple());
        ps.subscribe_initialize(&topic).await.unwrap();
        let mut con = ps.reader().await.unwrap();
        // What a subscription sends when nothing comes: the server answers nil after BLOCK.
        let read = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(ps.group())
            .arg("c1")
            .arg("COUNT")
            .arg(10)
            .arg("BLOCK")
            .arg(config.block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&topic)
            .arg(">")
            .query_async::<Value>(&mut con)
            .await;
        assert!(read.is_ok(), "idle read failed: {read:?}");
    }

    #[tokio::test]
    async fn a_subscription_holds_up_to_max_in_flight_unacked_messages() {
        let h = RedisHarness::new();
        let ps = RedisPubSub::connect(h.config(&h.group)).await.unwrap();
        let topic = crate::pubsub::conformance::unique_topic("in_flight");
        ps.subscribe_initialize(&topic).await.unwrap();
        let msgs: Vec<Message> = (0..20).map(|i| Message::new(format!("m{i}"))).collect();
        ps.publish(&topic, msgs.iter().map(Message::copy).collect())
            .await
            .unwrap();
        let mut sub = ps
            .subscribe_with(&topic, SubscribeOptions { max_in_flight: 8 })
            .await
            .unwrap();
        let recv = async |sub: &mut Subscription| {
            tokio::time::timeout(Duration::from_secs(5), sub.recv())
                .await
                .ok()
                .flatten()
        };
        let mut held = Vec::new();
        for _ in 0..8 {
            held.push(recv(&mut sub).await.expect("8 messages in flight at once"));
        }
        let ninth = tokio::time::timeout(Duration::from_millis(300), sub.recv()).await;
        assert!(ninth.is_err(), "a 9th message arrived before any ack");
        let mut seen: std::collections::HashSet<String> =
            held.iter().map(|m| m.uuid.clone()).collect();
        held.iter().for_each(|m| {
            m.ack();
        });
        while seen.len() < 20 {
            let m = recv(&mut sub).await.expect("the rest after the acks");
            m.ack();
            seen.insert(m.uuid.clone());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_sent_ahead_deliver_in_stream_order() {
        let h = RedisHarness::new();
        // Small reads: many are sent ahead, two at a time, each finished on another task.
        let config = RedisConfig {
            read_count: 3,
            ..h.config(&h.group)
        };
        let ps = RedisPubSub::connect(config).await.unwrap();
        let topic = crate::pubsub::conformance::unique_topic("reads_ahead");
        ps.subscribe_initialize(&topic).await.unwrap();
        let msgs: Vec<Message> = (0..600).map(|i| Message::new(format!("m{i}"))).collect();
        ps.publish(&topic, msgs.iter().map(Message::copy).collect())
            .await
            .unwrap();
        let mut sub = ps.subscribe(&topic).await.unwrap();
        for (i, expected) in msgs.iter().enumerate() {
            let m = tokio::time::timeout(Duration::from_secs(5), sub.recv())
                .await
                .expect("the next entry")
                .unwrap();
            assert_eq!(&m.uuid, &expected.uuid, "entry {i} out of order");
            m.ack();
        }
    }

    #[tokio::test]
    async fn entries_read_ahead_go_back_to_the_group_when_a_subscription_ends() {
        let h = RedisHarness::new();
        // Default claim times: without the hand-back the rest would wait for claim_idle (30 s).
        let config = RedisConfig {
            consumer_group: Some(h.group.clone()),
            url: url(),
            ..RedisConfig::default()
        };
        let ps = RedisPubSub::connect(config).await.unwrap();
        let topic = crate::pubsub::conformance::unique_topic("read_ahead");
        ps.subscribe_initialize(&topic).await.unwrap();
        let msgs: Vec<Message> = (0..10).map(|i| Message::new(format!("m{i}"))).collect();
        ps.publish(&topic, msgs.iter().map(Message::copy).collect())
            .await
            .unwrap();
        let mut first = ps.subscribe(&topic).await.unwrap();
        let m = tokio::time::timeout(Duration::from_secs(5), first.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.uuid, msgs[0].uuid);
        m.ack();
        drop(first);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut second = ps.subscribe(&topic).await.unwrap();
        for expected in &msgs[1..] {
            let m = tokio::time::timeout(Duration::from_secs(3), second.recv())
                .await
                .expect("the entries the first subscription read ahead, at once")
                .unwrap();
            assert_eq!(&m.uuid, &expected.uuid, "in order");
            m.ack();
        }
    }

    #[tokio::test]
    async fn raw_bench_reports_positive_figures() {
        let f = raw_bench(&url(), 500, 100).await.unwrap();
        assert!(f.publish_per_sec > 0.0 && f.consume_per_sec > 0.0);
    }
}
