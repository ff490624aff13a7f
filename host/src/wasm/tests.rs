//! The WASM runtime with the real example plugins (`plugins/*.wasm`, built by
//! `scripts/build-plugins.sh`, which these tests run once if needed).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::*;
use crate::error::{ErrorKind, HandlerError};
use crate::message::Message;
use crate::pubsub::memory::MemoryPubSub;
use crate::pubsub::{DynPublisher, Publisher, Subscriber};
use crate::router::{
    BoxHandler, BoxMiddleware, Handler, HandlerSpec, Router, RouterConfig, handler_fn,
};

/// The path of a built example plugin.
pub(crate) fn fixture(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    BUILT.get_or_init(|| {
        let status = std::process::Command::new(root.join("scripts/build-plugins.sh"))
            .status()
            .expect("run scripts/build-plugins.sh");
        assert!(status.success(), "scripts/build-plugins.sh failed");
    });
    let p = root.join("plugins").join(format!("{name}.wasm"));
    assert!(p.exists(), "plugin {} missing after build", p.display());
    p
}

fn engine() -> WasmEngine {
    static ENGINE: OnceLock<WasmEngine> = OnceLock::new();
    ENGINE
        .get_or_init(|| WasmEngine::new(EngineConfig::default()).expect("engine"))
        .clone()
}

pub(crate) async fn pool(name: &str, limits: Limits, grants: Grants) -> Arc<InstancePool> {
    let plugin = engine()
        .compile_file(&fixture(name))
        .await
        .unwrap_or_else(|e| panic!("compile {name}: {e}"));
    Arc::new(InstancePool::new(engine(), plugin, limits, grants, 4))
}

async fn handler(name: &str) -> WasmHandler {
    WasmHandler::new(pool(name, Limits::default(), Grants::default()).await)
}

#[tokio::test]
async fn example_handlers_do_their_job() {
    let up = handler("uppercase").await;
    let out = up.handle(Message::with_uuid("u", "hello")).await.unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].payload, "HELLO");
    assert_eq!(out[0].uuid, "u");

    let pass = handler("passthrough").await;
    let m = Message::new("x").with_metadata("k", "v");
    let out = pass.handle(m.clone()).await.unwrap();
    assert_eq!(out[0], m);

    let fan = handler("fanout").await;
    let out = fan
        .handle(Message::new("x").with_metadata("fanout", "5"))
        .await
        .unwrap();
    assert_eq!(out.len(), 5);

    let json = handler("json-enrich").await;
    let out = json.handle(Message::new(r#"{"a":1}"#)).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out[0].payload).unwrap();
    assert_eq!(v["enriched"], true);
    let err = json.handle(Message::new("{nope")).await.unwrap_err();
    assert!(err.reason().starts_with("invalid json"), "{err}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn a_0_2_0_pass_through_returns_the_hosts_payload_and_0_1_0_still_runs() {
    let m = Message::with_uuid("u1", "payload of the pass-through").with_metadata("k", "v");
    let v2 = handler("passthrough").await;
    assert_eq!(v2.pool().current().info.version, WitVersion::V0_2);
    let out = v2.handle(m.clone()).await.unwrap();
    assert_eq!(out, std::slice::from_ref(&m));
    assert_eq!(
        out[0].payload.as_ptr(),
        m.payload.as_ptr(),
        "0.2.0: the payload went through the guest"
    );
    assert!(!out[0].same_delivery(&m), "the output is a new message");

    let v1 = handler("passthrough-v1").await;
    let info = &v1.pool().current().info;
    assert_eq!(
        (info.world, info.version),
        (World::Handler, WitVersion::V0_1)
    );
    assert_eq!(info.world_id(), "wasmill:plugin/handler@0.1.0");
    for _ in 0..3 {
        let out = v1.handle(m.clone()).await.unwrap();
        assert_eq!(out, std::slice::from_ref(&m));
        assert_ne!(out[0].payload.as_ptr(), m.payload.as_ptr());
    }
}

#[tokio::test]
async fn a_middleware_reading_metadata_passes_the_payload_on_uncopied() {
    let mw = WasmMiddleware::new(pool("audit", Limits::default(), Grants::default()).await);
    let seen = Arc::new(std::sync::Mutex::new(None));
    let s = seen.clone();
    let inner = handler_fn(move |m: Message| {
        let s = s.clone();
        async move {
            *s.lock().unwrap() = Some(m.payload.as_ptr() as usize);
            Ok(vec![m])
        }
    });
    let chain = crate::router::Middleware::wrap(&mw, inner);
    let m = Message::new("a payload audit never reads").with_metadata("tenant", "acme");
    let out = chain.handle(m.clone()).await.unwrap();
    assert_eq!(*seen.lock().unwrap(), Some(m.payload.as_ptr() as usize));
    assert_eq!(out[0].payload.as_ptr(), m.payload.as_ptr());
    assert_eq!(out[0].metadata.get("audit_before"), "1");
    assert_eq!(out[0].metadata.get("audit_after"), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_messages_made_by_a_guest_are_an_output_limit() {
    let limits = Limits {
        memory: 512 << 20,
        fuel: 20_000_000_000,
        timeout: Duration::from_secs(60),
        ..Limits::default()
    };
    let h = WasmHandler::new(pool("huge-output", limits, Grants::default()).await);
    let err = h
        .handle(Message::new("x").with_metadata("mode", "count"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutputLimit, "{err}");
    assert!(err.reason().starts_with("output limit"), "{err}");
}

#[tokio::test]
async fn instances_are_reused_across_messages() {
    let h = handler("passthrough").await;
    for _ in 0..50 {
        h.handle(Message::new("x")).await.unwrap();
    }
    assert!(h.pool().fuel_used() > 0);
}

#[tokio::test]
async fn audit_middleware_wraps_a_native_handler() {
    let mw = WasmMiddleware::new(pool("audit", Limits::default(), Grants::default()).await);
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let inner = handler_fn(move |m: Message| {
        let s = s.clone();
        async move {
            s.lock()
                .unwrap()
                .push(m.metadata.get("audit_before").to_string());
            Ok(vec![Message::new("out")])
        }
    });
    let chain = crate::router::Middleware::wrap(&mw, inner);
    let out = chain
        .handle(Message::new("x").with_metadata("tenant", "acme"))
        .await
        .unwrap();
    assert_eq!(out[0].metadata.get("audit_after"), "1");
    assert_eq!(*seen.lock().unwrap(), ["1"]);
    let err = chain.handle(Message::new("x")).await.unwrap_err();
    assert_eq!(err.reason(), "missing metadata tenant");
    assert_eq!(seen.lock().unwrap().len(), 1, "next must not be called");
}

#[tokio::test]
async fn inspect_names_world_or_says_why_not() {
    let e = engine();
    let info = inspect(
        &e,
        "uppercase.wasm",
        &std::fs::read(fixture("uppercase")).unwrap(),
    )
    .unwrap();
    assert_eq!(info.world, World::Handler);
    assert!(
        info.imports
            .iter()
            .any(|i| i.starts_with("wasmill:plugin/host"))
    );
    let info = inspect(&e, "audit.wasm", &std::fs::read(fixture("audit")).unwrap()).unwrap();
    assert_eq!(info.world, World::Middleware);

    let err = inspect(&e, "junk.wasm", b"this is not wasm")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("junk.wasm") && err.contains("not a WebAssembly file"),
        "{err}"
    );
    let core = b"\0asm\x01\0\0\0";
    let err = inspect(&e, "core.wasm", core).unwrap_err().to_string();
    assert!(err.contains("core WebAssembly module"), "{err}");
    let bytes = std::fs::read(fixture("uppercase")).unwrap();
    let err = engine()
        .compile("half.wasm", bytes[..bytes.len() / 2].to_vec())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("half.wasm") && err.contains("invalid component"),
        "{err}"
    );
}

/// PoisonQueue outside Retry (2 retries, 1 ms apart): the order the config makes safe.
fn retry_then_poison(poison: DynPublisher) -> Vec<BoxMiddleware> {
    use crate::router::middleware::{PoisonQueue, Retry, RetryConfig};
    vec![
        Arc::new(PoisonQueue::new(poison, "poison").expect("poison queue")),
        Arc::new(Retry::new(RetryConfig {
            max_retries: 2,
            initial_interval: Duration::from_millis(1),
            ..RetryConfig::default()
        })),
    ]
}

/// The audit middleware component and built-in Retry in one chain, in both orders: with
/// audit outside, it runs once per message and Retry repeats only the handler; with Retry
/// outside, every attempt goes through audit again.
#[tokio::test]
async fn audit_and_retry_order_matters_as_configured() {
    use crate::router::middleware::{Retry, RetryConfig};
    let audit: BoxMiddleware = Arc::new(WasmMiddleware::new(
        pool("audit", Limits::default(), Grants::default()).await,
    ));
    let retry: BoxMiddleware = Arc::new(Retry::new(RetryConfig {
        max_retries: 2,
        initial_interval: Duration::from_millis(1),
        ..RetryConfig::default()
    }));
    for (order, expect_calls) in [("audit,retry", 3), ("retry,audit", 3)] {
        let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
        let c = calls.clone();
        let inner = handler_fn(move |m: Message| {
            let c = c.clone();
            async move {
                c.lock()
                    .unwrap()
                    .push(m.metadata.get("audit_before").to_string());
                Err::<Vec<Message>, _>(HandlerError::new("flaky"))
            }
        });
        let chain = match order {
            "audit,retry" => {
                crate::router::apply_middleware(inner, &[audit.clone(), retry.clone()])
            }
            _ => crate::router::apply_middleware(inner, &[retry.clone(), audit.clone()]),
        };
        // Without a tenant: audit outside rejects once and nothing runs; audit inside
        // rejects a permanent error, which Retry does not retry either.
        let e = chain.handle(Message::new("x")).await.unwrap_err();
        assert_eq!(e.reason(), "missing metadata tenant", "{order}");
        assert!(calls.lock().unwrap().is_empty(), "{order}");
        // With a tenant: the handler runs max_retries + 1 times either way, and always sees
        // the metadata audit added.
        let e = chain
            .handle(Message::new("x").with_metadata("tenant", "acme"))
            .await
            .unwrap_err();
        assert_eq!(e.reason(), "flaky");
        let seen = calls.lock().unwrap().clone();
        assert_eq!(seen.len(), expect_calls, "{order}");
        assert!(seen.iter().all(|v| v == "1"), "{order}: {seen:?}");
    }
    // The difference: with audit outside, audit's own work (one guest call) happens once;
    // with Retry outside, once per attempt: count it by the fuel audit's pool consumed.
    let run_once = |chain: BoxHandler| async move {
        let _ = chain
            .handle(Message::new("x").with_metadata("tenant", "acme"))
            .await;
    };
    let audit_pool = pool("audit", Limits::default(), Grants::default()).await;
    let counting_audit: BoxMiddleware = Arc::new(WasmMiddleware::new(audit_pool.clone()));
    let failing =
        handler_fn(|_m: Message| async { Err::<Vec<Message>, _>(HandlerError::new("f")) });
    // A first call of a fresh instance pays the guest's one-time set-up (its panic hook, the
    // allocator's first pages): warm it so both figures count the same per-call work.
    run_once(crate::router::apply_middleware(
        failing.clone(),
        std::slice::from_ref(&counting_audit),
    ))
    .await;
    let f0 = audit_pool.fuel_used();
    run_once(crate::router::apply_middleware(
        failing.clone(),
        &[counting_audit.clone(), retry.clone()],
    ))
    .await;
    let outside = audit_pool.fuel_used() - f0;
    let f1 = audit_pool.fuel_used();
    run_once(crate::router::apply_middleware(
        failing,
        &[retry.clone(), counting_audit],
    ))
    .await;
    let inside = audit_pool.fuel_used() - f1;
    assert!(
        inside >= outside * 3 - outside / 2,
        "audit inside retry must run once per attempt: outside {outside} fuel, inside {inside}"
    );
}

/// Adds the healthy pass-through handler (`healthy_in` -> `healthy_out`) to `router`, runs it
/// and waits until every handler has started.
async fn start_with_healthy(router: &Router, ps: &Arc<MemoryPubSub>) {
    router
        .add_handler(
            "healthy",
            "healthy_in",
            ps.clone(),
            "healthy_out",
            ps.clone(),
            Arc::new(handler("passthrough").await),
        )
        .unwrap();
    let r = router.clone();
    tokio::spawn(async move { r.run().await });
    router.running().await;
    for h in router.handlers() {
        h.started().await;
    }
}

async fn run_adversarial(name: &str, limits: Limits) -> (Message, Duration, u64) {
    let ps = Arc::new(MemoryPubSub::default());
    let mut poison = ps.subscribe("poison").await.unwrap();
    let mut healthy_out = ps.subscribe("healthy_out").await.unwrap();
    let router = Router::new(RouterConfig::default());
    let mut spec = HandlerSpec::new(
        "bad",
        "bad_in",
        ps.clone(),
        Arc::new(WasmHandler::new(
            pool(name, limits, Grants::default()).await,
        )),
    )
    .publish_to("bad_out", ps.clone());
    for m in retry_then_poison(ps.clone()) {
        spec = spec.middleware(m);
    }
    router.add(spec).unwrap();
    start_with_healthy(&router, &ps).await;
    let started = Instant::now();
    ps.publish(
        "bad_in",
        vec![Message::new("x").with_metadata("mode", "bytes")],
    )
    .await
    .unwrap();
    // The healthy handler keeps processing while the bad one burns its budgets.
    let mut healthy = 0u64;
    let poisoned = loop {
        ps.publish("healthy_in", vec![Message::new("ok")])
            .await
            .unwrap();
        tokio::select! {
            m = poison.recv() => { let m = m.unwrap(); m.ack(); break m; }
            m = healthy_out.recv() => { m.unwrap().ack(); healthy += 1; }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{name}: never poisoned"
        );
    };
    let took = started.elapsed();
    router.close().await.unwrap();
    (poisoned, took, healthy)
}

/// Messages/s of the healthy handler alone, in the same publish-and-wait loop as
/// [`run_adversarial`], as the baseline its rate beside an adversary is compared with.
async fn healthy_rate_alone(messages: u64) -> f64 {
    let ps = Arc::new(MemoryPubSub::default());
    let mut out = ps.subscribe("healthy_out").await.unwrap();
    let router = Router::new(RouterConfig::default());
    start_with_healthy(&router, &ps).await;
    let started = Instant::now();
    for _ in 0..messages {
        ps.publish("healthy_in", vec![Message::new("ok")])
            .await
            .unwrap();
        out.recv().await.unwrap().ack();
    }
    let rate = messages as f64 / started.elapsed().as_secs_f64();
    router.close().await.unwrap();
    rate
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spin_forever_is_stopped_by_fuel_or_deadline() {
    let (m, took, healthy) = run_adversarial("spin-forever", Limits::default()).await;
    let reason = m.metadata.get("reason_poisoned");
    assert!(
        reason == "fuel exhausted" || reason == "timeout",
        "{reason}"
    );
    assert!(healthy > 0, "the healthy handler stalled");
    let beside = healthy as f64 / took.as_secs_f64();
    let alone = healthy_rate_alone(500).await;
    println!(
        "spin-forever poisoned after 3 attempts in {took:?}; healthy handled {healthy} \
         ({beside:.0} msgs/s beside it, {alone:.0} msgs/s alone)"
    );
    // Printed, not asserted: rates are for benchmarks, not timed tests, on a shared machine.

    let slow_fuel = Limits {
        fuel: u64::MAX / 4,
        timeout: Duration::from_millis(50),
        ..Limits::default()
    };
    let (m, _, _) = run_adversarial("spin-forever", slow_fuel).await;
    assert_eq!(m.metadata.get("reason_poisoned"), "timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_hog_hits_the_memory_cap() {
    let limits = Limits {
        memory: 16 << 20,
        fuel: u64::MAX / 4,
        timeout: Duration::from_secs(10),
        ..Limits::default()
    };
    let (m, _, healthy) = run_adversarial("memory-hog", limits).await;
    assert_eq!(m.metadata.get("reason_poisoned"), "memory limit");
    assert!(healthy > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_is_a_trap_with_a_backtrace() {
    let (m, _, _) = run_adversarial("panic", Limits::default()).await;
    let reason = m.metadata.get("reason_poisoned");
    assert!(reason.starts_with("trap: "), "{reason}");
    // The poison metadata keeps the summary; the backtrace is in the error (and the log).
    assert!(!reason.contains('\n') && reason.len() <= 512, "{reason}");
    let err = handler("panic")
        .await
        .handle(Message::new("x"))
        .await
        .unwrap_err();
    assert!(err.reason().contains("wasm backtrace"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_output_is_refused_by_a_limit() {
    let limits = Limits {
        memory: 512 << 20,
        fuel: 2_000_000_000,
        timeout: Duration::from_secs(20),
        ..Limits::default()
    };
    let (m, _, _) = run_adversarial("huge-output", limits).await;
    let reason = m.metadata.get("reason_poisoned");
    assert!(reason.starts_with("output limit"), "{reason}");
}

#[tokio::test(flavor = "current_thread")]
async fn guest_stdout_and_stderr_reach_the_host_log_with_the_plugin_name() {
    // What the `wasmill::guest` log target receives, for this thread.
    let log = crate::test_support::CapturedLog::default();
    let _guard = log.install("wasmill::guest=info");
    let h = handler("sandbox-escape").await;
    h.handle(Message::new("x")).await.unwrap();
    let text = log.text();
    let line = |needle: &str| {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no log line with {needle:?} in:\n{text}"))
            .to_string()
    };
    let out = line("trying the file system");
    assert!(
        out.contains("INFO") && out.contains("plugin=") && out.contains("stream=\"stdout\""),
        "{out}"
    );
    let err = line("goes to the host log at WARN");
    assert!(
        err.contains("WARN") && err.contains("stream=\"stderr\""),
        "{err}"
    );
}

#[tokio::test]
async fn sandbox_escape_is_denied_everything() {
    // The plugin is granted another topic of the same pub/sub, so a publisher is at hand:
    // only the host's check of the topic stands between it and `forbidden`.
    let ps = Arc::new(MemoryPubSub::default());
    let mut allowed_sub = ps.subscribe("forbidden").await.unwrap();
    let mut grants = Grants::default();
    grants.publish.insert("allowed".into(), ps.clone());
    let h = WasmHandler::new(pool("sandbox-escape", Limits::default(), grants).await);
    let out = h.handle(Message::new("x")).await.unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out[0].payload).unwrap();
    for key in ["fs", "env", "net", "publish"] {
        let v = report[key].as_str().unwrap_or_default();
        assert!(v.starts_with("denied"), "{key}: {v}");
    }
    let leaked = tokio::time::timeout(Duration::from_millis(100), allowed_sub.recv()).await;
    assert!(leaked.is_err(), "a message reached the forbidden topic");
}

#[tokio::test]
async fn a_trapped_instance_is_replaced_by_a_fresh_one() {
    let p = pool("panic", Limits::default(), Grants::default()).await;
    let h = WasmHandler::new(p.clone());
    let err = h.handle(Message::new("x")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Trap);
    // Swap to a working version: the next call runs it in a fresh instance.
    let good = engine().compile_file(&fixture("uppercase")).await.unwrap();
    p.replace(good);
    let started = Instant::now();
    let out = h.handle(Message::new("after")).await.unwrap();
    println!("fresh instance after a trap: {:?}", started.elapsed());
    assert_eq!(out[0].payload, "AFTER");
}

#[tokio::test]
async fn after_a_replace_no_call_runs_an_idle_instance_of_the_old_version() {
    let p = pool("uppercase", Limits::default(), Grants::default()).await;
    let h = WasmHandler::new(p.clone());
    // Leaves an idle instance of the first version in the pool.
    assert_eq!(h.handle(Message::new("a")).await.unwrap()[0].payload, "A");
    let next = engine()
        .compile_file(&fixture("passthrough"))
        .await
        .unwrap();
    p.replace(next);
    assert_eq!(h.handle(Message::new("b")).await.unwrap()[0].payload, "b");
    assert_eq!(h.handle(Message::new("c")).await.unwrap()[0].payload, "c");
}

#[tokio::test]
async fn handlers_whose_imports_never_wait_are_called_without_a_fiber() {
    use super::component::Pre;
    let sync = engine()
        .compile_file(&fixture("passthrough"))
        .await
        .unwrap();
    assert!(matches!(sync.pre, Pre::SyncHandler2(..)), "passthrough");
    let v1 = engine()
        .compile_file(&fixture("passthrough-v1"))
        .await
        .unwrap();
    assert!(matches!(v1.pre, Pre::SyncHandler(..)), "passthrough-v1");
    // Imports `host.publish` and a clock subscription: both may wait, so it runs async.
    let waits = engine()
        .compile_file(&fixture("sandbox-escape"))
        .await
        .unwrap();
    assert!(matches!(waits.pre, Pre::Handler2(_)), "sandbox-escape");
    let middleware = engine().compile_file(&fixture("audit")).await.unwrap();
    assert!(matches!(middleware.pre, Pre::Middleware2(_)), "audit");
}

#[tokio::test]
async fn a_synchronous_handler_writes_to_stderr_and_logs_without_waiting() {
    // A Rust guest's `eprintln!` is check-write, write, blocking-flush and a drop of the
    // stream; on the synchronous path every step must complete on its first poll.
    let log = crate::test_support::CapturedLog::default();
    let _guard = log.install("wasmill=info");
    let failing = handler("always-fail").await;
    let err = failing
        .handle(Message::with_uuid("m-1", "x"))
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "always fails");
    // The guest SDK's panic hook reports through `host.log` before the trap (not asserted
    // on the log: other tests hit that callsite with no subscriber, and tracing caches it).
    let panicking = handler("panic").await;
    let err = panicking.handle(Message::new("x")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Trap, "{err}");
    assert!(!err.reason().contains("would wait"), "{err}");
    let text = log.text();
    let has = |needles: &[&str]| text.lines().any(|l| needles.iter().all(|n| l.contains(n)));
    assert!(
        has(&["WARN", "stderr", "always-fail: failing message m-1"]),
        "no stderr line in:\n{text}"
    );
}
