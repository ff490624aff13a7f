//! Reading a stream: entries parsed from replies, the reader's own connection, and the fetcher that claims, reads ahead and acks in the background.

use super::*;

/// One stream entry.
pub(crate) struct Entry {
    pub(crate) id: String,
    pub(crate) msg: Message,
}

/// The bytes of a string value, moved out of the reply.
pub(super) fn bulk(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

pub(super) fn parse_entry(v: Value) -> Option<Entry> {
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
    msg.metadata = crate::pubsub::stored::decode_metadata(NAME, &msg.uuid, &metadata);
    Some(Entry { id, msg })
}

/// Entries of an XREADGROUP reply (`[[stream, [entry…]]…]`, RESP2 or RESP3).
pub(crate) fn parse_read(v: Value) -> Vec<Entry> {
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
    pub(super) async fn reader(&self) -> Result<MultiplexedConnection> {
        let config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(self.config.block + self.config.command_timeout));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| rerr(format!("connect {}", redacted(&self.config.url)), e))
    }

    /// Acks `ids` with one `XACK`; a failure leaves them pending, to be claimed again.
    pub(super) async fn ack(&self, topic: &str, ids: &[String]) {
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
    pub(super) async fn release(&self, topic: &str, consumer: &str, ids: &[String]) {
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
pub(super) struct RedisFetch {
    pub(super) pubsub: RedisPubSub,
    pub(super) topic: Arc<str>,
    /// This subscription's consumer name in the group.
    pub(super) consumer: Arc<str>,
    pub(super) con: Option<MultiplexedConnection>,
    pub(super) reconnect: Reconnect,
    pub(super) last_claim: Option<tokio::time::Instant>,
    /// The reads sent ahead, oldest first.
    pub(super) next: VecDeque<tokio::task::JoinHandle<Read>>,
    pub(super) acks: AckBatcher<String>,
    /// Stops the task moving the topic's due delayed messages into the stream when the
    /// subscription ends ([`super::delayed`]).
    pub(super) _mover: tokio_util::sync::DropGuard,
}

/// What one read brought.
pub(super) struct Read {
    pub(super) since: tokio::time::Instant,
    pub(super) entries: Vec<Entry>,
    /// The connection failed: reconnect before the next read.
    pub(super) broken: bool,
}

impl RedisFetch {
    pub(super) fn new(pubsub: RedisPubSub, topic: &str) -> Self {
        let acks = {
            let this = pubsub.clone();
            let topic = topic.to_string();
            AckBatcher::spawn(ACK_BATCH, move |ids: Vec<String>| {
                let this = this.clone();
                let topic = topic.clone();
                async move { this.ack(&topic, &ids).await }
            })
        };
        let stop = pubsub.closed.child_token();
        crate::pubsub::delay::spawn_mover(
            NAME,
            topic,
            stop.clone(),
            pubsub.config.command_timeout,
            pubsub.clone(),
            |ps, topic| async move { ps.move_due(&topic).await.map_err(|e| e.to_string()) },
        );
        RedisFetch {
            _mover: stop.drop_guard(),
            pubsub,
            topic: topic.into(),
            consumer: format!("c-{}", uuid::Uuid::new_v4().simple()).into(),
            con: None,
            reconnect: Reconnect::default(),
            last_claim: None,
            next: VecDeque::with_capacity(READS_AHEAD),
            acks,
        }
    }

    /// The reader connection, (re)connected and with the group in place; `None` after a
    /// failure, once the backoff has passed.
    pub(super) async fn connection(&mut self) -> Option<MultiplexedConnection> {
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
                self.reconnect.reset();
                self.con = Some(con.clone());
                Some(con)
            }
            Err(e) => {
                let delay = self.reconnect.next_delay();
                tracing::warn!(topic = %self.topic, "redis reader: {e}; retrying in {delay:?}");
                tokio::select! {
                    () = ps.closed.cancelled() => {}
                    () = tokio::time::sleep(delay) => {}
                }
                None
            }
        }
    }

    /// Sends a read of up to `max` entries, finished in a task of its own. Returns whether it
    /// is a claim (`XAUTOCLAIM` then maybe `XREADGROUP`): a claim is sent only when no read is
    /// in flight, and nothing is sent behind it, since its second command would reach the
    /// server after a read sent later and take newer entries first.
    pub(super) async fn send_read(&mut self, con: MultiplexedConnection, max: usize) -> bool {
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
pub(super) async fn read(
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
