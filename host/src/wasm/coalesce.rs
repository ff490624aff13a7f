//! `batch = N`: messages handled one by one by the router, handed to the guest together.
//!
//! Each message still runs through its own middleware chain (Retry, Timeout, the failure
//! policy and `{ wasm }` middleware act per message); only the innermost step, the handler
//! component's call, is shared. A message arriving at that step joins a queue; one driver
//! task at a time takes up to N queued messages, calls the guest's `handle-batch` once, and
//! hands each message its own result. While a batch runs, the next one gathers, so batches
//! fill under load and a lone message never waits for company (no timer, no added latency at
//! low load). The router keeps up to `max(concurrency, N)` messages in flight so that there
//! are N to gather.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::instance::InstancePool;
use crate::error::{ErrorKind, HandlerError};
use crate::message::Message;
use crate::router::HandlerResult;

struct Waiting {
    msg: Message,
    reply: oneshot::Sender<HandlerResult>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Waiting>,
    /// A driver task is running (it takes what is queued until the queue is empty).
    driving: bool,
}

/// Gathers messages into `handle-batch` calls of at most `max` (see the module doc).
pub struct Coalescer {
    pool: Arc<InstancePool>,
    max: usize,
    queue: Mutex<Queue>,
    /// Guest calls made (batches run).
    calls: AtomicU64,
}

impl Coalescer {
    /// Batches of at most `max` messages, run in `pool`.
    pub fn new(pool: Arc<InstancePool>, max: usize) -> Arc<Coalescer> {
        Arc::new(Coalescer {
            pool,
            max: max.max(1),
            queue: Mutex::default(),
            calls: AtomicU64::new(0),
        })
    }

    /// The largest batch.
    pub fn max(&self) -> usize {
        self.max
    }

    /// How many batches (guest calls) ran so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Handles `msg` in the next batch; its own result.
    pub async fn handle(self: &Arc<Self>, msg: Message) -> HandlerResult {
        let (reply, result) = oneshot::channel();
        let start = {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.waiting.push_back(Waiting { msg, reply });
            !std::mem::replace(&mut q.driving, true)
        };
        if start {
            // A task of its own: the batch runs to its end even if the caller that started
            // it is dropped (a Timeout middleware gave up on its message).
            let me = self.clone();
            tokio::spawn(async move { me.drive().await });
        }
        result.await.unwrap_or_else(|_| {
            Err(HandlerError::with_kind(
                ErrorKind::Trap,
                "the batch this message was in ended without a result",
            ))
        })
    }

    async fn drive(&self) {
        // Should a batch panic, the queue is not left with a driver that is gone.
        struct Done<'a>(&'a Mutex<Queue>);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
                    q.driving = false;
                }
            }
        }
        let _done = Done(&self.queue);
        loop {
            let batch: Vec<Waiting> = {
                let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                if q.waiting.is_empty() {
                    q.driving = false;
                    return;
                }
                let n = q.waiting.len().min(self.max);
                q.waiting.drain(..n).collect()
            };
            let msgs: Vec<Message> = batch.iter().map(|w| w.msg.clone()).collect();
            self.calls.fetch_add(1, Ordering::Relaxed);
            let results = self.pool.call_batch(&msgs).await;
            for (w, r) in batch.into_iter().zip(results) {
                let _ = w.reply.send(r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wasm::tests::pool;
    use crate::wasm::{Grants, Limits};

    #[tokio::test]
    async fn messages_in_flight_share_calls_and_each_gets_its_own_result() {
        let p = pool("json-enrich", Limits::default(), Grants::default()).await;
        let c = Coalescer::new(p, 16);
        // 200 messages in flight at once (a backlog): all queued before the driver runs.
        let calls = (0..200).map(|i| {
            let c = c.clone();
            let body = if i % 50 == 7 {
                "{broken".to_string()
            } else {
                format!("{{\"i\":{i}}}")
            };
            async move { (i, c.handle(Message::new(body)).await) }
        });
        for (i, r) in futures::future::join_all(calls).await {
            if i % 50 == 7 {
                assert!(r.unwrap_err().reason().starts_with("invalid json"));
            } else {
                let out = r.unwrap();
                let v: serde_json::Value = serde_json::from_slice(&out[0].payload).unwrap();
                assert_eq!(v["i"], i, "{v}");
            }
        }
        assert_eq!(c.calls(), 200_u64.div_ceil(16), "batches of 16");
    }

    #[tokio::test]
    async fn a_lone_message_does_not_wait_for_company() {
        let p = pool("passthrough", Limits::default(), Grants::default()).await;
        let c = Coalescer::new(p, 64);
        let got = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            c.handle(Message::with_uuid("alone", "x")),
        )
        .await
        .expect("waited for a full batch");
        assert_eq!(got.unwrap()[0].uuid, "alone");
        assert_eq!(c.calls(), 1);
    }
}
