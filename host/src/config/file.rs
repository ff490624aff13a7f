//! The schema of `wasmill.toml` and of plugin sidecars, and its validation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[host]`: where plugins live, where the HTTP API listens, shutdown.
    #[serde(default)]
    pub host: HostConfig,
    /// `[pubsub.NAME]`: named backends; `memory` always exists.
    #[serde(default)]
    pub pubsub: BTreeMap<String, PubSubEntry>,
    /// `[defaults]`: what every WASM handler gets unless its entry overrides it.
    #[serde(default)]
    pub defaults: Defaults,
    /// `[[handlers]]`: plugins bound to routes (after loading, with one entry per
    /// `[[commands]]` and `[[events]]` entry appended).
    #[serde(default)]
    pub handlers: Vec<HandlerConfig>,
    /// `[cqrs]`: the topics of commands and events.
    #[serde(default)]
    pub cqrs: super::cqrs::CqrsConfig,
    /// `[[commands]]`: a command name bound to a WASM handler (see `config::cqrs`).
    #[serde(default)]
    pub commands: Vec<toml::Table>,
    /// `[[events]]`: an event name bound to a WASM handler (see `config::cqrs`).
    #[serde(default)]
    pub events: Vec<toml::Table>,
    /// `[[requeue]]`: poison topics whose messages go back after a delay.
    #[serde(default)]
    pub requeue: Vec<super::components::RequeueEntry>,
    /// `[[forwarders]]`: outbox topics whose messages are forwarded.
    #[serde(default)]
    pub forwarders: Vec<super::components::ForwarderEntry>,
    /// `[[fan_in]]`: topics moved into one.
    #[serde(default)]
    pub fan_in: Vec<super::components::FanInEntry>,
    /// `[[fan_out]]`: topics read once and handed to every handler subscribed to them.
    #[serde(default)]
    pub fan_out: Vec<super::components::FanOutEntry>,
    /// The folder the file was read from; relative paths are resolved against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The file's name, for error messages.
    #[serde(skip)]
    pub file: String,
}

/// `[host]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// The plugins folder (default `plugins`).
    pub plugins_dir: PathBuf,
    /// Listen address of the HTTP API (default `127.0.0.1:8080`).
    pub http: String,
    /// How long a graceful close waits for in-flight messages (default 10s).
    #[serde(with = "crate::config::duration")]
    pub close_timeout: Duration,
    /// The backend used when a topic names none (default `memory`).
    pub default_pubsub: String,
    /// Where compiled components are cached (default `$XDG_CACHE_HOME/wasmill` or
    /// `~/.cache/wasmill`); must not be inside `plugins_dir` (see `docs/SECURITY.md`).
    pub cache_dir: Option<PathBuf>,
    /// HTTP connections open at once (default 1024; lowered to fit the descriptor limit).
    pub max_connections: usize,
    /// Time for a connection to send a complete request head, from connecting or the end of
    /// its previous response; idle connections are closed after it (default 30s).
    #[serde(with = "crate::config::duration")]
    pub header_timeout: Duration,
    /// Time for a request body to arrive completely (default 60s).
    #[serde(with = "crate::config::duration")]
    pub body_timeout: Duration,
    /// The bearer token every HTTP route but `/healthz` requires (default none; the
    /// `WASMILL_TOKEN` environment variable, when set, takes precedence).
    pub token: Option<String>,
    /// Origins (`scheme://host[:port]`) whose pages may use the HTTP API besides the host's
    /// own (default none).
    pub allowed_origins: Vec<String>,
    /// Names a `Host` header may carry besides IP literals and `localhost` (default none).
    pub allowed_hosts: Vec<String>,
}

impl HostConfig {
    /// The token the API requires: `WASMILL_TOKEN` when set and not empty, else `token`.
    pub fn effective_token(&self) -> Option<String> {
        std::env::var("WASMILL_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .or_else(|| self.token.clone())
    }
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            plugins_dir: PathBuf::from("plugins"),
            http: "127.0.0.1:8080".into(),
            close_timeout: Duration::from_secs(10),
            default_pubsub: "memory".into(),
            cache_dir: None,
            max_connections: 1024,
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
            token: None,
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
        }
    }
}

/// `[pubsub.NAME]`: a backend kind and its settings (checked by the backend itself).
#[derive(Debug, Clone, Deserialize)]
pub struct PubSubEntry {
    /// memory | sqlite | redis | nats | postgres | mysql | amqp | mqtt.
    pub kind: String,
    /// Every other key, handed to the backend.
    #[serde(flatten)]
    pub settings: toml::Table,
}

/// `[defaults]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Defaults {
    /// Fuel per message.
    pub fuel: u64,
    /// Wall-clock deadline per message.
    #[serde(with = "crate::config::duration")]
    pub timeout: Duration,
    /// Memory cap per instance.
    #[serde(deserialize_with = "crate::config::size::deserialize")]
    pub memory: u64,
    /// Output payload bytes allowed per message.
    #[serde(deserialize_with = "crate::config::size::deserialize")]
    pub max_output_bytes: u64,
    /// Output messages allowed per message.
    pub max_output_messages: usize,
    /// Middleware of every handler (before its own).
    pub middleware: Vec<toml::Value>,
    /// What happens to a message whose handling keeps failing (retries with backoff, then a
    /// poison topic), for every handler that lists no `retry` or `poison_queue` of its own.
    pub on_failure: crate::router::middleware::FailurePolicy,
}

impl Default for Defaults {
    fn default() -> Self {
        let l = crate::wasm::Limits::default();
        Defaults {
            fuel: l.fuel,
            timeout: l.timeout,
            memory: l.memory,
            max_output_bytes: l.max_output_bytes,
            max_output_messages: l.max_output_messages,
            middleware: vec![toml::Value::String("recoverer".into())],
            on_failure: Default::default(),
        }
    }
}

/// A topic, optionally on a named backend: `"t"` or `{ pubsub = "events", topic = "t" }`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum TopicSpec {
    /// A topic on the default backend.
    Topic(String),
    /// A topic on a named backend.
    On {
        /// The backend's name.
        pubsub: Option<String>,
        /// The topic.
        topic: String,
    },
}

impl TopicSpec {
    /// (backend name, topic), with `default` for the backend when none is named.
    pub fn resolve(&self, default: &str) -> (String, String) {
        match self {
            TopicSpec::Topic(t) => (default.to_string(), t.clone()),
            TopicSpec::On { pubsub, topic } => (
                pubsub.clone().unwrap_or_else(|| default.to_string()),
                topic.clone(),
            ),
        }
    }
}

/// A `[[handlers]]` entry, or the content of a sidecar `FILE.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerConfig {
    /// Unique name (a sidecar defaults it to the file's stem).
    pub name: Option<String>,
    /// The plugin file inside the plugins folder (implied for a sidecar).
    pub plugin: Option<String>,
    /// Where it consumes.
    pub subscribe: TopicSpec,
    /// Where its output goes.
    pub publish: Option<TopicSpec>,
    /// Messages (and instances) at once.
    #[serde(default = "one")]
    pub concurrency: usize,
    /// Messages handed to the plugin per call (its `handle-batch` export); 1 = one per call.
    #[serde(default = "one")]
    pub batch: usize,
    /// Allow `publish` to be the subscribed topic (a handler that feeds itself, e.g. a
    /// countdown that stops on its own); refused otherwise.
    #[serde(default)]
    pub allow_loop: bool,
    /// Metadata key whose equal values are processed in order (with concurrency > 1).
    pub order_key: Option<String>,
    /// Middleware, outermost first (after `[defaults] middleware`).
    #[serde(default)]
    pub middleware: Vec<toml::Value>,
    /// Override of `[defaults] fuel`.
    pub fuel: Option<u64>,
    /// Override of `[defaults] timeout`.
    #[serde(default, deserialize_with = "opt_duration")]
    pub timeout: Option<Duration>,
    /// Override of `[defaults] memory`.
    #[serde(default, deserialize_with = "opt_size")]
    pub memory: Option<u64>,
    /// Topics the plugin may publish to itself through the host's `publish`.
    #[serde(default)]
    pub allow_publish: Vec<TopicSpec>,
    /// Override of `[defaults] on_failure` (the whole table: keys not given take the
    /// built-in defaults, not `[defaults]`'s).
    pub on_failure: Option<crate::router::middleware::FailurePolicy>,
}

fn one() -> usize {
    1
}

/// An optional duration ("2s") of a config entry.
pub(crate) fn opt_duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Duration>, D::Error> {
    crate::config::duration::deserialize(d).map(Some)
}

/// An optional size ("64MiB") of a config entry.
pub(crate) fn opt_size<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<u64>, D::Error> {
    crate::config::size::deserialize(d).map(Some)
}

fn parse<T: serde::de::DeserializeOwned>(file: &str, text: &str) -> Result<T> {
    toml::from_str(text).map_err(|e| Error::Config(format!("{file}: {}", e.to_string().trim_end())))
}

impl Config {
    /// Reads and parses `path`: syntax, unknown keys and value formats. What parsing cannot
    /// see (references, files, components, backends' settings) is checked as a whole by
    /// `crate::app::check`.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("{}: cannot read: {e}", path.display())))?;
        let mut cfg = Config::from_toml(&path.display().to_string(), &text)?;
        cfg.base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(cfg)
    }

    /// Parses `text` as the config file named `file` (in errors); paths in it are relative to
    /// the current folder. What parsing cannot see is checked by `crate::app::check`.
    pub fn from_toml(file: &str, text: &str) -> Result<Config> {
        let mut cfg: Config = parse(file, text)?;
        cfg.file = file.to_string();
        use super::cqrs::{Entry, handler_for};
        for (kind, list) in [(Entry::Command, &cfg.commands), (Entry::Event, &cfg.events)] {
            for (i, t) in list.iter().enumerate() {
                let h = handler_for(file, &cfg.cqrs, kind, i, t)?;
                cfg.handlers.push(h);
            }
        }
        cfg.base_dir = PathBuf::from(".");
        Ok(cfg)
    }

    /// The plugins folder, resolved against the config file's folder.
    pub fn plugins_dir(&self) -> PathBuf {
        self.base_dir.join(&self.host.plugins_dir)
    }

    /// `[host] cache_dir` resolved against the config file's folder, if configured (see
    /// `wasm::cache::resolve_dir` for the default and the checks).
    pub fn cache_dir(&self) -> Option<PathBuf> {
        self.host.cache_dir.as_ref().map(|d| self.base_dir.join(d))
    }

    /// Whether `name` is a backend of this config (`memory` always is).
    pub fn knows_pubsub(&self, name: &str) -> bool {
        name == "memory" || self.pubsub.contains_key(name)
    }
}

impl HandlerConfig {
    /// Reads a sidecar `FILE.toml` for `FILE.wasm`: `name` defaults to the stem, `plugin` is
    /// the wasm file.
    pub fn from_sidecar(sidecar: &Path, wasm: &Path) -> Result<HandlerConfig> {
        let file = sidecar.display().to_string();
        let text = std::fs::read_to_string(sidecar)
            .map_err(|e| Error::Config(format!("{file}: cannot read: {e}")))?;
        Self::from_sidecar_toml(&file, &text, wasm)
    }

    /// [`HandlerConfig::from_sidecar`] of a sidecar's text, `file` naming it in errors.
    pub fn from_sidecar_toml(file: &str, text: &str, wasm: &Path) -> Result<HandlerConfig> {
        let mut h: HandlerConfig = parse(file, text)?;
        if h.name.is_none() {
            h.name = wasm.file_stem().map(|s| s.to_string_lossy().into_owned());
        }
        let plugin = wasm
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(p) = &h.plugin
            && p != &plugin
        {
            return Err(Error::Config(format!(
                "{file}: plugin: a sidecar binds its own file {plugin:?}, not {p:?}"
            )));
        }
        h.plugin = Some(plugin);
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    const SPEC_EXAMPLE: &str = r#"
[host]
plugins_dir = "plugins"
http = "127.0.0.1:8080"
close_timeout = "10s"

[pubsub.events]
kind = "redis"
url = "redis://127.0.0.1:6379"

[defaults]
fuel = 100_000_000
timeout = "1s"
memory = "64MiB"
middleware = ["recoverer"]

[[handlers]]
name = "uppercase"
plugin = "uppercase.wasm"
subscribe = "incoming"
publish = { pubsub = "events", topic = "outgoing" }
concurrency = 1
middleware = [
  "correlation_id",
  { retry = { max_retries = 3, initial_interval = "100ms" } },
  { poison_queue = { topic = "poison" } },
  { wasm = "audit.wasm" },
]
"#;

    fn setup(text: &str) -> (tempfile::TempDir, Result<Config>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("plugins")).unwrap();
        std::fs::write(dir.path().join("plugins/uppercase.wasm"), b"x").unwrap();
        let path = write(dir.path(), "wasmill.toml", text);
        let cfg = Config::load(&path);
        (dir, cfg)
    }

    #[test]
    fn the_spec_example_parses() {
        let (_d, cfg) = setup(SPEC_EXAMPLE);
        let cfg = cfg.unwrap();
        assert_eq!(cfg.host.close_timeout, Duration::from_secs(10));
        assert_eq!(cfg.pubsub["events"].kind, "redis");
        assert_eq!(
            cfg.pubsub["events"].settings["url"].as_str(),
            Some("redis://127.0.0.1:6379")
        );
        assert_eq!(cfg.defaults.memory, 64 << 20);
        let h = &cfg.handlers[0];
        assert_eq!(
            h.subscribe.resolve("memory"),
            ("memory".into(), "incoming".into())
        );
        assert_eq!(
            h.publish.as_ref().unwrap().resolve("memory"),
            ("events".into(), "outgoing".into())
        );
        assert_eq!(h.middleware.len(), 4);
    }

    #[test]
    fn errors_name_file_key_and_expectation() {
        let (_d, e) = setup("[host]\nclose_timeout = \"fast\"\n");
        let e = e.unwrap_err().to_string();
        assert!(
            e.contains("wasmill.toml") && e.contains("close_timeout") && e.contains("\"fast\""),
            "{e}"
        );

        let (_d, e) =
            setup("[[handlers]]\nname = \"a\"\nplugin = \"uppercase.wasm\"\nsubscrib = \"t\"\n");
        let e = e.unwrap_err().to_string();
        assert!(e.contains("subscrib") && e.contains("line"), "{e}");
    }

    #[test]
    fn sidecar_defaults_name_and_plugin() {
        let dir = tempfile::tempdir().unwrap();
        let side = write(
            dir.path(),
            "up.toml",
            "subscribe = \"in\"\npublish = \"out\"\n",
        );
        let h = HandlerConfig::from_sidecar(&side, &dir.path().join("up.wasm")).unwrap();
        assert_eq!(h.name.as_deref(), Some("up"));
        assert_eq!(h.plugin.as_deref(), Some("up.wasm"));
        let bad = write(
            dir.path(),
            "b.toml",
            "subscribe = \"in\"\ntimeout = \"soon\"\n",
        );
        let e = HandlerConfig::from_sidecar(&bad, &dir.path().join("b.wasm"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("b.toml") && e.contains("timeout"), "{e}");
    }
}
