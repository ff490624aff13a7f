//! Deduplicator: drops (acks) a message whose key was handled successfully within a time
//! window.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::message::Message;
use crate::router::{BoxHandler, Handler, HandlerResult, Middleware};

/// How a message's deduplication key is computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyFactory {
    /// Adler-32 of the payload (Watermill's default: fast, collisions possible).
    PayloadAdler32,
    /// SHA-256 of the payload.
    PayloadSha256,
    /// The value of a metadata key (messages without it are never duplicates).
    Metadata(String),
}

impl KeyFactory {
    /// The key of `msg`, if it has one.
    pub fn key(&self, msg: &Message) -> Option<String> {
        match self {
            KeyFactory::PayloadAdler32 => {
                let mut a = adler2::Adler32::new();
                a.write_slice(&msg.payload);
                Some(format!("{:08x}", a.checksum()))
            }
            KeyFactory::PayloadSha256 => Some(hex::encode(Sha256::digest(&msg.payload))),
            KeyFactory::Metadata(k) => msg.metadata.get_opt(k).map(str::to_string),
        }
    }
}

/// Keys handled recently, each remembered for `window`, at most `capacity` of them (the
/// oldest are forgotten first, so memory is bounded).
#[derive(Debug)]
pub struct ExpiringKeys {
    window: Duration,
    capacity: usize,
    seen: HashMap<String, Instant>,
    order: VecDeque<(Instant, String)>,
}

impl ExpiringKeys {
    /// A store remembering keys for `window`, up to `capacity` keys.
    pub fn new(window: Duration, capacity: usize) -> Self {
        ExpiringKeys {
            window,
            capacity: capacity.max(1),
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Forgets the keys older than the window, and the oldest ones beyond the capacity (with
    /// room for one more).
    fn expire(&mut self, now: Instant) {
        while let Some((t, k)) = self.order.front() {
            if now.duration_since(*t) < self.window && self.order.len() < self.capacity {
                break;
            }
            if self.seen.get(k) == Some(t) {
                self.seen.remove(k);
            }
            self.order.pop_front();
        }
    }

    /// Whether `key` was recorded within the window.
    pub fn contains(&mut self, key: &str) -> bool {
        self.expire(Instant::now());
        self.seen.contains_key(key)
    }

    /// Records `key` (again) from now on.
    pub fn insert(&mut self, key: String) {
        let now = Instant::now();
        self.expire(now);
        self.seen.insert(key.clone(), now);
        self.order.push_back((now, key));
    }

    /// Records `key`; returns `false` when it was already recorded within the window.
    pub fn insert_if_absent(&mut self, key: String) -> bool {
        if self.contains(&key) {
            return false;
        }
        self.insert(key);
        true
    }
}

/// The keys handled successfully (remembered for the window) and the keys being handled right
/// now (each with a channel that closes when that handling ends, successfully or not).
#[derive(Debug)]
struct Keys {
    done: ExpiringKeys,
    in_progress: HashMap<String, watch::Sender<()>>,
}

/// Acks without handling a message whose key was handled successfully in the last `window`.
///
/// A key is remembered only once the rest of the chain returned success: a message whose
/// handling failed is nacked as usual, and its redelivery is handled again, not dropped. A
/// duplicate that arrives while the first copy is still being handled waits for it: if the
/// first succeeds, the duplicate is dropped; if it fails, the duplicate is handled.
#[derive(Clone)]
pub struct Deduplicator {
    keys: KeyFactory,
    store: Arc<Mutex<Keys>>,
}

impl Deduplicator {
    /// Deduplicates by `keys` over `window` (Watermill's default is one minute).
    pub fn new(keys: KeyFactory, window: Duration) -> Self {
        Deduplicator {
            keys,
            store: Arc::new(Mutex::new(Keys {
                done: ExpiringKeys::new(window, 1_000_000),
                in_progress: HashMap::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Keys> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims `key` for handling, or says it is a duplicate (`None`). Waits while another
    /// copy of the message is being handled.
    async fn claim(&self, key: &str) -> Option<Claim<'_>> {
        loop {
            let mut ended: watch::Receiver<()> = {
                let mut keys = self.lock();
                if keys.done.contains(key) {
                    return None;
                }
                match keys.in_progress.get(key) {
                    Some(running) => running.subscribe(),
                    None => {
                        keys.in_progress
                            .insert(key.to_string(), watch::channel(()).0);
                        return Some(Claim {
                            d: self,
                            key: key.to_string(),
                            succeeded: false,
                        });
                    }
                }
            };
            // Resolves (with an error) when the other copy's claim is dropped.
            let _ = ended.changed().await;
        }
    }
}

/// The right to handle a key; releases it when dropped (also when the handling future is
/// cancelled), remembering the key only if the handling succeeded.
struct Claim<'a> {
    d: &'a Deduplicator,
    key: String,
    succeeded: bool,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut keys = self.d.lock();
        if self.succeeded {
            keys.done.insert(self.key.clone());
        }
        // Dropping the sender wakes the copies waiting for this one.
        keys.in_progress.remove(&self.key);
    }
}

struct Deduplicating {
    d: Deduplicator,
    next: BoxHandler,
}

#[async_trait]
impl Handler for Deduplicating {
    async fn handle(&self, msg: Message) -> HandlerResult {
        let Some(key) = self.d.keys.key(&msg) else {
            return self.next.handle(msg).await;
        };
        let Some(mut claim) = self.d.claim(&key).await else {
            tracing::debug!(uuid = %msg.uuid, "duplicate dropped");
            return Ok(vec![]);
        };
        let result = self.next.handle(msg).await;
        claim.succeeded = result.is_ok();
        result
    }
}

impl Middleware for Deduplicator {
    fn wrap(&self, next: BoxHandler) -> BoxHandler {
        Arc::new(Deduplicating {
            d: self.clone(),
            next,
        })
    }
    fn name(&self) -> &str {
        "deduplicator"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::HandlerError;
    use crate::router::handler_fn;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn drops_duplicates_within_the_window_only() {
        let n = Arc::new(AtomicUsize::new(0));
        let c = n.clone();
        let h = Deduplicator::new(KeyFactory::PayloadAdler32, Duration::from_secs(60)).wrap(
            handler_fn(move |_m| {
                c.fetch_add(1, Ordering::SeqCst);
                async { Ok(vec![]) }
            }),
        );
        h.handle(Message::new("a")).await.unwrap();
        h.handle(Message::new("a")).await.unwrap();
        h.handle(Message::new("b")).await.unwrap();
        assert_eq!(n.load(Ordering::SeqCst), 2);
        tokio::time::advance(Duration::from_secs(61)).await;
        h.handle(Message::new("a")).await.unwrap();
        assert_eq!(n.load(Ordering::SeqCst), 3, "forgotten after the window");
    }

    #[test]
    fn key_factories() {
        let m = Message::new("p").with_metadata("id", "7");
        assert_eq!(
            KeyFactory::Metadata("id".into()).key(&m).as_deref(),
            Some("7")
        );
        assert_eq!(KeyFactory::Metadata("nope".into()).key(&m), None);
        assert_eq!(KeyFactory::PayloadSha256.key(&m).unwrap().len(), 64);
        assert_ne!(
            KeyFactory::PayloadAdler32.key(&m),
            KeyFactory::PayloadAdler32.key(&Message::new("q"))
        );
    }

    /// A handler counting its calls that fails the first `fail_first` of them.
    fn failing_first(fail_first: usize, calls: Arc<AtomicUsize>) -> BoxHandler {
        handler_fn(move |_m| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < fail_first {
                    Err(HandlerError::new("transient failure"))
                } else {
                    Ok(vec![])
                }
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_whose_handling_failed_is_handled_again_when_it_comes_back() {
        let calls = Arc::new(AtomicUsize::new(0));
        let h = Deduplicator::new(KeyFactory::PayloadSha256, Duration::from_secs(60))
            .wrap(failing_first(1, calls.clone()));
        assert!(
            h.handle(Message::new("a")).await.is_err(),
            "first try fails"
        );
        // The redelivery (same key) must reach the handler, not be acked as a duplicate.
        h.handle(Message::new("a")).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2, "the retry was handled");
        // Handled successfully now: a later copy is a duplicate.
        h.handle(Message::new("a")).await.unwrap();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "duplicate of a handled message"
        );
    }

    /// A handler that counts its calls, then waits for a verdict per call.
    fn gated(
        calls: Arc<AtomicUsize>,
    ) -> (
        BoxHandler,
        tokio::sync::mpsc::UnboundedReceiver<tokio::sync::oneshot::Sender<bool>>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let h = handler_fn(move |_m| {
            calls.fetch_add(1, Ordering::SeqCst);
            let (verdict_tx, verdict_rx) = tokio::sync::oneshot::channel::<bool>();
            let _ = tx.send(verdict_tx);
            async move {
                match verdict_rx.await {
                    Ok(true) => Ok(vec![]),
                    _ => Err(HandlerError::new("failed")),
                }
            }
        });
        (h, rx)
    }

    /// The verdict channel of the next call of a [`gated`] handler; fails the test if the
    /// handler is not called.
    async fn next_call(
        calls: &mut tokio::sync::mpsc::UnboundedReceiver<tokio::sync::oneshot::Sender<bool>>,
    ) -> tokio::sync::oneshot::Sender<bool> {
        tokio::time::timeout(Duration::from_secs(30), calls.recv())
            .await
            .expect("the handler was not called")
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_duplicate_in_flight_waits_and_is_dropped_when_the_first_succeeds() {
        let calls = Arc::new(AtomicUsize::new(0));
        let (inner, mut verdicts) = gated(calls.clone());
        let h = Deduplicator::new(KeyFactory::PayloadSha256, Duration::from_secs(60)).wrap(inner);
        let first = tokio::spawn({
            let h = h.clone();
            async move { h.handle(Message::new("a")).await }
        });
        let first_verdict = next_call(&mut verdicts).await;
        let second = tokio::spawn({
            let h = h.clone();
            async move { h.handle(Message::new("a")).await }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "the copy waits for the first"
        );
        assert!(!second.is_finished(), "the copy waits for the first");
        first_verdict.send(true).unwrap();
        first.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1, "the copy was dropped");
    }

    #[tokio::test(start_paused = true)]
    async fn a_duplicate_in_flight_is_handled_when_the_first_fails() {
        let calls = Arc::new(AtomicUsize::new(0));
        let (inner, mut verdicts) = gated(calls.clone());
        let h = Deduplicator::new(KeyFactory::PayloadSha256, Duration::from_secs(60)).wrap(inner);
        let first = tokio::spawn({
            let h = h.clone();
            async move { h.handle(Message::new("a")).await }
        });
        let first_verdict = next_call(&mut verdicts).await;
        let second = tokio::spawn({
            let h = h.clone();
            async move { h.handle(Message::new("a")).await }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "the copy waits for the first"
        );
        first_verdict.send(false).unwrap();
        assert!(first.await.unwrap().is_err());
        // The copy now runs the handler itself.
        next_call(&mut verdicts).await.send(true).unwrap();
        second.await.unwrap().unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2, "the copy was handled");
        h.handle(Message::new("a")).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2, "then remembered");
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_handling_releases_its_key() {
        let calls = Arc::new(AtomicUsize::new(0));
        let (inner, mut verdicts) = gated(calls.clone());
        let h = Deduplicator::new(KeyFactory::PayloadSha256, Duration::from_secs(60)).wrap(inner);
        // A timeout outside the deduplicator drops the handling future.
        let timed_out =
            tokio::time::timeout(Duration::from_secs(1), h.handle(Message::new("a"))).await;
        assert!(timed_out.is_err());
        drop(next_call(&mut verdicts).await);
        let again = tokio::spawn({
            let h = h.clone();
            async move { h.handle(Message::new("a")).await }
        });
        next_call(&mut verdicts).await.send(true).unwrap();
        again.await.unwrap().unwrap();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "handled again, not left waiting"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn capacity_bounds_memory() {
        let mut k = ExpiringKeys::new(Duration::from_secs(60), 3);
        for i in 0..10 {
            assert!(k.insert_if_absent(i.to_string()));
        }
        assert!(k.seen.len() <= 3);
    }
}
