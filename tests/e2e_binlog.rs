//! The MySQL/MariaDB binlog as a source, against the real binary: a host relays the row
//! changes of a table (`kind = "mysql-binlog"`) to a Redis stream with the pass-through plugin
//! while rows are written; it is killed with SIGKILL in the middle and started again. Every
//! change comes out of the relay: lost = 0; what repeats (changes handled but not acked when
//! the host died) is counted and printed.
//!
//! The shared MariaDB runs with the binary log off, so the test starts a private one with
//! `--log-bin --binlog-format=ROW` on a free port and its own data directory, and stops it.
//! `WASMILL_BINLOG_CHANGES` sets the count (1,000 by default).

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use mysql_async::prelude::Queryable;
use tokio::process::{Child, Command};

#[path = "support/mod.rs"]
mod support;

use support::{Host, free_port, plugin};

fn changes() -> i64 {
    std::env::var("WASMILL_BINLOG_CHANGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000)
}

/// A MariaDB of this test's own, with the binary log on; killed on drop.
struct Mariadb {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Mariadb {
    async fn start() -> Result<Mariadb> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        let root = nix_is_root();
        // Its own temporary directory, as the testkit's servers have.
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&tmp)?;
        let mut install = Command::new("mariadb-install-db");
        install
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .args([
                "--auth-root-authentication-method=normal",
                "--skip-name-resolve",
            ]);
        if root {
            install.arg("--user=root");
        }
        let out = install.output().await.context("mariadb-install-db")?;
        anyhow::ensure!(out.status.success(), "mariadb-install-db: {out:?}");
        let port = free_port();
        let mut server = Command::new("mariadbd");
        server
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .arg(format!("--socket={}", dir.path().join("s.sock").display()))
            .arg(format!("--pid-file={}", dir.path().join("p.pid").display()))
            .arg(format!("--port={port}"))
            .args(["--bind-address=127.0.0.1", "--skip-name-resolve"])
            .args(["--log-bin=binlog", "--binlog-format=ROW", "--server-id=1"])
            .arg("--innodb-buffer-pool-size=32M")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        if root {
            server.arg("--user=root");
        }
        let child = server.spawn().context("mariadbd")?;
        let db = Mariadb {
            child,
            port,
            _dir: dir,
        };
        let started = Instant::now();
        loop {
            if let Ok(conn) = mysql_async::Conn::from_url(db.url_of("mysql")).await {
                let mut conn = conn;
                conn.query_drop("CREATE DATABASE IF NOT EXISTS test")
                    .await?;
                conn.disconnect().await?;
                return Ok(db);
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(60),
                "mariadbd did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn url_of(&self, database: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn nix_is_root() -> bool {
    // As the library's testkit tells (`testkit::process::is_root`, not reachable from here).
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// A host relaying the changes of `orders` (on the binlog of `db_url`) to `output` on Redis,
/// 16 at a time, throttled to 500 per second: changes wait in flight, delivered and unacked,
/// when the host is killed.
async fn relay_host(db_url: &str, output: &str) -> Result<Host> {
    let (dir, plugins) = Host::scratch()?;
    std::fs::copy(plugin("passthrough"), plugins.join("relay.wasm"))?;
    std::fs::write(
        plugins.join("relay.toml"),
        format!(
            "subscribe = {{ pubsub = \"db\", topic = \"orders\" }}\n\
             publish = {{ pubsub = \"out\", topic = \"{output}\" }}\nconcurrency = 16\n\
             middleware = [{{ throttle = {{ count = 500, per = \"1s\" }} }}]\n"
        ),
    )?;
    std::fs::write(
        dir.path().join("wasmill.toml"),
        format!(
            "[pubsub.db]\nkind = \"mysql-binlog\"\nurl = \"{db_url}\"\nheartbeat = \"1s\"\n\n\
             [pubsub.out]\nkind = \"redis\"\nurl = \"{}\"\n",
            redis_url()
        ),
    )?;
    support::start_relay(dir, plugins).await
}

fn redis_url() -> String {
    std::env::var("WASMILL_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Writes `ids` into `orders`, in transactions of one to five rows.
async fn write_rows(url: &str, ids: std::ops::Range<i64>) -> Result<()> {
    let mut conn = mysql_async::Conn::from_url(url).await?;
    let mut next = ids.start;
    let mut n = 0;
    while next < ids.end {
        let end = (next + 1 + n % 5).min(ids.end);
        let rows: Vec<String> = (next..end)
            .map(|id| format!("({id}, 'item {id}')"))
            .collect();
        conn.query_drop(format!("INSERT INTO orders VALUES {}", rows.join(",")))
            .await?;
        next = end;
        n += 1;
    }
    conn.disconnect().await?;
    Ok(())
}

#[tokio::test]
async fn binlog_changes_survive_a_killed_host() -> Result<()> {
    let n = changes();
    let db = Mariadb::start().await?;
    let url = db.url_of("test");
    let mut conn = mysql_async::Conn::from_url(url.as_str()).await?;
    conn.query_drop("CREATE TABLE orders (id BIGINT PRIMARY KEY, item VARCHAR(40))")
        .await?;
    conn.disconnect().await?;

    let output = format!("binlog_out_{}", uuid::Uuid::new_v4().simple());
    let reader = wasmill::pubsub::registry::connect(
        "out",
        "redis",
        &support::table(&format!("url = \"{}\"", redis_url()), "reader"),
    )
    .await?;
    let mut out = reader.subscriber.subscribe(&output).await?;

    let mut host = relay_host(&url, &output).await?;
    let writer = tokio::spawn({
        let url = url.clone();
        async move { write_rows(&url, 0..n).await }
    });

    let mut seen: HashMap<i64, usize> = HashMap::new();
    let mut killed = None;
    let mut progress = Instant::now();
    while (seen.len() as i64) < n {
        anyhow::ensure!(
            progress.elapsed() < Duration::from_secs(60),
            "nothing new for 60 s: {} of {n} changes came out (lost: {})",
            seen.len(),
            n - seen.len() as i64
        );
        let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(1), out.recv()).await else {
            continue;
        };
        let row: serde_json::Value = serde_json::from_slice(&msg.payload)?;
        let id = row["id"].as_i64().context("an id in the row")?;
        assert_eq!(msg.metadata.get("operation"), "insert");
        let count = seen.entry(id).or_default();
        *count += 1;
        if *count == 1 {
            progress = Instant::now();
        }
        msg.ack();
        if killed.is_none() && seen.len() as i64 >= n / 2 {
            host.kill().await?;
            let down = Instant::now();
            host = relay_host(&url, &output).await?;
            killed = Some(down.elapsed());
        }
    }
    writer.await??;
    let duplicates: usize = seen.values().map(|c| c - 1).sum();
    println!(
        "binlog: {n} changes, host SIGKILLed at half and restarted in {:?}: delivered {}, \
         lost 0, duplicates {duplicates}",
        killed.unwrap_or_default(),
        seen.len()
    );
    drop(host);
    drop(out);
    let _ = reader.subscriber.remove_topic(&output).await;
    let _ = reader.subscriber.close().await;
    drop(db);
    Ok(())
}
