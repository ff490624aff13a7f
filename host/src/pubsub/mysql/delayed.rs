//! Delayed messages on MySQL / MariaDB: a message published with its due time ahead
//! (`_watermill_delayed_until`) is stored in `wasmill_delayed` (one table for every topic,
//! keyed by the topic's table) instead of the topic's table, in the publish's transaction, and
//! moved into the topic by its subscriptions, on any host, once it is due
//! ([`crate::pubsub::delay::run_mover`]). A move is one transaction under the topic's publish
//! lock (so offsets still become visible in order, and two movers never move a message
//! twice): `INSERT … SELECT` in due order, then `DELETE` of what was moved. A host killed
//! mid-way leaves the messages where they were. Messages published after a delayed one are
//! not held back.

use std::time::SystemTime;

use super::publish::{Row3, lock_topic};
use super::{MySqlConnection, MysqlPubSub, db_err, waker};
use crate::error::Result;
use crate::pubsub::delay::millis;
use sqlx::AssertSqlSafe;

/// The table of messages waiting for their due time (milliseconds since the epoch).
pub(super) const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS wasmill_delayed (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    topic_table VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    due BIGINT NOT NULL,
    uuid TEXT NOT NULL,
    metadata LONGTEXT NOT NULL,
    payload LONGBLOB NOT NULL,
    INDEX wasmill_delayed_due (topic_table, due)
) ENGINE = InnoDB";

/// A row held back until its due time.
pub(crate) type Later<'a> = (u64, Row3<'a>);

/// Stores `rows` aside until their due times, in the publish's transaction (which holds the
/// topic's lock).
pub(super) async fn store(
    conn: &mut MySqlConnection,
    table: &str,
    rows: &[Later<'_>],
) -> std::result::Result<(), sqlx::Error> {
    for (due, (uuid, metadata, payload)) in rows {
        sqlx::query(
            "INSERT INTO wasmill_delayed (topic_table, due, uuid, metadata, payload)
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(table)
        .bind(*due as i64)
        .bind(*uuid)
        .bind(metadata.as_str())
        .bind(*payload)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

impl MysqlPubSub {
    /// When the next delayed message of the topic in `table` is due, if one waits.
    async fn next_due(&self, table: &str) -> sqlx::Result<Option<u64>> {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT CAST(MIN(due) AS SIGNED) FROM wasmill_delayed WHERE topic_table = ?",
        )
        .bind(table)
        .fetch_one(&self.pool)
        .await?;
        Ok(next.map(|n| n.max(0) as u64))
    }

    /// Moves the due messages of the topic in `table` into it, in due order; returns when
    /// the next one still waiting is due. Takes no lock while nothing is due.
    pub(super) async fn move_due(&self, table: &str) -> Result<Option<u64>> {
        let what = format!("move delayed messages of {table}");
        let failed = |e| db_err(&what, e);
        let now = millis(SystemTime::now());
        match self.next_due(table).await.map_err(failed)? {
            Some(next) if next <= now => {}
            other => return Ok(other),
        }
        let moved = self
            .retry(&what, || async {
                let mut tx = self.pool.begin().await?;
                lock_topic(&mut tx, table).await?;
                let insert = format!(
                    "INSERT INTO `{table}` (uuid, metadata, payload)
                     SELECT uuid, metadata, payload FROM wasmill_delayed
                     WHERE topic_table = ? AND due <= ? ORDER BY due, id"
                );
                let moved = sqlx::query(AssertSqlSafe(insert))
                    .bind(table)
                    .bind(now as i64)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                sqlx::query("DELETE FROM wasmill_delayed WHERE topic_table = ? AND due <= ?")
                    .bind(table)
                    .bind(now as i64)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(moved)
            })
            .await?;
        if moved > 0 {
            waker(&self.config.url, table).notify_waiters();
        }
        self.next_due(table).await.map_err(failed)
    }
}
