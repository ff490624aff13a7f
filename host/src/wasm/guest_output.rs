//! A guest's stdout and stderr, turned into the host's tracing log line by line, tagged with
//! the plugin's name (so `println!` in a plugin shows up beside the host's own logs).
//!
//! Lines are cut at [`MAX_LINE`] bytes so a guest that never prints a newline cannot grow the
//! host's memory; invalid UTF-8 is shown lossily.
//!
//! The WASI stream is synchronous: a write is logged before it returns and the stream is
//! always ready, so no background task is spawned per stream and a guest's blocking write
//! never waits (which lets plugins run without a fiber, see `wasm::sync_io`).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// How many bytes a guest may write at once (the permit of `check-write`).
const WRITE_PERMIT: usize = 64 * 1024;

/// The longest line kept before it is logged as is.
pub const MAX_LINE: usize = 4096;

/// Which of the guest's output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestStream {
    /// stdout, logged at INFO.
    Stdout,
    /// stderr, logged at WARN.
    Stderr,
}

impl GuestStream {
    fn name(self) -> &'static str {
        match self {
            GuestStream::Stdout => "stdout",
            GuestStream::Stderr => "stderr",
        }
    }
}

/// A WASI output stream that logs what the guest writes.
#[derive(Debug, Clone)]
pub struct GuestOutput {
    plugin: Arc<str>,
    stream: GuestStream,
}

impl GuestOutput {
    /// Output of `plugin` on `stream`.
    pub fn new(plugin: Arc<str>, stream: GuestStream) -> Self {
        GuestOutput { plugin, stream }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineLogger::new(self.plugin.clone(), self.stream))
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineLogger::new(self.plugin.clone(), self.stream))
    }
}

/// Splits what is written into lines and logs each one.
struct LineLogger {
    plugin: Arc<str>,
    stream: GuestStream,
    pending: Vec<u8>,
    sink: fn(&str, GuestStream, &str),
}

fn log_line(plugin: &str, stream: GuestStream, line: &str) {
    match stream {
        GuestStream::Stdout => {
            tracing::info!(target: "wasmill::guest", plugin, stream = stream.name(), "{line}")
        }
        GuestStream::Stderr => {
            tracing::warn!(target: "wasmill::guest", plugin, stream = stream.name(), "{line}")
        }
    }
}

impl LineLogger {
    fn new(plugin: Arc<str>, stream: GuestStream) -> Self {
        LineLogger {
            plugin,
            stream,
            pending: Vec::new(),
            sink: log_line,
        }
    }

    fn emit(&mut self, upto: usize) {
        let rest = self.pending.split_off(upto);
        let mut line = std::mem::replace(&mut self.pending, rest);
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        (self.sink)(&self.plugin, self.stream, &String::from_utf8_lossy(&line));
    }

    fn write(&mut self, mut buf: &[u8]) {
        while !buf.is_empty() {
            let room = MAX_LINE - self.pending.len();
            let take = buf.len().min(room);
            let (head, tail) = buf.split_at(take);
            match head.iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    self.pending.extend_from_slice(&head[..=nl]);
                    self.emit(self.pending.len());
                    buf = &buf[nl + 1..];
                }
                None => {
                    self.pending.extend_from_slice(head);
                    if self.pending.len() >= MAX_LINE {
                        self.emit(MAX_LINE);
                    }
                    buf = tail;
                }
            }
        }
    }
}

impl AsyncWrite for LineLogger {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.write(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if !self.pending.is_empty() {
            let n = self.pending.len();
            self.emit(n);
        }
        Poll::Ready(Ok(()))
    }
}

#[async_trait::async_trait]
impl Pollable for LineLogger {
    /// Always ready: a write is logged before it returns.
    async fn ready(&mut self) {}
}

impl OutputStream for LineLogger {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        LineLogger::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

impl Drop for LineLogger {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            let n = self.pending.len();
            self.emit(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

    fn record(plugin: &str, stream: GuestStream, line: &str) {
        LINES
            .lock()
            .unwrap()
            .push(format!("{plugin}/{}: {line}", stream.name()));
    }

    /// The lines recorded for `plugin` (the tests run in parallel and share [`LINES`]).
    fn recorded_for(plugin: &str) -> Vec<String> {
        let prefix = format!("{plugin}/");
        let lines = LINES.lock().unwrap();
        lines
            .iter()
            .filter(|l| l.starts_with(&prefix))
            .cloned()
            .collect()
    }

    #[test]
    fn splits_lines_cuts_long_ones_and_flushes_the_rest_on_drop() {
        let mut l = LineLogger::new("p".into(), GuestStream::Stdout);
        l.sink = record;
        l.write(b"hello\nwor");
        l.write(b"ld\r\n");
        l.write(&vec![b'x'; MAX_LINE + 10]);
        l.write(b"tail");
        drop(l);
        let lines = recorded_for("p");
        assert_eq!(lines[0], "p/stdout: hello");
        assert_eq!(lines[1], "p/stdout: world");
        assert_eq!(lines[2].len(), "p/stdout: ".len() + MAX_LINE);
        assert_eq!(lines[3], format!("p/stdout: {}tail", "x".repeat(10)));
        assert_eq!(lines.len(), 4);
    }

    #[test]
    fn the_wasi_stream_logs_at_once_and_is_always_ready() {
        use futures::FutureExt;
        let mut l = LineLogger::new("q".into(), GuestStream::Stderr);
        l.sink = record;
        assert_eq!(OutputStream::check_write(&mut l).unwrap(), WRITE_PERMIT);
        OutputStream::write(&mut l, Bytes::from_static(b"oops\n")).unwrap();
        // Blocking operations complete on their first poll: nothing is left to wait for.
        l.blocking_write_and_flush(Bytes::from_static(b"again\n"))
            .now_or_never()
            .expect("ready at once")
            .unwrap();
        assert!(l.ready().now_or_never().is_some());
        let lines = recorded_for("q");
        assert_eq!(lines, ["q/stderr: oops", "q/stderr: again"]);
    }
}
