//! The plugins folder's events, one queue per plugin: the events of a plugin (its `.wasm` and
//! its `.toml` sidecar) are handled in order, one at a time; different plugins' events are
//! handled concurrently, so a slow stop of one plugin (waiting for its in-flight messages)
//! never delays another plugin's reload.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::mpsc;

use super::manager::{PluginManager, lock};
use super::watch::FileEvent;

/// Handles one event.
pub(super) type EventHandler = Arc<dyn Fn(FileEvent) -> BoxFuture<'static, ()> + Send + Sync>;

/// Spreads events over per-plugin queues. A queue's task exists only while the queue holds
/// events: it takes the next event under the same lock `send` uses, and removes its queue
/// when it finds none, so no event is lost and none overtakes another of its plugin.
#[derive(Clone)]
pub(super) struct Queues {
    queues: Arc<Mutex<HashMap<PathBuf, mpsc::UnboundedSender<FileEvent>>>>,
    handle: EventHandler,
}

impl Queues {
    /// Queues that run `handle` on each event.
    pub(super) fn new(handle: EventHandler) -> Self {
        Queues {
            queues: Arc::new(Mutex::new(HashMap::new())),
            handle,
        }
    }

    /// Queues `event` behind the earlier events of its plugin.
    pub(super) fn send(&self, event: FileEvent) {
        // `x.wasm` and `x.toml` share the queue `x`.
        let key = event.path().with_extension("");
        let mut queues = lock(&self.queues);
        let event = match queues.get(&key) {
            Some(tx) => match tx.send(event) {
                Ok(()) => return,
                Err(mpsc::error::SendError(event)) => event,
            },
            None => event,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(event);
        queues.insert(key.clone(), tx);
        tokio::spawn(self.clone().drain(key, rx));
    }

    async fn drain(self, key: PathBuf, mut rx: mpsc::UnboundedReceiver<FileEvent>) {
        loop {
            let event = {
                let mut queues = lock(&self.queues);
                match rx.try_recv() {
                    Ok(event) => event,
                    Err(_) => {
                        queues.remove(&key);
                        return;
                    }
                }
            };
            (self.handle)(event).await;
        }
    }
}

impl PluginManager {
    /// Handles the plugins folder's `events` (from [`watch`](super::watch::watch)) until they
    /// end: per plugin in order, across plugins concurrently.
    pub fn watch(self: &Arc<Self>, mut events: mpsc::Receiver<FileEvent>) {
        let (requeue_tx, mut requeue) = mpsc::unbounded_channel();
        if self.requeue.set(requeue_tx).is_err() {
            tracing::warn!("the plugins folder is already watched");
        }
        let manager = self.clone();
        let queues = Queues::new(Arc::new(move |event| {
            let manager = manager.clone();
            async move { manager.on_event(event).await }.boxed()
        }));
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    e = events.recv() => match e {
                        Some(e) => e,
                        None => return,
                    },
                    Some(e) = requeue.recv() => e,
                };
                queues.send(event);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::oneshot;

    fn ready(name: &str) -> FileEvent {
        FileEvent::Ready(PathBuf::from("plugins").join(name))
    }

    #[tokio::test]
    async fn a_slow_event_of_one_plugin_does_not_hold_another_plugins() {
        let (release_tx, release_rx) = oneshot::channel::<()>();
        let release_rx = Arc::new(Mutex::new(Some(release_rx)));
        let (done_tx, mut done) = mpsc::unbounded_channel::<PathBuf>();
        let queues = Queues::new(Arc::new(move |event: FileEvent| {
            let release_rx = release_rx.clone();
            let done_tx = done_tx.clone();
            async move {
                if event.path().ends_with("slow.wasm") {
                    // Held until the test says so: a stop waiting for in-flight messages.
                    let rx = lock(&release_rx).take().expect("slow handled once");
                    let _ = rx.await;
                }
                let _ = done_tx.send(event.path().to_path_buf());
            }
            .boxed()
        }));
        queues.send(ready("slow.wasm"));
        queues.send(ready("fast.wasm"));
        let first = tokio::time::timeout(Duration::from_secs(10), done.recv())
            .await
            .expect("fast.wasm waited for slow.wasm")
            .unwrap();
        assert!(first.ends_with("fast.wasm"), "{first:?}");
        release_tx.send(()).unwrap();
        let second = done.recv().await.unwrap();
        assert!(second.ends_with("slow.wasm"), "{second:?}");
    }

    #[tokio::test]
    async fn one_plugins_events_stay_in_order() {
        let (done_tx, mut done) = mpsc::unbounded_channel::<FileEvent>();
        let queues = Queues::new(Arc::new(move |event: FileEvent| {
            let done_tx = done_tx.clone();
            async move {
                // The first event is the slowest: a later one must still wait for it.
                if event == ready("p.wasm") {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let _ = done_tx.send(event);
            }
            .boxed()
        }));
        let sent = vec![
            ready("p.wasm"),
            ready("p.toml"),
            FileEvent::Removed(PathBuf::from("plugins/p.wasm")),
            ready("p.wasm"),
        ];
        for e in &sent {
            queues.send(e.clone());
        }
        let mut got = Vec::new();
        for _ in 0..sent.len() {
            got.push(
                tokio::time::timeout(Duration::from_secs(10), done.recv())
                    .await
                    .expect("event handled")
                    .unwrap(),
            );
        }
        assert_eq!(got, sent);
        // The queue's task ended with its last event.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(lock(&queues.queues).is_empty(), "idle queue kept");
    }
}
