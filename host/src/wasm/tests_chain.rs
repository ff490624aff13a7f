//! A WASM middleware in the chain: what its `next` passes on, what its budgets count, and
//! that computing guests never hold the runtime's threads.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::tests::{fixture, pool};
use super::*;
use crate::error::{ErrorKind, HandlerError};
use crate::message::{AckState, Message, RouteInfo};
use crate::pubsub::Subscriber;
use crate::pubsub::memory::MemoryPubSub;
use crate::router::middleware::poison_queue::{HANDLER_POISONED, REASON_POISONED};
use crate::router::middleware::{InstantAck, PoisonQueue, Retry, RetryConfig};
use crate::router::{BoxMiddleware, Handler, HandlerStats, apply_middleware, handler_fn};

async fn audit(limits: Limits) -> BoxMiddleware {
    Arc::new(WasmMiddleware::new(
        pool("audit", limits, Grants::default()).await,
    ))
}

/// A message as the router hands it to a chain: with its route (handler `h1`) and counters.
fn routed(payload: &str) -> (Message, Arc<HandlerStats>) {
    let stats = Arc::new(HandlerStats::default());
    let route = Arc::new(RouteInfo {
        handler: "h1".into(),
        subscriber: "memory".into(),
        publisher: None,
        subscribe_topic: "in".into(),
        publish_topic: None,
        stats: Some(stats.clone()),
        close: None,
    });
    let mut msg = Message::with_uuid("u1", payload.to_string()).with_metadata("tenant", "t");
    msg.context_mut().set_route(&route);
    (msg, stats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_and_poison_queue_inside_a_wasm_middleware_see_the_message_in_flight() {
    let ps = Arc::new(MemoryPubSub::default());
    let mut poison = ps.subscribe("poison").await.unwrap();
    let attempts = Arc::new(AtomicU32::new(0));
    let seen = attempts.clone();
    let failing = handler_fn(move |m: Message| {
        let seen = seen.clone();
        async move {
            seen.fetch_add(1, Ordering::SeqCst);
            assert_eq!(
                m.metadata.get("audit_before"),
                "1",
                "audit's change reached the handler"
            );
            Err(HandlerError::new("broken"))
        }
    });
    let chain = apply_middleware(
        failing,
        &[
            audit(Limits::default()).await,
            Arc::new(PoisonQueue::new(ps.clone(), "poison").unwrap()),
            Arc::new(Retry::new(RetryConfig {
                max_retries: 2,
                initial_interval: Duration::from_millis(1),
                ..RetryConfig::default()
            })),
        ],
    );
    let (msg, stats) = routed("x");
    let out = chain.handle(msg).await.expect("poisoned, so handled");
    assert!(out.is_empty());
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    assert_eq!(
        stats.retried.load(Ordering::SeqCst),
        2,
        "retries counted on the handler"
    );
    assert_eq!(stats.poisoned.load(Ordering::SeqCst), 1);
    let p = poison.recv().await.unwrap();
    p.ack();
    assert_eq!(
        p.metadata.get(HANDLER_POISONED),
        "h1",
        "poison metadata names the handler"
    );
    assert_eq!(p.metadata.get(REASON_POISONED), "broken");
    assert_eq!(p.uuid, "u1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instant_ack_inside_a_wasm_middleware_acks_the_delivered_message() {
    let (release, wait) = tokio::sync::oneshot::channel::<()>();
    let wait = Arc::new(tokio::sync::Mutex::new(Some(wait)));
    let blocked = handler_fn(move |_m: Message| {
        let wait = wait.clone();
        async move {
            if let Some(w) = wait.lock().await.take() {
                let _ = w.await;
            }
            Ok(vec![])
        }
    });
    let chain = apply_middleware(
        blocked,
        &[audit(Limits::default()).await, Arc::new(InstantAck)],
    );
    let (msg, _) = routed("x");
    let delivered = msg.clone();
    let call = tokio::spawn(async move { chain.handle(msg).await });
    let started = Instant::now();
    while delivered.ack_state() != AckState::Acked {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "InstantAck inside the middleware never acked the delivered message"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    release.send(()).unwrap();
    call.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_inside_next_is_not_charged_to_the_middleware() {
    let limits = Limits {
        timeout: Duration::from_millis(100),
        ..Limits::default()
    };
    let slow = handler_fn(|m: Message| async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(vec![m])
    });
    let chain = apply_middleware(slow, &[audit(limits).await]);
    let (msg, _) = routed("x");
    let out = chain
        .handle(msg)
        .await
        .expect("a next twice as slow as the middleware's timeout");
    assert_eq!(out[0].metadata.get("audit_after"), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_middleware_cuts_a_computing_guest_off() {
    let spin = WasmHandler::new(
        pool(
            "spin-forever",
            Limits {
                fuel: u64::MAX / 4,
                timeout: Duration::from_secs(30),
                ..Limits::default()
            },
            Grants::default(),
        )
        .await,
    );
    let chain = apply_middleware(
        Arc::new(spin),
        &[Arc::new(crate::router::middleware::Timeout::new(
            Duration::from_millis(200),
        ))],
    );
    let started = Instant::now();
    let err = chain.handle(Message::new("x")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "cut off after {:?}, not at the Timeout middleware's 200 ms",
        started.elapsed()
    );
}

/// Two guests computing until their deadline on a 2-worker runtime: the runtime's other
/// tasks (a timer standing in for the HTTP API) keep running, and a third handler keeps
/// being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn computing_guests_never_hold_the_runtimes_threads() {
    let spinning = Limits {
        fuel: u64::MAX / 4,
        timeout: Duration::from_secs(2),
        ..Limits::default()
    };
    let spin = pool("spin-forever", spinning, Grants::default()).await;
    let guests: Vec<_> = (0..2)
        .map(|_| {
            let h = WasmHandler::new(spin.clone());
            tokio::spawn(async move { h.handle(Message::new("x")).await })
        })
        .collect();
    // Let both guests start computing.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let third = WasmHandler::new(pool("passthrough", Limits::default(), Grants::default()).await);
    let mut worst = Duration::ZERO;
    let mut handled = 0u32;
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        let asked = Instant::now();
        tokio::time::sleep(Duration::from_millis(1)).await;
        worst = worst.max(asked.elapsed());
        third.handle(Message::new("ok")).await.unwrap();
        handled += 1;
    }
    for g in guests {
        let err = g.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    }
    assert!(
        worst < Duration::from_millis(200),
        "a 1 ms timer fired {worst:?} late while two guests computed"
    );
    assert!(
        handled > 50,
        "the third handler handled only {handled} messages"
    );
    assert!(spin.is_demoted(), "the spinning handler runs async now");
}

#[tokio::test]
async fn a_granted_topic_is_published_to() {
    let ps = Arc::new(MemoryPubSub::default());
    let mut forbidden = ps.subscribe("forbidden").await.unwrap();
    let mut grants = Grants::default();
    grants.publish.insert("forbidden".into(), ps.clone());
    let h = WasmHandler::new(pool("sandbox-escape", Limits::default(), grants).await);
    let out = h.handle(Message::new("x")).await.unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out[0].payload).unwrap();
    let publish = report["publish"].as_str().unwrap_or_default();
    assert!(publish.starts_with("allowed"), "{publish}");
    let m = tokio::time::timeout(Duration::from_secs(5), forbidden.recv())
        .await
        .expect("the granted publish reached the topic")
        .unwrap();
    m.ack();
    let _ = fixture;
}

/// The router's close cuts a computing guest off at `close_timeout` and nacks its message,
/// instead of waiting for the guest's own 30 s deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_timeout_cuts_a_computing_guest_off() {
    use crate::pubsub::Publisher;
    use crate::router::{HandlerSpec, Router, RouterConfig};
    let ps = Arc::new(MemoryPubSub::default());
    let spin = pool(
        "spin-forever",
        Limits {
            fuel: u64::MAX / 4,
            timeout: Duration::from_secs(30),
            ..Limits::default()
        },
        Grants::default(),
    )
    .await;
    let router = Router::new(RouterConfig {
        close_timeout: Duration::from_millis(300),
    });
    router
        .add(HandlerSpec::new(
            "spin",
            "in",
            ps.clone(),
            Arc::new(WasmHandler::new(spin.clone())),
        ))
        .unwrap();
    let r = router.clone();
    tokio::spawn(async move { r.run().await });
    router.running().await;
    for h in router.handlers() {
        h.started().await;
    }
    ps.publish("in", vec![Message::new("x")]).await.unwrap();
    while spin.fuel_used() == 0 && !spin.is_demoted() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let closed = router.close().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "close waited {:?} for a guest with a 30 s deadline",
        started.elapsed()
    );
    assert!(
        closed.is_err(),
        "close reports that it timed out with a message in flight"
    );
    let stats = router.handler("spin").unwrap().stats().snapshot();
    assert_eq!(stats.failed, 1, "the cut-off message was nacked");
    assert!(
        stats
            .last_error
            .unwrap_or_default()
            .contains("close_timeout"),
        "the reason names the close"
    );
}
