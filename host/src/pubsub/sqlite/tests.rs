use super::*;
use crate::pubsub::conformance::{Features, Harness};
use crate::pubsub::{DynPublisher, DynSubscriber};

struct SqliteHarness {
    dir: tempfile::TempDir,
}

impl SqliteHarness {
    fn new() -> Self {
        SqliteHarness {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }
    fn config(&self, group: Option<&str>) -> SqliteConfig {
        SqliteConfig {
            url: format!("sqlite://{}", self.dir.path().join("test.db").display()),
            consumer_group: group.map(str::to_string),
            poll_interval: Duration::from_millis(50),
            start_at_end: false,
        }
    }
}

#[async_trait]
impl Harness for SqliteHarness {
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
        let ps = SqlitePubSub::connect(self.config(None)).await?;
        Ok(crate::pubsub::conformance::pair(ps))
    }

    async fn subscriber_in_group(&self, group: &str) -> Result<DynSubscriber> {
        Ok(Arc::new(
            SqlitePubSub::connect(self.config(Some(group))).await?,
        ))
    }
}

crate::conformance_tests!(SqliteHarness::new());

#[tokio::test]
async fn survives_a_restart_of_the_host() {
    let h = SqliteHarness::new();
    let ps = SqlitePubSub::connect(h.config(Some("g"))).await.unwrap();
    ps.subscribe_initialize("t").await.unwrap();
    ps.publish(
        "t",
        (0..3)
            .map(|i| Message::with_uuid(format!("m{i}"), "p"))
            .collect(),
    )
    .await
    .unwrap();
    let mut sub = ps.subscribe("t").await.unwrap();
    let first = sub.recv().await.unwrap();
    assert_eq!(first.uuid, "m0");
    first.ack();
    let second = sub.recv().await.unwrap();
    assert_eq!(second.uuid, "m1");
    // "Crash" with m1 unacked: close everything and reopen the file.
    drop(sub);
    Publisher::close(&ps).await.unwrap();
    drop(ps);
    let ps = SqlitePubSub::connect(h.config(Some("g"))).await.unwrap();
    let mut sub = ps.subscribe("t").await.unwrap();
    let again = tokio::time::timeout(Duration::from_secs(5), sub.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        again.uuid, "m1",
        "the unacked message comes back after a restart"
    );
    again.ack();
    assert_eq!(sub.recv().await.unwrap().uuid, "m2");
}

#[tokio::test]
async fn a_tail_reads_only_new_messages_and_takes_none_from_the_group() {
    let h = SqliteHarness::new();
    let ps = SqlitePubSub::connect(h.config(Some("g"))).await.unwrap();
    ps.subscribe_initialize("t").await.unwrap();
    ps.publish("t", vec![Message::with_uuid("old", "p")])
        .await
        .unwrap();
    let tail = ps.tail_subscriber().await.unwrap();
    let mut s = tail.subscribe("t").await.unwrap();
    ps.publish("t", vec![Message::with_uuid("new", "p")])
        .await
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), s.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.uuid, "new");
    m.ack();
    let mut g = ps.subscribe("t").await.unwrap();
    let a = g.recv().await.unwrap();
    assert_eq!(a.uuid, "old");
    a.ack();
    assert_eq!(g.recv().await.unwrap().uuid, "new");
}

#[tokio::test]
async fn closing_a_tail_leaves_the_backend_open_and_closing_the_backend_ends_tails() {
    let h = SqliteHarness::new();
    let ps = SqlitePubSub::connect(h.config(Some("g"))).await.unwrap();
    let tail = ps.tail_subscriber().await.unwrap();
    Subscriber::close(&tail).await.unwrap();
    ps.publish("t", vec![Message::with_uuid("after-tail-close", "p")])
        .await
        .expect("the backend still publishes after a tail closed");
    let other_tail = ps.tail_subscriber().await.unwrap();
    let mut s = other_tail.subscribe("t").await.unwrap();
    Subscriber::close(&ps).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), s.recv()).await;
    assert!(
        matches!(end, Ok(None)),
        "closing the backend ends its tails"
    );
}

#[tokio::test]
async fn a_publish_of_several_insert_chunks_keeps_order_and_metadata() {
    let h = SqliteHarness::new();
    let ps = SqlitePubSub::connect(h.config(Some("g"))).await.unwrap();
    ps.subscribe_initialize("t").await.unwrap();
    let n = ROWS_PER_INSERT * 2 + 3;
    let sent: Vec<Message> = (0..n)
        .map(|i| {
            Message::with_uuid(format!("m{i}"), format!("p{i}")).with_metadata("i", i.to_string())
        })
        .collect();
    ps.publish("t", sent.iter().map(Message::copy).collect())
        .await
        .unwrap();
    let mut sub = ps.subscribe("t").await.unwrap();
    for want in &sent {
        let got = tokio::time::timeout(Duration::from_secs(10), sub.recv())
            .await
            .expect("delivered in time")
            .expect("subscription open");
        assert_eq!(
            (&got.uuid, &got.payload, got.metadata.get("i")),
            (&want.uuid, &want.payload, want.metadata.get("i"))
        );
        got.ack();
    }
}
