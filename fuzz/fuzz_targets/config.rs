//! Any config text: parsed, then checked as `wasmill run` checks it, without a panic or a hang.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use wasmill::config::Config;
use wasmill::wasm::{EngineConfig, WasmEngine};

struct Fixture {
    rt: tokio::runtime::Runtime,
    engine: WasmEngine,
    dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("plugins")).unwrap();
        Fixture {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            engine: WasmEngine::new(EngineConfig { cache_dir: None }).unwrap(),
            dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = Config::from_toml("fuzz.toml", text) else {
        return;
    };
    let f = fixture();
    let plugins = f.dir.path().join("plugins");
    let _ = f
        .rt
        .block_on(wasmill::app::check_config(&cfg, &plugins, &f.engine));
});
