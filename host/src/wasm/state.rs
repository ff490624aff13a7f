//! The per-store state of a plugin instance: its sandbox (empty WASI context, memory
//! limiter), what it was granted, and the host functions of `wasmill:plugin/host`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::handler::wasmill::plugin::{host, types};
use super::bindings::middleware;
use super::convert::{from_wit, to_wit_error, to_wit_messages};
use super::guest_output::{GuestOutput, GuestStream};
use crate::message::{Message, MessageContext};
use crate::pubsub::DynPublisher;
use crate::router::{BoxHandler, HandlerResult};

/// What a plugin may reach beyond its own memory.
#[derive(Clone, Default)]
pub struct Grants {
    /// Topics the plugin may publish to through `host.publish`, with the publisher for each.
    pub publish: HashMap<String, DynPublisher>,
}

impl std::fmt::Debug for Grants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grants")
            .field("publish", &self.publish.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// How long a host `publish` call may take before the guest gets an error: fuel and epoch
/// deadlines do not count time spent in host calls, so host calls bound themselves.
const HOST_PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// State of one store (one instance).
pub struct PluginState {
    plugin: Arc<str>,
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    grants: Arc<Grants>,
    /// The rest of the chain, set for the duration of a middleware call.
    pub(crate) next: Option<BoxHandler>,
    /// The message a middleware is handling: `next` passes this very message on (its
    /// delivery, context and route), with the uuid, metadata and payload the guest gave.
    pub(crate) current: Option<Message>,
    /// The budget of the call in progress, checked on every epoch tick.
    pub(crate) call: Option<CallBudget>,
    /// Why the epoch callback last interrupted the guest.
    pub(crate) interrupted: Option<Interruption>,
    /// Set when the call in progress computes past [`LONG_CALL`](super::lane::LONG_CALL): it
    /// moves to the guest runtime at its next yield (see `lane`).
    pub(crate) long_call: super::lane::LongCallFlag,
    /// What 0.2.0 message handles hold in host memory.
    pub(crate) live: super::message::LiveMessages,
    started: Instant,
}

/// What a guest call may use of the wall clock, checked on every epoch tick (every
/// [`EPOCH_TICK`](super::engine::EPOCH_TICK)) while the guest runs.
#[derive(Debug, Clone)]
pub(crate) struct CallBudget {
    /// When the call started.
    pub started: Instant,
    /// The end of the plugin's own `timeout`; moved later by the time spent inside `next`,
    /// which is the rest of the chain's time, not the middleware's.
    pub deadline: Instant,
    /// The message's context: a Timeout middleware's deadline and the router's close.
    pub ctx: Option<MessageContext>,
    /// Whether the call may yield to the async executor (an async call): a computing guest
    /// then gives its worker thread back on every tick.
    pub yields: bool,
    /// For a synchronous call, which cannot yield: when it has held its thread too long.
    pub slice_end: Option<Instant>,
}

/// Why a guest was interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interruption {
    /// Its own `timeout` passed.
    Timeout,
    /// The deadline of its message's context (a Timeout middleware) passed.
    ContextDeadline,
    /// The router's close timed out with the message in flight.
    Aborted,
    /// A synchronous call held its thread for a whole slice: it is run again async.
    SliceEnded,
}

impl PluginState {
    /// The epoch callback: interrupts a guest past its budget, else lets it go on for one
    /// more tick, yielding its thread first when the call is async.
    pub(crate) fn on_epoch_tick(&mut self) -> wasmtime::UpdateDeadline {
        let Some(budget) = &self.call else {
            return wasmtime::UpdateDeadline::Continue(1);
        };
        let now = Instant::now();
        let why = if now >= budget.deadline {
            Some(Interruption::Timeout)
        } else if let Some(ctx) = &budget.ctx
            && ctx.deadline().is_some_and(|d| now >= d.into_std())
        {
            Some(Interruption::ContextDeadline)
        } else if budget.ctx.as_ref().is_some_and(|c| c.is_aborted()) {
            Some(Interruption::Aborted)
        } else if budget.slice_end.is_some_and(|end| now >= end) {
            Some(Interruption::SliceEnded)
        } else {
            None
        };
        if let Some(why) = why {
            self.interrupted = Some(why);
            return wasmtime::UpdateDeadline::Interrupt;
        }
        if budget.yields {
            if now.duration_since(budget.started) >= super::lane::LONG_CALL {
                self.long_call
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            // tokio's own yield: a task that wakes itself is otherwise run again at once
            // from its worker's LIFO slot, ahead of the tasks it should let through.
            wasmtime::UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now()))
        } else {
            wasmtime::UpdateDeadline::Continue(1)
        }
    }
}

impl PluginState {
    /// A sandbox with nothing granted but `grants`, and a memory cap of `memory` bytes.
    pub fn new(plugin: Arc<str>, memory: u64, grants: Arc<Grants>) -> Self {
        // No preopened directories, environment, arguments or network; stdout and stderr go
        // to the host's log, tagged with the plugin's name.
        let wasi = WasiCtx::builder()
            .stdout(GuestOutput::new(plugin.clone(), GuestStream::Stdout))
            .stderr(GuestOutput::new(plugin.clone(), GuestStream::Stderr))
            .build();
        PluginState {
            plugin,
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                cap: memory,
                exceeded: false,
            },
            grants,
            next: None,
            current: None,
            call: None,
            interrupted: None,
            long_call: Default::default(),
            live: Default::default(),
            started: Instant::now(),
        }
    }

    /// The memory limiter, for `Store::limiter`.
    pub fn limiter(&mut self) -> &mut MemoryLimiter {
        &mut self.limiter
    }

    /// The plugin's name.
    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// Whether the instance tried to grow past its memory cap.
    pub fn memory_exceeded(&self) -> bool {
        self.limiter.exceeded
    }

    /// The instance's memory cap in bytes.
    pub(crate) fn memory_cap(&self) -> u64 {
        self.limiter.cap
    }

    /// Records that the instance went past its memory cap (its messages' payloads count).
    pub(crate) fn mark_memory_exceeded(&mut self) {
        self.limiter.exceeded = true;
    }

    /// The store's resource table (WASI's streams, 0.2.0's messages).
    pub(crate) fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    /// `host.publish` of both versions: `msg` to `topic` if the plugin was granted it. The
    /// future holds nothing of the store.
    pub(crate) fn publish_granted(
        &self,
        topic: String,
        msg: Message,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send + 'static {
        let publisher = self.grants.publish.get(&topic).cloned();
        let plugin = self.plugin.clone();
        async move {
            let Some(publisher) = publisher else {
                tracing::warn!(plugin = %plugin, %topic, "denied publish to a topic not granted");
                return Err(format!("topic {topic} is not granted to plugin {plugin}"));
            };
            let publish = publisher.publish(&topic, vec![msg]);
            match tokio::time::timeout(HOST_PUBLISH_TIMEOUT, publish).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("publish to {topic}: {e}")),
                Err(_) => Err(format!(
                    "publish to {topic}: timed out after {HOST_PUBLISH_TIMEOUT:?}"
                )),
            }
        }
    }

    /// A middleware's `next` of both versions: runs the rest of the chain on `msg` (already
    /// the message in flight, see `pass_on`); the time spent there is not the middleware's.
    pub(crate) async fn call_next(&mut self, msg: Message) -> wasmtime::Result<HandlerResult> {
        let Some(next) = self.next.clone() else {
            return Err(wasmtime::Error::msg(
                "next called outside of a middleware call",
            ));
        };
        let entered = Instant::now();
        let result = next.handle(msg).await;
        if let Some(budget) = self.call.as_mut() {
            budget.deadline += entered.elapsed();
            if let Some(end) = budget.slice_end.as_mut() {
                *end += entered.elapsed();
            }
        }
        Ok(result)
    }
}

/// Refuses memory growth past the cap and remembers that it did, so the resulting trap is
/// reported as `memory limit` rather than a bare `unreachable`.
pub struct MemoryLimiter {
    cap: u64,
    exceeded: bool,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.cap {
            self.exceeded = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

impl PluginState {
    /// `host.log`: a record in the host's log, tagged with the plugin's name.
    pub(crate) fn log(&self, level: host::Level, message: &str, fields: &[(String, String)]) {
        let fields: String = fields.iter().map(|(k, v)| format!(" {k}={v}")).collect();
        let plugin = &*self.plugin;
        match level {
            host::Level::Trace => tracing::trace!(plugin, "{message}{fields}"),
            host::Level::Debug => tracing::debug!(plugin, "{message}{fields}"),
            host::Level::Info => tracing::info!(plugin, "{message}{fields}"),
            host::Level::Warn => tracing::warn!(plugin, "{message}{fields}"),
            host::Level::Error => tracing::error!(plugin, "{message}{fields}"),
        }
    }

    /// `host.monotonic-now`: nanoseconds since the instance was made.
    pub(crate) fn monotonic_now(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for PluginState {}

impl host::Host for PluginState {
    async fn log(
        &mut self,
        level: host::Level,
        message: String,
        fields: Vec<(String, String)>,
    ) -> wasmtime::Result<()> {
        PluginState::log(self, level, &message, &fields);
        Ok(())
    }

    async fn publish(
        &mut self,
        topic: String,
        msg: types::MessageResult,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(self.publish_granted(topic, from_wit(msg)).await)
    }

    async fn monotonic_now(&mut self) -> wasmtime::Result<u64> {
        Ok(PluginState::monotonic_now(self))
    }
}

impl middleware::MiddlewareImports for PluginState {
    async fn next(
        &mut self,
        msg: types::MessageResult,
    ) -> wasmtime::Result<Result<Vec<types::MessageResult>, types::HandlerError>> {
        let Some(current) = self.current.as_ref() else {
            return Err(wasmtime::Error::msg(
                "next called outside of a middleware call",
            ));
        };
        let msg = pass_on(current, msg);
        // The rest of the chain's time is not the middleware's.
        Ok(match self.call_next(msg).await? {
            Ok(out) => Ok(to_wit_messages(&out)),
            Err(e) => Err(to_wit_error(&e)),
        })
    }
}

/// The message a middleware hands to `next`: the one in flight (same delivery, context and
/// route, so the chain inside acks, retries and poisons the real message) carrying the uuid,
/// metadata and payload the guest passed. An empty uuid keeps the original.
pub(crate) fn pass_on(current: &Message, from_guest: types::MessageResult) -> Message {
    let mut msg = current.clone();
    if !from_guest.uuid.is_empty() {
        msg.uuid = from_guest.uuid;
    }
    msg.metadata = from_guest.metadata.into_iter().collect();
    msg.payload = from_guest.payload.into();
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_passes_on_the_message_in_flight_with_the_guests_changes() {
        let current = Message::with_uuid("u1", "old").with_metadata("a", "1");
        let passed = pass_on(
            &current,
            types::MessageResult {
                uuid: String::new(),
                metadata: vec![("b".into(), "2".into())],
                payload: b"new".to_vec(),
            },
        );
        assert!(
            passed.same_delivery(&current),
            "a detached copy was passed on"
        );
        assert_eq!(passed.uuid, "u1");
        assert_eq!(&passed.payload[..], b"new");
        assert_eq!(passed.metadata.get("b"), "2");
        assert!(!passed.metadata.contains("a"));
        assert!(passed.ack());
        assert_eq!(current.ack_state(), crate::message::AckState::Acked);
    }
}
