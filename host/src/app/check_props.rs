//! Any configuration or sidecar text is answered with a config or an error, never a panic or a
//! hang: the fuzz targets `config` and `sidecar` (`fuzz/`, run by hand for long) as properties
//! that every test run exercises briefly. Inputs are mutations of a full config, configs whose
//! values are drawn at random (numbers of any size, odd durations, sizes and names), and
//! arbitrary text.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use proptest::prelude::*;

use super::check::{check_config, check_sidecar};
use crate::config::{Config, HandlerConfig};
use crate::wasm::{EngineConfig, WasmEngine};

/// A config using most keys: the seed the mutations start from.
const SEED: &str = r#"[host]
plugins_dir = "plugins"
http = "127.0.0.1:8080"
close_timeout = "10s"
max_connections = 1024

[pubsub.events]
kind = "memory"
persistent = true
max_topics = 100

[pubsub.db]
kind = "sqlite"
url = "sqlite://wasmill.db"

[defaults]
fuel = 100_000_000
timeout = "1s"
memory = "64MiB"
middleware = ["recoverer"]

[[handlers]]
name = "uppercase"
plugin = "uppercase.wasm"
subscribe = "incoming"
publish = { pubsub = "events", topic = "outgoing" }
concurrency = 2
batch = 8
on_failure = { max_attempts = 3, initial_interval = "10ms" }
middleware = [
  "correlation_id",
  { retry = { max_retries = 3, initial_interval = "100ms" } },
  { poison_queue = { topic = "poison" } },
  { throttle = { per_second = 10 } },
  { timeout = "2s" },
  { wasm = "audit.wasm" },
]
"#;

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

/// The body of the fuzz target `config`: parse, then the whole check `wasmill run` makes.
fn answer_config(text: &str) {
    let Ok(cfg) = Config::from_toml("fuzz.toml", text) else {
        return;
    };
    let f = fixture();
    let plugins = f.dir.path().join("plugins");
    let checked = f.rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(10),
            check_config(&cfg, &plugins, &f.engine),
        )
        .await
    });
    assert!(checked.is_ok(), "the check hung on:\n{text}");
}

/// The body of the fuzz target `sidecar`: parse, then the static checks of a sidecar.
fn answer_sidecar(text: &str) {
    let Ok(h) = HandlerConfig::from_sidecar_toml("fuzz.toml", text, Path::new("fuzz.wasm")) else {
        return;
    };
    let cfg = Config::from_toml("wasmill.toml", "").unwrap();
    let _ = check_sidecar(&cfg, Path::new("plugins"), Path::new("fuzz.toml"), &h);
}

/// The seed with up to 8 characters inserted, deleted or replaced.
fn mutated() -> impl Strategy<Value = String> {
    proptest::collection::vec((any::<prop::sample::Index>(), 0..3u8, any::<char>()), 0..8).prop_map(
        |edits| {
            let mut chars: Vec<char> = SEED.chars().collect();
            for (at, op, c) in edits {
                let i = at.index(chars.len() + 1);
                match op {
                    0 => chars.insert(i, c),
                    1 if i < chars.len() => {
                        chars.remove(i);
                    }
                    _ if i < chars.len() => chars[i] = c,
                    _ => {}
                }
            }
            chars.into_iter().collect()
        },
    )
}

/// A value as TOML writes it: any integer, or a string that looks like a duration, a size,
/// a name or nothing.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (0u64..u64::MAX, "(ns|us|ms|s|m|h|d|B|KiB|MiB|GiB|TiB|x|)")
            .prop_map(|(n, u)| format!("\"{n}{u}\"")),
        "[a-z0-9._/ -]{0,12}".prop_map(|s| format!("{s:?}")),
        Just("\"\"".to_string()),
        Just("-0.5".to_string()),
        Just("true".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
    ]
}

/// A handler entry with every value drawn at random.
fn valued() -> impl Strategy<Value = String> {
    proptest::collection::vec(value(), 12).prop_map(|v| {
        format!(
            "[defaults]\nfuel = {}\ntimeout = {}\nmemory = {}\n\n[[handlers]]\nname = {}\n\
             plugin = {}\nsubscribe = {}\npublish = {}\nconcurrency = {}\nbatch = {}\n\
             on_failure = {{ max_attempts = {}, initial_interval = {} }}\n\
             middleware = [{{ retry = {{ max_retries = {} }} }}]\n",
            v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11]
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn any_config_text_is_answered(text in prop_oneof![mutated(), valued(), "\\PC{0,200}"]) {
        answer_config(&text);
    }

    #[test]
    fn any_sidecar_text_is_answered(text in prop_oneof![mutated(), valued(), "\\PC{0,200}"]) {
        answer_sidecar(&text);
    }
}

#[test]
fn the_seed_is_a_config_the_check_reads() {
    // Mutations of a text that does not parse would test the parser's first error only.
    let cfg = Config::from_toml("seed.toml", SEED).unwrap();
    assert_eq!(cfg.handlers.len(), 1);
}
