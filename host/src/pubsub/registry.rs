//! From the config's `kind` to a connected backend (Spin's runtime-config pattern): one match
//! arm per backend, each deserializing its own settings table.

use std::sync::Arc;

use serde::de::DeserializeOwned;

use super::memory::{MemoryConfig, MemoryPubSub};
use super::{DynPublisher, DynSubscriber};
use crate::error::{Error, Result};

/// Every backend kind this build knows, in the order the docs list them.
pub const KINDS: &[&str] = &[
    "memory", "sqlite", "redis", "nats", "postgres", "mysql", "amqp", "mqtt",
];

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

    #[allow(dead_code)] // unused when no network backend is compiled in
    /// The same backend whose tails are made by `make` (a subscriber in a group of its own).
    fn with_tail<S, F>(mut self, make: F) -> Backend
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

    fn shared<T>(name: &str, kind: &str, ps: T) -> Backend
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
#[allow(dead_code)] // unused when no network backend is compiled in
fn tail_group() -> String {
    format!("tail-{}", uuid::Uuid::new_v4().simple())
}

fn settings<T: DeserializeOwned>(name: &str, settings: &toml::Table) -> Result<T> {
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

/// Connects the backend `name` of kind `kind` with its `settings` (the `[pubsub.NAME]` table
/// without `kind`). Errors name the backend and, for a bad setting, the key.
pub async fn connect(name: &str, kind: &str, table: &toml::Table) -> Result<Backend> {
    match kind {
        "memory" => {
            let cfg: MemoryConfig = settings(name, table)?;
            Ok(Backend::shared(name, kind, MemoryPubSub::new(cfg)))
        }
        #[cfg(feature = "sqlite")]
        "sqlite" => {
            let cfg: super::sqlite::SqliteConfig = settings(name, table)?;
            let ps = super::sqlite::SqlitePubSub::connect(cfg).await?;
            let mut b = Backend::shared(name, kind, ps.clone());
            // A tail reads in a group of its own, so it does not take messages from handlers.
            b.tail = Arc::new(move || {
                let ps = ps.clone();
                Box::pin(async move { Ok(Arc::new(ps.tail_subscriber().await?) as DynSubscriber) })
            });
            Ok(b)
        }
        #[cfg(feature = "redis")]
        "redis" => {
            let cfg: super::redis::RedisConfig = settings(name, table)?;
            let ps = super::redis::RedisPubSub::connect(cfg).await?;
            Ok(Backend::shared(name, kind, ps.clone())
                .with_tail(move || ps.in_group(&tail_group(), true)))
        }
        #[cfg(feature = "nats")]
        "nats" => {
            let cfg: super::nats::NatsConfig = settings(name, table)?;
            let ps = super::nats::NatsPubSub::connect(cfg).await?;
            Ok(Backend::shared(name, kind, ps.clone())
                .with_tail(move || ps.in_group(&tail_group(), true)))
        }
        #[cfg(feature = "postgres")]
        "postgres" => {
            let cfg: super::postgres::PostgresConfig = settings(name, table)?;
            let ps = super::postgres::PostgresPubSub::connect(cfg).await?;
            let mut b = Backend::shared(name, kind, ps.clone());
            b.tail = Arc::new(move || {
                let ps = ps.clone();
                Box::pin(async move { Ok(Arc::new(ps.tail_subscriber().await?) as DynSubscriber) })
            });
            Ok(b)
        }
        #[cfg(feature = "amqp")]
        "amqp" => {
            let cfg: super::amqp::AmqpConfig = settings(name, table)?;
            let ps = super::amqp::AmqpPubSub::connect(cfg).await?;
            // An exclusive auto-delete queue of its own: reads without taking from the groups.
            Ok(Backend::shared(name, kind, ps.clone()).with_tail(move || ps.tail_subscriber()))
        }
        #[cfg(feature = "mysql")]
        "mysql" => {
            let cfg: super::mysql::MysqlConfig = settings(name, table)?;
            let ps = super::mysql::MysqlPubSub::connect(cfg).await?;
            // A tail reads in a fresh group from the end; closing it leaves `ps` open.
            Ok(Backend::shared(name, kind, ps.clone()).with_tail(move || ps.tail_subscriber()))
        }
        #[cfg(feature = "mqtt")]
        "mqtt" => {
            let cfg: super::mqtt::MqttConfig = settings(name, table)?;
            let ps = super::mqtt::MqttPubSub::connect(cfg).await?;
            // A clean session on the plain topic: sees every message, takes none from groups.
            Ok(Backend::shared(name, kind, ps.clone()).with_tail(move || ps.tail_subscriber()))
        }
        other if KINDS.contains(&other) => Err(Error::Config(format!(
            "pubsub.{name}.kind: backend {other:?} is not compiled into this build of wasmill"
        ))),
        other => Err(Error::Config(format!(
            "pubsub.{name}.kind: unknown backend {other:?}; expected one of {}",
            KINDS.join(", ")
        ))),
    }
}

/// Checks the settings of backend `name` of kind `kind` without connecting: the same errors
/// (naming the key) that [`connect`] would give for them.
pub fn check_settings(name: &str, kind: &str, table: &toml::Table) -> Result<()> {
    #[allow(unused_macros)] // when no network backend is compiled in
    macro_rules! check {
        ($module:ident, $config:ident) => {
            settings::<super::$module::$config>(name, table).map(|_| ())
        };
    }
    match kind {
        "memory" => settings::<MemoryConfig>(name, table).map(|_| ()),
        #[cfg(feature = "sqlite")]
        "sqlite" => check!(sqlite, SqliteConfig),
        #[cfg(feature = "redis")]
        "redis" => check!(redis, RedisConfig),
        #[cfg(feature = "nats")]
        "nats" => check!(nats, NatsConfig),
        #[cfg(feature = "postgres")]
        "postgres" => check!(postgres, PostgresConfig),
        #[cfg(feature = "amqp")]
        "amqp" => check!(amqp, AmqpConfig),
        #[cfg(feature = "mysql")]
        "mysql" => check!(mysql, MysqlConfig),
        #[cfg(feature = "mqtt")]
        "mqtt" => check!(mqtt, MqttConfig),
        other => Err(Error::Config(format!(
            "pubsub.{name}.kind: backend {other:?} is unknown or not compiled into this build"
        ))),
    }
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
) -> Result<Option<super::RawBenchFigures>> {
    let _ = (name, table, messages, payload_size);
    // One arm per backend: read its settings for the URL, run its module's raw loops.
    #[allow(unused_macros)] // when no network backend is compiled in
    macro_rules! raw {
        ($module:ident, $config:ident) => {{
            let cfg: super::$module::$config = settings(name, table)?;
            Ok(Some(
                super::$module::raw_bench(&cfg.url, messages, payload_size).await?,
            ))
        }};
    }
    match kind {
        #[cfg(feature = "sqlite")]
        "sqlite" => raw!(sqlite, SqliteConfig),
        #[cfg(feature = "redis")]
        "redis" => raw!(redis, RedisConfig),
        #[cfg(feature = "nats")]
        "nats" => raw!(nats, NatsConfig),
        #[cfg(feature = "postgres")]
        "postgres" => raw!(postgres, PostgresConfig),
        #[cfg(feature = "amqp")]
        "amqp" => raw!(amqp, AmqpConfig),
        #[cfg(feature = "mysql")]
        "mysql" => raw!(mysql, MysqlConfig),
        #[cfg(feature = "mqtt")]
        "mqtt" => raw!(mqtt, MqttConfig),
        _ => Ok(None),
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
        let err = connect("x", "kafka", &toml::Table::new())
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("unknown backend \"kafka\""), "{err}");
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
