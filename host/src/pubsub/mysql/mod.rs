//! MySQL / MariaDB: one table per topic, consumer groups with stored offsets, polling plus
//! in-process wake-ups (the watermill-sql layout).
//!
//! - Tables: `wasmill_t_<topic>` per topic (the topic lower-cased with every character outside
//!   `[a-z0-9_]` replaced by `_`, and a hash suffix when that changed the name or it is too
//!   long for MySQL's 64 characters) holding an `AUTO_INCREMENT` offset, the uuid, the
//!   metadata as JSON and the payload (`LONGBLOB`); `wasmill_topics` (one row per topic,
//!   locked by publishers) and `wasmill_offsets` (topic table, consumer group, last acked
//!   offset).
//! - Publish: `CREATE TABLE IF NOT EXISTS` and `INSERT IGNORE` of the topic row once per
//!   process, then a short transaction that locks the topic row (`SELECT … FOR UPDATE`) and
//!   inserts: publishers of a topic commit one after the other, so offsets become visible in
//!   increasing order and a consumer never skips one that commits late. Deadlocks and lock
//!   wait timeouts (errors 1213, 1205) are retried.
//! - Consume: a delivery transaction claims the group's offset row with
//!   `SELECT … FOR UPDATE SKIP LOCKED` (another subscriber of the group holding it means
//!   "busy, poll later"), reads up to `batch_size` rows after the offset and hands them over
//!   one at a time from the consumer's own task ([`super::read_ahead`]); once all are
//!   settled the offset advances past the acked ones and the transaction commits. A nacked
//!   message is delivered again, after the redelivery delay, before any later one.
//!   One message of a group is in flight at a time, so order holds across subscribers.
//! - Between batches a subscription stores its offset, commits and claims the row again in
//!   one round trip (a multi-statement query on the claim's connection), and the rows after
//!   a batch are read on another pooled connection while it is delivered; the next claim
//!   takes them if the group's offset is where this subscription left it.
//! - Wake-ups: consumers poll every `poll_interval`; a publish through this process wakes the
//!   topic's consumers in this process at once.
//! - Reconnect: sqlx's pool pings connections before handing them out and reconnects; the
//!   delivery loop retries with backoff, and unacked (or acked but uncommitted) messages are
//!   delivered again.
//! - Delays: a message whose `_watermill_delayed_until` is ahead waits in `wasmill_delayed`
//!   and is moved into its topic once due ([`delayed`]).
//! - [`publish_in_tx`] publishes inside a caller's transaction (the outbox pattern).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;
use sqlx::mysql::{
    MySql, MySqlConnectOptions, MySqlConnection, MySqlDatabaseError, MySqlPool, MySqlPoolOptions,
    MySqlSslMode,
};
use sqlx::{AssertSqlSafe, Connection, Row};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::kit::backoff::MIN_DELAY;
use super::kit::{Reconnect, redacted, tls};
use super::read_ahead::{Fetched, Fetcher, ReadAhead, ReadAheadOptions};
use super::{Publisher, SubscribeOptions, Subscriber, Subscription, closed};
use crate::error::{Error, Result};
use crate::message::Message;
use crate::pubsub::registry::{self, Backend};

mod config;
mod delayed;
mod fetch;
mod publish;

pub use config::*;
use fetch::*;
pub(crate) use publish::Row3;
pub use publish::publish_in_tx;
use publish::*;

const NAME: &str = "mysql";
/// Prefix of the per-topic tables.
const TABLE_PREFIX: &str = "wasmill_t_";
/// MySQL's limit on identifier length.
const MAX_IDENT: usize = 64;
/// Rows per INSERT statement, and bytes of payload per statement (under `max_allowed_packet`).
const INSERT_ROWS: usize = 200;
const INSERT_BYTES: usize = 4 << 20;

/// Per-process state shared by every pub/sub of one server URL.
#[derive(Default)]
struct Registry {
    /// Topic tables known to exist, by (url, table).
    ready: HashSet<(String, String)>,
    /// Wakes a topic's consumers after a publish, by (url, table).
    wakers: HashMap<(String, String), Arc<Notify>>,
}

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(Default::default);

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

fn waker(url: &str, table: &str) -> Arc<Notify> {
    registry()
        .wakers
        .entry((url.to_string(), table.to_string()))
        .or_default()
        .clone()
}

/// The MySQL pub/sub; publisher and subscriber in one.
#[derive(Clone)]
pub struct MysqlPubSub {
    pub(crate) pool: MySqlPool,
    config: Arc<MysqlConfig>,
    closed: CancellationToken,
    /// Whether closing this value closes the pool (false for tails, which borrow it).
    owns_pool: bool,
}

pub(crate) fn db_err(what: impl std::fmt::Display, e: sqlx::Error) -> Error {
    Error::pubsub(NAME, what.to_string(), e)
}

/// The server's error number (1213 deadlock, 1205 lock wait timeout, 1146 no such table).
fn errno(e: &sqlx::Error) -> Option<u16> {
    e.as_database_error()?
        .try_downcast_ref::<MySqlDatabaseError>()
        .map(MySqlDatabaseError::number)
}

fn is_retryable(e: &sqlx::Error) -> bool {
    matches!(errno(e), Some(1213 | 1205))
}

/// 64-bit FNV-1a: a stable hash for table-name suffixes.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The table holding `topic`'s messages: a safe identifier of at most 64 characters, the
/// same for the same topic in every process.
fn table_name(topic: &str) -> String {
    let clean: String = topic
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '_' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '_',
        })
        .collect();
    let room = MAX_IDENT - TABLE_PREFIX.len();
    if clean == topic && !clean.is_empty() && clean.len() <= room {
        return format!("{TABLE_PREFIX}{clean}");
    }
    let suffix = format!("_{:016x}", fnv1a(topic.as_bytes()));
    let keep: String = clean.chars().take(room - suffix.len()).collect();
    format!("{TABLE_PREFIX}{keep}{suffix}")
}

/// The URL's options, with `ca_file` as the CA (and `VERIFY_IDENTITY` unless the URL says
/// which `ssl-mode`).
fn connect_options(config: &MysqlConfig) -> Result<MySqlConnectOptions> {
    let shown = redacted(&config.url);
    let options: MySqlConnectOptions = config
        .url
        .parse()
        .map_err(|e| db_err(format!("invalid url {shown}"), e))?;
    tls::with_sql_ca(
        NAME,
        &config.url,
        config.ca_file.as_ref(),
        "ssl-mode=",
        options,
        |o, ca| o.ssl_ca(ca),
        |o| o.ssl_mode(MySqlSslMode::VerifyIdentity),
    )
}

impl MysqlPubSub {
    /// Connects to the server (waiting up to `acquire_timeout` for it to come up) and creates
    /// the shared tables if needed.
    pub async fn connect(config: MysqlConfig) -> Result<Self> {
        let shown = redacted(&config.url);
        let options = connect_options(&config)?;
        let pool = MySqlPoolOptions::new()
            .max_connections(config.max_connections.max(2))
            .min_connections(0)
            .acquire_timeout(config.acquire_timeout)
            .idle_timeout(Duration::from_secs(60))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    // No gap locks, and every statement reads the latest commits.
                    sqlx::query("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                        .execute(conn)
                        .await?;
                    Ok(())
                })
            })
            .connect_lazy_with(options.clone());
        if let Err(e) = pool.acquire().await {
            // The pool only says it timed out: one direct attempt gives the real cause.
            let cause = match MySqlConnection::connect_with(&options).await {
                Ok(c) => {
                    let _ = c.close().await;
                    e
                }
                Err(direct) => direct,
            };
            pool.close().await;
            return Err(db_err(
                format!(
                    "connect {shown} (gave up after {:?})",
                    config.acquire_timeout
                ),
                cause,
            ));
        }
        for ddl in [
            "CREATE TABLE IF NOT EXISTS wasmill_topics (
                 name VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY
             ) ENGINE = InnoDB",
            "CREATE TABLE IF NOT EXISTS wasmill_offsets (
                 topic_table VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
                 consumer_group VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
                 acked BIGINT NOT NULL,
                 PRIMARY KEY (topic_table, consumer_group)
             ) ENGINE = InnoDB",
            delayed::CREATE_TABLE,
        ] {
            if let Err(e) = sqlx::query(ddl).execute(&pool).await {
                pool.close().await;
                return Err(db_err(format!("create tables in {shown}"), e));
            }
        }
        Ok(MysqlPubSub {
            pool,
            config: Arc::new(config),
            closed: CancellationToken::new(),
            owns_pool: true,
        })
    }

    /// A subscriber on the same pool in a fresh consumer group that starts at the end, for
    /// reading new messages without taking them from other groups. Closing it leaves this
    /// pub/sub open; closing this pub/sub closes it too.
    pub fn tail_subscriber(&self) -> MysqlPubSub {
        let mut config = (*self.config).clone();
        config.consumer_group = Some(format!("tail-{}", uuid::Uuid::new_v4().simple()));
        config.start_at_end = true;
        MysqlPubSub {
            pool: self.pool.clone(),
            config: Arc::new(config),
            closed: self.closed.child_token(),
            owns_pool: false,
        }
    }

    /// The connection pool (for transactions that publish with [`publish_in_tx`]).
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    pub(crate) fn group(&self) -> &str {
        self.config.consumer_group.as_deref().unwrap_or("default")
    }

    pub(crate) fn forget_table(&self, table: &str) {
        registry()
            .ready
            .remove(&(self.config.url.clone(), table.to_string()));
    }

    /// Creates `topic`'s table and topic row once per process; returns the table's name.
    pub(crate) async fn ensure_topic(&self, topic: &str) -> Result<String> {
        let table = table_name(topic);
        let key = (self.config.url.clone(), table.clone());
        if registry().ready.contains(&key) {
            return Ok(table);
        }
        let ddl = format!(
            "CREATE TABLE IF NOT EXISTS `{table}` (
                 `offset` BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
                 uuid TEXT NOT NULL,
                 metadata JSON NOT NULL,
                 payload LONGBLOB NOT NULL,
                 created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
             ) ENGINE = InnoDB"
        );
        sqlx::query(AssertSqlSafe(ddl))
            .execute(&self.pool)
            .await
            .map_err(|e| db_err(format!("create table {table} for topic {topic}"), e))?;
        let known = sqlx::query("SELECT 1 FROM wasmill_topics WHERE name = ?")
            .bind(&table)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_err(format!("look up topic {topic}"), e))?;
        if known.is_none() {
            self.retry(&format!("register topic {topic}"), || {
                sqlx::query("INSERT IGNORE INTO wasmill_topics (name) VALUES (?)")
                    .bind(&table)
                    .execute(&self.pool)
            })
            .await?;
        }
        registry().ready.insert(key);
        Ok(table)
    }

    /// Runs `op` again after a deadlock or lock wait timeout (a few times).
    async fn retry<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, sqlx::Error>>,
    {
        let mut attempt = 0u32;
        loop {
            match op().await {
                Err(e) if attempt < 5 && is_retryable(&e) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(5 << attempt)).await;
                }
                other => return other.map_err(|e| db_err(what, e)),
            }
        }
    }

    /// Creates the group's offset row for `table` unless it exists (without locking it, so
    /// a subscriber holding the row does not block a new one).
    /// Whether this subscriber's group has its offset row for `table`.
    async fn group_exists(&self, table: &str) -> Result<bool> {
        let group = self.group();
        let row = sqlx::query(
            "SELECT 1 FROM wasmill_offsets WHERE topic_table = ? AND consumer_group = ?",
        )
        .bind(table)
        .bind(group)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_err(format!("look up consumer group {group} of {table}"), e))?;
        Ok(row.is_some())
    }

    pub(crate) async fn ensure_group(&self, table: &str) -> Result<()> {
        let group = self.group();
        if self.group_exists(table).await? {
            return Ok(());
        }
        let start: i64 = if self.config.start_at_end {
            let sql = format!("SELECT CAST(COALESCE(MAX(`offset`), 0) AS SIGNED) FROM `{table}`");
            sqlx::query_scalar(AssertSqlSafe(sql))
                .fetch_one(&self.pool)
                .await
                .map_err(|e| db_err(format!("find the end of {table}"), e))?
        } else {
            0
        };
        self.retry(&format!("create consumer group {group} of {table}"), || {
            sqlx::query(
                "INSERT IGNORE INTO wasmill_offsets (topic_table, consumer_group, acked)
                 VALUES (?, ?, ?)",
            )
            .bind(table)
            .bind(group)
            .bind(start)
            .execute(&self.pool)
        })
        .await?;
        Ok(())
    }

    /// Publishes `rows` to `table`, and holds `later` back until their due times, in one
    /// transaction holding the topic lock.
    pub(crate) async fn publish_rows(
        &self,
        table: &str,
        rows: &[Row3<'_>],
        later: &[delayed::Later<'_>],
    ) -> Result<()> {
        let result = self
            .retry(&format!("publish to {table}"), || async {
                let mut tx = self.pool.begin().await?;
                lock_topic(&mut tx, table).await?;
                insert_rows(&mut tx, table, rows).await?;
                delayed::store(&mut tx, table, later).await?;
                tx.commit().await
            })
            .await;
        if let Err(Error::PubSub {
            source: Some(e), ..
        }) = &result
            && e.downcast_ref::<sqlx::Error>().and_then(errno) == Some(1146)
        {
            self.forget_table(table);
        }
        result
    }
}

#[async_trait]
impl Subscriber for MysqlPubSub {
    async fn subscribe_initialize(&self, topic: &str) -> Result<()> {
        let table = self.ensure_topic(topic).await?;
        self.ensure_group(&table).await
    }

    /// One message is in flight at a time (`max_in_flight` is ignored): the group's offset
    /// only moves past acked messages, in order.
    async fn subscribe_with(
        &self,
        topic: &str,
        _options: SubscribeOptions,
    ) -> Result<Subscription> {
        if self.closed.is_cancelled() {
            return Err(closed(NAME));
        }
        let table = self.ensure_topic(topic).await?;
        self.ensure_group(&table).await?;
        let fetcher = MysqlFetch {
            pubsub: self.clone(),
            table: table.clone(),
            claim: None,
            prefetch: None,
            reconnect: Reconnect::new(MIN_DELAY, Duration::from_secs(2)),
        };
        let options = ReadAheadOptions {
            max_in_flight: 1,
            read_count: self.config.batch_size.max(1) as usize,
            // Nobody else can take a message while this subscription holds the group's row.
            max_wait: Duration::MAX,
            redelivery_delay: self.config.redelivery_delay,
        };
        let sub = Subscription::pull(ReadAhead::new(fetcher, options), &self.closed);
        super::delay::spawn_mover(
            NAME,
            topic,
            sub.cancellation().clone(),
            self.config.acquire_timeout,
            (self.clone(), table.clone()),
            |(this, table), _| async move { this.move_due(&table).await.map_err(|e| e.to_string()) },
        );
        Ok(sub)
    }

    async fn close(&self) -> Result<()> {
        Publisher::close(self).await
    }

    async fn end_tail(&self, topic: &str) -> Result<()> {
        // The pool is shared with the backend the tail reads from: only its row goes.
        sqlx::query("DELETE FROM wasmill_offsets WHERE topic_table = ? AND consumer_group = ?")
            .bind(table_name(topic))
            .bind(self.group())
            .execute(&self.pool)
            .await
            .map_err(|e| db_err(format!("end tail {} of {topic}", self.group()), e))?;
        Ok(())
    }

    async fn remove_topic(&self, topic: &str) -> Result<bool> {
        let table = table_name(topic);
        let failed = |e| db_err(format!("remove topic {topic}"), e);
        self.forget_table(&table);
        // A connection of its own: allowed after close, which closes the pool.
        let options = connect_options(&self.config)?;
        let mut conn = MySqlConnection::connect_with(&options)
            .await
            .map_err(failed)?;
        let existed = sqlx::query(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?",
        )
        .bind(&table)
        .fetch_optional(&mut conn)
        .await
        .map_err(failed)?
        .is_some();
        sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS `{table}`")))
            .execute(&mut conn)
            .await
            .map_err(failed)?;
        let mut removed = 0;
        for sql in [
            "DELETE FROM wasmill_offsets WHERE topic_table = ?",
            "DELETE FROM wasmill_delayed WHERE topic_table = ?",
            "DELETE FROM wasmill_topics WHERE name = ?",
        ] {
            removed += sqlx::query(sql)
                .bind(&table)
                .execute(&mut conn)
                .await
                .map_err(failed)?
                .rows_affected();
        }
        let _ = conn.close().await;
        Ok(existed || removed > 0)
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

/// This backend in the registry's table ([`registry::BACKENDS`]).
pub const BACKEND: registry::BackendKind = registry::BackendKind {
    name: "mysql",
    check: registry::check_as::<MysqlConfig>,
    connect: |name, table| {
        Box::pin(async move {
            let cfg: MysqlConfig = registry::settings(&name, &table)?;
            let ps = MysqlPubSub::connect(cfg).await?;
            // A tail reads in a fresh group from the end; closing it leaves `ps` open.
            Ok(Backend::shared(&name, "mysql", ps.clone()).with_tail(move || ps.tail_subscriber()))
        })
    },
    raw_bench: Some(|name, table, messages, payload_size| {
        Box::pin(async move {
            let cfg: MysqlConfig = registry::settings(&name, &table)?;
            crate::bench::raw::mysql::run(&cfg.url, messages, payload_size).await
        })
    }),
};

#[cfg(test)]
mod tests;
