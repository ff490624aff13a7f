//! The middleware list of a handler, from its config entries.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::config::WasmMiddlewareEntry;
use crate::error::{Error, Result};
use crate::plugins::manager::BuiltMiddleware;
use crate::pubsub::registry::Backend;
use crate::router::BoxMiddleware;
use crate::wasm::{Grants, InstancePool, Limits, WasmEngine, WasmMiddleware};

/// Builds the middleware of one handler: built-in names or tables, and `{ wasm = "FILE" }`
/// components from the plugins folder.
pub fn build_middleware(
    entries: &[toml::Value],
    engine: &WasmEngine,
    backends: &HashMap<String, Backend>,
    plugins_dir: &Path,
    default_pubsub: &str,
    defaults: &Limits,
) -> Result<BuiltMiddleware> {
    let (entries, notes) = crate::router::middleware::normalize_order(entries);
    for note in notes {
        tracing::info!("{note}");
    }
    let publisher = |name: Option<&str>| {
        let name = name.unwrap_or(default_pubsub);
        backends
            .get(name)
            .map(|b| b.publisher.clone())
            .ok_or_else(|| Error::Config(format!("unknown pubsub {name:?}")))
    };
    let mut out = BuiltMiddleware::default();
    for entry in &entries {
        if let Some(wasm) = WasmMiddlewareEntry::parse(entry)? {
            let pool = Arc::new(wasm_middleware_pool(
                &wasm,
                engine,
                plugins_dir,
                default_pubsub,
                defaults,
                &publisher,
            )?);
            out.wasm.push((wasm.wasm.clone(), pool.clone()));
            out.chain
                .push(Arc::new(WasmMiddleware::new(pool)) as BoxMiddleware);
            continue;
        }
        out.chain
            .push(crate::router::middleware::from_config(entry, &publisher)?);
    }
    Ok(out)
}

/// The instance pool of a `{ wasm = "FILE" }` middleware: compiled from the plugins folder,
/// checked to be a middleware, with its own limits (else `defaults`) and grants.
fn wasm_middleware_pool(
    entry: &WasmMiddlewareEntry,
    engine: &WasmEngine,
    plugins_dir: &Path,
    default_pubsub: &str,
    defaults: &Limits,
    publisher: &dyn Fn(Option<&str>) -> Result<crate::pubsub::DynPublisher>,
) -> Result<InstancePool> {
    let file = &entry.wasm;
    let path = plugins_dir.join(file);
    let path = crate::plugins::confine::confined(plugins_dir, &path)
        .map_err(|e| Error::Config(format!("middleware {{ wasm = {file:?} }}: {e}")))?;
    let bytes = std::fs::read(&path).map_err(|e| {
        Error::Config(format!(
            "middleware {{ wasm = {file:?} }}: cannot read {}: {e}",
            path.display()
        ))
    })?;
    let plugin = engine.compile_blocking(file, &bytes)?;
    if plugin.info.world != crate::wasm::World::Middleware {
        return Err(Error::Config(format!(
            "middleware {{ wasm = {file:?} }}: implements {}, not wasmill:plugin/middleware",
            plugin.info.world
        )));
    }
    let limits = Limits {
        fuel: entry.fuel.unwrap_or(defaults.fuel),
        timeout: entry.timeout.unwrap_or(defaults.timeout),
        memory: entry.memory.unwrap_or(defaults.memory),
        ..*defaults
    };
    let mut grants = Grants::default();
    for t in &entry.allow_publish {
        let (pubsub, topic) = t.resolve(default_pubsub);
        grants.publish.insert(topic, publisher(Some(&pubsub))?);
    }
    Ok(InstancePool::new(engine.clone(), plugin, limits, grants, 4))
}

/// The failure policy's middleware for `route` (outermost, before the rest of its chain), or
/// none when the route has no policy (its chain lists its own `retry` or `poison_queue`).
pub fn failure_middleware(
    route: &crate::plugins::manager::HandlerRoute,
    backends: &HashMap<String, Backend>,
) -> Result<Vec<BoxMiddleware>> {
    let Some(policy) = &route.on_failure else {
        return Ok(Vec::new());
    };
    let pubsub = policy
        .poison_pubsub
        .as_deref()
        .unwrap_or(&route.subscribe.pubsub);
    let poison = backends.get(pubsub).map(|b| b.publisher.clone());
    policy
        .middleware(&route.subscribe.topic, poison)
        .map_err(|e| Error::Config(format!("handler {}: {e}", route.name)))
}
