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

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::pubsub::DynPublisher;
use crate::router::BoxMiddleware;

fn entry_name(entry: &toml::Value) -> Option<&str> {
    match entry {
        toml::Value::String(s) => Some(s),
        toml::Value::Table(t) if t.len() == 1 => t.keys().next().map(String::as_str),
        _ => None,
    }
}

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

fn settings<T: serde::de::DeserializeOwned + Default>(
    name: &str,
    entry: &toml::Value,
) -> Result<T> {
    match entry {
        toml::Value::Table(t) => {
            let v = t
                .get(name)
                .cloned()
                .unwrap_or(toml::Value::Table(Default::default()));
            v.try_into()
                .map_err(|e| Error::Config(format!("middleware {name}: {e}")))
        }
        _ => Ok(T::default()),
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PoisonSettings {
    topic: String,
    pubsub: Option<String>,
}

const NAMES: &str = "recoverer, correlation_id, retry, timeout, poison_queue, throttle, circuit_breaker, duplicator, ignore_errors, instant_ack, random_fail, random_panic, deduplicator, delay_on_error, or { wasm = \"FILE.wasm\" }";

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ThrottleSettings {
    count: u32,
    #[serde(with = "crate::config::duration")]
    per: std::time::Duration,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DedupSettings {
    #[serde(default)]
    key: Option<toml::Value>,
    #[serde(default = "one_minute", with = "crate::config::duration")]
    window: std::time::Duration,
}

impl Default for DedupSettings {
    fn default() -> Self {
        DedupSettings {
            key: None,
            window: one_minute(),
        }
    }
}

fn one_minute() -> std::time::Duration {
    std::time::Duration::from_secs(60)
}

fn probability(name: &str, entry: &toml::Value) -> Result<f64> {
    entry
        .get(name)
        .and_then(|v| v.as_float().or_else(|| v.as_integer().map(|i| i as f64)))
        .filter(|p| (0.0..=1.0).contains(p))
        .ok_or_else(|| {
            Error::Config(format!(
                "middleware {name}: expected a probability from 0.0 to 1.0"
            ))
        })
}

/// Builds a built-in middleware from its config entry (a name or a single-key table);
/// `publisher` resolves a pubsub name (or the default) for middleware that publish.
pub fn from_config(
    entry: &toml::Value,
    publisher: &dyn Fn(Option<&str>) -> Result<DynPublisher>,
) -> Result<BoxMiddleware> {
    let Some(name) = entry_name(entry) else {
        return Err(Error::Config(format!(
            "middleware entry {entry}: expected a name or a table with one key"
        )));
    };
    Ok(match name {
        "recoverer" => Arc::new(Recoverer),
        "correlation_id" => Arc::new(CorrelationId),
        "retry" => Arc::new(Retry::new(settings::<RetryConfig>("retry", entry)?)),
        "timeout" => {
            let after = match entry.get("timeout") {
                Some(toml::Value::String(s)) => crate::config::duration::parse(s),
                Some(toml::Value::Table(t)) => match t.get("after").and_then(|v| v.as_str()) {
                    Some(s) => crate::config::duration::parse(s),
                    None => Err("expected { after = \"1s\" }".to_string()),
                },
                _ => Err("expected a duration such as \"1s\"".to_string()),
            }
            .map_err(|e| Error::Config(format!("middleware timeout: {e}")))?;
            Arc::new(Timeout::new(after))
        }
        "duplicator" => Arc::new(Duplicator),
        "instant_ack" => Arc::new(InstantAck),
        "circuit_breaker" => Arc::new(CircuitBreaker::new(settings("circuit_breaker", entry)?)),
        "delay_on_error" => Arc::new(settings::<DelayOnError>("delay_on_error", entry)?),
        "random_fail" => Arc::new(RandomFail::new(probability("random_fail", entry)?)),
        "random_panic" => Arc::new(RandomPanic::new(probability("random_panic", entry)?)),
        "throttle" => {
            let s: ThrottleSettings = settings("throttle", entry)?;
            if s.count == 0 || s.per.is_zero() {
                return Err(Error::Config(
                    "middleware throttle: count and per must be positive".into(),
                ));
            }
            Arc::new(Throttle::new(s.count, s.per))
        }
        "ignore_errors" => {
            let list: Vec<String> = entry
                .get("ignore_errors")
                .cloned()
                .unwrap_or(toml::Value::Array(vec![]))
                .try_into()
                .map_err(|e| {
                    Error::Config(format!(
                        "middleware ignore_errors: expected a list of strings: {e}"
                    ))
                })?;
            Arc::new(IgnoreErrors::new(list))
        }
        "deduplicator" => {
            let s: DedupSettings = settings("deduplicator", entry)?;
            let keys = match &s.key {
                None => KeyFactory::PayloadAdler32,
                Some(toml::Value::String(k)) if k == "payload_adler32" => {
                    KeyFactory::PayloadAdler32
                }
                Some(toml::Value::String(k)) if k == "payload_sha256" => KeyFactory::PayloadSha256,
                Some(toml::Value::Table(t))
                    if t.get("metadata").and_then(|v| v.as_str()).is_some() =>
                {
                    KeyFactory::Metadata(t["metadata"].as_str().unwrap_or_default().to_string())
                }
                Some(other) => {
                    return Err(Error::Config(format!(
                        "middleware deduplicator.key: {other}: expected \"payload_adler32\", \"payload_sha256\" or {{ metadata = \"KEY\" }}"
                    )));
                }
            };
            Arc::new(Deduplicator::new(keys, s.window))
        }
        "poison_queue" => {
            let s: PoisonSettings = settings("poison_queue", entry)?;
            Arc::new(PoisonQueue::new(publisher(s.pubsub.as_deref())?, s.topic)?)
        }
        other => {
            return Err(Error::Config(format!(
                "unknown middleware {other:?}; expected one of {NAMES}"
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
