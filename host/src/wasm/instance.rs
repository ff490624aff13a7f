//! Running a plugin: a pool of instances per subscriber, each with its own store, and the
//! mapping of every way a call can fail to a [`HandlerError`] with a clear reason.

use std::sync::{Arc, Mutex};

use wasmtime::Store;

use wasmtime::component::Resource;

use super::bindings::handler::wasmill::plugin::types;
use super::bindings::handler2::wasmill::plugin::types as types2;
use super::bindings::{handler, handler_sync, handler2, handler2_sync, middleware, middleware2};
use super::component::{CompiledPlugin, Pre};
use super::convert::{from_wit, from_wit_error, to_wit_param, wit_metadata};
use super::engine::WasmEngine;
use super::limits::Limits;
use super::message::MessageRep;
use super::state::{CallBudget, Grants, Interruption, PluginState};
use crate::error::{ErrorKind, HandlerError};
use crate::message::Message;
use crate::router::{BoxHandler, HandlerResult};

pub(super) enum Bindings {
    /// Called synchronously: no fiber (see `sync_io`).
    SyncHandler(handler_sync::Handler),
    Handler(handler::Handler),
    Middleware(middleware::Middleware),
    /// 0.2.0's, called synchronously.
    SyncHandler2(handler2_sync::Handler),
    Handler2(handler2::Handler),
    Middleware2(middleware2::Middleware),
}

impl Bindings {
    pub(super) fn is_sync(&self) -> bool {
        matches!(self, Bindings::SyncHandler(_) | Bindings::SyncHandler2(_))
    }
}

/// One live instance: a store and the component instantiated in it.
pub(super) struct Instance {
    pub(super) store: Store<PluginState>,
    pub(super) bindings: Bindings,
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
    pub(super) fuel_used: std::sync::atomic::AtomicU64,
    /// Set once a synchronous call of this pool held its thread for a whole
    /// [`SYNC_SLICE`]: from then on every call is async, yielding on each epoch tick.
    pub(super) demoted: std::sync::atomic::AtomicBool,
}

/// Fuel an async guest call burns between two yields of its thread: about 0.1-0.3 ms of
/// computation here (8e9 fuel/s on a quiet core), well above what a message usually costs
/// (a Rust pass-through burns ~5,000), so a quick handler never yields and a computing one
/// lets other tasks run several times per epoch tick, at the cost of a fiber switch each time.
pub const YIELD_FUEL: u64 = 1_000_000;

/// How long a synchronous guest call (one that cannot yield) may hold a runtime thread. A
/// call that is still computing then is interrupted and run again async, on a fresh instance,
/// where it yields its thread on every epoch tick; the pool stays async from then on. A
/// synchronous handler reaches only imports that never wait and cannot publish, so running it
/// again repeats at most its log lines.
pub const SYNC_SLICE: std::time::Duration = std::time::Duration::from_millis(10);

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
            demoted: std::sync::atomic::AtomicBool::new(false),
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

    /// Whether calls run async only (see [`SYNC_SLICE`]).
    pub fn is_demoted(&self) -> bool {
        self.demoted.load(std::sync::atomic::Ordering::Relaxed)
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
        store.epoch_deadline_callback(|mut cx| Ok(cx.data_mut().on_epoch_tick()));
        // Instantiation runs guest code (initializers) too, under the same budgets.
        store
            .set_fuel(self.limits.fuel)
            .map_err(|e| HandlerError::with_kind(ErrorKind::Trap, format!("set fuel: {e}")))?;
        let sync = matches!(version.pre, Pre::SyncHandler(..) | Pre::SyncHandler2(..))
            && !self.is_demoted();
        if !sync {
            // Besides every epoch tick, an async guest gives its thread back every
            // YIELD_FUEL: the tasks it shares a worker with wait a fraction of a millisecond
            // for it, not a whole tick.
            store
                .fuel_async_yield_interval(Some(YIELD_FUEL))
                .map_err(|e| {
                    HandlerError::with_kind(ErrorKind::Trap, format!("set fuel yield: {e}"))
                })?;
        }
        arm(&mut store, self.limits.timeout, None, sync);
        let bindings = match &version.pre {
            Pre::SyncHandler(pre, _) if sync => {
                pre.instantiate(&mut store).map(Bindings::SyncHandler)
            }
            Pre::SyncHandler(_, pre) | Pre::Handler(pre) => pre
                .instantiate_async(&mut store)
                .await
                .map(Bindings::Handler),
            Pre::Middleware(pre) => pre
                .instantiate_async(&mut store)
                .await
                .map(Bindings::Middleware),
            Pre::SyncHandler2(pre, _) if sync => {
                pre.instantiate(&mut store).map(Bindings::SyncHandler2)
            }
            Pre::SyncHandler2(_, pre) | Pre::Handler2(pre) => pre
                .instantiate_async(&mut store)
                .await
                .map(Bindings::Handler2),
            Pre::Middleware2(pre) => pre
                .instantiate_async(&mut store)
                .await
                .map(Bindings::Middleware2),
        }
        .map_err(|e| classify(&store, e, "instantiate"))?;
        store.data_mut().call = None;
        Ok(Instance {
            store,
            bindings,
            generation,
        })
    }

    pub(super) async fn checkout(&self) -> Result<Instance, HandlerError> {
        let generation = self.generation();
        let demoted = self.is_demoted();
        loop {
            let Some(inst) = lock(&self.idle).pop() else {
                break;
            };
            let sync = inst.bindings.is_sync();
            if inst.generation == generation && !(sync && demoted) {
                return Ok(inst);
            }
        }
        self.instantiate().await
    }

    pub(super) fn checkin(&self, inst: Instance) {
        if inst.generation != self.generation() {
            return;
        }
        let mut idle = lock(&self.idle);
        if idle.len() < self.max_idle {
            idle.push(inst);
        }
    }

    /// Runs `handle` on `msg` in an instance of the current version. For a middleware,
    /// `next` is what its `next` import calls, and `msg` is what it passes on.
    ///
    /// The guest never holds a runtime thread for long: an async call yields on every epoch
    /// tick, and a synchronous one is cut after [`SYNC_SLICE`] and run again async. On every
    /// tick the call's budget is checked: its own `timeout` (not counting the time spent inside
    /// `next`), the deadline of the message's context (a Timeout middleware) and the router's
    /// close.
    pub async fn call(&self, msg: &Message, next: Option<BoxHandler>) -> HandlerResult {
        let limits = self.limits;
        let mut remaining = limits.timeout;
        let mut fuel_left = limits.fuel;
        // When the first attempt started: a call run again async keeps that deadline.
        let mut first: Option<std::time::Instant> = None;
        loop {
            let mut inst = self.checkout().await?;
            let sync = inst.bindings.is_sync();
            inst.store
                .set_fuel(fuel_left)
                .map_err(|e| HandlerError::with_kind(ErrorKind::Trap, format!("set fuel: {e}")))?;
            let started = arm(&mut inst.store, remaining, Some(msg), sync);
            let first = *first.get_or_insert(started);
            if next.is_some() {
                let state = inst.store.data_mut();
                state.next = next.clone();
                state.current = Some(msg.clone());
            }
            let (mut inst, result) = if sync {
                // Runs on this task's thread for at most SYNC_SLICE (then it is run again
                // async, below).
                let result = call_sync(&mut inst, msg);
                (inst, result)
            } else {
                match call_async(inst, msg.clone()).await {
                    Some(done) => done,
                    None => {
                        return Err(HandlerError::with_kind(
                            ErrorKind::Trap,
                            "the guest call was dropped by the guest runtime",
                        ));
                    }
                }
            };
            let state = inst.store.data_mut();
            state.next = None;
            state.current = None;
            state.call = None;
            let left = inst.store.get_fuel().unwrap_or(0);
            self.fuel_used.fetch_add(
                fuel_left.saturating_sub(left),
                std::sync::atomic::Ordering::Relaxed,
            );
            return match result {
                Ok(out) => {
                    let out = take_output(&mut inst.store, out, &limits);
                    self.checkin(inst);
                    out
                }
                Err(_) if inst.store.data().interrupted == Some(Interruption::SliceEnded) => {
                    if !self
                        .demoted
                        .swap(true, std::sync::atomic::Ordering::Relaxed)
                    {
                        tracing::info!(
                            plugin = %inst.store.data().plugin(),
                            "a call computed longer than {SYNC_SLICE:?}: calls of this handler run async from now on, yielding their thread on every epoch tick"
                        );
                    }
                    fuel_left = left;
                    remaining = limits.timeout.saturating_sub(first.elapsed());
                    continue;
                }
                // A trap leaves the instance unusable: drop it; the next call makes a fresh one.
                Err(e) => Err(classify(&inst.store, e, "handle")),
            };
        }
    }
}

/// What a guest's `handle` returned, of either version, before the host takes it.
pub(super) enum Returned {
    V1(Result<Vec<types::MessageResult>, types::HandlerError>),
    V2(Result<Vec<Resource<MessageRep>>, types2::HandlerError>),
}

type CallOutput = wasmtime::Result<Returned>;

/// A synchronous call of `inst` on `msg` (a `SyncHandler` instance).
fn call_sync(inst: &mut Instance, msg: &Message) -> CallOutput {
    match &inst.bindings {
        Bindings::SyncHandler(b) => {
            let metadata = wit_metadata(msg);
            let input = to_wit_param(msg, &metadata);
            b.call_handle(&mut inst.store, input).map(Returned::V1)
        }
        Bindings::SyncHandler2(b) => {
            let input = inst.store.data_mut().push_message(MessageRep::of(msg))?;
            b.call_handle(&mut inst.store, input).map(Returned::V2)
        }
        _ => Err(wasmtime::Error::msg(
            "an async instance called synchronously",
        )),
    }
}

/// An async call of `inst` on `msg`, on this task while it is quick, on the guest runtime once
/// it computes long (`lane`). The instance comes back with the result.
async fn call_async(mut inst: Instance, msg: Message) -> Option<(Instance, CallOutput)> {
    let long = inst.store.data().long_call.clone();
    long.store(false, std::sync::atomic::Ordering::Relaxed);
    let call = async move {
        let result = match &inst.bindings {
            Bindings::Handler(_) | Bindings::Middleware(_) | Bindings::SyncHandler(_) => {
                let metadata = wit_metadata(&msg);
                let input = to_wit_param(&msg, &metadata);
                match &inst.bindings {
                    Bindings::Handler(b) => b.call_handle(&mut inst.store, input).await,
                    Bindings::Middleware(b) => b.call_handle(&mut inst.store, input).await,
                    Bindings::SyncHandler(b) => b.call_handle(&mut inst.store, input),
                    _ => unreachable!(),
                }
                .map(Returned::V1)
            }
            Bindings::Handler2(_) | Bindings::Middleware2(_) | Bindings::SyncHandler2(_) => {
                match inst.store.data_mut().push_message(MessageRep::of(&msg)) {
                    Err(e) => Err(e),
                    Ok(input) => match &inst.bindings {
                        Bindings::Handler2(b) => b.call_handle(&mut inst.store, input).await,
                        Bindings::Middleware2(b) => b.call_handle(&mut inst.store, input).await,
                        Bindings::SyncHandler2(b) => b.call_handle(&mut inst.store, input),
                        _ => unreachable!(),
                    }
                    .map(Returned::V2),
                }
            }
        };
        (inst, result)
    };
    super::lane::run(call, &long).await
}

/// The host's messages from what a guest returned, within the output limits. A 0.2.0 guest's
/// handles are taken out of the store's table (all of them, also past a limit).
pub(super) fn take_output(
    store: &mut Store<PluginState>,
    out: Returned,
    limits: &Limits,
) -> HandlerResult {
    match out {
        Returned::V1(Ok(out)) => {
            let bytes = out.iter().map(|m| m.payload.len() as u64).sum();
            check_output(out.len(), bytes, limits)?;
            Ok(out.into_iter().map(from_wit).collect())
        }
        Returned::V1(Err(e)) => Err(from_wit_error(e)),
        Returned::V2(Ok(handles)) => {
            let count = handles.len();
            let mut msgs = Vec::with_capacity(count);
            let mut bytes = 0;
            for h in handles {
                let rep = store.data_mut().take_message(h).map_err(|e| {
                    HandlerError::with_kind(ErrorKind::Trap, format!("returned message: {e}"))
                })?;
                bytes += rep.payload.len() as u64;
                msgs.push(rep);
            }
            check_output(count, bytes, limits)?;
            Ok(msgs.into_iter().map(MessageRep::into_message).collect())
        }
        Returned::V2(Err(e)) => Err(super::message::from_wit_error(e)),
    }
}

/// Sets the budget of the next guest call in `store`: an epoch deadline one tick away (the
/// callback then checks the budget on every tick), `timeout` from now, and `msg`'s context.
/// Returns the call's start.
pub(super) fn arm(
    store: &mut Store<PluginState>,
    timeout: std::time::Duration,
    msg: Option<&Message>,
    sync: bool,
) -> std::time::Instant {
    let now = std::time::Instant::now();
    let state = store.data_mut();
    state.interrupted = None;
    state.call = Some(CallBudget {
        started: now,
        deadline: now + timeout,
        ctx: msg.map(|m| m.context().clone()),
        yields: !sync,
        slice_end: sync.then(|| now + SYNC_SLICE),
    });
    store.set_epoch_deadline(1);
    now
}

fn check_output(count: usize, bytes: u64, limits: &Limits) -> Result<(), HandlerError> {
    if count > limits.max_output_messages {
        return Err(HandlerError::with_kind(
            ErrorKind::OutputLimit,
            format!(
                "output limit: {count} messages returned, at most {} allowed (max_output_messages)",
                limits.max_output_messages
            ),
        ));
    }
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

/// A trap in words a plugin's author can act on. A guest's stack lives in its linear memory,
/// below its data: a stack that overflows (a large local array, deep recursion in a guest that
/// was not built with stack probes) shows up as an access out of bounds, not as wasmtime's
/// own `call stack exhausted` (which a deep recursion of wasm calls gives).
fn trap_summary(trap: wasmtime::Trap) -> String {
    match trap {
        wasmtime::Trap::MemoryOutOfBounds => format!(
            "{trap} (a bug in the plugin, or its stack overflowed: a large local array or \
             deep recursion)"
        ),
        wasmtime::Trap::StackOverflow => format!("{trap} (stack overflow: deep recursion)"),
        other => other.to_string(),
    }
}

/// Names what stopped a call: fuel, deadline, memory cap, or another trap (with the wasm
/// backtrace).
pub(super) fn classify(
    store: &Store<PluginState>,
    e: wasmtime::Error,
    during: &str,
) -> HandlerError {
    if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
        match trap {
            wasmtime::Trap::OutOfFuel => {
                return HandlerError::with_kind(ErrorKind::FuelExhausted, "fuel exhausted");
            }
            wasmtime::Trap::Interrupt => {
                let reason = match store.data().interrupted {
                    Some(Interruption::ContextDeadline) => {
                        "timeout (the deadline of a timeout middleware)"
                    }
                    Some(Interruption::Aborted) => {
                        "timeout (cut off: the router's close_timeout passed)"
                    }
                    _ => "timeout",
                };
                return HandlerError::with_kind(ErrorKind::Timeout, reason);
            }
            _ => {}
        }
    }
    if store.data().memory_exceeded() {
        return HandlerError::with_kind(ErrorKind::MemoryLimit, "memory limit");
    }
    if store.data().live.too_many {
        return HandlerError::with_kind(
            ErrorKind::OutputLimit,
            format!(
                "output limit: more than {} messages made in one instance",
                super::message::MAX_LIVE_MESSAGES
            ),
        );
    }
    let backtrace = e
        .downcast_ref::<wasmtime::WasmBacktrace>()
        .map(|bt| format!("\n{bt}"))
        .unwrap_or_default();
    let what = match e.downcast_ref::<wasmtime::Trap>() {
        Some(t) => trap_summary(*t),
        None => format!("{e:#}"),
    };
    HandlerError::with_kind(
        ErrorKind::Trap,
        format!("trap: {what} (during {during}){backtrace}"),
    )
}

#[cfg(test)]
mod trap_summary_tests {
    use super::trap_summary;

    #[test]
    fn an_access_out_of_bounds_names_the_stack_as_a_suspect() {
        let s = trap_summary(wasmtime::Trap::MemoryOutOfBounds);
        assert!(s.contains("out of bounds memory access"), "{s}");
        assert!(s.contains("stack overflowed"), "{s}");
        let s = trap_summary(wasmtime::Trap::StackOverflow);
        assert!(s.contains("stack overflow"), "{s}");
        assert_eq!(
            trap_summary(wasmtime::Trap::UnreachableCodeReached),
            wasmtime::Trap::UnreachableCodeReached.to_string()
        );
    }
}
