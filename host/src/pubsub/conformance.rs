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
            remove_topic, reconnect);
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

/// 100 messages with metadata arrive intact.
pub async fn publish_subscribe<H: Harness>(h: &H) -> Outcome {
    let f = h.features();
    let (publisher, subscriber) = pubsub(h).await;
    let topic = unique_topic("publish_subscribe");
    let msgs = messages(100, "ps");
    let mut sub = subscribe_and_publish(&publisher, &subscriber, &topic, &msgs, f.persistent).await;
    let got = bulk_read(&mut sub, msgs.len(), TIMEOUT).await;
    assert_all_received(&msgs, &got, f.exactly_once);
    drop(sub);
    close_both(&publisher, &subscriber).await;
    Outcome::Passed
}

/// Many publishers at once; one subscription reads everything.
pub async fn concurrent_subscribe<H: Harness>(h: &H) -> Outcome {
    let f = h.features();
    let (publisher, subscriber) = pubsub(h).await;
    let topic = unique_topic("concurrent_subscribe");
    subscriber.subscribe_initialize(&topic).await.unwrap();
    let mut sub = subscriber.subscribe(&topic).await.unwrap();
    let msgs = messages(1000, "cs");
    let mut tasks = Vec::new();
    for chunk in msgs.chunks(50) {
        let publisher = publisher.clone();
        let topic = topic.clone();
        let chunk: Vec<Message> = chunk.iter().map(Message::copy).collect();
        tasks.push(tokio::spawn(async move {
            publisher.publish(&topic, chunk).await
        }));
    }
    for t in tasks {
        t.await.unwrap().expect("concurrent publish");
    }
    let got = bulk_read(&mut sub, msgs.len(), TIMEOUT).await;
    assert_all_received(&msgs, &got, f.exactly_once);
    drop(sub);
    close_both(&publisher, &subscriber).await;
    Outcome::Passed
}

/// 20 topics of 20 messages each, read concurrently.
pub async fn concurrent_subscribe_multiple_topics<H: Harness>(h: &H) -> Outcome {
    let f = h.features();
    let (publisher, subscriber) = pubsub(h).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let publisher = publisher.clone();
        let subscriber = subscriber.clone();
        tasks.push(tokio::spawn(async move {
            let topic = unique_topic(&format!("multi_{i}"));
            let msgs = messages(20, &format!("multi{i}"));
            let mut sub =
                subscribe_and_publish(&publisher, &subscriber, &topic, &msgs, f.persistent).await;
            let got = bulk_read(&mut sub, msgs.len(), TIMEOUT).await;
            assert_all_received(&msgs, &got, f.exactly_once);
        }));
    }
    for t in tasks {
        t.await.expect("a topic's reader failed");
    }
    close_both(&publisher, &subscriber).await;
    Outcome::Passed
}

/// Nacking the first messages received does not lose them.
pub async fn resend_on_error<H: Harness>(h: &H) -> Outcome {
    let f = h.features();
    let (publisher, subscriber) = pubsub(h).await;
    let topic = unique_topic("resend_on_error");
    let msgs = messages(50, "resend");
    let mut sub = subscribe_and_publish(&publisher, &subscriber, &topic, &msgs, f.persistent).await;
    let mut nacked = 0;
    while nacked < 2 {
        let m = tokio::time::timeout(TIMEOUT, sub.recv())
            .await
            .expect("timeout waiting for a message to nack")
            .expect("stream ended");
        assert!(m.nack());
        nacked += 1;
    }
    let got = bulk_read(&mut sub, msgs.len(), TIMEOUT).await;
    assert_all_received(&msgs, &got, false);
    drop(sub);
    close_both(&publisher, &subscriber).await;
    Outcome::Passed
}

/// While a message is unacked, an ordered backend delivers nothing else.
pub async fn no_ack<H: Harness>(h: &H) -> Outcome {
    let f = h.features();
    if !(f.guaranteed_order || f.guaranteed_order_with_single_subscriber) {
        return Outcome::Skipped("no guaranteed order");
    }
    let (publisher, subscriber) = pubsub(h).await;
    let topic = unique_topic("no_ack");
    let msgs = messages(2, "noack");
    let mut sub = subscribe_and_publish(&publisher, &subscriber, &topic, &msgs, f.persistent).await;
    let first = tokio::time::timeout(TIMEOUT, sub.recv())
        .await
        .expect("first message")
        .expect("stream ended");
    assert_eq!(first.uuid, msgs[0].uuid);
    let early = tokio::time::timeout(Duration::from_millis(100), sub.recv()).await;
    assert!(
        early.is_err(),
        "a second message arrived before the first was acked"
    );
    assert!(first.ack());
    let second = tokio::time::timeout(TIMEOUT, sub.recv())
        .await
        .expect("second message after ack")
        .expect("stream ended");
    assert_eq!(second.uuid, msgs[1].uuid);
    second.ack();
    drop(sub);
    close_both(&publisher, &subscriber).await;
    Outcome::Passed
}

/// Subscriptions that end mid-way lose nothing: a later one reads what was left.
pub async fn continue_after_subscribe_close<H: Harness>(h: &H) -> Outcome {
    let f = h.features();
    if !f.persistent {
        return Outcome::Skipped("not persistent");
    }
    let (publisher, subscriber) = pubsub(h).await;
    let topic = unique_topic("continue_after_close");
    let msgs = messages(500, "cac");
    subscriber.subscribe_initialize(&topic).await.unwrap();
    publish_all(&publisher, &topic, &msgs).await;
    let mut seen: HashMap<String, Message> = HashMap::new();
    for _batch in 0..50 {
        if seen.len() >= msgs.len() {
            break;
        }
        // A fresh subscriber each time, unless the backend lives in one instance.
        let sub_side = if f.require_single_instance {
            subscriber.clone()
        } else {
            pubsub(h).await.1
        };
        let mut sub = sub_side.subscribe(&topic).await.unwrap();
        for m in bulk_read(&mut sub, 50, Duration::from_secs(5)).await {
            seen.insert(m.uuid.clone(), m);
        }
        drop(sub);
        if !f.require_single_instance {
            sub_side.close().await.unwrap();
        }
    }
    let got: Vec<Message> = seen.into_values().collect();
    assert_all_received(&msgs, &got, false);
    close_both(&publisher, &subscriber).await;
    Outcome::Passed
}

/// Creating and closing subscribers concurrently leaves the backend usable.
pub async fn concurrent_close<H: Harness>(h: &H) -> Outcome {
    let f = h.features();
    let topic = unique_topic("concurrent_close");
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (publisher, subscriber) = pubsub(h).await;
        let topic = topic.clone();
        tasks.push(tokio::spawn(async move {
            subscriber.subscribe_initialize(&topic).await.unwrap();
            let sub = subscriber.subscribe(&topic).await.unwrap();
            close_both(&publisher, &subscriber).await;
            drop(sub);
        }));
    }
    for t in tasks {
        t.await.expect("concurrent close");
    }
    let (publisher, subscriber) = pubsub(h).await;
    let msgs = messages(50, "cc");
    let mut sub = subscribe_and_publish(&publisher, &subscriber, &topic, &msgs, f.persistent).await;
    let got = bulk_read(&mut sub, msgs.len(), TIMEOUT).await;
    assert_all_received(&msgs, &got, f.exactly_once);
    drop(sub);
    close_both(&publisher, &subscriber).await;
    Outcome::Passed
}

/// Subscriptions that nack many times and go away do not lose messages.
pub async fn continue_after_errors<H: Harness>(h: &H) -> Outcome {
    let f = h.features();
    let (publisher, subscriber) = pubsub(h).await;
    let topic = unique_topic("continue_after_errors");
    let msgs = messages(50, "cae");
    let mut sub = subscribe_and_publish(&publisher, &subscriber, &topic, &msgs, f.persistent).await;
    for _ in 0..5 {
        let m = tokio::time::timeout(TIMEOUT, sub.recv())
            .await
            .expect("a message to nack")
            .expect("stream ended");
        m.nack();
    }
    let got = bulk_read(&mut sub, msgs.len(), TIMEOUT).await;
    assert_all_received(&msgs, &got, false);
    drop(sub);
    close_both(&publisher, &subscriber).await;
    Outcome::Passed
}

/// Messages arrive in publish order.
pub async fn publish_subscribe_in_order<H: Harness>(h: &H) -> Outcome {
    let f = h.features();
    if !(f.guaranteed_order || f.guaranteed_order_with_single_subscriber) {
        return Outcome::Skipped("no guaranteed order");
    }
    let (publisher, subscriber) = pubsub(h).await;
    let topic = unique_topic("in_order");
    let msgs = messages(300, "order");
    let mut sub = subscribe_and_publish(&publisher, &subscriber, &topic, &msgs, f.persistent).await;
    let got = bulk_read(&mut sub, msgs.len(), TIMEOUT).await;
    assert_all_received(&msgs, &got, f.exactly_once);
    // Without exactly-once a redelivery may come later: the order is that of first arrivals.
    let mut first = HashSet::new();
    let got_ids: Vec<&str> = got
        .iter()
        .map(|m| m.uuid.as_str())
        .filter(|id| first.insert(*id))
        .collect();
    let want_ids: Vec<&str> = msgs.iter().map(|m| m.uuid.as_str()).collect();
    assert_eq!(got_ids, want_ids, "messages out of order");
    drop(sub);
    close_both(&publisher, &subscriber).await;
    Outcome::Passed
}

/// With one message in flight, a nacked message comes back before any later one, however
/// far the backend reads ahead.
pub async fn nack_keeps_order<H: Harness>(h: &H) -> Outcome {
    let f = h.features();
    if !(f.guaranteed_order || f.guaranteed_order_with_single_subscriber) {
        return Outcome::Skipped("no guaranteed order");
    }
    let (publisher, subscriber) = pubsub(h).await;
    let topic = unique_topic("nack_order");
    let msgs = messages(20, "nack_order");
    let mut sub = subscribe_and_publish(&publisher, &subscriber, &topic, &msgs, f.persistent).await;
    for (i, expected) in msgs.iter().enumerate() {
        let nacks = if i % 3 == 0 { 2 } else { 0 };
        for attempt in 0..=nacks {
            let m = tokio::time::timeout(TIMEOUT, sub.recv())
                .await
                .unwrap_or_else(|_| panic!("timeout waiting for message {i}"))
                .expect("stream ended");
            assert_eq!(
                m.uuid, expected.uuid,
                "message {i} (attempt {attempt}) out of order"
            );
            if attempt < nacks {
                m.nack();
            } else {
                m.ack();
            }
        }
    }
    drop(sub);
    close_both(&publisher, &subscriber).await;
    Outcome::Passed
}

/// Many publishers publish and close; everything they published arrives.
pub async fn publisher_close<H: Harness>(h: &H) -> Outcome {
    let f = h.features();
    let (main_pub, subscriber) = pubsub(h).await;
    let topic = unique_topic("publisher_close");
    subscriber.subscribe_initialize(&topic).await.unwrap();
    let mut sub = subscriber.subscribe(&topic).await.unwrap();
    let msgs = messages(1000, "pc");
    let mut tasks = Vec::new();
    for chunk in msgs.chunks(100) {
        // Each batch through its own publisher when the backend has a shared server.
        let publisher = if f.require_single_instance {
            main_pub.clone()
        } else {
            pubsub(h).await.0
        };
        let chunk: Vec<Message> = chunk.iter().map(Message::copy).collect();
        let topic = topic.clone();
        let own = !f.require_single_instance;
        tasks.push(tokio::spawn(async move {
            publisher.publish(&topic, chunk).await.expect("publish");
            if own {
                publisher.close().await.expect("close publisher");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let got = bulk_read(&mut sub, msgs.len(), TIMEOUT).await;
    assert_all_received(&msgs, &got, f.exactly_once);
    drop(sub);
    close_both(&main_pub, &subscriber).await;
    Outcome::Passed
}

/// Each topic delivers exactly its own messages.
pub async fn topic<H: Harness>(h: &H) -> Outcome {
    let f = h.features();
    let (publisher, subscriber) = pubsub(h).await;
    let (t1, t2) = (unique_topic("topic_a"), unique_topic("topic_b"));
    let (m1, m2) = (messages(20, "ta"), messages(20, "tb"));
    let mut s1 = subscribe_and_publish(&publisher, &subscriber, &t1, &m1, f.persistent).await;
    let mut s2 = subscribe_and_publish(&publisher, &subscriber, &t2, &m2, f.persistent).await;
    let g1 = bulk_read(&mut s1, m1.len(), TIMEOUT).await;
    let g2 = bulk_read(&mut s2, m2.len(), TIMEOUT).await;
    assert_all_received(&m1, &g1, f.exactly_once);
    assert_all_received(&m2, &g2, f.exactly_once);
    assert!(g1.iter().all(|m| m.metadata.get("test") == "ta"));
    assert!(g2.iter().all(|m| m.metadata.get("test") == "tb"));
    let extra = tokio::time::timeout(Duration::from_millis(200), s1.recv()).await;
    assert!(
        !matches!(extra, Ok(Some(_))),
        "topic a received an extra message"
    );
    drop((s1, s2));
    close_both(&publisher, &subscriber).await;
    Outcome::Passed
}

/// Ack returns true and ends the message's context; closing ends the stream.
pub async fn message_ctx<H: Harness>(h: &H) -> Outcome {
    let f = h.features();
    let (publisher, subscriber) = pubsub(h).await;
    let topic = unique_topic("message_ctx");
    let msgs = messages(2, "ctx");
    let mut sub = subscribe_and_publish(&publisher, &subscriber, &topic, &msgs, f.persistent).await;
    let m = tokio::time::timeout(TIMEOUT, sub.recv())
        .await
        .expect("message")
        .expect("stream ended");
    assert!(!m.context().is_cancelled());
    assert!(m.ack());
    assert!(m.context().is_cancelled(), "context not done after ack");
    close_both(&publisher, &subscriber).await;
    let after_close = tokio::time::timeout(Duration::from_secs(5), async {
        // Drain anything buffered; the stream must end.
        while sub.recv().await.is_some() {}
    })
    .await;
    assert!(after_close.is_ok(), "stream did not end after close");
    Outcome::Passed
}

/// Cancelling a subscription ends its stream; a new subscription reads the rest.
pub async fn subscribe_ctx<H: Harness>(h: &H) -> Outcome {
    let f = h.features();
    let (publisher, subscriber) = pubsub(h).await;
    let topic = unique_topic("subscribe_ctx");
    subscriber.subscribe_initialize(&topic).await.unwrap();
    let mut first = subscriber.subscribe(&topic).await.unwrap();
    first.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(5), first.recv()).await;
    assert!(matches!(ended, Ok(None)), "stream did not end after cancel");
    if !f.persistent {
        close_both(&publisher, &subscriber).await;
        return Outcome::Passed;
    }
    let msgs = messages(20, "sctx");
    publish_all(&publisher, &topic, &msgs).await;
    let mut second = subscriber.subscribe(&topic).await.unwrap();
    let got = bulk_read(&mut second, msgs.len(), TIMEOUT).await;
    assert_all_received(&msgs, &got, f.exactly_once);
    drop(second);
    close_both(&publisher, &subscriber).await;
    Outcome::Passed
}

/// A subscriber that joins late reads messages published before it joined.
pub async fn new_subscriber_receives_old_messages<H: Harness>(h: &H) -> Outcome {
    let f = h.features();
    if !f.new_subscriber_receives_old_messages {
        return Outcome::Skipped("new subscribers do not receive old messages");
    }
    let (publisher, subscriber) = pubsub(h).await;
    let topic = unique_topic("nsrom");
    let msgs = messages(20, "old");
    subscriber.subscribe_initialize(&topic).await.unwrap();
    publish_all(&publisher, &topic, &msgs).await;
    let mut sub = subscriber.subscribe(&topic).await.unwrap();
    let got = bulk_read(&mut sub, msgs.len(), TIMEOUT).await;
    assert_all_received(&msgs, &got, f.exactly_once);
    drop(sub);
    close_both(&publisher, &subscriber).await;
    Outcome::Passed
}

/// A removed topic keeps none of its messages: what is read from it afterwards is only what
/// was published after the removal. Skipped where the backend does not remove topics.
pub async fn remove_topic<H: Harness>(h: &H) -> Outcome {
    let (publisher, subscriber) = pubsub(h).await;
    let topic = unique_topic("remove_topic");
    subscriber.subscribe_initialize(&topic).await.unwrap();
    publish_all(&publisher, &topic, &messages(5, "before")).await;
    if !subscriber.remove_topic(&topic).await.unwrap() {
        close_both(&publisher, &subscriber).await;
        return Outcome::Skipped("the backend does not remove topics");
    }
    assert!(
        !subscriber.remove_topic(&topic).await.unwrap(),
        "a second removal found something to remove"
    );
    subscriber.subscribe_initialize(&topic).await.unwrap();
    let after = messages(2, "after");
    publish_all(&publisher, &topic, &after).await;
    let mut sub = subscriber.subscribe(&topic).await.unwrap();
    let got = bulk_read(&mut sub, after.len(), TIMEOUT).await;
    assert_all_received(&after, &got, false);
    let more = tokio::time::timeout(Duration::from_secs(1), sub.recv()).await;
    assert!(
        !matches!(more, Ok(Some(_))),
        "a message published before the removal was read: {:?}",
        more.ok().flatten().map(|m| m.payload)
    );
    drop(sub);
    subscriber.remove_topic(&topic).await.unwrap();
    close_both(&publisher, &subscriber).await;
    Outcome::Passed
}

/// Two consumer groups each receive every message.
pub async fn consumer_groups<H: Harness>(h: &H) -> Outcome {
    let f = h.features();
    if !f.consumer_groups {
        return Outcome::Skipped("no consumer groups");
    }
    let (publisher, _) = pubsub(h).await;
    let topic = unique_topic("consumer_groups");
    let g1 = h
        .subscriber_in_group(&unique_topic("group_a"))
        .await
        .unwrap();
    let g2 = h
        .subscriber_in_group(&unique_topic("group_b"))
        .await
        .unwrap();
    g1.subscribe_initialize(&topic).await.unwrap();
    g2.subscribe_initialize(&topic).await.unwrap();
    let mut s1 = g1.subscribe(&topic).await.unwrap();
    let mut s2 = g2.subscribe(&topic).await.unwrap();
    let msgs = messages(50, "cg");
    publish_all(&publisher, &topic, &msgs).await;
    let (r1, r2) = tokio::join!(
        bulk_read(&mut s1, msgs.len(), TIMEOUT),
        bulk_read(&mut s2, msgs.len(), TIMEOUT)
    );
    assert_all_received(&msgs, &r1, f.exactly_once);
    assert_all_received(&msgs, &r2, f.exactly_once);
    drop((s1, s2));
    g1.close().await.unwrap();
    g2.close().await.unwrap();
    publisher.close().await.unwrap();
    Outcome::Passed
}

/// 10,000 messages while the server goes away twice; none lost. The server is one the test
/// owns ([`Harness::owned_pubsub`]): a private instance that restarts, or a proxy that cuts
/// every connection. The first outage comes while 3,000 messages wait unread (they must
/// survive it), the second while the subscription reads.
pub async fn reconnect<H: Harness>(h: &H) -> Outcome {
    let Some(owned) = h.owned_pubsub().await.expect("harness: owned pub/sub") else {
        return Outcome::Skipped("no server of its own to lose");
    };
    let OwnedPubSub {
        publisher,
        subscriber,
        mut outage,
    } = owned;
    let topic = unique_topic("reconnect");
    subscriber.subscribe_initialize(&topic).await.unwrap();
    let mut sub = subscriber.subscribe(&topic).await.unwrap();
    let msgs = messages(10_000, "rc");
    let (start_reading, go) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        let _ = go.await;
        let got = bulk_read(&mut sub, 10_000, Duration::from_secs(240)).await;
        (sub, got)
    });
    let mut start_reading = Some(start_reading);
    for (i, chunk) in msgs.chunks(100).enumerate() {
        if i == 30 || i == 70 {
            outage
                .go_away_and_come_back()
                .await
                .unwrap_or_else(|e| panic!("outage before chunk {i}: {}", e.report()));
            if let Some(start) = start_reading.take() {
                let _ = start.send(());
            }
        }
        // Publishing may fail while the server is away: retry, as a producer would.
        let mut attempt = 0;
        loop {
            match publisher
                .publish(&topic, chunk.iter().map(Message::copy).collect())
                .await
            {
                Ok(()) => break,
                Err(e) if attempt < 120 => {
                    attempt += 1;
                    tracing::debug!("publish after an outage failed, retrying: {e}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => panic!("publish never recovered after the outage: {e}"),
            }
        }
    }
    let (sub, got) = reader.await.unwrap();
    assert_all_received(&msgs, &got, false);
    drop(sub);
    close_both(&publisher, &subscriber).await;
    drop(outage);
    Outcome::Passed
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
