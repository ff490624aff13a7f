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
use crate::message::{AckState, Message};

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
        for msg in messages {
            // A delayed message (`_watermill_delayed_until` ahead) is held, then published.
            if let Some(wait) = crate::components::delay::due(&msg)
                .and_then(|at| at.duration_since(std::time::SystemTime::now()).ok())
                .filter(|w| !w.is_zero())
            {
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
                continue;
            }
            let subscribers: Vec<_> = {
                let mut topics = inner.lock();
                if inner.config.persistent {
                    let max = inner.config.max_topic_bytes;
                    let size = stored_size(&msg);
                    let held = topics.get(topic).map_or(0, |t| t.stored_bytes);
                    if held.saturating_add(size) > max {
                        return Err(Error::Limit(format!(
                            "memory pub/sub: topic {topic:?} keeps {held} bytes; a message of \
                             {size} more is refused (max_topic_bytes = {max})"
                        )));
                    }
                    let t = inner.topic_entry(&mut topics, topic)?;
                    t.stored_bytes += size;
                    t.stored.push(msg.copy());
                    t.subscribers.iter().map(|(_, tx)| tx.clone()).collect()
                } else {
                    // Nobody subscribes and nothing is kept: the topic is not held at all.
                    topics.get(topic).map_or_else(Vec::new, |t| {
                        t.subscribers.iter().map(|(_, tx)| tx.clone()).collect()
                    })
                }
            };
            let mut waits = Vec::new();
            for tx in subscribers {
                let (acked, wait) = if inner.config.block_publish_until_acked {
                    let (s, r) = oneshot::channel();
                    (Some(Arc::new(Mutex::new(Some(s)))), Some(r))
                } else {
                    (None, None)
                };
                let env = Envelope {
                    msg: msg.copy(),
                    acked,
                };
                tokio::select! {
                    r = tx.send(env) => if r.is_err() { continue },
                    _ = inner.closed.cancelled() => return Err(closed(NAME)),
                }
                waits.extend(wait);
            }
            for w in waits {
                tokio::select! {
                    // A subscription that ended without acking drops the sender: stop waiting.
                    _ = w => {}
                    _ = inner.closed.cancelled() => return Err(closed(NAME)),
                }
            }
        }
        Ok(())
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
    in_flight: Vec<(Envelope, Message)>,
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
            let delivered = msg.clone();
            tokio::spawn(async move {
                if delivered.acked().await
                    && let Some(tx) = acked.lock().ok().and_then(|mut t| t.take())
                {
                    let _ = tx.send(());
                }
            });
        }
        self.in_flight.push((env, msg.clone()));
        msg
    }
}

#[async_trait]
impl super::MessageSource for MemorySource {
    async fn next(&mut self) -> Option<Message> {
        let _keep_registered = &self.registration;
        // Messages are often ready without waiting; take part in tokio's cooperative budget so
        // a consumer that nacks in a loop (immediate redelivery) cannot starve other tasks.
        tokio::task::consume_budget().await;
        loop {
            self.reap();
            let room = self.in_flight.len() < self.max_in_flight;
            if room {
                if let Some((due, _)) = self.redeliver.front()
                    && *due <= Instant::now()
                {
                    let (_, env) = self.redeliver.pop_front()?;
                    return Some(self.hand_out(env, false));
                }
                // With one in flight, a waiting redelivery goes before anything newer (order).
                let may_take_new = self.redeliver.is_empty() || self.max_in_flight > 1;
                if may_take_new {
                    if let Some(env) = self.backlog.pop_front() {
                        return Some(self.hand_out(env, true));
                    }
                    if let Ok(env) = self.queue.try_recv() {
                        return Some(self.hand_out(env, true));
                    }
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::conformance::{Features, Harness};
    use crate::pubsub::{DynPublisher, DynSubscriber};

    struct MemoryHarness(MemoryConfig);

    #[async_trait]
    impl Harness for MemoryHarness {
        fn features(&self) -> Features {
            Features {
                exactly_once: true,
                guaranteed_order: true,
                guaranteed_order_with_single_subscriber: true,
                // `persistent` replays everything to each new subscription; it keeps no
                // offsets, so Watermill's Persistent (resume where a reader stopped) is not met.
                persistent: false,
                new_subscriber_receives_old_messages: self.0.persistent,
                require_single_instance: true,
                ..Features::default()
            }
        }

        async fn pubsub(&self) -> Result<(DynPublisher, DynSubscriber)> {
            let ps = MemoryPubSub::new(self.0.clone());
            Ok(crate::pubsub::conformance::pair(ps))
        }
    }

    mod default {
        use super::*;
        crate::conformance_tests!(MemoryHarness(MemoryConfig::default()));
    }

    mod persistent {
        use super::*;
        crate::conformance_tests!(MemoryHarness(MemoryConfig {
            persistent: true,
            ..MemoryConfig::default()
        }));
    }

    mod windowed {
        use super::*;
        // Redelivery delay on: everything still arrives, just later.
        crate::conformance_tests!(MemoryHarness(MemoryConfig {
            redelivery_delay: Duration::from_millis(5),
            max_pending: 1024,
            ..MemoryConfig::default()
        }));
    }

    #[tokio::test]
    async fn block_publish_until_acked_waits_for_the_ack() {
        let ps = MemoryPubSub::new(MemoryConfig {
            block_publish_until_acked: true,
            ..MemoryConfig::default()
        });
        let mut sub = ps.subscribe("t").await.unwrap();
        let publisher = ps.clone();
        let publish =
            tokio::spawn(async move { publisher.publish("t", vec![Message::new("a")]).await });
        let m = sub.recv().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!publish.is_finished(), "publish returned before the ack");
        m.ack();
        publish.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn nack_redelivers_after_the_delay() {
        let ps = MemoryPubSub::new(MemoryConfig {
            redelivery_delay: Duration::from_millis(100),
            ..MemoryConfig::default()
        });
        let mut sub = ps.subscribe("t").await.unwrap();
        ps.publish("t", vec![Message::with_uuid("u1", "a")])
            .await
            .unwrap();
        let first = sub.recv().await.unwrap();
        let nacked_at = std::time::Instant::now();
        first.nack();
        let again = sub.recv().await.unwrap();
        assert!(nacked_at.elapsed() >= Duration::from_millis(90));
        assert_eq!(again.uuid, "u1");
        assert!(
            !again.same_delivery(&first),
            "a redelivery is a fresh delivery"
        );
    }

    #[tokio::test]
    async fn max_in_flight_delivers_several_unacked() {
        let ps = MemoryPubSub::default();
        let mut sub = ps
            .subscribe_with("t", SubscribeOptions { max_in_flight: 3 })
            .await
            .unwrap();
        ps.publish("t", (0..5).map(|i| Message::new(format!("{i}"))).collect())
            .await
            .unwrap();
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(sub.recv().await.unwrap());
        }
        let fourth = tokio::time::timeout(Duration::from_millis(100), sub.recv()).await;
        assert!(
            fourth.is_err(),
            "a fourth message arrived with three unacked"
        );
        held[0].ack();
        let fourth = tokio::time::timeout(Duration::from_secs(2), sub.recv()).await;
        assert!(fourth.unwrap().is_some());
    }

    #[tokio::test]
    async fn publish_waits_when_a_subscription_backlog_is_full() {
        let ps = MemoryPubSub::new(MemoryConfig {
            max_pending: 2,
            ..MemoryConfig::default()
        });
        let _sub = ps.subscribe("t").await.unwrap();
        let msgs: Vec<_> = (0..10).map(|i| Message::new(format!("{i}"))).collect();
        let publish = tokio::time::timeout(Duration::from_millis(200), ps.publish("t", msgs)).await;
        assert!(publish.is_err(), "publish did not apply back-pressure");
    }

    #[tokio::test]
    async fn a_hundred_thousand_topics_stay_under_the_bound() {
        // Published to, nobody subscribing: nothing is held.
        let ps = MemoryPubSub::default();
        let payload = "x".repeat(64);
        for i in 0..100_000 {
            ps.publish(&format!("t{i}"), vec![Message::new(payload.clone())])
                .await
                .unwrap();
        }
        assert_eq!(ps.topic_count(), 0, "topics without subscribers were kept");

        // Persistent: stored topics are held up to max_topics, one more is refused by name.
        let ps = MemoryPubSub::new(MemoryConfig {
            persistent: true,
            max_topics: NonZeroUsize::new(1000).unwrap(),
            ..MemoryConfig::default()
        });
        let mut refused = 0;
        for i in 0..100_000 {
            match ps.publish(&format!("t{i}"), vec![Message::new("m")]).await {
                Ok(()) => {}
                Err(Error::Limit(e)) => {
                    assert!(
                        e.contains("max_topics") && e.contains(&format!("t{i}")),
                        "{e}"
                    );
                    refused += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(ps.topic_count(), 1000);
        assert_eq!(refused, 99_000);
        // A held topic still takes messages.
        ps.publish("t0", vec![Message::new("again")]).await.unwrap();
        let Err(e) = ps.subscribe("new").await else {
            panic!("a subscription past the bound");
        };
        assert!(e.to_string().contains("max_topics"), "{e}");
    }

    #[tokio::test]
    async fn a_persistent_topic_keeps_at_most_max_topic_bytes() {
        let ps = MemoryPubSub::new(MemoryConfig {
            persistent: true,
            max_topic_bytes: 10_000,
            ..MemoryConfig::default()
        });
        let kb = "x".repeat(1000);
        let mut kept = 0;
        let refused = loop {
            match ps
                .publish("t", vec![Message::with_uuid("u", kb.clone())])
                .await
            {
                Ok(()) => kept += 1,
                Err(e) => break e,
            }
            assert!(kept < 100, "publishes past the bound");
        };
        // 1,001 bytes a message (payload and uuid): nine fit in 10,000.
        assert_eq!(kept, 9);
        assert!(matches!(refused, Error::Limit(_)), "{refused}");
        assert!(refused.to_string().contains("max_topic_bytes"), "{refused}");
        // The refused message was neither kept nor delivered; other topics still take messages.
        let mut sub = ps.subscribe("t").await.unwrap();
        for _ in 0..9 {
            sub.recv().await.unwrap().ack();
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(50), sub.recv())
                .await
                .is_err()
        );
        ps.publish("other", vec![Message::new("m")]).await.unwrap();
    }

    #[test]
    fn max_topics_zero_is_refused_naming_the_key() {
        let table: toml::Table = toml::from_str("max_topics = 0").unwrap();
        let e = crate::pubsub::registry::check_settings("m", "memory", &table)
            .unwrap_err()
            .to_string();
        assert!(e.contains("pubsub.m.max_topics"), "{e}");
    }

    #[tokio::test]
    async fn a_topic_is_forgotten_with_its_last_subscription() {
        let ps = MemoryPubSub::default();
        let a = ps.subscribe("t").await.unwrap();
        let b = ps.subscribe("t").await.unwrap();
        assert_eq!(ps.topic_count(), 1);
        drop(a);
        assert_eq!(ps.topic_count(), 1, "forgotten while still subscribed");
        drop(b);
        for _ in 0..100 {
            if ps.topic_count() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("topic still held after its last subscription ended");
    }

    #[tokio::test]
    async fn dropping_a_subscription_unregisters_it() {
        let ps = MemoryPubSub::default();
        let sub = ps.subscribe("t").await.unwrap();
        assert_eq!(ps.subscriber_count("t"), 1);
        drop(sub);
        for _ in 0..100 {
            if ps.subscriber_count("t") == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("subscription still registered after drop");
    }
}
