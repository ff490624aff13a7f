//! From the config's `kind` to a connected backend (Spin's runtime-config pattern): one
//! [`BackendKind`] per backend, declared in the backend's own folder and listed in
//! [`BACKENDS`]; each deserializes its own settings table.

use std::sync::Arc;

use serde::de::DeserializeOwned;

use futures::future::BoxFuture;

use super::{DynPublisher, DynSubscriber};
use crate::bench::raw::RawBenchFigures;
use crate::error::{Error, Result};

/// Every backend kind this build knows, in the order the docs list them.
pub const KINDS: &[&str] = &[
    "memory",
    "sqlite",
    "redis",
    "nats",
    "postgres",
    "mysql",
    "amqp",
    "mqtt",
    "kafka",
    "mysql-binlog",
];

/// The kinds that are sources only: subscribed to, never published to (a handler's poison
/// queue on one goes to the default pub/sub instead).
pub const SOURCES: &[&str] = &["mysql-binlog"];

/// A connected backend: its publisher and subscriber (often the same value), and how to make
/// a subscriber that reads a topic without taking messages from the real consumers (for
/// `tail` and the SSE endpoint).
#[derive(Clone)]
pub struct Backend {
    /// The config name (`[pubsub.NAME]`).
    pub name: String,
    /// The kind (`memory`, `redis`, ...).
    pub kind: String,
    /// Publishes to the backend.
    pub publisher: DynPublisher,
    /// Subscribes with the configured consumer group.
    pub subscriber: DynSubscriber,
    tail: Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<DynSubscriber>> + Send + Sync>,
}

impl Backend {
    /// A subscriber in a consumer group of its own, so reading does not steal messages from
    /// the handlers (for fan-out backends, the shared subscriber).
    pub async fn tail_subscriber(&self) -> Result<DynSubscriber> {
        (self.tail)().await
    }

    /// The same backend whose tails are made by `make` (a subscriber in a group of its own).
    pub fn with_tail<S, F>(mut self, make: F) -> Backend
    where
        S: super::Subscriber,
        F: Fn() -> S + Send + Sync + 'static,
    {
        self.tail = Arc::new(move || {
            let tail: DynSubscriber = Arc::new(make());
            Box::pin(async move { Ok(tail) })
        });
        self
    }

    /// The same backend whose tails are made by the future `make` returns.
    pub fn with_async_tail<F>(mut self, make: F) -> Backend
    where
        F: Fn() -> futures::future::BoxFuture<'static, Result<DynSubscriber>>
            + Send
            + Sync
            + 'static,
    {
        self.tail = Arc::new(make);
        self
    }

    /// A backend whose publisher and subscriber are `ps`, and whose tail is `ps` too (fan-out
    /// backends: a tail takes nothing from the others).
    pub fn shared<T>(name: &str, kind: &str, ps: T) -> Backend
    where
        T: super::Publisher + super::Subscriber + Clone,
    {
        let sub: DynSubscriber = Arc::new(ps.clone());
        let tail_sub = sub.clone();
        Backend {
            name: name.to_string(),
            kind: kind.to_string(),
            publisher: Arc::new(ps),
            subscriber: sub,
            tail: Arc::new(move || {
                let s = tail_sub.clone();
                Box::pin(async move { Ok(s) })
            }),
        }
    }
}

/// A fresh consumer group name for one tail.
pub fn tail_group() -> String {
    format!("tail-{}", uuid::Uuid::new_v4().simple())
}

/// The `[pubsub.NAME]` table as settings of type `T`; the error names the key.
pub fn settings<T: DeserializeOwned>(name: &str, settings: &toml::Table) -> Result<T> {
    let value = toml::Value::Table(settings.clone());
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let key = if path == "." || path.is_empty() {
            format!("pubsub.{name}")
        } else {
            format!("pubsub.{name}.{path}")
        };
        Error::Config(format!("{key}: {}", e.into_inner()))
    })
}

/// Connects a backend from its config name and its settings table.
pub type ConnectFn = fn(String, toml::Table) -> BoxFuture<'static, Result<Backend>>;

/// Runs a broker's raw client loops (`messages` of `payload_size` bytes) against the server
/// that a backend's settings name ([`crate::bench::raw`]).
pub type RawBenchFn =
    fn(String, toml::Table, usize, usize) -> BoxFuture<'static, Result<RawBenchFigures>>;

/// One kind of backend as the registry knows it. Each backend's folder declares its own
/// (`pubsub::<kind>::BACKEND`) and [`BACKENDS`] lists them: adding a backend is a folder and
/// one line there.
pub struct BackendKind {
    /// The config's `kind`.
    pub name: &'static str,
    /// Checks a settings table without connecting ([`check_as`] of the config type).
    pub check: fn(&str, &toml::Table) -> Result<()>,
    /// Connects.
    pub connect: ConnectFn,
    /// The raw client's loops, for `wasmill bench`; `None` without a separate client.
    pub raw_bench: Option<RawBenchFn>,
}

/// The backends compiled into this build.
pub const BACKENDS: &[BackendKind] = &[
    super::memory::BACKEND,
    #[cfg(feature = "sqlite")]
    super::sqlite::BACKEND,
    #[cfg(feature = "redis")]
    super::redis::BACKEND,
    #[cfg(feature = "nats")]
    super::nats::BACKEND,
    #[cfg(feature = "postgres")]
    super::postgres::BACKEND,
    #[cfg(feature = "mysql")]
    super::mysql::BACKEND,
    #[cfg(feature = "amqp")]
    super::amqp::BACKEND,
    #[cfg(feature = "mqtt")]
    super::mqtt::BACKEND,
    #[cfg(feature = "kafka")]
    super::kafka::BACKEND,
    #[cfg(feature = "mysql-binlog")]
    super::binlog::BACKEND,
];

/// Checks `table` as settings of type `C`: the error names the key (`pubsub.NAME.KEY`).
pub fn check_as<C: DeserializeOwned>(name: &str, table: &toml::Table) -> Result<()> {
    settings::<C>(name, table).map(|_| ())
}

/// The backend kind `kind` of the backend `name`, or an error saying it is unknown or not
/// compiled into this build.
fn kind_of(name: &str, kind: &str) -> Result<&'static BackendKind> {
    if let Some(found) = BACKENDS.iter().find(|b| b.name == kind) {
        return Ok(found);
    }
    Err(Error::Config(if KINDS.contains(&kind) {
        format!("pubsub.{name}.kind: backend {kind:?} is not compiled into this build of wasmill")
    } else {
        format!(
            "pubsub.{name}.kind: unknown backend {kind:?}; expected one of {}",
            KINDS.join(", ")
        )
    }))
}

/// Connects the backend `name` of kind `kind` with its `settings` (the `[pubsub.NAME]` table
/// without `kind`). Errors name the backend and, for a bad setting, the key.
pub async fn connect(name: &str, kind: &str, table: &toml::Table) -> Result<Backend> {
    (kind_of(name, kind)?.connect)(name.to_string(), table.clone()).await
}

/// Checks the settings of backend `name` of kind `kind` without connecting: the same errors
/// (naming the key) that [`connect`] would give for them.
pub fn check_settings(name: &str, kind: &str, table: &toml::Table) -> Result<()> {
    (kind_of(name, kind)?.check)(name, table)
}

/// Runs the raw client's own publish and consume loops against the server the backend
/// `name` of kind `kind` would use, so `wasmill bench` can quote its figures as a ratio of
/// them. `None` for backends without a separate client (the in-memory one).
pub async fn raw_bench(
    name: &str,
    kind: &str,
    table: &toml::Table,
    messages: usize,
    payload_size: usize,
) -> Result<Option<RawBenchFigures>> {
    match kind_of(name, kind)?.raw_bench {
        Some(run) => Ok(Some(
            run(name.to_string(), table.clone(), messages, payload_size).await?,
        )),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_with_settings() {
        let table: toml::Table =
            toml::from_str("persistent = true\nredelivery_delay = \"5ms\"").unwrap();
        let b = connect("mem", "memory", &table).await.unwrap();
        assert_eq!(b.publisher.name(), "memory");
        b.tail_subscriber().await.unwrap();
    }

    #[tokio::test]
    async fn errors_name_the_key() {
        let table: toml::Table = toml::from_str("persistant = true").unwrap();
        let err = connect("mem", "memory", &table)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("pubsub.mem") && err.contains("persistant"),
            "{err}"
        );
        let table: toml::Table = toml::from_str("redelivery_delay = \"soon\"").unwrap();
        let err = connect("mem", "memory", &table)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("pubsub.mem.redelivery_delay"), "{err}");
        let err = connect("x", "kafkaa", &toml::Table::new())
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("unknown backend \"kafkaa\""), "{err}");
    }

    /// Every `[pubsub.NAME]` example in docs/CONFIG.md is valid for its backend, so the
    /// documentation cannot drift from the settings the code accepts.
    #[test]
    fn every_backend_example_in_config_md_is_valid() {
        let doc = include_str!("../../../docs/CONFIG.md");
        let mut kinds_seen = std::collections::BTreeSet::new();
        for block in doc.split("```toml").skip(1) {
            let block = block.split("```").next().unwrap_or_default();
            let parsed: toml::Table = toml::from_str(block).unwrap_or_else(|e| {
                panic!("docs/CONFIG.md toml block does not parse: {e}\n{block}")
            });
            let Some(toml::Value::Table(pubsubs)) = parsed.get("pubsub") else {
                continue;
            };
            for (name, entry) in pubsubs {
                let mut table = entry.as_table().expect("a [pubsub.NAME] table").clone();
                let kind = table
                    .remove("kind")
                    .and_then(|k| k.as_str().map(str::to_string))
                    .expect("a kind");
                check_settings(name, &kind, &table)
                    .unwrap_or_else(|e| panic!("docs/CONFIG.md [pubsub.{name}]: {e}"));
                kinds_seen.insert(kind);
            }
        }
        for kind in KINDS {
            assert!(
                kinds_seen.contains(*kind),
                "docs/CONFIG.md has no example for kind {kind}"
            );
        }
        let bad: toml::Table = toml::from_str("poll_interval = \"soon\"").unwrap();
        let err = check_settings("db", "sqlite", &bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("pubsub.db.poll_interval"), "{err}");
    }
}
