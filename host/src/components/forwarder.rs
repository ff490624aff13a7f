//! The forwarder (transactional outbox, Watermill's `forwarder` component): messages meant for
//! one backend are first stored on another, usually inside the database transaction of the
//! business write (PostgreSQL's or MySQL's `publish_in_tx`), and a [`Forwarder`] moves them on
//! afterwards, so a message is published exactly when the write commits, at least once.
//!
//! A forwarded message is the original itself, kept whole (uuid, metadata, payload), with one
//! more metadata key, [`FORWARD_TO`], naming its destination topic; it is published to a
//! forwarder topic ([`DEFAULT_TOPIC`] unless chosen). The forwarder removes the key and
//! publishes the message to its destination on the target publisher, then acks it; a failed
//! publish nacks it (the source redelivers it later, nothing is lost). A message without a
//! destination can never be forwarded: it goes to `<forwarder topic>.poison` with the reason,
//! as the PoisonQueue middleware would put it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::message::Message;
use crate::pubsub::{Publisher, Subscription};
use crate::router::middleware::poison_queue::{REASON_POISONED, TOPIC_POISONED};

/// The metadata key naming a forwarded message's destination topic.
pub const FORWARD_TO: &str = "_wasmill_forward_to";

/// The forwarder topic when none is chosen (Watermill's default name).
pub const DEFAULT_TOPIC: &str = "forwarder_topic";

/// `msg` marked for `destination`: what to store on the forwarder topic (for example with
/// `pubsub::postgres::publish_in_tx`, in the business write's transaction).
pub fn wrap(destination: &str, msg: &Message) -> Message {
    let mut out = msg.copy();
    out.metadata.set(FORWARD_TO, destination);
    out
}

/// The destination and the original message of a forwarded one; `Err` says why it has none.
pub fn unwrap(msg: &Message) -> std::result::Result<(String, Message), String> {
    let destination = match msg.metadata.get_opt(FORWARD_TO) {
        Some(d) if !d.is_empty() => d.to_string(),
        _ => {
            return Err(format!(
                "no `{FORWARD_TO}` metadata: not a forwarded message"
            ));
        }
    };
    let mut out = msg.copy();
    out.metadata.remove(FORWARD_TO);
    Ok((destination, out))
}

/// A publisher that stores every message on a forwarder topic of `inner`, marked for the
/// topic it was published to: hand it to code that publishes, and run a [`Forwarder`].
pub struct ForwarderPublisher {
    inner: Arc<dyn Publisher>,
    topic: String,
}

impl ForwarderPublisher {
    /// Stores on `topic` of `inner`.
    pub fn new(inner: Arc<dyn Publisher>, topic: impl Into<String>) -> Self {
        ForwarderPublisher {
            inner,
            topic: topic.into(),
        }
    }
}

#[async_trait]
impl Publisher for ForwarderPublisher {
    async fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<()> {
        let wrapped = messages.iter().map(|m| wrap(topic, m)).collect();
        self.inner.publish(&self.topic, wrapped).await
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }

    fn name(&self) -> &'static str {
        "forwarder"
    }
}

/// Moves the messages of a forwarder topic's subscription to their destinations.
pub struct Forwarder {
    source_topic: String,
    source_publisher: Arc<dyn Publisher>,
    target: Arc<dyn Publisher>,
    forwarded: AtomicU64,
    poisoned: AtomicU64,
}

impl Forwarder {
    /// Forwards what a subscription to `source_topic` receives to `target`;
    /// `source_publisher` takes the messages that cannot be forwarded (to
    /// `<source_topic>.poison`).
    pub fn new(
        source_topic: impl Into<String>,
        source_publisher: Arc<dyn Publisher>,
        target: Arc<dyn Publisher>,
    ) -> Self {
        Forwarder {
            source_topic: source_topic.into(),
            source_publisher,
            target,
            forwarded: AtomicU64::new(0),
            poisoned: AtomicU64::new(0),
        }
    }

    /// Messages forwarded so far.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }

    /// Messages without a destination, sent to the poison topic so far.
    pub fn poisoned(&self) -> u64 {
        self.poisoned.load(Ordering::Relaxed)
    }

    /// Forwards what `source` (a subscription to the forwarder topic) receives until `stop`
    /// is cancelled or the subscription ends. Each message is acked only once it is published
    /// to its destination (or, without one, to the poison topic).
    pub async fn run(&self, mut source: Subscription, stop: CancellationToken) {
        loop {
            let Some(msg) = super::recv_until(&mut source, &stop).await else {
                return;
            };
            self.forward(msg).await;
        }
    }

    async fn forward(&self, msg: Message) {
        match unwrap(&msg) {
            Ok((destination, out)) => match self.target.publish(&destination, vec![out]).await {
                Ok(()) => {
                    self.forwarded.fetch_add(1, Ordering::Relaxed);
                    msg.ack();
                }
                Err(e) => {
                    tracing::warn!(uuid = %msg.uuid, %destination, "forwarder: publish failed, redelivered later: {e}");
                    msg.nack();
                }
            },
            Err(why) => {
                let poison = format!("{}.poison", self.source_topic);
                let mut out = msg.copy();
                out.metadata.set(REASON_POISONED, why.as_str());
                out.metadata.set(TOPIC_POISONED, self.source_topic.as_str());
                match self.source_publisher.publish(&poison, vec![out]).await {
                    Ok(()) => {
                        tracing::error!(uuid = %msg.uuid, %poison, "forwarder: {why}");
                        self.poisoned.fetch_add(1, Ordering::Relaxed);
                        msg.ack();
                    }
                    Err(e) => {
                        tracing::warn!(uuid = %msg.uuid, "forwarder: cannot poison: {e}");
                        msg.nack();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::components::test_util::next;
    use crate::pubsub::Subscriber;
    use crate::pubsub::memory::MemoryPubSub;

    #[test]
    fn wrap_and_unwrap_keep_the_message_whole() {
        let mut m = Message::with_uuid("u1", "payload");
        m.metadata.set("k", "v");
        let w = wrap("orders", &m);
        assert_eq!(w.metadata.get(FORWARD_TO), "orders");
        let (to, back) = unwrap(&w).unwrap();
        assert_eq!(to, "orders");
        assert_eq!(
            (back.uuid.as_str(), &back.payload[..]),
            ("u1", &b"payload"[..])
        );
        assert_eq!(back.metadata, m.metadata);
        assert!(unwrap(&m).unwrap_err().contains(FORWARD_TO));
    }

    #[tokio::test]
    async fn messages_stored_on_one_backend_reach_their_topics_on_another() {
        let outbox = MemoryPubSub::default();
        let target = MemoryPubSub::default();
        let mut orders = target.subscribe("orders").await.unwrap();
        let mut poison = outbox.subscribe("forwarder_topic.poison").await.unwrap();
        let source = outbox.subscribe(DEFAULT_TOPIC).await.unwrap();
        let fwd = Forwarder::new(
            DEFAULT_TOPIC,
            Arc::new(outbox.clone()),
            Arc::new(target.clone()),
        );
        let stop = CancellationToken::new();
        let run = {
            let stop = stop.clone();
            tokio::spawn(async move {
                fwd.run(source, stop).await;
                fwd
            })
        };

        let publisher = ForwarderPublisher::new(Arc::new(outbox.clone()), DEFAULT_TOPIC);
        let mut m = Message::with_uuid("o-1", "order 1");
        m.metadata.set("tenant", "t1");
        publisher.publish("orders", vec![m]).await.unwrap();
        // Not a forwarded message: poisoned, not lost.
        outbox
            .publish(DEFAULT_TOPIC, vec![Message::with_uuid("stray", "?")])
            .await
            .unwrap();

        let got = next(&mut orders).await;
        assert_eq!(
            (got.uuid.as_str(), &got.payload[..]),
            ("o-1", &b"order 1"[..])
        );
        assert_eq!(got.metadata.get("tenant"), "t1");
        assert!(!got.metadata.contains(FORWARD_TO));
        let stray = next(&mut poison).await;
        assert_eq!(stray.uuid, "stray");
        assert!(stray.metadata.get(REASON_POISONED).contains(FORWARD_TO));

        stop.cancel();
        let fwd = run.await.unwrap();
        assert_eq!((fwd.forwarded(), fwd.poisoned()), (1, 1));
    }

    /// The outbox on PostgreSQL: a message written in a transaction is forwarded (to the
    /// in-memory backend here) once the transaction commits, and never when it rolls back.
    #[cfg(feature = "postgres")]
    #[tokio::test]
    async fn a_postgres_transaction_forwards_what_it_commits_only() {
        use crate::pubsub::postgres::publish_in_tx;
        let db = crate::components::test_util::postgres().await;
        let outbox = crate::pubsub::conformance::unique_topic("forwarder");
        db.subscribe_initialize(&outbox).await.unwrap();
        let target = MemoryPubSub::default();
        let mut orders = target.subscribe("orders").await.unwrap();
        let fwd = Forwarder::new(
            outbox.clone(),
            Arc::new(db.clone()),
            Arc::new(target.clone()),
        );
        let source = db.subscribe(&outbox).await.unwrap();
        let stop = CancellationToken::new();
        let run = {
            let stop = stop.clone();
            tokio::spawn(async move { fwd.run(source, stop).await })
        };

        for (uuid, commit) in [("rolled-back", false), ("committed", true)] {
            let mut tx = db.pool().begin().await.unwrap();
            // The business write would go here, in the same transaction.
            publish_in_tx(
                &mut tx,
                &outbox,
                &[wrap("orders", &Message::with_uuid(uuid, "o"))],
            )
            .await
            .unwrap();
            if commit {
                tx.commit().await.unwrap();
            } else {
                tx.rollback().await.unwrap();
            }
        }
        assert_eq!(next(&mut orders).await.uuid, "committed");
        let more = tokio::time::timeout(Duration::from_millis(500), orders.recv()).await;
        assert!(more.is_err(), "the rolled-back message was forwarded");
        stop.cancel();
        run.await.unwrap();
    }

    /// A forwarder stopped mid-way (its subscription dropped with messages in flight) and
    /// started again loses nothing: every committed message reaches its destination.
    #[cfg(feature = "postgres")]
    #[tokio::test]
    async fn a_forwarder_stopped_mid_way_loses_nothing_on_postgres() {
        use std::collections::HashSet;

        use crate::pubsub::postgres::publish_in_tx;
        let db = crate::components::test_util::postgres().await;
        let outbox = crate::pubsub::conformance::unique_topic("forwarder-kill");
        db.subscribe_initialize(&outbox).await.unwrap();
        let target = MemoryPubSub::default();
        let mut orders = target.subscribe("orders").await.unwrap();
        let mut tx = db.pool().begin().await.unwrap();
        let sent: Vec<Message> = (0..200)
            .map(|i| wrap("orders", &Message::with_uuid(format!("o-{i}"), "x")))
            .collect();
        publish_in_tx(&mut tx, &outbox, &sent).await.unwrap();
        tx.commit().await.unwrap();

        let mut seen = HashSet::new();
        for round in 0..2 {
            let fwd = Forwarder::new(
                outbox.clone(),
                Arc::new(db.clone()),
                Arc::new(target.clone()),
            );
            let source = db.subscribe(&outbox).await.unwrap();
            let stop = CancellationToken::new();
            let run = {
                let stop = stop.clone();
                tokio::spawn(async move { fwd.run(source, stop).await })
            };
            // The first forwarder is stopped after 50 messages, the second runs to the end.
            let want = if round == 0 { 50 } else { 200 };
            while seen.len() < want {
                seen.insert(next(&mut orders).await.uuid);
            }
            stop.cancel();
            run.await.unwrap();
        }
        assert_eq!(seen.len(), 200);
    }
}
