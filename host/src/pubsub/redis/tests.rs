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
            delays: true,
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
    let mut seen: std::collections::HashSet<String> = held.iter().map(|m| m.uuid.clone()).collect();
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
