//! Tests of the configuration check, with the example plugins as real components.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::*;

/// A built example plugin (`plugins/NAME.wasm`, built once if missing).
fn fixture(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let p = root.join("plugins").join(format!("{name}.wasm"));
    if !p.exists() {
        BUILT.get_or_init(|| {
            let status = std::process::Command::new(root.join("scripts/build-plugins.sh"))
                .status()
                .expect("run scripts/build-plugins.sh");
            assert!(status.success(), "scripts/build-plugins.sh failed");
        });
    }
    assert!(p.exists(), "plugin {} missing after build", p.display());
    p
}

/// A folder with `wasmill.toml` = `text` and `plugins/` holding uppercase.wasm (a handler),
/// audit.wasm (a middleware) and junk.wasm (not a component).
fn setup(text: &str) -> (tempfile::TempDir, Config) {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(fixture("uppercase"), plugins.join("uppercase.wasm")).unwrap();
    std::fs::copy(fixture("audit"), plugins.join("audit.wasm")).unwrap();
    std::fs::write(plugins.join("junk.wasm"), b"not wasm").unwrap();
    let path = dir.path().join("wasmill.toml");
    std::fs::write(&path, text).unwrap();
    let cfg = Config::load(&path).unwrap();
    (dir, cfg)
}

async fn check(cfg: &Config) -> CheckReport {
    let engine = WasmEngine::new(Default::default()).unwrap();
    check_config(cfg, &cfg.plugins_dir(), &engine).await
}

const GOOD: &str = r#"
[pubsub.events]
kind = "redis"
url = "redis://127.0.0.1:6379"

[defaults]
middleware = ["recoverer", { wasm = "audit.wasm", fuel = 1000000, allow_publish = ["audit"] }]

[[handlers]]
name = "uppercase"
plugin = "uppercase.wasm"
subscribe = "incoming"
publish = { pubsub = "events", topic = "outgoing" }
allow_publish = [{ pubsub = "events", topic = "side" }]
middleware = [
  "correlation_id",
  { retry = { max_retries = 3, initial_interval = "100ms" } },
  { poison_queue = { topic = "poison", errors = ["timeout", "fuel_exhausted"] } },
  { wasm = "audit.wasm" },
]
"#;

#[tokio::test]
async fn a_good_setup_passes_with_a_summary() {
    let (dir, cfg) = setup(GOOD);
    std::fs::copy(fixture("uppercase"), dir.path().join("plugins/up2.wasm")).unwrap();
    std::fs::write(
        dir.path().join("plugins/up2.toml"),
        "subscribe = \"in2\"\nmiddleware = [{ wasm = \"audit.wasm\" }]\n",
    )
    .unwrap();
    let r = check(&cfg).await;
    assert!(r.is_ok(), "{:#?}", r.errors);
    assert_eq!(
        (r.handlers, r.sidecars, r.pubsubs, r.wasm_middleware),
        (1, 1, 2, 1)
    );
    assert!(
        r.summary("wasmill.toml").ends_with(": ok"),
        "{}",
        r.summary("x")
    );
    r.into_result().unwrap();
}

#[tokio::test]
async fn every_problem_is_reported_naming_file_entry_and_key() {
    let (dir, cfg) = setup(
        r#"
[host]
default_pubsub = "nowhere"
http = "8080"

[pubsub.events]
kind = "redis"
urll = "redis://127.0.0.1:6379"

[pubsub.stream]
kind = "kinesis"

[defaults]
fuel = 0
middleware = [{ retry = { max_retry = 3 } }]

[[handlers]]
name = "a"
plugin = "uppercase.wasm"
subscribe = { pubsub = "nope", topic = "in" }
concurrency = 0
allow_publish = [{ pubsub = "ghost", topic = "x" }]
middleware = [
  "correlation_id",
  { retry = { max_retry = 3 } },
  { poison_queue = { topic = "p", pubsub = "gone", errors = ["fuel"] } },
  { wasm = "uppercase.wasm", fuell = 1 },
  { wasm = "uppercase.wasm", allow_publish = [{ pubsub = "ghost", topic = "x" }] },
  { wasm = "missing.wasm" },
  "retyr",
]

[[handlers]]
name = "a"
plugin = "audit.wasm"
subscribe = "in"

[[handlers]]
name = "c"
plugin = "../outside.wasm"
subscribe = "in"

[[handlers]]
name = "d"
plugin = "junk.wasm"
subscribe = "in"

[[handlers]]
plugin = "missing.wasm"
subscribe = "in"
"#,
    );
    std::fs::copy(fixture("uppercase"), dir.path().join("plugins/side.wasm")).unwrap();
    std::fs::write(
        dir.path().join("plugins/side.toml"),
        "name = \"a\"\nsubscribe = \"in\"\nmiddleware = [{ throttle = { count = 1 } }]\n",
    )
    .unwrap();
    let r = check(&cfg).await;
    let f = cfg.file.clone();
    let side = dir.path().join("plugins/side.toml").display().to_string();
    let plugins = cfg.plugins_dir().display().to_string();
    let expected = [
        format!(
            "{f}: handlers[0].middleware[1].retry: unknown option \"max_retry\" (expected max_retries, initial_interval, max_interval, multiplier, max_elapsed_time, randomization_factor)"
        ),
        format!("{f}: defaults.middleware[0].retry: unknown option \"max_retry\""),
        format!("{f}: pubsub.events.urll: unknown field `urll`"),
        format!("{f}: pubsub.stream.kind: unknown backend \"kinesis\""),
        format!("{f}: host.default_pubsub: unknown pubsub \"nowhere\""),
        format!("{f}: host.http: \"8080\" is not an address"),
        format!("{f}: defaults.fuel: must be positive"),
        format!("{f}: handlers[0].subscribe.pubsub: unknown pubsub \"nope\""),
        format!("{f}: handlers[0].concurrency: must be at least 1"),
        format!("{f}: handlers[0].allow_publish[0].pubsub: unknown pubsub \"ghost\""),
        format!(
            "{f}: handlers[0].middleware[2].poison_queue.errors[0]: unknown error kind \"fuel\""
        ),
        format!(
            "{f}: handlers[0].middleware[3]: unknown option \"fuell\" (expected wasm, fuel, timeout, memory, allow_publish)"
        ),
        format!("{f}: handlers[0].middleware[4].allow_publish[0].pubsub: unknown pubsub \"ghost\""),
        format!(
            "{f}: handlers[0].middleware[4].wasm: {plugins}/uppercase.wasm implements wasmill:plugin/handler, not wasmill:plugin/middleware; a handler component goes in a [[handlers]] entry or a sidecar"
        ),
        format!("{f}: handlers[0].middleware[5].wasm: file {plugins}/missing.wasm not found"),
        format!("{f}: handlers[0].middleware[6]: unknown middleware \"retyr\""),
        format!("{f}: handlers[1].name: duplicate handler name \"a\" (also handlers[0])"),
        format!(
            "{f}: handlers[1].plugin: {plugins}/audit.wasm implements wasmill:plugin/middleware, not wasmill:plugin/handler; a middleware component goes in a middleware list as {{ wasm = \"FILE.wasm\" }}"
        ),
        format!(
            "{f}: handlers[2].plugin: \"../outside.wasm\" is not a file inside the plugins folder"
        ),
        format!("{f}: handlers[3].plugin: plugin junk.wasm:"),
        format!("{f}: handlers[4]: missing key \"name\""),
        format!("{f}: handlers[4].plugin: file {plugins}/missing.wasm not found"),
        format!("{side}: name: duplicate handler name \"a\" (also handlers[0])"),
        format!("{side}: middleware[0].throttle: missing field `per`"),
    ];
    let mut missing = Vec::new();
    for e in &expected {
        if !r.errors.iter().any(|got| got.starts_with(e.as_str())) {
            missing.push(e.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "missing:\n{}\ngot:\n{}",
        missing.join("\n"),
        r.errors.join("\n")
    );
    assert_eq!(r.errors.len(), expected.len(), "{}", r.errors.join("\n"));
    assert!(
        r.summary(&f)
            .ends_with(&format!("{} error(s)", expected.len()))
    );
    let e = r.into_result().unwrap_err().to_string();
    assert!(
        e.contains("configuration error(s)") && e.contains("retyr"),
        "{e}"
    );
}

#[tokio::test]
async fn a_sidecar_of_a_configured_plugin_is_not_read() {
    let (dir, cfg) = setup(GOOD);
    std::fs::write(dir.path().join("plugins/uppercase.toml"), "not toml [").unwrap();
    let r = check(&cfg).await;
    assert!(r.is_ok(), "{:#?}", r.errors);
    assert_eq!(r.sidecars, 0);
}

#[test]
fn a_changed_sidecar_gets_the_static_checks() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path();
    std::fs::write(plugins.join("s.wasm"), b"x").unwrap();
    let sidecar: &Path = &plugins.join("s.toml");
    std::fs::write(
        sidecar,
        "subscribe = { pubsub = \"nope\", topic = \"t\" }\nmiddleware = [{ timeout = { afer = \"1s\" } }]\n",
    )
    .unwrap();
    let h = HandlerConfig::from_sidecar(sidecar, &plugins.join("s.wasm")).unwrap();
    let cfg = Config::default();
    let e = check_sidecar(&cfg, plugins, sidecar, &h)
        .unwrap_err()
        .to_string();
    let s = sidecar.display();
    assert!(
        e.contains(&format!("{s}: subscribe.pubsub: unknown pubsub \"nope\""))
            && e.contains(&format!(
                "{s}: middleware[0].timeout: unknown option \"afer\" (expected after)"
            )),
        "{e}"
    );
}

#[tokio::test]
async fn absurd_values_and_loops_are_refused_by_key() {
    let (_dir, cfg) = setup(
        r#"
[defaults]
memory = "1B"
timeout = "1000d"

[[handlers]]
name = "loop"
plugin = "uppercase.wasm"
subscribe = "t"
publish = "t"
concurrency = 100000

[[handlers]]
name = "zero-batch"
plugin = "uppercase.wasm"
subscribe = "a"
batch = 0

[[handlers]]
name = "huge-batch"
plugin = "uppercase.wasm"
subscribe = "b"
batch = 5000
"#,
    );
    let report = check(&cfg).await;
    let text = report.errors.join("\n");
    for key in [
        "defaults.memory",
        "defaults.timeout",
        "handlers[0].concurrency",
        "handlers[0].publish",
        "handlers[1].batch",
        "handlers[2].batch",
    ] {
        assert!(text.contains(key), "no error for {key}:\n{text}");
    }
}

#[tokio::test]
async fn http_api_keys_are_range_checked_naming_the_key() {
    let (_dir, cfg) = setup(
        r#"
[host]
max_connections = 0
header_timeout = "0s"
body_timeout = "2h"
token = "short"
allowed_origins = ["http://ok.example:3000", "evil.example", "http://a/b"]
allowed_hosts = ["wasmill.internal", "http://x/"]
"#,
    );
    let r = check(&cfg).await;
    let all = r.errors.join("\n");
    for key in [
        "host.max_connections",
        "host.header_timeout",
        "host.body_timeout",
        "host.token",
        "host.allowed_origins[1]",
        "host.allowed_origins[2]",
        "host.allowed_hosts[1]",
    ] {
        assert!(
            r.errors
                .iter()
                .any(|e| e.contains("wasmill.toml") && e.contains(key)),
            "no error names {key}:\n{all}"
        );
    }
    assert_eq!(r.errors.len(), 7, "{all}");

    let (_dir, cfg) = setup(
        "[host]\nmax_connections = 10\ntoken = \"0123456789abcdef\"\nallowed_origins = [\"https://dash.example\"]\n",
    );
    let r = check(&cfg).await;
    assert!(r.is_ok(), "{:#?}", r.errors);
}

#[tokio::test]
async fn a_plugin_symlinked_out_of_the_plugins_folder_is_refused() {
    let (dir, cfg) = setup(
        r#"
[[handlers]]
name = "inside"
plugin = "inside.wasm"
subscribe = "a"

[[handlers]]
name = "outside"
plugin = "outside.wasm"
subscribe = "b"
"#,
    );
    let plugins = dir.path().join("plugins");
    let elsewhere = dir.path().join("elsewhere.wasm");
    std::fs::copy(fixture("uppercase"), &elsewhere).unwrap();
    std::os::unix::fs::symlink(plugins.join("uppercase.wasm"), plugins.join("inside.wasm"))
        .unwrap();
    std::os::unix::fs::symlink(&elsewhere, plugins.join("outside.wasm")).unwrap();
    let report = check(&cfg).await;
    let text = report.errors.join("\n");
    assert!(
        text.contains("handlers[1].plugin") && text.contains("outside the plugins folder"),
        "{text}"
    );
    assert!(
        !text.contains("handlers[0]"),
        "a link inside the folder is fine: {text}"
    );
}

#[tokio::test]
async fn a_loop_is_accepted_only_when_allowed() {
    let entry = |allow: &str| {
        format!(
            "[[handlers]]\nname = \"countdown\"\nplugin = \"uppercase.wasm\"\nsubscribe = \"t\"\npublish = \"t\"\n{allow}"
        )
    };
    let (_d, cfg) = setup(&entry(""));
    let text = check(&cfg).await.errors.join("\n");
    assert!(
        text.contains("handlers[0].publish") && text.contains("allow_loop"),
        "{text}"
    );
    let (_d, cfg) = setup(&entry("allow_loop = true\n"));
    let report = check(&cfg).await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}

#[tokio::test]
async fn requeuers_and_forwarders_name_known_backends() {
    let (_dir, cfg) = setup(
        "[[requeue]]\nfrom = { pubsub = \"nope\", topic = \"p\" }\n\n\
         [[forwarders]]\nfrom = \"\"\nto = \"gone\"\n\n[[requeue]]\nfrom = \"fine.poison\"\n",
    );
    let report = check(&cfg).await;
    let all = report.errors.join("\n");
    assert!(
        all.contains("requeue[0].from: unknown pubsub \"nope\""),
        "{all}"
    );
    assert!(
        all.contains("forwarders[0].from: the topic must not be empty"),
        "{all}"
    );
    assert!(
        all.contains("forwarders[0].to: unknown pubsub \"gone\""),
        "{all}"
    );
    assert_eq!(report.errors.len(), 3, "{all}");
}

#[tokio::test]
async fn fan_ins_and_fan_outs_are_checked() {
    let (_dir, cfg) = setup(
        "[[fan_in]]\nfrom = [\"a\", \"all\", { pubsub = \"nope\", topic = \"b\" }]\nto = \"all\"\n\n\
         [[fan_in]]\nfrom = []\nto = \"x\"\n\n\
         [[fan_out]]\ntopic = \"all\"\n\n[[fan_out]]\ntopic = { topic = \"all\" }\n\n\
         [[fan_out]]\ntopic = \"other\"\n",
    );
    let report = check(&cfg).await;
    let all = report.errors.join("\n");
    for want in [
        "fan_in[0].from[1]: \"all\" is also its `to`: it would feed itself",
        "fan_in[0].from[2]: unknown pubsub \"nope\"",
        "fan_in[1].from: name at least one topic",
        "fan_out[1].topic: \"all\" on \"memory\" is fanned out twice",
    ] {
        assert!(all.contains(want), "{want:?} not in:\n{all}");
    }
    assert_eq!(report.errors.len(), 4, "{all}");
}

#[test]
fn a_binlog_handlers_poison_queue_goes_to_the_default_pubsub() {
    let text = "[pubsub.db]\nkind = \"mysql-binlog\"\nurl = \"mysql://root@127.0.0.1:3306/test\"\n\n\
        [[handlers]]\nname = \"h\"\nplugin = \"uppercase.wasm\"\n\
        subscribe = { pubsub = \"db\", topic = \"orders\" }\n";
    let (_dir, cfg) = setup(text);
    let route = crate::app::route_for(&cfg, &cfg.handlers[0], false);
    let policy = route.on_failure.expect("the default policy");
    assert_eq!(policy.poison_pubsub.as_deref(), Some("memory"));
    // A policy that names its backend keeps it.
    let named = text.to_string() + "on_failure = { poison_pubsub = \"db\" }\n";
    let (_dir, cfg) = setup(&named);
    let route = crate::app::route_for(&cfg, &cfg.handlers[0], false);
    assert_eq!(
        route.on_failure.unwrap().poison_pubsub.as_deref(),
        Some("db")
    );
}
