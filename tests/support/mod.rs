//! Support for the end-to-end tests: start the real `wasmill` binary in a scratch folder on a
//! free port, talk to its HTTP API, read Server-Sent Events, find the example plugins.
//!
//! Each test file includes it with `#[path]`; not every file uses every helper.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// The repository's root folder.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

/// The `wasmill` binary cargo built for these tests (with the same dependencies as the rest
/// of the test build, so nothing is compiled twice).
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_wasmill"))
}

/// A built example plugin (`plugins/<name>.wasm`), building them once if needed.
pub fn plugin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let status = std::process::Command::new(repo_root().join("scripts/build-plugins.sh"))
            .status()
            .expect("run scripts/build-plugins.sh");
        assert!(status.success(), "scripts/build-plugins.sh failed");
    });
    let path = repo_root().join("plugins").join(format!("{name}.wasm"));
    assert!(path.exists(), "plugin {} was not built", path.display());
    path
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free port")
}

/// A running `wasmill run` in a scratch folder.
pub struct Host {
    /// The scratch folder (the process's working directory).
    pub dir: tempfile::TempDir,
    /// The plugins folder inside it.
    pub plugins: PathBuf,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    child: Child,
    /// Log lines (stdout and stderr) of the process.
    pub logs: mpsc::UnboundedReceiver<String>,
    /// An HTTP client.
    pub http: reqwest::Client,
}

impl Host {
    /// The process's peak resident memory so far, in bytes (Linux `VmHWM`).
    pub fn peak_rss(&self) -> Result<u64> {
        let pid = self.child.id().context("the host has exited")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmHWM in /proc/PID/status")?;
        Ok(kib * 1024)
    }

    /// Kills the host with SIGKILL (no graceful close: what it held unacked stays with the
    /// broker) and waits until it is gone.
    pub async fn kill(&mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// The process id of the host.
    pub fn pid(&self) -> Result<u32> {
        self.child.id().context("the host has exited")
    }

    /// How many descriptors the host has open (Linux `/proc/PID/fd`).
    pub fn open_fds(&self) -> Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.pid()?))?.count())
    }

    /// A scratch folder with an empty `plugins/`, not started yet.
    pub fn scratch() -> Result<(tempfile::TempDir, PathBuf)> {
        let dir = tempfile::tempdir()?;
        let plugins = dir.path().join("plugins");
        std::fs::create_dir_all(&plugins)?;
        Ok((dir, plugins))
    }

    /// Starts `wasmill run` in `dir` with extra arguments, and waits until /healthz answers.
    pub async fn start(dir: tempfile::TempDir, plugins: PathBuf, args: &[&str]) -> Result<Host> {
        Self::start_with(dir, plugins, args, None).await
    }

    /// [`Host::start`], the process's descriptor limit (`ulimit -n`) set to `fd_limit` when
    /// given.
    pub async fn start_with(
        dir: tempfile::TempDir,
        plugins: PathBuf,
        args: &[&str],
        fd_limit: Option<u64>,
    ) -> Result<Host> {
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let mut command = match fd_limit {
            // The shell sets the limit, then becomes wasmill (same pid).
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(binary());
                c
            }
            None => Command::new(binary()),
        };
        let mut child = command
            .arg("run")
            .arg("--http")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--plugins")
            .arg(&plugins)
            .args(args)
            .current_dir(dir.path())
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("spawn wasmill run")?;
        let (tx, logs) = mpsc::unbounded_channel();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    eprintln!("[wasmill] {line}");
                    let _ = tx.send(line);
                }
            });
        }
        let http = reqwest::Client::new();
        let mut host = Host {
            dir,
            plugins,
            url,
            child,
            logs,
            http,
        };
        // Generous: a cold start compiles every plugin first (a Python or JS one takes seconds).
        host.wait_healthy(Duration::from_secs(300)).await?;
        Ok(host)
    }

    async fn wait_healthy(&mut self, limit: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Ok(r) = self.http.get(format!("{}/healthz", self.url)).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("wasmill exited early with {status}");
            }
            if tokio::time::Instant::now() > deadline {
                bail!("wasmill did not become healthy within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// POSTs a raw payload to `topic`; returns the uuid the host assigned.
    pub async fn publish(&self, topic: &str, payload: &str) -> Result<String> {
        let r = self
            .http
            .post(format!("{}/topics/{topic}", self.url))
            .body(payload.to_string())
            .send()
            .await?;
        let status = r.status();
        let body: serde_json::Value = r.json().await?;
        if status.as_u16() != 202 {
            bail!("publish answered {status}: {body}");
        }
        Ok(body["uuid"].as_str().unwrap_or_default().to_string())
    }

    /// POSTs a JSON envelope (`{"payload", "metadata"?, ...}`) to `topic`; returns the uuid
    /// the host assigned.
    pub async fn publish_json(&self, topic: &str, envelope: serde_json::Value) -> Result<String> {
        let r = self
            .http
            .post(format!("{}/topics/{topic}", self.url))
            .json(&envelope)
            .send()
            .await?;
        let status = r.status();
        let body: serde_json::Value = r.json().await?;
        if status.as_u16() != 202 {
            bail!("publish answered {status}: {body}");
        }
        Ok(body["uuid"].as_str().unwrap_or_default().to_string())
    }

    /// The entries of GET /handlers.
    pub async fn handler_list(&self) -> Result<Vec<serde_json::Value>> {
        let all = self.handlers().await?;
        Ok(all
            .as_array()
            .cloned()
            .or_else(|| all["handlers"].as_array().cloned())
            .unwrap_or_default())
    }

    /// Polls GET /handlers until an entry satisfies `pred`; returns it. Fails after `limit`
    /// naming `what` and the last listing.
    pub async fn wait_handler(
        &self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let list = self.handler_list().await?;
            if let Some(h) = list.iter().find(|h| pred(h)) {
                return Ok(h.clone());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{what}: not within {limit:?}; /handlers: {list:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls GET /handlers until no entry satisfies `pred`.
    pub async fn wait_no_handler(
        &self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let list = self.handler_list().await?;
            if !list.iter().any(&pred) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{what}: still listed after {limit:?}; /handlers: {list:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// GET /handlers as JSON.
    pub async fn handlers(&self) -> Result<serde_json::Value> {
        Ok(self
            .http
            .get(format!("{}/handlers", self.url))
            .send()
            .await?
            .json()
            .await?)
    }

    /// The entry of handler `name` in GET /handlers.
    pub async fn handler(&self, name: &str) -> Result<serde_json::Value> {
        let all = self.handlers().await?;
        let list = all
            .as_array()
            .cloned()
            .or_else(|| all["handlers"].as_array().cloned())
            .unwrap_or_default();
        list.into_iter()
            .find(|h| h["name"] == name)
            .with_context(|| format!("handler {name} not in /handlers: {all}"))
    }

    /// Subscribes to `topic` over SSE; envelopes arrive on the returned channel.
    pub async fn sse(&self, topic: &str) -> Result<mpsc::UnboundedReceiver<serde_json::Value>> {
        let r = self
            .http
            .get(format!("{}/topics/{topic}/messages", self.url))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("SSE answered {}", r.status());
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let mut stream = r.bytes_stream();
        tokio::spawn(async move {
            let mut buf = String::new();
            while let Some(Ok(chunk)) = stream.next().await {
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buf.find("\n\n") {
                    let event: String = buf.drain(..end + 2).collect();
                    let data: String = event
                        .lines()
                        .filter_map(|l| l.strip_prefix("data:"))
                        .map(str::trim_start)
                        .collect::<Vec<_>>()
                        .join("\n");
                    if data.is_empty() {
                        continue;
                    }
                    if let Ok(v) = serde_json::from_str(&data)
                        && tx.send(v).is_err()
                    {
                        return;
                    }
                }
            }
        });
        // Give the host a moment to register the subscription before callers publish.
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(rx)
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(mut self, limit: Duration) -> Result<std::process::ExitStatus> {
        let pid = self.child.id().context("no pid")?;
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        Ok(tokio::time::timeout(limit, self.child.wait()).await??)
    }

    /// Waits until a log line contains `needle`; returns it.
    pub async fn wait_log(&mut self, needle: &str, limit: Duration) -> Result<String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.logs.recv()).await {
                Ok(Some(line)) if line.contains(needle) => return Ok(line),
                Ok(Some(_)) => {}
                Ok(None) => bail!("log ended before {needle:?}"),
                Err(_) => bail!("no log line with {needle:?} within {limit:?}"),
            }
        }
    }
}

/// Copies `src` to `dst` atomically (write beside, then rename), as deploy tools do.
pub fn install_atomically(src: &Path, dst: &Path) -> Result<()> {
    let tmp = dst.with_extension("wasm.tmp-install");
    std::fs::copy(src, &tmp)?;
    std::fs::rename(&tmp, dst)?;
    Ok(())
}

/// This process's descriptor limit (soft, hard), from `/proc/self/limits`.
pub fn fd_limits() -> Result<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .context("no \"Max open files\" in /proc/self/limits")?;
    let mut n = line["Max open files".len()..]
        .split_whitespace()
        .map(|v| v.parse::<u64>().unwrap_or(u64::MAX));
    Ok((n.next().unwrap_or(0), n.next().unwrap_or(0)))
}

/// Raises this process's soft descriptor limit to its hard one; returns the soft limit now.
#[allow(unsafe_code)] // setrlimit: a libc call on a plain struct
pub fn raise_fd_limit() -> Result<u64> {
    let (soft, hard) = fd_limits()?;
    if soft < hard {
        let lim = libc::rlimit {
            rlim_cur: hard,
            rlim_max: hard,
        };
        // SAFETY: setrlimit reads the struct it is given; raising the soft limit up to the
        // hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Ok(soft);
        }
    }
    Ok(fd_limits()?.0)
}

/// Receives one SSE envelope within `limit`.
pub async fn next_event(
    rx: &mut mpsc::UnboundedReceiver<serde_json::Value>,
    limit: Duration,
) -> Result<serde_json::Value> {
    tokio::time::timeout(limit, rx.recv())
        .await
        .context("no SSE event in time")?
        .context("SSE stream ended")
}

/// A `[pubsub.b]` table of a backend: `settings` (TOML lines) and `consumer_group = group`.
pub fn table(settings: &str, group: &str) -> toml::Table {
    toml::from_str(&format!("{settings}\nconsumer_group = \"{group}\"\n")).unwrap()
}

/// A host relaying `input` to `output` with the example pass-through plugin (handler
/// `relay`), on backend `kind` with `settings` in consumer group `group`; returned once the
/// handler runs.
pub async fn relay_host(
    kind: &str,
    settings: &str,
    group: &str,
    input: &str,
    output: &str,
) -> Result<Host> {
    let (dir, plugins) = Host::scratch()?;
    std::fs::copy(plugin("passthrough"), plugins.join("relay.wasm"))?;
    std::fs::write(
        plugins.join("relay.toml"),
        format!("subscribe = \"{input}\"\npublish = \"{output}\"\n"),
    )?;
    std::fs::write(
        dir.path().join("wasmill.toml"),
        format!(
            "[host]\ndefault_pubsub = \"b\"\n\n[pubsub.b]\nkind = \"{kind}\"\n{settings}\n\
             consumer_group = \"{group}\"\n"
        ),
    )?;
    start_relay(dir, plugins).await
}

/// Starts the host of `dir` (its `wasmill.toml`) and returns once its `relay` handler runs.
pub async fn start_relay(dir: tempfile::TempDir, plugins: std::path::PathBuf) -> Result<Host> {
    let host = Host::start(dir, plugins, &["--config", "wasmill.toml"]).await?;
    host.wait_handler("relay", Duration::from_secs(120), |h| {
        h["state"] == "running"
    })
    .await?;
    Ok(host)
}

/// How many messages `host`'s `relay` handler processed so far.
pub async fn handled(host: &Host) -> Result<u64> {
    let h = host.handler("relay").await?;
    Ok(h["counts"]["processed"].as_u64().unwrap_or(0))
}

/// The two topics of a relay test on a broker, made before any host starts: `input` (the
/// hosts' consumer group `group` initialized on it, so nothing sent before a host subscribes
/// is dropped) and `output`, read by the test in a group of its own (`out`).
pub struct RelayTopics {
    /// Topic the hosts read.
    pub input: String,
    /// Topic the hosts' relay publishes to.
    pub output: String,
    /// The hosts' consumer group.
    pub group: String,
    /// The test's subscription to `output`.
    pub out: wasmill::pubsub::Subscription,
    /// The connection publishing to `input` (in the hosts' group).
    pub setup: wasmill::pubsub::registry::Backend,
    reader: wasmill::pubsub::registry::Backend,
    kind: String,
}

impl RelayTopics {
    /// Fresh topics and group named after `prefix`, on backend `kind` with `settings`.
    pub async fn make(kind: &str, settings: &str, prefix: &str) -> Result<RelayTopics> {
        use wasmill::pubsub::registry;
        let run = uuid::Uuid::new_v4().simple().to_string();
        let (input, output) = (format!("{prefix}_in_{run}"), format!("{prefix}_out_{run}"));
        let group = format!("{prefix}_{run}");
        let reader =
            registry::connect("b", kind, &table(settings, &format!("reader_{run}"))).await?;
        let out = reader.subscriber.subscribe(&output).await?;
        let setup = registry::connect("b", kind, &table(settings, &group)).await?;
        setup.subscriber.subscribe_initialize(&input).await?;
        Ok(RelayTopics {
            input,
            output,
            group,
            out,
            setup,
            reader,
            kind: kind.to_string(),
        })
    }

    /// Removes both topics and closes the connections, within 30 s (stop the hosts first: on
    /// MySQL a host's delivery transaction holds the topic's table against the DROP).
    pub async fn remove(self) {
        let RelayTopics {
            input,
            output,
            out,
            setup,
            reader,
            kind,
            ..
        } = self;
        drop(out);
        let cleanup = async {
            let _ = reader.subscriber.remove_topic(&output).await;
            let _ = setup.subscriber.remove_topic(&input).await;
            let _ = reader.subscriber.close().await;
            let _ = setup.subscriber.close().await;
        };
        if tokio::time::timeout(Duration::from_secs(30), cleanup)
            .await
            .is_err()
        {
            eprintln!("{kind}: cleanup did not finish within 30 s");
        }
    }
}
