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
use crate::pubsub::DynPublisher;
use crate::router::BoxHandler;

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
    started: Instant,
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
            started: Instant::now(),
        }
    }

    /// The memory limiter, for `Store::limiter`.
    pub fn limiter(&mut self) -> &mut MemoryLimiter {
        &mut self.limiter
    }

    /// Whether the instance tried to grow past its memory cap.
    pub fn memory_exceeded(&self) -> bool {
        self.limiter.exceeded
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
        let Some(publisher) = self.grants.publish.get(&topic) else {
            tracing::warn!(plugin = %self.plugin, %topic, "denied publish to a topic not granted");
            return Ok(Err(format!(
                "topic {topic} is not granted to plugin {}",
                self.plugin
            )));
        };
        let publish = publisher.publish(&topic, vec![from_wit(msg)]);
        Ok(
            match tokio::time::timeout(HOST_PUBLISH_TIMEOUT, publish).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("publish to {topic}: {e}")),
                Err(_) => Err(format!(
                    "publish to {topic}: timed out after {HOST_PUBLISH_TIMEOUT:?}"
                )),
            },
        )
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
        let Some(next) = self.next.clone() else {
            return Err(wasmtime::Error::msg(
                "next called outside of a middleware call",
            ));
        };
        Ok(match next.handle(from_wit(msg)).await {
            Ok(out) => Ok(to_wit_messages(&out)),
            Err(e) => Err(to_wit_error(&e)),
        })
    }
}
