//! The subcommands other than `run`.

pub mod allocator;
pub mod build;
pub mod components;
pub mod scaffold;

pub use build::{BuildArgs, build};
pub use scaffold::{NewArgs, new};

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use futures::StreamExt;

/// `wasmill check FILE.wasm`.
pub fn check(file: &Path) -> Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("read {}", file.display()))?;
    let engine = wasmill::wasm::WasmEngine::new(Default::default())?;
    let name = file.display().to_string();
    let info = wasmill::wasm::inspect(&engine, &name, &bytes)?;
    println!("{name}: implements {}", info.world_id());
    println!("imports:");
    for i in &info.imports {
        println!("  {i}");
    }
    println!("exports:");
    for e in &info.exports {
        println!("  {e}");
    }
    for w in wasmill::wasm::toolchain_warnings(&bytes) {
        eprintln!("warning: {name}: {w}");
    }
    Ok(())
}

/// `wasmill check --config FILE [--plugins DIR]`: the whole configuration checked as
/// `wasmill run` checks it before it serves, nothing run. A one-line summary when it is fine;
/// otherwise every problem on stderr and an error.
pub async fn check_config(config: &Path, plugins: Option<PathBuf>) -> Result<()> {
    let cfg = wasmill::config::Config::load(config)?;
    let plugins_dir = plugins.unwrap_or_else(|| cfg.plugins_dir());
    let report = wasmill::app::check_setup(&cfg, &plugins_dir).await?;
    let summary = report.summary(&cfg.file);
    if !report.is_ok() {
        for e in &report.errors {
            eprintln!("{e}");
        }
        bail!("{summary}");
    }
    println!("{summary}");
    Ok(())
}

/// Arguments of `wasmill publish`.
#[derive(Args)]
pub struct PublishArgs {
    /// The topic.
    topic: String,
    /// The payload; `-` or nothing reads standard input.
    payload: Option<String>,
    /// Metadata `key=value`, repeatable.
    #[arg(short, long = "metadata")]
    metadata: Vec<String>,
    /// The message uuid (default: a fresh one).
    #[arg(long)]
    uuid: Option<String>,
    /// The running host.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "WASMILL_URL")]
    url: String,
    /// A named backend of the host (default: its default one).
    #[arg(long)]
    pubsub: Option<String>,
    /// The host's bearer token (`[host] token`), if it requires one.
    #[arg(long, env = "WASMILL_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// `request` with the bearer token, when there is one.
fn with_token(request: reqwest::RequestBuilder, token: Option<&str>) -> reqwest::RequestBuilder {
    match token.filter(|t| !t.is_empty()) {
        Some(t) => request.bearer_auth(t),
        None => request,
    }
}

/// The hint for an answer of 401.
fn auth_hint(status: reqwest::StatusCode) -> &'static str {
    if status == reqwest::StatusCode::UNAUTHORIZED {
        " (the host requires a token: --token or WASMILL_TOKEN)"
    } else {
        ""
    }
}

/// The payload argument, or standard input for `-` or none.
fn read_payload(arg: Option<&str>) -> Result<String> {
    match arg {
        None | Some("-") => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            Ok(s)
        }
        Some(p) => Ok(p.to_string()),
    }
}

fn topic_url(base: &str, topic: &str, suffix: &str, pubsub: Option<&str>) -> String {
    let mut u = format!("{}/topics/{topic}{suffix}", base.trim_end_matches('/'));
    if let Some(p) = pubsub {
        u.push_str(&format!("?pubsub={p}"));
    }
    u
}

/// `--metadata key=value` arguments as a map; an argument without `=` is an error.
fn parse_metadata(args: &[String]) -> Result<BTreeMap<String, String>> {
    let mut metadata = BTreeMap::new();
    for kv in args {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--metadata {kv:?}: expected key=value"))?;
        metadata.insert(k.to_string(), v.to_string());
    }
    Ok(metadata)
}

/// `wasmill publish`.
pub async fn publish(a: PublishArgs) -> Result<()> {
    let payload = read_payload(a.payload.as_deref())?;
    let metadata = parse_metadata(&a.metadata)?;
    let body = serde_json::json!({ "uuid": a.uuid, "metadata": metadata, "payload": payload });
    let url = topic_url(&a.url, &a.topic, "", a.pubsub.as_deref());
    let r = with_token(reqwest::Client::new().post(&url), a.token.as_deref())
        .json(&body)
        .send()
        .await
        .with_context(|| format!("POST {url} (is `wasmill run` running?)"))?;
    let status = r.status();
    let answer: serde_json::Value = r.json().await.unwrap_or_default();
    if status.as_u16() != 202 {
        bail!("POST {url}: {status}: {answer}{}", auth_hint(status));
    }
    println!("{}", answer["uuid"].as_str().unwrap_or_default());
    Ok(())
}

/// Arguments of `wasmill tail`.
#[derive(Args)]
pub struct TailArgs {
    /// The topic.
    topic: String,
    /// The running host.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "WASMILL_URL")]
    url: String,
    /// A named backend of the host.
    #[arg(long)]
    pubsub: Option<String>,
    /// The host's bearer token (`[host] token`), if it requires one.
    #[arg(long, env = "WASMILL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Exit after this many messages.
    #[arg(long)]
    count: Option<usize>,
    /// Print each message as its JSON envelope instead of its payload.
    #[arg(long)]
    json: bool,
}

/// `wasmill tail`.
pub async fn tail(a: TailArgs) -> Result<()> {
    let url = topic_url(&a.url, &a.topic, "/messages", a.pubsub.as_deref());
    let r = with_token(reqwest::Client::new().get(&url), a.token.as_deref())
        .send()
        .await
        .with_context(|| format!("GET {url} (is `wasmill run` running?)"))?;
    if !r.status().is_success() {
        bail!("GET {url}: {}{}", r.status(), auth_hint(r.status()));
    }
    let mut stream = r.bytes_stream();
    let mut buf = String::new();
    let mut seen = 0;
    let mut out = std::io::stdout();
    while let Some(chunk) = stream.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk?));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            if let Some(kind) = event.lines().find_map(|l| l.strip_prefix("event:")) {
                // Not a message: `lagged` says how many this client missed.
                eprintln!(
                    "wasmill tail: {}: {}",
                    kind.trim(),
                    event
                        .lines()
                        .filter_map(|l| l.strip_prefix("data:"))
                        .collect::<String>()
                        .trim()
                );
                continue;
            }
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim_start)
                .collect();
            if data.is_empty() {
                continue;
            }
            let data = data.join("\n");
            if a.json {
                writeln!(out, "{data}")?;
            } else {
                let v: serde_json::Value = serde_json::from_str(&data)?;
                match v["payload"].as_str() {
                    Some(p) => writeln!(out, "{p}")?,
                    None => writeln!(out, "{}", v["payload_base64"].as_str().unwrap_or_default())?,
                }
            }
            out.flush()?;
            seen += 1;
            if a.count.is_some_and(|c| seen >= c) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Arguments of `wasmill bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// Backend kind (memory, sqlite, redis, ...) with its default local URL, or a name from --config.
    #[arg(long, default_value = "memory")]
    pubsub: String,
    /// Config file whose `[pubsub.NAME]` entries --pubsub may name.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Messages to push through.
    #[arg(long, default_value_t = 100_000)]
    messages: usize,
    /// Payload size ("100", "16KiB").
    #[arg(long, default_value = "100")]
    size: String,
    /// `native` or a .wasm handler plugin.
    #[arg(long, default_value = "native")]
    handler: String,
    /// Handler concurrency.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Drop the handler's output instead of publishing it: measures the consume path
    /// (receive, handle, ack), the same work as the raw client's consume-and-ack loop.
    #[arg(long)]
    consume_only: bool,
    /// Skip the run of the broker's own client (by default a network or SQL backend's figures
    /// are compared with its raw client on the same server, as a ratio).
    #[arg(long)]
    no_raw: bool,
    /// Run Wasmill and the raw client this many times, alternately, and print the medians
    /// (ratios taken per round): steadier figures on a shared machine.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=101))]
    rounds: u32,
    /// Middleware around the handler, in the config's syntax (a TOML array, outermost first),
    /// e.g. '["recoverer", { retry = { max_retries = 3 } }, { wasm = "audit.wasm" }]'; `wasm`
    /// files are found in --plugins.
    #[arg(long)]
    middleware: Option<String>,
    /// Hand the handler up to N messages at once (the config's `batch = N`: a `.wasm`
    /// handler's `handle-batch` export); `concurrency` batches run at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    batch: u32,
    /// Where `{ wasm = "FILE" }` middleware files are.
    #[arg(long, default_value = "plugins")]
    plugins: PathBuf,
}

/// The handler of `wasmill bench` inside the middleware of `--middleware` (the config's syntax).
async fn bench_middleware(
    a: &BenchArgs,
    kind: &str,
    table: &toml::Table,
    handler: wasmill::BoxHandler,
) -> Result<wasmill::BoxHandler> {
    let Some(list) = &a.middleware else {
        return Ok(handler);
    };
    let parsed: toml::Table = toml::from_str(&format!("middleware = {list}"))
        .with_context(|| format!("--middleware {list:?}: not a TOML array"))?;
    let entries = parsed["middleware"]
        .as_array()
        .with_context(|| format!("--middleware {list:?}: not a TOML array"))?
        .clone();
    let cache_dir = wasmill::wasm::cache::resolve_dir(None, &a.plugins).unwrap_or(None);
    let engine = wasmill::wasm::WasmEngine::new(wasmill::wasm::EngineConfig { cache_dir })?;
    let backend = wasmill::pubsub::registry::connect(&a.pubsub, kind, table).await?;
    let backends = std::collections::HashMap::from([(a.pubsub.clone(), backend)]);
    let built = wasmill::app::build_middleware(
        &entries,
        &engine,
        &backends,
        &a.plugins,
        &a.pubsub,
        &wasmill::wasm::Limits::default(),
    )?;
    Ok(wasmill::router::apply_middleware(handler, &built.chain))
}

/// `wasmill bench`.
pub async fn bench(a: BenchArgs) -> Result<()> {
    use wasmill::bench::{Backlog, BenchOptions, native_passthrough, run};
    let size = wasmill::config::size::parse(&a.size).map_err(anyhow::Error::msg)? as usize;
    let (kind, table, cache_dir) = match &a.config {
        Some(path) => {
            let cfg = wasmill::config::Config::load(path)?;
            let e = cfg
                .pubsub
                .get(&a.pubsub)
                .with_context(|| format!("{}: no [pubsub.{}]", path.display(), a.pubsub))?;
            let cache_dir = cfg.host.cache_dir.as_ref().map(|d| cfg.base_dir.join(d));
            (e.kind.clone(), e.settings.clone(), cache_dir)
        }
        None => (a.pubsub.clone(), toml::Table::new(), None),
    };
    let mut loaded: Option<(f64, Arc<wasmill::wasm::InstancePool>)> = None;
    let handler: wasmill::BoxHandler = if a.handler == "native" {
        native_passthrough()
    } else {
        // The same compile cache as `wasmill run`, kept out of the plugin's own folder (a
        // bench runs without one rather than fail on it).
        let plugin_dir = Path::new(&a.handler)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let cache_dir =
            wasmill::wasm::cache::resolve_dir(cache_dir, plugin_dir).unwrap_or_else(|e| {
                eprintln!("warning: {e}; benchmarking without the compile cache");
                None
            });
        let engine = wasmill::wasm::WasmEngine::new(wasmill::wasm::EngineConfig { cache_dir })?;
        let started = std::time::Instant::now();
        let plugin = engine.compile_file(Path::new(&a.handler)).await?;
        let pool = Arc::new(wasmill::wasm::InstancePool::new(
            engine,
            plugin,
            Default::default(),
            Default::default(),
            a.concurrency,
        ));
        loaded = Some((started.elapsed().as_secs_f64(), pool.clone()));
        Arc::new(wasmill::wasm::WasmHandler::new(pool))
    };
    let handler = bench_middleware(&a, &kind, &table, handler).await?;
    let options = BenchOptions {
        messages: a.messages,
        payload_size: size,
        concurrency: a.concurrency,
        handler_batch: a.batch as usize,
        handler_label: if a.batch > 1 {
            format!("{} (batch {})", a.handler, a.batch)
        } else {
            a.handler.clone()
        },
        pubsub_label: kind.clone(),
        consume_only: a.consume_only,
        // Against a broker with its raw client beside, publish first and then drain the
        // backlog, the raw client's order, so each loop runs alone in both. Not on memory (it
        // keeps nothing for absent subscribers); on MQTT with the subscription connected, in
        // the raw loop's rounds (brokers cap what they queue for an offline or slow session:
        // Mosquitto's max_queued_messages is 1000).
        backlog: match kind.as_str() {
            _ if a.no_raw => Backlog::None,
            "memory" => Backlog::None,
            "mqtt" => Backlog::Held {
                round: wasmill::pubsub::bench_round(size),
            },
            _ => Backlog::Stored,
        },
        ..BenchOptions::default()
    };
    let mut rounds = Vec::new();
    for _ in 0..a.rounds {
        // A run closes its backend when it ends: each round connects anew.
        let backend = wasmill::pubsub::registry::connect(&a.pubsub, &kind, &table).await?;
        let mut report = run(
            backend.publisher.clone(),
            backend.subscriber.clone(),
            handler.clone(),
            &options,
        )
        .await?;
        if !a.no_raw {
            let raw = wasmill::pubsub::registry::raw_bench(
                &a.pubsub,
                &options.pubsub_label,
                &table,
                a.messages,
                size,
            )
            .await
            .context("raw client benchmark")?;
            if let Some(raw) = raw {
                report.compare_raw(raw);
            }
        }
        rounds.push(report);
    }
    let ran = rounds.len();
    let mut report = wasmill::bench::BenchReport::median(rounds).context("no round ran")?;
    if let Some((secs, pool)) = loaded {
        report.load_secs = Some(secs);
        report.fuel_per_message = Some(pool.fuel_used() as f64 / (a.messages * ran) as f64);
    }
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}
