//! Built-in middleware, one module each, with Watermill's knobs and semantics.
//!
//! The first middleware of a list is the outermost, as in Watermill. **The order trap**
//! (Watermill #580/#645): with `[retry, poison_queue]` the PoisonQueue sits inside Retry,
//! swallows the first error and Retry never retries. Put `poison_queue` first (outside):
//! `[poison_queue, retry]` retries, then poisons. The config does this for you
//! ([`normalize_order`]) and logs that it did.
//!
//! | middleware | module | what it does |
//! |---|---|---|
//! | `recoverer` | [`recoverer`] | a panic becomes a handler error with a stack trace |
//! | `retry` | [`retry`] | retries with exponential backoff |
//! | `timeout` | [`timeout`] | a deadline on the chain |
//! | `poison_queue` | [`poison_queue`] | failed messages go to a topic, then ack |
//! | `correlation_id` | [`correlation_id`] | outputs carry the input's correlation id |
//! | `throttle` | [`throttle`] | at most N messages per period |
//! | `circuit_breaker` | [`circuit_breaker`] | fail fast while a handler keeps failing |
//! | `duplicator` | [`duplicator`] | runs the chain twice |
//! | `ignore_errors` | [`ignore_errors`] | listed errors count as success |
//! | `instant_ack` | [`instant_ack`] | acks before handling |
//! | `random_fail`, `random_panic` | [`random_fail`] | fault injection |
//! | `deduplicator` | [`deduplicator`] | drops repeats within a window |
//! | `delay_on_error` | [`delay_on_error`] | redeliver later, with a growing delay |
//!
//! [`spec`] parses a config entry into a checked [`MiddlewareSpec`] (no side effects, so the
//! whole config is checked before anything runs) and builds it.

pub mod circuit_breaker;
pub mod correlation_id;
pub mod deduplicator;
pub mod delay_on_error;
pub mod duplicator;
pub mod failure_policy;
pub mod ignore_errors;
pub mod instant_ack;
pub mod poison_queue;
pub mod random_fail;
pub mod recoverer;
pub mod retry;
pub mod spec;
pub mod throttle;
pub mod timeout;

pub use circuit_breaker::{CircuitBreaker, CircuitBreakerConfig};
pub use correlation_id::CorrelationId;
pub use deduplicator::{Deduplicator, KeyFactory};
pub use delay_on_error::DelayOnError;
pub use duplicator::Duplicator;
pub use failure_policy::FailurePolicy;
pub use ignore_errors::IgnoreErrors;
pub use instant_ack::InstantAck;
pub use poison_queue::PoisonQueue;
pub use random_fail::{RandomFail, RandomPanic};
pub use recoverer::Recoverer;
pub use retry::{Retry, RetryConfig};
pub use throttle::Throttle;
pub use timeout::Timeout;

pub use spec::{MiddlewareSpec, entry_name, from_config};

/// Moves a `poison_queue` listed after (inside) a `retry` to just before (outside) the first
/// `retry`, so retries happen before poisoning. Returns the list and notes of what moved.
pub fn normalize_order(list: &[toml::Value]) -> (Vec<toml::Value>, Vec<String>) {
    let mut out = list.to_vec();
    let mut notes = Vec::new();
    let Some(first_retry) = out.iter().position(|e| entry_name(e) == Some("retry")) else {
        return (out, notes);
    };
    let mut i = first_retry + 1;
    let mut insert_at = first_retry;
    while i < out.len() {
        if entry_name(&out[i]) == Some("poison_queue") {
            let pq = out.remove(i);
            out.insert(insert_at, pq);
            insert_at += 1;
            notes.push(
                "poison_queue moved outside retry so retries happen before poisoning (Watermill #580)"
                    .to_string(),
            );
        }
        i += 1;
    }
    (out, notes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Result;
    use crate::pubsub::DynPublisher;
    use std::sync::Arc;

    fn list(text: &str) -> Vec<toml::Value> {
        let t: toml::Table = toml::from_str(&format!("m = {text}")).unwrap();
        t["m"].as_array().unwrap().clone()
    }

    #[test]
    fn poison_queue_after_retry_moves_outside() {
        let (l, notes) = normalize_order(&list(
            r#"["correlation_id", { retry = { max_retries = 3 } }, { poison_queue = { topic = "p" } }]"#,
        ));
        let names: Vec<_> = l.iter().map(|e| entry_name(e).unwrap()).collect();
        assert_eq!(names, ["correlation_id", "poison_queue", "retry"]);
        assert_eq!(notes.len(), 1);
        let (same, notes) =
            normalize_order(&list(r#"[{ poison_queue = { topic = "p" } }, "retry"]"#));
        assert_eq!(entry_name(&same[0]), Some("poison_queue"));
        assert!(notes.is_empty());
    }

    #[test]
    fn config_errors_name_the_middleware() {
        let p = |_: Option<&str>| -> Result<DynPublisher> {
            Ok(Arc::new(crate::pubsub::memory::MemoryPubSub::default()))
        };
        let e = from_config(&toml::Value::String("retyr".into()), &p)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("retyr") && e.contains("retry"), "{e}");
        let bad = &list(r#"[{ retry = { initial_interval = "soon" } }]"#)[0];
        let e = from_config(bad, &p).err().unwrap().to_string();
        assert!(e.contains("retry") && e.contains("soon"), "{e}");
        let ok = &list(
            r#"[{ timeout = "1s" }, { poison_queue = { topic = "p" } }, "duplicator", "instant_ack",
                { throttle = { count = 10, per = "1s" } }, { circuit_breaker = { consecutive_failures = 2 } },
                { ignore_errors = ["x"] }, { random_fail = 0.1 }, { random_panic = 0 },
                { deduplicator = { key = { metadata = "id" }, window = "5m" } }, { delay_on_error = { initial_interval = "1s" } }]"#,
        );
        for e in ok {
            from_config(e, &p).unwrap();
        }
    }
}
