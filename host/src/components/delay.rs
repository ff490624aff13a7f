//! Delayed messages (Watermill's `components/delay`): the metadata (`pubsub::delay`,
//! re-exported here) says when a message is due, and a backend that can delay holds it until
//! then (the in-memory one does; the requeuer honours it on any backend).
//! [`DelayingPublisher`] sets a delay on every message it publishes.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::Result;
use crate::message::Message;
use crate::pubsub::Publisher;
pub use crate::pubsub::delay::{DELAYED_FOR, DELAYED_UNTIL, delay_for, due};

/// A publisher that delays every message by `delay`, unless it names its own.
pub struct DelayingPublisher {
    inner: Arc<dyn Publisher>,
    delay: Duration,
}

impl DelayingPublisher {
    /// Publishes on `inner`, each message due `delay` after it is published.
    pub fn new(inner: Arc<dyn Publisher>, delay: Duration) -> Self {
        DelayingPublisher { inner, delay }
    }
}

#[async_trait]
impl Publisher for DelayingPublisher {
    async fn publish(&self, topic: &str, mut messages: Vec<Message>) -> Result<()> {
        for m in &mut messages {
            if due(m).is_none() {
                delay_for(m, self.delay);
            }
        }
        self.inner.publish(topic, messages).await
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }

    fn name(&self) -> &'static str {
        "delaying"
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::components::test_util::next;
    use crate::pubsub::Subscriber;
    use crate::pubsub::memory::MemoryPubSub;

    #[tokio::test]
    async fn the_in_memory_backend_holds_a_delayed_message_until_it_is_due() {
        let ps = MemoryPubSub::default();
        let mut sub = ps.subscribe("t").await.unwrap();
        let delaying = DelayingPublisher::new(Arc::new(ps.clone()), Duration::from_millis(300));
        let started = Instant::now();
        delaying
            .publish("t", vec![Message::with_uuid("later", "x")])
            .await
            .unwrap();
        ps.publish("t", vec![Message::with_uuid("now", "y")])
            .await
            .unwrap();
        assert_eq!(next(&mut sub).await.uuid, "now");
        let later = next(&mut sub).await;
        assert_eq!(later.uuid, "later");
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "delivered early"
        );
        assert!(later.metadata.contains(DELAYED_FOR));
    }
}
