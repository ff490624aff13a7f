//! Poison topics kept until they are replayed.
//!
//! A durable backend keeps a poison topic's messages in its own storage once the topic's
//! queue or consumer group exists, so for those [`PoisonKeeper::watch`] only initialises the
//! subscription (`subscribe_initialize`), at the time the handler starts, so that nothing
//! poisoned before the first replay is missed. The in-memory backend keeps nothing a topic
//! has no subscriber for (Watermill's GoChannel semantics); for it the keeper subscribes and
//! holds the poisoned messages itself, at most `capacity` per topic (the oldest dropped past
//! it, counted and logged), until [`PoisonKeeper::take`] hands them to a replay.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;

use crate::message::Message;
use crate::pubsub::registry::Backend;

/// The default number of messages held per in-memory poison topic.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// A topic: (backend name, topic name).
type TopicKey = (String, String);

#[derive(Default)]
struct Kept {
    messages: Mutex<VecDeque<Message>>,
    dropped: AtomicU64,
}

/// The poison topics of the host's handlers, kept for replay (see the module doc).
pub struct PoisonKeeper {
    capacity: usize,
    /// Every watched topic; `None` for a durable backend's (the backend keeps it).
    kept: Mutex<HashMap<TopicKey, Option<Arc<Kept>>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl PoisonKeeper {
    /// A keeper holding at most `capacity` messages per in-memory poison topic.
    pub fn new(capacity: usize) -> Arc<PoisonKeeper> {
        Arc::new(PoisonKeeper {
            capacity: capacity.max(1),
            kept: Mutex::default(),
            tasks: Mutex::default(),
        })
    }

    /// Makes sure what is poisoned to `topic` on `backend` from now on can be replayed. Called
    /// for each handler's poison topic when the handler starts; once per topic is enough.
    pub fn watch(self: &Arc<Self>, backend: &Backend, topic: &str) {
        let key = (backend.name.clone(), topic.to_string());
        let in_memory = backend.kind == "memory";
        let kept = Arc::new(Kept::default());
        {
            let mut map = self.kept.lock().unwrap();
            if map.contains_key(&key) {
                return;
            }
            map.insert(key, in_memory.then(|| kept.clone()));
        }
        let sub = backend.subscriber.clone();
        let topic = topic.to_string();
        let task = if in_memory {
            let capacity = self.capacity;
            tokio::spawn(async move {
                let mut s = match sub.subscribe(&topic).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(topic, "cannot keep the poison topic for replay: {e}");
                        return;
                    }
                };
                while let Some(msg) = s.recv().await {
                    kept.push(msg.copy(), capacity, &topic);
                    msg.ack();
                }
            })
        } else {
            tokio::spawn(async move {
                if let Err(e) = sub.subscribe_initialize(&topic).await {
                    tracing::warn!(topic, "cannot initialise the poison topic: {e}");
                }
            })
        };
        self.tasks.lock().unwrap().push(task);
    }

    /// Takes up to `limit` (all when `None`) messages held for `topic` of `backend`, oldest
    /// first; `None` when the keeper does not hold that topic (a durable backend's topic is
    /// read from the backend).
    pub fn take(&self, backend: &str, topic: &str, limit: Option<usize>) -> Option<Vec<Message>> {
        let kept = self.held(backend, topic)?;
        let mut q = kept.messages.lock().unwrap();
        let n = limit.unwrap_or(usize::MAX).min(q.len());
        Some(q.drain(..n).collect())
    }

    /// Puts messages a replay could not send back in front, in their order.
    pub fn put_back(&self, backend: &str, topic: &str, messages: Vec<Message>) {
        if let Some(kept) = self.held(backend, topic) {
            let mut q = kept.messages.lock().unwrap();
            for m in messages.into_iter().rev() {
                q.push_front(m);
            }
        }
    }

    /// Messages held for `topic` of `backend`, and how many were dropped past the capacity.
    pub fn counts(&self, backend: &str, topic: &str) -> Option<(usize, u64)> {
        let kept = self.held(backend, topic)?;
        let n = kept.messages.lock().unwrap().len();
        Some((n, kept.dropped.load(Ordering::Relaxed)))
    }

    fn held(&self, backend: &str, topic: &str) -> Option<Arc<Kept>> {
        let map = self.kept.lock().unwrap();
        map.get(&(backend.to_string(), topic.to_string()))?.clone()
    }
}

impl Kept {
    fn push(&self, msg: Message, capacity: usize, topic: &str) {
        let mut q = self.messages.lock().unwrap();
        if q.len() >= capacity {
            q.pop_front();
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    topic,
                    dropped = n,
                    "poison topic holds {capacity} messages: the oldest are dropped (replay it)"
                );
            }
        }
        q.push_back(msg);
    }
}

impl Drop for PoisonKeeper {
    /// Stops keeping: the subscriptions end with the keeper.
    fn drop(&mut self) {
        for t in self.tasks.get_mut().unwrap().drain(..) {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::pubsub::registry;

    async fn memory_backend() -> Backend {
        registry::connect("memory", "memory", &toml::Table::new())
            .await
            .unwrap()
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    #[tokio::test]
    async fn an_in_memory_poison_topic_is_held_bounded_and_taken_in_order() {
        let b = memory_backend().await;
        let keeper = PoisonKeeper::new(3);
        keeper.watch(&b, "t.poison");
        keeper.watch(&b, "t.poison"); // once is enough
        settle().await;
        for i in 0..5 {
            b.publisher
                .publish("t.poison", vec![Message::with_uuid(format!("m{i}"), "x")])
                .await
                .unwrap();
        }
        settle().await;
        assert_eq!(keeper.counts("memory", "t.poison"), Some((3, 2)));
        let got = keeper.take("memory", "t.poison", Some(2)).unwrap();
        let uuids: Vec<_> = got.iter().map(|m| m.uuid.as_str()).collect();
        assert_eq!(uuids, ["m2", "m3"]);
        keeper.put_back("memory", "t.poison", got);
        let all = keeper.take("memory", "t.poison", None).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].uuid, "m2");
        assert!(keeper.take("memory", "other", None).is_none());
    }
}
