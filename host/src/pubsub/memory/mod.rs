//! The in-memory pub/sub: the reference backend, with Watermill GoChannel's semantics.
//!
//! - Fan-out: every subscription of a topic receives every message published after it
//!   subscribed (there are no consumer groups).
//! - Each subscription gets a message at a time (or up to `max_in_flight`) and the next one only
//!   after an ack or nack; a nack redelivers the same message to the same subscription, after
//!   `redelivery_delay` (so one poisoned message cannot spin a core: Watermill #414).
//! - `persistent`: every published message is kept, and a new subscription first receives all
//!   earlier messages of its topic.
//! - `block_publish_until_acked`: `publish` returns only when every subscription acked.
//! - Delayed messages (`_watermill_delayed_until` in the future, `components::delay`) are held
//!   and published when due; closing the pub/sub drops those still held.
//! - Bounded: each subscription queues at most `max_pending` messages; past that, `publish`
//!   waits (back-pressure) instead of growing without bound.
//! - Bounded topics: a topic is held only while it has a subscription or (persistent) stored
//!   messages; publishing to a topic nobody subscribes to keeps nothing (the message goes
//!   nowhere, as with GoChannel). At most `max_topics` topics are held; subscribing to, or
//!   persisting into, one more is refused with [`Error::Limit`] naming the setting; a
//!   persistent topic keeps at most `max_topic_bytes` of messages (payload and metadata), and a
//!   publish past it is refused the same way (nothing stored, nothing delivered).

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::FutureExt;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{Publisher, SubscribeOptions, Subscriber, Subscription, closed};
use crate::error::{Error, Result};
use crate::message::{AckState, DeliveryHandle, Message};
use crate::pubsub::registry::{self, Backend};

const NAME: &str = "memory";

/// Settings of the in-memory pub/sub (`kind = "memory"` in the config).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// Keep every message and replay them to new subscriptions.
    pub persistent: bool,
    /// Make `publish` wait until every subscription acked each message.
    pub block_publish_until_acked: bool,
    /// How long to wait before redelivering a nacked message.
    #[serde(with = "crate::config::duration")]
    pub redelivery_delay: Duration,
    /// How many messages a subscription may have queued before `publish` waits.
    pub max_pending: usize,
    /// How many topics may be held at once (a topic is held while it has a subscription or
    /// stored messages); one more is refused. At least 1.
    pub max_topics: NonZeroUsize,
    /// How many bytes (payloads and metadata) a persistent topic may keep; a publish past it
    /// is refused. Default 256 MiB.
    #[serde(with = "crate::config::size")]
    pub max_topic_bytes: u64,
}

/// The default of `max_topic_bytes`.
pub const DEFAULT_MAX_TOPIC_BYTES: u64 = 256 << 20;

/// The default of `max_topics`.
pub const DEFAULT_MAX_TOPICS: NonZeroUsize = NonZeroUsize::new(10_000).unwrap();

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            persistent: false,
            block_publish_until_acked: false,
            redelivery_delay: Duration::ZERO,
            max_pending: 4096,
            max_topics: DEFAULT_MAX_TOPICS,
            max_topic_bytes: DEFAULT_MAX_TOPIC_BYTES,
        }
    }
}

/// A queued message, with the channel to tell a blocked publisher it was acked.
struct Envelope {
    msg: Message,
    /// Set in `block_publish_until_acked` mode: told once a delivery of `msg` is acked.
    acked: Option<Arc<Mutex<Option<oneshot::Sender<()>>>>>,
}

#[derive(Default)]
struct Topic {
    subscribers: Vec<(u64, mpsc::Sender<Envelope>)>,
    stored: Vec<Message>,
    /// What `stored` holds, in bytes (payloads, metadata keys and values, uuids).
    stored_bytes: u64,
}

impl Topic {
    /// Whether nothing needs the topic any more (it can be forgotten).
    fn is_unused(&self) -> bool {
        self.subscribers.is_empty() && self.stored.is_empty()
    }
}

/// The in-memory pub/sub. One value is both the publisher and the subscriber; clones share
/// the same topics.
#[derive(Clone)]
pub struct MemoryPubSub {
    inner: Arc<Inner>,
}

struct Inner {
    config: MemoryConfig,
    topics: Mutex<HashMap<String, Topic>>,
    closed: CancellationToken,
    next_id: AtomicU64,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Topic>> {
        // Each critical section is a single insert, push, clone or retain, so a panic cannot
        // leave the map half-updated and a poisoned lock is safe to reuse.
        self.topics.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn unsubscribe(&self, topic: &str, id: u64) {
        let mut topics = self.lock();
        if let Some(t) = topics.get_mut(topic) {
            t.subscribers.retain(|(i, _)| *i != id);
            if t.is_unused() {
                topics.remove(topic);
            }
        }
    }

    /// `topic`'s entry, created if there is room for one more topic.
    fn topic_entry<'m>(
        &self,
        topics: &'m mut HashMap<String, Topic>,
        topic: &str,
    ) -> Result<&'m mut Topic> {
        let max = self.config.max_topics.get();
        if !topics.contains_key(topic) && topics.len() >= max {
            return Err(Error::Limit(format!(
                "memory pub/sub: topic {topic:?} refused: {max} topics are held already \
                 (max_topics = {max})"
            )));
        }
        Ok(topics.entry(topic.to_string()).or_default())
    }
}

/// What a stored message counts against `max_topic_bytes`.
fn stored_size(msg: &Message) -> u64 {
    let metadata: usize = msg.metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    (msg.payload.len() + metadata + msg.uuid.len()) as u64
}

impl Default for MemoryPubSub {
    fn default() -> Self {
        Self::new(MemoryConfig::default())
    }
}

impl MemoryPubSub {
    /// A new, empty pub/sub.
    pub fn new(config: MemoryConfig) -> Self {
        MemoryPubSub {
            inner: Arc::new(Inner {
                config,
                topics: Mutex::new(HashMap::new()),
                closed: CancellationToken::new(),
                next_id: AtomicU64::new(0),
            }),
        }
    }

    /// Closes the pub/sub: publishing fails and every subscription ends. Idempotent.
    pub async fn close(&self) -> Result<()> {
        Publisher::close(self).await
    }

    /// How many topics are held right now (with a subscription or stored messages).
    pub fn topic_count(&self) -> usize {
        self.inner.lock().len()
    }

    /// Publishes `msg` to `topic` once `wait` has passed (unless the pub/sub closes first).
    fn publish_later(&self, topic: &str, msg: Message, wait: Duration) {
        let (me, topic) = (self.clone(), topic.to_string());
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = me.inner.closed.cancelled() => return,
            }
            if let Err(e) = me.publish(&topic, vec![msg]).await {
                tracing::warn!(topic, "memory pub/sub: a delayed message was dropped: {e}");
            }
        });
    }

    /// Under one lock: keeps copies of `msgs` in `topic` (persistent mode, up to its
    /// `max_topic_bytes`) and takes the senders of its subscriptions. A refusal comes with how
    /// many messages were stored before it (to deliver those only).
    fn take_in(
        &self,
        topic: &str,
        msgs: &[Message],
    ) -> (Vec<mpsc::Sender<Envelope>>, Option<(usize, Error)>) {
        let mut topics = self.inner.lock();
        let refused = if self.inner.config.persistent {
            self.store(&mut topics, topic, msgs).err()
        } else {
            None
        };
        // Nobody subscribes and nothing is kept: the topic is not held at all.
        let senders = topics.get(topic).map_or_else(Vec::new, |t| {
            t.subscribers.iter().map(|(_, tx)| tx.clone()).collect()
        });
        (senders, refused)
    }

    /// Keeps copies of `msgs` in `topic` up to its `max_topic_bytes`; a refusal comes with how
    /// many were stored before it.
    fn store(
        &self,
        topics: &mut HashMap<String, Topic>,
        topic: &str,
        msgs: &[Message],
    ) -> std::result::Result<(), (usize, Error)> {
        let inner = &self.inner;
        let max = inner.config.max_topic_bytes;
        for (i, msg) in msgs.iter().enumerate() {
            let size = stored_size(msg);
            let held = topics.get(topic).map_or(0, |t| t.stored_bytes);
            if held.saturating_add(size) > max {
                return Err((
                    i,
                    Error::Limit(format!(
                        "memory pub/sub: topic {topic:?} keeps {held} bytes; a message of \
                         {size} more is refused (max_topic_bytes = {max})"
                    )),
                ));
            }
            let t = inner.topic_entry(topics, topic).map_err(|e| (i, e))?;
            t.stored_bytes += size;
            t.stored.push(msg.copy());
        }
        Ok(())
    }

    /// Queues `msgs` (the subscription's own copies) for one subscription, in order. The
    /// publisher waits for room for a whole chunk at once (`reserve_many`), so a publisher held
    /// back by a slow consumer is woken once per chunk, not once per message the consumer
    /// takes. A subscription that ended is skipped.
    async fn deliver(&self, tx: &mpsc::Sender<Envelope>, msgs: Vec<Message>) -> Result<()> {
        let mut msgs = msgs.into_iter();
        while msgs.len() > 0 {
            let chunk = msgs.len().min(tx.max_capacity());
            let permits = tokio::select! {
                r = tx.reserve_many(chunk) => match r {
                    Ok(permits) => permits,
                    Err(_) => return Ok(()),
                },
                _ = self.inner.closed.cancelled() => return Err(closed(NAME)),
            };
            for (permit, msg) in permits.zip(msgs.by_ref()) {
                permit.send(Envelope { msg, acked: None });
            }
        }
        Ok(())
    }

    /// `block_publish_until_acked`: queues `msg` for every subscription of `topic` and
    /// returns once each of them acked it (or ended without acking).
    async fn publish_one_until_acked(&self, topic: &str, msg: Message) -> Result<()> {
        let inner = &self.inner;
        let (subscribers, refused) = self.take_in(topic, std::slice::from_ref(&msg));
        if let Some((_, e)) = refused {
            return Err(e);
        }
        let mut waits = Vec::new();
        for tx in subscribers {
            let (s, r) = oneshot::channel();
            let env = Envelope {
                msg: msg.copy(),
                acked: Some(Arc::new(Mutex::new(Some(s)))),
            };
            tokio::select! {
                r = tx.send(env) => if r.is_err() { continue },
                _ = inner.closed.cancelled() => return Err(closed(NAME)),
            }
            waits.push(r);
        }
        for w in waits {
            tokio::select! {
                // A subscription that ended without acking drops the sender: stop waiting.
                _ = w => {}
                _ = inner.closed.cancelled() => return Err(closed(NAME)),
            }
        }
        Ok(())
    }

    /// How many subscriptions `topic` has right now.
    pub fn subscriber_count(&self, topic: &str) -> usize {
        self.inner
            .lock()
            .get(topic)
            .map_or(0, |t| t.subscribers.len())
    }
}

#[async_trait]
impl Publisher for MemoryPubSub {
    async fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<()> {
        let inner = &self.inner;
        if inner.closed.is_cancelled() {
            return Err(closed(NAME));
        }
        let mut now = Vec::with_capacity(messages.len());
        for msg in messages {
            // A delayed message (`_watermill_delayed_until` ahead) is held, then published.
            match super::delay::wait(&msg) {
                Some(wait) => self.publish_later(topic, msg, wait),
                None => now.push(msg),
            }
        }
        if inner.config.block_publish_until_acked {
            for msg in now {
                self.publish_one_until_acked(topic, msg).await?;
            }
            return Ok(());
        }
        // One look at the topic for the whole call; what a persistent topic stored before its
        // limit stopped it is delivered before the error returns.
        let (subscribers, refused) = self.take_in(topic, &now);
        if let Some((stored, _)) = &refused {
            now.truncate(*stored);
        }
        // Each subscription gets copies of its own; the last one takes the caller's messages.
        let last = subscribers.len().saturating_sub(1);
        for (i, tx) in subscribers.iter().enumerate() {
            let copies = if i == last {
                std::mem::take(&mut now)
                    .into_iter()
                    .map(Message::into_copy)
                    .collect()
            } else {
                now.iter().map(Message::copy).collect()
            };
            self.deliver(tx, copies).await?;
        }
        refused.map_or(Ok(()), |(_, e)| Err(e))
    }

    async fn close(&self) -> Result<()> {
        self.inner.closed.cancel();
        self.inner.lock().clear();
        Ok(())
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

#[async_trait]
impl Subscriber for MemoryPubSub {
    async fn subscribe_with(&self, topic: &str, options: SubscribeOptions) -> Result<Subscription> {
        let inner = &self.inner;
        if inner.closed.is_cancelled() {
            return Err(closed(NAME));
        }
        let (tx, rx) = mpsc::channel(inner.config.max_pending.max(1));
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let backlog = {
            let mut topics = inner.lock();
            let t = inner.topic_entry(&mut topics, topic)?;
            t.subscribers.push((id, tx));
            t.stored.clone()
        };
        let source = MemorySource {
            queue: rx,
            backlog: backlog
                .into_iter()
                .map(|msg| Envelope { msg, acked: None })
                .collect(),
            in_flight: Vec::new(),
            redeliver: VecDeque::new(),
            max_in_flight: options.max_in_flight.max(1),
            redelivery_delay: inner.config.redelivery_delay,
            registration: Registration {
                pubsub: Arc::downgrade(inner),
                topic: topic.to_string(),
                id,
            },
        };
        Ok(Subscription::pull(source, &inner.closed))
    }

    async fn close(&self) -> Result<()> {
        Publisher::close(self).await
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

/// Unregisters a subscription from its topic when the subscription goes away.
struct Registration {
    pubsub: Weak<Inner>,
    topic: String,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(inner) = self.pubsub.upgrade() {
            inner.unsubscribe(&self.topic, self.id);
        }
    }
}

/// One subscription's delivery state, driven by the consumer's own calls to `recv`: no task
/// of its own and no hand-off between tasks per message (the consumer acks, then asks for the
/// next one, and this sees the ack without being woken).
struct MemorySource {
    queue: mpsc::Receiver<Envelope>,
    /// Messages stored before the subscription (persistent mode), delivered first.
    backlog: VecDeque<Envelope>,
    /// Delivered and not settled yet, with the delivery handed out.
    in_flight: Vec<(Envelope, DeliveryHandle)>,
    /// Nacked messages waiting for their redelivery time, oldest first.
    redeliver: VecDeque<(Instant, Envelope)>,
    max_in_flight: usize,
    redelivery_delay: Duration,
    registration: Registration,
}

impl MemorySource {
    /// Moves settled deliveries out of `in_flight`: acked ones release a blocked publisher,
    /// nacked ones wait for redelivery.
    fn reap(&mut self) {
        let mut i = 0;
        while i < self.in_flight.len() {
            match self.in_flight[i].1.ack_state() {
                AckState::Pending => i += 1,
                AckState::Acked => {
                    self.in_flight.remove(i);
                }
                AckState::Nacked => {
                    let (env, delivered) = self.in_flight.remove(i);
                    let delay = delivered
                        .redelivery_delay()
                        .unwrap_or(self.redelivery_delay);
                    self.redeliver.push_back((Instant::now() + delay, env));
                }
            }
        }
    }

    fn hand_out(&mut self, env: Envelope, first: bool) -> Message {
        // A queued message is already a private copy: hand it out as is the first time, and
        // a fresh copy (a new delivery) after each nack.
        let msg = if first {
            env.msg.clone()
        } else {
            env.msg.copy()
        };
        if let Some(acked) = &env.acked {
            // A blocked publisher must learn of the ack even if the consumer never asks for
            // another message, so watch this delivery (block mode only; it is rare).
            let acked = acked.clone();
            let delivered = msg.delivery_handle();
            tokio::spawn(async move {
                if delivered.settled().await == AckState::Acked
                    && let Some(tx) = acked.lock().ok().and_then(|mut t| t.take())
                {
                    let _ = tx.send(());
                }
            });
        }
        self.in_flight.push((env, msg.delivery_handle()));
        msg
    }
}

impl MemorySource {
    /// A message that can be handed out now without waiting, if any (and if in-flight room).
    fn take_ready(&mut self) -> Option<Message> {
        self.reap();
        if self.in_flight.len() >= self.max_in_flight {
            return None;
        }
        if let Some((due, _)) = self.redeliver.front()
            && *due <= Instant::now()
        {
            let (_, env) = self.redeliver.pop_front()?;
            return Some(self.hand_out(env, false));
        }
        // With one in flight, a waiting redelivery goes before anything newer (order).
        if !(self.redeliver.is_empty() || self.max_in_flight > 1) {
            return None;
        }
        if let Some(env) = self.backlog.pop_front() {
            return Some(self.hand_out(env, true));
        }
        let env = self.queue.try_recv().ok()?;
        Some(self.hand_out(env, true))
    }
}

#[async_trait]
impl super::MessageSource for MemorySource {
    fn try_next(&mut self) -> Option<Message> {
        self.take_ready()
    }

    async fn next(&mut self) -> Option<Message> {
        let _keep_registered = &self.registration;
        // Messages are often ready without waiting; take part in tokio's cooperative budget so
        // a consumer that nacks in a loop (immediate redelivery) cannot starve other tasks.
        tokio::task::consume_budget().await;
        loop {
            if let Some(msg) = self.take_ready() {
                return Some(msg);
            }
            let room = self.in_flight.len() < self.max_in_flight;
            // Nothing ready: wait for a new message, a settlement or a redelivery time.
            let redeliver_at = self.redeliver.front().map(|(due, _)| *due);
            let take_new = room && (self.redeliver.is_empty() || self.max_in_flight > 1);
            let settled = futures::future::select_all(
                self.in_flight
                    .iter()
                    .map(|(_, m)| m.settled().boxed())
                    .chain(std::iter::once(never_settles().boxed())),
            );
            let arrived = tokio::select! {
                env = self.queue.recv(), if take_new => match env {
                    Some(env) => Some(env),
                    None => return None,
                },
                _ = settled => None,
                _ = sleep_until_opt(redeliver_at) => None,
            };
            if let Some(env) = arrived {
                return Some(self.hand_out(env, true));
            }
        }
    }
}

async fn never_settles() -> AckState {
    std::future::pending().await
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// This backend in the registry's table ([`registry::BACKENDS`]).
pub const BACKEND: registry::BackendKind = registry::BackendKind {
    name: "memory",
    check: registry::check_as::<MemoryConfig>,
    connect: |name, table| {
        Box::pin(async move {
            let cfg: MemoryConfig = registry::settings(&name, &table)?;
            Ok(Backend::shared(&name, "memory", MemoryPubSub::new(cfg)))
        })
    },
    raw_bench: None,
};

#[cfg(test)]
mod tests;
