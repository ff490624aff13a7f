//! What the binlog source asks the server outside the replication stream: whether the binlog
//! is on and in row format, where it starts and ends, a table's columns, each group's stored
//! position (a table of its own), and the lock that keeps one reader per group and table.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, Pool, Row};
use tokio_util::sync::CancellationToken;

use super::NAME;
use super::config::{BinlogConfig, TableName};
use super::rows::Column;
use super::window::Position;
use crate::error::{Error, Result};
use crate::pubsub::kit::url::redacted;

pub(crate) fn merr(what: impl std::fmt::Display, e: mysql_async::Error) -> Error {
    Error::pubsub(NAME, what.to_string(), e)
}

/// The server's connection pool and the positions table.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    opts: Opts,
    table: String,
}

impl Store {
    /// Connects, checks that the server logs row changes, and creates the positions table.
    pub async fn connect(cfg: &BinlogConfig) -> Result<Store> {
        let url = redacted(&cfg.url);
        let opts = Opts::from_url(&cfg.url).map_err(|e| Error::Config(format!("url: {e}")))?;
        let store = Store {
            pool: Pool::new(opts.clone()),
            opts,
            table: cfg.positions_table.clone(),
        };
        let mut conn = store
            .conn()
            .await
            .map_err(|e| merr(format!("connect {url}"), e))?;
        let (log_bin, format): (Option<i64>, Option<String>) = conn
            .query_first("SELECT @@log_bin, @@binlog_format")
            .await
            .map_err(|e| merr("read @@log_bin", e))?
            .unwrap_or_default();
        if log_bin != Some(1) {
            return Err(Error::pubsub_msg(
                NAME,
                format!(
                    "{url}: the binary log is off; start the server with --log-bin \
                     --binlog-format=ROW (and a --server-id)"
                ),
            ));
        }
        let format = format.unwrap_or_default();
        if !format.eq_ignore_ascii_case("ROW") {
            return Err(Error::pubsub_msg(
                NAME,
                format!(
                    "{url}: binlog_format is {format}; row changes are logged only with \
                     binlog_format=ROW (--binlog-format=ROW, or SET GLOBAL binlog_format=ROW)"
                ),
            ));
        }
        conn.query_drop(format!(
            "CREATE TABLE IF NOT EXISTS {} (
                name VARCHAR(255) NOT NULL PRIMARY KEY,
                file VARCHAR(255) NOT NULL,
                pos BIGINT UNSIGNED NOT NULL,
                skip_rows BIGINT UNSIGNED NOT NULL,
                updated_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3)
            )",
            store.table
        ))
        .await
        .map_err(|e| merr(format!("create table {}", store.table), e))?;
        Ok(store)
    }

    async fn conn(&self) -> std::result::Result<Conn, mysql_async::Error> {
        self.pool.get_conn().await
    }

    /// The connection options (for the replication connections, outside the pool).
    pub fn opts(&self) -> &Opts {
        &self.opts
    }

    /// The database topics name tables of by default.
    pub fn database(&self) -> &str {
        self.opts.db_name().unwrap_or_default()
    }

    /// The position stored for `name` (`group.database.table`), if any.
    pub async fn load(&self, name: &str) -> Result<Option<Position>> {
        let mut conn = self.conn().await.map_err(|e| merr("connect", e))?;
        let row: Option<(String, u64, u64)> = conn
            .exec_first(
                format!(
                    "SELECT file, pos, skip_rows FROM {} WHERE name = ?",
                    self.table
                ),
                (name,),
            )
            .await
            .map_err(|e| merr(format!("read the position of {name}"), e))?;
        Ok(row.map(|(file, pos, skip)| Position { file, pos, skip }))
    }

    /// Stores `at` as the position of `name`.
    pub async fn save(&self, name: &str, at: &Position) -> Result<()> {
        let mut conn = self.conn().await.map_err(|e| merr("connect", e))?;
        conn.exec_drop(
            format!(
                "INSERT INTO {} (name, file, pos, skip_rows) VALUES (?, ?, ?, ?)
                 ON DUPLICATE KEY UPDATE file = VALUES(file), pos = VALUES(pos),
                 skip_rows = VALUES(skip_rows), updated_at = CURRENT_TIMESTAMP(3)",
                self.table
            ),
            (name, &at.file, at.pos, at.skip),
        )
        .await
        .map_err(|e| merr(format!("store the position of {name}"), e))
    }

    /// Deletes the stored positions of `names`; whether one existed.
    pub async fn forget(&self, names: &[String]) -> Result<bool> {
        let mut conn = self.conn().await.map_err(|e| merr("connect", e))?;
        let mut deleted = false;
        for name in names {
            conn.exec_drop(
                format!("DELETE FROM {} WHERE name = ?", self.table),
                (name,),
            )
            .await
            .map_err(|e| merr(format!("delete the position of {name}"), e))?;
            deleted |= conn.affected_rows() > 0;
        }
        Ok(deleted)
    }

    /// The end of the binlog: where changes made from now on will be.
    pub async fn end(&self) -> Result<Position> {
        let mut conn = self.conn().await.map_err(|e| merr("connect", e))?;
        // MySQL 8.4 renamed the statement.
        let row: Option<Row> = match conn.query_first("SHOW MASTER STATUS").await {
            Ok(row) => row,
            Err(_) => conn
                .query_first("SHOW BINARY LOG STATUS")
                .await
                .map_err(|e| merr("SHOW BINARY LOG STATUS", e))?,
        };
        let row = row.ok_or_else(|| Error::pubsub_msg(NAME, "the server has no binary log"))?;
        Ok(Position {
            file: row.get::<String, _>(0).unwrap_or_default(),
            pos: row.get::<u64, _>(1).unwrap_or(4),
            skip: 0,
        })
    }

    /// The start of the oldest binlog file the server still has.
    pub async fn beginning(&self) -> Result<Position> {
        let mut conn = self.conn().await.map_err(|e| merr("connect", e))?;
        let row: Option<Row> = conn
            .query_first("SHOW BINARY LOGS")
            .await
            .map_err(|e| merr("SHOW BINARY LOGS", e))?;
        let row = row.ok_or_else(|| Error::pubsub_msg(NAME, "the server has no binary log"))?;
        Ok(Position {
            file: row.get::<String, _>(0).unwrap_or_default(),
            pos: 4,
            skip: 0,
        })
    }

    /// The columns of `table`, in order; empty when it does not exist.
    pub async fn columns(&self, table: &TableName) -> Result<Vec<Column>> {
        let mut conn = self.conn().await.map_err(|e| merr("connect", e))?;
        let rows: Vec<(String, String, String)> = conn
            .exec(
                "SELECT COLUMN_NAME, LOWER(DATA_TYPE), LOWER(COLUMN_TYPE)
                 FROM information_schema.COLUMNS
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                (&table.database, &table.table),
            )
            .await
            .map_err(|e| merr(format!("columns of {table}"), e))?;
        Ok(rows
            .into_iter()
            .map(|(name, data_type, column_type)| Column {
                name,
                data_type,
                unsigned: column_type.contains("unsigned"),
            })
            .collect())
    }

    /// Takes the server lock of `name` on a connection of its own, waiting while another
    /// host holds it (that host reads the table; this one stands by). Returns the connection
    /// holding it (dropping it releases the lock), or `None` if `stop` came first.
    pub async fn lock(&self, name: &str, stop: &CancellationToken) -> Result<Option<Conn>> {
        let lock = lock_name(name);
        let mut conn = Conn::new(self.opts.clone())
            .await
            .map_err(|e| merr("connect", e))?;
        let mut told = false;
        loop {
            let got: Option<Option<i64>> = tokio::select! {
                _ = stop.cancelled() => return Ok(None),
                r = conn.exec_first("SELECT GET_LOCK(?, 1)", (&lock,)) => {
                    r.map_err(|e| merr(format!("GET_LOCK {lock}"), e))?
                }
            };
            if got.flatten() == Some(1) {
                if told {
                    tracing::info!(backend = NAME, %name, "took over: the lock is ours");
                }
                return Ok(Some(conn));
            }
            if !told {
                tracing::info!(
                    backend = NAME,
                    %name,
                    "another host reads this table for the group; standing by"
                );
                told = true;
            }
            tokio::select! {
                _ = stop.cancelled() => return Ok(None),
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }
}

/// The server lock's name for `name` (at most 64 characters, as MySQL requires).
fn lock_name(name: &str) -> String {
    let readable = format!("wasmill-binlog:{name}");
    if readable.len() <= 64 {
        return readable;
    }
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(name.as_bytes());
    format!("wasmill-binlog:{}", &hex::encode(digest)[..40])
}

#[cfg(test)]
mod tests {
    #[test]
    fn lock_names_fit_mysqls_limit() {
        assert_eq!(super::lock_name("g.db.t"), "wasmill-binlog:g.db.t");
        let long = super::lock_name(&"x".repeat(100));
        assert!(long.len() <= 64 && long.starts_with("wasmill-binlog:"));
        assert_ne!(long, super::lock_name(&"y".repeat(100)));
    }
}
