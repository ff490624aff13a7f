//! Publishing: rows from messages, the topic lock, multi-row INSERTs, and `publish_in_tx` for the caller's transaction.

use super::delayed::Later;
use super::*;

/// One row to insert: uuid, metadata JSON, payload.
pub(crate) type Row3<'a> = (&'a str, String, &'a [u8]);

/// The rows of `messages`: those to publish now, and those held back until their due time
/// ([`crate::pubsub::delay`]).
pub(super) fn encode(messages: &[Message]) -> (Vec<Row3<'_>>, Vec<Later<'_>>) {
    let mut now = Vec::with_capacity(messages.len());
    let mut later = Vec::new();
    for m in messages {
        let metadata = crate::pubsub::stored::encode_metadata(&m.metadata);
        let row = (m.uuid.as_str(), metadata, &m.payload[..]);
        match crate::pubsub::delay::due_millis(m) {
            Some(due) => later.push((due, row)),
            None => now.push(row),
        }
    }
    (now, later)
}

/// Takes the topic's publish lock inside the current transaction of `conn`, registering the
/// topic first if it has no row yet.
pub(super) async fn lock_topic(
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
pub(super) async fn insert_rows(
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
        let (rows, later) = encode(&messages);
        self.publish_rows(&table, &rows, &later).await?;
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
    let (rows, later) = encode(messages);
    lock_topic(tx, &table)
        .await
        .map_err(|e| db_err(format!("lock topic {topic}"), e))?;
    let inserted = async {
        insert_rows(tx, &table, &rows).await?;
        delayed::store(tx, &table, &later).await
    };
    inserted.await.map_err(|e| {
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
