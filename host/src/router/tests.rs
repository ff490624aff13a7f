//! Router behaviour: routing, ack/nack, middleware order, concurrency, close.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::*;
use crate::error::HandlerError;
use crate::message::Message;
use crate::pubsub::memory::{MemoryConfig, MemoryPubSub};
use crate::pubsub::{Publisher, Subscriber};

fn memory() -> Arc<MemoryPubSub> {
    Arc::new(MemoryPubSub::new(MemoryConfig::default()))
}

async fn recv(sub: &mut crate::Subscription) -> Message {
    let m = tokio::time::timeout(Duration::from_secs(5), sub.recv())
        .await
        .expect("timed out waiting for a message")
        .expect("stream ended");
    m.ack();
    m
}

async fn started(router: &Router) -> tokio::task::JoinHandle<crate::Result<()>> {
    let r = router.clone();
    let h = tokio::spawn(async move { r.run().await });
    router.running().await;
    for handle in router.handlers() {
        handle.started().await;
    }
    h
}

#[tokio::test]
async fn routes_output_to_publish_topic_with_context() {
    let ps = memory();
    let router = Router::new(RouterConfig::default());
    router
        .add_handler(
            "upper",
            "in",
            ps.clone(),
            "out",
            ps.clone(),
            handler_fn(|msg: Message| async move {
                assert_eq!(msg.context().handler_name(), "upper");
                assert_eq!(msg.context().subscribe_topic(), "in");
                assert_eq!(msg.context().publish_topic(), "out");
                Ok(vec![Message::new(msg.payload.to_ascii_uppercase())])
            }),
        )
        .unwrap();
    let mut out = ps.subscribe("out").await.unwrap();
    let run = started(&router).await;
    let input = Message::new("hello");
    ps.publish("in", vec![input]).await.unwrap();
    assert_eq!(recv(&mut out).await.payload, "HELLO");
    let stats = router.handler("upper").unwrap().stats().snapshot();
    assert_eq!(stats.processed, 1);
    router.close().await.unwrap();
    run.await.unwrap().unwrap();
    assert!(router.is_closed());
}

#[tokio::test]
async fn duplicate_handler_names_are_rejected() {
    let ps = memory();
    let router = Router::new(RouterConfig::default());
    let h = handler_fn(|_m| async { Ok(vec![]) });
    router
        .add_consumer_handler("a", "t", ps.clone(), h.clone())
        .unwrap();
    let err = router.add_consumer_handler("a", "t", ps, h).err().unwrap();
    assert!(matches!(err, crate::Error::DuplicateHandler(n) if n == "a"));
}

#[tokio::test]
async fn run_twice_is_an_error() {
    let router = Router::new(RouterConfig::default());
    let _run = started(&router).await;
    assert!(matches!(
        router.run().await,
        Err(crate::Error::AlreadyRunning)
    ));
    router.close().await.unwrap();
}

#[tokio::test]
async fn handler_error_nacks_and_message_is_redelivered() {
    let ps = memory();
    let router = Router::new(RouterConfig::default());
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    router
        .add_handler(
            "flaky",
            "in",
            ps.clone(),
            "out",
            ps.clone(),
            handler_fn(move |msg: Message| {
                let n = c.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 2 {
                        Err(HandlerError::new("not yet"))
                    } else {
                        Ok(vec![msg.copy()])
                    }
                }
            }),
        )
        .unwrap();
    let mut out = ps.subscribe("out").await.unwrap();
    let _run = started(&router).await;
    ps.publish("in", vec![Message::with_uuid("u", "x")])
        .await
        .unwrap();
    assert_eq!(recv(&mut out).await.uuid, "u");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let stats = router.handler("flaky").unwrap().stats().snapshot();
    assert_eq!((stats.failed, stats.processed), (2, 1));
    assert_eq!(stats.last_error.as_deref(), Some("not yet"));
    router.close().await.unwrap();
}

#[tokio::test]
async fn panic_is_recovered_and_nacked() {
    let ps = memory();
    let router = Router::new(RouterConfig::default());
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    router
        .add_consumer_handler(
            "panicky",
            "in",
            ps.clone(),
            handler_fn(move |_msg: Message| {
                let n = c.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        panic!("boom");
                    }
                    Ok(vec![])
                }
            }),
        )
        .unwrap();
    let _run = started(&router).await;
    ps.publish("in", vec![Message::new("x")]).await.unwrap();
    let h = router.handler("panicky").unwrap();
    for _ in 0..200 {
        if h.stats().snapshot().processed == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let s = h.stats().snapshot();
    assert_eq!((s.failed, s.processed), (1, 1));
    assert_eq!(s.last_error.as_deref(), Some("panic: boom"));
    router.close().await.unwrap();
}

#[tokio::test]
async fn consumer_handler_that_returns_messages_is_nacked() {
    let ps = memory();
    let router = Router::new(RouterConfig::default());
    router
        .add_consumer_handler(
            "c",
            "in",
            ps.clone(),
            handler_fn(|m: Message| async move { Ok(vec![m.copy()]) }),
        )
        .unwrap();
    let _run = started(&router).await;
    let mut probe = ps.subscribe("in").await.unwrap();
    ps.publish("in", vec![Message::new("x")]).await.unwrap();
    recv(&mut probe).await;
    let h = router.handler("c").unwrap();
    for _ in 0..200 {
        if h.stats().snapshot().failed > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(h.stats().last_error().unwrap().contains("no publisher"));
    router.close().await.unwrap();
}

#[tokio::test]
async fn router_and_handler_middleware_order() {
    let ps = memory();
    let router = Router::new(RouterConfig::default());
    let log = Arc::new(std::sync::Mutex::new(Vec::<&'static str>::new()));
    let tag = |name: &'static str, log: Arc<std::sync::Mutex<Vec<&'static str>>>| {
        middleware_fn(name, move |next: BoxHandler| {
            let log = log.clone();
            handler_fn(move |m| {
                log.lock().unwrap().push(name);
                let next = next.clone();
                async move { next.handle(m).await }
            })
        })
    };
    router.add_middleware(tag("router", log.clone()));
    let h = router
        .add_consumer_handler("h", "in", ps.clone(), handler_fn(|_m| async { Ok(vec![]) }))
        .unwrap();
    h.add_middleware(tag("handler", log.clone())).unwrap();
    let _run = started(&router).await;
    assert!(h.add_middleware(tag("late", log.clone())).is_err());
    ps.publish("in", vec![Message::new("x")]).await.unwrap();
    for _ in 0..200 {
        if h.stats().snapshot().processed == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(*log.lock().unwrap(), ["router", "handler"]);
    router.close().await.unwrap();
}

#[tokio::test]
async fn plugin_error_aborts_run() {
    let router = Router::new(RouterConfig::default());
    router.add_plugin("bad", |_r: &Router| Err(crate::Error::Other("nope".into())));
    let err = router.run().await.unwrap_err();
    assert!(err.to_string().contains("bad"), "{err}");
}

#[tokio::test]
async fn close_waits_for_in_flight_then_times_out() {
    let ps = memory();
    let router = Router::new(RouterConfig {
        close_timeout: Duration::from_millis(300),
    });
    let entered = Arc::new(tokio::sync::Notify::new());
    let finished = Arc::new(AtomicUsize::new(0));
    let (e, f) = (entered.clone(), finished.clone());
    router
        .add_consumer_handler(
            "slow",
            "in",
            ps.clone(),
            handler_fn(move |m: Message| {
                let (e, f) = (e.clone(), f.clone());
                async move {
                    e.notify_one();
                    let wait = if m.payload == "short" { 100 } else { 5_000 };
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                    f.fetch_add(1, Ordering::SeqCst);
                    Ok(vec![])
                }
            }),
        )
        .unwrap();
    let _run = started(&router).await;
    ps.publish("in", vec![Message::new("short")]).await.unwrap();
    entered.notified().await;
    router
        .close()
        .await
        .expect("a short in-flight message finishes within close_timeout");
    assert_eq!(
        finished.load(Ordering::SeqCst),
        1,
        "close returned before the handler finished"
    );

    let ps = memory();
    let router = Router::new(RouterConfig {
        close_timeout: Duration::from_millis(300),
    });
    let entered = Arc::new(tokio::sync::Notify::new());
    let e = entered.clone();
    router
        .add_consumer_handler(
            "stuck",
            "in",
            ps.clone(),
            handler_fn(move |_m: Message| {
                let e = e.clone();
                async move {
                    e.notify_one();
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Ok(vec![])
                }
            }),
        )
        .unwrap();
    let _run = started(&router).await;
    ps.publish("in", vec![Message::new("x")]).await.unwrap();
    entered.notified().await;
    let t = std::time::Instant::now();
    let err = router.close().await.unwrap_err();
    assert!(matches!(err, crate::Error::CloseTimeout(_)));
    assert!(t.elapsed() >= Duration::from_millis(290));
    assert!(t.elapsed() < Duration::from_secs(5));
    // Idempotent: a second close reports the same outcome without waiting again.
    assert!(router.close().await.is_err());
}

#[tokio::test]
async fn handlers_added_and_stopped_while_running() {
    let ps = memory();
    let router = Router::new(RouterConfig::default());
    let _run = started(&router).await;
    let h = router
        .add_handler(
            "late",
            "in",
            ps.clone(),
            "out",
            ps.clone(),
            handler_fn(|m: Message| async move { Ok(vec![m.copy()]) }),
        )
        .unwrap();
    h.started().await;
    assert_eq!(h.state(), HandlerState::Running);
    let mut out = ps.subscribe("out").await.unwrap();
    ps.publish("in", vec![Message::with_uuid("a", "1")])
        .await
        .unwrap();
    assert_eq!(recv(&mut out).await.uuid, "a");
    h.stop();
    h.stopped().await;
    assert_eq!(h.state(), HandlerState::Stopped);
    // The name is free again once stopped.
    router
        .add_consumer_handler(
            "late",
            "in",
            ps.clone(),
            handler_fn(|_m| async { Ok(vec![]) }),
        )
        .unwrap();
    router.close().await.unwrap();
}

#[tokio::test]
async fn concurrency_processes_messages_in_parallel() {
    let ps = memory();
    let router = Router::new(RouterConfig::default());
    let active = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (a, p) = (active.clone(), peak.clone());
    let h = router
        .add(
            HandlerSpec::new(
                "par",
                "in",
                ps.clone(),
                handler_fn(move |_m: Message| {
                    let (a, p) = (a.clone(), p.clone());
                    async move {
                        let now = a.fetch_add(1, Ordering::SeqCst) + 1;
                        p.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        a.fetch_sub(1, Ordering::SeqCst);
                        Ok(vec![])
                    }
                }),
            )
            .concurrency(4),
        )
        .unwrap();
    let _run = started(&router).await;
    ps.publish(
        "in",
        (0..12).map(|i| Message::new(format!("{i}"))).collect(),
    )
    .await
    .unwrap();
    for _ in 0..400 {
        if h.stats().snapshot().processed == 12 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(h.stats().snapshot().processed, 12);
    assert_eq!(peak.load(Ordering::SeqCst), 4, "expected exactly 4 at once");
    router.close().await.unwrap();
}

#[tokio::test]
async fn order_key_keeps_order_per_key() {
    let ps = memory();
    let router = Router::new(RouterConfig::default());
    let seen = Arc::new(std::sync::Mutex::new(Vec::<(String, usize)>::new()));
    let s = seen.clone();
    let h = router
        .add(
            HandlerSpec::new(
                "keyed",
                "in",
                ps.clone(),
                handler_fn(move |m: Message| {
                    let s = s.clone();
                    async move {
                        let seq: usize = m.metadata.get("seq").parse().unwrap();
                        // Later messages are faster, so without ordering they would overtake.
                        tokio::time::sleep(Duration::from_millis(20 - seq as u64 % 20)).await;
                        s.lock()
                            .unwrap()
                            .push((m.metadata.get("key").to_string(), seq));
                        Ok(vec![])
                    }
                }),
            )
            .concurrency(4)
            .order_key("key"),
        )
        .unwrap();
    let _run = started(&router).await;
    let msgs: Vec<Message> = (0..40)
        .map(|i| {
            Message::new("x")
                .with_metadata("key", format!("k{}", i % 3))
                .with_metadata("seq", i.to_string())
        })
        .collect();
    ps.publish("in", msgs).await.unwrap();
    for _ in 0..400 {
        if h.stats().snapshot().processed == 40 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 40);
    for k in ["k0", "k1", "k2"] {
        let seqs: Vec<usize> = seen
            .iter()
            .filter(|(key, _)| key == k)
            .map(|(_, s)| *s)
            .collect();
        let mut sorted = seqs.clone();
        sorted.sort();
        assert_eq!(seqs, sorted, "order broken for {k}");
    }
    router.close().await.unwrap();
}

#[tokio::test]
async fn publish_failure_nacks() {
    let ps = memory();
    let closed_pub = memory();
    closed_pub.close().await.unwrap();
    let router = Router::new(RouterConfig::default());
    let h = router
        .add_handler(
            "h",
            "in",
            ps.clone(),
            "out",
            closed_pub.clone(),
            handler_fn(|m: Message| async move { Ok(vec![m.copy()]) }),
        )
        .unwrap();
    let _run = started(&router).await;
    ps.publish("in", vec![Message::new("x")]).await.unwrap();
    for _ in 0..200 {
        if h.stats().snapshot().failed > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(h.stats().last_error().unwrap().contains("publish to out"));
    h.stop();
    router.close().await.unwrap();
}

#[tokio::test]
async fn close_ends_a_retry_backoff_instead_of_sleeping_through_close_timeout() {
    use crate::router::middleware::{Retry, RetryConfig};
    let ps = memory();
    let router = Router::new(RouterConfig {
        close_timeout: Duration::from_secs(20),
    });
    let attempts = Arc::new(AtomicUsize::new(0));
    let a = attempts.clone();
    let spec = HandlerSpec::new(
        "failing",
        "in",
        ps.clone(),
        handler_fn(move |_m: Message| {
            let a = a.clone();
            async move {
                a.fetch_add(1, Ordering::SeqCst);
                Err(HandlerError::new("not yet"))
            }
        }),
    )
    .middleware(Arc::new(Retry::new(RetryConfig {
        max_retries: 5,
        initial_interval: Duration::from_secs(60),
        ..RetryConfig::default()
    })));
    router.add(spec).unwrap();
    let _run = started(&router).await;
    ps.publish("in", vec![Message::new("x")]).await.unwrap();
    while attempts.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t = std::time::Instant::now();
    router
        .close()
        .await
        .expect("the message in its backoff is nacked at once, not after close_timeout");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "close took {:?}",
        t.elapsed()
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
}
