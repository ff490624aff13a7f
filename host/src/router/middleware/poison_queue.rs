//! PoisonQueue: a message whose handling failed is published to a poison topic, with why,
//! and acked, so one bad message cannot block a stream.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;

use crate::error::{Error, ErrorKind, HandlerError, Result};
use crate::message::Message;
use crate::pubsub::DynPublisher;
use crate::router::{BoxHandler, Handler, HandlerResult, HandlerStats, Middleware};

/// Metadata key: the error that poisoned the message.
pub const REASON_POISONED: &str = "reason_poisoned";
/// The longest `reason_poisoned` kept in the metadata, in bytes (the first line of the error).
pub const MAX_REASON: usize = 512;

/// Metadata key: the topic the message was consumed from.
pub const TOPIC_POISONED: &str = "topic_poisoned";
/// Metadata key: the handler that failed.
pub const HANDLER_POISONED: &str = "handler_poisoned";
/// Metadata key: the subscriber that delivered it.
pub const SUBSCRIBER_POISONED: &str = "subscriber_poisoned";

type Filter = Arc<dyn Fn(&HandlerError) -> bool + Send + Sync>;

/// Every [`ErrorKind`], as the config names them (`errors = ["timeout", …]`).
pub const ERROR_KINDS: &[ErrorKind] = &[
    ErrorKind::Handler,
    ErrorKind::Panic,
    ErrorKind::Timeout,
    ErrorKind::FuelExhausted,
    ErrorKind::MemoryLimit,
    ErrorKind::Trap,
    ErrorKind::OutputLimit,
    ErrorKind::Publish,
    ErrorKind::CircuitOpen,
    ErrorKind::Injected,
];

// Fails to compile when a kind is added to `ErrorKind` without being listed above.
#[allow(dead_code)]
fn every_kind_is_listed(k: ErrorKind) {
    match k {
        ErrorKind::Handler
        | ErrorKind::Panic
        | ErrorKind::Timeout
        | ErrorKind::FuelExhausted
        | ErrorKind::MemoryLimit
        | ErrorKind::Trap
        | ErrorKind::OutputLimit
        | ErrorKind::Publish
        | ErrorKind::CircuitOpen
        | ErrorKind::Injected => {}
    }
}

/// The kind named `name` (`"fuel_exhausted"`), as [`ErrorKind::as_str`] spells it.
pub fn error_kind(name: &str) -> Option<ErrorKind> {
    ERROR_KINDS.iter().copied().find(|k| k.as_str() == name)
}

/// `{ poison_queue = { topic = "poison", pubsub = "events", errors = ["timeout"],
/// reason_contains = ["deadline"] } }`: where failures go and, optionally, which ones
/// (Watermill's `PoisonQueueWithFilter`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PoisonQueueConfig {
    /// The poison topic.
    pub topic: String,
    /// The backend to publish it on (default: the host's default pub/sub).
    #[serde(default)]
    pub pubsub: Option<String>,
    /// Poison failures of these kinds (`handler`, `timeout`, `fuel_exhausted`, …).
    #[serde(default)]
    pub errors: Vec<String>,
    /// Poison failures whose reason contains one of these substrings.
    #[serde(default)]
    pub reason_contains: Vec<String>,
}

impl PoisonQueueConfig {
    /// Checks the topic and the error kinds; an error names the option (`errors[1]`).
    pub fn check(&self) -> std::result::Result<(), crate::config::OptionError> {
        use crate::config::OptionError;
        if self.topic.is_empty() {
            return Err(OptionError::new("topic", "must not be empty"));
        }
        for (i, e) in self.errors.iter().enumerate() {
            if error_kind(e).is_none() {
                let names: Vec<&str> = ERROR_KINDS.iter().map(|k| k.as_str()).collect();
                return Err(OptionError::new(
                    format!("errors[{i}]"),
                    format!("unknown error kind {e:?} (expected {})", names.join(", ")),
                ));
            }
        }
        Ok(())
    }

    /// The filter: a failure is poisoned when its kind is listed in `errors` or its reason
    /// contains one of `reason_contains`; with neither given, every failure is.
    pub fn filter(&self) -> Option<impl Fn(&HandlerError) -> bool + Send + Sync + 'static> {
        if self.errors.is_empty() && self.reason_contains.is_empty() {
            return None;
        }
        let kinds: Vec<ErrorKind> = self.errors.iter().filter_map(|e| error_kind(e)).collect();
        let reasons = self.reason_contains.clone();
        Some(move |e: &HandlerError| {
            kinds.contains(&e.kind()) || reasons.iter().any(|r| e.reason().contains(r.as_str()))
        })
    }
}

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

    /// The poison queue a config entry describes, publishing with `publisher`.
    pub fn from_config(publisher: DynPublisher, cfg: &PoisonQueueConfig) -> Result<Self> {
        cfg.check()
            .map_err(|e| Error::Config(format!("poison_queue.{e}")))?;
        match cfg.filter() {
            Some(f) => Self::with_filter(publisher, cfg.topic.clone(), f),
            None => Self::new(publisher, cfg.topic.clone()),
        }
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
        let result = self.next.handle(msg.clone()).await;
        self.poison_failed(msg, result).await
    }

    async fn handle_batch(&self, msgs: Vec<Message>) -> Vec<HandlerResult> {
        let results = self.next.handle_batch(msgs.clone()).await;
        let mut out = Vec::with_capacity(msgs.len());
        for (msg, result) in msgs.into_iter().zip(results) {
            out.push(self.poison_failed(msg, result).await);
        }
        out
    }
}

impl Poisoning {
    /// `result` of handling `msg`, a failure (that the filter lets through) turned into the
    /// message in the poison queue and a success.
    async fn poison_failed(&self, msg: Message, result: HandlerResult) -> HandlerResult {
        let err = match result {
            Ok(out) => return Ok(out),
            Err(e) => e,
        };
        if self.pq.filter.as_ref().is_some_and(|f| !f(&err)) {
            return Err(err);
        }
        let ctx = msg.context();
        let poisoned = msg
            .copy()
            // The summary only (a trap's wasm backtrace stays in the log line below).
            .with_metadata(
                REASON_POISONED,
                crate::router::repeat_limit::first_line(err.reason(), MAX_REASON),
            )
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

#[cfg(test)]
mod filter_tests {
    use super::*;
    use crate::pubsub::Subscriber;
    use crate::pubsub::memory::MemoryPubSub;
    use crate::router::handler_fn;

    fn cfg(text: &str) -> PoisonQueueConfig {
        toml::from_str(text).unwrap()
    }

    /// Wraps a handler failing with `err`; returns whether the failure was poisoned (acked,
    /// copy on the topic) rather than returned (nacked).
    async fn poisoned(cfg: &PoisonQueueConfig, err: HandlerError) -> bool {
        let ps = Arc::new(MemoryPubSub::default());
        let mut poison = ps.subscribe(&cfg.topic).await.unwrap();
        let pq = PoisonQueue::from_config(ps.clone(), cfg).unwrap();
        let h = pq.wrap(handler_fn(move |_m| {
            let err = err.clone();
            async move { Err(err) }
        }));
        match h.handle(Message::new("x")).await {
            Ok(out) => {
                assert!(out.is_empty());
                let p = poison.recv().await.unwrap();
                assert!(!p.metadata.get(REASON_POISONED).is_empty());
                true
            }
            Err(_) => false,
        }
    }

    #[tokio::test]
    async fn only_matching_errors_are_poisoned() {
        let by_kind = cfg("topic = \"poison\"\nerrors = [\"timeout\", \"fuel_exhausted\"]");
        let timeout = HandlerError::with_kind(ErrorKind::Timeout, "deadline of 1s exceeded");
        let fuel = HandlerError::with_kind(ErrorKind::FuelExhausted, "fuel exhausted");
        assert!(poisoned(&by_kind, timeout.clone()).await);
        assert!(poisoned(&by_kind, fuel).await);
        assert!(!poisoned(&by_kind, HandlerError::new("bad payload")).await);

        let by_reason = cfg("topic = \"poison\"\nreason_contains = [\"bad payload\"]");
        assert!(poisoned(&by_reason, HandlerError::new("a bad payload here")).await);
        assert!(!poisoned(&by_reason, timeout).await);

        let all = cfg("topic = \"poison\"");
        assert!(poisoned(&all, HandlerError::new("anything")).await);
    }

    #[test]
    fn unknown_kinds_and_empty_topics_are_named() {
        let e = cfg("topic = \"p\"\nerrors = [\"timeout\", \"fuel\"]")
            .check()
            .unwrap_err();
        assert_eq!(e.key, "errors[1]");
        assert!(
            e.message.contains("\"fuel\"") && e.message.contains("fuel_exhausted"),
            "{e}"
        );
        assert_eq!(cfg("topic = \"\"").check().unwrap_err().key, "topic");
        for k in ERROR_KINDS {
            assert_eq!(error_kind(k.as_str()), Some(*k));
        }
    }
}
