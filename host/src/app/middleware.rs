//! The middleware list of a handler, from its config entries.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

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
) -> Result<BuiltMiddleware> {
    let (entries, notes) = crate::router::middleware::normalize_order(entries);
    for note in notes {
        tracing::info!("{note}");
    }
    let mut out = BuiltMiddleware::default();
    for entry in &entries {
        if let Some(file) = entry.get("wasm").and_then(|v| v.as_str()) {
            let bytes = std::fs::read(plugins_dir.join(file)).map_err(|e| {
                Error::Config(format!(
                    "middleware {{ wasm = {file:?} }}: cannot read {}: {e}",
                    plugins_dir.join(file).display()
                ))
            })?;
            let plugin = engine.compile_blocking(file, &bytes)?;
            if plugin.info.world != crate::wasm::World::Middleware {
                return Err(Error::Config(format!(
                    "middleware {{ wasm = {file:?} }}: implements {}, not wasmill:plugin/middleware",
                    plugin.info.world
                )));
            }
            let pool = InstancePool::new(
                engine.clone(),
                plugin,
                Limits::default(),
                Grants::default(),
                4,
            );
            let pool = Arc::new(pool);
            out.wasm.push((file.to_string(), pool.clone()));
            out.chain
                .push(Arc::new(WasmMiddleware::new(pool)) as BoxMiddleware);
            continue;
        }
        out.chain.push(crate::router::middleware::from_config(
            entry,
            &|name: Option<&str>| {
                let name = name.unwrap_or(default_pubsub);
                backends
                    .get(name)
                    .map(|b| b.publisher.clone())
                    .ok_or_else(|| Error::Config(format!("unknown pubsub {name:?}")))
            },
        )?);
    }
    Ok(out)
}
