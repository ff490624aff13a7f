//! A handler whose chain arrives after its subscription: the host subscribes a plugin's
//! handler at once and compiles the plugin behind it, so a message published while a large
//! component compiles waits in the subscription instead of going nowhere.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use tokio::sync::Notify;

use super::handler::{BoxHandler, Handler, HandlerResult};
use crate::error::{ErrorKind, HandlerError};
use crate::message::Message;

/// What the deferred handler ends up as: the chain, or why there is none.
enum Outcome {
    Ready(BoxHandler),
    Failed(String),
}

struct Shared {
    outcome: OnceLock<Outcome>,
    settled: Notify,
}

/// The handler side: messages wait until [`DeferredSlot::fill`] or [`DeferredSlot::fail`].
/// Once filled, a message costs one atomic load more than the chain alone.
#[derive(Clone)]
pub struct Deferred {
    shared: Arc<Shared>,
}

/// The side that settles a [`Deferred`] handler, once.
pub struct DeferredSlot {
    shared: Arc<Shared>,
}

/// A handler waiting for its chain, and the slot that provides it.
pub fn deferred() -> (Deferred, DeferredSlot) {
    let shared = Arc::new(Shared {
        outcome: OnceLock::new(),
        settled: Notify::new(),
    });
    (
        Deferred {
            shared: shared.clone(),
        },
        DeferredSlot { shared },
    )
}

impl DeferredSlot {
    /// Hands the waiting messages, and every later one, to `chain`.
    pub fn fill(self, chain: BoxHandler) {
        self.settle(Outcome::Ready(chain));
    }

    /// Fails the waiting messages, and every later one, with `reason` (retryable: the message
    /// goes back to the broker for a later version of the plugin).
    pub fn fail(self, reason: impl Into<String>) {
        self.settle(Outcome::Failed(reason.into()));
    }

    fn settle(self, outcome: Outcome) {
        let _ = self.shared.outcome.set(outcome);
        self.shared.settled.notify_waiters();
    }
}

impl Drop for DeferredSlot {
    fn drop(&mut self) {
        if self.shared.outcome.get().is_none() {
            let _ = self.shared.outcome.set(Outcome::Failed(
                "the handler's plugin was never loaded".into(),
            ));
            self.shared.settled.notify_waiters();
        }
    }
}

impl Deferred {
    /// Whether the chain is in place.
    pub fn is_ready(&self) -> bool {
        matches!(self.shared.outcome.get(), Some(Outcome::Ready(_)))
    }

    /// The chain or the failure, once settled (at once when it is).
    async fn outcome(&self) -> &Outcome {
        if let Some(o) = self.shared.outcome.get() {
            return o;
        }
        loop {
            let notified = self.shared.settled.notified();
            if let Some(o) = self.shared.outcome.get() {
                return o;
            }
            notified.await;
        }
    }
}

#[async_trait]
impl Handler for Deferred {
    async fn handle(&self, msg: Message) -> HandlerResult {
        match self.outcome().await {
            Outcome::Ready(chain) => chain.handle(msg).await,
            Outcome::Failed(reason) => Err(failed(reason)),
        }
    }

    /// The batch goes to the chain whole (so `batch = N` reaches the plugin's `handle-batch`).
    async fn handle_batch(&self, msgs: Vec<Message>) -> Vec<HandlerResult> {
        match self.outcome().await {
            Outcome::Ready(chain) => chain.handle_batch(msgs).await,
            Outcome::Failed(reason) => msgs.iter().map(|_| Err(failed(reason))).collect(),
        }
    }
}

fn failed(reason: &str) -> HandlerError {
    HandlerError::with_kind(ErrorKind::Handler, reason.to_string())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::router::handler_fn;

    fn upper() -> BoxHandler {
        handler_fn(
            |m: Message| async move { Ok(vec![Message::new(m.payload.to_ascii_uppercase())]) },
        )
    }

    #[tokio::test]
    async fn a_message_waits_for_the_chain_then_runs_through_it() {
        let (handler, slot) = deferred();
        let waiting = tokio::spawn({
            let h = handler.clone();
            async move { h.handle(Message::new("early")).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "ran before the chain was there");
        assert!(!handler.is_ready());
        slot.fill(upper());
        let out = waiting.await.unwrap().unwrap();
        assert_eq!(&out[0].payload[..], b"EARLY");
        let out = handler.handle(Message::new("late")).await.unwrap();
        assert_eq!(&out[0].payload[..], b"LATE");
        assert!(handler.is_ready());
    }

    /// Counts the batches it is handed whole.
    struct Batches(std::sync::atomic::AtomicUsize);

    #[async_trait]
    impl Handler for Batches {
        async fn handle(&self, msg: Message) -> HandlerResult {
            Ok(vec![msg])
        }

        async fn handle_batch(&self, msgs: Vec<Message>) -> Vec<HandlerResult> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            msgs.into_iter().map(|m| Ok(vec![m])).collect()
        }
    }

    #[tokio::test]
    async fn a_batch_reaches_the_chain_whole() {
        let (handler, slot) = deferred();
        let inner = Arc::new(Batches(Default::default()));
        slot.fill(inner.clone());
        let results = handler
            .handle_batch(vec![Message::new("a"), Message::new("b")])
            .await;
        assert_eq!(results.len(), 2);
        assert_eq!(inner.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failed_or_dropped_slot_fails_the_waiting_messages_with_the_reason() {
        let (handler, slot) = deferred();
        let waiting = tokio::spawn({
            let h = handler.clone();
            async move { h.handle(Message::new("x")).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        slot.fail("plugin big.wasm: not a component");
        let err = waiting.await.unwrap().unwrap_err();
        assert!(err.to_string().contains("not a component"), "{err}");

        let (handler, slot) = deferred();
        drop(slot);
        let err = handler.handle(Message::new("x")).await.unwrap_err();
        assert!(err.to_string().contains("never loaded"), "{err}");
    }
}
