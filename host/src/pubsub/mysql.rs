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
//! - [`publish_in_tx`] publishes inside a caller's transaction (the outbox pattern).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;
use sqlx::mysql::{
    MySql, MySqlConnectOptions, MySqlConnection, MySqlDatabaseError, MySqlPool, MySqlPoolOptions,
};
use sqlx::{AssertSqlSafe, Connection, Row};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::read_ahead::{Fetched, Fetcher, ReadAhead, ReadAheadOptions};
use super::{Publisher, SubscribeOptions, Subscriber, Subscription, closed};
use crate::error::{Error, Result};
use crate::message::Message;

const NAME: &str = "mysql";
/// Prefix of the per-topic tables.
const TABLE_PREFIX: &str = "wasmill_t_";
/// MySQL's limit on identifier length.
const MAX_IDENT: usize = 64;
/// Rows per INSERT statement, and bytes of payload per statement (under `max_allowed_packet`).
const INSERT_ROWS: usize = 200;
const INSERT_BYTES: usize = 4 << 20;

/// Settings of `kind = "mysql"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MysqlConfig {
    /// `mysql://user:password@host:port/database` (MariaDB 10.6+ or MySQL 8+).
    pub url: String,
    /// The consumer group of this pub/sub's subscriptions (`default` when unset).
    pub consumer_group: Option<String>,
    /// How often an idle subscription looks for new rows (publishes from this process wake it
    /// at once).
    #[serde(with = "crate::config::duration")]
    pub poll_interval: Duration,
    /// Size of the connection pool. Each subscription holds a connection while it delivers
    /// (and borrows a second one for a moment to read ahead, when one is free), so keep it
    /// above the number of subscriptions plus concurrent publishers.
    pub max_connections: u32,
    /// How long to wait for a pooled connection (and, at start, for the server).
    #[serde(with = "crate::config::duration")]
    pub acquire_timeout: Duration,
    /// Wait before a nacked message is delivered again, unless the message asks for another
    /// delay (so a poisoned message cannot spin).
    #[serde(with = "crate::config::duration")]
    pub redelivery_delay: Duration,
    /// Messages read per delivery transaction; acks are committed when it ends.
    pub batch_size: u32,
    /// A consumer group created by this pub/sub starts after the last stored message instead
    /// of at the beginning (what `wasmill tail` uses).
    pub start_at_end: bool,
}

impl Default for MysqlConfig {
    fn default() -> Self {
        MysqlConfig {
            url: "mysql://root@127.0.0.1:3306/test".into(),
            consumer_group: None,
            poll_interval: Duration::from_millis(100),
            max_connections: 32,
            acquire_timeout: Duration::from_secs(10),
            redelivery_delay: Duration::from_millis(100),
            batch_size: 100,
            start_at_end: false,
        }
    }
}

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
    pool: MySqlPool,
    config: Arc<MysqlConfig>,
    closed: CancellationToken,
    /// Whether closing this value closes the pool (false for tails, which borrow it).
    owns_pool: bool,
}

fn db_err(what: impl std::fmt::Display, e: sqlx::Error) -> Error {
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

/// The URL without its password, for errors and logs.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((credentials, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match credentials.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
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

/// One row to insert: uuid, metadata JSON, payload.
type Row3<'a> = (&'a str, String, &'a [u8]);

fn encode(messages: &[Message]) -> Result<Vec<Row3<'_>>> {
    messages
        .iter()
        .map(|m| {
            let metadata = super::stored::encode_metadata(&m.metadata);
            Ok((m.uuid.as_str(), metadata, &m.payload[..]))
        })
        .collect()
}

/// Takes the topic's publish lock inside the current transaction of `conn`, registering the
/// topic first if it has no row yet.
async fn lock_topic(
    conn: &mut MySqlConnection,
    table: &str,
) -> std::result::Result<(), sqlx::Error> {
    let lock =
        || sqlx::query("SELECT name FROM wasmill_topics WHERE name = ? FOR UPDATE").bind(table);
    if lock().fetch_optional(&mut *conn).await?.is_none() {
        sqlx::query("INSERT IGNORE INTO wasmill_topics (name) VALUES (?)")
            .bind(table)
            .execute(&mut *conn)
            .await?;
        lock().fetch_optional(&mut *conn).await?;
    }
    Ok(())
}

/// Inserts `rows` into `table` in multi-row statements; the caller holds the topic lock.
async fn insert_rows(
    conn: &mut MySqlConnection,
    table: &str,
    rows: &[Row3<'_>],
) -> std::result::Result<(), sqlx::Error> {
    let mut rest = rows;
    while !rest.is_empty() {
        let mut n = 0;
        let mut bytes = 0;
        while n < rest.len()
            && n < INSERT_ROWS
            && (n == 0 || bytes + rest[n].2.len() <= INSERT_BYTES)
        {
            bytes += rest[n].2.len();
            n += 1;
        }
        let (chunk, tail) = rest.split_at(n);
        let values = vec!["(?, ?, ?)"; chunk.len()].join(", ");
        let sql = format!("INSERT INTO `{table}` (uuid, metadata, payload) VALUES {values}");
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for (uuid, metadata, payload) in chunk {
            q = q.bind(*uuid).bind(metadata.as_str()).bind(*payload);
        }
        q.execute(&mut *conn).await?;
        rest = tail;
    }
    Ok(())
}

impl MysqlPubSub {
    /// Connects to the server (waiting up to `acquire_timeout` for it to come up) and creates
    /// the shared tables if needed.
    pub async fn connect(config: MysqlConfig) -> Result<Self> {
        let shown = redacted(&config.url);
        let options: MySqlConnectOptions = config
            .url
            .parse()
            .map_err(|e| db_err(format!("invalid url {shown}"), e))?;
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

    fn group(&self) -> &str {
        self.config.consumer_group.as_deref().unwrap_or("default")
    }

    fn forget_table(&self, table: &str) {
        registry()
            .ready
            .remove(&(self.config.url.clone(), table.to_string()));
    }

    /// Creates `topic`'s table and topic row once per process; returns the table's name.
    async fn ensure_topic(&self, topic: &str) -> Result<String> {
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

    async fn ensure_group(&self, table: &str) -> Result<()> {
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

    /// Publishes `rows` to `table` in one transaction holding the topic lock.
    async fn publish_rows(&self, table: &str, rows: &[Row3<'_>]) -> Result<()> {
        let result = self
            .retry(&format!("publish to {table}"), || async {
                let mut tx = self.pool.begin().await?;
                lock_topic(&mut tx, table).await?;
                insert_rows(&mut tx, table, rows).await?;
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

/// A delivery transaction: it holds the group's offset row (`FOR UPDATE`), so one
/// subscriber of the group delivers at a time and the offset moves in order.
struct Claim {
    tx: sqlx::Transaction<'static, MySql>,
    /// The group's offset when the row was claimed.
    stored: i64,
    /// The offset of the last message acked since.
    acked: i64,
}

/// How a subscription reads its topic table: a delivery transaction claims the group's
/// offset row and reads up to `batch_size` rows after it; when they are all settled (the
/// next fetch, or the end of the subscription), the offset of the last acked one is stored
/// and the transaction commits.
///
/// While a batch is delivered, the rows after it are read ahead on another pooled
/// connection ([`Prefetch`]): the next delivery transaction takes them instead of reading,
/// if the group's offset is where this subscription left it.
struct MysqlFetch {
    pubsub: MysqlPubSub,
    table: String,
    claim: Option<Claim>,
    prefetch: Option<Prefetch>,
    backoff: Duration,
}

/// The rows after offset `after`, read without a lock while the batch before them is
/// delivered. Valid for a delivery transaction whose claimed offset is `after`: publishers
/// commit a topic's rows in offset order (the topic lock), so rows read after an offset are
/// a gap-free run of what follows it.
struct Prefetch {
    after: i64,
    rows: tokio::task::JoinHandle<Option<Vec<(Message, i64)>>>,
}

impl Prefetch {
    /// How long a read-ahead waits for a pooled connection: none free means the pool is busy
    /// with other subscriptions, and the next delivery transaction reads for itself.
    const ACQUIRE: Duration = Duration::from_millis(50);

    /// Starts reading up to `max` rows of `table` after `after` on a connection of the pool.
    fn start(pubsub: &MysqlPubSub, table: &str, after: i64, max: usize) -> Self {
        let pool = pubsub.pool.clone();
        let sql = select_after(table);
        let rows = tokio::spawn(async move {
            let mut conn = tokio::time::timeout(Self::ACQUIRE, pool.acquire())
                .await
                .ok()?
                .ok()?;
            let rows = sqlx::query(AssertSqlSafe(sql))
                .bind(after)
                .bind(max as u64)
                .fetch_all(&mut *conn)
                .await
                .ok()?;
            rows.iter()
                .map(|row| decode(row).map(|(offset, msg)| (msg, offset)).ok())
                .collect()
        });
        Prefetch { after, rows }
    }

    /// The rows read ahead, if they follow `claimed` (the offset a delivery transaction
    /// claimed) and any came; `None` means "read them".
    async fn take(self, claimed: i64) -> Option<Vec<(Message, i64)>> {
        if self.after != claimed {
            self.rows.abort();
            return None;
        }
        self.rows
            .await
            .ok()
            .flatten()
            .filter(|rows| !rows.is_empty())
    }
}

/// `text` as a MySQL string literal in utf8mb4 with the binary collation of the
/// `consumer_group` column, written in hex so that no character needs escaping.
fn hex_literal(text: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(text.len() * 2 + 32);
    out.push_str("_utf8mb4 X'");
    for byte in text.bytes() {
        let _ = write!(out, "{byte:02x}");
    }
    out.push_str("' COLLATE utf8mb4_bin");
    out
}

/// The statement reading up to `?` rows of `table` after offset `?`.
fn select_after(table: &str) -> String {
    format!(
        "SELECT `offset`, uuid, metadata, payload FROM `{table}`
         WHERE `offset` > ? ORDER BY `offset` LIMIT ?"
    )
}

impl MysqlFetch {
    /// Stores the claim's acked offset (if it moved) and releases the group's row.
    async fn settle(pubsub: &MysqlPubSub, table: &str, claim: Claim) -> Result<()> {
        let Claim {
            mut tx,
            stored,
            acked,
        } = claim;
        if acked <= stored {
            let _ = tx.rollback().await;
            return Ok(());
        }
        let group = pubsub.group();
        sqlx::query(
            "UPDATE wasmill_offsets SET acked = ? WHERE topic_table = ? AND consumer_group = ?",
        )
        .bind(acked)
        .bind(table)
        .bind(group)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_err(format!("ack offset {acked} of {table}"), e))?;
        tx.commit()
            .await
            .map_err(|e| db_err(format!("ack offset {acked} of {table}"), e))
    }

    /// Settles `claim` and claims the group's row again in one round trip, on the claim's
    /// connection: the acked offset is stored, the transaction commits (the row is free for
    /// an instant) and a new one claims it. Returns that transaction and the offset it
    /// claimed, `None` when another subscriber of the group took the row in between.
    async fn renew(
        pubsub: &MysqlPubSub,
        table: &str,
        claim: Claim,
    ) -> Result<(sqlx::Transaction<'static, MySql>, Option<i64>)> {
        let Claim {
            mut tx,
            stored,
            acked,
        } = claim;
        // No binds in a multi-statement query: the table name is a safe identifier and the
        // group goes as a hex literal.
        let key = format!(
            "topic_table = '{table}' AND consumer_group = {}",
            hex_literal(pubsub.group())
        );
        let store = if acked > stored {
            format!("UPDATE wasmill_offsets SET acked = {acked} WHERE {key};")
        } else {
            String::new()
        };
        // sqlx still counts one open transaction on the connection, which is true again
        // after `START TRANSACTION`.
        let sql = format!(
            "{store} COMMIT; START TRANSACTION;
             SELECT acked FROM wasmill_offsets WHERE {key} FOR UPDATE SKIP LOCKED"
        );
        let rows = sqlx::raw_sql(AssertSqlSafe(sql))
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| db_err(format!("ack offset {acked} of {table}"), e))?;
        let claimed = match rows.first() {
            Some(row) => Some(row.try_get(0).map_err(|e| db_err("read offset", e))?),
            None => None,
        };
        Ok((tx, claimed))
    }

    /// Claims the group's offset row (renewing the claim this subscription holds, if any) and
    /// reads the rows after it; `None` (and no claim) when another subscriber of the group
    /// holds the row.
    async fn read(&mut self, max: usize) -> Result<Option<Vec<(Message, i64)>>> {
        let ps = &self.pubsub;
        let (table, group) = (&self.table, ps.group());
        let (mut tx, acked) = match self.claim.take() {
            Some(claim) => Self::renew(ps, table, claim).await?,
            None => {
                let mut tx = ps.pool.begin().await.map_err(|e| db_err("begin", e))?;
                let acked: Option<i64> = sqlx::query_scalar(
                    "SELECT acked FROM wasmill_offsets WHERE topic_table = ? AND consumer_group = ?
                     FOR UPDATE SKIP LOCKED",
                )
                .bind(table)
                .bind(group)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| db_err(format!("claim consumer group {group} of {table}"), e))?;
                (tx, acked)
            }
        };
        let Some(start) = acked else {
            let _ = tx.rollback().await;
            // Held by another subscriber, or the row is gone (then create it again).
            if ps.group_exists(table).await? {
                return Ok(None);
            }
            ps.ensure_group(table).await?;
            return Ok(Some(Vec::new()));
        };
        let read_ahead = match self.prefetch.take() {
            Some(prefetch) => prefetch.take(start).await,
            None => None,
        };
        let messages = match read_ahead {
            Some(messages) => messages,
            None => {
                let rows = sqlx::query(AssertSqlSafe(select_after(table)))
                    .bind(start)
                    .bind(max as u64)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(|e| {
                        if errno(&e) == Some(1146) {
                            ps.forget_table(table);
                        }
                        db_err(format!("read {table}"), e)
                    })?;
                rows.iter()
                    .map(|row| decode(row).map(|(offset, msg)| (msg, offset)))
                    .collect::<Result<Vec<_>>>()?
            }
        };
        let Some(&(_, last)) = messages.last() else {
            let _ = tx.rollback().await;
            return Ok(Some(Vec::new()));
        };
        // Delivered in order and acked one by one, this batch ends at `last`: read what
        // follows while it is handled. A short batch reached the end of the table, so a read
        // ahead would mostly find nothing (one wasted query per batch of a slow stream).
        if messages.len() >= max {
            self.prefetch = Some(Prefetch::start(ps, table, last, max));
        }
        self.claim = Some(Claim {
            tx,
            stored: start,
            acked: start,
        });
        Ok(Some(messages))
    }
}

#[async_trait]
impl Fetcher for MysqlFetch {
    type Receipt = i64;

    async fn fetch(&mut self, max: usize) -> Fetched<i64> {
        let since = Instant::now().into();
        // Everything read before is settled: `read` stores the offset as it claims again.
        let wake = waker(&self.pubsub.config.url, &self.table);
        let woken = wake.notified();
        let poll = self.pubsub.config.poll_interval;
        let pause = match self.read(max).await {
            Ok(Some(messages)) if !messages.is_empty() => {
                self.backoff = Duration::from_millis(100);
                return Fetched { since, messages };
            }
            Ok(Some(_)) => {
                // Nothing new: a publish through this process wakes us before the poll.
                tokio::select! {
                    _ = woken => {}
                    _ = tokio::time::sleep(poll) => {}
                }
                Duration::ZERO
            }
            Ok(None) => poll,
            Err(e) => {
                tracing::warn!(
                    table = %self.table,
                    url = %redacted(&self.pubsub.config.url),
                    "mysql subscription: {e}; retrying in {:?}", self.backoff
                );
                let b = self.backoff;
                self.backoff = (b * 2).min(Duration::from_secs(2));
                b
            }
        };
        tokio::time::sleep(pause).await;
        Fetched {
            since,
            messages: Vec::new(),
        }
    }

    fn ack(&mut self, offsets: Vec<i64>) {
        // One in flight at a time, in order: the offsets come in increasing order.
        if let (Some(claim), Some(last)) = (&mut self.claim, offsets.into_iter().max()) {
            claim.acked = claim.acked.max(last);
        }
    }

    /// The group's offset never passes a message that was not acked: given back, it is read
    /// again by the next delivery transaction.
    fn give_back(&mut self, _offsets: Vec<i64>) {}

    fn finish(self, _give_back: Vec<i64>) {
        let MysqlFetch {
            pubsub,
            table,
            claim,
            prefetch,
            ..
        } = self;
        if let Some(prefetch) = prefetch {
            prefetch.rows.abort();
        }
        if let Some(claim) = claim {
            tokio::spawn(async move {
                if let Err(e) = Self::settle(&pubsub, &table, claim).await {
                    tracing::warn!(table, "mysql: {e} (the messages are delivered again)");
                }
            });
        }
    }
}

fn decode(row: &sqlx::mysql::MySqlRow) -> Result<(i64, Message)> {
    let offset: i64 = row.try_get(0).map_err(|e| db_err("read offset", e))?;
    let uuid: String = row.try_get(1).map_err(|e| db_err("read uuid", e))?;
    let metadata: String = row.try_get(2).map_err(|e| db_err("read metadata", e))?;
    let payload: Vec<u8> = row.try_get(3).map_err(|e| db_err("read payload", e))?;
    let mut msg = Message::with_uuid(uuid, Bytes::from(payload));
    msg.metadata = super::stored::decode_metadata(NAME, &msg.uuid, metadata.as_bytes());
    Ok((offset, msg))
}

#[async_trait]
impl Publisher for MysqlPubSub {
    async fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<()> {
        if self.closed.is_cancelled() {
            return Err(closed(NAME));
        }
        if messages.is_empty() {
            return Ok(());
        }
        let table = self.ensure_topic(topic).await?;
        let rows = encode(&messages)?;
        self.publish_rows(&table, &rows).await?;
        waker(&self.config.url, &table).notify_waiters();
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        self.closed.cancel();
        if self.owns_pool {
            // Lets delivery transactions commit what was acked; bounded, in case the server
            // is gone.
            let _ = tokio::time::timeout(self.config.acquire_timeout, self.pool.close()).await;
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        NAME
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
            table,
            claim: None,
            prefetch: None,
            backoff: Duration::from_millis(100),
        };
        let options = ReadAheadOptions {
            max_in_flight: 1,
            read_count: self.config.batch_size.max(1) as usize,
            // Nobody else can take a message while this subscription holds the group's row.
            max_wait: Duration::MAX,
            redelivery_delay: self.config.redelivery_delay,
        };
        Ok(Subscription::pull(
            ReadAhead::new(fetcher, options),
            &self.closed,
        ))
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
        let options: MySqlConnectOptions = self.config.url.parse().map_err(failed)?;
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

/// Publishes `messages` to `topic` inside the caller's transaction: they become visible (and
/// are delivered) only if it commits. The topic's table must exist (any publish, subscribe or
/// `subscribe_initialize` through a [`MysqlPubSub`] creates it; DDL cannot run here because
/// MySQL would commit the caller's transaction). The transaction holds the topic's publish
/// lock until it ends, so keep it short.
pub async fn publish_in_tx(
    tx: &mut sqlx::Transaction<'_, MySql>,
    topic: &str,
    messages: &[Message],
) -> Result<()> {
    if messages.is_empty() {
        return Ok(());
    }
    let table = table_name(topic);
    let rows = encode(messages)?;
    lock_topic(tx, &table)
        .await
        .map_err(|e| db_err(format!("lock topic {topic}"), e))?;
    insert_rows(tx, &table, &rows).await.map_err(|e| {
        if errno(&e) == Some(1146) {
            Error::pubsub_msg(
                NAME,
                format!(
                    "publish to {topic}: table {table} does not exist yet; initialize the \
                     topic through the mysql backend first"
                ),
            )
        } else {
            db_err(format!("publish to {topic}"), e)
        }
    })
}

/// The raw client's throughput: multi-row INSERTs in transactions of 100 under the topic
/// lock, then transactions that claim the offset row, read 100 rows and advance the offset,
/// written with sqlx's transaction API as a hand-written client would (the backend itself
/// renews its claim in one round trip and reads the next rows while a batch is delivered).
pub async fn raw_bench(
    url: &str,
    messages: usize,
    payload_size: usize,
) -> Result<super::RawBenchFigures> {
    let ps = MysqlPubSub::connect(MysqlConfig {
        url: url.to_string(),
        consumer_group: Some("raw_bench".into()),
        ..MysqlConfig::default()
    })
    .await?;
    let topic = format!("raw_bench_{}", uuid::Uuid::new_v4().simple());
    let table = ps.ensure_topic(&topic).await?;
    ps.ensure_group(&table).await?;
    let figures = bench_loops(&ps, &table, messages, payload_size).await;
    // Leave nothing behind, whatever happened.
    let _ = sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS `{table}`")))
        .execute(&ps.pool)
        .await;
    let _ = sqlx::query("DELETE FROM wasmill_offsets WHERE topic_table = ?")
        .bind(&table)
        .execute(&ps.pool)
        .await;
    let _ = sqlx::query("DELETE FROM wasmill_topics WHERE name = ?")
        .bind(&table)
        .execute(&ps.pool)
        .await;
    ps.forget_table(&table);
    Publisher::close(&ps).await?;
    figures
}

async fn bench_loops(
    ps: &MysqlPubSub,
    table: &str,
    messages: usize,
    payload_size: usize,
) -> Result<super::RawBenchFigures> {
    let payload = vec![b'x'; payload_size];
    let uuids: Vec<String> = (0..messages)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    let start = Instant::now();
    for chunk in uuids.chunks(100) {
        let rows: Vec<Row3<'_>> = chunk
            .iter()
            .map(|u| (u.as_str(), "{}".to_string(), &payload[..]))
            .collect();
        ps.publish_rows(table, &rows).await?;
    }
    let publish = start.elapsed();

    let start = Instant::now();
    let mut got = 0usize;
    let read = format!(
        "SELECT `offset`, uuid, metadata, payload FROM `{table}` WHERE `offset` > ? ORDER BY `offset` LIMIT 100"
    );
    loop {
        let mut tx = ps.pool.begin().await.map_err(|e| db_err("begin", e))?;
        let acked: i64 = sqlx::query_scalar(
            "SELECT acked FROM wasmill_offsets WHERE topic_table = ? AND consumer_group = ? FOR UPDATE",
        )
        .bind(table)
        .bind(ps.group())
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| db_err("claim offset", e))?;
        let rows = sqlx::query(AssertSqlSafe(read.clone()))
            .bind(acked)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| db_err("read", e))?;
        let Some(last) = rows.last() else { break };
        let last: i64 = last.try_get(0).map_err(|e| db_err("read offset", e))?;
        got += rows.len();
        sqlx::query(
            "UPDATE wasmill_offsets SET acked = ? WHERE topic_table = ? AND consumer_group = ?",
        )
        .bind(last)
        .bind(table)
        .bind(ps.group())
        .execute(&mut *tx)
        .await
        .map_err(|e| db_err("ack", e))?;
        tx.commit().await.map_err(|e| db_err("commit", e))?;
    }
    let consume = start.elapsed();
    Ok(super::RawBenchFigures {
        publish_per_sec: messages as f64 / publish.as_secs_f64().max(1e-9),
        consume_per_sec: got as f64 / consume.as_secs_f64().max(1e-9),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::conformance::{Features, Harness, OwnedPubSub, unique_topic};
    use crate::pubsub::testkit::{Kind, PrivateServer};
    use crate::pubsub::{DynPublisher, DynSubscriber};

    fn url() -> String {
        std::env::var("WASMILL_TEST_MYSQL_URL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
    }

    fn test_config(group: &str) -> MysqlConfig {
        config_at(url(), group)
    }

    fn config_at(url: String, group: &str) -> MysqlConfig {
        MysqlConfig {
            url,
            consumer_group: Some(group.to_string()),
            max_connections: 10,
            redelivery_delay: Duration::from_millis(10),
            ..MysqlConfig::default()
        }
    }

    struct MysqlHarness {
        group: String,
    }

    impl MysqlHarness {
        fn new() -> Self {
            MysqlHarness {
                group: crate::pubsub::conformance::unique_group(),
            }
        }
    }

    #[async_trait]
    impl Harness for MysqlHarness {
        fn features(&self) -> Features {
            Features {
                consumer_groups: true,
                guaranteed_order: true,
                guaranteed_order_with_single_subscriber: true,
                persistent: true,
                new_subscriber_receives_old_messages: true,
                ..Features::default()
            }
        }

        async fn pubsub(&self) -> Result<(DynPublisher, DynSubscriber)> {
            let ps = MysqlPubSub::connect(test_config(&self.group)).await?;
            Ok(crate::pubsub::conformance::pair(ps))
        }

        async fn subscriber_in_group(&self, group: &str) -> Result<DynSubscriber> {
            Ok(Arc::new(MysqlPubSub::connect(test_config(group)).await?))
        }

        /// A private MariaDB, restarted: the messages and the groups' offsets are InnoDB
        /// rows, and come back with it.
        async fn owned_pubsub(&self) -> Result<Option<OwnedPubSub>> {
            let server = PrivateServer::start(Kind::Mariadb).await?;
            let ps = MysqlPubSub::connect(config_at(server.url(), &self.group)).await?;
            let (publisher, subscriber) = crate::pubsub::conformance::pair(ps);
            Ok(Some(OwnedPubSub {
                publisher,
                subscriber,
                outage: Box::new(server),
            }))
        }
    }

    crate::conformance_tests!(MysqlHarness::new());

    #[tokio::test]
    async fn publish_in_tx_follows_the_transaction() {
        let ps = MysqlPubSub::connect(test_config("outbox")).await.unwrap();
        let topic = unique_topic("outbox");
        ps.subscribe_initialize(&topic).await.unwrap();
        let mut sub = ps.subscribe(&topic).await.unwrap();
        let mut tx = ps.pool().begin().await.unwrap();
        publish_in_tx(&mut tx, &topic, &[Message::with_uuid("rolled-back", "x")])
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        let mut tx = ps.pool().begin().await.unwrap();
        publish_in_tx(
            &mut tx,
            &topic,
            &[Message::with_uuid("committed", "y").with_metadata("k", "v")],
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        let m = tokio::time::timeout(Duration::from_secs(10), sub.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.uuid, "committed");
        assert_eq!(m.metadata.get("k"), "v");
        m.ack();
        let more = tokio::time::timeout(Duration::from_millis(500), sub.recv()).await;
        assert!(more.is_err(), "the rolled-back message was delivered");

        // A topic nobody initialized is a clear error, and the caller's transaction survives.
        let mut tx = ps.pool().begin().await.unwrap();
        let err = publish_in_tx(&mut tx, &unique_topic("nowhere"), &[Message::new("z")])
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist yet"), "{err}");
        tx.rollback().await.unwrap();
        drop(sub);
        Publisher::close(&ps).await.unwrap();
    }

    #[tokio::test]
    async fn closing_a_tail_leaves_the_backend_open() {
        let ps = MysqlPubSub::connect(test_config("tail-main"))
            .await
            .unwrap();
        let topic = unique_topic("tail");
        ps.publish(&topic, vec![Message::with_uuid("old", "o")])
            .await
            .unwrap();
        let tail = ps.tail_subscriber();
        let mut tail_sub = tail.subscribe(&topic).await.unwrap();
        ps.publish(&topic, vec![Message::with_uuid("new", "n")])
            .await
            .unwrap();
        let m = tokio::time::timeout(Duration::from_secs(10), tail_sub.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.uuid, "new", "a tail starts at the end");
        m.ack();
        Subscriber::close(&tail).await.unwrap();
        assert!(tail_sub.recv().await.is_none(), "tail stream ended");
        // The main backend still publishes and delivers (both messages: its group is new).
        ps.publish(&topic, vec![Message::with_uuid("after", "a")])
            .await
            .unwrap();
        let mut sub = ps.subscribe(&topic).await.unwrap();
        let got = crate::pubsub::conformance::bulk_read(&mut sub, 3, Duration::from_secs(10)).await;
        let ids: Vec<&str> = got.iter().map(|m| m.uuid.as_str()).collect();
        assert_eq!(ids, ["old", "new", "after"]);
        drop(sub);
        Publisher::close(&ps).await.unwrap();
        // Closing the backend closes tails made from it.
        let late = ps.tail_subscriber();
        assert!(late.subscribe(&topic).await.is_err());
    }

    #[tokio::test]
    async fn a_group_named_with_quotes_keeps_its_offset_across_batches() {
        // Renewing a claim sends the group in the text of a multi-statement query.
        let group = format!("it's a \\ group ✓ {}", uuid::Uuid::new_v4().simple());
        let config = MysqlConfig {
            batch_size: 3,
            ..test_config(&group)
        };
        let ps = MysqlPubSub::connect(config.clone()).await.unwrap();
        let topic = unique_topic("quoted_group");
        let msgs: Vec<Message> = (0..10).map(|i| Message::new(format!("m{i}"))).collect();
        let want: Vec<String> = msgs.iter().map(|m| m.uuid.clone()).collect();
        ps.subscribe_initialize(&topic).await.unwrap();
        ps.publish(&topic, msgs).await.unwrap();
        let mut sub = ps.subscribe(&topic).await.unwrap();
        let got =
            crate::pubsub::conformance::bulk_read(&mut sub, 10, Duration::from_secs(10)).await;
        let ids: Vec<String> = got.iter().map(|m| m.uuid.clone()).collect();
        assert_eq!(ids, want, "in order, across four batches");
        drop(sub);
        Publisher::close(&ps).await.unwrap();
        // The group's offset was stored: a new subscriber of the group gets only what follows.
        let again = MysqlPubSub::connect(config).await.unwrap();
        again
            .publish(&topic, vec![Message::with_uuid("later", "l")])
            .await
            .unwrap();
        let mut sub = again.subscribe(&topic).await.unwrap();
        let m = tokio::time::timeout(Duration::from_secs(10), sub.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.uuid, "later");
        m.ack();
        drop(sub);
        again.remove_topic(&topic).await.unwrap();
        Publisher::close(&again).await.unwrap();
    }

    #[test]
    fn group_literals_need_no_escaping() {
        assert_eq!(
            hex_literal("a'b\\"),
            "_utf8mb4 X'6127625c' COLLATE utf8mb4_bin"
        );
        assert_eq!(hex_literal(""), "_utf8mb4 X'' COLLATE utf8mb4_bin");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn subscribers_of_one_group_share_messages_without_duplicates() {
        let group = format!("shared-{}", uuid::Uuid::new_v4().simple());
        let a = MysqlPubSub::connect(test_config(&group)).await.unwrap();
        let b = MysqlPubSub::connect(MysqlConfig {
            batch_size: 3,
            ..test_config(&group)
        })
        .await
        .unwrap();
        let topic = unique_topic("shared");
        let msgs: Vec<Message> = (0..60).map(|i| Message::new(format!("m{i}"))).collect();
        let want: HashSet<String> = msgs.iter().map(|m| m.uuid.clone()).collect();
        a.subscribe_initialize(&topic).await.unwrap();
        a.publish(&topic, msgs).await.unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        for ps in [&a, &b] {
            let mut sub = ps.subscribe(&topic).await.unwrap();
            let seen = seen.clone();
            readers.push(tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
                while seen.lock().unwrap().len() < 60 && tokio::time::Instant::now() < deadline {
                    if let Ok(Some(m)) =
                        tokio::time::timeout(Duration::from_millis(200), sub.recv()).await
                    {
                        seen.lock().unwrap().push(m.uuid.clone());
                        m.ack();
                    }
                }
            }));
        }
        for r in readers {
            r.await.unwrap();
        }
        let seen = seen.lock().unwrap().clone();
        let distinct: HashSet<String> = seen.iter().cloned().collect();
        assert_eq!(distinct, want, "every message arrives");
        assert_eq!(seen.len(), 60, "no message arrives twice");
        Publisher::close(&a).await.unwrap();
        Publisher::close(&b).await.unwrap();
    }

    #[tokio::test]
    async fn registry_connects_and_closing_its_tail_keeps_the_backend() {
        let settings: toml::Table =
            toml::from_str(&format!("url = \"{}\"\npoll_interval = \"50ms\"", url())).unwrap();
        let b = crate::pubsub::registry::connect("db", "mysql", &settings)
            .await
            .unwrap();
        let tail = b.tail_subscriber().await.unwrap();
        tail.close().await.unwrap();
        let topic = unique_topic("registry");
        b.publisher
            .publish(&topic, vec![Message::new("x")])
            .await
            .unwrap();
        b.publisher.close().await.unwrap();
        let bad: toml::Table = toml::from_str("pol_interval = \"1s\"").unwrap();
        let err = crate::pubsub::registry::connect("db", "mysql", &bad)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("pubsub.db") && err.contains("pol_interval"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn unreachable_server_is_a_clear_error() {
        let err = MysqlPubSub::connect(MysqlConfig {
            url: "mysql://user:secret@127.0.0.1:1/test".into(),
            acquire_timeout: Duration::from_secs(1),
            ..MysqlConfig::default()
        })
        .await
        .err()
        .unwrap();
        let text = format!("{err}: {:?}", std::error::Error::source(&err));
        assert!(
            text.contains("mysql") && text.contains("127.0.0.1:1") && !text.contains("secret"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn raw_bench_reports_positive_figures() {
        let f = raw_bench(&url(), 300, 100).await.unwrap();
        eprintln!("mysql raw_bench (300 x 100 B): {f:?}");
        assert!(f.publish_per_sec > 0.0 && f.consume_per_sec > 0.0, "{f:?}");
    }

    #[test]
    fn table_names_are_safe_and_stable() {
        assert_eq!(table_name("orders"), "wasmill_t_orders");
        let odd = table_name("Orders.EU/v1");
        assert!(odd.starts_with("wasmill_t_orders_eu_v1_"), "{odd}");
        assert_ne!(odd, table_name("orders.eu/v1"), "case still matters");
        let long = "x".repeat(200);
        assert_eq!(table_name(&long).len(), MAX_IDENT);
        assert_ne!(table_name(&long), table_name(&"x".repeat(201)));
        assert_eq!(table_name(&long), table_name(&long));
        assert!(table_name("").len() > TABLE_PREFIX.len());
        for t in [odd, table_name(&long), table_name("ü`; DROP")] {
            assert!(
                t.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{t}"
            );
        }
    }

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redacted("mysql://u:p@ss@h:3306/db"),
            "mysql://u:***@h:3306/db"
        );
        assert_eq!(redacted("mysql://root@h/db"), "mysql://root@h/db");
        assert_eq!(redacted("mysql://h/db"), "mysql://h/db");
    }

    #[test]
    fn config_parses_durations_and_rejects_unknown_keys() {
        let cfg: MysqlConfig = toml::from_str(
            "url = \"mysql://a@b/c\"\npoll_interval = \"250ms\"\nbatch_size = 10\nstart_at_end = true",
        )
        .unwrap();
        assert_eq!(cfg.poll_interval, Duration::from_millis(250));
        assert_eq!(cfg.batch_size, 10);
        assert!(cfg.start_at_end);
        assert_eq!(cfg.max_connections, MysqlConfig::default().max_connections);
        assert!(toml::from_str::<MysqlConfig>("pol_interval = \"1s\"").is_err());
        assert!(toml::from_str::<MysqlConfig>("poll_interval = \"soon\"").is_err());
    }
}
