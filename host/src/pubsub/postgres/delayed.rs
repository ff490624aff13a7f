//! Delayed messages on PostgreSQL: a message published with its due time ahead
//! (`_watermill_delayed_until`) is stored in `wasmill_delayed` instead of `wasmill_messages`,
//! and moved there by the subscriptions of its topic, on any host, once it is due
//! ([`crate::pubsub::delay::run_mover`]). A move is one transaction: the topic's lock (so
//! offsets still become visible in order), `DELETE … FOR UPDATE SKIP LOCKED … RETURNING` into
//! `INSERT`, and a notification; two movers never move the same message, and a host killed
//! mid-way leaves it where it was. Messages published after it are not held back.

use std::time::SystemTime;

use super::{PostgresPubSub, lock_topic};
use crate::message::Message;
use crate::pubsub::delay::millis;

/// The table of messages waiting for their due time (milliseconds since the epoch).
pub(super) const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS wasmill_delayed (
    id BIGSERIAL PRIMARY KEY, topic TEXT NOT NULL, due BIGINT NOT NULL,
    uuid TEXT NOT NULL, metadata TEXT NOT NULL, payload BYTEA NOT NULL)";

/// Its index: a topic's messages by due time.
pub(super) const CREATE_INDEX: &str =
    "CREATE INDEX IF NOT EXISTS wasmill_delayed_due ON wasmill_delayed (topic, due)";

/// Stores `msg` aside until `due`, in the publish's transaction.
pub(super) async fn store(
    tx: &mut sqlx::PgConnection,
    topic: &str,
    msg: &Message,
    due: u64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO wasmill_delayed (topic, due, uuid, metadata, payload)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(topic)
    .bind(due as i64)
    .bind(&msg.uuid)
    .bind(crate::pubsub::stored::encode_metadata(&msg.metadata))
    .bind(&msg.payload[..])
    .execute(tx)
    .await
    .map(|_| ())
}

impl PostgresPubSub {
    /// When `topic`'s next delayed message is due, if one waits.
    async fn next_due(&self, topic: &str) -> sqlx::Result<Option<u64>> {
        let next: Option<i64> =
            sqlx::query_scalar("SELECT MIN(due) FROM wasmill_delayed WHERE topic = $1")
                .bind(topic)
                .fetch_one(&self.pool)
                .await?;
        Ok(next.map(|n| n.max(0) as u64))
    }

    /// Moves `topic`'s due messages into the topic, in due order; returns when the next one
    /// still waiting is due. Takes no lock while nothing is due.
    pub(super) async fn move_due(&self, topic: &str) -> crate::Result<Option<u64>> {
        let failed = |e| super::db_err(format!("move delayed messages of {topic}"), e);
        let now = millis(SystemTime::now());
        match self.next_due(topic).await.map_err(failed)? {
            Some(next) if next <= now => {}
            other => return Ok(other),
        }
        let mut tx = self.pool.begin().await.map_err(failed)?;
        lock_topic(&mut tx, topic).await?;
        let moved = sqlx::query(
            "WITH due AS (
                 DELETE FROM wasmill_delayed WHERE id IN (
                     SELECT id FROM wasmill_delayed WHERE topic = $1 AND due <= $2
                     ORDER BY due, id FOR UPDATE SKIP LOCKED)
                 RETURNING id, due, uuid, metadata, payload)
             INSERT INTO wasmill_messages (topic, uuid, metadata, payload)
             SELECT $1, uuid, metadata, payload FROM due ORDER BY due, id",
        )
        .bind(topic)
        .bind(now as i64)
        .execute(&mut *tx)
        .await
        .map_err(failed)?
        .rows_affected();
        if moved > 0 {
            sqlx::query("SELECT pg_notify('wasmill', $1)")
                .bind(topic)
                .execute(&mut *tx)
                .await
                .map_err(failed)?;
        }
        tx.commit().await.map_err(failed)?;
        if moved > 0 {
            self.wake.notify_waiters();
        }
        self.next_due(topic).await.map_err(failed)
    }
}
