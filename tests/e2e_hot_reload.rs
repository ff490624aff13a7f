//! Hot reload, end to end: a plugin file is overwritten while messages flow, written over with
//! broken bytes or a component of the wrong world, claimed by a second sidecar, and deleted
//! with messages in flight; a `{ wasm }` middleware file changes; and the host keeps every
//! promise of SPEC.md "Plugins folder and hot reload".

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[path = "support/mod.rs"]
mod support;

use support::{Host, install_atomically, next_event, plugin};

const WAIT: Duration = Duration::from_secs(30);

/// A host whose plugins folder holds `files` (name, plugin to copy) and `sidecars` (name,
/// text), once the handler of every sidecar has subscribed (a message published to the
/// in-memory pub/sub before that would reach no one).
async fn start_folder(files: &[(&str, &str)], sidecars: &[(&str, &str)]) -> anyhow::Result<Host> {
    let (dir, plugins) = Host::scratch()?;
    for (name, version) in files {
        std::fs::copy(plugin(version), plugins.join(name))?;
    }
    for (name, text) in sidecars {
        std::fs::write(plugins.join(name), text)?;
    }
    let host = Host::start(dir, plugins, &[]).await?;
    for (name, _) in sidecars {
        let wasm = name.replace(".toml", ".wasm");
        host.wait_handler(&format!("{wasm} running"), WAIT, |h| {
            h["plugin"] == wasm.as_str() && h["state"] == "running"
        })
        .await?;
    }
    Ok(host)
}

async fn start_with(name: &str, version: &str) -> anyhow::Result<Host> {
    let (dir, plugins) = Host::scratch()?;
    std::fs::copy(plugin(version), plugins.join(format!("{name}.wasm")))?;
    std::fs::write(
        plugins.join(format!("{name}.toml")),
        "subscribe = \"in\"\npublish = \"out\"\n",
    )?;
    Host::start(dir, plugins, &[]).await
}

/// Overwrites uppercase.wasm with passthrough.wasm (and back) while ~1,500 messages/s flow:
/// every message is processed by exactly one version, none is lost, and the time from the
/// file's final write to the first message served by the new version is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwrite_while_messages_flow_loses_nothing() -> anyhow::Result<()> {
    let host = Arc::new(start_with("live", "uppercase").await?);
    let mut out = host.sse("out").await?;
    let before = host.handler("live").await?["sha256"].clone();

    const TOTAL: usize = 9_000;
    const RATE_PER_SEC: usize = 1_500;
    let sent = Arc::new(AtomicUsize::new(0));
    let publisher = {
        let host = host.clone();
        let sent = sent.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let mut tasks = Vec::new();
            for worker in 0..4 {
                let host = host.clone();
                let sent = sent.clone();
                tasks.push(tokio::spawn(async move {
                    let mut i = worker;
                    while i < TOTAL {
                        // Pace the four workers to RATE_PER_SEC together.
                        let due = start + Duration::from_secs_f64(i as f64 / RATE_PER_SEC as f64);
                        tokio::time::sleep_until(due.into()).await;
                        host.publish("in", &format!("msg-{i}"))
                            .await
                            .expect("publish");
                        sent.fetch_add(1, Ordering::Relaxed);
                        i += 4;
                    }
                }));
            }
            for t in tasks {
                t.await.expect("publisher task");
            }
            start.elapsed()
        })
    };

    // Swap versions a few times while the flow runs; time each swap.
    let mut swap_latencies = Vec::new();
    let mut results: HashMap<String, Vec<String>> = HashMap::new();
    let record = |ev: serde_json::Value, results: &mut HashMap<String, Vec<String>>| {
        let payload = ev["payload"].as_str().unwrap_or_default().to_string();
        results
            .entry(payload.to_ascii_lowercase())
            .or_default()
            .push(payload);
    };
    let versions = ["passthrough", "uppercase", "passthrough", "uppercase"];
    tokio::time::sleep(Duration::from_millis(800)).await;
    for version in versions {
        let uppercase_next = version == "uppercase";
        let written = Instant::now();
        install_atomically(&plugin(version), &host.plugins.join("live.wasm"))?;
        // The first output produced by the new version marks the switch.
        loop {
            let ev = next_event(&mut out, Duration::from_secs(30)).await?;
            let p = ev["payload"].as_str().unwrap_or_default().to_string();
            let is_upper = p.starts_with("MSG-");
            record(ev, &mut results);
            if is_upper == uppercase_next {
                swap_latencies.push(written.elapsed());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let publish_time = publisher.await?;
    let rate = TOTAL as f64 / publish_time.as_secs_f64();
    while results.len() < TOTAL {
        let ev = next_event(&mut out, Duration::from_secs(30))
            .await
            .map_err(|e| anyhow::anyhow!("{e}: {} of {TOTAL} messages came out", results.len()))?;
        record(ev, &mut results);
    }
    let dupes: Vec<_> = results
        .iter()
        .filter(|(_, v)| v.len() != 1)
        .take(5)
        .collect();
    assert!(dupes.is_empty(), "processed more than once: {dupes:?}");
    let upper = results
        .values()
        .filter(|v| v[0].starts_with("MSG-"))
        .count();
    assert!(
        upper > 0 && upper < TOTAL,
        "both versions served ({upper} of {TOTAL} upper)"
    );
    let after = host.handler("live").await?["sha256"].clone();
    assert_ne!(before, serde_json::Value::Null);
    assert_eq!(before, after, "ended on the first version again");

    let mut ms: Vec<f64> = swap_latencies
        .iter()
        .map(|d| d.as_secs_f64() * 1e3)
        .collect();
    ms.sort_by(f64::total_cmp);
    println!(
        "hot reload: {TOTAL} messages at {rate:.0}/s, {} swaps, final write -> first message of the new version: p50 {:.1} ms, max {:.1} ms",
        ms.len(),
        ms[ms.len() / 2],
        ms[ms.len() - 1]
    );
    Ok(())
}

/// A truncated file and a garbage file written over a working plugin never replace it: the old
/// version keeps serving and the error is reported in GET /handlers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_files_never_replace_a_working_plugin() -> anyhow::Result<()> {
    let host = start_with("keep", "uppercase").await?;
    let mut out = host.sse("out").await?;
    let good = host.handler("keep").await?;
    let bytes = std::fs::read(plugin("passthrough"))?;
    let target = host.plugins.join("keep.wasm");
    for (what, broken) in [
        ("truncated", bytes[..bytes.len() / 2].to_vec()),
        ("garbage", b"this is not a wasm component".to_vec()),
    ] {
        std::fs::write(&target, &broken)?;
        // Wait until the host has looked at it and reported the failure.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let h = host.handler("keep").await?;
            if h["last_error"].as_str().is_some_and(|e| !e.is_empty()) {
                assert_eq!(h["sha256"], good["sha256"], "{what}: version changed: {h}");
                assert_eq!(h["state"], "running", "{what}: {h}");
                break;
            }
            assert!(Instant::now() < deadline, "{what}: no error reported: {h}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        host.publish("in", what).await?;
        let ev = next_event(&mut out, Duration::from_secs(10)).await?;
        assert_eq!(
            ev["payload"],
            what.to_uppercase(),
            "old version still serves"
        );
    }
    Ok(())
}

/// Deleting a plugin stops its handler after the messages it holds; none is lost: what was
/// published before the delete came out, and the handler reports `stopped`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_plugin_stops_its_handler_without_losing_messages() -> anyhow::Result<()> {
    let host = start_with("gone", "uppercase").await?;
    let mut out = host.sse("out").await?;
    for i in 0..200 {
        host.publish("in", &format!("m{i}")).await?;
    }
    let mut got = std::collections::HashSet::new();
    while got.len() < 200 {
        let ev = next_event(&mut out, Duration::from_secs(20)).await?;
        got.insert(ev["payload"].as_str().unwrap_or_default().to_string());
    }
    std::fs::remove_file(host.plugins.join("gone.wasm"))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let state = match host.handler("gone").await {
            Ok(h) => h["state"].as_str().unwrap_or_default().to_string(),
            Err(_) => "removed".to_string(),
        };
        if state == "stopped" || state == "removed" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "handler still {state} after delete"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(got.len(), 200);
    // Putting the file back brings the handler back.
    install_atomically(&plugin("uppercase"), &host.plugins.join("gone.wasm"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if host
            .handler("gone")
            .await
            .is_ok_and(|h| h["state"] == "running")
        {
            break;
        }
        assert!(Instant::now() < deadline, "handler did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    host.publish("in", "back").await?;
    let ev = next_event(&mut out, Duration::from_secs(10)).await?;
    assert_eq!(ev["payload"], "BACK");
    Ok(())
}

/// A middleware component written over a handler's file is refused: it compiles, but it does
/// not implement the handler world the file serves. The old version keeps serving, and the
/// refusal is logged and shown in GET /handlers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_middleware_written_over_a_handler_is_refused() -> anyhow::Result<()> {
    let mut host = start_with("keep", "uppercase").await?;
    let mut out = host.sse("out").await?;
    let good = host.handler("keep").await?;
    install_atomically(&plugin("audit"), &host.plugins.join("keep.wasm"))?;
    let h = host
        .wait_handler("the refusal of audit over keep.wasm", WAIT, |h| {
            h["name"] == "keep"
                && h["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("middleware"))
        })
        .await?;
    assert_eq!(h["sha256"], good["sha256"], "version changed: {h}");
    assert_eq!(h["state"], "running", "{h}");
    assert_eq!(h["reloads"], 0, "{h}");
    host.wait_log("reload refused", WAIT).await?;
    host.publish("in", "still here").await?;
    let ev = next_event(&mut out, Duration::from_secs(10)).await?;
    assert_eq!(ev["payload"], "STILL HERE", "the old version serves");
    Ok(())
}

/// A second sidecar claiming a running handler's name is refused without touching the
/// owner, listed apart; removing it changes nothing for the owner, whose file still reloads
/// and, deleted, stops it and removes it from GET /handlers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sidecar_claiming_a_running_name_changes_nothing_for_the_owner()
-> anyhow::Result<()> {
    let host = start_with("uppercase", "uppercase").await?;
    let mut out = host.sse("out").await?;
    let owner = host
        .wait_handler("uppercase running", WAIT, |h| {
            h["name"] == "uppercase" && h["state"] == "running"
        })
        .await?;
    std::fs::copy(plugin("passthrough"), host.plugins.join("dup.wasm"))?;
    std::fs::write(
        host.plugins.join("dup.toml"),
        "name = \"uppercase\"\nsubscribe = \"in\"\npublish = \"out\"\n",
    )?;
    let refused = host
        .wait_handler("the refused claim of dup.wasm", WAIT, |h| {
            h["plugin"] == "dup.wasm"
        })
        .await?;
    assert_eq!(refused["name"], "uppercase", "{refused}");
    assert_eq!(refused["state"], "failed", "{refused}");
    let why = refused["last_error"].as_str().unwrap_or_default();
    assert!(why.contains("uppercase.wasm"), "names the owner: {why}");
    let o = host.handler("uppercase").await?;
    assert_eq!(o["plugin"], "uppercase.wasm", "{o}");
    assert_eq!(o["state"], "running", "{o}");
    assert_eq!(o["sha256"], owner["sha256"], "{o}");
    assert_eq!(o["last_error"], serde_json::Value::Null, "{o}");
    // Exactly one handler consumes: the owner.
    host.publish("in", "during").await?;
    let ev = next_event(&mut out, Duration::from_secs(10)).await?;
    assert_eq!(ev["payload"], "DURING");

    std::fs::remove_file(host.plugins.join("dup.toml"))?;
    std::fs::remove_file(host.plugins.join("dup.wasm"))?;
    host.wait_no_handler("dup.wasm", WAIT, |h| h["plugin"] == "dup.wasm")
        .await?;
    let o = host.handler("uppercase").await?;
    assert_eq!(o["plugin"], "uppercase.wasm", "{o}");
    assert_eq!(o["state"], "running", "{o}");

    // The owner still takes new versions...
    install_atomically(&plugin("passthrough"), &host.plugins.join("uppercase.wasm"))?;
    let o = host
        .wait_handler("the owner's reload", WAIT, |h| {
            h["name"] == "uppercase" && h["reloads"] == 1
        })
        .await?;
    assert_ne!(o["sha256"], owner["sha256"], "{o}");
    assert_eq!(o["last_error"], serde_json::Value::Null, "{o}");
    host.publish("in", "after").await?;
    let ev = next_event(&mut out, Duration::from_secs(10)).await?;
    assert_eq!(
        ev["payload"], "after",
        "the new version (passthrough) serves"
    );
    // ...and deleting its file stops it and removes it.
    std::fs::remove_file(host.plugins.join("uppercase.wasm"))?;
    host.wait_no_handler("uppercase after its file was deleted", WAIT, |h| {
        h["name"] == "uppercase"
    })
    .await?;
    Ok(())
}

/// A sidecar holding `count` messages in flight: the throttle lets one through every `per`.
fn throttled_sidecar(topic: &str, count: usize, per: &str) -> String {
    format!(
        "subscribe = \"{topic}-in\"\npublish = \"{topic}-out\"\nconcurrency = {count}\n\
         middleware = [{{ throttle = {{ count = 1, per = \"{per}\" }} }}]\n"
    )
}

/// While one plugin's stop waits for its in-flight messages, another plugin's new version is
/// swapped in: the reload does not queue behind the stop. The stop then loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_stop_does_not_delay_another_plugins_reload() -> anyhow::Result<()> {
    let host = start_folder(
        &[("slow.wasm", "uppercase"), ("fast.wasm", "uppercase")],
        &[
            ("slow.toml", &throttled_sidecar("slow", 4, "5s")),
            ("fast.toml", "subscribe = \"in\"\npublish = \"out\"\n"),
        ],
    )
    .await?;
    let mut slow_out = host.sse("slow-out").await?;
    for i in 0..4 {
        host.publish("slow-in", &format!("s{i}")).await?;
    }
    // The first passes the throttle at once; three stay in flight for 5, 10 and 15 s.
    let mut got = std::collections::HashSet::new();
    let ev = next_event(&mut slow_out, Duration::from_secs(10)).await?;
    got.insert(ev["payload"].as_str().unwrap_or_default().to_string());
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::remove_file(host.plugins.join("slow.wasm"))?;

    let fast_before = host.handler("fast").await?["sha256"].clone();
    install_atomically(&plugin("passthrough"), &host.plugins.join("fast.wasm"))?;
    host.wait_handler("fast.wasm's reload", WAIT, |h| {
        h["name"] == "fast" && h["sha256"] != fast_before
    })
    .await?;
    let slow = host.handler("slow").await?;
    assert_eq!(
        slow["state"], "running",
        "slow.wasm's stop had finished before fast.wasm reloaded: the reload waited for it ({slow})"
    );

    while got.len() < 4 {
        let ev = next_event(&mut slow_out, WAIT).await?;
        got.insert(ev["payload"].as_str().unwrap_or_default().to_string());
    }
    let want: std::collections::HashSet<String> = (0..4).map(|i| format!("S{i}")).collect();
    assert_eq!(got, want);
    host.wait_no_handler("slow after its stop", WAIT, |h| h["name"] == "slow")
        .await?;
    Ok(())
}

/// A plugin deleted while it holds messages in flight stops only after they are handled:
/// every one of them comes out, once; then its handler leaves GET /handlers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_plugin_with_messages_in_flight_loses_none() -> anyhow::Result<()> {
    const N: usize = 12;
    let host = start_folder(
        &[("held.wasm", "uppercase")],
        &[("held.toml", &throttled_sidecar("held", N, "250ms"))],
    )
    .await?;
    let mut out = host.sse("held-out").await?;
    for i in 0..N {
        host.publish("held-in", &format!("m{i}")).await?;
    }
    // One came out: the others are in flight, held by the throttle for up to 3 s.
    let first = next_event(&mut out, Duration::from_secs(10)).await?;
    // Let the handler take every published message off its subscription (on a loaded machine
    // that can lag the HTTP answers); what is taken is in flight and must come out.
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::fs::remove_file(host.plugins.join("held.wasm"))?;
    host.wait_no_handler("held after its file was deleted", WAIT, |h| {
        h["name"] == "held"
    })
    .await?;
    let mut got: HashMap<String, usize> = HashMap::new();
    *got.entry(first["payload"].as_str().unwrap_or_default().to_string())
        .or_default() += 1;
    for _ in 1..N {
        // Handled before the handler stopped: already published.
        let ev = next_event(&mut out, Duration::from_secs(10)).await?;
        *got.entry(ev["payload"].as_str().unwrap_or_default().to_string())
            .or_default() += 1;
    }
    let want: HashMap<String, usize> = (0..N).map(|i| (format!("M{i}"), 1)).collect();
    assert_eq!(got, want, "every in-flight message came out once");
    Ok(())
}

/// `bytes` with a custom section appended: the same component, another sha256.
fn with_custom_section(mut bytes: Vec<u8>, tag: &[u8]) -> Vec<u8> {
    let name = b"wasmill-test";
    let len = 1 + name.len() + tag.len();
    assert!(len < 128, "one-byte LEB128 sizes only");
    bytes.extend_from_slice(&[0, len as u8, name.len() as u8]);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(tag);
    bytes
}

/// Publishes `payload` with the metadata the `audit` middleware requires.
async fn send_audited(host: &Host, payload: &str) -> anyhow::Result<String> {
    host.publish_json(
        "in",
        serde_json::json!({"payload": payload, "metadata": {"tenant": "t1"}}),
    )
    .await
}

/// A changed `{ wasm }` middleware file: a handler component written over it is refused
/// (the old version keeps serving); a new build of the middleware is swapped into the chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_wasm_middleware_is_hot_reloaded() -> anyhow::Result<()> {
    let mut host = start_folder(
        &[("audit.wasm", "audit"), ("audited.wasm", "uppercase")],
        &[(
            "audited.toml",
            "subscribe = \"in\"\npublish = \"out\"\nmiddleware = [{ wasm = \"audit.wasm\" }]\n",
        )],
    )
    .await?;
    let mut out = host.sse("out").await?;
    let audit = std::fs::read(plugin("audit"))?;
    let before = host.handler("audited").await?;
    let mw = &before["wasm_middleware"][0];
    assert_eq!(mw["file"], "audit.wasm", "{before}");
    assert_eq!(mw["sha256"], wasmill::wasm::component::sha256_hex(&audit));
    send_audited(&host, "a").await?;
    let ev = next_event(&mut out, Duration::from_secs(10)).await?;
    assert_eq!(ev["payload"], "A");
    assert_eq!(ev["metadata"]["audit_after"], "1", "{ev}");

    // A handler written over the middleware's file is refused.
    install_atomically(&plugin("passthrough"), &host.plugins.join("audit.wasm"))?;
    let h = host
        .wait_handler("the refusal of a handler over audit.wasm", WAIT, |h| {
            h["name"] == "audited" && h["wasm_middleware"][0]["last_error"].is_string()
        })
        .await?;
    assert_eq!(h["wasm_middleware"][0]["sha256"], mw["sha256"], "{h}");
    assert!(
        h["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("audit.wasm")),
        "{h}"
    );
    send_audited(&host, "b").await?;
    let ev = next_event(&mut out, Duration::from_secs(10)).await?;
    assert_eq!(ev["payload"], "B");
    assert_eq!(ev["metadata"]["audit_after"], "1", "still audited: {ev}");

    // A new build of the middleware is swapped in.
    let v2 = with_custom_section(audit, b"v2");
    let v2_sha = wasmill::wasm::component::sha256_hex(&v2);
    let tmp = host.plugins.join("audit.wasm.tmp-install");
    std::fs::write(&tmp, &v2)?;
    std::fs::rename(&tmp, host.plugins.join("audit.wasm"))?;
    let h = host
        .wait_handler("the reload of audit.wasm", WAIT, |h| {
            h["name"] == "audited" && h["wasm_middleware"][0]["sha256"] == v2_sha.as_str()
        })
        .await?;
    assert_eq!(h["wasm_middleware"][0]["reloads"], 1, "{h}");
    assert_eq!(
        h["wasm_middleware"][0]["last_error"],
        serde_json::Value::Null,
        "{h}"
    );
    assert_eq!(h["last_error"], serde_json::Value::Null, "{h}");
    host.wait_log("middleware reloaded", WAIT).await?;
    send_audited(&host, "c").await?;
    let ev = next_event(&mut out, Duration::from_secs(10)).await?;
    assert_eq!(ev["payload"], "C");
    assert_eq!(ev["metadata"]["audit_after"], "1", "{ev}");
    Ok(())
}

/// When the owner of a handler name goes away, a file refused that name gets it. (Two files
/// claiming one name at start are a configuration error: `wasmill run` refuses to start, see
/// tests/e2e_config.rs; here the second one is dropped in while the host runs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_claim_gets_the_name_once_its_owner_leaves() -> anyhow::Result<()> {
    let (dir, plugins) = Host::scratch()?;
    std::fs::copy(plugin("uppercase"), plugins.join("uppercase.wasm"))?;
    std::fs::write(
        plugins.join("uppercase.toml"),
        "subscribe = \"in\"\npublish = \"out\"\n",
    )?;
    let host = Host::start(dir, plugins, &[]).await?;
    host.wait_handler("uppercase.wasm running", WAIT, |h| {
        h["plugin"] == "uppercase.wasm" && h["state"] == "running"
    })
    .await?;
    std::fs::write(
        host.plugins.join("dup.toml"),
        "name = \"uppercase\"\nsubscribe = \"in\"\npublish = \"out\"\n",
    )?;
    install_atomically(&plugin("passthrough"), &host.plugins.join("dup.wasm"))?;
    let refused = host
        .wait_handler("dup.wasm refused", WAIT, |h| {
            h["plugin"] == "dup.wasm" && h["state"] == "failed"
        })
        .await?;
    assert_eq!(refused["name"], "uppercase", "{refused}");
    std::fs::remove_file(host.plugins.join("uppercase.wasm"))?;
    let h = host
        .wait_handler("dup.wasm taking the freed name", WAIT, |h| {
            h["name"] == "uppercase" && h["plugin"] == "dup.wasm" && h["state"] == "running"
        })
        .await?;
    assert_eq!(h["last_error"], serde_json::Value::Null, "{h}");
    let list = host.handler_list().await?;
    assert_eq!(list.len(), 1, "only dup.wasm's handler is left: {list:?}");
    Ok(())
}

/// GET /readyz as (status, JSON body).
async fn readyz(host: &Host) -> anyhow::Result<(u16, serde_json::Value)> {
    let r = host.http.get(format!("{}/readyz", host.url)).send().await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await?))
}

/// A plugin that fails to load (written while the host runs) makes /readyz answer 503 naming it (with the reason) while a
/// good plugin serves; once the failed file is deleted it leaves GET /handlers and /readyz
/// answers 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_failed_plugin_leaves_handlers_and_readyz() -> anyhow::Result<()> {
    let (dir, plugins) = Host::scratch()?;
    std::fs::copy(plugin("uppercase"), plugins.join("good.wasm"))?;
    std::fs::write(
        plugins.join("good.toml"),
        "subscribe = \"in\"\npublish = \"out\"\n",
    )?;
    let host = Host::start(dir, plugins, &[]).await?;
    host.wait_handler("good running", WAIT, |h| {
        h["plugin"] == "good.wasm" && h["state"] == "running"
    })
    .await?;
    assert_eq!(readyz(&host).await?.0, 200, "only a running plugin");
    // The up-front config check refuses a broken file at start: it arrives while running.
    std::fs::write(host.plugins.join("bad.toml"), "subscribe = \"bad-in\"\n")?;
    std::fs::write(
        host.plugins.join("bad.wasm"),
        b"this is not a wasm component",
    )?;
    host.wait_handler("bad failed", WAIT, |h| {
        h["plugin"] == "bad.wasm" && h["state"] == "failed"
    })
    .await?;
    let (status, body) = readyz(&host).await?;
    assert_eq!(status, 503, "{body}");
    let failed = body["failed"].to_string();
    assert!(failed.contains("bad (bad.wasm)"), "{body}");
    assert!(!failed.contains("good"), "{body}");

    std::fs::remove_file(host.plugins.join("bad.wasm"))?;
    host.wait_no_handler("bad.wasm gone", WAIT, |h| h["plugin"] == "bad.wasm")
        .await?;
    let (status, body) = readyz(&host).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ready"], true, "{body}");
    Ok(())
}
