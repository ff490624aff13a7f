//! Recoverer: a panic in the rest of the chain becomes a handler error (kind `Panic`) that
//! carries the panic's message, where it happened and the stack trace, as Watermill's
//! `RecoveredPanicError` does. The message is then nacked like any failed one.
//!
//! The stack trace is taken by a panic hook installed once per process: while a Recoverer
//! polls its chain, the hook records the backtrace of a panic on that thread (instead of
//! printing it) and the Recoverer puts it in the error. Panics elsewhere reach the hook that
//! was there before.

use std::backtrace::Backtrace;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Once};
use std::task::{Context, Poll};

use async_trait::async_trait;
use futures::FutureExt;

use crate::error::{ErrorKind, HandlerError};
use crate::message::Message;
use crate::router::{BoxHandler, Handler, HandlerResult, Middleware, panic_message};

/// Recoverer: a panic in the rest of the chain becomes a handler error with a stack trace.
#[derive(Debug, Clone, Copy, Default)]
pub struct Recoverer;

thread_local! {
    /// How many Recoverers are polling their chain on this thread right now.
    static RECOVERING: Cell<usize> = const { Cell::new(0) };
    /// Where the last panic caught under a Recoverer on this thread happened, and its trace.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

static HOOK: Once = Once::new();

fn install_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if RECOVERING.with(Cell::get) > 0 {
                let at = info
                    .location()
                    .map(|l| format!("at {}:{}:{}\n", l.file(), l.line(), l.column()))
                    .unwrap_or_default();
                let trace = format!("{at}stack backtrace:\n{}", Backtrace::force_capture());
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(trace));
            } else {
                previous(info);
            }
        }));
    });
}

/// Marks the thread as recovering while the inner future is polled (also on unwind).
struct Marked<F>(F);

struct Mark;
impl Mark {
    fn enter() -> Mark {
        RECOVERING.with(|r| r.set(r.get() + 1));
        Mark
    }
}
impl Drop for Mark {
    fn drop(&mut self) {
        RECOVERING.with(|r| r.set(r.get().saturating_sub(1)));
    }
}

impl<F: Future + Unpin> Future for Marked<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _mark = Mark::enter();
        Pin::new(&mut self.0).poll(cx)
    }
}

struct Recovering(BoxHandler);

#[async_trait]
impl Handler for Recovering {
    async fn handle(&self, msg: Message) -> HandlerResult {
        LAST_PANIC.with(|p| p.borrow_mut().take());
        let chain = Marked(self.0.handle(msg));
        match AssertUnwindSafe(chain).catch_unwind().await {
            Ok(result) => result,
            Err(panic) => {
                let trace = LAST_PANIC
                    .with(|p| p.borrow_mut().take())
                    .unwrap_or_else(|| "stack backtrace: unavailable".into());
                Err(HandlerError::with_kind(
                    ErrorKind::Panic,
                    format!("panic: {}\n{trace}", panic_message(&*panic)),
                ))
            }
        }
    }

    /// The batch together; if it panics, each message again on its own, so only the
    /// message(s) that panic alone fail.
    async fn handle_batch(&self, msgs: Vec<Message>) -> Vec<HandlerResult> {
        let chain = Marked(self.0.handle_batch(msgs.clone()));
        if let Ok(results) = AssertUnwindSafe(chain).catch_unwind().await {
            return results;
        }
        LAST_PANIC.with(|p| p.borrow_mut().take());
        let mut out = Vec::with_capacity(msgs.len());
        for msg in msgs {
            out.push(self.handle(msg).await);
        }
        out
    }
}

impl Middleware for Recoverer {
    fn wrap(&self, next: BoxHandler) -> BoxHandler {
        install_hook();
        Arc::new(Recovering(next))
    }
    fn name(&self) -> &str {
        "recoverer"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::handler_fn;

    #[inline(never)]
    fn explode_in_a_named_function() -> ! {
        panic!("kaboom")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_becomes_an_error_with_message_location_and_stack_trace() {
        let h = Recoverer.wrap(handler_fn(|_m| async { explode_in_a_named_function() }));
        let e = h.handle(Message::new("x")).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Panic);
        let text = e.to_string();
        assert!(text.starts_with("panic: kaboom\nat "), "{text}");
        assert!(text.contains("recoverer.rs"), "{text}");
        assert!(text.contains("stack backtrace:"), "{text}");
        assert!(text.contains("explode_in_a_named_function"), "{text}");
        // The chain still works for the next message, and a success passes through untouched.
        let ok = Recoverer.wrap(handler_fn(|m: Message| async move { Ok(vec![m]) }));
        assert_eq!(ok.handle(Message::new("y")).await.unwrap().len(), 1);
    }
}
