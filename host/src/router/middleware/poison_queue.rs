//! PoisonQueue: a message whose handling failed is published to a poison topic, with why,
//! and acked, so one bad message cannot block a stream.

use std::sync::Arc;

use async_trait::async_trait;

use crate::error::{Error, ErrorKind, HandlerError, Result};
use crate::message::Message;
use crate::pubsub::DynPublisher;
use crate::router::{BoxHandler, Handler, HandlerResult, HandlerStats, Middleware};

/// Metadata key: the error that poisoned the message.
pub const REASON_POISONED: &str = "reason_poisoned";
/// Metadata key: the topic the message was consumed from.
pub const TOPIC_POISONED: &str = "topic_poisoned";
/// Metadata key: the handler that failed.
pub const HANDLER_POISONED: &str = "handler_poisoned";
/// Metadata key: the subscriber that delivered it.
pub const SUBSCRIBER_POISONED: &str = "subscriber_poisoned";

type Filter = Arc<dyn Fn(&HandlerError) -> bool + Send + Sync>;

/// Publishes failed messages to `topic` and returns success (Watermill's `PoisonQueue`).
#[derive(Clone)]
pub struct PoisonQueue {
    publisher: DynPublisher,
    topic: String,
    filter: Option<Filter>,
}

impl PoisonQueue {
    /// Poisons every failure. An empty topic is an error.
    pub fn new(publisher: DynPublisher, topic: impl Into<String>) -> Result<Self> {
        let topic = topic.into();
        if topic.is_empty() {
            return Err(Error::Config(
                "poison_queue: topic must not be empty".into(),
            ));
        }
        Ok(PoisonQueue {
            publisher,
            topic,
            filter: None,
        })
    }

    /// Poisons only failures for which `filter` returns true; others stay errors.
    pub fn with_filter(
        publisher: DynPublisher,
        topic: impl Into<String>,
        filter: impl Fn(&HandlerError) -> bool + Send + Sync + 'static,
    ) -> Result<Self> {
        let mut p = Self::new(publisher, topic)?;
        p.filter = Some(Arc::new(filter));
        Ok(p)
    }
}

struct Poisoning {
    pq: PoisonQueue,
    next: BoxHandler,
}

#[async_trait]
impl Handler for Poisoning {
    async fn handle(&self, msg: Message) -> HandlerResult {
        let err = match self.next.handle(msg.clone()).await {
            Ok(out) => return Ok(out),
            Err(e) => e,
        };
        if self.pq.filter.as_ref().is_some_and(|f| !f(&err)) {
            return Err(err);
        }
        let ctx = msg.context();
        let poisoned = msg
            .copy()
            .with_metadata(REASON_POISONED, err.reason())
            .with_metadata(TOPIC_POISONED, ctx.subscribe_topic())
            .with_metadata(HANDLER_POISONED, ctx.handler_name())
            .with_metadata(SUBSCRIBER_POISONED, ctx.subscriber_name());
        match self
            .pq
            .publisher
            .publish(&self.pq.topic, vec![poisoned])
            .await
        {
            Ok(()) => {
                tracing::warn!(uuid = %msg.uuid, topic = %self.pq.topic, "message poisoned: {err}");
                if let Some(stats) = ctx.stats() {
                    HandlerStats::inc(&stats.poisoned);
                }
                Ok(vec![])
            }
            Err(e) => Err(HandlerError::with_kind(
                ErrorKind::Publish,
                format!(
                    "publish to poison queue {}: {e} (after: {err})",
                    self.pq.topic
                ),
            )),
        }
    }
}

impl Middleware for PoisonQueue {
    fn wrap(&self, next: BoxHandler) -> BoxHandler {
        Arc::new(Poisoning {
            pq: self.clone(),
            next,
        })
    }

    fn name(&self) -> &str {
        "poison_queue"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::Subscriber;
    use crate::pubsub::memory::MemoryPubSub;
    use crate::router::handler_fn;

    #[tokio::test]
    async fn failed_message_lands_with_the_four_keys() {
        let ps = Arc::new(MemoryPubSub::default());
        let mut poison = ps.subscribe("poison").await.unwrap();
        let pq = PoisonQueue::new(ps.clone(), "poison").unwrap();
        let h = pq.wrap(handler_fn(|_m| async { Err(HandlerError::new("broken")) }));
        let route = Arc::new(crate::message::RouteInfo {
            handler: "h1".into(),
            subscriber: "memory".into(),
            publisher: None,
            subscribe_topic: "in".into(),
            publish_topic: None,
            stats: Some(Arc::new(HandlerStats::default())),
            close: None,
        });
        let mut msg = Message::with_uuid("u", "p");
        msg.context_mut().set_route(&route);
        let out = h.handle(msg).await.unwrap();
        assert!(out.is_empty());
        let p = poison.recv().await.unwrap();
        assert_eq!(p.uuid, "u");
        assert_eq!(p.metadata.get(REASON_POISONED), "broken");
        assert_eq!(p.metadata.get(TOPIC_POISONED), "in");
        assert_eq!(p.metadata.get(HANDLER_POISONED), "h1");
        assert_eq!(p.metadata.get(SUBSCRIBER_POISONED), "memory");
        assert_eq!(route.stats.as_ref().unwrap().snapshot().poisoned, 1);
    }

    #[tokio::test]
    async fn publish_failure_is_an_error_and_filter_applies() {
        let ps = Arc::new(MemoryPubSub::default());
        ps.close().await.unwrap();
        let pq = PoisonQueue::new(ps.clone(), "poison").unwrap();
        let h = pq.wrap(handler_fn(|_m| async { Err(HandlerError::new("broken")) }));
        let e = h.handle(Message::new("x")).await.unwrap_err();
        assert!(e.reason().contains("poison queue"), "{e}");

        let ps = Arc::new(MemoryPubSub::default());
        let pq = PoisonQueue::with_filter(ps, "poison", |e| e.reason() == "poison me").unwrap();
        let h = pq.wrap(handler_fn(|_m| async { Err(HandlerError::new("other")) }));
        assert!(h.handle(Message::new("x")).await.is_err());
        assert!(PoisonQueue::new(Arc::new(MemoryPubSub::default()), "").is_err());
    }
}
