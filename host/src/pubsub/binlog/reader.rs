//! One subscription: a replication connection reading the binlog from the group's stored
//! position, each row change of the topic's table a message, `max_in_flight` unacked at a
//! time. An ack moves the stored position ([`Window`]: never past an unacked change); a nack
//! delivers the same change again from memory, before anything later. When the connection
//! fails, the reader waits for what is in flight to settle, then reads again (with backoff)
//! from after the last acked change. One reader per group and table holds a server lock; a
//! second host's reader stands by until the first one's connection is gone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use mysql_async::binlog::EventType;
use mysql_async::binlog::events::{Event, EventData, RowsEventData};
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStream, BinlogStreamRequest, Conn};
use tokio::sync::{Semaphore, watch};
use tokio_util::task::TaskTracker;

use super::NAME;
use super::config::{BinlogConfig, TableName};
use super::rows::{Column, row_json};
use super::store::{Store, merr};
use super::window::{Position, Window};
use crate::error::{Error, Result};
use crate::message::Message;
use crate::pubsub::kit::backoff::Reconnect;
use crate::pubsub::{SubscriptionSender, settle_redelivering};

/// MariaDB's GTID event (sent to replicas that announce `@mariadb_slave_capability = 4`).
const MARIADB_GTID_EVENT: u8 = 162;
/// With nothing in flight, how often the position is moved past changes of other tables, so
/// a quiet table's stored position does not point at a binlog file the server purged.
const IDLE_CHECKPOINT: Duration = Duration::from_secs(10);

/// A subscription's reader.
pub struct Reader {
    /// The stored position's name (`group.database.table`).
    pub name: String,
    /// The topic's table.
    pub table: TableName,
    /// Where to start when nothing was delivered yet.
    pub from: Position,
    /// The server.
    pub store: Store,
    /// The settings.
    pub config: Arc<BinlogConfig>,
    /// The replica server id of this subscription's connections.
    pub server_id: u32,
}

/// The transaction being read: where it starts, and how many changes of the table it had.
#[derive(Debug, Default)]
struct Txn {
    start: u64,
    rows: u64,
    gtid: Option<String>,
}

/// What a subscription shares with its settling tasks.
struct Delivery {
    sender: SubscriptionSender,
    permits: Arc<Semaphore>,
    window: Arc<Mutex<Window>>,
    saved: watch::Sender<Option<Position>>,
    settling: TaskTracker,
    redelivery: Duration,
}

impl Reader {
    /// Delivers to `sender` until the subscription ends, `max_in_flight` unacked at a time.
    pub async fn run(mut self, sender: SubscriptionSender, max_in_flight: usize) {
        let (saved, saves) = watch::channel(None);
        let saver = tokio::spawn(save_positions(self.store.clone(), self.name.clone(), saves));
        let d = Delivery {
            sender,
            permits: Arc::new(Semaphore::new(max_in_flight.max(1))),
            window: Arc::default(),
            saved,
            settling: TaskTracker::new(),
            redelivery: self.config.redelivery_delay,
        };
        let stop = d.sender.cancellation().clone();
        let mut reconnect = Reconnect::default();
        // Held until what this reader delivered settled and its last position was stored, so
        // a standby host starts after it.
        let mut held = None;
        while !d.sender.is_closed() {
            // A fresh lock after a failure: the old connection may be gone with the server.
            drop(held.take());
            let lock = match self.store.lock(&self.name, &stop).await {
                Ok(Some(lock)) => lock,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(backend = NAME, table = %self.table, error = %e, "lock");
                    if !reconnect.wait(&stop).await {
                        break;
                    }
                    continue;
                }
            };
            held = Some(lock);
            // A reader that has delivered nothing yet (a standby host that just took over)
            // starts from the position stored by the lock's last holder, not the one it read
            // when it subscribed.
            if lock_window(&d.window).resume_point().is_none() {
                match self.store.load(&self.name).await {
                    Ok(Some(at)) => self.from = at,
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(backend = NAME, table = %self.table, error = %e, "position");
                        if !reconnect.wait(&stop).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            let result = self.read(&d, &mut reconnect).await;
            match result {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(backend = NAME, table = %self.table, error = %e, "binlog stream");
                }
            }
            // Read again only once what is in flight settled (a nack redelivers from
            // memory), from after the last acked change.
            while !window_empty(&d.window) && !d.sender.is_closed() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if let Some(at) = lock_window(&d.window).resume_point() {
                self.from = at;
            }
            if !reconnect.wait(&stop).await {
                break;
            }
        }
        d.settling.close();
        d.settling.wait().await;
        drop(d);
        let _ = saver.await;
        drop(held);
    }

    /// Reads from `self.from` until the subscription ends (`Ok`) or the connection fails.
    async fn read(&self, d: &Delivery, reconnect: &mut Reconnect) -> Result<()> {
        let mut stream = self.open().await?;
        reconnect.reset();
        let mut file = self.from.file.clone();
        let mut txn = Txn {
            start: self.from.pos,
            ..Txn::default()
        };
        let mut columns: HashMap<u64, Arc<Vec<Column>>> = HashMap::new();
        let mut format_seen = false;
        let mut after_gtid = false;
        let mut last_checkpoint = Instant::now();
        let silence = self.config.heartbeat * 3;
        loop {
            let next = tokio::select! {
                biased;
                _ = d.sender.closed() => return Ok(()),
                n = tokio::time::timeout(silence, stream.next()) => n,
            };
            let event = match next {
                Err(_) => {
                    return Err(Error::pubsub_msg(
                        NAME,
                        format!("no event nor heartbeat for {silence:?}"),
                    ));
                }
                Ok(None) => return Err(Error::pubsub_msg(NAME, "the server ended the stream")),
                Ok(Some(Err(e))) => return Err(merr("binlog stream", e)),
                Ok(Some(Ok(event))) => event,
            };
            let header = event.header();
            let end = u64::from(header.log_pos());
            let start = end.saturating_sub(u64::from(header.event_size()));
            if header.event_type_raw() == MARIADB_GTID_EVENT {
                txn = Txn {
                    start,
                    rows: 0,
                    gtid: mariadb_gtid(&event),
                };
                after_gtid = true;
                continue;
            }
            if header.event_type() == Ok(EventType::FORMAT_DESCRIPTION_EVENT) {
                format_seen = true;
            }
            let data = match event.read_data() {
                Ok(Some(data)) => data,
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!(backend = NAME, error = %e, "event not parsed");
                    continue;
                }
            };
            let was_after_gtid = std::mem::take(&mut after_gtid);
            match data {
                // The first rotate of a stream comes before the format event, with its
                // checksum not cut off: the file is the one asked for.
                EventData::RotateEvent(r) if format_seen => {
                    file = r.name().into_owned();
                }
                EventData::GtidEvent(g) => {
                    txn = Txn {
                        start,
                        rows: 0,
                        gtid: Some(format!("{}:{}", uuid::Uuid::from_bytes(g.sid()), g.gno())),
                    };
                    after_gtid = true;
                }
                // MySQL's BEGIN follows its GTID event: the transaction started there.
                EventData::QueryEvent(q) if q.query_raw() == b"BEGIN" && !was_after_gtid => {
                    txn = Txn {
                        start,
                        ..Txn::default()
                    };
                }
                EventData::RowsEvent(rows) => {
                    let Some(tme) = stream.get_tme(rows.table_id()) else {
                        continue;
                    };
                    if tme.database_name() != self.table.database
                        || tme.table_name() != self.table.table
                    {
                        continue;
                    }
                    let cols = match columns.get(&rows.table_id()) {
                        Some(c) if c.len() == tme.columns_count() as usize => c.clone(),
                        _ => {
                            let c = Arc::new(self.store.columns(&self.table).await?);
                            columns.insert(rows.table_id(), c.clone());
                            c
                        }
                    };
                    let operation = operation(&rows);
                    for row in rows.rows(tme) {
                        let (before, after) = row.map_err(|e| Error::pubsub(NAME, "row", e))?;
                        let at = Position {
                            file: file.clone(),
                            pos: txn.start,
                            skip: txn.rows,
                        };
                        txn.rows += 1;
                        if at.file == self.from.file
                            && at.pos == self.from.pos
                            && at.skip < self.from.skip
                        {
                            continue; // acked before the restart
                        }
                        let image = after.as_ref().or(before.as_ref());
                        let payload = image.map(|r| row_json(r, &cols)).unwrap_or_default();
                        let mut msg = Message::with_uuid(
                            change_uuid(&self.table, &at),
                            serde_json::to_vec(&payload).unwrap_or_default(),
                        );
                        let m = &mut msg.metadata;
                        m.set("table", self.table.to_string());
                        m.set("operation", operation);
                        m.set("binlog_file", at.file.clone());
                        m.set("binlog_pos", at.pos.to_string());
                        m.set("binlog_row", at.skip.to_string());
                        if let Some(gtid) = &txn.gtid {
                            m.set("gtid", gtid.clone());
                        }
                        if let (Some(before), Some(_)) = (&before, &after) {
                            let before = serde_json::Value::Object(row_json(before, &cols));
                            m.set("before", before.to_string());
                        }
                        if !self.deliver(d, msg, at).await {
                            return Ok(());
                        }
                    }
                }
                // The transaction is over: with nothing in flight, now and then store its end,
                // so the position follows the binlog past other tables' changes.
                EventData::XidEvent(_)
                    if last_checkpoint.elapsed() >= IDLE_CHECKPOINT && window_empty(&d.window) =>
                {
                    last_checkpoint = Instant::now();
                    let idle = Position {
                        file: file.clone(),
                        pos: end,
                        skip: 0,
                    };
                    d.saved.send_replace(Some(idle));
                }
                _ => {}
            }
        }
    }

    /// Opens the replication stream at `self.from`.
    async fn open(&self) -> Result<BinlogStream> {
        let mut conn = Conn::new(self.store.opts().clone())
            .await
            .map_err(|e| merr("connect", e))?;
        // MariaDB sends its GTID events to replicas that say they understand them (MySQL
        // ignores the variable); the server sends a heartbeat when it has nothing to send.
        let heartbeat_ns = self.config.heartbeat.as_nanos().max(1_000_000);
        conn.query_drop(format!(
            "SET @mariadb_slave_capability = 4, @master_heartbeat_period = {heartbeat_ns}"
        ))
        .await
        .map_err(|e| merr("replication settings", e))?;
        let request = BinlogStreamRequest::new(self.server_id)
            .with_filename(self.from.file.as_bytes())
            .with_pos(self.from.pos);
        conn.get_binlog_stream(request)
            .await
            .map_err(|e| merr(format!("read the binlog from {}", self.from), e))
    }

    /// Hands `msg` (at `at`) to the subscription once the window has room; false when the
    /// subscription ended.
    async fn deliver(&self, d: &Delivery, msg: Message, at: Position) -> bool {
        let permit = tokio::select! {
            biased;
            _ = d.sender.closed() => return false,
            p = d.permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return false,
            },
        };
        let seq = lock_window(&d.window).delivered(at);
        if d.sender.send(msg.clone()).await.is_err() {
            return false;
        }
        let (sender, window) = (d.sender.clone(), d.window.clone());
        let (saved, redelivery) = (d.saved.clone(), d.redelivery);
        d.settling.spawn(async move {
            let acked = settle_redelivering(msg, &sender, redelivery, || async {}).await;
            drop(permit);
            if acked && let Some(at) = lock_window(&window).acked(seq) {
                saved.send_replace(Some(at));
            }
        });
        true
    }
}

fn lock_window(window: &Mutex<Window>) -> std::sync::MutexGuard<'_, Window> {
    window.lock().unwrap_or_else(|p| p.into_inner())
}

fn window_empty(window: &Mutex<Window>) -> bool {
    lock_window(window).is_empty()
}

/// Stores the latest acked position whenever it moves (retrying a failed write with the next
/// one), and the last one once the subscription ended.
async fn save_positions(store: Store, name: String, mut saves: watch::Receiver<Option<Position>>) {
    while saves.changed().await.is_ok() {
        let Some(at) = saves.borrow_and_update().clone() else {
            continue;
        };
        if let Err(e) = store.save(&name, &at).await {
            tracing::warn!(backend = NAME, %name, error = %e, "position not stored");
            tokio::time::sleep(Duration::from_millis(200)).await;
            saves.mark_changed();
        }
    }
}

/// `insert`, `update` or `delete`.
fn operation(rows: &RowsEventData<'_>) -> &'static str {
    match rows {
        RowsEventData::WriteRowsEventV1(_) | RowsEventData::WriteRowsEvent(_) => "insert",
        RowsEventData::UpdateRowsEventV1(_)
        | RowsEventData::UpdateRowsEvent(_)
        | RowsEventData::PartialUpdateRowsEvent(_) => "update",
        RowsEventData::DeleteRowsEventV1(_) | RowsEventData::DeleteRowsEvent(_) => "delete",
    }
}

/// MariaDB's GTID `domain-server-sequence` from its GTID event.
fn mariadb_gtid(event: &Event) -> Option<String> {
    let data = event.data();
    let seq = u64::from_le_bytes(data.get(0..8)?.try_into().ok()?);
    let domain = u32::from_le_bytes(data.get(8..12)?.try_into().ok()?);
    Some(format!("{domain}-{}-{seq}", event.header().server_id()))
}

/// The same uuid each time the change at `at` of `table` is read, so a deduplicator can drop
/// a redelivery.
fn change_uuid(table: &TableName, at: &Position) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(format!("{table}/{at}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_has_the_same_uuid_each_time_it_is_read() {
        let t = TableName::parse("orders", "shop").unwrap();
        let at = Position {
            file: "bin.000001".into(),
            pos: 100,
            skip: 0,
        };
        assert_eq!(change_uuid(&t, &at), change_uuid(&t, &at));
        assert_ne!(change_uuid(&t, &at), change_uuid(&t, &at.next()));
    }
}
