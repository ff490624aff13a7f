//! `wasmill run`: the config, the backends, the router, the plugins folder and the HTTP API
//! wired together, until a shutdown signal closes them gracefully.

pub mod check;
#[cfg(test)]
mod check_props;
mod components;
mod middleware;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::components::poison_keeper::PoisonKeeper;
use crate::components::reply::Reply;
use crate::config::{Config, HandlerConfig, TopicSpec};
use crate::error::{Error, Result};
use crate::plugins::manager::{HandlerRoute, PluginManager, TopicRef};
use crate::pubsub::registry::{self, Backend};
use crate::router::middleware::failure_policy::has_own_failure_handling;
use crate::router::{BoxMiddleware, Router, RouterConfig};
use crate::wasm::{EngineConfig, Limits, WasmEngine};

pub use check::{CheckReport, check_config};
pub use middleware::{build_middleware, failure_middleware};

/// Options of `wasmill run` that override the config file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The config file; `./wasmill.toml` when present, else none.
    pub config: Option<PathBuf>,
    /// The plugins folder.
    pub plugins_dir: Option<PathBuf>,
    /// The HTTP listen address (`127.0.0.1:0` picks a free port).
    pub http: Option<String>,
}

/// Loads the config the way `wasmill run` does.
pub fn load_config(path: Option<&Path>) -> Result<Config> {
    let default = Path::new("wasmill.toml");
    match path {
        Some(p) => Config::load(p),
        None if default.exists() => Config::load(default),
        None => Ok(Config {
            base_dir: PathBuf::from("."),
            file: "(no config)".into(),
            ..Config::default()
        }),
    }
}

/// Connects every configured backend, plus `memory` unless the config redefines it.
pub async fn connect_backends(cfg: &Config) -> Result<HashMap<String, Backend>> {
    let mut backends = HashMap::new();
    if !cfg.pubsub.contains_key("memory") {
        backends.insert(
            "memory".to_string(),
            registry::connect("memory", "memory", &toml::Table::new()).await?,
        );
    }
    for (name, entry) in &cfg.pubsub {
        let backend = registry::connect(name, &entry.kind, &entry.settings)
            .await
            .map_err(|e| Error::Config(format!("{}: {e}", cfg.file)))?;
        tracing::info!(pubsub = %name, kind = %entry.kind, "pub/sub connected");
        backends.insert(name.clone(), backend);
    }
    Ok(backends)
}

fn topic_ref(spec: &TopicSpec, default: &str) -> TopicRef {
    let (pubsub, topic) = spec.resolve(default);
    TopicRef { pubsub, topic }
}

/// The route of a `[[handlers]]` entry or a sidecar, with `[defaults]` applied.
pub fn route_for(cfg: &Config, h: &HandlerConfig, from_sidecar: bool) -> HandlerRoute {
    let d = &cfg.defaults;
    let default = &cfg.host.default_pubsub;
    let mut middleware = d.middleware.clone();
    middleware.extend(h.middleware.iter().cloned());
    HandlerRoute {
        name: h.name.clone().unwrap_or_default(),
        plugin: h.plugin.clone().unwrap_or_default(),
        subscribe: topic_ref(&h.subscribe, default),
        publish: h.publish.as_ref().map(|p| topic_ref(p, default)),
        concurrency: h.concurrency.max(1),
        batch: h.batch.max(1),
        order_key: h.order_key.clone(),
        limits: Limits {
            fuel: h.fuel.unwrap_or(d.fuel),
            timeout: h.timeout.unwrap_or(d.timeout),
            memory: h.memory.unwrap_or(d.memory),
            max_output_bytes: d.max_output_bytes,
            max_output_messages: d.max_output_messages,
        },
        allow_publish: h
            .allow_publish
            .iter()
            .map(|t| topic_ref(t, default))
            .collect(),
        on_failure: (!has_own_failure_handling(&middleware)).then(|| {
            let mut policy = h.on_failure.clone().unwrap_or_else(|| d.on_failure.clone());
            // A source (a binlog) takes no messages: its handlers' poison queue goes to the
            // default pub/sub (or memory), unless the policy names one.
            let subscribed = topic_ref(&h.subscribe, default).pubsub;
            if policy.poison_pubsub.is_none() && is_source(cfg, &subscribed) {
                let fallback = if is_source(cfg, default) {
                    "memory"
                } else {
                    default
                };
                policy.poison_pubsub = Some(fallback.to_string());
            }
            policy
        }),
        middleware,
        from_sidecar,
    }
}

/// Whether the backend `pubsub` of `cfg` is a source that cannot be published to.
fn is_source(cfg: &Config, pubsub: &str) -> bool {
    cfg.pubsub
        .get(pubsub)
        .is_some_and(|p| crate::pubsub::registry::SOURCES.contains(&p.kind.as_str()))
}

/// Checks `cfg` with the plugins folder `plugins_dir` (`wasmill run` before it serves,
/// `wasmill check --config`): every problem is in the report. Compiles through the compile
/// cache the host uses.
pub async fn check_setup(cfg: &Config, plugins_dir: &Path) -> Result<CheckReport> {
    let cache_dir = crate::wasm::cache::resolve_dir(cfg.cache_dir(), plugins_dir)?;
    let engine = WasmEngine::new(EngineConfig { cache_dir })?;
    Ok(check_config(cfg, plugins_dir, &engine).await)
}

/// The middleware the host puts outside a handler's own chain: the failure policy's poison
/// queue, the request-reply middleware, the policy's retry (so a retried request answers once,
/// with its last attempt). The poison topic is kept for replay from when the handler starts.
fn outer_middleware(
    route: &HandlerRoute,
    backends: &HashMap<String, Backend>,
    poison: &Arc<PoisonKeeper>,
) -> Result<Vec<BoxMiddleware>> {
    let mut chain = failure_middleware(route, backends)?;
    let poison_topic = route
        .on_failure
        .as_ref()
        .and_then(|p| Some((p, p.poison_topic_for(&route.subscribe.topic)?)));
    if let Some((policy, topic)) = &poison_topic {
        let pubsub = policy
            .poison_pubsub
            .as_deref()
            .unwrap_or(&route.subscribe.pubsub);
        if let Some(b) = backends.get(pubsub) {
            poison.watch(b, topic);
        }
    }
    // The policy's chain starts with its poison queue when it poisons.
    let at = usize::from(poison_topic.is_some()).min(chain.len());
    if let Some(b) = backends.get(&route.subscribe.pubsub) {
        chain.insert(at, Arc::new(Reply::new(b.publisher.clone())));
    }
    Ok(chain)
}

fn listener_is_loopback(addr: &std::net::SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// Runs the host until `shutdown` resolves, then closes it gracefully (in-flight messages
/// finish within `close_timeout`).
pub async fn run(
    options: RunOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let cfg = Arc::new(load_config(options.config.as_deref())?);
    let plugins_dir = options
        .plugins_dir
        .clone()
        .unwrap_or_else(|| cfg.plugins_dir());
    if !plugins_dir.exists() {
        std::fs::create_dir_all(&plugins_dir).map_err(|e| {
            Error::io(
                format!("create plugins folder {}", plugins_dir.display()),
                e,
            )
        })?;
    }
    // The configuration is checked before anything connects, subscribes or listens; the
    // components compile behind their subscriptions (below), a failed one listed in /readyz.
    let report = check::check_static(&cfg, &plugins_dir).into_result()?;
    tracing::info!("{}", report.summary(&cfg.file));
    let mut backends = connect_backends(&cfg).await?;
    let fanned = components::fan_outs(&cfg, &mut backends)?;
    let cache_dir = crate::wasm::cache::resolve_dir(cfg.cache_dir(), &plugins_dir)?;
    let engine = WasmEngine::new(EngineConfig { cache_dir })?;
    let router = Router::new(RouterConfig {
        close_timeout: cfg.host.close_timeout,
    });

    let configured: Vec<HandlerRoute> = cfg
        .handlers
        .iter()
        .map(|h| route_for(&cfg, h, false))
        .collect();
    let poison = PoisonKeeper::new(crate::components::poison_keeper::DEFAULT_CAPACITY);
    let mw_factory = {
        let engine = engine.clone();
        let backends = backends.clone();
        let poison = poison.clone();
        let dir = plugins_dir.clone();
        let default = cfg.host.default_pubsub.clone();
        let limits = Limits {
            fuel: cfg.defaults.fuel,
            timeout: cfg.defaults.timeout,
            memory: cfg.defaults.memory,
            max_output_bytes: cfg.defaults.max_output_bytes,
            max_output_messages: cfg.defaults.max_output_messages,
        };
        Arc::new(move |route: &HandlerRoute| {
            let mut built = build_middleware(
                &route.middleware,
                &engine,
                &backends,
                &dir,
                &default,
                &limits,
            )?;
            built
                .chain
                .splice(0..0, outer_middleware(route, &backends, &poison)?);
            Ok(built)
        })
    };
    let sidecar_reader = {
        let cfg = cfg.clone();
        let dir = plugins_dir.clone();
        Arc::new(move |sidecar: &Path, wasm: &Path| {
            let h = HandlerConfig::from_sidecar(sidecar, wasm)?;
            check::check_sidecar(&cfg, &dir, sidecar, &h)?;
            Ok(route_for(&cfg, &h, true))
        })
    };
    let manager = PluginManager::new(
        engine,
        router.clone(),
        backends.clone(),
        plugins_dir.clone(),
        configured,
        mw_factory,
        sidecar_reader,
    );
    let addr = options
        .http
        .clone()
        .unwrap_or_else(|| cfg.host.http.clone());
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| Error::io(format!("listen on {addr}"), e))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::io("read the listen address", e))?;
    // Watched from now, so no change made while the plugins compile is missed; the events wait
    // in the channel until the first load is done.
    let events = crate::plugins::watch::watch(&plugins_dir, Duration::from_millis(300))?;

    // The router runs first, so each handler subscribes as it is added: a message published
    // from here on waits in its handler's subscription while the plugin compiles.
    let router_task = {
        let router = router.clone();
        tokio::spawn(async move { router.run_until(shutdown).await })
    };
    router.running().await;
    let loading = manager.subscribe_all().await;
    {
        let manager = manager.clone();
        let dir = plugins_dir.clone();
        tokio::spawn(async move {
            loading.await;
            manager.watch(events);
            tracing::info!(plugins = %dir.display(), "plugins loaded; watching the plugins folder");
        });
    }
    let components_stop = tokio_util::sync::CancellationToken::new();
    let components = match components::start(&cfg, &backends, &fanned, &components_stop).await {
        Ok(c) => c,
        Err(e) => {
            let _ = router.close().await;
            return Err(e);
        }
    };

    tracing::info!("HTTP API listening on http://{local}");
    let host = &cfg.host;
    let access = crate::http::Access {
        token: host.effective_token(),
        allowed_origins: host.allowed_origins.clone(),
        allowed_hosts: host.allowed_hosts.clone(),
    };
    if access.token.is_none() && !listener_is_loopback(&local) {
        tracing::warn!(
            "the HTTP API listens on {local} without a token: anyone who can reach it may \
             publish and read; set [host] token or WASMILL_TOKEN"
        );
    }
    let state = crate::http::ApiState {
        backends: Arc::new(backends),
        default_pubsub: host.default_pubsub.clone(),
        plugins: Some(manager),
        router: router.clone(),
        max_body: 16 << 20,
        access: Arc::new(access),
        poison,
        limits: crate::http::ConnLimits {
            max_connections: crate::http::conn::fit_descriptor_limit(host.max_connections),
            header_timeout: host.header_timeout,
            body_timeout: host.body_timeout,
        },
    };
    let http_stop = tokio_util::sync::CancellationToken::new();
    let http = {
        let stop = http_stop.clone();
        tokio::spawn(async move {
            if let Err(e) =
                crate::http::serve(listener, state, async move { stop.cancelled().await }).await
            {
                tracing::error!("HTTP API: {e}");
            }
        })
    };

    let result = router_task
        .await
        .unwrap_or_else(|e| Err(Error::Other(format!("the router task failed: {e}"))));
    components_stop.cancel();
    components.join_all().await;
    http_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), http).await;
    result
}
