//! Acknowledgements sent in the background, many per round trip.
//!
//! A backend whose ack is a command to the server (Redis `XACK`, an offset `UPDATE`) would
//! otherwise pay one round trip per message before it may deliver the next. An
//! [`AckBatcher`] takes acks at once ([`AckBatcher::push`]) and a task of its own sends them:
//! whatever piled up while the previous batch was on the wire goes in the next one, up to
//! `max_batch`. Under light load that is one ack per batch, as before; under heavy load the
//! round trips are shared.
//!
//! At-least-once still holds: an ack that never reaches the server (the process dies, the
//! server is away) leaves the message pending, and the backend redelivers it. A failed flush
//! is logged by the backend's `flush` function. [`AckBatcher::finish`] sends what is left and
//! waits for it, so a subscription's last acks reach the server before it reports itself
//! ended.

use std::future::Future;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Sends acks of type `T` in batches from a task of its own.
#[derive(Debug)]
pub struct AckBatcher<T> {
    tx: Option<mpsc::UnboundedSender<T>>,
    task: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> AckBatcher<T> {
    /// Starts the task; `flush` sends one batch (never empty, at most `max_batch` long).
    pub fn spawn<F, Fut>(max_batch: usize, mut flush: F) -> Self
    where
        F: FnMut(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let max_batch = max_batch.max(1);
        let (tx, mut rx) = mpsc::unbounded_channel::<T>();
        let task = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(max_batch);
            while rx.recv_many(&mut batch, max_batch).await > 0 {
                flush(std::mem::take(&mut batch)).await;
            }
        });
        AckBatcher {
            tx: Some(tx),
            task: Some(task),
        }
    }

    /// Queues one ack; it is sent with the next batch.
    pub fn push(&self, ack: T) {
        if let Some(tx) = &self.tx {
            // The task only ends after `finish`, which takes `self`: the send cannot fail.
            let _ = tx.send(ack);
        }
    }

    /// Sends every queued ack and waits until the last batch was flushed.
    pub async fn finish(mut self) {
        self.tx = None;
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    #[tokio::test]
    async fn acks_pushed_while_a_batch_is_in_flight_share_the_next_batch() {
        let batches: Arc<Mutex<Vec<Vec<u32>>>> = Arc::default();
        let seen = batches.clone();
        let batcher = AckBatcher::spawn(3, move |batch| {
            let seen = seen.clone();
            async move {
                // A slow round trip, so the following acks pile up behind it.
                tokio::time::sleep(Duration::from_millis(50)).await;
                seen.lock().unwrap().push(batch);
            }
        });
        batcher.push(1);
        tokio::time::sleep(Duration::from_millis(10)).await;
        for i in 2..=6 {
            batcher.push(i);
        }
        batcher.finish().await;
        let batches = batches.lock().unwrap().clone();
        assert_eq!(batches, vec![vec![1], vec![2, 3, 4], vec![5, 6]]);
    }

    #[tokio::test]
    async fn finish_with_nothing_queued_returns() {
        let batcher: AckBatcher<u8> = AckBatcher::spawn(10, |_| async {});
        batcher.finish().await;
    }
}
