//! The plugins folder's handlers: start them, hot-swap their versions, stop them.
//!
//! Reload is the only code path (Vector's topology controller): every file event goes through
//! [`PluginManager::on_event`], which compiles off the message path and then either swaps the
//! version behind a running handler's instance pool (in-flight messages finish on the old
//! version, the next message runs the new one), starts a handler, or stops one. A file that
//! does not compile never replaces a working version: the error is logged and shown.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;

use super::watch::FileEvent;
use crate::error::{Error, Result};
use crate::pubsub::registry::Backend;
use crate::router::{
    BoxMiddleware, HandlerHandle, HandlerSpec, HandlerState, Router, StatsSnapshot,
};
use crate::wasm::{CompiledPlugin, Grants, InstancePool, Limits, WasmEngine, WasmHandler};

/// A topic on a named backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicRef {
    /// The backend's config name.
    pub pubsub: String,
    /// The topic.
    pub topic: String,
}

/// Everything needed to run one WASM handler, resolved from the config or a sidecar.
#[derive(Debug, Clone)]
pub struct HandlerRoute {
    /// Unique handler name.
    pub name: String,
    /// The plugin's file name inside the plugins folder.
    pub plugin: String,
    /// Where it consumes.
    pub subscribe: TopicRef,
    /// Where its output goes, if anywhere.
    pub publish: Option<TopicRef>,
    /// Messages (and instances) at once.
    pub concurrency: usize,
    /// Metadata key whose equal values are processed in order.
    pub order_key: Option<String>,
    /// Sandbox limits.
    pub limits: Limits,
    /// Topics (on the default backend, or `pubsub/topic`) the plugin may publish to itself.
    pub allow_publish: Vec<TopicRef>,
    /// Middleware config entries, outermost first (defaults first).
    pub middleware: Vec<toml::Value>,
    /// Whether it came from a sidecar (`FILE.toml`) rather than the host config.
    pub from_sidecar: bool,
}

/// The middleware of one route as built: the chain, outermost first, and the instance pool of
/// each WASM middleware with its file, so that a new version of that file can be swapped in.
#[derive(Default)]
pub struct BuiltMiddleware {
    /// The chain, outermost first.
    pub chain: Vec<BoxMiddleware>,
    /// `(file name, pool)` of every `{ wasm = "FILE" }` entry of the chain.
    pub wasm: Vec<(String, Arc<InstancePool>)>,
}

/// Builds the middleware list of a route (router-level built-ins and WASM middleware).
pub type MiddlewareFactory = Arc<dyn Fn(&HandlerRoute) -> Result<BuiltMiddleware> + Send + Sync>;

/// Reads the sidecar `FILE.toml` of `FILE.wasm` into a route.
pub type SidecarReader = Arc<dyn Fn(&Path, &Path) -> Result<HandlerRoute> + Send + Sync>;

/// Called with a handler's name after a new version was swapped in.
pub type ReloadListener = Arc<dyn Fn(&str) + Send + Sync>;

/// One handler as `GET /handlers` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct HandlerInfo {
    /// Handler name.
    pub name: String,
    /// Plugin file name.
    pub plugin: String,
    /// sha256 of the version running (empty if none ever loaded).
    pub sha256: String,
    /// When that version was loaded (RFC 3339).
    pub loaded_at: Option<String>,
    /// Subscribed topic.
    pub subscribe: TopicRef,
    /// Output topic.
    pub publish: Option<TopicRef>,
    /// `running`, `failed`, `stopped` (or `pending`).
    pub state: HandlerState,
    /// Counters.
    pub counts: Counts,
    /// The last error: a failed reload, or the last message failure.
    pub last_error: Option<String>,
    /// How many times a new version was swapped in.
    pub reloads: u64,
    /// Fuel consumed by all messages so far.
    pub fuel_consumed: u64,
    /// Middleware, outermost first.
    pub middleware: Vec<String>,
    /// Whether it is bound by a sidecar.
    pub sidecar: bool,
}

/// Message counters of a handler.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    /// Handled and acked.
    pub processed: u64,
    /// Failed (nacked).
    pub failed: u64,
    /// Retries made.
    pub retried: u64,
    /// Sent to a poison queue.
    pub poisoned: u64,
}

struct Running {
    route: HandlerRoute,
    handle: Option<HandlerHandle>,
    pool: Option<Arc<InstancePool>>,
    middleware: Vec<String>,
    /// The pools of the route's WASM middleware, by file.
    #[allow(dead_code)]
    wasm_middleware: Vec<(String, Arc<InstancePool>)>,
    last_error: Option<String>,
    reloads: u64,
}

/// Owns the WASM handlers of a running host.
pub struct PluginManager {
    engine: WasmEngine,
    router: Router,
    backends: HashMap<String, Backend>,
    dir: PathBuf,
    configured: Vec<HandlerRoute>,
    middleware: MiddlewareFactory,
    sidecar: SidecarReader,
    handlers: Mutex<HashMap<String, Running>>,
    reload_listeners: Mutex<Vec<ReloadListener>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

impl PluginManager {
    /// A manager for the plugins folder `dir`, with the handlers the config declares.
    pub fn new(
        engine: WasmEngine,
        router: Router,
        backends: HashMap<String, Backend>,
        dir: PathBuf,
        configured: Vec<HandlerRoute>,
        middleware: MiddlewareFactory,
        sidecar: SidecarReader,
    ) -> Arc<Self> {
        Arc::new(PluginManager {
            engine,
            router,
            backends,
            dir,
            configured,
            middleware,
            sidecar,
            handlers: Mutex::new(HashMap::new()),
            reload_listeners: Mutex::new(Vec::new()),
        })
    }

    /// Calls `f(handler_name)` after every successful version swap (metrics).
    pub fn on_reload(&self, f: ReloadListener) {
        lock(&self.reload_listeners).push(f);
    }

    /// Starts every configured handler and every plugin in the folder that has a sidecar.
    pub async fn start_all(self: &Arc<Self>) {
        for route in self.configured.clone() {
            self.start(route).await;
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort();
        for wasm in files
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
        {
            self.start_from_sidecar(wasm).await;
        }
    }

    fn file_name(path: &Path) -> String {
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    async fn start_from_sidecar(self: &Arc<Self>, wasm: &Path) {
        let sidecar = wasm.with_extension("toml");
        let plugin = Self::file_name(wasm);
        if !sidecar.exists() || self.configured.iter().any(|r| r.plugin == plugin) {
            return;
        }
        match (self.sidecar)(&sidecar, wasm) {
            Ok(route) => self.start(route).await,
            Err(e) => tracing::error!(sidecar = %sidecar.display(), "invalid sidecar: {e}"),
        }
    }

    /// Handles one event of the plugins folder.
    pub async fn on_event(self: &Arc<Self>, event: FileEvent) {
        let path = event.path().to_path_buf();
        let is_wasm = path.extension().is_some_and(|e| e == "wasm");
        match (event, is_wasm) {
            (FileEvent::Ready(_), true) => self.file_ready(&path).await,
            (FileEvent::Removed(_), true) => self.file_removed(&Self::file_name(&path)).await,
            (FileEvent::Ready(_), false) => {
                // A sidecar changed: restart its handler with the new route.
                let wasm = path.with_extension("wasm");
                self.stop_plugin(&Self::file_name(&wasm), true).await;
                if wasm.exists() {
                    self.start_from_sidecar(&wasm).await;
                }
            }
            (FileEvent::Removed(_), false) => {
                let wasm = path.with_extension("wasm");
                self.stop_plugin(&Self::file_name(&wasm), true).await;
            }
        }
    }

    async fn file_ready(self: &Arc<Self>, path: &Path) {
        let plugin = Self::file_name(path);
        let bound: Vec<String> = lock(&self.handlers)
            .iter()
            .filter(|(_, r)| {
                r.route.plugin == plugin && r.handle.as_ref().is_some_and(|h| !h.is_stopped())
            })
            .map(|(n, _)| n.clone())
            .collect();
        if bound.is_empty() {
            // Not running: a configured route or a sidecar may bind it now.
            if let Some(route) = self.configured.iter().find(|r| r.plugin == plugin).cloned() {
                self.start(route).await;
            } else {
                self.start_from_sidecar(path).await;
            }
            return;
        }
        let compiled = self.engine.compile_file(path).await;
        let mut handlers = lock(&self.handlers);
        for name in bound {
            let Some(running) = handlers.get_mut(&name) else {
                continue;
            };
            match &compiled {
                Ok(new) => {
                    let Some(pool) = &running.pool else { continue };
                    if pool.current().sha256 == new.sha256 {
                        continue;
                    }
                    let old = pool.current().sha256.clone();
                    pool.replace(new.clone());
                    running.reloads += 1;
                    running.last_error = None;
                    tracing::info!(handler = %name, plugin = %plugin, from = %short(&old), to = %short(&new.sha256), "plugin reloaded: new version serves the next message");
                    for f in lock(&self.reload_listeners).iter() {
                        f(&name);
                    }
                }
                Err(e) => {
                    tracing::error!(handler = %name, plugin = %plugin, "reload refused, the previous version keeps serving: {e}");
                    running.last_error = Some(format!("reload refused: {e}"));
                }
            }
        }
    }

    async fn file_removed(self: &Arc<Self>, plugin: &str) {
        self.stop_plugin(plugin, false).await;
    }

    /// Stops the handlers bound to `plugin` (after their in-flight messages). With
    /// `sidecar_only`, only those bound by a sidecar.
    async fn stop_plugin(self: &Arc<Self>, plugin: &str, sidecar_only: bool) {
        let handles: Vec<(String, HandlerHandle)> = lock(&self.handlers)
            .iter()
            .filter(|(_, r)| r.route.plugin == plugin && (!sidecar_only || r.route.from_sidecar))
            .filter_map(|(n, r)| r.handle.clone().map(|h| (n.clone(), h)))
            .collect();
        for (name, h) in handles {
            if h.is_stopped() {
                continue;
            }
            let why = if sidecar_only {
                "sidecar changed or removed"
            } else {
                "plugin removed"
            };
            tracing::info!(handler = %name, plugin, "{why}: stopping after in-flight messages");
            h.stop();
            h.stopped().await;
            tracing::info!(handler = %name, "handler stopped");
        }
    }

    fn backend(&self, name: &str) -> Result<&Backend> {
        self.backends
            .get(name)
            .ok_or_else(|| Error::Config(format!("unknown pubsub {name:?}")))
    }

    async fn start(self: &Arc<Self>, route: HandlerRoute) {
        let name = route.name.clone();
        let result = self.try_start(&route).await;
        let mut handlers = lock(&self.handlers);
        let reloads = handlers.get(&name).map_or(0, |r| r.reloads);
        match result {
            Ok((handle, pool, middleware, wasm_middleware)) => {
                tracing::info!(handler = %name, plugin = %route.plugin, sha256 = %short(&pool.current().sha256), "handler loaded");
                handlers.insert(
                    name,
                    Running {
                        route,
                        handle: Some(handle),
                        pool: Some(pool),
                        middleware,
                        wasm_middleware,
                        last_error: None,
                        reloads,
                    },
                );
            }
            Err(e) => {
                tracing::error!(handler = %name, plugin = %route.plugin, "cannot start handler: {e}");
                handlers.insert(
                    name,
                    Running {
                        route,
                        handle: None,
                        pool: None,
                        middleware: Vec::new(),
                        wasm_middleware: Vec::new(),
                        last_error: Some(e.to_string()),
                        reloads,
                    },
                );
            }
        }
    }

    async fn try_start(
        &self,
        route: &HandlerRoute,
    ) -> Result<(
        HandlerHandle,
        Arc<InstancePool>,
        Vec<String>,
        Vec<(String, Arc<InstancePool>)>,
    )> {
        let plugin: Arc<CompiledPlugin> = self
            .engine
            .compile_file(&self.dir.join(&route.plugin))
            .await?;
        if plugin.info.world != crate::wasm::World::Handler {
            return Err(Error::Wasm {
                plugin: route.plugin.clone(),
                message: format!(
                    "implements {}, not a handler: use it as {{ wasm = \"{}\" }} middleware",
                    plugin.info.world, route.plugin
                ),
            });
        }
        let mut grants = Grants::default();
        for t in &route.allow_publish {
            grants
                .publish
                .insert(t.topic.clone(), self.backend(&t.pubsub)?.publisher.clone());
        }
        let pool = Arc::new(InstancePool::new(
            self.engine.clone(),
            plugin,
            route.limits,
            grants,
            route.concurrency,
        ));
        let sub = self.backend(&route.subscribe.pubsub)?.subscriber.clone();
        let mut spec = HandlerSpec::new(
            route.name.clone(),
            route.subscribe.topic.clone(),
            sub,
            Arc::new(WasmHandler::new(pool.clone())),
        )
        .concurrency(route.concurrency);
        if let Some(p) = &route.publish {
            spec = spec.publish_to(p.topic.clone(), self.backend(&p.pubsub)?.publisher.clone());
        }
        if let Some(k) = &route.order_key {
            spec = spec.order_key(k.clone());
        }
        let built = (self.middleware)(route)?;
        let names = built.chain.iter().map(|m| m.name().to_string()).collect();
        for m in built.chain {
            spec = spec.middleware(m);
        }
        let handle = self.router.add(spec)?;
        Ok((handle, pool, names, built.wasm))
    }

    /// What `GET /handlers` shows.
    pub fn infos(&self) -> Vec<HandlerInfo> {
        let handlers = lock(&self.handlers);
        let mut out: Vec<HandlerInfo> = handlers
            .iter()
            .map(|(name, r)| {
                let stats: StatsSnapshot = r
                    .handle
                    .as_ref()
                    .map(|h| h.stats().snapshot())
                    .unwrap_or_default();
                let current = r.pool.as_ref().map(|p| p.current());
                let state = match &r.handle {
                    Some(h) => h.state(),
                    None => HandlerState::Failed,
                };
                HandlerInfo {
                    name: name.clone(),
                    plugin: r.route.plugin.clone(),
                    sha256: current
                        .as_ref()
                        .map(|c| c.sha256.clone())
                        .unwrap_or_default(),
                    loaded_at: current.as_ref().map(|c| rfc3339(c.loaded_at)),
                    subscribe: r.route.subscribe.clone(),
                    publish: r.route.publish.clone(),
                    state,
                    counts: Counts {
                        processed: stats.processed,
                        failed: stats.failed,
                        retried: stats.retried,
                        poisoned: stats.poisoned,
                    },
                    last_error: r.last_error.clone().or(stats.last_error),
                    reloads: r.reloads,
                    fuel_consumed: r.pool.as_ref().map_or(0, |p| p.fuel_used()),
                    middleware: r.middleware.clone(),
                    sidecar: r.route.from_sidecar,
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}
