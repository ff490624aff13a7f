//! Private server instances: a test starts its own broker or database on a free port of
//! `127.0.0.1`, with its own data directory, and may stop and start it again (the data stays);
//! dropping the instance stops it and removes the directory.
//!
//! Only the instance's own child process is ever signalled, by its process id. Each kind is
//! configured to keep what it promises across a restart: Redis with an append-only file,
//! NATS JetStream with a file store, Mosquitto with its persistence file, PostgreSQL and MariaDB
//! with a fresh cluster of their own (PostgreSQL refuses to run as root: when the test runs as
//! root, `initdb` and `postgres` run as the `postgres` user).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use super::certs::{TestCerts, mosquitto_lines, rabbitmq_tls_lines, server_args};
use super::process::{free_port, is_root, postgres_bin, postgres_user, run, signal};
use super::{port_open, wait_for};
use crate::error::{Error, Result};
use crate::pubsub::conformance::Outage;

/// The servers a test can run privately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `redis-server` with `appendonly yes`.
    Redis,
    /// `nats-server -js` with a file store.
    Nats,
    /// `mosquitto` with persistence on.
    Mosquitto,
    /// `postgres` on a cluster made by `initdb`; the database `postgres`, user `postgres`.
    Postgres,
    /// `mariadbd` on a data directory made by `mariadb-install-db`; the database `test`, user
    /// `root` without a password.
    Mariadb,
    /// A RabbitMQ node of its own (`wasmill-PORT@localhost`, its own Erlang distribution port,
    /// no plugins); user `guest`, password `guest`.
    Rabbitmq,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Redis => "redis-server",
            Kind::Nats => "nats-server",
            Kind::Mosquitto => "mosquitto",
            Kind::Postgres => "postgres",
            Kind::Mariadb => "mariadbd",
            Kind::Rabbitmq => "rabbitmq-server",
        }
    }
}

/// How long a server may take to start or stop.
const LIMIT: Duration = Duration::from_secs(60);

/// A server this test started and owns; stopped (and its directory removed) on drop.
pub struct PrivateServer {
    kind: Kind,
    port: u16,
    dir: TempDir,
    /// The user the server runs as (uid, gid), when not the test's own.
    user: Option<(u32, u32)>,
    /// Serves TLS (only) with these certificates.
    tls: Option<TestCerts>,
    /// RabbitMQ's Erlang distribution port.
    dist_port: u16,
    /// Added to the server's command line.
    args: Vec<String>,
    child: Option<Child>,
}

impl PrivateServer {
    /// Prepares a data directory for `kind` and starts the server on a free port; returns once
    /// it accepts clients.
    pub async fn start(kind: Kind) -> Result<PrivateServer> {
        PrivateServer::start_with(kind, false, &[]).await
    }

    /// Like [`PrivateServer::start`], with `args` added to the server's command line (after
    /// the testkit's own, so they win: `--log-bin` on MariaDB).
    pub async fn start_with_args(kind: Kind, args: &[&str]) -> Result<PrivateServer> {
        PrivateServer::start_with(kind, false, args).await
    }

    /// Like [`PrivateServer::start`], serving TLS with a certificate signed by a CA made for
    /// this server ([`PrivateServer::certs`]); [`PrivateServer::url`] is then a TLS URL.
    pub async fn start_tls(kind: Kind) -> Result<PrivateServer> {
        PrivateServer::start_with(kind, true, &[]).await
    }

    async fn start_with(kind: Kind, tls: bool, args: &[&str]) -> Result<PrivateServer> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("wasmill-{}-", kind.name()))
            .tempdir()
            .map_err(|e| Error::io(format!("{}: temporary directory", kind.name()), e))?;
        let user = match kind {
            Kind::Postgres if is_root() => Some(postgres_user()?),
            _ => None,
        };
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .map_err(|e| Error::io(format!("chown {}", dir.path().display()), e))?;
        }
        let tls = match tls {
            true => {
                let certs = TestCerts::write(dir.path())?;
                if let Some((uid, gid)) = user {
                    certs.chown(uid, gid)?;
                }
                Some(certs)
            }
            false => None,
        };
        let mut server = PrivateServer {
            kind,
            port: free_port()?,
            dir,
            user,
            tls,
            dist_port: free_port()?,
            args: args.iter().map(|a| a.to_string()).collect(),
            child: None,
        };
        server.prepare().await?;
        server.resume().await?;
        Ok(server)
    }

    /// The port the server listens on (on `127.0.0.1`), the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address the server listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// The server's data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The certificates of a server started with [`PrivateServer::start_tls`].
    pub fn certs(&self) -> Option<&TestCerts> {
        self.tls.as_ref()
    }

    /// The URL a backend connects with (a TLS one for a TLS server: `rediss://`, `tls://`,
    /// `mqtts://`, `sslmode=verify-full`, `ssl-mode=VERIFY_IDENTITY`).
    pub fn url(&self) -> String {
        let port = self.port;
        if self.tls.is_some() {
            return match self.kind {
                Kind::Redis => format!("rediss://127.0.0.1:{port}"),
                Kind::Nats => format!("tls://127.0.0.1:{port}"),
                Kind::Mosquitto => format!("mqtts://127.0.0.1:{port}"),
                Kind::Postgres => {
                    format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=verify-full")
                }
                Kind::Mariadb => {
                    format!("mysql://root@127.0.0.1:{port}/test?ssl-mode=VERIFY_IDENTITY")
                }
                Kind::Rabbitmq => format!("amqps://guest:guest@127.0.0.1:{port}/%2f"),
            };
        }
        match self.kind {
            Kind::Redis => format!("redis://127.0.0.1:{port}"),
            Kind::Nats => format!("nats://127.0.0.1:{port}"),
            Kind::Mosquitto => format!("mqtt://127.0.0.1:{port}"),
            Kind::Postgres => format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            Kind::Mariadb => format!("mysql://root@127.0.0.1:{port}/test"),
            Kind::Rabbitmq => format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
        }
    }

    /// Stops the server gracefully (it saves what it keeps) and waits until it exited.
    pub async fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let name = self.kind.name();
        if let Some(pid) = child.id() {
            signal(pid, self.stop_signal());
        }
        match tokio::time::timeout(LIMIT, child.wait()).await {
            Ok(status) => {
                let status = status.map_err(|e| Error::io(format!("{name}: wait"), e))?;
                tracing::debug!(%status, port = self.port, "{name} stopped");
                Ok(())
            }
            Err(_) => {
                let _ = child.kill().await;
                Err(self.failure(&format!("did not stop within {LIMIT:?}; killed")))
            }
        }
    }

    /// Starts the stopped server again on its port and data; returns once it accepts clients.
    pub async fn resume(&mut self) -> Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let log = self.dir().join("server.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| Error::io(format!("open {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| Error::io(format!("open {}", log.display()), e))?;
        let mut cmd = self.command()?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid);
        }
        let name = self.kind.name();
        let child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("start {name}"), e))?;
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            if self.ready().await {
                return Ok(());
            }
            let exited = match self.child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => Some(status.to_string()),
                _ => None,
            };
            if let Some(status) = exited {
                self.child = None;
                return Err(self.failure(&format!("exited ({status})")));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(self.failure(&format!("not ready within {LIMIT:?}")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the server and starts it again.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        self.resume().await
    }

    /// An error naming the server, its port, `what` happened, and the end of its log.
    fn failure(&self, what: &str) -> Error {
        let log = std::fs::read_to_string(self.dir().join("server.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(10).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Error::Other(format!(
            "{} on port {} {what}; its log ends:\n{}",
            self.kind.name(),
            self.port,
            tail.join("\n")
        ))
    }

    fn stop_signal(&self) -> &'static str {
        match self.kind {
            // SIGTERM is PostgreSQL's "smart" shutdown, which waits for every client to leave.
            Kind::Postgres => "INT",
            _ => "TERM",
        }
    }

    /// Whatever the data directory needs before the first start.
    async fn prepare(&self) -> Result<()> {
        let dir = self.dir();
        match self.kind {
            Kind::Redis | Kind::Nats => Ok(()),
            Kind::Rabbitmq => {
                let listener = match &self.tls {
                    None => format!("listeners.tcp.default = 127.0.0.1:{}\n", self.port),
                    Some(certs) => rabbitmq_tls_lines(self.port, certs),
                };
                let config = format!("{listener}loopback_users = none\n");
                for (name, text) in [
                    ("rabbitmq.conf", config.as_str()),
                    ("enabled_plugins", "[].\n"),
                ] {
                    let path = dir.join(name);
                    std::fs::write(&path, text)
                        .map_err(|e| Error::io(format!("write {}", path.display()), e))?;
                }
                Ok(())
            }
            Kind::Mosquitto => {
                let config = format!(
                    "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                     persistence_location {dir}/\nlog_dest stderr\n{user}{tls}",
                    port = self.port,
                    dir = dir.display(),
                    user = if is_root() { "user root\n" } else { "" },
                    tls = self.tls.as_ref().map(mosquitto_lines).unwrap_or_default(),
                );
                let path = dir.join("mosquitto.conf");
                std::fs::write(&path, config)
                    .map_err(|e| Error::io(format!("write {}", path.display()), e))
            }
            Kind::Postgres => {
                let mut cmd = Command::new(postgres_bin("initdb")?);
                cmd.arg("-D")
                    .arg(dir.join("data"))
                    .args(["-A", "trust", "-U", "postgres", "-N", "--locale=C", "-E"])
                    .arg("UTF8");
                if let Some((uid, gid)) = self.user {
                    cmd.uid(uid).gid(gid);
                }
                run(cmd, "initdb").await
            }
            Kind::Mariadb => {
                // Its own temporary directory: installs running side by side in /tmp were
                // seen to fail on each other's temporary tables.
                let tmp = dir.join("tmp");
                std::fs::create_dir_all(&tmp).map_err(|e| Error::io("mariadb tmpdir", e))?;
                let mut cmd = Command::new("mariadb-install-db");
                cmd.arg("--no-defaults")
                    .arg(format!("--datadir={}", dir.join("data").display()))
                    .arg(format!("--tmpdir={}", tmp.display()))
                    .args([
                        "--auth-root-authentication-method=normal",
                        "--skip-name-resolve",
                    ]);
                if is_root() {
                    cmd.arg("--user=root");
                }
                run(cmd, "mariadb-install-db").await
            }
        }
    }

    /// The command that runs the server in the foreground.
    fn command(&self) -> Result<Command> {
        let dir = self.dir();
        let port = self.port.to_string();
        let cmd = match self.kind {
            Kind::Redis => {
                let mut cmd = Command::new("redis-server");
                let (plain, tls) = match self.tls {
                    Some(_) => ("0", port.as_str()),
                    None => (port.as_str(), "0"),
                };
                cmd.args([
                    "--port",
                    plain,
                    "--tls-port",
                    tls,
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                ])
                .arg(dir)
                .args(["--appendonly", "yes", "--save", "", "--daemonize", "no"])
                .args(["--logfile", "", "--protected-mode", "no"]);
                cmd
            }
            Kind::Nats => {
                let mut cmd = Command::new("nats-server");
                cmd.args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd"])
                    .arg(dir.join("jetstream"));
                cmd
            }
            Kind::Mosquitto => {
                let mut cmd = Command::new("mosquitto");
                cmd.arg("-c").arg(dir.join("mosquitto.conf"));
                cmd
            }
            Kind::Postgres => {
                let mut cmd = Command::new(postgres_bin("postgres")?);
                cmd.arg("-D")
                    .arg(dir.join("data"))
                    .args(["-p", &port, "-k"])
                    .arg(dir)
                    .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]);
                cmd
            }
            Kind::Rabbitmq => {
                // The node script itself (Debian's /usr/sbin wrapper switches to the rabbitmq
                // user, who could not write this directory).
                let mut cmd = Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server");
                let env = [
                    ("RABBITMQ_NODENAME", format!("wasmill-{port}@localhost")),
                    ("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1".into()),
                    ("RABBITMQ_NODE_PORT", port.clone()),
                    ("RABBITMQ_DIST_PORT", self.dist_port.to_string()),
                    (
                        "RABBITMQ_MNESIA_BASE",
                        dir.join("mnesia").display().to_string(),
                    ),
                    ("RABBITMQ_LOG_BASE", dir.join("log").display().to_string()),
                    (
                        "RABBITMQ_CONFIG_FILE",
                        dir.join("rabbitmq.conf").display().to_string(),
                    ),
                    (
                        "RABBITMQ_ENABLED_PLUGINS_FILE",
                        dir.join("enabled_plugins").display().to_string(),
                    ),
                    (
                        "RABBITMQ_PID_FILE",
                        dir.join("rabbitmq.pid").display().to_string(),
                    ),
                    ("RABBITMQ_LOGS", "-".into()),
                ];
                cmd.envs(env);
                cmd
            }
            Kind::Mariadb => {
                let mut cmd = Command::new("mariadbd");
                cmd.arg("--no-defaults")
                    .arg(format!("--datadir={}", dir.join("data").display()))
                    .arg(format!("--tmpdir={}", dir.join("tmp").display()))
                    .arg(format!("--socket={}", dir.join("mysqld.sock").display()))
                    .arg(format!("--pid-file={}", dir.join("mysqld.pid").display()))
                    .arg(format!("--port={port}"))
                    .args(["--bind-address=127.0.0.1", "--skip-name-resolve"])
                    .args(["--skip-log-bin", "--innodb-buffer-pool-size=32M"]);
                if is_root() {
                    cmd.arg("--user=root");
                }
                cmd
            }
        };
        let mut cmd = cmd;
        cmd.args(&self.args);
        if self.kind == Kind::Rabbitmq {
            return Ok(cmd);
        }
        if let Some(certs) = &self.tls {
            cmd.args(server_args(self.kind, certs));
        }
        Ok(cmd)
    }

    /// Whether the server accepts clients now.
    async fn ready(&self) -> bool {
        match self.kind {
            // Redis listens while it loads its data, answering -LOADING until done.
            Kind::Redis if self.tls.is_none() => redis_ping(self.port).await,
            // PostgreSQL listens while it recovers, refusing clients until done.
            Kind::Postgres => {
                let Ok(pg_isready) = postgres_bin("pg_isready") else {
                    return false;
                };
                let mut cmd = Command::new(pg_isready);
                cmd.args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()]);
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
                matches!(cmd.status().await, Ok(s) if s.success())
            }
            // MariaDB listens before it handles signals: a SIGTERM between the two was seen
            // lost (the server then ran on for good). It greets a client only once it serves.
            Kind::Mariadb => mysql_greets(self.port).await,
            _ => port_open(self.port).await,
        }
    }
}

#[async_trait]
impl Outage for PrivateServer {
    /// Restarts the server: stop (gracefully), then start on the same port and data.
    async fn go_away_and_come_back(&mut self) -> Result<()> {
        self.restart().await
    }
}

impl Drop for PrivateServer {
    /// Stops the server gracefully, waiting a little; kills it if it lingers.
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            signal(pid, self.stop_signal());
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = child.start_kill();
    }
}

/// Whether a Redis server on `port` answers `PING` with `PONG` (not `-LOADING`).
async fn redis_ping(port: u16) -> bool {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(b"PING\r\n").await?;
        let mut buf = [0; 16];
        let n = s.read(&mut buf).await?;
        std::io::Result::Ok(buf[..n].starts_with(b"+PONG"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Ok(true))
    )
}

/// Whether a MySQL/MariaDB server on `port` sends its handshake packet to a new client (a
/// packet header of 4 bytes, then protocol version 10).
async fn mysql_greets(port: u16) -> bool {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let mut head = [0; 5];
        s.read_exact(&mut head).await?;
        std::io::Result::Ok(head[4] == 10)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Ok(true))
    )
}

/// Waits until nothing listens on `port` any more.
pub async fn wait_until_closed(port: u16) -> Result<()> {
    wait_for(&format!("port {port} to close"), LIMIT, || async move {
        !port_open(port).await
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts `kind`, stops and resumes it on the same port, then drops it: its port closes
    /// and its directory goes.
    async fn lifecycle(kind: Kind) {
        let mut server = PrivateServer::start(kind)
            .await
            .unwrap_or_else(|e| panic!("{}", e.report()));
        let (port, dir) = (server.port(), server.dir().to_path_buf());
        assert!(port_open(port).await);
        server.stop().await.unwrap();
        wait_until_closed(port).await.unwrap();
        server.resume().await.unwrap();
        assert!(server.ready().await, "{kind:?} back on port {port}");
        drop(server);
        wait_until_closed(port).await.unwrap();
        assert!(!dir.exists(), "{} left behind", dir.display());
    }

    #[tokio::test]
    async fn nats_restarts_on_its_port_and_stops_on_drop() {
        lifecycle(Kind::Nats).await;
    }

    #[tokio::test]
    async fn mosquitto_restarts_on_its_port_and_stops_on_drop() {
        lifecycle(Kind::Mosquitto).await;
    }

    #[tokio::test]
    async fn postgres_restarts_on_its_port_and_stops_on_drop() {
        lifecycle(Kind::Postgres).await;
    }

    #[tokio::test]
    async fn mariadb_restarts_on_its_port_and_stops_on_drop() {
        lifecycle(Kind::Mariadb).await;
    }

    #[tokio::test]
    async fn rabbitmq_restarts_on_its_port_and_stops_on_drop() {
        lifecycle(Kind::Rabbitmq).await;
    }

    /// One Redis command over RESP; the raw reply.
    async fn redis(port: u16, args: &[&str]) -> String {
        let mut cmd = format!("*{}\r\n", args.len());
        for a in args {
            cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(cmd.as_bytes()).await.unwrap();
        let mut buf = vec![0; 256];
        let n = s.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[tokio::test]
    async fn redis_keeps_its_data_across_a_restart_and_stops_on_drop() {
        let mut server = PrivateServer::start(Kind::Redis).await.unwrap();
        let port = server.port();
        assert_eq!(redis(port, &["SET", "k", "kept"]).await, "+OK\r\n");
        server.restart().await.unwrap();
        assert_eq!(server.port(), port);
        assert_eq!(redis(port, &["GET", "k"]).await, "$4\r\nkept\r\n");
        drop(server);
        wait_until_closed(port).await.unwrap();
    }

    #[tokio::test]
    async fn a_server_that_cannot_start_is_an_error_with_its_log() {
        let mut server = PrivateServer::start(Kind::Redis).await.unwrap();
        server.stop().await.unwrap();
        // Something else took the port meanwhile.
        let _squatter = std::net::TcpListener::bind(("127.0.0.1", server.port())).unwrap();
        let err = server.resume().await.unwrap_err().to_string();
        assert!(
            err.contains("redis-server") && err.contains(&server.port().to_string()),
            "{err}"
        );
        assert!(err.contains("exited"), "{err}");
    }
}
