//! The one wasmtime engine of a host: compiler settings, the linkers of both worlds (built
//! once), and the epoch ticker that turns per-message deadlines into interrupts.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine};

use super::bindings::{handler, handler2, middleware, middleware2};
use super::cache::CompileCache;
use super::state::PluginState;
use crate::error::{Error, Result};

/// How often the epoch advances; a deadline is rounded up to whole ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Engine settings.
#[derive(Debug, Clone, Default)]
pub struct EngineConfig {
    /// The folder of the compile cache ([`super::cache`]), created `0700` if missing; `None`
    /// disables the cache. [`super::cache::resolve_dir`] picks it and keeps it out of the
    /// plugins folder.
    pub cache_dir: Option<PathBuf>,
}

/// The shared engine; cheap to clone.
#[derive(Clone)]
pub struct WasmEngine {
    pub(crate) inner: Arc<EngineInner>,
}

pub(crate) struct EngineInner {
    pub(crate) engine: Engine,
    pub(crate) handler_linker: Linker<PluginState>,
    /// The handler world without a fiber, for handlers whose imports never wait
    /// (`sync_io`).
    pub(crate) handler_sync_linker: Linker<PluginState>,
    pub(crate) middleware_linker: Linker<PluginState>,
    /// 0.2.0's middleware world (its `next` has another type than 0.1.0's).
    pub(crate) middleware2_linker: Linker<PluginState>,
    pub(crate) cache: Option<CompileCache>,
    stop: Arc<AtomicBool>,
}

impl Drop for EngineInner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn wasm_err(e: impl std::fmt::Display) -> Error {
    Error::Wasm {
        plugin: "engine".into(),
        message: e.to_string(),
    }
}

impl WasmEngine {
    /// An engine with fuel metering and epoch interruption on, and WASI (nothing granted)
    /// plus `wasmill:plugin/host` linked for both worlds.
    pub fn new(config: EngineConfig) -> Result<Self> {
        let mut cfg = Config::new();
        cfg.wasm_component_model(true);
        cfg.consume_fuel(true);
        cfg.epoch_interruption(true);
        let engine = Engine::new(&cfg).map_err(wasm_err)?;

        let mut handler_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut handler_linker).map_err(wasm_err)?;
        handler::Handler::add_to_linker::<_, HasSelf<_>>(&mut handler_linker, |s| s)
            .map_err(wasm_err)?;
        // Both versions' interfaces in one linker: their names carry the version.
        handler2::Handler::add_to_linker::<_, HasSelf<_>>(&mut handler_linker, |s| s)
            .map_err(wasm_err)?;
        let handler_sync_linker = super::sync_io::handler_linker(&engine).map_err(wasm_err)?;
        let mut middleware_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut middleware_linker).map_err(wasm_err)?;
        middleware::Middleware::add_to_linker::<_, HasSelf<_>>(&mut middleware_linker, |s| s)
            .map_err(wasm_err)?;
        let mut middleware2_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut middleware2_linker).map_err(wasm_err)?;
        middleware2::Middleware::add_to_linker::<_, HasSelf<_>>(&mut middleware2_linker, |s| s)
            .map_err(wasm_err)?;

        let stop = Arc::new(AtomicBool::new(false));
        let ticker_engine = engine.weak();
        let ticker_stop = stop.clone();
        std::thread::Builder::new()
            .name("wasmill-epoch".into())
            .spawn(move || {
                while !ticker_stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match ticker_engine.upgrade() {
                        Some(e) => e.increment_epoch(),
                        None => return,
                    }
                }
            })
            .map_err(|e| Error::io("spawn the epoch ticker thread", e))?;

        let cache = match &config.cache_dir {
            Some(dir) => Some(CompileCache::open(dir, &engine)?),
            None => None,
        };
        Ok(WasmEngine {
            inner: Arc::new(EngineInner {
                engine,
                handler_linker,
                handler_sync_linker,
                middleware_linker,
                middleware2_linker,
                cache,
                stop,
            }),
        })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The compile cache, when on.
    pub fn cache(&self) -> Option<&CompileCache> {
        self.inner.cache.as_ref()
    }
}

/// Epoch ticks for a wall-clock `timeout` (at least one).
pub fn ticks_for(timeout: Duration) -> u64 {
    (timeout.as_nanos().div_ceil(EPOCH_TICK.as_nanos())).max(1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_round_up() {
        assert_eq!(ticks_for(Duration::from_millis(1)), 1);
        assert_eq!(ticks_for(Duration::from_millis(5)), 1);
        assert_eq!(ticks_for(Duration::from_millis(6)), 2);
        assert_eq!(ticks_for(Duration::from_secs(1)), 200);
    }
}
