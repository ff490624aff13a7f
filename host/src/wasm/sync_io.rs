//! The synchronous linker: the imports a handler may have to be called without a fiber.
//!
//! wasmtime runs an async call on a fiber of its own; a plain synchronous call skips that
//! (measured here: ~1.35 us -> ~1.0 us per pass-through call). A store may be called
//! synchronously only if none of the component's imports is async, so this linker holds
//! only what completes without waiting in the plugin sandbox: the CLI environment, exit,
//! stdin (empty), stdout and stderr (the host's log, always ready, see `guest_output`), the
//! wall clock, random, `wasi:io` and `wasmill:plugin/host`'s `log` and `monotonic-now`.
//! What could wait (`host.publish`, a middleware's `next`, clock subscriptions, files,
//! sockets) is left out: a component importing any of it fails to link here and runs on the
//! async linker, as every plugin did before.
//!
//! wasmtime-wasi's synchronous `wasi:io` drives its blocking functions with
//! `Handle::block_on`, which panics on a tokio worker; [`SyncIo`] instead polls them once.
//! Every pollable this sandbox can make is ready at once, so a poll that would wait is a
//! bug, reported as a trap rather than a hang.

use std::future::Future;

use futures::FutureExt;
use wasmtime::component::{HasData, HasSelf, Linker, Resource, ResourceTable};
use wasmtime_wasi::WasiView;
use wasmtime_wasi::cli::{WasiCli, WasiCliView};
use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
use wasmtime_wasi::p2::bindings::io::{poll as async_poll, streams as async_streams};
use wasmtime_wasi::p2::bindings::sync::io::streams::Pollable;
use wasmtime_wasi::p2::bindings::{cli, clocks, random, sync::io};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, DynPollable, StreamError, StreamResult};
use wasmtime_wasi::random::{WasiRandom, WasiRandomView};

use super::bindings::handler::wasmill::plugin::host::Level;
use super::bindings::handler2::wasmill::plugin::host::Level as Level2;
use super::state::PluginState;

/// The synchronous linker of the handler world (see the module docs for what it holds).
pub(crate) fn handler_linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<PluginState>> {
    let mut linker = Linker::new(engine);
    let l = &mut linker;
    clocks::wall_clock::add_to_linker::<PluginState, WasiClocks>(l, PluginState::clocks)?;
    random::random::add_to_linker::<PluginState, WasiRandom>(l, PluginState::random)?;
    random::insecure::add_to_linker::<PluginState, WasiRandom>(l, PluginState::random)?;
    random::insecure_seed::add_to_linker::<PluginState, WasiRandom>(l, PluginState::random)?;
    cli::exit::add_to_linker::<PluginState, WasiCli>(l, PluginState::cli)?;
    cli::environment::add_to_linker::<PluginState, WasiCli>(l, PluginState::cli)?;
    cli::stdin::add_to_linker::<PluginState, WasiCli>(l, PluginState::cli)?;
    cli::stdout::add_to_linker::<PluginState, WasiCli>(l, PluginState::cli)?;
    cli::stderr::add_to_linker::<PluginState, WasiCli>(l, PluginState::cli)?;
    cli::terminal_input::add_to_linker::<PluginState, WasiCli>(l, PluginState::cli)?;
    cli::terminal_output::add_to_linker::<PluginState, WasiCli>(l, PluginState::cli)?;
    cli::terminal_stdin::add_to_linker::<PluginState, WasiCli>(l, PluginState::cli)?;
    cli::terminal_stdout::add_to_linker::<PluginState, WasiCli>(l, PluginState::cli)?;
    cli::terminal_stderr::add_to_linker::<PluginState, WasiCli>(l, PluginState::cli)?;
    io::error::add_to_linker::<PluginState, SyncIoData>(l, |t| SyncIo(t.ctx().table))?;
    io::poll::add_to_linker::<PluginState, SyncIoData>(l, |t| SyncIo(t.ctx().table))?;
    io::streams::add_to_linker::<PluginState, SyncIoData>(l, |t| SyncIo(t.ctx().table))?;

    let mut host = l.instance("wasmill:plugin/host@0.1.0")?;
    host.func_wrap(
        "log",
        |mut store, (level, message, fields): (Level, String, Vec<(String, String)>)| {
            store.data_mut().log(level, &message, &fields);
            Ok(())
        },
    )?;
    host.func_wrap("monotonic-now", |store, (): ()| {
        Ok((store.data().monotonic_now(),))
    })?;

    // 0.2.0: the message resource's methods never wait; `publish` is left out, as above.
    super::bindings::handler2::wasmill::plugin::types::add_to_linker::<_, HasSelf<_>>(
        &mut linker,
        |s| s,
    )?;
    let mut host = linker.instance("wasmill:plugin/host@0.2.0")?;
    host.func_wrap(
        "log",
        |mut store, (level, message, fields): (Level2, String, Vec<(String, String)>)| {
            store
                .data_mut()
                .log(super::message::level(level), &message, &fields);
            Ok(())
        },
    )?;
    host.func_wrap("monotonic-now", |store, (): ()| {
        Ok((store.data().monotonic_now(),))
    })?;
    Ok(linker)
}

/// `wasi:io` on a store's resource table, with every blocking function completed at once.
pub(crate) struct SyncIo<'a>(&'a mut ResourceTable);

struct SyncIoData;

impl HasData for SyncIoData {
    type Data<'a> = SyncIo<'a>;
}

/// `f`'s output if it is ready on the first poll; a trap if it would wait.
fn at_once<T>(what: &str, f: impl Future<Output = T>) -> wasmtime::Result<T> {
    f.now_or_never().ok_or_else(|| {
        wasmtime::Error::msg(format!(
            "wasi:io {what} would wait, which a plugin called without a fiber cannot do"
        ))
    })
}

/// [`at_once`] for a stream operation: a wait becomes the stream's trap.
fn stream_at_once<T>(what: &str, f: impl Future<Output = StreamResult<T>>) -> StreamResult<T> {
    at_once(what, f).map_err(StreamError::Trap)?
}

impl io::error::Host for SyncIo<'_> {}

impl io::error::HostError for SyncIo<'_> {
    fn to_debug_string(
        &mut self,
        err: Resource<wasmtime_wasi::p2::IoError>,
    ) -> wasmtime::Result<String> {
        io::error::HostError::to_debug_string(self.0, err)
    }

    fn drop(&mut self, err: Resource<wasmtime_wasi::p2::IoError>) -> wasmtime::Result<()> {
        io::error::HostError::drop(self.0, err)
    }
}

impl io::poll::Host for SyncIo<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        at_once("poll", async_poll::Host::poll(self.0, pollables))?
    }
}

impl io::poll::HostPollable for SyncIo<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        at_once(
            "pollable.ready",
            async_poll::HostPollable::ready(self.0, pollable),
        )?
    }

    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        at_once(
            "pollable.block",
            async_poll::HostPollable::block(self.0, pollable),
        )?
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        async_poll::HostPollable::drop(self.0, pollable)
    }
}

impl io::streams::Host for SyncIo<'_> {
    fn convert_stream_error(
        &mut self,
        err: StreamError,
    ) -> wasmtime::Result<io::streams::StreamError> {
        io::streams::Host::convert_stream_error(self.0, err)
    }
}

impl io::streams::HostOutputStream for SyncIo<'_> {
    fn drop(&mut self, stream: Resource<DynOutputStream>) -> wasmtime::Result<()> {
        at_once(
            "output-stream drop",
            async_streams::HostOutputStream::drop(self.0, stream),
        )?
    }

    fn check_write(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<u64> {
        io::streams::HostOutputStream::check_write(self.0, stream)
    }

    fn write(&mut self, stream: Resource<DynOutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        io::streams::HostOutputStream::write(self.0, stream, bytes)
    }

    fn blocking_write_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        bytes: Vec<u8>,
    ) -> StreamResult<()> {
        stream_at_once(
            "blocking-write-and-flush",
            async_streams::HostOutputStream::blocking_write_and_flush(self.0, stream, bytes),
        )
    }

    fn blocking_write_zeroes_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        len: u64,
    ) -> StreamResult<()> {
        stream_at_once(
            "blocking-write-zeroes-and-flush",
            async_streams::HostOutputStream::blocking_write_zeroes_and_flush(self.0, stream, len),
        )
    }

    fn subscribe(
        &mut self,
        stream: Resource<DynOutputStream>,
    ) -> wasmtime::Result<Resource<Pollable>> {
        io::streams::HostOutputStream::subscribe(self.0, stream)
    }

    fn write_zeroes(&mut self, stream: Resource<DynOutputStream>, len: u64) -> StreamResult<()> {
        io::streams::HostOutputStream::write_zeroes(self.0, stream, len)
    }

    fn flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        io::streams::HostOutputStream::flush(self.0, stream)
    }

    fn blocking_flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        stream_at_once(
            "blocking-flush",
            async_streams::HostOutputStream::blocking_flush(self.0, stream),
        )
    }

    fn splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        io::streams::HostOutputStream::splice(self.0, dst, src, len)
    }

    fn blocking_splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        stream_at_once(
            "blocking-splice",
            async_streams::HostOutputStream::blocking_splice(self.0, dst, src, len),
        )
    }
}

impl io::streams::HostInputStream for SyncIo<'_> {
    fn drop(&mut self, stream: Resource<DynInputStream>) -> wasmtime::Result<()> {
        at_once(
            "input-stream drop",
            async_streams::HostInputStream::drop(self.0, stream),
        )?
    }

    fn read(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        io::streams::HostInputStream::read(self.0, stream, len)
    }

    fn blocking_read(
        &mut self,
        stream: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<Vec<u8>> {
        stream_at_once(
            "blocking-read",
            async_streams::HostInputStream::blocking_read(self.0, stream, len),
        )
    }

    fn skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        io::streams::HostInputStream::skip(self.0, stream, len)
    }

    fn blocking_skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        stream_at_once(
            "blocking-skip",
            async_streams::HostInputStream::blocking_skip(self.0, stream, len),
        )
    }

    fn subscribe(
        &mut self,
        stream: Resource<DynInputStream>,
    ) -> wasmtime::Result<Resource<Pollable>> {
        io::streams::HostInputStream::subscribe(self.0, stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ready_future_completes_and_a_waiting_one_is_a_trap() {
        assert_eq!(at_once("ready", async { 7 }).unwrap(), 7);
        let err = at_once("pollable.block", std::future::pending::<()>()).unwrap_err();
        assert!(
            err.to_string().contains("pollable.block would wait"),
            "{err}"
        );
        let err = stream_at_once("blocking-flush", std::future::pending::<StreamResult<()>>())
            .unwrap_err();
        assert!(matches!(err, StreamError::Trap(_)), "{err:?}");
    }
}
