//! The rules every part of a configuration is held to (backends, components, the HTTP API, each handler and middleware entry, limits, grants), gathered by `Static` with the key each problem is about.

use super::*;

/// A component to compile and the world it must implement, with the key that names it.
pub(super) struct Compile {
    pub(super) file: String,
    pub(super) key: String,
    pub(super) path: PathBuf,
    pub(super) world: World,
}

/// Where an entry lives: the file and the key prefix (`handlers[0]`, or empty in a sidecar).
#[derive(Clone)]
pub(super) struct At<'a> {
    pub(super) file: &'a str,
    pub(super) key: String,
}

impl At<'_> {
    pub(super) fn key(&self, sub: &str) -> String {
        join_key(&self.key, sub)
    }

    pub(super) fn err(&self, sub: &str, message: impl std::fmt::Display) -> String {
        let key = self.key(sub);
        if key.is_empty() {
            format!("{}: {message}", self.file)
        } else {
            format!("{}: {key}: {message}", self.file)
        }
    }
}

/// The longest `timeout` a message may have.
pub(super) const MAX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);
/// The smallest and largest `memory` cap.
pub(super) const MIN_MEMORY: u64 = 1 << 20;
pub(super) const MAX_MEMORY: u64 = 4 << 30;
/// The most messages (and instances) one handler may have at once.
/// The largest `batch`.
pub const MAX_BATCH: usize = 1024;

pub(super) const MAX_CONCURRENCY: usize = 1024;

/// The most HTTP connections `[host] max_connections` may ask for.
pub(super) const MAX_CONNECTIONS: usize = 65_536;
/// The longest `[host] header_timeout` and `body_timeout`.
pub(super) const MAX_HTTP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);
/// The shortest `[host] token`.
pub(super) const MIN_TOKEN_LEN: usize = 16;

/// The checks that need no compiler: they run before start and on every sidecar change.
pub(super) struct Static<'a> {
    pub(super) cfg: &'a Config,
    pub(super) plugins_dir: &'a Path,
    pub(super) errors: Vec<String>,
    pub(super) compiles: Vec<Compile>,
}

impl<'a> Static<'a> {
    pub(super) fn new(cfg: &'a Config, plugins_dir: &'a Path) -> Self {
        Static {
            cfg,
            plugins_dir,
            errors: Vec::new(),
            compiles: Vec::new(),
        }
    }

    pub(super) fn backends(&mut self) {
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
    /// `[[requeue]]`, `[[forwarders]]`, `[[fan_in]]`, `[[fan_out]]`: the backends they name
    /// exist, topics are not empty, a fan-in does not feed itself, a topic is fanned out once.
    pub(super) fn components(&mut self) {
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
        for (i, fan) in self.cfg.fan_in.iter().enumerate() {
            if fan.from.is_empty() {
                self.errors
                    .push(format!("{f}: fan_in[{i}].from: name at least one topic"));
            }
            let to = fan.to.resolve(default);
            for (j, from) in fan.from.iter().enumerate() {
                let from = from.resolve(default);
                if from == to {
                    self.errors.push(format!(
                        "{f}: fan_in[{i}].from[{j}]: {:?} is also its `to`: it would feed itself",
                        from.1
                    ));
                }
                places.push((format!("fan_in[{i}].from[{j}]"), from));
            }
            places.push((format!("fan_in[{i}].to"), to));
        }
        let mut fanned = std::collections::HashSet::new();
        for (i, fan) in self.cfg.fan_out.iter().enumerate() {
            let at = fan.topic.resolve(default);
            if !fanned.insert(at.clone()) {
                self.errors.push(format!(
                    "{f}: fan_out[{i}].topic: {:?} on {:?} is fanned out twice",
                    at.1, at.0
                ));
            }
            places.push((format!("fan_out[{i}].topic"), at));
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

    pub(super) fn http_api(&mut self) {
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
    pub(super) fn on_failure(&mut self, at: &At, p: &FailurePolicy, subscribe: Option<&TopicSpec>) {
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

    pub(super) fn limits(
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
    pub(super) fn plugin_file(&mut self, at: &At, key: &str, name: &str) -> Option<PathBuf> {
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

    pub(super) fn topic(&mut self, at: &At, key: &str, t: &TopicSpec) {
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

    pub(super) fn grants(&mut self, at: &At, allow_publish: &[TopicSpec]) {
        for (i, t) in allow_publish.iter().enumerate() {
            self.topic(at, &format!("allow_publish[{i}]"), t);
        }
    }

    pub(super) fn middleware_list(&mut self, at: &At, list: &[toml::Value]) {
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

    pub(super) fn wasm_middleware(&mut self, at: &At, key: &str, w: &WasmMiddlewareEntry) {
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
    pub(super) fn handler(&mut self, at: &At, h: &HandlerConfig) {
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
            let (pubsub, _) = p.resolve(default);
            if let Some(entry) = self.cfg.pubsub.get(&pubsub)
                && crate::pubsub::registry::SOURCES.contains(&entry.kind.as_str())
            {
                self.errors.push(at.err(
                    "publish",
                    format!(
                        "pubsub {pubsub:?} is a {} source: it is read, never published to",
                        entry.kind
                    ),
                ));
            }
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
