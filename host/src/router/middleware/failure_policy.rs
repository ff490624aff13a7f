//! The failure policy: what happens, by default, to a message whose handling keeps failing.
//! It is retried in place with exponential backoff, up to `max_attempts` in all, then sent to
//! a poison topic (`<topic>.poison` unless configured) with its reason and acked. So one bad
//! message holds its topic for at most the policy's backoff, never forever, and never floods
//! the host with redeliveries.
//!
//! It is the two built-ins every Watermill user ends up writing, PoisonQueue outside Retry, in
//! the order that works (Watermill #580). A handler that lists its own `retry` or
//! `poison_queue` gets no policy: its own chain decides ([`has_own_failure_handling`]).

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::{PoisonQueue, Retry, RetryConfig};
use crate::error::{Error, Result};
use crate::pubsub::DynPublisher;
use crate::router::BoxMiddleware;

/// The placeholder in `poison_topic` replaced by the handler's subscribed topic.
pub const TOPIC_PLACEHOLDER: &str = "{topic}";

/// `[defaults] on_failure` and a handler's `on_failure`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailurePolicy {
    /// Attempts in all, the first one included (1 = no retry).
    pub max_attempts: u32,
    /// Wait before the second attempt.
    #[serde(with = "crate::config::duration")]
    pub initial_interval: Duration,
    /// Cap of the wait between attempts.
    #[serde(with = "crate::config::duration")]
    pub max_interval: Duration,
    /// Growth of the wait after each attempt.
    pub multiplier: f64,
    /// Where a message goes after its last attempt (`{topic}` is the subscribed topic). Empty:
    /// nowhere, the message is nacked and the backend delivers it again (Watermill's default).
    pub poison_topic: String,
    /// The backend of the poison topic (default: the subscribed topic's backend).
    pub poison_pubsub: Option<String>,
}

impl Default for FailurePolicy {
    fn default() -> Self {
        FailurePolicy {
            max_attempts: 5,
            initial_interval: Duration::from_millis(100),
            max_interval: Duration::from_secs(10),
            multiplier: 2.0,
            poison_topic: format!("{TOPIC_PLACEHOLDER}.poison"),
            poison_pubsub: None,
        }
    }
}

impl FailurePolicy {
    /// Checks the values; the error names the key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.max_attempts == 0 {
            return Err("max_attempts: must be at least 1 (1 = no retry)".into());
        }
        if self.max_attempts > 1000 {
            return Err(format!(
                "max_attempts: {} is more than 1000; a message would hold its topic for hours",
                self.max_attempts
            ));
        }
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return Err(format!(
                "multiplier: {} must be at least 1",
                self.multiplier
            ));
        }
        if self.initial_interval > self.max_interval {
            return Err("initial_interval: must not exceed max_interval".into());
        }
        Ok(())
    }

    /// The poison topic for a handler subscribed to `topic`, if the policy poisons.
    pub fn poison_topic_for(&self, topic: &str) -> Option<String> {
        (!self.poison_topic.is_empty()).then(|| self.poison_topic.replace(TOPIC_PLACEHOLDER, topic))
    }

    /// The longest a failing message holds its handler before it is poisoned or nacked: the
    /// sum of the waits between attempts (the attempts' own time comes on top).
    pub fn total_backoff(&self) -> Duration {
        (1..self.max_attempts)
            .map(|n| self.retry().interval(n))
            .sum()
    }

    fn retry(&self) -> Retry {
        Retry::new(RetryConfig {
            max_retries: self.max_attempts.saturating_sub(1),
            initial_interval: self.initial_interval,
            max_interval: self.max_interval,
            multiplier: self.multiplier,
            ..RetryConfig::default()
        })
    }

    /// The middleware of the policy for a handler subscribed to `topic`, outermost first;
    /// `poison` publishes to the poison topic (needed when the policy poisons).
    pub fn middleware(
        &self,
        topic: &str,
        poison: Option<DynPublisher>,
    ) -> Result<Vec<BoxMiddleware>> {
        self.validate()
            .map_err(|e| Error::Config(format!("on_failure.{e}")))?;
        let mut out: Vec<BoxMiddleware> = Vec::new();
        if let Some(poison_topic) = self.poison_topic_for(topic) {
            if poison_topic == topic {
                return Err(Error::Config(format!(
                    "on_failure.poison_topic: {poison_topic:?} is the subscribed topic: a poisoned message would come back to the handler forever"
                )));
            }
            let publisher = poison.ok_or_else(|| {
                Error::Config("on_failure.poison_pubsub: no publisher for the poison topic".into())
            })?;
            out.push(Arc::new(PoisonQueue::new(publisher, poison_topic)?));
        }
        if self.max_attempts > 1 {
            out.push(Arc::new(self.retry()));
        }
        Ok(out)
    }
}

/// Whether a middleware list handles failures itself (it lists `retry` or `poison_queue`), in
/// which case the failure policy stays out of its way.
pub fn has_own_failure_handling(entries: &[toml::Value]) -> bool {
    entries.iter().any(|e| {
        let name = match e {
            toml::Value::String(s) => Some(s.as_str()),
            toml::Value::Table(t) => t.keys().next().map(String::as_str),
            _ => None,
        };
        matches!(name, Some("retry") | Some("poison_queue"))
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Instant;

    use super::*;
    use crate::error::HandlerError;
    use crate::message::Message;
    use crate::pubsub::memory::MemoryPubSub;
    use crate::pubsub::{Publisher, Subscriber};
    use crate::router::middleware::poison_queue::REASON_POISONED;
    use crate::router::{HandlerSpec, Router, RouterConfig, handler_fn};

    #[test]
    fn defaults_retry_with_growing_waits_then_poison_beside_the_topic() {
        let p = FailurePolicy::default();
        assert_eq!(
            p.poison_topic_for("orders").as_deref(),
            Some("orders.poison")
        );
        assert_eq!(
            p.total_backoff(),
            Duration::from_millis(100 + 200 + 400 + 800)
        );
        let off = FailurePolicy {
            max_attempts: 1,
            poison_topic: String::new(),
            ..FailurePolicy::default()
        };
        assert!(off.middleware("t", None).unwrap().is_empty());
    }

    #[test]
    fn bad_values_and_loops_are_refused_by_key() {
        let zero = FailurePolicy {
            max_attempts: 0,
            ..FailurePolicy::default()
        };
        assert!(zero.validate().unwrap_err().starts_with("max_attempts"));
        let ps: DynPublisher = Arc::new(MemoryPubSub::default());
        let looping = FailurePolicy {
            poison_topic: "{topic}".into(),
            ..FailurePolicy::default()
        };
        let e = looping.middleware("t", Some(ps)).err().unwrap().to_string();
        assert!(e.contains("on_failure.poison_topic"), "{e}");
    }

    #[test]
    fn own_retry_or_poison_queue_turns_the_policy_off() {
        let list: Vec<toml::Value> = vec!["recoverer".into()];
        assert!(!has_own_failure_handling(&list));
        let t: toml::Table = toml::from_str("m = { retry = { max_retries = 1 } }").unwrap();
        assert!(has_own_failure_handling(&[t["m"].clone()]));
        assert!(has_own_failure_handling(&["poison_queue".into()]));
    }

    /// An always-failing message is retried with growing waits, poisoned after the last
    /// attempt, and the next message of the topic is handled right after.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_message_is_poisoned_and_the_next_one_handled_within_the_policy() {
        let ps = Arc::new(MemoryPubSub::default());
        let mut poison = ps.subscribe("in.poison").await.unwrap();
        let mut out = ps.subscribe("out").await.unwrap();
        let policy = FailurePolicy {
            max_attempts: 4,
            initial_interval: Duration::from_millis(20),
            max_interval: Duration::from_secs(1),
            ..FailurePolicy::default()
        };
        let attempts = Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
        let bad_attempts = Arc::new(AtomicU32::new(0));
        let (a, b) = (attempts.clone(), bad_attempts.clone());
        let mut spec = HandlerSpec::new(
            "h",
            "in",
            ps.clone(),
            handler_fn(move |m: Message| {
                let (a, b) = (a.clone(), b.clone());
                async move {
                    if m.payload == "bad" {
                        a.lock().unwrap().push(Instant::now());
                        b.fetch_add(1, Ordering::SeqCst);
                        return Err(HandlerError::new("always fails"));
                    }
                    Ok(vec![m])
                }
            }),
        )
        .publish_to("out", ps.clone());
        for m in policy.middleware("in", Some(ps.clone())).unwrap() {
            spec = spec.middleware(m);
        }
        let router = Router::new(RouterConfig::default());
        router.add(spec).unwrap();
        let r = router.clone();
        tokio::spawn(async move { r.run().await });
        router.running().await;
        for h in router.handlers() {
            h.started().await;
        }
        let started = Instant::now();
        ps.publish("in", vec![Message::new("bad"), Message::new("good")])
            .await
            .unwrap();
        let p = tokio::time::timeout(Duration::from_secs(10), poison.recv())
            .await
            .expect("poisoned")
            .unwrap();
        p.ack();
        assert_eq!(p.metadata.get(REASON_POISONED), "always fails");
        assert_eq!(bad_attempts.load(Ordering::SeqCst), 4);
        let times = attempts.lock().unwrap().clone();
        let waits: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
        for pair in waits.windows(2) {
            assert!(pair[1] > pair[0], "waits do not grow: {waits:?}");
        }
        let good = tokio::time::timeout(Duration::from_secs(10), out.recv())
            .await
            .expect("the next message was handled")
            .unwrap();
        good.ack();
        assert_eq!(good.payload, "good");
        let bound = policy.total_backoff() + Duration::from_secs(2);
        assert!(
            started.elapsed() < bound,
            "the next message waited {:?}, more than the policy's {bound:?}",
            started.elapsed()
        );
        router.close().await.unwrap();
    }
}
