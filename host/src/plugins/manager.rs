//! The plugins folder's handlers: who owns which handler name, and starting and stopping them.
//!
//! Reload is the only code path (Vector's topology controller): every file event goes through
//! [`PluginManager::on_event`] (see `reload`), which compiles and checks a file off the message
//! path and then swaps the version behind a running handler's (or `{ wasm }` middleware's)
//! instance pool, starts a handler, or stops one.
//!
//! **One file owns a handler name at a time.** A route (from the config or a sidecar) claims
//! its name before it starts; a route naming a handler that another file owns is refused
//! without touching the owner, logged, and listed in `GET /handlers` as a separate `failed`
//! entry of its own file. Removing the refused file removes that entry and changes nothing for
//! the owner. When the owner's name is freed (its plugin or sidecar removed), the refused
//! files are offered the name again, in their own event queues.
//!
//! **Deleting a plugin** stops its handlers after their in-flight messages; a sidecar-bound
//! handler then leaves `GET /handlers`, a configured one stays as `stopped` (the config still
//! declares it) and starts again when its file comes back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use futures::StreamExt;
use serde::Serialize;
use tokio::sync::mpsc;

use super::watch::FileEvent;
use crate::error::{Error, Result};
use crate::pubsub::registry::Backend;
use crate::router::{
    BoxHandler, BoxMiddleware, Deferred, DeferredSlot, HandlerHandle, HandlerSpec, HandlerState,
    Router, apply_middleware, deferred,
};
use crate::wasm::{CompiledPlugin, Grants, InstancePool, Limits, WasmEngine, WasmHandler, World};

pub use super::info::{Counts, HandlerInfo, MiddlewareVersion};

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
    /// Messages per guest call (`handle-batch`); the router keeps at least this many in flight.
    pub batch: usize,
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
    /// The failure policy wrapped around the chain, unless the chain handles failures itself.
    pub on_failure: Option<crate::router::middleware::FailurePolicy>,
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

/// A `{ wasm }` middleware of a handler's chain: its file, its pool and its reload record.
pub(super) struct MiddlewareSlot {
    pub(super) file: String,
    pub(super) pool: Arc<InstancePool>,
    pub(super) reloads: u64,
    /// Why the last new version of the file was refused (cleared by a good one).
    pub(super) error: Option<String>,
}

/// A handler name and the route (and so the file) that owns it.
pub(super) struct Entry {
    pub(super) route: HandlerRoute,
    pub(super) handle: Option<HandlerHandle>,
    pub(super) pool: Option<Arc<InstancePool>>,
    pub(super) middleware: Vec<String>,
    pub(super) wasm_middleware: Vec<MiddlewareSlot>,
    /// A failed start, or the last refused version of the handler's own file.
    pub(super) last_error: Option<String>,
    pub(super) reloads: u64,
    /// The state shown while there is no router handler: `Pending`, `Failed` or `Stopped`.
    pub(super) idle: HandlerState,
    /// Subscribed, its plugin still compiling: messages wait in the subscription.
    pub(super) compiling: bool,
}

impl Entry {
    /// Whether a router handler runs (or is stopping) for it.
    pub(super) fn is_live(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| !h.is_stopped())
    }
}

/// A route refused because another file owns its handler name.
pub(super) struct Refused {
    pub(super) route: HandlerRoute,
    pub(super) error: String,
}

/// The manager's record of handler names.
#[derive(Default)]
pub(super) struct Handlers {
    /// By handler name: the owner of each name.
    pub(super) entries: HashMap<String, Entry>,
    /// Routes refused because their name is owned by another file.
    pub(super) refused: Vec<Refused>,
}

/// Owns the WASM handlers of a running host.
pub struct PluginManager {
    pub(super) engine: WasmEngine,
    router: Router,
    backends: HashMap<String, Backend>,
    pub(super) dir: PathBuf,
    pub(super) configured: Vec<HandlerRoute>,
    middleware: MiddlewareFactory,
    sidecar: SidecarReader,
    pub(super) state: Mutex<Handlers>,
    pub(super) reload_listeners: Mutex<Vec<ReloadListener>>,
    /// Feeds events back into the per-file queues (set by [`PluginManager::watch`]).
    pub(super) requeue: OnceLock<mpsc::UnboundedSender<FileEvent>>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The file name of `path` (`x.wasm`).
pub(super) fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The first 12 hex digits of a sha256, for logs.
pub(super) fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// A route's handler subscribed, waiting for its chain.
struct Subscribed {
    handle: HandlerHandle,
    slot: DeferredSlot,
}

/// What loaded for a route: its plugin's pool and the chain around it.
struct Loaded {
    chain: BoxHandler,
    pool: Arc<InstancePool>,
    middleware: Vec<String>,
    wasm_middleware: Vec<(String, Arc<InstancePool>)>,
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
            state: Mutex::new(Handlers::default()),
            reload_listeners: Mutex::new(Vec::new()),
            requeue: OnceLock::new(),
        })
    }

    /// Calls `f(handler_name)` after every successful version swap (metrics).
    pub fn on_reload(&self, f: ReloadListener) {
        lock(&self.reload_listeners).push(f);
    }

    /// Every configured handler and every plugin in the folder that has a sidecar, in the
    /// order they claim their names: configured handlers first; among sidecars, a file named
    /// after its handler (`uppercase.wasm` for `uppercase`) before one that borrows the name.
    fn initial_routes(&self) -> Vec<HandlerRoute> {
        let mut routes = self.configured.clone();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort();
        let mut sidecars: Vec<HandlerRoute> = files
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
            .filter_map(|wasm| self.read_sidecar(wasm))
            .collect();
        sidecars.sort_by_key(|r| Path::new(&r.plugin).file_stem() != Some(r.name.as_ref()));
        routes.extend(sidecars);
        routes
    }

    /// Starts every handler of [`Self::initial_routes`] and waits until each is loaded.
    pub async fn start_all(self: &Arc<Self>) {
        let loading = self.subscribe_all().await;
        loading.await;
    }

    /// Subscribes every handler of [`Self::initial_routes`] (each claims its name, subscribes
    /// its topic and is listed as compiling) and returns the work that compiles their plugins,
    /// as many at once as the machine has cores. A message published from now on waits in its
    /// handler's subscription until the plugin is loaded, so the host can answer on HTTP while
    /// large components compile (`GET /readyz` names them).
    pub async fn subscribe_all(
        self: &Arc<Self>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut subscribed = Vec::new();
        for route in self.initial_routes() {
            if let Some(s) = self.subscribe(&route) {
                subscribed.push((route, s));
            }
        }
        for (_, s) in &subscribed {
            s.handle.started().await;
        }
        // The smallest files first: they compile fastest and serve while the large ones compile.
        subscribed.sort_by_key(|(route, _)| {
            std::fs::metadata(self.dir.join(&route.plugin)).map_or(u64::MAX, |m| m.len())
        });
        let manager = self.clone();
        let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
        async move {
            futures::stream::iter(subscribed)
                .for_each_concurrent(parallel, |(route, s)| {
                    let manager = manager.clone();
                    async move { manager.load(route, s).await }
                })
                .await;
        }
    }

    /// The route of `wasm`'s sidecar, if it has one and the config does not bind the file.
    pub(super) fn read_sidecar(&self, wasm: &Path) -> Option<HandlerRoute> {
        let sidecar = wasm.with_extension("toml");
        let plugin = file_name(wasm);
        if !sidecar.exists() || self.configured.iter().any(|r| r.plugin == plugin) {
            return None;
        }
        match (self.sidecar)(&sidecar, wasm) {
            Ok(route) => Some(route),
            Err(e) => {
                tracing::error!(sidecar = %sidecar.display(), "invalid sidecar: {e}");
                None
            }
        }
    }

    /// Reads `sidecar` (of `wasm`) into a route.
    pub(super) fn parse_sidecar(&self, sidecar: &Path, wasm: &Path) -> Result<HandlerRoute> {
        (self.sidecar)(sidecar, wasm)
    }

    fn backend(&self, name: &str) -> Result<&Backend> {
        self.backends
            .get(name)
            .ok_or_else(|| Error::Config(format!("unknown pubsub {name:?}")))
    }

    /// Claims the route's handler name for its file and starts the handler. A name owned by
    /// another file is refused (the owner is not touched).
    pub(super) async fn start(self: &Arc<Self>, route: HandlerRoute) {
        if let Some(s) = self.subscribe(&route) {
            self.load(route, s).await;
        }
    }

    /// Claims the route's handler name for its file and subscribes a handler whose chain comes
    /// when [`Self::load`] has compiled the plugin. `None` when the name is not claimed (owned
    /// by another file, already running) or the subscription could not be added.
    fn subscribe(self: &Arc<Self>, route: &HandlerRoute) -> Option<Subscribed> {
        let name = route.name.clone();
        let mut guard = lock(&self.state);
        {
            let st = &mut *guard;
            st.refused
                .retain(|r| !(r.route.plugin == route.plugin && r.route.name == name));
            match st.entries.get_mut(&name) {
                Some(owner) if owner.route.plugin != route.plugin => {
                    let by = if route.from_sidecar {
                        format!(
                            "sidecar {}",
                            Path::new(&route.plugin).with_extension("toml").display()
                        )
                    } else {
                        "the config".to_string()
                    };
                    let error = format!(
                        "handler {name:?} already runs {}: {} (from {by}) refused",
                        owner.route.plugin, route.plugin
                    );
                    tracing::error!(handler = %name, plugin = %route.plugin, owner = %owner.route.plugin, "handler name taken, refused; the owner is not touched: {error}");
                    st.refused.push(Refused {
                        route: route.clone(),
                        error,
                    });
                    return None;
                }
                Some(e)
                    if e.is_live() || (e.handle.is_none() && e.idle == HandlerState::Pending) =>
                {
                    tracing::warn!(handler = %name, plugin = %route.plugin, "already running or starting; not started again");
                    return None;
                }
                Some(e) => {
                    e.route = route.clone();
                    e.idle = HandlerState::Pending;
                    e.handle = None;
                    e.last_error = None;
                }
                None => {
                    st.entries.insert(
                        name.clone(),
                        Entry {
                            route: route.clone(),
                            handle: None,
                            pool: None,
                            middleware: Vec::new(),
                            wasm_middleware: Vec::new(),
                            last_error: None,
                            reloads: 0,
                            idle: HandlerState::Pending,
                            compiling: false,
                        },
                    );
                }
            }
        }
        let (handler, slot) = deferred();
        let subscribed = self
            .subscription(route, handler)
            .map(|handle| Subscribed { handle, slot });
        let e = guard.entries.get_mut(&name)?;
        match subscribed {
            Ok(s) => {
                e.handle = Some(s.handle.clone());
                e.compiling = true;
                Some(s)
            }
            Err(err) => {
                tracing::error!(handler = %name, plugin = %route.plugin, "cannot subscribe handler: {err}");
                e.idle = HandlerState::Failed;
                e.last_error = Some(err.to_string());
                None
            }
        }
    }

    /// Compiles the route's plugin and its middleware and puts the chain behind the
    /// subscription; on failure the subscription stops (its waiting messages are nacked, back
    /// to the broker) and the handler is listed as failed with the reason.
    async fn load(self: &Arc<Self>, route: HandlerRoute, subscribed: Subscribed) {
        let name = route.name.clone();
        let Subscribed { handle, slot } = subscribed;
        let result = self.try_load(&route).await.map_err(|e| e.to_string());
        match &result {
            Ok(l) => slot.fill(l.chain.clone()),
            Err(_) => {
                slot.fail(format!(
                    "handler {name:?}: plugin {} did not load",
                    route.plugin
                ));
                handle.stop();
                handle.stopped().await;
            }
        }
        let mut st = lock(&self.state);
        let Some(e) = st
            .entries
            .get_mut(&name)
            .filter(|e| e.route.plugin == route.plugin)
        else {
            // Released while starting (cannot happen while a file's events run in order).
            handle.stop();
            return;
        };
        e.compiling = false;
        match result {
            Ok(s) => {
                tracing::info!(handler = %name, plugin = %route.plugin, sha256 = %short(&s.pool.current().sha256), "handler loaded");
                e.pool = Some(s.pool);
                e.middleware = s.middleware;
                e.wasm_middleware = s
                    .wasm_middleware
                    .into_iter()
                    .map(|(file, pool)| MiddlewareSlot {
                        file,
                        pool,
                        reloads: 0,
                        error: None,
                    })
                    .collect();
            }
            Err(reason) => {
                tracing::error!(handler = %name, plugin = %route.plugin, "cannot start handler: {reason}");
                e.handle = None;
                e.idle = HandlerState::Failed;
                e.pool = None;
                e.middleware = Vec::new();
                e.wasm_middleware = Vec::new();
                e.last_error = Some(reason);
            }
        }
    }

    /// A router handler for `route` running `handler` (no middleware: the chain is inside).
    fn subscription(&self, route: &HandlerRoute, handler: Deferred) -> Result<HandlerHandle> {
        let sub = self.backend(&route.subscribe.pubsub)?.subscriber.clone();
        let mut spec = HandlerSpec::new(
            route.name.clone(),
            route.subscribe.topic.clone(),
            sub,
            Arc::new(handler),
        )
        .concurrency(route.concurrency)
        .batch(route.batch);
        if let Some(p) = &route.publish {
            spec = spec.publish_to(p.topic.clone(), self.backend(&p.pubsub)?.publisher.clone());
        }
        if let Some(k) = &route.order_key {
            spec = spec.order_key(k.clone());
        }
        self.router.add(spec)
    }

    async fn try_load(&self, route: &HandlerRoute) -> Result<Loaded> {
        let plugin: Arc<CompiledPlugin> = self
            .engine
            .compile_file(&super::confine::confined(
                &self.dir,
                &self.dir.join(&route.plugin),
            )?)
            .await?;
        if plugin.info.world != World::Handler {
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
        if route.batch > 1 && !pool.supports_batch() {
            tracing::warn!(
                handler = %route.name,
                plugin = %route.plugin,
                "batch = {}: the plugin exports no handle-batch (a wasmill:plugin@0.1.0 \
                 handler); it is called once per message of each batch",
                route.batch
            );
        }
        // Building compiles the `{ wasm }` middleware: off the async threads.
        let built = {
            let factory = self.middleware.clone();
            let r = route.clone();
            tokio::task::spawn_blocking(move || factory(&r))
                .await
                .map_err(|e| {
                    Error::Other(format!(
                        "build the middleware of handler {:?}: {e}",
                        route.name
                    ))
                })??
        };
        let names = built.chain.iter().map(|m| m.name().to_string()).collect();
        let handler: BoxHandler = Arc::new(WasmHandler::new(pool.clone()));
        Ok(Loaded {
            chain: apply_middleware(handler, &built.chain),
            pool,
            middleware: names,
            wasm_middleware: built.wasm,
        })
    }

    /// Stops the handlers bound to `plugin` (all at once, each after its in-flight messages),
    /// with `sidecar_only` only those bound by a sidecar. Sidecar-bound ones are then removed,
    /// configured ones stay as `stopped`. Files refused a name freed here get it offered again.
    pub(super) async fn release(&self, plugin: &str, sidecar_only: bool, why: &str) {
        let (names, handles) = {
            let st = lock(&self.state);
            let bound: Vec<&Entry> = st
                .entries
                .values()
                .filter(|e| e.route.plugin == plugin && (!sidecar_only || e.route.from_sidecar))
                .collect();
            let names: Vec<String> = bound.iter().map(|e| e.route.name.clone()).collect();
            let handles: Vec<HandlerHandle> = bound
                .iter()
                .filter(|e| e.is_live())
                .filter_map(|e| e.handle.clone())
                .collect();
            (names, handles)
        };
        futures::future::join_all(handles.iter().map(|h| async move {
            tracing::info!(handler = %h.name(), plugin, "{why}: stopping after in-flight messages");
            h.stop();
            h.stopped().await;
            tracing::info!(handler = %h.name(), plugin, "handler stopped");
        }))
        .await;
        let offer: Vec<String> = {
            let mut st = lock(&self.state);
            st.refused
                .retain(|r| !(r.route.plugin == plugin && (!sidecar_only || r.route.from_sidecar)));
            let mut freed = Vec::new();
            for name in names {
                let Some(e) = st
                    .entries
                    .get_mut(&name)
                    .filter(|e| e.route.plugin == plugin)
                else {
                    continue;
                };
                if e.route.from_sidecar {
                    st.entries.remove(&name);
                    freed.push(name);
                } else if e.handle.is_none() {
                    e.idle = HandlerState::Stopped;
                }
            }
            st.refused
                .iter()
                .filter(|r| freed.contains(&r.route.name))
                .map(|r| r.route.plugin.clone())
                .collect()
        };
        for file in offer {
            tracing::info!(plugin = %file, "handler name freed: trying the refused file again");
            if let Some(tx) = self.requeue.get() {
                let _ = tx.send(FileEvent::Ready(self.dir.join(file)));
            }
        }
    }
}
