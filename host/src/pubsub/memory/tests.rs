//! Tests of the in-memory pub/sub: the conformance suite in three configurations, and its
//! own behaviour (back-pressure, redelivery delay, bounds, delays).

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
            delays: true,
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

/// Counts the wake-ups of the future it is the waker of.
struct WakeCounter(std::sync::atomic::AtomicUsize);

impl futures::task::ArcWake for WakeCounter {
    fn wake_by_ref(this: &Arc<Self>) {
        this.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::test]
async fn a_publisher_held_back_is_woken_once_per_chunk_not_once_per_message() {
    let ps = MemoryPubSub::new(MemoryConfig {
        max_pending: 64,
        ..MemoryConfig::default()
    });
    let mut sub = ps.subscribe("t").await.unwrap();
    let batch = |from: usize| -> Vec<Message> {
        (from..from + 64)
            .map(|i| Message::new(format!("{i}")))
            .collect()
    };
    ps.publish("t", batch(0)).await.unwrap();
    // The queue is full: the next publish waits, polled again after each message taken.
    let counter = Arc::new(WakeCounter(std::sync::atomic::AtomicUsize::new(0)));
    let waker = futures::task::waker(counter.clone());
    let mut cx = std::task::Context::from_waker(&waker);
    let mut publish = ps.publish("t", batch(64));
    assert!(publish.as_mut().poll(&mut cx).is_pending());
    let mut done = false;
    for i in 0..128 {
        let m = sub.recv().await.unwrap();
        assert_eq!(&m.payload[..], i.to_string().as_bytes(), "out of order");
        m.ack();
        done = done || publish.as_mut().poll(&mut cx).is_ready();
    }
    assert!(done, "the publish never finished");
    // Before, the publisher waited for one free slot at a time: 64 wake-ups for 64 messages.
    let wakes = counter.0.load(Ordering::Relaxed);
    assert!(wakes <= 2, "the publisher was woken {wakes} times");
}

#[tokio::test]
async fn a_batch_larger_than_max_pending_is_delivered_whole_and_in_order() {
    let ps = MemoryPubSub::new(MemoryConfig {
        max_pending: 8,
        ..MemoryConfig::default()
    });
    let mut sub = ps.subscribe("t").await.unwrap();
    let msgs: Vec<_> = (0..50).map(|i| Message::new(format!("{i}"))).collect();
    let publish = tokio::spawn({
        let ps = ps.clone();
        async move { ps.publish("t", msgs).await }
    });
    for i in 0..50 {
        let m = tokio::time::timeout(Duration::from_secs(5), sub.recv())
            .await
            .unwrap_or_else(|_| panic!("message {i} never came"))
            .unwrap();
        assert_eq!(&m.payload[..], i.to_string().as_bytes());
        m.ack();
    }
    publish.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_publish_waiting_for_room_fails_when_the_pubsub_closes() {
    let ps = MemoryPubSub::new(MemoryConfig {
        max_pending: 2,
        ..MemoryConfig::default()
    });
    let _sub = ps.subscribe("t").await.unwrap();
    let msgs: Vec<_> = (0..10).map(|i| Message::new(format!("{i}"))).collect();
    let publish = tokio::spawn({
        let ps = ps.clone();
        async move { ps.publish("t", msgs).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    ps.close().await.unwrap();
    let result = tokio::time::timeout(Duration::from_secs(5), publish)
        .await
        .expect("the publish still waits after close")
        .unwrap();
    assert!(result.is_err(), "a publish cut by close reported success");
}

#[tokio::test]
async fn a_persistent_batch_past_the_limit_keeps_and_delivers_what_fit() {
    let ps = MemoryPubSub::new(MemoryConfig {
        persistent: true,
        max_topic_bytes: 10_000,
        ..MemoryConfig::default()
    });
    let mut sub = ps.subscribe("t").await.unwrap();
    let kb = "x".repeat(1000);
    let msgs: Vec<_> = (0..12)
        .map(|i| Message::with_uuid(format!("{i}"), kb.clone()))
        .collect();
    let refused = ps.publish("t", msgs).await.unwrap_err();
    assert!(refused.to_string().contains("max_topic_bytes"), "{refused}");
    // 1,001 bytes a message: the first nine fit, and they reached the subscription.
    for i in 0..9 {
        let m = sub.recv().await.unwrap();
        assert_eq!(m.uuid, i.to_string());
        m.ack();
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(50), sub.recv())
            .await
            .is_err()
    );
    let mut late = ps.subscribe("t").await.unwrap();
    for _ in 0..9 {
        late.recv().await.unwrap().ack();
    }
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
