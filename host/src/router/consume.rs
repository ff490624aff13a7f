//! How a handler consumes its subscription: the next message (or the stop), batches of the
//! messages at hand, and per-key lanes.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::worker::Worker;
use crate::message::Message;
use crate::pubsub::Subscription;

pub(super) async fn next_message(
    sub: &mut Subscription,
    stop: &CancellationToken,
) -> Option<Message> {
    tokio::select! {
        biased;
        _ = stop.cancelled() => None,
        m = sub.recv() => m,
    }
}

/// Batches of up to `size` messages, `lanes` of them at a time (one: in order, in this task).
pub(super) async fn run_in_batches(
    sub: &mut Subscription,
    stop: &CancellationToken,
    worker: &Arc<Worker>,
    in_flight: &TaskTracker,
    lanes: usize,
    size: usize,
) {
    let permits = Arc::new(Semaphore::new(lanes));
    while let Some(first) = next_message(sub, stop).await {
        let mut batch = Vec::with_capacity(size);
        batch.push(first);
        while batch.len() < size {
            match sub.try_recv() {
                Some(m) => batch.push(m),
                None => break,
            }
        }
        if lanes <= 1 {
            worker.process_batch(batch).await;
            continue;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let worker = worker.clone();
        in_flight.spawn(async move {
            worker.process_batch(batch).await;
            drop(permit);
        });
    }
}

/// Concurrency with per-key order: one sequential lane per slot, a key always maps to one lane.
pub(super) async fn run_in_lanes(
    sub: &mut Subscription,
    stop: &CancellationToken,
    worker: &Arc<Worker>,
    in_flight: &TaskTracker,
    lanes: usize,
    key: &str,
) {
    let senders: Vec<mpsc::Sender<Message>> = (0..lanes)
        .map(|_| {
            let (tx, mut rx) = mpsc::channel::<Message>(1);
            let worker = worker.clone();
            in_flight.spawn(async move {
                while let Some(msg) = rx.recv().await {
                    worker.process(msg).await;
                }
            });
            tx
        })
        .collect();
    while let Some(msg) = next_message(sub, stop).await {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        msg.metadata.get(key).hash(&mut h);
        let lane = (h.finish() % lanes as u64) as usize;
        if senders[lane].send(msg).await.is_err() {
            break;
        }
    }
}
