//! The Pub/Sub contract and its backends.
//!
//! A backend implements [`Publisher`] and [`Subscriber`]. The contract below is what the
//! router relies on and what the [`conformance`] suite checks for every backend, as Watermill's
//! universal pub/sub tests do:
//!
//! - **Publish is thread-safe**: `publish` may be called concurrently from many tasks. It
//!   returns once the backend has accepted every message (persisted or confirmed, when the
//!   backend offers that); an error means some of them may not have been accepted.
//! - **Subscribe returns a stream** ([`Subscription`]) of messages for one topic. Each message
//!   must be acked or nacked. **Nack means redelivery** (to this or another subscriber of the
//!   same consumer group). A backend that promises order delivers the next message only after
//!   the previous one was acked, unless the subscription asked for more in flight
//!   ([`SubscribeOptions::max_in_flight`]).
//! - **Cancelling a subscription ends its stream**: dropping the [`Subscription`] or calling
//!   [`Subscription::cancel`] stops delivery; unacked messages are redelivered later.
//! - **Close is idempotent**: it may be called many times, from many tasks; after it returns,
//!   every subscription's stream has ended and `publish` fails with [`Error::Closed`].
//!
//! Backends are picked by the config's `kind` ([`registry`]); each lives in its own module.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::error::{Error, Result};
use crate::message::Message;

pub mod ack_batcher;
#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(feature = "mysql-binlog")]
pub mod binlog;
pub mod conformance;
pub mod delay;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod kit;
pub mod memory;
#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod read_ahead;
#[cfg(feature = "redis")]
pub mod redis;
pub mod registry;
#[cfg(feature = "sqlite")]
pub mod sqlite;
pub mod stored;
#[cfg(test)]
pub mod testkit;
#[cfg(all(test, feature = "tls"))]
mod tls_tests;

/// Publishes messages to topics.
#[async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Publishes `messages` to `topic`, in order. Thread-safe; returns once every message has
    /// been accepted by the backend.
    async fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<()>;

    /// Closes the publisher. Idempotent.
    async fn close(&self) -> Result<()>;

    /// A short name for logs, metrics and the `publisher_poisoned`-style metadata.
    fn name(&self) -> &'static str;
}

/// Options for one subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// How many delivered messages may be unacknowledged at once. `1` (the default) keeps a
    /// backend's order: nothing new arrives until the previous message is acked or nacked.
    /// The router sets it to a handler's `concurrency`. Backends that cannot deliver more than
    /// one at a time may ignore it.
    pub max_in_flight: usize,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions { max_in_flight: 1 }
    }
}

/// Subscribes to topics.
#[async_trait]
pub trait Subscriber: Send + Sync + 'static {
    /// Subscribes to `topic` with default options (one message in flight).
    async fn subscribe(&self, topic: &str) -> Result<Subscription> {
        self.subscribe_with(topic, SubscribeOptions::default())
            .await
    }

    /// Subscribes to `topic`. The stream ends when the subscription is cancelled or the
    /// subscriber is closed.
    async fn subscribe_with(&self, topic: &str, options: SubscribeOptions) -> Result<Subscription>;

    /// Creates whatever `topic` needs (stream, table, queue) without consuming from it, so that
    /// messages published before the first subscription are kept. A no-op by default.
    async fn subscribe_initialize(&self, _topic: &str) -> Result<()> {
        Ok(())
    }

    /// Closes the subscriber and ends all its subscriptions. Idempotent.
    async fn close(&self) -> Result<()>;

    /// Deletes what the backend stores for `topic` (its stream with its messages and consumer
    /// groups), for tools and tests that clean up after themselves; nothing may be subscribed
    /// to `topic` any more. Allowed after [`Subscriber::close`]. `Ok(true)` when something was
    /// deleted; `Ok(false)` when nothing was stored or the backend does not delete topics (the
    /// default). On AMQP and MQTT, whose brokers do not list a topic's queues or sessions, it
    /// deletes what belongs to this subscriber's consumer group (and AMQP the exchange).
    async fn remove_topic(&self, _topic: &str) -> Result<bool> {
        Ok(false)
    }

    /// Ends a subscriber made to read one topic once (an SSE client, `wasmill tail`: a tail
    /// in a consumer group of its own, see `registry::Backend::tail_subscriber`): closes it and
    /// deletes what it left on the broker for `topic` (its consumer group, durable consumer or
    /// offsets row), so that a thousand clients leave nothing behind. Only for tails: on a
    /// handler's subscriber it would delete the handler's group. The default does nothing,
    /// for backends whose tails leave nothing (in-memory; AMQP's exclusive auto-delete queue;
    /// MQTT's clean session).
    async fn end_tail(&self, _topic: &str) -> Result<()> {
        Ok(())
    }

    /// A short name for logs, metrics and the `subscriber_poisoned` metadata.
    fn name(&self) -> &'static str;
}

/// A shared publisher.
pub type DynPublisher = Arc<dyn Publisher>;
/// A shared subscriber.
pub type DynSubscriber = Arc<dyn Subscriber>;

/// The receiving end of a subscription: a stream of messages for one topic.
///
/// Dropping it cancels the subscription.
#[derive(Debug)]
pub struct Subscription {
    source: Source,
    cancel: CancellationToken,
    _guard: DropGuard,
}

/// Where a subscription's messages come from.
enum Source {
    /// A backend task feeds a channel (most network backends).
    Channel(mpsc::Receiver<Message>),
    /// The consumer's own task pulls them (no hand-off between tasks per message).
    Pull(Box<dyn MessageSource>),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Channel(_) => f.write_str("Channel"),
            Source::Pull(_) => f.write_str("Pull"),
        }
    }
}

/// A subscription whose messages are produced on demand by the consumer's task, for backends
/// that can decide what to deliver next without a task of their own (the in-memory one).
/// It must honour the same contract as a channel-fed subscription: with one message in
/// flight, `next` returns the following message only once the previous one was settled.
#[async_trait]
pub trait MessageSource: Send + 'static {
    /// The next message, or `None` when the source has ended.
    async fn next(&mut self) -> Option<Message>;

    /// The next message if one can be handed out at once, without waiting or asking the
    /// broker (the router fills a `batch` with these); `None` otherwise.
    fn try_next(&mut self) -> Option<Message> {
        None
    }
}

/// The backend's end of a subscription: where it sends messages and learns of cancellation.
#[derive(Debug, Clone)]
pub struct SubscriptionSender {
    tx: mpsc::Sender<Message>,
    cancel: CancellationToken,
}

impl Subscription {
    /// A subscription whose channel holds up to `buffer` undelivered messages, with the
    /// sender a backend feeds it from. `parent` (the subscriber's close token) cancels it too.
    pub fn channel(
        buffer: usize,
        parent: &CancellationToken,
    ) -> (Subscription, SubscriptionSender) {
        let (tx, rx) = mpsc::channel(buffer.max(1));
        let cancel = parent.child_token();
        let sub = Subscription {
            source: Source::Channel(rx),
            cancel: cancel.clone(),
            _guard: cancel.clone().drop_guard(),
        };
        (sub, SubscriptionSender { tx, cancel })
    }

    /// A subscription pulling from `source`; `parent` (the subscriber's close token) ends it.
    pub fn pull(source: impl MessageSource, parent: &CancellationToken) -> Subscription {
        let cancel = parent.child_token();
        Subscription {
            source: Source::Pull(Box::new(source)),
            cancel: cancel.clone(),
            _guard: cancel.drop_guard(),
        }
    }

    /// The next message, or `None` once the subscription has ended.
    pub async fn recv(&mut self) -> Option<Message> {
        if self.cancel.is_cancelled() {
            return None;
        }
        match &mut self.source {
            Source::Channel(rx) => tokio::select! {
                biased;
                m = rx.recv() => m,
                _ = self.cancel.cancelled() => None,
            },
            Source::Pull(src) => tokio::select! {
                biased;
                m = src.next() => m,
                _ = self.cancel.cancelled() => None,
            },
        }
    }

    /// The next message if one is at hand now (received, within the in-flight limit), without
    /// waiting; `None` otherwise, or once the subscription has ended.
    pub fn try_recv(&mut self) -> Option<Message> {
        if self.cancel.is_cancelled() {
            return None;
        }
        match &mut self.source {
            Source::Channel(rx) => rx.try_recv().ok(),
            Source::Pull(src) => src.try_next(),
        }
    }

    /// Cancels the subscription; the stream ends.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Whether the subscription was cancelled (by the caller or by closing the subscriber).
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// The token cancelled when the subscription ends.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }
}

impl SubscriptionSender {
    /// Hands `msg` to the subscriber, waiting for room. Fails (returning the message) when
    /// the subscription has ended.
    pub async fn send(&self, msg: Message) -> std::result::Result<(), Message> {
        let permit = tokio::select! {
            biased;
            _ = self.cancel.cancelled() => return Err(msg),
            p = self.tx.reserve() => p,
        };
        match permit {
            Ok(p) => {
                p.send(msg);
                Ok(())
            }
            Err(_) => Err(msg),
        }
    }

    /// Whether the subscription has ended.
    pub fn is_closed(&self) -> bool {
        self.cancel.is_cancelled() || self.tx.is_closed()
    }

    /// Resolves when the subscription ends.
    pub async fn closed(&self) {
        tokio::select! {
            _ = self.cancel.cancelled() => {}
            _ = self.tx.closed() => {}
        }
    }

    /// The token cancelled when the subscription ends.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }
}

/// Waits for `msg` to be acked or nacked, or for the subscription to end first (then the
/// message counts as nacked: the backend redelivers it later). Backends use this in their
/// delivery loops.
pub async fn wait_settled(msg: &Message, sender: &SubscriptionSender) -> crate::message::AckState {
    use crate::message::AckState;
    tokio::select! {
        biased;
        s = msg.settled() => s,
        _ = sender.cancel.cancelled() => {
            // The consumer is gone: if it has not settled the message, nobody will.
            match msg.ack_state() {
                AckState::Pending => AckState::Nacked,
                s => s,
            }
        }
    }
}

/// Waits until `sent` (already handed to the subscription) is acked. A nack is answered by the
/// backend itself: after the message's redelivery delay (or `default_delay`) a fresh copy is
/// sent again, so that messages the backend read ahead cannot overtake it (a requeue on the
/// broker would put it behind them). `on_nack` runs at each nack, before the wait (NATS tells
/// the server the message is still in progress). Returns `true` once acked, `false` if the
/// subscription ended first; the message is then not acked and the broker redelivers it.
pub async fn settle_redelivering<F, Fut>(
    sent: Message,
    sender: &SubscriptionSender,
    default_delay: std::time::Duration,
    mut on_nack: F,
) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future,
{
    let mut msg = sent;
    loop {
        if let crate::message::AckState::Acked = wait_settled(&msg, sender).await {
            return true;
        }
        if sender.is_closed() {
            return false;
        }
        on_nack().await;
        let delay = msg.redelivery_delay().unwrap_or(default_delay);
        if !delay.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = sender.closed() => return false,
            }
        }
        let again = msg.copy();
        if sender.send(again.clone()).await.is_err() {
            return false;
        }
        msg = again;
    }
}

/// Messages per publish-then-consume round of a bench against a broker that keeps little for a
/// consumer that is not reading (MQTT's raw loop, and `wasmill bench`'s held backlog): about
/// 1 MiB. While the consumer does not read, what the socket buffers cannot hold waits in
/// Mosquitto's per-client queue (`max_queued_messages`, 1000 packets, beyond the 65,535 a
/// session may have in flight), which drops the rest; a round must fit.
pub fn bench_round(payload_size: usize) -> usize {
    ((1 << 20) / (payload_size + 64)).clamp(100, 50_000)
}

/// The error for an operation on a closed backend.
pub fn closed(backend: &'static str) -> Error {
    Error::Closed(backend)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn settle_redelivering_sends_a_nacked_message_again_until_it_is_acked() {
        let (mut sub, sender) = Subscription::channel(1, &CancellationToken::new());
        let first = Message::new("m");
        sender.send(first.clone()).await.unwrap();
        let nacks = Arc::new(AtomicUsize::new(0));
        let counted = nacks.clone();
        let settled = tokio::spawn(async move {
            settle_redelivering(first, &sender, Duration::from_millis(5), || {
                counted.fetch_add(1, Ordering::SeqCst);
                async {}
            })
            .await
        });
        for _ in 0..2 {
            let m = sub.recv().await.unwrap();
            assert_eq!(m.payload, "m");
            m.nack();
        }
        let m = sub.recv().await.unwrap();
        m.ack();
        assert!(settled.await.unwrap(), "acked");
        assert_eq!(nacks.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn settle_redelivering_gives_up_when_the_subscription_ends() {
        let (mut sub, sender) = Subscription::channel(1, &CancellationToken::new());
        let first = Message::new("m");
        sender.send(first.clone()).await.unwrap();
        let settled = tokio::spawn(async move {
            settle_redelivering(first, &sender, Duration::ZERO, || async {}).await
        });
        let _held = sub.recv().await.unwrap();
        drop(sub);
        assert!(!settled.await.unwrap(), "not acked");
    }
}
