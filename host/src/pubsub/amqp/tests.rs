use super::*;
use crate::pubsub::conformance::{self, Features, Harness, OwnedPubSub};
use crate::pubsub::testkit::Proxy;
use crate::pubsub::{DynPublisher, DynSubscriber};

fn url() -> String {
    std::env::var("WASMILL_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

struct AmqpHarness {
    group: String,
}

impl AmqpHarness {
    fn new() -> Self {
        AmqpHarness {
            group: crate::pubsub::conformance::unique_group(),
        }
    }

    fn config(&self, group: &str) -> AmqpConfig {
        AmqpConfig {
            url: url(),
            consumer_group: Some(group.to_string()),
            // The suite's queues remove themselves once the tests are done with them.
            queue_expires: Some(Duration::from_secs(120)),
            nack_requeue_delay: Duration::from_millis(10),
            connect_timeout: Duration::from_secs(5),
            reconnect_backoff: Duration::from_millis(50),
            reconnect_max_backoff: Duration::from_secs(1),
            ..AmqpConfig::default()
        }
    }
}

#[async_trait]
impl Harness for AmqpHarness {
    fn features(&self) -> Features {
        Features {
            consumer_groups: true,
            guaranteed_order_with_single_subscriber: true,
            persistent: true,
            new_subscriber_receives_old_messages: true,
            ..Features::default()
        }
    }

    async fn pubsub(&self) -> Result<(DynPublisher, DynSubscriber)> {
        let ps = AmqpPubSub::connect(self.config(&self.group)).await?;
        Ok(crate::pubsub::conformance::pair(ps))
    }

    async fn subscriber_in_group(&self, group: &str) -> Result<DynSubscriber> {
        Ok(Arc::new(AmqpPubSub::connect(self.config(group)).await?))
    }

    /// The shared broker behind a proxy of the test's own, which cuts the connections:
    /// the clients see the broker go away (and their unacked messages go back to the
    /// queue) while the broker and every other test's connections stay up.
    async fn owned_pubsub(&self) -> Result<Option<OwnedPubSub>> {
        let (proxy, url) = Proxy::for_url(&url()).await?;
        let ps = AmqpPubSub::connect(AmqpConfig {
            url,
            ..self.config(&self.group)
        })
        .await?;
        let (publisher, subscriber) = crate::pubsub::conformance::pair(ps);
        Ok(Some(OwnedPubSub {
            publisher,
            subscriber,
            outage: Box::new(proxy),
        }))
    }
}

crate::conformance_tests!(AmqpHarness::new());

#[test]
fn urls_are_redacted() {
    assert_eq!(
        redacted("amqp://guest:secret@127.0.0.1:5672/%2f"),
        "amqp://guest:***@127.0.0.1:5672/%2f"
    );
    assert_eq!(
        redacted("amqps://u:p@ss@host?heartbeat=5"),
        "amqps://u:***@host?heartbeat=5"
    );
    assert_eq!(redacted("amqp://host:5672"), "amqp://host:5672");
    let err = parse_uri("amqp://u:secret@host:notaport/x")
        .err()
        .unwrap()
        .to_string();
    assert!(!err.contains("secret"), "{err}");
}

#[test]
fn config_parses_with_defaults() {
    let cfg: AmqpConfig = toml::from_str(
        "consumer_group = \"billing\"\nexchange_type = \"topic\"\nqueue_expires = \"1h\"\nnack_requeue_delay = \"1s\"",
    )
    .unwrap();
    assert_eq!(cfg.exchange_type, ExchangeType::Topic);
    assert_eq!(cfg.queue_expires, Some(Duration::from_secs(3600)));
    assert_eq!(cfg.nack_requeue_delay, Duration::from_secs(1));
    assert!(cfg.durable);
    assert_eq!(cfg.prefetch, None);
    assert!(toml::from_str::<AmqpConfig>("exchange = \"x\"").is_err());
    assert!(toml::from_str::<AmqpConfig>("exchange_type = \"headers\"").is_err());
}

#[test]
fn messages_round_trip_through_properties() {
    let m = Message::new("body").with_metadata("k", "v");
    let props = properties(&m, true).unwrap();
    assert_eq!(props.delivery_mode(), &Some(2));
    let back = to_message(&props, b"body".to_vec());
    assert_eq!(back, m);
    let long_key = "k".repeat(300);
    assert!(properties(&Message::new("x").with_metadata(long_key, "v"), true).is_err());
    // A foreign message: uuid from message_id, non-string headers as text.
    let mut headers = FieldTable::default();
    headers.insert("n".into(), AMQPValue::LongInt(7));
    let props = BasicProperties::default()
        .with_message_id("id-1".into())
        .with_headers(headers);
    let back = to_message(&props, Vec::new());
    assert_eq!(back.uuid, "id-1");
    assert_eq!(back.metadata.get("n"), "7");
}

#[tokio::test]
async fn unreachable_server_is_a_clear_error() {
    let err = AmqpPubSub::connect(AmqpConfig {
        url: "amqp://user:secret@127.0.0.1:1/%2f".into(),
        connect_timeout: Duration::from_secs(3),
        ..AmqpConfig::default()
    })
    .await
    .err()
    .unwrap();
    let text = err.report();
    assert!(
        text.contains("amqp") && text.contains("127.0.0.1:1"),
        "{text}"
    );
    assert!(!text.contains("secret"), "password leaked: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_read_ahead_a_nacked_message_comes_back_before_later_ones() {
    let h = &AmqpHarness::new();
    let ps = AmqpPubSub::connect(h.config(&h.group)).await.unwrap();
    let topic = conformance::unique_topic("read_ahead");
    ps.subscribe_initialize(&topic).await.unwrap();
    let msgs: Vec<Message> = (0..6).map(|i| Message::new(format!("r{i}"))).collect();
    ps.publish(&topic, msgs.iter().map(Message::copy).collect())
        .await
        .unwrap();
    // Default prefetch: the broker pushes all six ahead of the acks.
    let mut sub = ps.subscribe(&topic).await.unwrap();
    let recv = async |sub: &mut Subscription| {
        tokio::time::timeout(Duration::from_secs(10), sub.recv())
            .await
            .expect("a message")
            .expect("stream ended")
    };
    for (i, expected) in msgs.iter().enumerate() {
        if i % 2 == 0 {
            let first = recv(&mut sub).await;
            assert_eq!(first.uuid, expected.uuid);
            first.nack();
        }
        let m = recv(&mut sub).await;
        assert_eq!(m.uuid, expected.uuid, "message {i} out of order");
        m.ack();
    }
    drop(sub);
    Publisher::close(&ps).await.unwrap();
}

// One thread, so that lapin's background futures log to this test's subscriber.
#[tokio::test(flavor = "current_thread")]
async fn closing_after_a_publish_logs_no_connection_error() {
    let log = crate::test_support::CapturedLog::default();
    let _guard = log.install("lapin=warn,wasmill=warn");
    let h = &AmqpHarness::new();
    let topic = conformance::unique_topic("close_logs_no_error");
    let ps = AmqpPubSub::connect(h.config(&h.group)).await.unwrap();
    ps.publish(&topic, vec![Message::new("x")]).await.unwrap();
    Publisher::close(&ps).await.unwrap();
    // Room for lapin's background work after the close.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = log.text();
    assert!(!text.contains("ERROR"), "close logged an error:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_acked_just_before_close_are_not_delivered_again() {
    let h = &AmqpHarness::new();
    let topic = conformance::unique_topic("ack_before_close");
    for max_in_flight in [1, 4] {
        let ps = AmqpPubSub::connect(h.config(&h.group)).await.unwrap();
        ps.subscribe_initialize(&topic).await.unwrap();
        let msgs: Vec<Message> = (0..4).map(|i| Message::new(format!("a{i}"))).collect();
        ps.publish(&topic, msgs.iter().map(Message::copy).collect())
            .await
            .unwrap();
        let options = SubscribeOptions { max_in_flight };
        let mut sub = ps.subscribe_with(&topic, options).await.unwrap();
        for _ in 0..msgs.len() {
            let m = tokio::time::timeout(Duration::from_secs(10), sub.recv())
                .await
                .expect("a message")
                .expect("stream ended");
            m.ack();
        }
        // The consumer leaves and the backend closes right after the last ack.
        drop(sub);
        Subscriber::close(&ps).await.unwrap();
        let again = AmqpPubSub::connect(h.config(&h.group)).await.unwrap();
        let mut sub = again.subscribe(&topic).await.unwrap();
        let redelivered = tokio::time::timeout(Duration::from_secs(1), sub.recv()).await;
        assert!(
            redelivered.is_err(),
            "an acked message came again (max_in_flight {max_in_flight}): {:?}",
            redelivered.ok().flatten().map(|m| m.uuid)
        );
        drop(sub);
        Subscriber::close(&again).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_sees_new_messages_without_stealing() {
    let h = &AmqpHarness::new();
    let table: toml::Table = toml::from_str(&format!(
        "url = {:?}\nconsumer_group = {:?}\nqueue_expires = \"2m\"",
        url(),
        h.group
    ))
    .unwrap();
    let backend = crate::pubsub::registry::connect("q", "amqp", &table)
        .await
        .unwrap();
    let topic = conformance::unique_topic("tail");
    backend
        .subscriber
        .subscribe_initialize(&topic)
        .await
        .unwrap();
    let tail = backend.tail_subscriber().await.unwrap();
    let mut tail_sub = tail.subscribe(&topic).await.unwrap();
    let msgs: Vec<Message> = (0..5).map(|i| Message::new(format!("t{i}"))).collect();
    backend
        .publisher
        .publish(&topic, msgs.iter().map(Message::copy).collect())
        .await
        .unwrap();
    let seen = conformance::bulk_read(&mut tail_sub, 5, Duration::from_secs(10)).await;
    assert_eq!(seen.len(), 5);
    drop(tail_sub);
    tail.close().await.unwrap();
    // The group's queue still has every message, and the backend is still open.
    let mut sub = backend.subscriber.subscribe(&topic).await.unwrap();
    let got = conformance::bulk_read(&mut sub, 5, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 5);
    drop(sub);
    backend.publisher.close().await.unwrap();
}
