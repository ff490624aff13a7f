//! The settings of `kind = "mysql-binlog"`, and which table a subscription's topic names.

use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Settings of `kind = "mysql-binlog"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BinlogConfig {
    /// The server to read: `mysql://user:password@host:port/database`. The user needs
    /// `REPLICATION SLAVE` and `REPLICATION CLIENT` (MariaDB: `BINLOG MONITOR`), `SELECT` on
    /// `information_schema`, and write access to `positions_table` in `database`, the default
    /// database of topics.
    pub url: String,
    /// The consumer group: positions are stored per group and topic, so two groups each read
    /// every change. Default `wasmill`.
    pub consumer_group: Option<String>,
    /// The table, in the URL's database, where each group's acked position is stored.
    pub positions_table: String,
    /// Where a group with no stored position starts: `"end"` (changes from now on) or
    /// `"beginning"` (the oldest binlog file the server still has).
    pub start: Start,
    /// The replica `server_id` this source registers with; each subscription uses its own,
    /// counting up from this one. Unset: a random one per connection. It must differ from
    /// every real replica's.
    pub server_id: Option<u32>,
    /// Delay before a nacked change is delivered again (unless it asked for its own).
    #[serde(with = "crate::config::duration")]
    pub redelivery_delay: Duration,
    /// How long the stream may be silent before the source checks the connection (the server
    /// sends a heartbeat at this period).
    #[serde(with = "crate::config::duration")]
    pub heartbeat: Duration,
}

/// Where a group with no stored position starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    /// At the server's current binlog position: changes made from now on.
    End,
    /// At the oldest binlog file the server still has.
    Beginning,
}

impl Default for BinlogConfig {
    fn default() -> Self {
        BinlogConfig {
            url: "mysql://root@127.0.0.1:3306/test".into(),
            consumer_group: None,
            positions_table: "wasmill_binlog_positions".into(),
            start: Start::End,
            server_id: None,
            redelivery_delay: Duration::ZERO,
            heartbeat: Duration::from_secs(5),
        }
    }
}

/// The default consumer group.
pub const DEFAULT_GROUP: &str = "wasmill";

impl BinlogConfig {
    /// The consumer group.
    pub fn group(&self) -> &str {
        self.consumer_group.as_deref().unwrap_or(DEFAULT_GROUP)
    }

    /// Checks what deserializing cannot: the URL and the table name.
    pub fn validate(&self) -> Result<()> {
        let opts = mysql_async::Opts::from_url(&self.url)
            .map_err(|e| Error::Config(format!("url: {e}")))?;
        if opts.db_name().is_none() {
            return Err(Error::Config(
                "url: name the database (mysql://host:port/DATABASE): the positions table lives \
                 there and topics name its tables"
                    .into(),
            ));
        }
        if !is_identifier(&self.positions_table) {
            return Err(Error::Config(format!(
                "positions_table: {:?} is not a plain table name (letters, digits, _ and $)",
                self.positions_table
            )));
        }
        Ok(())
    }
}

/// Whether `s` may be used unquoted as a table name.
fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}

/// The table a topic names: `table` (in the URL's database) or `database.table`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    /// The database (schema).
    pub database: String,
    /// The table.
    pub table: String,
}

impl TableName {
    /// Parses `topic` (`table` or `database.table`), with `default_db` for the first form.
    pub fn parse(topic: &str, default_db: &str) -> Result<TableName> {
        let (database, table) = match topic.split_once('.') {
            Some((db, table)) => (db, table),
            None => (default_db, topic),
        };
        if database.is_empty() || table.is_empty() || table.contains('.') {
            return Err(Error::pubsub_msg(
                super::NAME,
                format!("topic {topic:?}: expected TABLE or DATABASE.TABLE"),
            ));
        }
        Ok(TableName {
            database: database.to_string(),
            table: table.to_string(),
        })
    }
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.database, self.table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_name_a_table_of_the_default_or_a_named_database() {
        let t = TableName::parse("orders", "shop").unwrap();
        assert_eq!((t.database.as_str(), t.table.as_str()), ("shop", "orders"));
        let t = TableName::parse("billing.invoices", "shop").unwrap();
        assert_eq!(t.to_string(), "billing.invoices");
        for bad in ["", ".x", "x.", "a.b.c"] {
            assert!(TableName::parse(bad, "shop").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_url_must_name_a_database_and_the_table_must_be_plain() {
        let mut c = BinlogConfig::default();
        c.validate().unwrap();
        c.url = "mysql://root@127.0.0.1:3306".into();
        assert!(c.validate().unwrap_err().to_string().contains("database"));
        c.url = "mysql://root@127.0.0.1:3306/test".into();
        c.positions_table = "x; DROP TABLE y".into();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("positions_table")
        );
        let c: BinlogConfig = toml::from_str("start = \"beginning\"").unwrap();
        assert_eq!(c.start, Start::Beginning);
        assert!(toml::from_str::<BinlogConfig>("start = \"middle\"").is_err());
    }
}
