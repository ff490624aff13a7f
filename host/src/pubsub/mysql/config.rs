//! The settings of `kind = "mysql"`.

use super::*;

/// Settings of `kind = "mysql"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MysqlConfig {
    /// `mysql://user:password@host:port/database` (MariaDB 10.6+ or MySQL 8+); TLS with
    /// `?ssl-mode=REQUIRED` (encrypt), `VERIFY_CA` or `VERIFY_IDENTITY` (check the certificate
    /// against the system's roots or `ssl-ca` / `ca_file`).
    pub url: String,
    /// A PEM file of the CA that signed the server's certificate; with no `ssl-mode` in the
    /// URL it means `VERIFY_IDENTITY`.
    pub ca_file: Option<PathBuf>,
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
            ca_file: None,
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
