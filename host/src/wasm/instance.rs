//! Running a plugin: a pool of instances per subscriber, each with its own store, and the
//! mapping of every way a call can fail to a [`HandlerError`] with a clear reason.

use std::sync::{Arc, Mutex};

use wasmtime::Store;

use super::bindings::{handler, handler_sync, middleware};
use super::component::{CompiledPlugin, Pre};
use super::convert::{from_wit, from_wit_error, to_wit_param, wit_metadata};
use super::engine::{WasmEngine, ticks_for};
use super::limits::Limits;
use super::state::{Grants, PluginState};
use crate::error::{ErrorKind, HandlerError};
use crate::message::Message;
use crate::router::{BoxHandler, HandlerResult};

enum Bindings {
    /// Called synchronously: no fiber (see `sync_io`).
    SyncHandler(handler_sync::Handler),
    Handler(handler::Handler),
    Middleware(middleware::Middleware),
}

/// One live instance: a store and the component instantiated in it.
struct Instance {
    store: Store<PluginState>,
    bindings: Bindings,
    /// The pool's generation when the instance was made (see [`InstancePool::generation`]).
    generation: u64,
}

/// The instances of one handler (or middleware) and the plugin version new ones come from.
/// Swapping the version makes the next call use the new one; calls in flight finish on the
/// version they started with, and old instances are dropped when they come back.
pub struct InstancePool {
    engine: WasmEngine,
    current: Mutex<Arc<CompiledPlugin>>,
    /// Counts the versions installed: an instance of an older generation is of an old
    /// version. Compared on every call instead of the version itself (no lock, no `Arc`).
    generation: std::sync::atomic::AtomicU64,
    idle: Mutex<Vec<Instance>>,
    limits: Limits,
    grants: Arc<Grants>,
    max_idle: usize,
    fuel_used: std::sync::atomic::AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl InstancePool {
    /// A pool for `plugin` keeping up to `max_idle` instances warm.
    pub fn new(
        engine: WasmEngine,
        plugin: Arc<CompiledPlugin>,
        limits: Limits,
        grants: Grants,
        max_idle: usize,
    ) -> Self {
        InstancePool {
            engine,
            current: Mutex::new(plugin),
            generation: std::sync::atomic::AtomicU64::new(0),
            idle: Mutex::new(Vec::new()),
            limits,
            grants: Arc::new(grants),
            max_idle: max_idle.max(1),
            fuel_used: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The version new calls run.
    pub fn current(&self) -> Arc<CompiledPlugin> {
        lock(&self.current).clone()
    }

    /// Makes `plugin` the version of every call from now on.
    pub fn replace(&self, plugin: Arc<CompiledPlugin>) {
        {
            let mut current = lock(&self.current);
            *current = plugin;
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        // Idle instances of the old version are of no use any more.
        lock(&self.idle).clear();
    }

    fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The limits applied to every call.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Fuel consumed by all calls so far.
    pub fn fuel_used(&self) -> u64 {
        self.fuel_used.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn instantiate(&self) -> Result<Instance, HandlerError> {
        // The version and its generation, read together.
        let (version, generation) = {
            let current = lock(&self.current);
            (current.clone(), self.generation())
        };
        let state = PluginState::new(
            version.name.clone(),
            self.limits.memory,
            self.grants.clone(),
        );
        let mut store = Store::new(self.engine.engine(), state);
        store.limiter(|s| s.limiter());
        // Instantiation runs guest code (initializers) too, under the same budgets.
        store
            .set_fuel(self.limits.fuel)
            .map_err(|e| HandlerError::with_kind(ErrorKind::Trap, format!("set fuel: {e}")))?;
        store.set_epoch_deadline(ticks_for(self.limits.timeout));
        let bindings = match &version.pre {
            Pre::SyncHandler(pre) => pre.instantiate(&mut store).map(Bindings::SyncHandler),
            Pre::Handler(pre) => pre
                .instantiate_async(&mut store)
                .await
                .map(Bindings::Handler),
            Pre::Middleware(pre) => pre
                .instantiate_async(&mut store)
                .await
                .map(Bindings::Middleware),
        }
        .map_err(|e| classify(&store, e, "instantiate"))?;
        Ok(Instance {
            store,
            bindings,
            generation,
        })
    }

    async fn checkout(&self) -> Result<Instance, HandlerError> {
        let generation = self.generation();
        loop {
            let Some(inst) = lock(&self.idle).pop() else {
                break;
            };
            if inst.generation == generation {
                return Ok(inst);
            }
        }
        self.instantiate().await
    }

    fn checkin(&self, inst: Instance) {
        if inst.generation != self.generation() {
            return;
        }
        let mut idle = lock(&self.idle);
        if idle.len() < self.max_idle {
            idle.push(inst);
        }
    }

    /// Runs `handle` on `msg` in an instance of the current version. For a middleware,
    /// `next` is what its `next` import calls.
    pub async fn call(&self, msg: &Message, next: Option<BoxHandler>) -> HandlerResult {
        let mut inst = self.checkout().await?;
        let limits = self.limits;
        inst.store
            .set_fuel(limits.fuel)
            .map_err(|e| HandlerError::with_kind(ErrorKind::Trap, format!("set fuel: {e}")))?;
        inst.store.set_epoch_deadline(ticks_for(limits.timeout));
        inst.store.data_mut().next = next;
        let metadata = wit_metadata(msg);
        let input = to_wit_param(msg, &metadata);
        let result = match &inst.bindings {
            // Runs on this task's thread until the guest returns, like the async call does
            // while the guest computes (fuel and the epoch deadline bound it).
            Bindings::SyncHandler(b) => b.call_handle(&mut inst.store, input),
            Bindings::Handler(b) => b.call_handle(&mut inst.store, input).await,
            Bindings::Middleware(b) => b.call_handle(&mut inst.store, input).await,
        };
        inst.store.data_mut().next = None;
        let fuel_left = inst.store.get_fuel().unwrap_or(0);
        self.fuel_used.fetch_add(
            limits.fuel.saturating_sub(fuel_left),
            std::sync::atomic::Ordering::Relaxed,
        );
        match result {
            Ok(Ok(out)) => {
                self.checkin(inst);
                check_output(&out, &limits)?;
                Ok(out.into_iter().map(from_wit).collect())
            }
            Ok(Err(e)) => {
                self.checkin(inst);
                Err(from_wit_error(e))
            }
            // A trap leaves the instance unusable: drop it; the next call makes a fresh one.
            Err(e) => Err(classify(&inst.store, e, "handle")),
        }
    }
}

fn check_output(
    out: &[super::bindings::handler::wasmill::plugin::types::MessageResult],
    limits: &Limits,
) -> Result<(), HandlerError> {
    if out.len() > limits.max_output_messages {
        return Err(HandlerError::with_kind(
            ErrorKind::OutputLimit,
            format!(
                "output limit: {} messages returned, at most {} allowed (max_output_messages)",
                out.len(),
                limits.max_output_messages
            ),
        ));
    }
    let bytes: u64 = out.iter().map(|m| m.payload.len() as u64).sum();
    if bytes > limits.max_output_bytes {
        return Err(HandlerError::with_kind(
            ErrorKind::OutputLimit,
            format!(
                "output limit: {bytes} payload bytes returned, at most {} allowed (max_output_bytes)",
                limits.max_output_bytes
            ),
        ));
    }
    Ok(())
}

/// Names what stopped a call: fuel, deadline, memory cap, or another trap (with the wasm
/// backtrace).
fn classify(store: &Store<PluginState>, e: wasmtime::Error, during: &str) -> HandlerError {
    if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
        match trap {
            wasmtime::Trap::OutOfFuel => {
                return HandlerError::with_kind(ErrorKind::FuelExhausted, "fuel exhausted");
            }
            wasmtime::Trap::Interrupt => {
                return HandlerError::with_kind(ErrorKind::Timeout, "timeout");
            }
            _ => {}
        }
    }
    if store.data().memory_exceeded() {
        return HandlerError::with_kind(ErrorKind::MemoryLimit, "memory limit");
    }
    let backtrace = e
        .downcast_ref::<wasmtime::WasmBacktrace>()
        .map(|bt| format!("\n{bt}"))
        .unwrap_or_default();
    let what = match e.downcast_ref::<wasmtime::Trap>() {
        Some(t) => t.to_string(),
        None => format!("{e:#}"),
    };
    HandlerError::with_kind(
        ErrorKind::Trap,
        format!("trap: {what} (during {during}){backtrace}"),
    )
}
