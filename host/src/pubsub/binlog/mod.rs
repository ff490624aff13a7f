//! The MySQL/MariaDB binary log as a source (`kind = "mysql-binlog"`): each row inserted,
//! updated or deleted in a table is a message on the topic named after the table (`TABLE` in
//! the URL's database, or `DATABASE.TABLE`). Read with `mysql_async`'s replication stream
//! (`COM_BINLOG_DUMP`), as a replica would; the server needs `log_bin` on and
//! `binlog_format = ROW`.
//!
//! - **Message**: the payload is the row image as a JSON object (after the change for an
//!   insert or update, before it for a delete; [`rows`] says how values are written). Metadata:
//!   `table` (`database.table`), `operation` (`insert`, `update`, `delete`), `binlog_file`,
//!   `binlog_pos` (the transaction's start) and `binlog_row` (the change's number within the
//!   transaction), `gtid` when the server logs GTIDs, and `before` (the row before an update,
//!   as JSON). The uuid is derived from the position, the same at each redelivery.
//! - **At-least-once, resumable**: each consumer group's position per table is stored in
//!   `positions_table` once the changes before it are acked, never past an unacked one
//!   ([`window`]). A host restarted (or killed) reads again from there: nothing is skipped,
//!   and what repeats is at most what was in flight. A group with no position starts at the
//!   binlog's end (`start = "end"`, the default: set by `subscribe_initialize` or the first
//!   subscription) or its beginning.
//! - **One reader per group and table**: a server lock (`GET_LOCK`) held by the reading host;
//!   another host with the same config stands by and takes over when the first one's
//!   connection is gone (killed: as soon as the server notices).
//! - **Read-only**: publishing to it is an error (write to the table instead).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Publisher, SubscribeOptions, Subscriber, Subscription, closed};
use crate::error::{Error, Result};
use crate::message::Message;
use crate::pubsub::registry::{self, Backend};

mod config;
mod reader;
pub mod rows;
mod store;
#[cfg(test)]
mod tests;
pub mod window;

pub use config::{BinlogConfig, Start, TableName};

const NAME: &str = "mysql-binlog";

/// The binlog source; a subscriber (and a publisher that refuses).
#[derive(Clone)]
pub struct BinlogSource {
    store: store::Store,
    config: Arc<BinlogConfig>,
    group: String,
    next_server_id: Arc<AtomicU32>,
    closed: CancellationToken,
    tasks: TaskTracker,
}

impl BinlogSource {
    /// Connects: fails with a clear error when the server is unreachable or does not log row
    /// changes; creates the positions table.
    pub async fn connect(config: BinlogConfig) -> Result<BinlogSource> {
        config
            .validate()
            .map_err(|e| Error::pubsub_msg(NAME, e.to_string()))?;
        let store = store::Store::connect(&config).await?;
        let first_id = config
            .server_id
            .unwrap_or_else(|| rand::random_range(1_000_000..2_000_000_000));
        Ok(BinlogSource {
            store,
            group: config.group().to_string(),
            config: Arc::new(config),
            next_server_id: Arc::new(AtomicU32::new(first_id)),
            closed: CancellationToken::new(),
            tasks: TaskTracker::new(),
        })
    }

    /// The same source whose subscriptions use consumer group `group`, starting at `start`
    /// when the group has no position (tails: a fresh group from the end).
    pub fn in_group(&self, group: &str, start: Start) -> BinlogSource {
        let mut config = (*self.config).clone();
        config.start = start;
        BinlogSource {
            group: group.to_string(),
            config: Arc::new(config),
            closed: CancellationToken::new(),
            tasks: TaskTracker::new(),
            ..self.clone()
        }
    }

    fn table(&self, topic: &str) -> Result<TableName> {
        TableName::parse(topic, self.store.database())
    }

    /// The stored position's name of `table` for this source's group.
    fn position_name(&self, table: &TableName) -> String {
        format!("{}.{table}", self.group)
    }

    /// The group's stored position for `table`, storing the configured start first if there
    /// is none (so changes made from then on are kept). Fails if the table does not exist.
    async fn position(&self, table: &TableName) -> Result<window::Position> {
        if self.store.columns(table).await?.is_empty() {
            return Err(Error::pubsub_msg(
                NAME,
                format!(
                    "table {table} does not exist (a topic names a table: TABLE or DATABASE.TABLE)"
                ),
            ));
        }
        let name = self.position_name(table);
        if let Some(at) = self.store.load(&name).await? {
            return Ok(at);
        }
        let at = match self.config.start {
            Start::End => self.store.end().await?,
            Start::Beginning => self.store.beginning().await?,
        };
        self.store.save(&name, &at).await?;
        Ok(at)
    }
}

#[async_trait]
impl Publisher for BinlogSource {
    async fn publish(&self, topic: &str, _messages: Vec<Message>) -> Result<()> {
        Err(Error::pubsub_msg(
            NAME,
            format!(
                "cannot publish to {topic:?}: a binlog is a source only; write rows to the \
                 table, or publish to another backend"
            ),
        ))
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

#[async_trait]
impl Subscriber for BinlogSource {
    async fn subscribe_with(&self, topic: &str, options: SubscribeOptions) -> Result<Subscription> {
        if self.closed.is_cancelled() {
            return Err(closed(NAME));
        }
        let table = self.table(topic)?;
        let from = self.position(&table).await?;
        let reader = reader::Reader {
            name: self.position_name(&table),
            table,
            from,
            store: self.store.clone(),
            config: self.config.clone(),
            server_id: self.next_server_id.fetch_add(1, Ordering::Relaxed),
        };
        let (sub, sender) = Subscription::channel(options.max_in_flight, &self.closed);
        self.tasks.spawn(reader.run(sender, options.max_in_flight));
        Ok(sub)
    }

    async fn subscribe_initialize(&self, topic: &str) -> Result<()> {
        let table = self.table(topic)?;
        self.position(&table).await.map(|_| ())
    }

    async fn close(&self) -> Result<()> {
        self.closed.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        Ok(())
    }

    async fn remove_topic(&self, topic: &str) -> Result<bool> {
        let table = self.table(topic)?;
        self.store.forget(&[self.position_name(&table)]).await
    }

    async fn end_tail(&self, topic: &str) -> Result<()> {
        Subscriber::close(self).await?;
        self.remove_topic(topic).await.map(|_| ())
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

/// This backend in the registry's table ([`registry::BACKENDS`]).
pub const BACKEND: registry::BackendKind = registry::BackendKind {
    name: NAME,
    check: |name, table| {
        let cfg: BinlogConfig = registry::settings(name, table)?;
        cfg.validate()
            .map_err(|e| Error::Config(format!("pubsub.{name}.{e}")))
    },
    connect: |name, table| {
        Box::pin(async move {
            let cfg: BinlogConfig = registry::settings(&name, &table)?;
            cfg.validate()
                .map_err(|e| Error::Config(format!("pubsub.{name}.{e}")))?;
            let source = BinlogSource::connect(cfg).await?;
            Ok(Backend::shared(&name, NAME, source.clone())
                .with_tail(move || source.in_group(&registry::tail_group(), Start::End)))
        })
    },
    raw_bench: None,
};
