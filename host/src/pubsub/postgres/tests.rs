use super::*;
use crate::pubsub::conformance::{Features, Harness, OwnedPubSub};
use crate::pubsub::testkit::{Kind, PrivateServer};
use crate::pubsub::{DynPublisher, DynSubscriber};

fn url() -> String {
    std::env::var("WASMILL_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

struct PostgresHarness {
    group: String,
}

impl PostgresHarness {
    fn new() -> Self {
        PostgresHarness {
            group: crate::pubsub::conformance::unique_group(),
        }
    }
    fn config(&self, group: &str) -> PostgresConfig {
        self.config_at(url(), group)
    }
    fn config_at(&self, url: String, group: &str) -> PostgresConfig {
        PostgresConfig {
            url,
            consumer_group: Some(group.to_string()),
            poll_interval: Duration::from_millis(200),
            start_at_end: false,
            ca_file: None,
        }
    }
}

#[async_trait]
impl Harness for PostgresHarness {
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
        let ps = PostgresPubSub::connect(self.config(&self.group)).await?;
        Ok(crate::pubsub::conformance::pair(ps))
    }

    async fn subscriber_in_group(&self, group: &str) -> Result<DynSubscriber> {
        Ok(Arc::new(PostgresPubSub::connect(self.config(group)).await?))
    }

    /// A private cluster, restarted (fast shutdown): the messages and the groups'
    /// offsets are rows, and come back with it.
    async fn owned_pubsub(&self) -> Result<Option<OwnedPubSub>> {
        let server = PrivateServer::start(Kind::Postgres).await?;
        let ps = PostgresPubSub::connect(self.config_at(server.url(), &self.group)).await?;
        let (publisher, subscriber) = crate::pubsub::conformance::pair(ps);
        Ok(Some(OwnedPubSub {
            publisher,
            subscriber,
            outage: Box::new(server),
        }))
    }
}

crate::conformance_tests!(PostgresHarness::new());

#[tokio::test]
async fn publish_in_tx_follows_the_transaction() {
    let h = PostgresHarness::new();
    let ps = PostgresPubSub::connect(h.config("tx")).await.unwrap();
    let topic = crate::pubsub::conformance::unique_topic("outbox");
    ps.subscribe_initialize(&topic).await.unwrap();
    let mut sub = ps.subscribe(&topic).await.unwrap();
    let mut tx = ps.pool.begin().await.unwrap();
    publish_in_tx(&mut tx, &topic, &[Message::with_uuid("rolled-back", "x")])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let mut tx = ps.pool.begin().await.unwrap();
    publish_in_tx(&mut tx, &topic, &[Message::with_uuid("committed", "y")])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.uuid, "committed");
    m.ack();
    let more = tokio::time::timeout(Duration::from_millis(500), sub.recv()).await;
    assert!(more.is_err(), "the rolled-back message was delivered");
}

/// `wasmill_publish` from plain SQL: a rolled-back call publishes nothing, a committed one its
/// message with its metadata and the uuid it returned; metadata that is not a JSON object of
/// strings is refused.
#[tokio::test]
async fn wasmill_publish_from_sql_follows_the_transaction() {
    let h = PostgresHarness::new();
    let ps = PostgresPubSub::connect(h.config("sql")).await.unwrap();
    let topic = crate::pubsub::conformance::unique_topic("sql_outbox");
    ps.subscribe_initialize(&topic).await.unwrap();
    let mut sub = ps.subscribe(&topic).await.unwrap();
    let publish = "SELECT wasmill_publish($1, convert_to($2, 'UTF8'), $3)";
    let mut tx = ps.pool.begin().await.unwrap();
    sqlx::query(publish)
        .bind(&topic)
        .bind("rolled back")
        .bind("{}")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let mut tx = ps.pool.begin().await.unwrap();
    let uuid: String = sqlx::query_scalar(publish)
        .bind(&topic)
        .bind("committed")
        .bind(r#"{"k": "v"}"#)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (m.uuid.as_str(), &m.payload[..]),
        (uuid.as_str(), &b"committed"[..])
    );
    assert_eq!(m.metadata.get("k"), "v");
    m.ack();
    let more = tokio::time::timeout(Duration::from_millis(500), sub.recv()).await;
    assert!(more.is_err(), "the rolled-back message was delivered");
    for bad in ["not json", r#"["a"]"#, r#"{"n": 1}"#] {
        let err = sqlx::query(publish)
            .bind(&topic)
            .bind("x")
            .bind(bad)
            .execute(&ps.pool)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("wasmill_publish: metadata"), "{bad}: {err}");
    }
    drop(sub);
    ps.remove_topic(&topic).await.unwrap();
}

#[test]
fn passwords_are_not_logged() {
    assert_eq!(
        redacted("postgres://u:secret@h:5432/db"),
        "postgres://u:***@h:5432/db"
    );
}
