//! `batch = N`: the messages at hand go to the chain together, each settled on its own result.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use super::*;
use crate::error::HandlerError;
use crate::message::Message;
use crate::pubsub::memory::{MemoryConfig, MemoryPubSub};
use crate::pubsub::{Publisher, Subscriber};

/// Upper-cases payloads; records the size of every batch; the first message waits for `gate`;
/// "bad" fails the first time it is seen.
#[derive(Default)]
struct Recording {
    sizes: Mutex<Vec<usize>>,
    gate: Notify,
    gated: AtomicBool,
    failed_once: AtomicBool,
}

impl Recording {
    fn one(&self, msg: &Message) -> HandlerResult {
        if &msg.payload[..] == b"bad" && !self.failed_once.swap(true, Ordering::SeqCst) {
            return Err(HandlerError::new("bad, once"));
        }
        Ok(vec![Message::new(msg.payload.to_ascii_uppercase())])
    }
}

#[async_trait]
impl Handler for Recording {
    async fn handle(&self, msg: Message) -> HandlerResult {
        if !self.gated.swap(true, Ordering::SeqCst) {
            self.gate.notified().await;
        }
        self.sizes.lock().unwrap().push(1);
        self.one(&msg)
    }

    async fn handle_batch(&self, msgs: Vec<Message>) -> Vec<HandlerResult> {
        self.sizes.lock().unwrap().push(msgs.len());
        msgs.iter().map(|m| self.one(m)).collect()
    }
}

#[tokio::test]
async fn messages_at_hand_go_together_and_each_is_settled_on_its_own_result() {
    let ps = Arc::new(MemoryPubSub::new(MemoryConfig::default()));
    let handler = Arc::new(Recording::default());
    let router = Router::new(RouterConfig::default());
    let h = router
        .add(
            HandlerSpec::new("batched", "in", ps.clone(), handler.clone())
                .publish_to("out", ps.clone())
                .batch(16),
        )
        .unwrap();
    let mut out = ps.subscribe("out").await.unwrap();
    let r = router.clone();
    let run = tokio::spawn(async move { r.run().await });
    h.started().await;

    // The first message is held in the handler while the rest arrive.
    ps.publish("in", vec![Message::new("m0")]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let rest: Vec<Message> = (1..50)
        .map(|i| {
            Message::new(if i == 7 {
                "bad".to_string()
            } else {
                format!("m{i}")
            })
        })
        .collect();
    ps.publish("in", rest).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    handler.gate.notify_one();

    let mut got = Vec::new();
    while got.len() < 50 {
        let m = tokio::time::timeout(Duration::from_secs(5), out.recv())
            .await
            .expect("timed out")
            .expect("ended");
        m.ack();
        got.push(String::from_utf8(m.payload.to_vec()).unwrap());
    }
    let mut want: Vec<String> = (0..50)
        .map(|i| {
            if i == 7 {
                "BAD".into()
            } else {
                format!("M{i}")
            }
        })
        .collect();
    // The failed message comes back after the rest of its batch; the others keep their order.
    assert_eq!(got.iter().filter(|p| *p != "BAD").collect::<Vec<_>>(), {
        want.retain(|p| p != "BAD");
        want.iter().collect::<Vec<_>>()
    });
    assert!(got.contains(&"BAD".to_string()));

    let sizes = handler.sizes.lock().unwrap().clone();
    assert_eq!(sizes[0], 1, "{sizes:?}");
    assert_eq!(
        sizes[1], 16,
        "the messages at hand went one by one: {sizes:?}"
    );
    assert!(sizes.iter().all(|&n| n <= 16), "{sizes:?}");
    let stats = h.stats().snapshot();
    assert_eq!(stats.processed, 50);
    assert_eq!(stats.failed, 1);
    router.close().await.unwrap();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn built_in_middleware_pass_the_batch_on_and_retry_only_what_failed() {
    use crate::router::middleware::retry::RetryConfig;
    use crate::router::middleware::{CorrelationId, Recoverer, Retry};

    let inner = Arc::new(Recording::default());
    inner.gated.store(true, Ordering::SeqCst); // no gate here
    let retry = Retry::new(RetryConfig {
        max_retries: 1,
        initial_interval: Duration::from_millis(1),
        ..RetryConfig::default()
    });
    let chain = apply_middleware(
        inner.clone(),
        &[
            Arc::new(Recoverer) as BoxMiddleware,
            Arc::new(CorrelationId),
            Arc::new(retry),
        ],
    );
    let results = chain
        .handle_batch(vec![
            Message::new("a"),
            Message::new("bad"),
            Message::new("c"),
        ])
        .await;
    let payloads: Vec<String> = results
        .into_iter()
        .map(|r| String::from_utf8(r.unwrap()[0].payload.to_vec()).unwrap())
        .collect();
    assert_eq!(payloads, ["A", "BAD", "C"]);
    // One call with the whole batch, then the failed message alone.
    assert_eq!(*inner.sizes.lock().unwrap(), [3, 1]);
}
