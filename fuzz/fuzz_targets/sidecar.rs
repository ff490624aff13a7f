//! Any sidecar text: parsed, then given the static checks the plugins-folder watcher makes.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use wasmill::config::{Config, HandlerConfig};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(h) = HandlerConfig::from_sidecar_toml("fuzz.toml", text, Path::new("fuzz.wasm")) else {
        return;
    };
    let cfg = Config::from_toml("wasmill.toml", "").unwrap();
    let _ = wasmill::app::check::check_sidecar(&cfg, Path::new("plugins"), Path::new("fuzz.toml"), &h);
});
