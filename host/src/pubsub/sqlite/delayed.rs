//! Delayed messages on SQLite: a message published with its due time ahead
//! (`_watermill_delayed_until`) is stored in `wasmill_delayed` instead of `wasmill_messages`,
//! and moved there, in one transaction, by the subscriptions of its topic once it is due
//! ([`crate::pubsub::delay::run_mover`]). It survives a restart, and the messages published
//! after it are not held back. A move takes SQLite's write lock, so two subscriptions never
//! move the same message.

use std::time::SystemTime;

use super::SqlitePubSub;
use crate::message::Message;
use crate::pubsub::delay::millis;

/// The table of messages waiting for their due time (milliseconds since the epoch).
pub(super) const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS wasmill_delayed (
    id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, due INTEGER NOT NULL,
    uuid TEXT NOT NULL, metadata TEXT NOT NULL, payload BLOB NOT NULL)";

/// Its index: a topic's messages by due time.
pub(super) const CREATE_INDEX: &str =
    "CREATE INDEX IF NOT EXISTS wasmill_delayed_due ON wasmill_delayed (topic, due)";

/// Stores `msg` aside until `due`, in the publish's transaction.
pub(super) async fn store(
    tx: &mut sqlx::SqliteConnection,
    topic: &str,
    msg: &Message,
    due: u64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO wasmill_delayed (topic, due, uuid, metadata, payload) VALUES (?, ?, ?, ?, ?)",
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

impl SqlitePubSub {
    /// When `topic`'s next delayed message is due, if one waits.
    async fn next_due(&self, topic: &str) -> sqlx::Result<Option<u64>> {
        let next: Option<i64> =
            sqlx::query_scalar("SELECT MIN(due) FROM wasmill_delayed WHERE topic = ?")
                .bind(topic)
                .fetch_one(&self.pool)
                .await?;
        Ok(next.map(|n| n.max(0) as u64))
    }

    /// Moves `topic`'s due messages into the topic, in due order; returns when the next one
    /// still waiting is due. Only looks (no write lock) while nothing is due.
    pub(super) async fn move_due(&self, topic: &str) -> sqlx::Result<Option<u64>> {
        let now = millis(SystemTime::now());
        match self.next_due(topic).await? {
            Some(next) if next <= now => {}
            other => return Ok(other),
        }
        let mut tx = self.pool.begin().await?;
        let moved = sqlx::query(
            "INSERT INTO wasmill_messages (topic, uuid, metadata, payload)
             SELECT topic, uuid, metadata, payload FROM wasmill_delayed
             WHERE topic = ? AND due <= ? ORDER BY due, id",
        )
        .bind(topic)
        .bind(now as i64)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query("DELETE FROM wasmill_delayed WHERE topic = ? AND due <= ?")
            .bind(topic)
            .bind(now as i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        if moved > 0 {
            self.wake.notify_waiters();
        }
        self.next_due(topic).await
    }
}
