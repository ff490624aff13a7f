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
            let mut b = Backend::shared(name, kind, ps.clone());
            b.tail = Arc::new(move || {
                let tail = ps.in_group(&format!("tail-{}", uuid::Uuid::new_v4().simple()), true);
                Box::pin(async move { Ok(Arc::new(tail) as DynSubscriber) })
            });
            Ok(b)
        }
        #[cfg(feature = "nats")]
        "nats" => {
            let cfg: super::nats::NatsConfig = settings(name, table)?;
            let ps = super::nats::NatsPubSub::connect(cfg).await?;
            let mut b = Backend::shared(name, kind, ps.clone());
            b.tail = Arc::new(move || {
                let tail = ps.in_group(&format!("tail-{}", uuid::Uuid::new_v4().simple()), true);
                Box::pin(async move { Ok(Arc::new(tail) as DynSubscriber) })
            });
            Ok(b)
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
        other if KINDS.contains(&other) => Err(Error::Config(format!(
            "pubsub.{name}.kind: backend {other:?} is not compiled into this build of wasmill"
        ))),
        other => Err(Error::Config(format!(
            "pubsub.{name}.kind: unknown backend {other:?}; expected one of {}",
            KINDS.join(", ")
        ))),
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
}
