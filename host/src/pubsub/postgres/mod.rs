//! PostgreSQL: messages in a table, consumer groups with stored offsets, LISTEN/NOTIFY
//! wake-ups (Watermill #126) with polling as a fallback.
//!
//! Schema: `wasmill_messages` (a `BIGSERIAL` offset, topic, uuid, metadata JSON, payload) and
//! `wasmill_offsets` (topic, consumer group, last acked offset). A delivery runs in a
//! transaction that locks the group's offset row (`SELECT … FOR UPDATE`) until the message is
//! acked (offset advanced, commit) or nacked (rollback): so a group hands each message to one
//! subscriber at a time, in order, across processes, and nothing is lost if a consumer dies.
//! `publish_in_tx` publishes inside a caller's transaction (the outbox pattern); from SQL, in
//! any language's transaction, the function `wasmill_publish` does the same ([`sql_publish`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgSslMode};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::kit::{Reconnect, redacted, tls};
use super::{Publisher, SubscribeOptions, Subscriber, Subscription, closed, wait_settled};
use crate::error::{Error, Result};
use crate::message::{AckState, Message};
use crate::pubsub::DynSubscriber;
use crate::pubsub::registry::{self, Backend};

mod delayed;
mod sql_publish;

const NAME: &str = "postgres";

/// Settings of `kind = "postgres"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// `postgres://user@host:port/db`; TLS with `?sslmode=require` (encrypt),
    /// `verify-ca` or `verify-full` (check the certificate against the system's roots or
    /// `sslrootcert` / `ca_file`).
    pub url: String,
    /// A PEM file of the CA that signed the server's certificate; with no `sslmode` in the URL
    /// it means `verify-full`.
    pub ca_file: Option<PathBuf>,
    /// The consumer group of this pub/sub's subscriptions (`default` when unset).
    pub consumer_group: Option<String>,
    /// How often consumers poll when no NOTIFY arrives (a fallback).
    #[serde(with = "crate::config::duration")]
    pub poll_interval: Duration,
    /// A new group starts after the last message instead of at the beginning (tails).
    #[serde(skip)]
    pub start_at_end: bool,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: "postgres://postgres@127.0.0.1:5432/test".into(),
            ca_file: None,
            consumer_group: None,
            start_at_end: false,
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// Wakes consumers of one database file when something was published to it.
static WAKERS: LazyLock<Mutex<HashMap<String, Arc<Notify>>>> = LazyLock::new(Default::default);
fn waker(url: &str) -> Arc<Notify> {
    WAKERS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(url.to_string())
        .or_default()
        .clone()
}

/// The PostgreSQL pub/sub; publisher and subscriber in one.
#[derive(Clone)]
pub struct PostgresPubSub {
    pub(crate) pool: PgPool,
    config: Arc<PostgresConfig>,
    wake: Arc<Notify>,
    closed: CancellationToken,
    listening: Arc<std::sync::atomic::AtomicBool>,
}

/// Serializes the publishers of one topic (a row lock held until commit), so offsets become
/// visible in increasing order and a consumer never skips one that commits late.
pub(crate) async fn lock_topic(
    conn: &mut <sqlx::Postgres as sqlx::Database>::Connection,
    topic: &str,
) -> Result<()> {
    sqlx::query("INSERT INTO wasmill_topics (topic) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(topic)
        .execute(&mut *conn)
        .await
        .map_err(|e| db_err(format!("register topic {topic}"), e))?;
    sqlx::query("SELECT topic FROM wasmill_topics WHERE topic = $1 FOR UPDATE")
        .bind(topic)
        .execute(&mut *conn)
        .await
        .map_err(|e| db_err(format!("lock topic {topic}"), e))?;
    Ok(())
}

pub(crate) fn db_err(what: impl std::fmt::Display, e: sqlx::Error) -> Error {
    Error::pubsub(NAME, what.to_string(), e)
}

/// The URL's options, with `ca_file` as the root certificate (and `verify-full` unless the URL
/// says which `sslmode`).
fn connect_options(config: &PostgresConfig) -> Result<PgConnectOptions> {
    let shown = redacted(&config.url);
    let options: PgConnectOptions = config
        .url
        .parse()
        .map_err(|e| db_err(format!("invalid url {shown}"), e))?;
    tls::with_sql_ca(
        NAME,
        &config.url,
        config.ca_file.as_ref(),
        "sslmode=",
        options,
        |o, ca| o.ssl_root_cert(ca),
        |o| o.ssl_mode(PgSslMode::VerifyFull),
    )
}

impl PostgresPubSub {
    /// The connection pool, to begin the transactions that publish with [`publish_in_tx`]
    /// (the outbox: see `components::forwarder`).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Opens (creating if needed) the database and its tables.
    pub async fn connect(config: PostgresConfig) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(32)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(connect_options(&config)?)
            .await
            .map_err(|e| db_err(format!("connect {}", redacted(&config.url)), e))?;
        for ddl in [
            "CREATE TABLE IF NOT EXISTS wasmill_topics (topic TEXT PRIMARY KEY)",
            "CREATE TABLE IF NOT EXISTS wasmill_messages (
                 \"offset\" BIGSERIAL PRIMARY KEY,
                 topic TEXT NOT NULL, uuid TEXT NOT NULL, metadata TEXT NOT NULL,
                 payload BYTEA NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now())",
            "CREATE INDEX IF NOT EXISTS wasmill_messages_topic ON wasmill_messages (topic, \"offset\")",
            "CREATE TABLE IF NOT EXISTS wasmill_offsets (
                 topic TEXT NOT NULL, consumer_group TEXT NOT NULL, acked BIGINT NOT NULL,
                 PRIMARY KEY (topic, consumer_group))",
            sql_publish::CREATE_FUNCTION,
            delayed::CREATE_TABLE,
            delayed::CREATE_INDEX,
        ] {
            // Concurrent first connections may race on CREATE: a duplicate is fine.
            if let Err(e) = sqlx::query(ddl).execute(&pool).await
                && !sql_publish::raced(&e.to_string())
            {
                return Err(db_err(
                    format!("create tables in {}", redacted(&config.url)),
                    e,
                ));
            }
        }
        Ok(PostgresPubSub {
            pool,
            wake: waker(&config.url),
            config: Arc::new(config),
            closed: CancellationToken::new(),
            listening: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        })
    }

    /// A subscriber of the same file in a fresh consumer group that starts at the end, for
    /// reading new messages without taking them from other groups.
    pub async fn tail_subscriber(&self) -> Result<PostgresPubSub> {
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

    pub(crate) fn group(&self) -> &str {
        self.config.consumer_group.as_deref().unwrap_or("default")
    }

    pub(crate) async fn ensure_group(&self, topic: &str) -> Result<()> {
        // Concurrent first subscribers may deadlock on the insert: try again.
        let mut attempt = 0;
        loop {
            match self.ensure_group_once(topic).await {
                Err(e) if attempt < 5 && e.to_string().contains("eadlock") => attempt += 1,
                other => return other,
            }
        }
    }

    async fn ensure_group_once(&self, topic: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO wasmill_offsets (topic, consumer_group, acked) VALUES ($1, $2,
                 CASE WHEN $3 THEN COALESCE((SELECT MAX(\"offset\") FROM wasmill_messages WHERE topic = $4), 0) ELSE 0 END)
             ON CONFLICT DO NOTHING",
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
impl Publisher for PostgresPubSub {
    async fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<()> {
        if self.closed.is_cancelled() {
            return Err(closed(NAME));
        }
        let mut tx = self.pool.begin().await.map_err(|e| db_err("begin", e))?;
        lock_topic(&mut tx, topic).await?;
        for m in &messages {
            if let Some(due) = super::delay::due_millis(m) {
                delayed::store(&mut tx, topic, m, due)
                    .await
                    .map_err(|e| db_err(format!("publish to {topic}"), e))?;
                continue;
            }
            let metadata = super::stored::encode_metadata(&m.metadata);
            sqlx::query(
                "INSERT INTO wasmill_messages (topic, uuid, metadata, payload) VALUES ($1, $2, $3, $4)",
            )
            .bind(topic)
            .bind(&m.uuid)
            .bind(metadata)
            .bind(&m.payload[..])
            .execute(&mut *tx)
            .await
            .map_err(|e| db_err(format!("publish to {topic}"), e))?;
        }
        sqlx::query("SELECT pg_notify('wasmill', $1)")
            .bind(topic)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_err(format!("notify {topic}"), e))?;
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
impl Subscriber for PostgresPubSub {
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
                tracing::error!(topic, "postgres subscription ended: {e}");
            }
        });
        Ok(sub)
    }

    async fn close(&self) -> Result<()> {
        Publisher::close(self).await
    }

    async fn end_tail(&self, topic: &str) -> Result<()> {
        // The pool is shared with the backend the tail reads from: only its row goes.
        sqlx::query("DELETE FROM wasmill_offsets WHERE topic = $1 AND consumer_group = $2")
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
            "DELETE FROM wasmill_messages WHERE topic = $1",
            "DELETE FROM wasmill_offsets WHERE topic = $1",
            "DELETE FROM wasmill_delayed WHERE topic = $1",
            "DELETE FROM wasmill_topics WHERE topic = $1",
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

impl PostgresPubSub {
    /// Locks the group's offset row and reads the next message after it, inside `tx`.
    pub(crate) async fn next_row(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        topic: &str,
    ) -> Result<Option<(i64, Message)>> {
        let acked: Option<i64> = sqlx::query_scalar(
            "SELECT acked FROM wasmill_offsets WHERE topic = $1 AND consumer_group = $2 FOR UPDATE",
        )
        .bind(topic)
        .bind(self.group())
        .fetch_optional(&mut **tx)
        .await
        .map_err(|e| db_err(format!("lock offset of {topic}"), e))?;
        let Some(acked) = acked else { return Ok(None) };
        let row = sqlx::query(
            "SELECT \"offset\", uuid, metadata, payload FROM wasmill_messages
             WHERE topic = $1 AND \"offset\" > $2 ORDER BY \"offset\" LIMIT 1",
        )
        .bind(topic)
        .bind(acked)
        .fetch_optional(&mut **tx)
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

    /// Wakes this pub/sub's consumers on NOTIFY (one listener connection per pub/sub, started
    /// with its first subscription) until it is closed.
    async fn listen(&self) {
        loop {
            match PgListener::connect_with(&self.pool).await {
                Ok(mut l) => {
                    if l.listen("wasmill").await.is_ok() {
                        loop {
                            tokio::select! {
                                n = l.recv() => match n {
                                    Ok(_) => self.wake.notify_waiters(),
                                    Err(e) => {
                                        tracing::warn!("postgres LISTEN: {e}; reconnecting");
                                        break;
                                    }
                                },
                                _ = self.closed.cancelled() => return,
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(url = %redacted(&self.config.url), "postgres LISTEN: {e}"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = self.closed.cancelled() => return,
            }
        }
    }

    /// The delivery loop of one subscription; database errors (a restart) are retried.
    async fn deliver(&self, topic: &str, sender: &super::SubscriptionSender) -> Result<()> {
        if !self
            .listening
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            let this = self.clone();
            tokio::spawn(async move { this.listen().await });
        }
        let mut reconnect = Reconnect::default();
        loop {
            if sender.is_closed() {
                return Ok(());
            }
            let woken = self.wake.notified();
            match self.deliver_one(topic, sender).await {
                Ok(true) => reconnect.reset(),
                Ok(false) => {
                    reconnect.reset();
                    tokio::select! {
                        _ = woken => {}
                        _ = tokio::time::sleep(self.config.poll_interval) => {}
                        _ = sender.closed() => return Ok(()),
                    }
                }
                Err(e) => {
                    let delay = reconnect.next_delay();
                    tracing::warn!(topic, url = %redacted(&self.config.url), "postgres: {e}; retrying in {delay:?}");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = sender.closed() => return Ok(()),
                    }
                }
            }
        }
    }

    /// Delivers the next message in a transaction holding the group's row lock; returns
    /// whether there was one.
    async fn deliver_one(&self, topic: &str, sender: &super::SubscriptionSender) -> Result<bool> {
        let mut tx = self.pool.begin().await.map_err(|e| db_err("begin", e))?;
        let Some((offset, stored)) = self.next_row(&mut tx, topic).await? else {
            let _ = tx.rollback().await;
            return Ok(false);
        };
        let msg = stored.copy();
        if sender.send(msg.clone()).await.is_err() {
            let _ = tx.rollback().await;
            return Ok(true);
        }
        match wait_settled(&msg, sender).await {
            AckState::Acked => {
                sqlx::query("UPDATE wasmill_offsets SET acked = $1 WHERE topic = $2 AND consumer_group = $3")
                    .bind(offset)
                    .bind(topic)
                    .bind(self.group())
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| db_err(format!("ack offset {offset} of {topic}"), e))?;
                tx.commit()
                    .await
                    .map_err(|e| db_err(format!("ack offset {offset} of {topic}"), e))?;
            }
            _ => {
                let _ = tx.rollback().await;
                if let Some(d) = msg.redelivery_delay() {
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = sender.closed() => {}
                    }
                }
            }
        }
        Ok(true)
    }
}

/// Publishes `messages` to `topic` inside the caller's transaction: they become visible (and
/// are delivered) only if it commits. The outbox pattern needs this.
pub async fn publish_in_tx(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    topic: &str,
    messages: &[Message],
) -> Result<()> {
    lock_topic(tx, topic).await?;
    for m in messages {
        let metadata = super::stored::encode_metadata(&m.metadata);
        sqlx::query(
            "INSERT INTO wasmill_messages (topic, uuid, metadata, payload) VALUES ($1, $2, $3, $4)",
        )
        .bind(topic)
        .bind(&m.uuid)
        .bind(metadata)
        .bind(&m.payload[..])
        .execute(&mut **tx)
        .await
        .map_err(|e| db_err(format!("publish to {topic}"), e))?;
    }
    sqlx::query("SELECT pg_notify('wasmill', $1)")
        .bind(topic)
        .execute(&mut **tx)
        .await
        .map_err(|e| db_err(format!("notify {topic}"), e))?;
    Ok(())
}

/// This backend in the registry's table ([`registry::BACKENDS`]).
pub const BACKEND: registry::BackendKind = registry::BackendKind {
    name: "postgres",
    check: registry::check_as::<PostgresConfig>,
    connect: |name, table| {
        Box::pin(async move {
            let cfg: PostgresConfig = registry::settings(&name, &table)?;
            let ps = PostgresPubSub::connect(cfg).await?;
            Ok(
                Backend::shared(&name, "postgres", ps.clone()).with_async_tail(move || {
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
            let cfg: PostgresConfig = registry::settings(&name, &table)?;
            crate::bench::raw::postgres::run(&cfg.url, messages, payload_size).await
        })
    }),
};

#[cfg(test)]
mod tests;
