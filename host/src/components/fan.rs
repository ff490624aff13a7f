//! Fan-in and fan-out (Watermill's `fanin` and `gochannel`-backed `fanout`), on the
//! [`Publisher`]/[`Subscriber`] traits, so on any backend.
//!
//! - [`fan_in`]: the messages of several topics, moved to one topic. Each message is acked on
//!   its source only once published to the target (at least once; uuid, metadata and payload
//!   kept; the source topic in metadata [`FANNED_IN_FROM`]).
//! - [`FanOut`]: one subscription to a topic of a backend (one consumer, one ack), handed to
//!   any number of local subscribers, each of which gets every message. A message is acked on
//!   the backend once every local subscriber acked it (the in-memory pub/sub's
//!   `block_publish_until_acked`), one message at a time; while no local subscriber is alive
//!   the next one waits, unacked. Local subscribers that come and go cost the broker nothing.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::pubsub::memory::{MemoryConfig, MemoryPubSub};
use crate::pubsub::{DynSubscriber, Publisher, SubscribeOptions, Subscriber, Subscription};

/// The metadata key naming the topic a fanned-in message came from.
pub const FANNED_IN_FROM: &str = "fanned_in_from";

/// Moves every message of the `sources` topics (of `subscriber`) to `target` (of
/// `publisher`) until `stop` is cancelled. Subscribes to every source before it returns, so
/// nothing published after the call is missed; the moving runs in the returned tasks.
pub async fn fan_in(
    subscriber: &dyn Subscriber,
    publisher: Arc<dyn Publisher>,
    sources: &[String],
    target: &str,
    stop: CancellationToken,
) -> Result<JoinSet<()>> {
    let mut tasks = JoinSet::new();
    for source in sources {
        let sub = subscriber.subscribe(source).await?;
        let (publisher, source, target, stop) = (
            publisher.clone(),
            source.clone(),
            target.to_string(),
            stop.clone(),
        );
        tasks.spawn(async move { move_all(sub, &source, publisher.as_ref(), &target, stop).await });
    }
    Ok(tasks)
}

async fn move_all(
    mut sub: Subscription,
    source: &str,
    publisher: &dyn Publisher,
    target: &str,
    stop: CancellationToken,
) {
    loop {
        let Some(msg) = crate::components::recv_until(&mut sub, &stop).await else {
            return;
        };
        let mut out = msg.copy();
        out.metadata.set(FANNED_IN_FROM, source);
        match publisher.publish(target, vec![out]).await {
            Ok(()) => {
                msg.ack();
            }
            Err(e) => {
                tracing::warn!(uuid = %msg.uuid, source, target, "fan-in: publish failed, redelivered later: {e}");
                msg.nack();
            }
        }
    }
}

/// One subscription to a topic, shared by any number of local subscribers.
pub struct FanOut {
    local: MemoryPubSub,
    topic: String,
    /// Notified by every new local subscription.
    joined: Arc<Notify>,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    stop: CancellationToken,
}

/// Returns once `local` has a subscription to `topic` (`false` if `stop` comes first), so that
/// a message is held (unacked on the backend) while there is none instead of being handed to
/// nobody. `joined` is notified by every new local subscription.
async fn has_subscriber(
    local: &MemoryPubSub,
    topic: &str,
    joined: &Notify,
    stop: &CancellationToken,
) -> bool {
    loop {
        let notified = joined.notified();
        if local.subscriber_count(topic) > 0 {
            return true;
        }
        tokio::select! {
            () = notified => {}
            () = stop.cancelled() => return false,
        }
    }
}

impl FanOut {
    /// A fan-out of `topic` whose local subscribers may subscribe now; nothing arrives until
    /// [`FanOut::begin`]. Subscribing every local subscriber first means none misses a message.
    pub fn new(topic: &str) -> FanOut {
        FanOut {
            // A message is acked on the backend only once every local subscriber acked it.
            local: MemoryPubSub::new(MemoryConfig {
                block_publish_until_acked: true,
                ..MemoryConfig::default()
            }),
            topic: topic.to_string(),
            joined: Arc::default(),
            task: std::sync::Mutex::new(None),
            stop: CancellationToken::new(),
        }
    }

    /// Subscribes once to `topic` of `subscriber` and starts handing its messages out.
    pub async fn start(subscriber: &dyn Subscriber, topic: &str) -> Result<FanOut> {
        let fan = FanOut::new(topic);
        fan.begin(subscriber).await?;
        Ok(fan)
    }

    /// Subscribes once to the topic of `subscriber` and hands its messages to the local
    /// subscribers from now on (once; a second call does nothing). While no local subscriber
    /// is alive, the next message waits, unacked on the backend.
    pub async fn begin(&self, subscriber: &dyn Subscriber) -> Result<()> {
        if self.task_slot().is_some() {
            return Ok(());
        }
        let mut sub = subscriber.subscribe(&self.topic).await?;
        let (local, topic, stop) = (self.local.clone(), self.topic.clone(), self.stop.clone());
        let joined = self.joined.clone();
        let task = tokio::spawn(async move {
            loop {
                let Some(msg) = crate::components::recv_until(&mut sub, &stop).await else {
                    return;
                };
                if !has_subscriber(&local, &topic, &joined, &stop).await {
                    msg.nack();
                    return;
                }
                // Returns once every local subscriber acked it, or ended without acking: when
                // none is left (the host stopping), nobody handled it for sure, so it comes again.
                match local.publish(&topic, vec![msg.copy()]).await {
                    Ok(()) if local.subscriber_count(&topic) > 0 => msg.ack(),
                    _ => msg.nack(),
                };
            }
        });
        *self.task_slot() = Some(task);
        Ok(())
    }

    fn task_slot(&self) -> std::sync::MutexGuard<'_, Option<tokio::task::JoinHandle<()>>> {
        self.task.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new local subscriber: every message that arrives from now on, in order. Ack or nack
    /// it as usual; a nack redelivers it to this local subscriber only.
    pub async fn subscribe(&self) -> Result<Subscription> {
        self.subscribe_with(SubscribeOptions::default()).await
    }

    /// [`FanOut::subscribe`] with the subscriber's options (messages in flight at once).
    pub async fn subscribe_with(&self, options: SubscribeOptions) -> Result<Subscription> {
        let sub = self.local.subscribe_with(&self.topic, options).await?;
        self.joined.notify_waiters();
        Ok(sub)
    }

    /// Stops the shared subscription; local subscriptions end. A message handed out and not
    /// acked by every local subscriber is nacked on the backend (it comes again).
    pub async fn close(&self) {
        self.stop.cancel();
        // First, so a hand-off waiting for acks ends (and nacks) instead of holding this up.
        let _ = Subscriber::close(&self.local).await;
        let task = self.task_slot().take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// A backend's subscriber whose subscriptions to some topics are local subscribers of a
/// [`FanOut`] (`[[fan_out]]`): every handler of such a topic gets every message, while the
/// backend sees one subscription. Everything else goes to the backend's subscriber.
pub struct FannedSubscriber {
    inner: DynSubscriber,
    fan_outs: HashMap<String, Arc<FanOut>>,
}

impl FannedSubscriber {
    /// `inner`, with subscriptions to the topics of `fan_outs` served by them.
    pub fn new(inner: DynSubscriber, fan_outs: HashMap<String, Arc<FanOut>>) -> Self {
        FannedSubscriber { inner, fan_outs }
    }

    /// Starts every fan-out's subscription to the backend (call once the local subscribers
    /// known at start have subscribed).
    pub async fn begin(&self) -> Result<()> {
        for (topic, fan) in &self.fan_outs {
            self.inner.subscribe_initialize(topic).await?;
            fan.begin(self.inner.as_ref()).await?;
        }
        Ok(())
    }

    /// The topics fanned out.
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.fan_outs.keys().map(String::as_str)
    }
}

#[async_trait]
impl Subscriber for FannedSubscriber {
    async fn subscribe_with(&self, topic: &str, options: SubscribeOptions) -> Result<Subscription> {
        match self.fan_outs.get(topic) {
            Some(fan) => fan.subscribe_with(options).await,
            None => self.inner.subscribe_with(topic, options).await,
        }
    }

    async fn subscribe_initialize(&self, topic: &str) -> Result<()> {
        self.inner.subscribe_initialize(topic).await
    }

    async fn close(&self) -> Result<()> {
        for fan in self.fan_outs.values() {
            fan.close().await;
        }
        self.inner.close().await
    }

    async fn remove_topic(&self, topic: &str) -> Result<bool> {
        self.inner.remove_topic(topic).await
    }

    async fn end_tail(&self, topic: &str) -> Result<()> {
        self.inner.end_tail(topic).await
    }

    fn name(&self) -> &'static str {
        self.inner.name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::test_util::{Both, next, redis};
    use crate::message::Message;

    async fn fan_in_on(ps: Arc<dyn Both>, prefix: &str) {
        let sources: Vec<String> = (0..3)
            .map(|i| crate::pubsub::conformance::unique_topic(&format!("{prefix}-in{i}")))
            .collect();
        let target = crate::pubsub::conformance::unique_topic(&format!("{prefix}-out"));
        for t in sources.iter().chain([&target]) {
            ps.subscribe_initialize(t).await.unwrap();
        }
        let mut out = ps.subscribe(&target).await.unwrap();
        let stop = CancellationToken::new();
        let publisher: Arc<dyn Publisher> = ps.clone().publisher();
        let tasks = fan_in(
            ps.subscriber(),
            publisher.clone(),
            &sources,
            &target,
            stop.clone(),
        )
        .await
        .unwrap();
        for (i, s) in sources.iter().enumerate() {
            let mut m = Message::with_uuid(format!("m{i}"), format!("p{i}"));
            m.metadata.set("k", "v");
            publisher.publish(s, vec![m]).await.unwrap();
        }
        let mut got: Vec<(String, String)> = Vec::new();
        for _ in 0..3 {
            let m = next(&mut out).await;
            assert_eq!(m.metadata.get("k"), "v");
            got.push((m.uuid.clone(), m.metadata.get(FANNED_IN_FROM).to_string()));
        }
        got.sort();
        let want: Vec<(String, String)> = (0..3)
            .map(|i| (format!("m{i}"), sources[i].clone()))
            .collect();
        assert_eq!(got, want);
        stop.cancel();
        tasks.join_all().await;
    }

    #[tokio::test]
    async fn fan_in_moves_several_topics_into_one_in_memory() {
        fan_in_on(Arc::new(MemoryPubSub::default()), "mem").await;
    }

    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn fan_in_moves_several_topics_into_one_on_redis() {
        let ps = redis().await;
        fan_in_on(Arc::new(ps), "redis").await;
    }

    async fn fan_out_on(ps: Arc<dyn Both>, prefix: &str) {
        let topic = crate::pubsub::conformance::unique_topic(&format!("{prefix}-fanout"));
        ps.subscribe_initialize(&topic).await.unwrap();
        let fan = FanOut::start(ps.subscriber(), &topic).await.unwrap();
        let mut locals = Vec::new();
        for _ in 0..3 {
            locals.push(fan.subscribe().await.unwrap());
        }
        let publisher = ps.clone().publisher();
        for i in 0..5 {
            publisher
                .publish(&topic, vec![Message::with_uuid(format!("m{i}"), "x")])
                .await
                .unwrap();
        }
        // Each message reaches the next local subscriber once all acked the one before.
        for i in 0..5 {
            for local in &mut locals {
                assert_eq!(next(local).await.uuid, format!("m{i}"));
            }
        }
        fan.close().await;
    }

    #[tokio::test]
    async fn fan_out_gives_every_local_subscriber_every_message_in_memory() {
        fan_out_on(Arc::new(MemoryPubSub::default()), "mem").await;
    }

    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn fan_out_gives_every_local_subscriber_every_message_from_redis() {
        let ps = redis().await;
        fan_out_on(Arc::new(ps), "redis").await;
    }

    /// The backend's message is acked only once every local subscriber acked its copy.
    #[tokio::test]
    async fn a_fan_out_acks_on_the_backend_once_every_local_subscriber_acked() {
        let ps = MemoryPubSub::new(MemoryConfig {
            block_publish_until_acked: true,
            ..MemoryConfig::default()
        });
        let topic = crate::pubsub::conformance::unique_topic("acked");
        let fan = FanOut::new(&topic);
        let (mut a, mut b) = (
            fan.subscribe().await.unwrap(),
            fan.subscribe().await.unwrap(),
        );
        fan.begin(&ps).await.unwrap();
        let publish = {
            let (ps, topic) = (ps.clone(), topic.clone());
            tokio::spawn(async move { ps.publish(&topic, vec![Message::new("x")]).await })
        };
        next(&mut a).await;
        let held = b.recv().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(
            !publish.is_finished(),
            "acked on the backend before b acked"
        );
        held.ack();
        tokio::time::timeout(std::time::Duration::from_secs(5), publish)
            .await
            .expect("acked on the backend once b acked")
            .unwrap()
            .unwrap();
        fan.close().await;
    }

    /// A message that arrives while no local subscriber is alive (none yet, or the only one
    /// gone) waits for the next one instead of being acked for nobody.
    #[tokio::test]
    async fn a_fan_out_holds_messages_while_no_local_subscriber_is_alive() {
        let ps = MemoryPubSub::default();
        let topic = crate::pubsub::conformance::unique_topic("held");
        let fan = FanOut::start(&ps, &topic).await.unwrap();
        for uuid in ["m0", "m1"] {
            ps.publish(&topic, vec![Message::with_uuid(uuid, "x")])
                .await
                .unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let mut local = fan.subscribe().await.unwrap();
            assert_eq!(next(&mut local).await.uuid, uuid);
            // Acked on the backend before the subscriber goes (gone first, it would come again).
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        fan.close().await;
    }

    /// Two handlers' subscriptions to a fanned-out topic of one consumer group each get every
    /// message, including those published before the fan-out began; another topic is the
    /// group's as usual (its two subscriptions share the messages).
    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn a_fanned_subscriber_gives_each_subscription_of_its_topic_every_message() {
        let ps = Arc::new(redis().await);
        let topic = crate::pubsub::conformance::unique_topic("fanned");
        let other = crate::pubsub::conformance::unique_topic("plain");
        let fan = Arc::new(FanOut::new(&topic));
        let fanned =
            FannedSubscriber::new(ps.clone(), HashMap::from([(topic.clone(), fan.clone())]));
        for t in [&topic, &other] {
            fanned.subscribe_initialize(t).await.unwrap();
        }
        let mut handlers = [
            fanned.subscribe(&topic).await.unwrap(),
            fanned.subscribe(&topic).await.unwrap(),
        ];
        let mut plain = [
            fanned.subscribe(&other).await.unwrap(),
            fanned.subscribe(&other).await.unwrap(),
        ];
        for t in [&topic, &other] {
            for i in 0..4 {
                ps.publish(t, vec![Message::with_uuid(format!("m{i}"), "x")])
                    .await
                    .unwrap();
            }
        }
        fanned.begin().await.unwrap();
        for i in 0..4 {
            for sub in &mut handlers {
                assert_eq!(next(sub).await.uuid, format!("m{i}"));
            }
        }
        let mut shared = 0;
        for sub in &mut plain {
            while let Ok(Some(m)) =
                tokio::time::timeout(std::time::Duration::from_millis(500), sub.recv()).await
            {
                m.ack();
                shared += 1;
            }
        }
        assert_eq!(
            shared, 4,
            "the plain topic's messages, once each across its group"
        );
        fanned.close().await.unwrap();
    }
}
