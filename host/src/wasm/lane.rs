//! Where a long guest call runs: guest code that computes past its first epoch tick leaves the
//! host's async workers for the threads of a runtime of its own, so the HTTP API, the backends'
//! I/O and quick handlers keep their workers whatever the guests compute.
//!
//! A call starts on the caller's task, where a quick one (nearly all of them) also ends: no
//! thread hop on the message path. The epoch callback marks a call that is still computing
//! after [`LONG_CALL`] (`PluginState::on_epoch_tick` sets the instance's flag); at its next
//! yield the call's future — a suspended fiber, which may resume on any thread — is handed to
//! the guest runtime and awaited from there. While on the host's workers, an async guest yields
//! every [`YIELD_FUEL`](super::instance::YIELD_FUEL) of fuel, so even that first stretch is
//! shared with the tasks beside it.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::Duration;

/// How long a call computes on the caller's worker before it moves to the guest runtime.
pub const LONG_CALL: Duration = Duration::from_millis(1);

/// The runtime long guest calls finish on: as many threads as the machine has cores, made on
/// first use and kept for the life of the process.
fn guest_runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("wasmill-guest")
            .enable_all()
            .build()
            .expect("build the guest runtime")
    })
}

/// Aborts the task when dropped: a caller that gave up on a call (a Timeout middleware) stops
/// the guest at its next yield instead of leaving it to compute until its own deadline.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `call` on the caller's task until it finishes or `long` is set, then on the guest
/// runtime. `None` if the guest runtime dropped the call (it panicked or was aborted).
pub async fn run<F, T>(call: F, long: &AtomicBool) -> Option<T>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let mut call = Box::pin(call);
    let inline = std::future::poll_fn(|cx| match call.as_mut().poll(cx) {
        Poll::Ready(out) => Poll::Ready(Some(out)),
        Poll::Pending if long.load(Ordering::Relaxed) => Poll::Ready(None),
        Poll::Pending => Poll::Pending,
    })
    .await;
    if let Some(out) = inline {
        return Some(out);
    }
    let mut task = AbortOnDrop(guest_runtime().spawn(call));
    (&mut task.0).await.ok()
}

/// A flag shared by an instance's store (set by the epoch callback) and the pool (read while
/// the call is polled).
pub type LongCallFlag = Arc<AtomicBool>;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_flagged_call_finishes_on_the_guest_runtime() {
        let long = Arc::new(AtomicBool::new(false));
        let caller = std::thread::current().id();
        let flag = long.clone();
        let ran_on = run(
            async move {
                flag.store(true, Ordering::Relaxed);
                tokio::task::yield_now().await;
                std::thread::current().id()
            },
            &long,
        )
        .await
        .unwrap();
        assert_ne!(
            ran_on, caller,
            "the long call stayed on the caller's thread"
        );

        let quick = Arc::new(AtomicBool::new(false));
        let ran_on = run(async { std::thread::current().id() }, &quick)
            .await
            .unwrap();
        assert_eq!(ran_on, caller, "a quick call moved");
    }
}
