//! `cargo bench -p wasmill --bench router`: the router on the in-memory pub/sub with a native
//! pass-through handler and with the `passthrough.wasm` plugin (fuel and epoch on), 1M
//! messages at 100 B and 16 KiB (override with WASMILL_BENCH_MESSAGES). Prints the figures and
//! the WASM/native ratio per payload size, then the bare cost of one component call (no
//! router, no pub/sub; WASMILL_BENCH_CALLS calls, 200,000 by default) for each plugin of
//! WASMILL_BENCH_PLUGINS (default `passthrough-v1,passthrough,uppercase`: the 0.1.0 and the
//! 0.2.0 pass-through, and a handler that reads and writes the payload).
//! WASMILL_BENCH_MESSAGES=0 skips the router runs (for a profile of the bare call alone).
//! Needs `scripts/build-plugins.sh` to have run.

use std::path::PathBuf;
use std::sync::Arc;

use wasmill::bench::{BenchOptions, BenchReport, native_passthrough, run};
use wasmill::message::Message;
use wasmill::pubsub::memory::MemoryPubSub;
use wasmill::router::BoxHandler;
use wasmill::wasm::{EngineConfig, Grants, InstancePool, Limits, WasmEngine, WasmHandler};

fn bench(rt: &tokio::runtime::Runtime, handler: BoxHandler, options: &BenchOptions) -> BenchReport {
    let ps = MemoryPubSub::default();
    rt.block_on(run(Arc::new(ps.clone()), Arc::new(ps), handler, options))
        .expect("bench run")
}

fn main() {
    let messages: usize = std::env::var("WASMILL_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let plugin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins/passthrough.wasm");
    let engine = WasmEngine::new(EngineConfig::default()).expect("engine");
    let compiled = rt
        .block_on(engine.compile_file(&plugin))
        .expect("compile plugins/passthrough.wasm (run scripts/build-plugins.sh first)");
    let sizes: &[usize] = if messages == 0 {
        &[]
    } else {
        &[100, 16 * 1024]
    };
    for &payload_size in sizes {
        let options = BenchOptions {
            messages,
            payload_size,
            ..BenchOptions::default()
        };
        let native = bench(&rt, native_passthrough(), &options);
        println!("{native}\n");
        let pool = Arc::new(InstancePool::new(
            engine.clone(),
            compiled.clone(),
            Limits::default(),
            Grants::default(),
            1,
        ));
        let wasm_options = BenchOptions {
            handler_label: "passthrough.wasm".into(),
            ..options.clone()
        };
        let wasm = bench(&rt, Arc::new(WasmHandler::new(pool)), &wasm_options);
        println!("{wasm}\n");
        println!(
            "  ratio {payload_size} B: WASM/native time per message = {:.2}x\n",
            native.end_to_end_per_sec / wasm.end_to_end_per_sec
        );
    }
    let plugins = std::env::var("WASMILL_BENCH_PLUGINS")
        .unwrap_or_else(|_| "passthrough-v1,passthrough,uppercase".into());
    for name in plugins.split(',') {
        let path =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../plugins/{name}.wasm"));
        let compiled = rt
            .block_on(engine.compile_file(&path))
            .unwrap_or_else(|e| panic!("compile {}: {e}", path.display()));
        for payload_size in [0, 100, 16 * 1024] {
            // A long timeout: under callgrind a first call (instantiation) takes seconds.
            let limits = Limits {
                timeout: std::time::Duration::from_secs(120),
                ..Limits::default()
            };
            let pool = InstancePool::new(
                engine.clone(),
                compiled.clone(),
                limits,
                Grants::default(),
                1,
            );
            let msg = Message::new(vec![b'x'; payload_size]).with_metadata("k", "v");
            let calls: u32 = std::env::var("WASMILL_BENCH_CALLS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(200_000);
            let per_call = rt.block_on(async {
                pool.call(&msg, None).await.expect("warm-up call");
                let start = std::time::Instant::now();
                for _ in 0..calls {
                    pool.call(&msg, None).await.expect("call");
                }
                start.elapsed() / calls
            });
            println!(
                "  component call, {name}.wasm, {payload_size} B: {per_call:?} per call, {} fuel per call",
                pool.fuel_used() / (u64::from(calls) + 1)
            );
            // `handle-batch` (0.2.0 handlers; others are called once per message).
            let batch: Vec<Message> = (0..64).map(|_| msg.clone()).collect();
            let per_msg = rt.block_on(async {
                pool.call_batch(&batch).await;
                let start = std::time::Instant::now();
                for _ in 0..calls / 64 {
                    pool.call_batch(&batch).await;
                }
                start.elapsed() / (calls / 64 * 64)
            });
            println!("  batch of 64, {name}.wasm, {payload_size} B: {per_msg:?} per message");
        }
    }
}
