//! Hot reload, end to end: a plugin file is overwritten while messages flow, written over with
//! broken bytes, and deleted, and the host keeps every promise of SPEC.md "Plugins folder and
//! hot reload".

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[path = "support/mod.rs"]
mod support;

use support::{Host, install_atomically, next_event, plugin};

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
