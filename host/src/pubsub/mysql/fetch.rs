//! Reading a topic table: the delivery transaction that claims the group's offset, the rows read ahead while a batch is delivered, and rows back into messages.

use super::*;

/// A delivery transaction: it holds the group's offset row (`FOR UPDATE`), so one
/// subscriber of the group delivers at a time and the offset moves in order.
pub(super) struct Claim {
    pub(super) tx: sqlx::Transaction<'static, MySql>,
    /// The group's offset when the row was claimed.
    pub(super) stored: i64,
    /// The offset of the last message acked since.
    pub(super) acked: i64,
}

/// How a subscription reads its topic table: a delivery transaction claims the group's
/// offset row and reads up to `batch_size` rows after it; when they are all settled (the
/// next fetch, or the end of the subscription), the offset of the last acked one is stored
/// and the transaction commits.
///
/// While a batch is delivered, the rows after it are read ahead on another pooled
/// connection ([`Prefetch`]): the next delivery transaction takes them instead of reading,
/// if the group's offset is where this subscription left it.
pub(super) struct MysqlFetch {
    pub(super) pubsub: MysqlPubSub,
    pub(super) table: String,
    pub(super) claim: Option<Claim>,
    pub(super) prefetch: Option<Prefetch>,
    pub(super) reconnect: Reconnect,
}

/// The rows after offset `after`, read without a lock while the batch before them is
/// delivered. Valid for a delivery transaction whose claimed offset is `after`: publishers
/// commit a topic's rows in offset order (the topic lock), so rows read after an offset are
/// a gap-free run of what follows it.
pub(super) struct Prefetch {
    pub(super) after: i64,
    pub(super) rows: tokio::task::JoinHandle<Option<Vec<(Message, i64)>>>,
}

impl Prefetch {
    /// How long a read-ahead waits for a pooled connection: none free means the pool is busy
    /// with other subscriptions, and the next delivery transaction reads for itself.
    const ACQUIRE: Duration = Duration::from_millis(50);

    /// Starts reading up to `max` rows of `table` after `after` on a connection of the pool.
    pub(super) fn start(pubsub: &MysqlPubSub, table: &str, after: i64, max: usize) -> Self {
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
    pub(super) async fn take(self, claimed: i64) -> Option<Vec<(Message, i64)>> {
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
pub(super) fn hex_literal(text: &str) -> String {
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
pub(super) fn select_after(table: &str) -> String {
    format!(
        "SELECT `offset`, uuid, metadata, payload FROM `{table}`
         WHERE `offset` > ? ORDER BY `offset` LIMIT ?"
    )
}

impl MysqlFetch {
    /// Stores the claim's acked offset (if it moved) and releases the group's row.
    pub(super) async fn settle(pubsub: &MysqlPubSub, table: &str, claim: Claim) -> Result<()> {
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
    pub(super) async fn renew(
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
    pub(super) async fn read(&mut self, max: usize) -> Result<Option<Vec<(Message, i64)>>> {
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
                self.reconnect.reset();
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
                let delay = self.reconnect.next_delay();
                tracing::warn!(
                    table = %self.table,
                    url = %redacted(&self.pubsub.config.url),
                    "mysql subscription: {e}; retrying in {delay:?}"
                );
                delay
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

pub(super) fn decode(row: &sqlx::mysql::MySqlRow) -> Result<(i64, Message)> {
    let offset: i64 = row.try_get(0).map_err(|e| db_err("read offset", e))?;
    let uuid: String = row.try_get(1).map_err(|e| db_err("read uuid", e))?;
    let metadata: String = row.try_get(2).map_err(|e| db_err("read metadata", e))?;
    let payload: Vec<u8> = row.try_get(3).map_err(|e| db_err("read payload", e))?;
    let mut msg = Message::with_uuid(uuid, Bytes::from(payload));
    msg.metadata = crate::pubsub::stored::decode_metadata(NAME, &msg.uuid, metadata.as_bytes());
    Ok((offset, msg))
}
