use super::*;
use crate::pubsub::conformance::{Features, Harness, OwnedPubSub, unique_topic};
use crate::pubsub::testkit::{Kind, PrivateServer};
use crate::pubsub::{DynPublisher, DynSubscriber};

fn url() -> String {
    std::env::var("WASMILL_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

fn test_config(group: &str) -> MysqlConfig {
    config_at(url(), group)
}

fn config_at(url: String, group: &str) -> MysqlConfig {
    MysqlConfig {
        url,
        consumer_group: Some(group.to_string()),
        max_connections: 10,
        redelivery_delay: Duration::from_millis(10),
        ..MysqlConfig::default()
    }
}

struct MysqlHarness {
    group: String,
}

impl MysqlHarness {
    fn new() -> Self {
        MysqlHarness {
            group: crate::pubsub::conformance::unique_group(),
        }
    }
}

#[async_trait]
impl Harness for MysqlHarness {
    fn features(&self) -> Features {
        Features {
            consumer_groups: true,
            guaranteed_order: true,
            guaranteed_order_with_single_subscriber: true,
            persistent: true,
            new_subscriber_receives_old_messages: true,
            delays: true,
            ..Features::default()
        }
    }

    async fn pubsub(&self) -> Result<(DynPublisher, DynSubscriber)> {
        let ps = MysqlPubSub::connect(test_config(&self.group)).await?;
        Ok(crate::pubsub::conformance::pair(ps))
    }

    async fn subscriber_in_group(&self, group: &str) -> Result<DynSubscriber> {
        Ok(Arc::new(MysqlPubSub::connect(test_config(group)).await?))
    }

    /// A private MariaDB, restarted: the messages and the groups' offsets are InnoDB
    /// rows, and come back with it.
    async fn owned_pubsub(&self) -> Result<Option<OwnedPubSub>> {
        let server = PrivateServer::start(Kind::Mariadb).await?;
        let ps = MysqlPubSub::connect(config_at(server.url(), &self.group)).await?;
        let (publisher, subscriber) = crate::pubsub::conformance::pair(ps);
        Ok(Some(OwnedPubSub {
            publisher,
            subscriber,
            outage: Box::new(server),
        }))
    }
}

crate::conformance_tests!(MysqlHarness::new());

#[tokio::test]
async fn publish_in_tx_follows_the_transaction() {
    let ps = MysqlPubSub::connect(test_config("outbox")).await.unwrap();
    let topic = unique_topic("outbox");
    ps.subscribe_initialize(&topic).await.unwrap();
    let mut sub = ps.subscribe(&topic).await.unwrap();
    let mut tx = ps.pool().begin().await.unwrap();
    publish_in_tx(&mut tx, &topic, &[Message::with_uuid("rolled-back", "x")])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let mut tx = ps.pool().begin().await.unwrap();
    publish_in_tx(
        &mut tx,
        &topic,
        &[Message::with_uuid("committed", "y").with_metadata("k", "v")],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.uuid, "committed");
    assert_eq!(m.metadata.get("k"), "v");
    m.ack();
    let more = tokio::time::timeout(Duration::from_millis(500), sub.recv()).await;
    assert!(more.is_err(), "the rolled-back message was delivered");

    // A topic nobody initialized is a clear error, and the caller's transaction survives.
    let mut tx = ps.pool().begin().await.unwrap();
    let err = publish_in_tx(&mut tx, &unique_topic("nowhere"), &[Message::new("z")])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not exist yet"), "{err}");
    tx.rollback().await.unwrap();
    drop(sub);
    Publisher::close(&ps).await.unwrap();
}

#[tokio::test]
async fn closing_a_tail_leaves_the_backend_open() {
    let ps = MysqlPubSub::connect(test_config("tail-main"))
        .await
        .unwrap();
    let topic = unique_topic("tail");
    ps.publish(&topic, vec![Message::with_uuid("old", "o")])
        .await
        .unwrap();
    let tail = ps.tail_subscriber();
    let mut tail_sub = tail.subscribe(&topic).await.unwrap();
    ps.publish(&topic, vec![Message::with_uuid("new", "n")])
        .await
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), tail_sub.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.uuid, "new", "a tail starts at the end");
    m.ack();
    Subscriber::close(&tail).await.unwrap();
    assert!(tail_sub.recv().await.is_none(), "tail stream ended");
    // The main backend still publishes and delivers (both messages: its group is new).
    ps.publish(&topic, vec![Message::with_uuid("after", "a")])
        .await
        .unwrap();
    let mut sub = ps.subscribe(&topic).await.unwrap();
    let got = crate::pubsub::conformance::bulk_read(&mut sub, 3, Duration::from_secs(10)).await;
    let ids: Vec<&str> = got.iter().map(|m| m.uuid.as_str()).collect();
    assert_eq!(ids, ["old", "new", "after"]);
    drop(sub);
    Publisher::close(&ps).await.unwrap();
    // Closing the backend closes tails made from it.
    let late = ps.tail_subscriber();
    assert!(late.subscribe(&topic).await.is_err());
}

#[tokio::test]
async fn a_group_named_with_quotes_keeps_its_offset_across_batches() {
    // Renewing a claim sends the group in the text of a multi-statement query.
    let group = format!("it's a \\ group ✓ {}", uuid::Uuid::new_v4().simple());
    let config = MysqlConfig {
        batch_size: 3,
        ..test_config(&group)
    };
    let ps = MysqlPubSub::connect(config.clone()).await.unwrap();
    let topic = unique_topic("quoted_group");
    let msgs: Vec<Message> = (0..10).map(|i| Message::new(format!("m{i}"))).collect();
    let want: Vec<String> = msgs.iter().map(|m| m.uuid.clone()).collect();
    ps.subscribe_initialize(&topic).await.unwrap();
    ps.publish(&topic, msgs).await.unwrap();
    let mut sub = ps.subscribe(&topic).await.unwrap();
    let got = crate::pubsub::conformance::bulk_read(&mut sub, 10, Duration::from_secs(10)).await;
    let ids: Vec<String> = got.iter().map(|m| m.uuid.clone()).collect();
    assert_eq!(ids, want, "in order, across four batches");
    drop(sub);
    Publisher::close(&ps).await.unwrap();
    // The group's offset was stored: a new subscriber of the group gets only what follows.
    let again = MysqlPubSub::connect(config).await.unwrap();
    again
        .publish(&topic, vec![Message::with_uuid("later", "l")])
        .await
        .unwrap();
    let mut sub = again.subscribe(&topic).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.uuid, "later");
    m.ack();
    drop(sub);
    again.remove_topic(&topic).await.unwrap();
    Publisher::close(&again).await.unwrap();
}

#[test]
fn group_literals_need_no_escaping() {
    assert_eq!(
        hex_literal("a'b\\"),
        "_utf8mb4 X'6127625c' COLLATE utf8mb4_bin"
    );
    assert_eq!(hex_literal(""), "_utf8mb4 X'' COLLATE utf8mb4_bin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_of_one_group_share_messages_without_duplicates() {
    let group = format!("shared-{}", uuid::Uuid::new_v4().simple());
    let a = MysqlPubSub::connect(test_config(&group)).await.unwrap();
    let b = MysqlPubSub::connect(MysqlConfig {
        batch_size: 3,
        ..test_config(&group)
    })
    .await
    .unwrap();
    let topic = unique_topic("shared");
    let msgs: Vec<Message> = (0..60).map(|i| Message::new(format!("m{i}"))).collect();
    let want: HashSet<String> = msgs.iter().map(|m| m.uuid.clone()).collect();
    a.subscribe_initialize(&topic).await.unwrap();
    a.publish(&topic, msgs).await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut readers = Vec::new();
    for ps in [&a, &b] {
        let mut sub = ps.subscribe(&topic).await.unwrap();
        let seen = seen.clone();
        readers.push(tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while seen.lock().unwrap().len() < 60 && tokio::time::Instant::now() < deadline {
                if let Ok(Some(m)) =
                    tokio::time::timeout(Duration::from_millis(200), sub.recv()).await
                {
                    seen.lock().unwrap().push(m.uuid.clone());
                    m.ack();
                }
            }
        }));
    }
    for r in readers {
        r.await.unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    let distinct: HashSet<String> = seen.iter().cloned().collect();
    assert_eq!(distinct, want, "every message arrives");
    assert_eq!(seen.len(), 60, "no message arrives twice");
    Publisher::close(&a).await.unwrap();
    Publisher::close(&b).await.unwrap();
}

#[tokio::test]
async fn registry_connects_and_closing_its_tail_keeps_the_backend() {
    let settings: toml::Table =
        toml::from_str(&format!("url = \"{}\"\npoll_interval = \"50ms\"", url())).unwrap();
    let b = crate::pubsub::registry::connect("db", "mysql", &settings)
        .await
        .unwrap();
    let tail = b.tail_subscriber().await.unwrap();
    tail.close().await.unwrap();
    let topic = unique_topic("registry");
    b.publisher
        .publish(&topic, vec![Message::new("x")])
        .await
        .unwrap();
    b.publisher.close().await.unwrap();
    let bad: toml::Table = toml::from_str("pol_interval = \"1s\"").unwrap();
    let err = crate::pubsub::registry::connect("db", "mysql", &bad)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("pubsub.db") && err.contains("pol_interval"),
        "{err}"
    );
}

#[tokio::test]
async fn unreachable_server_is_a_clear_error() {
    let err = MysqlPubSub::connect(MysqlConfig {
        url: "mysql://user:secret@127.0.0.1:1/test".into(),
        acquire_timeout: Duration::from_secs(1),
        ..MysqlConfig::default()
    })
    .await
    .err()
    .unwrap();
    let text = format!("{err}: {:?}", std::error::Error::source(&err));
    assert!(
        text.contains("mysql") && text.contains("127.0.0.1:1") && !text.contains("secret"),
        "{text}"
    );
}

#[test]
fn table_names_are_safe_and_stable() {
    assert_eq!(table_name("orders"), "wasmill_t_orders");
    let odd = table_name("Orders.EU/v1");
    assert!(odd.starts_with("wasmill_t_orders_eu_v1_"), "{odd}");
    assert_ne!(odd, table_name("orders.eu/v1"), "case still matters");
    let long = "x".repeat(200);
    assert_eq!(table_name(&long).len(), MAX_IDENT);
    assert_ne!(table_name(&long), table_name(&"x".repeat(201)));
    assert_eq!(table_name(&long), table_name(&long));
    assert!(table_name("").len() > TABLE_PREFIX.len());
    for t in [odd, table_name(&long), table_name("ü`; DROP")] {
        assert!(
            t.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{t}"
        );
    }
}

#[test]
fn passwords_are_not_shown() {
    assert_eq!(
        redacted("mysql://u:p@ss@h:3306/db"),
        "mysql://u:***@h:3306/db"
    );
    assert_eq!(redacted("mysql://root@h/db"), "mysql://root@h/db");
    assert_eq!(redacted("mysql://h/db"), "mysql://h/db");
}

#[test]
fn config_parses_durations_and_rejects_unknown_keys() {
    let cfg: MysqlConfig = toml::from_str(
        "url = \"mysql://a@b/c\"\npoll_interval = \"250ms\"\nbatch_size = 10\nstart_at_end = true",
    )
    .unwrap();
    assert_eq!(cfg.poll_interval, Duration::from_millis(250));
    assert_eq!(cfg.batch_size, 10);
    assert!(cfg.start_at_end);
    assert_eq!(cfg.max_connections, MysqlConfig::default().max_connections);
    assert!(toml::from_str::<MysqlConfig>("pol_interval = \"1s\"").is_err());
    assert!(toml::from_str::<MysqlConfig>("poll_interval = \"soon\"").is_err());
}
