//! Deduplicator: drops (acks) a message whose key was seen within a time window.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
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

/// Keys seen recently, each remembered for `window`, at most `capacity` of them (the oldest
/// are forgotten first, so memory is bounded).
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

    /// Records `key`; returns `false` when it was already seen within the window.
    pub fn insert_if_absent(&mut self, key: String) -> bool {
        let now = Instant::now();
        while let Some((t, k)) = self.order.front() {
            if now.duration_since(*t) < self.window && self.order.len() < self.capacity {
                break;
            }
            if self.seen.get(k) == Some(t) {
                self.seen.remove(k);
            }
            self.order.pop_front();
        }
        if self.seen.contains_key(&key) {
            return false;
        }
        self.seen.insert(key.clone(), now);
        self.order.push_back((now, key));
        true
    }
}

/// Drops messages whose key was seen in the last `window` (they are acked with no output).
#[derive(Clone)]
pub struct Deduplicator {
    keys: KeyFactory,
    store: Arc<Mutex<ExpiringKeys>>,
}

impl Deduplicator {
    /// Deduplicates by `keys` over `window` (Watermill's default is one minute).
    pub fn new(keys: KeyFactory, window: Duration) -> Self {
        Deduplicator {
            keys,
            store: Arc::new(Mutex::new(ExpiringKeys::new(window, 1_000_000))),
        }
    }
}

struct Deduplicating {
    d: Deduplicator,
    next: BoxHandler,
}

#[async_trait]
impl Handler for Deduplicating {
    async fn handle(&self, msg: Message) -> HandlerResult {
        if let Some(key) = self.d.keys.key(&msg) {
            let fresh = self
                .d
                .store
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert_if_absent(key);
            if !fresh {
                tracing::debug!(uuid = %msg.uuid, "duplicate dropped");
                return Ok(vec![]);
            }
        }
        self.next.handle(msg).await
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

    #[tokio::test(start_paused = true)]
    async fn capacity_bounds_memory() {
        let mut k = ExpiringKeys::new(Duration::from_secs(60), 3);
        for i in 0..10 {
            assert!(k.insert_if_absent(i.to_string()));
        }
        assert!(k.seen.len() <= 3);
    }
}
