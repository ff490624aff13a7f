use super::*;
use crate::pubsub::conformance::{Features, Harness, OwnedPubSub};
use crate::pubsub::testkit::{Kind, PrivateServer};
use crate::pubsub::{DynPublisher, DynSubscriber};
use futures::StreamExt;

fn url() -> String {
    std::env::var("WASMILL_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

struct NatsHarness {
    group: String,
}

impl NatsHarness {
    fn new() -> Self {
        NatsHarness {
            group: crate::pubsub::conformance::unique_group(),
        }
    }
    fn config(&self, group: &str) -> NatsConfig {
        self.config_at(url(), group)
    }
    fn config_at(&self, url: String, group: &str) -> NatsConfig {
        NatsConfig {
            url,
            consumer_group: Some(group.to_string()),
            ack_wait: Duration::from_secs(5),
            ..NatsConfig::default()
        }
    }
}

#[async_trait]
impl Harness for NatsHarness {
    fn features(&self) -> Features {
        // Not promised: guaranteed_order across subscribers (the group's subscriptions share
        // the messages the server pushes ahead).
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
        let ps = NatsPubSub::connect(self.config(&self.group)).await?;
        Ok(crate::pubsub::conformance::pair(ps))
    }

    async fn subscriber_in_group(&self, group: &str) -> Result<DynSubscriber> {
        Ok(Arc::new(NatsPubSub::connect(self.config(group)).await?))
    }

    /// A private JetStream server with a file store, restarted: the streams and their
    /// consumers come back with it.
    async fn owned_pubsub(&self) -> Result<Option<OwnedPubSub>> {
        let server = PrivateServer::start(Kind::Nats).await?;
        let ps = NatsPubSub::connect(self.config_at(server.url(), &self.group)).await?;
        let (publisher, subscriber) = crate::pubsub::conformance::pair(ps);
        Ok(Some(OwnedPubSub {
            publisher,
            subscriber,
            outage: Box::new(server),
        }))
    }
}

crate::conformance_tests!(NatsHarness::new());

#[tokio::test]
async fn a_settlement_goes_to_the_reply_subject_and_needs_one() {
    let client = async_nats::connect(url()).await.unwrap();
    let err = settle(&client, None, AckKind::Ack).await.unwrap_err();
    assert!(err.contains("no reply subject"), "{err}");
    let reply = async_nats::Subject::from(client.new_inbox());
    let mut watch = client.subscribe(reply.clone()).await.unwrap();
    settle(&client, Some(reply.clone()), AckKind::Nak(None))
        .await
        .unwrap();
    settle(&client, Some(reply), AckKind::Ack).await.unwrap();
    for expected in ["-NAK", "+ACK"] {
        let got = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .expect("a settlement")
            .expect("subscription open");
        assert_eq!(&got.payload[..], expected.as_bytes());
    }
}

#[test]
fn stream_names_are_safe() {
    assert_eq!(stream_name("orders.created v2"), "orders_created_v2");
}
