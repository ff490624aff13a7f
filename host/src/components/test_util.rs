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
