//! Helpers the components' tests share.

use std::sync::Arc;
use std::time::Duration;

use crate::message::Message;
use crate::pubsub::{Publisher, Subscriber, Subscription};

/// The next message of `sub` within 10 s, acked.
pub async fn next(sub: &mut Subscription) -> Message {
    let m = tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .expect("a message within 10 s")
        .expect("an open subscription");
    m.ack();
    m
}

/// A backend as both of its halves.
pub trait Both: Publisher + Subscriber {
    /// The publishing half.
    fn publisher(self: Arc<Self>) -> Arc<dyn Publisher>;
    /// The subscribing half.
    fn subscriber(&self) -> &dyn Subscriber;
}

impl<T: Publisher + Subscriber> Both for T {
    fn publisher(self: Arc<Self>) -> Arc<dyn Publisher> {
        self
    }
    fn subscriber(&self) -> &dyn Subscriber {
        self
    }
}

/// A Redis pub/sub on the machine's server, with a consumer group of its own.
#[cfg(feature = "redis")]
pub async fn redis() -> crate::pubsub::redis::RedisPubSub {
    crate::pubsub::redis::RedisPubSub::connect(crate::pubsub::redis::RedisConfig {
        consumer_group: Some(crate::pubsub::conformance::unique_group()),
        ..Default::default()
    })
    .await
    .unwrap()
}

/// A PostgreSQL pub/sub on the machine's server, with a consumer group of its own.
#[cfg(feature = "postgres")]
pub async fn postgres() -> crate::pubsub::postgres::PostgresPubSub {
    let url = std::env::var("WASMILL_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    crate::pubsub::postgres::PostgresPubSub::connect(crate::pubsub::postgres::PostgresConfig {
        url,
        consumer_group: Some(crate::pubsub::conformance::unique_group()),
        poll_interval: Duration::from_millis(100),
        start_at_end: false,
        ca_file: None,
    })
    .await
    .unwrap()
}
