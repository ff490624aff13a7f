//! A built-in middleware's config entry (`"name"` or `{ name = options }`) parsed into a typed
//! [`MiddlewareSpec`] without side effects (so the whole config can be checked before anything
//! runs), then built.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::{
    CircuitBreaker, CircuitBreakerConfig, CorrelationId, Deduplicator, DelayOnError, Duplicator,
    IgnoreErrors, InstantAck, KeyFactory, PoisonQueue, RandomFail, RandomPanic, Recoverer, Retry,
    RetryConfig, Throttle, Timeout, poison_queue::PoisonQueueConfig,
};
use crate::config::OptionError;
use crate::config::options::parse as options;
use crate::error::{Error, Result};
use crate::pubsub::DynPublisher;
use crate::router::BoxMiddleware;

/// Every built-in name, for error messages and the docs.
pub const NAMES: &[&str] = &[
    "recoverer",
    "correlation_id",
    "retry",
    "timeout",
    "poison_queue",
    "throttle",
    "circuit_breaker",
    "duplicator",
    "ignore_errors",
    "instant_ack",
    "random_fail",
    "random_panic",
    "deduplicator",
    "delay_on_error",
    "cqrs",
];

/// The options a built-in middleware takes as a table (empty: none, or not a table).
pub fn option_names(name: &str) -> &'static [&'static str] {
    use crate::config::options::field_names;
    match name {
        "retry" => field_names::<RetryConfig>(),
        "circuit_breaker" => field_names::<CircuitBreakerConfig>(),
        "delay_on_error" => field_names::<DelayOnError>(),
        "poison_queue" => field_names::<PoisonQueueConfig>(),
        "timeout" => field_names::<TimeoutOptions>(),
        "throttle" => field_names::<ThrottleOptions>(),
        "deduplicator" => field_names::<DedupOptions>(),
        "cqrs" => field_names::<crate::components::cqrs::middleware::CqrsOptions>(),
        _ => &[],
    }
}

/// A built-in middleware with its options, checked.
#[derive(Debug, Clone)]
pub enum MiddlewareSpec {
    /// `recoverer`.
    Recoverer,
    /// `correlation_id`.
    CorrelationId,
    /// `duplicator`.
    Duplicator,
    /// `instant_ack`.
    InstantAck,
    /// `{ retry = { … } }`.
    Retry(RetryConfig),
    /// `{ timeout = "1s" }` or `{ timeout = { after = "1s" } }`.
    Timeout(Duration),
    /// `{ poison_queue = { topic, pubsub, errors, reason_contains } }`.
    PoisonQueue(PoisonQueueConfig),
    /// `{ throttle = { count, per } }`.
    Throttle {
        /// Messages per period.
        count: u32,
        /// The period.
        per: Duration,
    },
    /// `{ circuit_breaker = { … } }`.
    CircuitBreaker(CircuitBreakerConfig),
    /// `{ ignore_errors = ["reason substring", …] }`.
    IgnoreErrors(Vec<String>),
    /// `{ random_fail = 0.1 }`.
    RandomFail(f64),
    /// `{ random_panic = 0.1 }`.
    RandomPanic(f64),
    /// `{ deduplicator = { key, window } }`.
    Deduplicator {
        /// What makes two messages the same.
        keys: KeyFactory,
        /// How long a key is remembered.
        window: Duration,
    },
    /// `{ delay_on_error = { … } }`.
    DelayOnError(DelayOnError),
    /// `{ cqrs = { name, ack_unknown, events, pubsub } }`.
    Cqrs(crate::components::cqrs::middleware::CqrsOptions),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TimeoutOptions {
    #[serde(with = "crate::config::duration")]
    after: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ThrottleOptions {
    count: u32,
    #[serde(with = "crate::config::duration")]
    per: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DedupOptions {
    #[serde(default)]
    key: Option<toml::Value>,
    #[serde(default = "one_minute", with = "crate::config::duration")]
    window: Duration,
}

fn one_minute() -> Duration {
    Duration::from_secs(60)
}

/// The name of an entry (`"retry"` or the single key of `{ retry = … }`), if it has that shape.
pub fn entry_name(entry: &toml::Value) -> Option<&str> {
    match entry {
        toml::Value::String(s) => Some(s),
        toml::Value::Table(t) if t.len() == 1 => t.keys().next().map(String::as_str),
        _ => None,
    }
}

fn unknown(name: &str) -> OptionError {
    OptionError::new(
        "",
        format!(
            "unknown middleware {name:?}; expected one of {}, or {{ wasm = \"FILE.wasm\" }}",
            NAMES.join(", ")
        ),
    )
}

fn required<'a>(
    opts: Option<&'a toml::Value>,
    example: &str,
) -> std::result::Result<&'a toml::Value, OptionError> {
    opts.ok_or_else(|| OptionError::new("", format!("needs options, e.g. {example}")))
}

fn probability(opts: Option<&toml::Value>) -> std::result::Result<f64, OptionError> {
    opts.and_then(|v| v.as_float().or_else(|| v.as_integer().map(|i| i as f64)))
        .filter(|p| (0.0..=1.0).contains(p))
        .ok_or_else(|| OptionError::new("", "expected a probability from 0.0 to 1.0"))
}

fn dedup_keys(key: Option<&toml::Value>) -> std::result::Result<KeyFactory, OptionError> {
    Ok(match key {
        None => KeyFactory::PayloadAdler32,
        Some(toml::Value::String(k)) if k == "payload_adler32" => KeyFactory::PayloadAdler32,
        Some(toml::Value::String(k)) if k == "payload_sha256" => KeyFactory::PayloadSha256,
        Some(toml::Value::Table(t))
            if t.len() == 1 && t.get("metadata").is_some_and(|v| v.is_str()) =>
        {
            KeyFactory::Metadata(t["metadata"].as_str().unwrap_or_default().to_string())
        }
        Some(other) => {
            return Err(OptionError::new(
                "key",
                format!(
                    "{other}: expected \"payload_adler32\", \"payload_sha256\" or {{ metadata = \"KEY\" }}"
                ),
            ));
        }
    })
}

impl MiddlewareSpec {
    /// Parses and checks one entry. An error's key starts with the middleware's name
    /// (`retry.initial_interval`), or is empty when the entry itself is wrong.
    pub fn parse(entry: &toml::Value) -> std::result::Result<MiddlewareSpec, OptionError> {
        let (name, opts) = match entry {
            toml::Value::String(s) => (s.as_str(), None),
            toml::Value::Table(t) if t.len() == 1 => {
                let (k, v) = t.iter().next().expect("one key");
                (k.as_str(), Some(v))
            }
            other => {
                return Err(OptionError::new(
                    "",
                    format!(
                        "{other}: expected a middleware name or a table with one key, e.g. {{ retry = {{ max_retries = 3 }} }}"
                    ),
                ));
            }
        };
        if !NAMES.contains(&name) && name != "wasm" {
            // Reported on the entry, not under the unknown name.
            return Err(unknown(name));
        }
        Self::parse_named(name, opts).map_err(|e| e.under(name))
    }

    fn parse_named(
        name: &str,
        opts: Option<&toml::Value>,
    ) -> std::result::Result<MiddlewareSpec, OptionError> {
        let none = || -> std::result::Result<(), OptionError> {
            match opts {
                None => Ok(()),
                Some(toml::Value::Table(t)) if t.is_empty() => Ok(()),
                Some(_) => Err(OptionError::new("", "takes no options")),
            }
        };
        Ok(match name {
            "recoverer" => none().map(|_| MiddlewareSpec::Recoverer)?,
            "correlation_id" => none().map(|_| MiddlewareSpec::CorrelationId)?,
            "duplicator" => none().map(|_| MiddlewareSpec::Duplicator)?,
            "instant_ack" => none().map(|_| MiddlewareSpec::InstantAck)?,
            "retry" => MiddlewareSpec::Retry(opts.map(options).transpose()?.unwrap_or_default()),
            "circuit_breaker" => {
                MiddlewareSpec::CircuitBreaker(opts.map(options).transpose()?.unwrap_or_default())
            }
            "delay_on_error" => {
                MiddlewareSpec::DelayOnError(opts.map(options).transpose()?.unwrap_or_default())
            }
            "timeout" => {
                let after = match required(opts, "{ timeout = \"1s\" }")? {
                    toml::Value::String(s) => {
                        crate::config::duration::parse(s).map_err(|e| OptionError::new("", e))?
                    }
                    v @ toml::Value::Table(_) => options::<TimeoutOptions>(v)?.after,
                    _ => {
                        return Err(OptionError::new(
                            "",
                            "expected a duration such as \"1s\" or { after = \"1s\" }",
                        ));
                    }
                };
                MiddlewareSpec::Timeout(after)
            }
            "cqrs" => {
                let o: crate::components::cqrs::middleware::CqrsOptions =
                    options(required(opts, "{ cqrs = { name = \"PlaceOrder\" } }")?)?;
                o.check()?;
                MiddlewareSpec::Cqrs(o)
            }
            "poison_queue" => {
                let cfg: PoisonQueueConfig =
                    options(required(opts, "{ poison_queue = { topic = \"poison\" } }")?)?;
                cfg.check()?;
                MiddlewareSpec::PoisonQueue(cfg)
            }
            "throttle" => {
                let o: ThrottleOptions = options(required(
                    opts,
                    "{ throttle = { count = 10, per = \"1s\" } }",
                )?)?;
                if o.count == 0 {
                    return Err(OptionError::new("count", "must be positive"));
                }
                if o.per.is_zero() {
                    return Err(OptionError::new("per", "must be positive"));
                }
                MiddlewareSpec::Throttle {
                    count: o.count,
                    per: o.per,
                }
            }
            "ignore_errors" => {
                let list: Vec<String> = match opts {
                    None => Vec::new(),
                    Some(v) => v.clone().try_into().map_err(|_| {
                        OptionError::new("", "expected a list of reason substrings")
                    })?,
                };
                MiddlewareSpec::IgnoreErrors(list)
            }
            "random_fail" => MiddlewareSpec::RandomFail(probability(opts)?),
            "random_panic" => MiddlewareSpec::RandomPanic(probability(opts)?),
            "deduplicator" => {
                let o: DedupOptions = match opts {
                    None => DedupOptions {
                        key: None,
                        window: one_minute(),
                    },
                    Some(v) => options(v)?,
                };
                MiddlewareSpec::Deduplicator {
                    keys: dedup_keys(o.key.as_ref())?,
                    window: o.window,
                }
            }
            "wasm" => {
                return Err(OptionError::new(
                    "",
                    "a { wasm = \"FILE.wasm\" } entry is a component, built by the host",
                ));
            }
            other => return Err(unknown(other)),
        })
    }

    /// The pub/sub it publishes on: `Some(None)` for the default one, `None` when it does not
    /// publish.
    pub fn publishes_on(&self) -> Option<Option<&str>> {
        match self {
            MiddlewareSpec::PoisonQueue(c) => Some(c.pubsub.as_deref()),
            MiddlewareSpec::Cqrs(c) if c.events.is_some() => Some(c.pubsub.as_deref()),
            _ => None,
        }
    }

    /// Builds the middleware; `publisher` resolves a pub/sub name (or the default).
    pub fn build(
        &self,
        publisher: &dyn Fn(Option<&str>) -> Result<DynPublisher>,
    ) -> Result<BoxMiddleware> {
        Ok(match self {
            MiddlewareSpec::Recoverer => Arc::new(Recoverer),
            MiddlewareSpec::CorrelationId => Arc::new(CorrelationId),
            MiddlewareSpec::Duplicator => Arc::new(Duplicator),
            MiddlewareSpec::InstantAck => Arc::new(InstantAck),
            MiddlewareSpec::Retry(c) => Arc::new(Retry::new(c.clone())),
            MiddlewareSpec::Timeout(after) => Arc::new(Timeout::new(*after)),
            MiddlewareSpec::PoisonQueue(c) => Arc::new(PoisonQueue::from_config(
                publisher(c.pubsub.as_deref())?,
                c,
            )?),
            MiddlewareSpec::Throttle { count, per } => Arc::new(Throttle::new(*count, *per)),
            MiddlewareSpec::CircuitBreaker(c) => Arc::new(CircuitBreaker::new(*c)),
            MiddlewareSpec::IgnoreErrors(l) => Arc::new(IgnoreErrors::new(l.clone())),
            MiddlewareSpec::RandomFail(p) => Arc::new(RandomFail::new(*p)),
            MiddlewareSpec::RandomPanic(p) => Arc::new(RandomPanic::new(*p)),
            MiddlewareSpec::Deduplicator { keys, window } => {
                Arc::new(Deduplicator::new(keys.clone(), *window))
            }
            MiddlewareSpec::DelayOnError(d) => Arc::new(*d),
            MiddlewareSpec::Cqrs(c) => Arc::new(crate::components::cqrs::middleware::Cqrs::new(
                c.clone(),
                publisher(c.pubsub.as_deref())?,
            )),
        })
    }
}

/// Builds a built-in middleware from its config entry (a name or a single-key table);
/// `publisher` resolves a pubsub name (or the default) for middleware that publish.
pub fn from_config(
    entry: &toml::Value,
    publisher: &dyn Fn(Option<&str>) -> Result<DynPublisher>,
) -> Result<BoxMiddleware> {
    MiddlewareSpec::parse(entry)
        .map_err(|e| {
            Error::Config(if e.key.is_empty() {
                format!("middleware: {}", e.message)
            } else {
                format!("middleware {e}")
            })
        })?
        .build(publisher)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(text: &str) -> toml::Value {
        let t: toml::Table = toml::from_str(&format!("m = {text}")).unwrap();
        t["m"].clone()
    }

    fn err(text: &str) -> OptionError {
        MiddlewareSpec::parse(&entry(text)).unwrap_err()
    }

    #[test]
    fn unknown_options_name_the_middleware_and_list_the_known_ones() {
        let e = err(r#"{ retry = { max_retry = 3 } }"#);
        assert_eq!(e.key, "retry");
        assert!(
            e.message.starts_with(
                "unknown option \"max_retry\" (expected max_retries, initial_interval"
            ),
            "{e}"
        );
        for (text, key) in [
            (
                r#"{ circuit_breaker = { failures = 1 } }"#,
                "circuit_breaker",
            ),
            (
                r#"{ delay_on_error = { initial = "1s" } }"#,
                "delay_on_error",
            ),
            (
                r#"{ poison_queue = { topic = "p", error = ["x"] } }"#,
                "poison_queue",
            ),
            (
                r#"{ throttle = { count = 1, per = "1s", burst = 2 } }"#,
                "throttle",
            ),
            (r#"{ deduplicator = { windw = "1m" } }"#, "deduplicator"),
            (r#"{ timeout = { afer = "1s" } }"#, "timeout"),
        ] {
            let e = err(text);
            assert_eq!(e.key, key, "{text}: {e}");
            assert!(e.message.starts_with("unknown option"), "{text}: {e}");
        }
    }

    #[test]
    fn bad_values_and_shapes_are_named() {
        let e = err(r#"{ retry = { initial_interval = "soon" } }"#);
        assert_eq!(e.key, "retry.initial_interval");
        assert!(e.message.contains("\"soon\""), "{e}");
        assert_eq!(err(r#""poison_queue""#).key, "poison_queue");
        assert_eq!(
            err(r#"{ poison_queue = { topic = "" } }"#).key,
            "poison_queue.topic"
        );
        assert_eq!(
            err(r#"{ poison_queue = { topic = "p", errors = ["nope"] } }"#).key,
            "poison_queue.errors[0]"
        );
        assert_eq!(
            err(r#"{ throttle = { count = 0, per = "1s" } }"#).key,
            "throttle.count"
        );
        assert_eq!(err(r#"{ random_fail = 2 }"#).key, "random_fail");
        assert_eq!(
            err(r#"{ recoverer = { x = 1 } }"#).message,
            "takes no options"
        );
        assert_eq!(
            err(r#"{ deduplicator = { key = "md5" } }"#).key,
            "deduplicator.key"
        );
        let e = err(r#""retyr""#);
        assert_eq!(e.key, "");
        assert!(
            e.message.contains("\"retyr\"") && e.message.contains("retry"),
            "{e}"
        );
        assert_eq!(err(r#"{ retry = {}, timeout = "1s" }"#).key, "");
    }

    #[test]
    fn every_valid_entry_parses_and_builds() {
        let p = |_: Option<&str>| -> Result<DynPublisher> {
            Ok(Arc::new(crate::pubsub::memory::MemoryPubSub::default()))
        };
        for text in [
            r#""recoverer""#,
            r#""correlation_id""#,
            r#"{ retry = { max_retries = 3, initial_interval = "100ms", max_interval = "1s", multiplier = 2.0, max_elapsed_time = "1m", randomization_factor = 0.1 } }"#,
            r#"{ timeout = "1s" }"#,
            r#"{ timeout = { after = "1s" } }"#,
            r#"{ poison_queue = { topic = "p", pubsub = "memory", errors = ["timeout"], reason_contains = ["x"] } }"#,
            r#""duplicator""#,
            r#""instant_ack""#,
            r#"{ throttle = { count = 10, per = "1s" } }"#,
            r#"{ circuit_breaker = { consecutive_failures = 2, timeout = "1s", max_requests = 1 } }"#,
            r#"{ ignore_errors = ["x"] }"#,
            r#"{ random_fail = 0.1 }"#,
            r#"{ random_panic = 0 }"#,
            r#"{ deduplicator = { key = { metadata = "id" }, window = "5m" } }"#,
            r#"{ delay_on_error = { initial_interval = "1s", max_interval = "1m", multiplier = 2.0 } }"#,
        ] {
            let spec =
                MiddlewareSpec::parse(&entry(text)).unwrap_or_else(|e| panic!("{text}: {e}"));
            spec.build(&p).unwrap();
        }
        let pq = MiddlewareSpec::parse(&entry(
            r#"{ poison_queue = { topic = "p", pubsub = "ev" } }"#,
        ))
        .unwrap();
        assert_eq!(pq.publishes_on(), Some(Some("ev")));
    }
}
