//! The whole configuration checked before anything serves: `wasmill run` refuses to start on
//! any problem, `wasmill check --config FILE` reports them without running anything. Every
//! `[[handlers]]` entry and every sidecar is checked (names, plugin files, topics and named
//! pub/subs, grants, limits, each middleware entry and its options, `{ wasm }` middleware
//! components), each handler plugin is compiled (through the compile cache) and must implement
//! the handler world, and each backend's settings are checked without connecting. Every
//! problem is reported, each naming the file, the entry (`handlers[0]`, or the sidecar file)
//! and the key.

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

use crate::config::options::join_key;
use crate::config::{Config, HandlerConfig, TopicSpec, WasmMiddlewareEntry};
use crate::error::{Error, Result};
use crate::pubsub::registry::{self, KINDS};
use crate::router::middleware::FailurePolicy;
use crate::router::middleware::MiddlewareSpec;
use crate::router::middleware::failure_policy::has_own_failure_handling;
use crate::wasm::{WasmEngine, World};
use futures::StreamExt;

/// What a check found: counts of what was checked and every problem.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// `[[handlers]]` entries checked.
    pub handlers: usize,
    /// Sidecars (`FILE.toml` beside `FILE.wasm`) checked.
    pub sidecars: usize,
    /// Backends checked (`[pubsub.NAME]`, plus the built-in `memory`).
    pub pubsubs: usize,
    /// Distinct `{ wasm = … }` middleware components checked.
    pub wasm_middleware: usize,
    /// The problems, one line each: `FILE: KEY: what is wrong`.
    pub errors: Vec<String>,
}

impl CheckReport {
    /// Whether nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }

    /// One line saying what was checked.
    pub fn summary(&self, file: &str) -> String {
        format!(
            "{file}: {} handler(s), {} sidecar(s), {} pub/sub(s), {} wasm middleware: {}",
            self.handlers,
            self.sidecars,
            self.pubsubs,
            self.wasm_middleware,
            if self.is_ok() {
                "ok".to_string()
            } else {
                format!("{} error(s)", self.errors.len())
            }
        )
    }

    /// The report when nothing is wrong, else a config error listing every problem.
    pub fn into_result(self) -> Result<CheckReport> {
        if self.is_ok() {
            return Ok(self);
        }
        Err(Error::Config(format!(
            "{} configuration error(s):\n  {}",
            self.errors.len(),
            self.errors.join("\n  ")
        )))
    }
}

/// A component to compile and the world it must implement, with the key that names it.
struct Compile {
    file: String,
    key: String,
    path: PathBuf,
    world: World,
}

/// Where an entry lives: the file and the key prefix (`handlers[0]`, or empty in a sidecar).
#[derive(Clone)]
struct At<'a> {
    file: &'a str,
    key: String,
}

impl At<'_> {
    fn key(&self, sub: &str) -> String {
        join_key(&self.key, sub)
    }

    fn err(&self, sub: &str, message: impl std::fmt::Display) -> String {
        let key = self.key(sub);
        if key.is_empty() {
            format!("{}: {message}", self.file)
        } else {
            format!("{}: {key}: {message}", self.file)
        }
    }
}

/// The longest `timeout` a message may have.
const MAX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);
/// The smallest and largest `memory` cap.
const MIN_MEMORY: u64 = 1 << 20;
const MAX_MEMORY: u64 = 4 << 30;
/// The most messages (and instances) one handler may have at once.
/// The largest `batch`.
pub const MAX_BATCH: usize = 1024;

const MAX_CONCURRENCY: usize = 1024;

/// The most HTTP connections `[host] max_connections` may ask for.
const MAX_CONNECTIONS: usize = 65_536;
/// The longest `[host] header_timeout` and `body_timeout`.
const MAX_HTTP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);
/// The shortest `[host] token`.
const MIN_TOKEN_LEN: usize = 16;

/// The checks that need no compiler: they run before start and on every sidecar change.
struct Static<'a> {
    cfg: &'a Config,
    plugins_dir: &'a Path,
    errors: Vec<String>,
    compiles: Vec<Compile>,
}

impl<'a> Static<'a> {
    fn new(cfg: &'a Config, plugins_dir: &'a Path) -> Self {
        Static {
            cfg,
            plugins_dir,
            errors: Vec::new(),
            compiles: Vec::new(),
        }
    }

    fn backends(&mut self) {
        let f = &self.cfg.file;
        for (name, entry) in &self.cfg.pubsub {
            if !KINDS.contains(&entry.kind.as_str()) {
                self.errors.push(format!(
                    "{f}: pubsub.{name}.kind: unknown backend {:?}; expected one of {}",
                    entry.kind,
                    KINDS.join(", ")
                ));
            } else if let Err(e) = registry::check_settings(name, &entry.kind, &entry.settings) {
                self.errors
                    .push(format!("{f}: {}", e.to_string().trim_end()));
            }
        }
        let host = &self.cfg.host;
        if !self.cfg.knows_pubsub(&host.default_pubsub) {
            self.errors.push(format!(
                "{f}: host.default_pubsub: unknown pubsub {:?} (declare it as [pubsub.{}])",
                host.default_pubsub, host.default_pubsub
            ));
        }
        let port_ok = host
            .http
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !port_ok {
            self.errors.push(format!(
                "{f}: host.http: {:?} is not an address; expected HOST:PORT, e.g. \"127.0.0.1:8080\"",
                host.http
            ));
        }
        let d = &self.cfg.defaults;
        let at = At {
            file: f,
            key: "defaults".into(),
        };
        self.limits(&at, Some(d.fuel), Some(d.timeout), Some(d.memory));
        self.middleware_list(&at, &d.middleware);
        self.on_failure(&at, &d.on_failure, None);
    }

    /// `[host]`'s HTTP API keys: connection bounds, timeouts, token, origins and hosts.
    /// `[[requeue]]` and `[[forwarders]]`: the backends they name exist, topics are not empty.
    fn components(&mut self) {
        let f = &self.cfg.file;
        let default = &self.cfg.host.default_pubsub;
        let mut places: Vec<(String, (String, String))> = Vec::new();
        for (i, r) in self.cfg.requeue.iter().enumerate() {
            places.push((format!("requeue[{i}].from"), r.from.resolve(default)));
        }
        for (i, fw) in self.cfg.forwarders.iter().enumerate() {
            places.push((format!("forwarders[{i}].from"), fw.from.resolve(default)));
            let to = fw.to.clone().unwrap_or_else(|| default.clone());
            places.push((format!("forwarders[{i}].to"), (to, "-".into())));
        }
        for (key, (pubsub, topic)) in places {
            if !self.cfg.knows_pubsub(&pubsub) {
                self.errors.push(format!(
                    "{f}: {key}: unknown pubsub {pubsub:?} (declare it as [pubsub.{pubsub}])"
                ));
            }
            if topic.is_empty() {
                self.errors
                    .push(format!("{f}: {key}: the topic must not be empty"));
            }
        }
    }

    fn http_api(&mut self) {
        let f = &self.cfg.file;
        let host = &self.cfg.host;
        if !(1..=MAX_CONNECTIONS).contains(&host.max_connections) {
            self.errors.push(format!(
                "{f}: host.max_connections: {} is out of range; expected 1 to {MAX_CONNECTIONS}",
                host.max_connections
            ));
        }
        for (key, d) in [
            ("header_timeout", host.header_timeout),
            ("body_timeout", host.body_timeout),
        ] {
            if d.is_zero() || d > MAX_HTTP_TIMEOUT {
                self.errors.push(format!(
                    "{f}: host.{key}: {} is out of range; expected more than 0s and at most 1h",
                    humantime::format_duration(d)
                ));
            }
        }
        if let Some(token) = &host.token {
            if token.chars().count() < MIN_TOKEN_LEN {
                self.errors.push(format!(
                    "{f}: host.token: too short; use at least {MIN_TOKEN_LEN} characters (for \
                     example `openssl rand -hex 32`)"
                ));
            }
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                self.errors.push(format!(
                    "{f}: host.token: only visible ASCII characters may be used (no spaces)"
                ));
            }
        }
        for (i, origin) in host.allowed_origins.iter().enumerate() {
            let rest = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"));
            let ok = origin == "null"
                || rest.is_some_and(|r| {
                    let r = r.trim_end_matches('/');
                    !r.is_empty() && !r.contains(['/', '?', '#', '@', ' '])
                });
            if !ok {
                self.errors.push(format!(
                    "{f}: host.allowed_origins[{i}]: {origin:?} is not an origin; expected \
                     SCHEME://HOST[:PORT], e.g. \"http://localhost:3000\""
                ));
            }
        }
        for (i, name) in host.allowed_hosts.iter().enumerate() {
            if name.is_empty() || name.contains(['/', '@', ' ']) {
                self.errors.push(format!(
                    "{f}: host.allowed_hosts[{i}]: {name:?} is not a host name; expected NAME or \
                     NAME:PORT, e.g. \"wasmill.internal\""
                ));
            }
        }
    }

    /// A failure policy: its values, its poison pub/sub, and that it does not poison into
    /// the topic it came from.
    fn on_failure(&mut self, at: &At, p: &FailurePolicy, subscribe: Option<&TopicSpec>) {
        if let Err(e) = p.validate() {
            let (key, message) = e.split_once(": ").unwrap_or(("", e.as_str()));
            self.errors
                .push(at.err(&join_key("on_failure", key), message));
        }
        if let Some(pubsub) = &p.poison_pubsub
            && !self.cfg.knows_pubsub(pubsub)
        {
            self.errors.push(at.err(
                "on_failure.poison_pubsub",
                format!("unknown pubsub {pubsub:?} (declare it as [pubsub.{pubsub}])"),
            ));
        }
        if let Some(t) = subscribe {
            let (_, topic) = t.resolve(&self.cfg.host.default_pubsub);
            if p.poison_topic_for(&topic).as_deref() == Some(topic.as_str()) {
                self.errors.push(at.err(
                    "on_failure.poison_topic",
                    format!("{topic:?} is the subscribed topic: a poisoned message would come back forever"),
                ));
            }
        }
    }

    fn limits(
        &mut self,
        at: &At,
        fuel: Option<u64>,
        timeout: Option<std::time::Duration>,
        memory: Option<u64>,
    ) {
        for (key, zero) in [
            ("fuel", fuel == Some(0)),
            ("timeout", timeout.is_some_and(|t| t.is_zero())),
            ("memory", memory == Some(0)),
        ] {
            if zero {
                self.errors.push(at.err(key, "must be positive"));
            }
        }
        if let Some(t) = timeout
            && t > MAX_TIMEOUT
        {
            self.errors.push(at.err(
                "timeout",
                format!(
                    "{} is longer than {} per message: a stuck message would hold its handler that long",
                    humantime::format_duration(t),
                    humantime::format_duration(MAX_TIMEOUT)
                ),
            ));
        }
        if let Some(m) = memory
            && m != 0
            && !(MIN_MEMORY..=MAX_MEMORY).contains(&m)
        {
            self.errors.push(at.err(
                "memory",
                format!(
                    "{m} bytes is outside {MIN_MEMORY}..={MAX_MEMORY} (1MiB..=4GiB): a component needs a few 64 KiB pages, and wasm32 memory ends at 4 GiB"
                ),
            ));
        }
    }

    /// The file `name` inside the plugins folder, if it is one and exists.
    fn plugin_file(&mut self, at: &At, key: &str, name: &str) -> Option<PathBuf> {
        let inside = !name.is_empty()
            && Path::new(name)
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
        if !inside {
            self.errors.push(at.err(
                key,
                format!(
                    "{name:?} is not a file inside the plugins folder {} (no leading /, no ..)",
                    self.plugins_dir.display()
                ),
            ));
            return None;
        }
        let path = self.plugins_dir.join(name);
        if !path.is_file() {
            self.errors
                .push(at.err(key, format!("file {} not found", path.display())));
            return None;
        }
        if let Err(e) = crate::plugins::confine::confined(self.plugins_dir, &path) {
            self.errors.push(at.err(key, e.to_string()));
            return None;
        }
        Some(path)
    }

    fn topic(&mut self, at: &At, key: &str, t: &TopicSpec) {
        let (_, topic) = t.resolve(&self.cfg.host.default_pubsub);
        if topic.is_empty() {
            self.errors.push(at.err(key, "the topic must not be empty"));
        }
        if let TopicSpec::On {
            pubsub: Some(p), ..
        } = t
            && !self.cfg.knows_pubsub(p)
        {
            self.errors.push(at.err(
                &join_key(key, "pubsub"),
                format!("unknown pubsub {p:?} (declare it as [pubsub.{p}])"),
            ));
        }
    }

    fn grants(&mut self, at: &At, allow_publish: &[TopicSpec]) {
        for (i, t) in allow_publish.iter().enumerate() {
            self.topic(at, &format!("allow_publish[{i}]"), t);
        }
    }

    fn middleware_list(&mut self, at: &At, list: &[toml::Value]) {
        for (j, entry) in list.iter().enumerate() {
            let key = format!("middleware[{j}]");
            match WasmMiddlewareEntry::parse_checked(entry) {
                Err(e) => self.errors.push(at.err(&join_key(&key, &e.key), e.message)),
                Ok(Some(w)) => self.wasm_middleware(at, &key, &w),
                Ok(None) => match MiddlewareSpec::parse(entry) {
                    Err(e) => self.errors.push(at.err(&join_key(&key, &e.key), e.message)),
                    Ok(spec) => {
                        if let Some(Some(p)) = spec.publishes_on()
                            && !self.cfg.knows_pubsub(p)
                        {
                            let name = crate::router::middleware::entry_name(entry).unwrap_or("");
                            self.errors.push(at.err(
                                &format!("{key}.{name}.pubsub"),
                                format!("unknown pubsub {p:?} (declare it as [pubsub.{p}])"),
                            ));
                        }
                    }
                },
            }
        }
    }

    fn wasm_middleware(&mut self, at: &At, key: &str, w: &WasmMiddlewareEntry) {
        let entry = At {
            file: at.file,
            key: at.key(key),
        };
        self.limits(&entry, w.fuel, w.timeout, w.memory);
        self.grants(&entry, &w.allow_publish);
        if let Some(path) = self.plugin_file(&entry, "wasm", &w.wasm) {
            self.compiles.push(Compile {
                file: at.file.to_string(),
                key: entry.key("wasm"),
                path,
                world: World::Middleware,
            });
        }
    }

    /// A `[[handlers]]` entry or a sidecar (its name and uniqueness are checked by the caller).
    fn handler(&mut self, at: &At, h: &HandlerConfig) {
        match &h.plugin {
            None => self.errors.push(at.err("", "missing key \"plugin\"")),
            Some(plugin) => {
                if let Some(path) = self.plugin_file(at, "plugin", plugin) {
                    self.compiles.push(Compile {
                        file: at.file.to_string(),
                        key: at.key("plugin"),
                        path,
                        world: World::Handler,
                    });
                }
            }
        }
        if h.concurrency == 0 {
            self.errors
                .push(at.err("concurrency", "must be at least 1"));
        } else if h.concurrency > MAX_CONCURRENCY {
            self.errors.push(at.err(
                "concurrency",
                format!(
                    "{} is more than {MAX_CONCURRENCY}: each unit is a WASM instance with its own memory",
                    h.concurrency
                ),
            ));
        }
        if h.batch == 0 {
            self.errors
                .push(at.err("batch", "must be at least 1 (1 = a message per call)"));
        } else if h.batch > MAX_BATCH {
            self.errors.push(at.err(
                "batch",
                format!("{} is more than {MAX_BATCH} messages per call", h.batch),
            ));
        }
        let default = &self.cfg.host.default_pubsub;
        if let Some(p) = &h.publish
            && !h.allow_loop
            && p.resolve(default) == h.subscribe.resolve(default)
        {
            self.errors.push(at.err(
                "publish",
                "is the subscribed topic: every output would come back to the handler, forever \
                 (set allow_loop = true if the handler ends the loop itself)",
            ));
        }
        if h.order_key.as_deref() == Some("") {
            self.errors
                .push(at.err("order_key", "must name a metadata key"));
        }
        self.topic(at, "subscribe", &h.subscribe);
        if let Some(p) = &h.publish {
            self.topic(at, "publish", p);
        }
        self.grants(at, &h.allow_publish);
        self.limits(at, h.fuel, h.timeout, h.memory);
        self.middleware_list(at, &h.middleware);
        let policy = h
            .on_failure
            .as_ref()
            .unwrap_or(&self.cfg.defaults.on_failure);
        let mut chain = self.cfg.defaults.middleware.clone();
        chain.extend(h.middleware.iter().cloned());
        if !has_own_failure_handling(&chain) {
            self.on_failure(at, policy, Some(&h.subscribe));
        }
    }
}

/// The static checks of one sidecar (as the plugins-folder watcher reads it at run time):
/// everything but compiling, errors joined.
pub fn check_sidecar(
    cfg: &Config,
    plugins_dir: &Path,
    sidecar: &Path,
    h: &HandlerConfig,
) -> Result<()> {
    let file = sidecar.display().to_string();
    let mut s = Static::new(cfg, plugins_dir);
    s.handler(
        &At {
            file: &file,
            key: String::new(),
        },
        h,
    );
    if s.errors.is_empty() {
        Ok(())
    } else {
        Err(Error::Config(s.errors.join("; ")))
    }
}

/// The `.wasm` files of the plugins folder that a sidecar binds (the configured plugins
/// excepted: their `[[handlers]]` entry wins, as in the plugins manager), sorted.
fn sidecars(cfg: &Config, plugins_dir: &Path) -> Vec<(PathBuf, PathBuf)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(plugins_dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
        .filter(|p| p.with_extension("toml").is_file())
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            !cfg.handlers.iter().any(|h| h.plugin == name)
        })
        .map(|p| (p.with_extension("toml"), p))
        .collect()
}

/// Checks `cfg` as `wasmill run` would use it with the plugins folder `plugins_dir`,
/// compiling every component with `engine`. Returns every problem found.
pub async fn check_config(cfg: &Config, plugins_dir: &Path, engine: &WasmEngine) -> CheckReport {
    let (mut report, compiles) = check_statically(cfg, plugins_dir);
    let compiled = compile_all(engine, &compiles).await;
    for c in &compiles {
        match &compiled[&c.path] {
            Err(e) => report.errors.push(format!("{}: {}: {e}", c.file, c.key)),
            Ok(w) if *w != c.world => {
                let hint = match c.world {
                    World::Handler => {
                        "; a middleware component goes in a middleware list as { wasm = \"FILE.wasm\" }"
                    }
                    World::Middleware => {
                        "; a handler component goes in a [[handlers]] entry or a sidecar"
                    }
                };
                report.errors.push(format!(
                    "{}: {}: {} implements {w}, not {}{hint}",
                    c.file,
                    c.key,
                    c.path.display(),
                    c.world
                ));
            }
            Ok(_) => {}
        }
    }
    report
}

/// The checks of [`check_config`] that need no compiler (`wasmill run` makes them before it
/// starts; the components compile behind their subscriptions, and one that does not compile
/// is listed as failed in `GET /readyz` and `GET /handlers`).
pub fn check_static(cfg: &Config, plugins_dir: &Path) -> CheckReport {
    check_statically(cfg, plugins_dir).0
}

/// The report of the static checks, and the components left to compile.
fn check_statically(cfg: &Config, plugins_dir: &Path) -> (CheckReport, Vec<Compile>) {
    let mut s = Static::new(cfg, plugins_dir);
    s.backends();
    s.http_api();
    s.components();
    let mut names: HashMap<String, String> = HashMap::new();
    let mut name_taken = |s: &mut Static, at: &At, name: &Option<String>| match name {
        None => s.errors.push(at.err("", "missing key \"name\"")),
        Some(n) if n.is_empty() => s.errors.push(at.err("name", "must not be empty")),
        Some(n) => {
            let here = if at.key.is_empty() {
                at.file.to_string()
            } else {
                at.key.clone()
            };
            if let Some(first) = names.get(n) {
                s.errors.push(at.err(
                    "name",
                    format!("duplicate handler name {n:?} (also {first})"),
                ));
            } else {
                names.insert(n.clone(), here);
            }
        }
    };
    let f = cfg.file.as_str();
    for (i, h) in cfg.handlers.iter().enumerate() {
        let at = At {
            file: f,
            key: format!("handlers[{i}]"),
        };
        name_taken(&mut s, &at, &h.name);
        s.handler(&at, h);
    }
    let sidecars = sidecars(cfg, plugins_dir);
    let sidecar_files: Vec<String> = sidecars
        .iter()
        .map(|(t, _)| t.display().to_string())
        .collect();
    for ((toml, wasm), file) in sidecars.iter().zip(&sidecar_files) {
        match HandlerConfig::from_sidecar(toml, wasm) {
            Err(e) => s.errors.push(e.to_string()),
            Ok(h) => {
                let at = At {
                    file,
                    key: String::new(),
                };
                name_taken(&mut s, &at, &h.name);
                s.handler(&at, &h);
            }
        }
    }

    let mut report = CheckReport {
        handlers: cfg.handlers.len(),
        sidecars: sidecars.len(),
        pubsubs: cfg.pubsub.len() + usize::from(!cfg.pubsub.contains_key("memory")),
        ..CheckReport::default()
    };
    let compiles = std::mem::take(&mut s.compiles);
    let mut counted: HashSet<&PathBuf> = HashSet::new();
    for c in &compiles {
        if counted.insert(&c.path) && c.world == World::Middleware {
            report.wasm_middleware += 1;
        }
    }
    report.errors = s.errors;
    (report, compiles)
}

/// Compiles each distinct file of `compiles` (through the compile cache), as many at once as
/// the machine has cores: a Python or JS component takes seconds, and they no longer wait for
/// one another. Each file's world, or why it was refused.
async fn compile_all(
    engine: &WasmEngine,
    compiles: &[Compile],
) -> HashMap<PathBuf, std::result::Result<World, String>> {
    let mut paths: Vec<&PathBuf> = Vec::new();
    for c in compiles {
        if !paths.contains(&&c.path) {
            paths.push(&c.path);
        }
    }
    let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
    futures::stream::iter(paths)
        .map(|path| async move {
            let r = engine
                .compile_file(path)
                .await
                .map(|p| p.info.world)
                .map_err(|e| e.to_string());
            (path.clone(), r)
        })
        .buffer_unordered(parallel)
        .collect()
        .await
}

#[cfg(test)]
#[path = "check_tests.rs"]
mod tests;
