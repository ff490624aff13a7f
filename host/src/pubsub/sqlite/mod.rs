//! SQLite: the embedded durable pub/sub. One file, no server; messages survive a restart of
//! the host, and consumer groups keep their own offsets.
//!
//! Schema: one `wasmill_messages` table for every topic (an autoincrement `offset`, the
//! topic, uuid, metadata as JSON, payload) and one `wasmill_offsets` row per (topic,
//! consumer group) holding the last acked offset. A new group starts at the beginning, so it
//! reads earlier messages. A group delivers one message at a time, in order, to one of its
//! subscriptions (a lock per file, topic and group); acking advances the offset, a nack (or a
//! crash before the ack) delivers the same message again.
//!
//! Consumers wake up at once on a publish made through any `SqlitePubSub` of this process,
//! and otherwise poll every `poll_interval` (for writers in other processes).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Publisher, SubscribeOptions, Subscriber, Subscription, closed, wait_settled};
use crate::error::{Error, Result};
use crate::message::{AckState, Message};
use crate::pubsub::DynSubscriber;
use crate::pubsub::registry::{self, Backend};

mod delayed;

const NAME: &str = "sqlite";
/// Rows in one `INSERT` of a publish: 4 parameters each, far below SQLite's limit of 32,766.
const ROWS_PER_INSERT: usize = 500;

/// Settings of `kind = "sqlite"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqliteConfig {
    /// `sqlite://wasmill.db` (created if missing) or `sqlite::memory:`.
    pub url: String,
    /// The consumer group of this pub/sub's subscriptions (`default` when unset).
    pub consumer_group: Option<String>,
    /// How often consumers look for messages written by other processes.
    #[serde(with = "crate::config::duration")]
    pub poll_interval: Duration,
    /// A new group starts after the last message instead of at the beginning (tails).
    #[serde(skip)]
    pub start_at_end: bool,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        SqliteConfig {
            url: "sqlite://wasmill.db".into(),
            consumer_group: None,
            start_at_end: false,
            poll_interval: Duration::from_millis(100),
        }
    }
}

/// Wakes consumers of one database file when something was published to it.
static WAKERS: LazyLock<Mutex<HashMap<String, Arc<Notify>>>> = LazyLock::new(Default::default);
/// Serializes the delivery of one (file, topic, group) across subscriptions of this process.
type GroupLocks = Mutex<HashMap<(String, String, String), Arc<tokio::sync::Mutex<()>>>>;
static GROUP_LOCKS: LazyLock<GroupLocks> = LazyLock::new(Default::default);

fn waker(url: &str) -> Arc<Notify> {
    WAKERS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(url.to_string())
        .or_default()
        .clone()
}

fn group_lock(url: &str, topic: &str, group: &str) -> Arc<tokio::sync::Mutex<()>> {
    GROUP_LOCKS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry((url.to_string(), topic.to_string(), group.to_string()))
        .or_default()
        .clone()
}

/// The SQLite pub/sub; publisher and subscriber in one.
#[derive(Clone)]
pub struct SqlitePubSub {
    pub(crate) pool: SqlitePool,
    config: Arc<SqliteConfig>,
    wake: Arc<Notify>,
    closed: CancellationToken,
}

pub(crate) fn db_err(what: impl std::fmt::Display, e: sqlx::Error) -> Error {
    Error::pubsub(NAME, what.to_string(), e)
}

impl SqlitePubSub {
    /// Opens (creating if needed) the database and its tables.
    pub async fn connect(config: SqliteConfig) -> Result<Self> {
        let opts = SqliteConnectOptions::from_str(&config.url)
            .map_err(|e| db_err(format!("invalid url {}", config.url), e))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .map_err(|e| db_err(format!("open {}", config.url), e))?;
        for ddl in [
            "CREATE TABLE IF NOT EXISTS wasmill_messages (
                 \"offset\" INTEGER PRIMARY KEY AUTOINCREMENT,
                 topic TEXT NOT NULL, uuid TEXT NOT NULL, metadata TEXT NOT NULL,
                 payload BLOB NOT NULL, created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)",
            "CREATE INDEX IF NOT EXISTS wasmill_messages_topic ON wasmill_messages (topic, \"offset\")",
            "CREATE TABLE IF NOT EXISTS wasmill_offsets (
                 topic TEXT NOT NULL, consumer_group TEXT NOT NULL, acked INTEGER NOT NULL,
                 PRIMARY KEY (topic, consumer_group))",
            delayed::CREATE_TABLE,
            delayed::CREATE_INDEX,
        ] {
            sqlx::query(ddl)
                .execute(&pool)
                .await
                .map_err(|e| db_err(format!("create tables in {}", config.url), e))?;
        }
        Ok(SqlitePubSub {
            pool,
            wake: waker(&config.url),
            config: Arc::new(config),
            closed: CancellationToken::new(),
        })
    }

    /// A subscriber of the same file in a fresh consumer group that starts at the end, for
    /// reading new messages without taking them from other groups.
    pub async fn tail_subscriber(&self) -> Result<SqlitePubSub> {
        let group = format!("tail-{}", uuid::Uuid::new_v4().simple());
        let mut config = (*self.config).clone();
        config.consumer_group = Some(group);
        config.start_at_end = true;
        let mut tail = self.clone();
        tail.config = Arc::new(config);
        // Closing the tail must not close the backend it reads from; closing the backend
        // ends the tail.
        tail.closed = self.closed.child_token();
        Ok(tail)
    }

    fn group(&self) -> &str {
        self.config.consumer_group.as_deref().unwrap_or("default")
    }

    pub(crate) async fn ensure_group(&self, topic: &str) -> Result<()> {
        sqlx::query(
            "INSERT OR IGNORE INTO wasmill_offsets (topic, consumer_group, acked) VALUES (?, ?,
                 CASE WHEN ? THEN COALESCE((SELECT MAX(\"offset\") FROM wasmill_messages WHERE topic = ?), 0) ELSE 0 END)",
        )
        .bind(topic)
        .bind(self.group())
            .bind(self.config.start_at_end)
            .bind(topic)
        .execute(&self.pool)
        .await
        .map_err(|e| {
            db_err(
                format!("create consumer group {} of {topic}", self.group()),
                e,
            )
        })?;
        Ok(())
    }
}

#[async_trait]
impl Publisher for SqlitePubSub {
    async fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<()> {
        if self.closed.is_cancelled() {
            return Err(closed(NAME));
        }
        // Most batches hold no delayed message: they are used as they are, not copied apart.
        let is_delayed = |m: &Message| super::delay::due_millis(m).is_some();
        let (later, messages): (Vec<_>, Vec<_>) = if messages.iter().any(is_delayed) {
            messages.into_iter().partition(is_delayed)
        } else {
            (Vec::new(), messages)
        };
        let metadata: Vec<String> = messages
            .iter()
            .map(|m| super::stored::encode_metadata(&m.metadata))
            .collect();
        let mut tx = self.pool.begin().await.map_err(|e| db_err("begin", e))?;
        for m in &later {
            let due = super::delay::due_millis(m).unwrap_or_default();
            delayed::store(&mut tx, topic, m, due)
                .await
                .map_err(|e| db_err(format!("publish to {topic}"), e))?;
        }
        // Many rows per statement: one parse and one round through SQLite's VM per chunk
        // instead of per message.
        for (chunk, metadata) in messages
            .chunks(ROWS_PER_INSERT)
            .zip(metadata.chunks(ROWS_PER_INSERT))
        {
            let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO wasmill_messages (topic, uuid, metadata, payload) ",
            );
            insert.push_values(chunk.iter().zip(metadata), |mut row, (m, metadata)| {
                row.push_bind(topic)
                    .push_bind(&m.uuid)
                    .push_bind(metadata)
                    .push_bind(&m.payload[..]);
            });
            insert
                .build()
                .execute(&mut *tx)
                .await
                .map_err(|e| db_err(format!("publish to {topic}"), e))?;
        }
        tx.commit()
            .await
            .map_err(|e| db_err(format!("publish to {topic}"), e))?;
        self.wake.notify_waiters();
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        self.closed.cancel();
        Ok(())
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

#[async_trait]
impl Subscriber for SqlitePubSub {
    async fn subscribe_initialize(&self, topic: &str) -> Result<()> {
        self.ensure_group(topic).await
    }

    async fn subscribe_with(
        &self,
        topic: &str,
        _options: SubscribeOptions,
    ) -> Result<Subscription> {
        if self.closed.is_cancelled() {
            return Err(closed(NAME));
        }
        self.ensure_group(topic).await?;
        let (sub, sender) = Subscription::channel(1, &self.closed);
        super::delay::spawn_mover(
            NAME,
            topic,
            sender.cancellation().clone(),
            Duration::from_secs(10),
            self.clone(),
            |this, topic| async move { this.move_due(&topic).await.map_err(|e| e.to_string()) },
        );
        let this = self.clone();
        let topic = topic.to_string();
        tokio::spawn(async move {
            if let Err(e) = this.deliver(&topic, &sender).await {
                tracing::error!(topic, "sqlite subscription ended: {e}");
            }
        });
        Ok(sub)
    }

    async fn close(&self) -> Result<()> {
        Publisher::close(self).await
    }

    async fn end_tail(&self, topic: &str) -> Result<()> {
        // The pool is shared with the backend the tail reads from: only its row goes.
        sqlx::query("DELETE FROM wasmill_offsets WHERE topic = ? AND consumer_group = ?")
            .bind(topic)
            .bind(self.group())
            .execute(&self.pool)
            .await
            .map_err(|e| db_err(format!("end tail {} of {topic}", self.group()), e))?;
        Ok(())
    }

    async fn remove_topic(&self, topic: &str) -> Result<bool> {
        let failed = |e| db_err(format!("remove topic {topic}"), e);
        let mut tx = self.pool.begin().await.map_err(failed)?;
        let mut removed = 0;
        for sql in [
            "DELETE FROM wasmill_messages WHERE topic = ?",
            "DELETE FROM wasmill_offsets WHERE topic = ?",
            "DELETE FROM wasmill_delayed WHERE topic = ?",
        ] {
            removed += sqlx::query(sql)
                .bind(topic)
                .execute(&mut *tx)
                .await
                .map_err(failed)?
                .rows_affected();
        }
        tx.commit().await.map_err(failed)?;
        Ok(removed > 0)
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

impl SqlitePubSub {
    pub(crate) async fn next_row(&self, topic: &str) -> Result<Option<(i64, Message)>> {
        let row = sqlx::query(
            "SELECT m.\"offset\", m.uuid, m.metadata, m.payload FROM wasmill_messages m
             JOIN wasmill_offsets o ON o.topic = m.topic AND o.consumer_group = ?
             WHERE m.topic = ? AND m.\"offset\" > o.acked ORDER BY m.\"offset\" LIMIT 1",
        )
        .bind(self.group())
        .bind(topic)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_err(format!("read {topic}"), e))?;
        let Some(row) = row else { return Ok(None) };
        let offset: i64 = row.try_get(0).map_err(|e| db_err("read offset", e))?;
        let uuid: String = row.try_get(1).map_err(|e| db_err("read uuid", e))?;
        let metadata: String = row.try_get(2).map_err(|e| db_err("read metadata", e))?;
        let payload: Vec<u8> = row.try_get(3).map_err(|e| db_err("read payload", e))?;
        let mut m = Message::with_uuid(uuid, Bytes::from(payload));
        m.metadata = super::stored::decode_metadata(NAME, &m.uuid, metadata.as_bytes());
        Ok(Some((offset, m)))
    }

    pub(crate) async fn ack(&self, topic: &str, offset: i64) -> Result<()> {
        sqlx::query("UPDATE wasmill_offsets SET acked = ? WHERE topic = ? AND consumer_group = ? AND acked < ?")
            .bind(offset)
            .bind(topic)
            .bind(self.group())
            .bind(offset)
            .execute(&self.pool)
            .await
            .map_err(|e| db_err(format!("ack offset {offset} of {topic}"), e))?;
        Ok(())
    }

    /// The delivery loop of one subscription.
    async fn deliver(&self, topic: &str, sender: &super::SubscriptionSender) -> Result<()> {
        let lock = group_lock(&self.config.url, topic, self.group());
        loop {
            if sender.is_closed() {
                return Ok(());
            }
            // Listen before looking, so a publish between the look and the wait is not missed.
            let woken = self.wake.notified();
            let guard = tokio::select! {
                g = lock.lock() => g,
                _ = sender.closed() => return Ok(()),
            };
            match self.next_row(topic).await? {
                Some((offset, stored)) => {
                    let msg = stored.copy();
                    if sender.send(msg.clone()).await.is_err() {
                        return Ok(());
                    }
                    match wait_settled(&msg, sender).await {
                        AckState::Acked => self.ack(topic, offset).await?,
                        _ => {
                            drop(guard);
                            if let Some(d) = msg.redelivery_delay() {
                                tokio::select! {
                                    _ = tokio::time::sleep(d) => {}
                                    _ = sender.closed() => return Ok(()),
                                }
                            } else {
                                // Let another subscription of the group have a go.
                                tokio::task::yield_now().await;
                            }
                        }
                    }
                }
                None => {
                    drop(guard);
                    tokio::select! {
                        _ = woken => {}
                        _ = tokio::time::sleep(self.config.poll_interval) => {}
                        _ = sender.closed() => return Ok(()),
                    }
                }
            }
        }
    }
}

/// This backend in the registry's table ([`registry::BACKENDS`]).
pub const BACKEND: registry::BackendKind = registry::BackendKind {
    name: "sqlite",
    check: registry::check_as::<SqliteConfig>,
    connect: |name, table| {
        Box::pin(async move {
            let cfg: SqliteConfig = registry::settings(&name, &table)?;
            let ps = SqlitePubSub::connect(cfg).await?;
            // A tail reads in a group of its own, so it does not take messages from handlers.
            Ok(
                Backend::shared(&name, "sqlite", ps.clone()).with_async_tail(move || {
                    let ps = ps.clone();
                    Box::pin(
                        async move { Ok(Arc::new(ps.tail_subscriber().await?) as DynSubscriber) },
                    )
                }),
            )
        })
    },
    raw_bench: Some(|name, table, messages, payload_size| {
        Box::pin(async move {
            let cfg: SqliteConfig = registry::settings(&name, &table)?;
            crate::bench::raw::sqlite::run(&cfg.url, messages, payload_size).await
        })
    }),
};

#[cfg(test)]
mod tests;
