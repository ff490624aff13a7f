//! The universal pub/sub test suite, run against every backend.
//!
//! A port of Watermill's `pubsub/tests/test_pubsub.go`. A backend declares what it promises in
//! [`Features`] and provides a [`Harness`]; the [`conformance_tests!`](crate::conformance_tests)
//! macro stamps one `#[tokio::test]` per test of the suite into the calling module. A test whose
//! feature the backend does not promise returns early (and says so on stderr).
//!
//! Every test uses fresh topic names, so tests of one backend run in parallel against one
//! shared server. No test stops or restarts a shared server: the `reconnect` test runs against a
//! server it owns ([`Harness::owned_pubsub`]), a private instance or a proxy in front of the
//! shared one (`pubsub::testkit`). Reads keep every delivery, duplicates included: a backend
//! that promises `exactly_once` fails when one message arrives twice.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{DynPublisher, DynSubscriber, Subscription};
use crate::error::{Error, Result};
use crate::message::Message;

mod cases;

pub use cases::*;

/// What a backend promises; tests of promises it does not make are skipped.
#[derive(Debug, Clone, Copy, Default)]
pub struct Features {
    /// Subscribers in different consumer groups each receive every message; subscribers in
    /// one group share them.
    pub consumer_groups: bool,
    /// No message is ever delivered twice.
    pub exactly_once: bool,
    /// Messages arrive in publish order.
    pub guaranteed_order: bool,
    /// Messages arrive in publish order when there is one subscriber.
    pub guaranteed_order_with_single_subscriber: bool,
    /// Messages survive the subscriber going away; a new subscription reads unacked ones.
    pub persistent: bool,
    /// A subscriber that joins late reads messages published before it joined.
    pub new_subscriber_receives_old_messages: bool,
    /// Publisher and subscriber must be one instance (no shared server).
    pub require_single_instance: bool,
    /// A message whose due time (`_watermill_delayed_until`) is ahead is delivered no sooner,
    /// and does not hold back the messages published after it.
    pub delays: bool,
}

/// A server a test owns going away and coming back: a private instance restarting, or a proxy
/// cutting every connection through it.
#[async_trait]
pub trait Outage: Send + Sync {
    /// Makes the server go away, then come back; returns once it accepts clients again.
    async fn go_away_and_come_back(&mut self) -> Result<()>;
}

/// A publisher and a subscriber connected to a server the test owns ([`Harness::owned_pubsub`]).
pub struct OwnedPubSub {
    /// Publishes to the owned server.
    pub publisher: DynPublisher,
    /// Subscribes on the owned server.
    pub subscriber: DynSubscriber,
    /// Makes the owned server go away and come back; dropping it stops a private server.
    pub outage: Box<dyn Outage>,
}

/// How the suite gets fresh publishers and subscribers of a backend.
#[async_trait]
pub trait Harness: Send + Sync + 'static {
    /// What the backend promises.
    fn features(&self) -> Features;

    /// A publisher and a subscriber connected to the same broker (for an in-process backend,
    /// a fresh instance shared by both).
    async fn pubsub(&self) -> Result<(DynPublisher, DynSubscriber)>;

    /// A subscriber in consumer group `group`, on the same broker as [`Harness::pubsub`]
    /// returns. Needed when `consumer_groups` is promised.
    async fn subscriber_in_group(&self, group: &str) -> Result<DynSubscriber> {
        Err(Error::Other(format!(
            "consumer group {group}: not supported"
        )))
    }

    /// The pairs `concurrent_close` subscribes with and closes all at once, before it reads
    /// with [`Harness::pubsub`]'s. By default [`Harness::pubsub`]'s own (one consumer group).
    /// A harness whose test server strands a group when its leader leaves mid-join puts them
    /// in a group of their own, so that the read after them tests the backend, not that bug.
    async fn pubsub_to_close(&self) -> Result<(DynPublisher, DynSubscriber)> {
        self.pubsub().await
    }

    /// A pair connected to a server this test owns, with the means to make it go away and come
    /// back; `None` when the backend has no server to lose (the `reconnect` test is skipped).
    /// Never a shared server: the outage must touch nothing another test uses.
    async fn owned_pubsub(&self) -> Result<Option<OwnedPubSub>> {
        Ok(None)
    }
}

/// Stamps the whole conformance suite into the calling module for the harness `$harness`
/// (an expression evaluated once per test).
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr) => {
        $crate::conformance_tests!(@stamp $harness;
            publish_subscribe, concurrent_subscribe, concurrent_subscribe_multiple_topics,
            resend_on_error, no_ack, continue_after_subscribe_close, concurrent_close,
            continue_after_errors, publish_subscribe_in_order, nack_keeps_order, publisher_close,
            topic,
            message_ctx, subscribe_ctx, new_subscriber_receives_old_messages, consumer_groups,
            remove_topic, reconnect, delay);
    };
    (@stamp $harness:expr; $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                let harness = $harness;
                $crate::pubsub::conformance::run(&harness, stringify!($test), |h| {
                    Box::pin($crate::pubsub::conformance::$test(h))
                })
                .await;
            }
        )*
    };
}

type TestFn<'a, H> =
    fn(&'a H) -> std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + Send + 'a>>;

/// What one test of the suite concluded.
#[derive(Debug)]
pub enum Outcome {
    /// Every assertion held.
    Passed,
    /// The backend does not promise what the test checks.
    Skipped(&'static str),
}

/// Runs one test of the suite and reports a skip on stderr.
pub async fn run<'a, H: Harness>(harness: &'a H, name: &str, test: TestFn<'a, H>) {
    if let Outcome::Skipped(why) = test(harness).await {
        eprintln!("{name}: skipped: {why}");
    }
}

/// A consumer group name no other test uses.
pub fn unique_group() -> String {
    format!("g-{}", uuid::Uuid::new_v4().simple())
}

/// One backend value as both the publisher and the subscriber of [`Harness::pubsub`].
pub fn pair<T>(ps: T) -> (DynPublisher, DynSubscriber)
where
    T: super::Publisher + super::Subscriber + Clone,
{
    (Arc::new(ps.clone()), Arc::new(ps))
}

/// A topic name no other test uses.
pub fn unique_topic(name: &str) -> String {
    format!("{name}_{}", uuid::Uuid::new_v4().simple())
}

const TIMEOUT: Duration = Duration::from_secs(30);

fn messages(n: usize, tag: &str) -> Vec<Message> {
    (0..n)
        .map(|i| {
            Message::new(format!("{tag}-{i}"))
                .with_metadata("test", tag)
                .with_metadata("seq", i.to_string())
        })
        .collect()
}

async fn pubsub<H: Harness>(h: &H) -> (DynPublisher, DynSubscriber) {
    h.pubsub().await.expect("harness: create pub/sub")
}

async fn publish_all(publisher: &DynPublisher, topic: &str, msgs: &[Message]) {
    publisher
        .publish(topic, msgs.iter().map(Message::copy).collect())
        .await
        .unwrap_or_else(|e| panic!("publish to {topic}: {e}"));
}

/// Subscribes (initializing first) and, for a persistent backend, publishes before
/// subscribing, as Watermill does; otherwise subscribes first so nothing is missed.
async fn subscribe_and_publish(
    publisher: &DynPublisher,
    subscriber: &DynSubscriber,
    topic: &str,
    msgs: &[Message],
    persistent: bool,
) -> Subscription {
    subscriber
        .subscribe_initialize(topic)
        .await
        .expect("subscribe_initialize");
    if persistent {
        publish_all(publisher, topic, msgs).await;
        subscriber.subscribe(topic).await.expect("subscribe")
    } else {
        let sub = subscriber.subscribe(topic).await.expect("subscribe");
        publish_all(publisher, topic, msgs).await;
        sub
    }
}

/// Reads until `n` distinct messages arrived (acking each) or `timeout` passed. Returns every
/// delivery in arrival order, a message delivered twice twice.
pub async fn bulk_read(sub: &mut Subscription, n: usize, timeout: Duration) -> Vec<Message> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while seen.len() < n {
        match tokio::time::timeout_at(deadline, sub.recv()).await {
            Ok(Some(m)) => {
                m.ack();
                seen.insert(m.uuid.clone());
                out.push(m);
            }
            Ok(None) | Err(_) => break,
        }
    }
    out
}

/// Asserts that every message of `expected` is among the deliveries `received`, with its
/// payload and metadata; with `exactly_once`, also that no message was delivered twice.
pub fn assert_all_received(expected: &[Message], received: &[Message], exactly_once: bool) {
    let mut got: HashMap<&str, (&Message, usize)> = HashMap::new();
    for m in received {
        got.entry(m.uuid.as_str()).or_insert((m, 0)).1 += 1;
    }
    if exactly_once {
        let mut twice: Vec<(&str, usize)> = got
            .iter()
            .filter(|(_, (_, n))| *n > 1)
            .map(|(id, (_, n))| (*id, *n))
            .collect();
        twice.sort_unstable();
        assert!(
            twice.is_empty(),
            "{} of {} messages delivered more than once (uuid, deliveries), for example {:?}",
            twice.len(),
            got.len(),
            &twice[..twice.len().min(5)]
        );
    }
    let missing: Vec<&str> = expected
        .iter()
        .filter(|m| !got.contains_key(m.uuid.as_str()))
        .map(|m| m.uuid.as_str())
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} messages missing, for example {:?}",
        missing.len(),
        expected.len(),
        &missing[..missing.len().min(5)]
    );
    for e in expected {
        let (g, _) = got[e.uuid.as_str()];
        assert_eq!(g.payload, e.payload, "payload of {}", e.uuid);
        assert_eq!(g.metadata, e.metadata, "metadata of {}", e.uuid);
    }
}

async fn close_both(publisher: &DynPublisher, subscriber: &DynSubscriber) {
    publisher.close().await.expect("close publisher");
    subscriber.close().await.expect("close subscriber");
    // Close must be idempotent.
    publisher.close().await.expect("close publisher twice");
    subscriber.close().await.expect("close subscriber twice");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::memory::{MemoryConfig, MemoryPubSub};
    use crate::pubsub::{Publisher, Subscriber};

    /// A message published twice under one UUID is two deliveries: the read keeps both and
    /// the exactly-once check names the message.
    #[tokio::test]
    async fn a_message_delivered_twice_fails_the_exactly_once_check() {
        let ps = MemoryPubSub::new(MemoryConfig::default());
        let topic = unique_topic("twice");
        ps.subscribe_initialize(&topic).await.unwrap();
        let mut sub = ps.subscribe(&topic).await.unwrap();
        let msgs = messages(3, "twice");
        let mut sent: Vec<Message> = msgs.iter().map(Message::copy).collect();
        sent.insert(2, msgs[1].copy());
        ps.publish(&topic, sent).await.unwrap();
        let got = bulk_read(&mut sub, msgs.len(), Duration::from_secs(5)).await;
        assert_eq!(got.len(), 4, "every delivery is kept");
        assert_all_received(&msgs, &got, false);
        let twice = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            assert_all_received(&msgs, &got, true)
        }));
        let why = *twice
            .expect_err("a duplicate passed the exactly-once check")
            .downcast::<String>()
            .unwrap();
        assert!(
            why.contains("delivered more than once") && why.contains(&msgs[1].uuid),
            "{why}"
        );
        Publisher::close(&ps).await.unwrap();
    }
}
