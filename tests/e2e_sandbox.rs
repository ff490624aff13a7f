//! The sandbox seen from outside: a plugin that allocates memory without bound runs in the
//! real binary under a memory cap; every attempt ends at the cap, the message lands in the
//! poison queue with reason `memory limit`, and the host's own peak memory stays within the
//! cap (plus the host's fixed overhead) however many attempts are made.

use std::time::Duration;

#[path = "support/mod.rs"]
mod support;

use support::{Host, next_event, plugin};

const CAP_MIB: u64 = 32;
const ATTEMPTS: u64 = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_hog_never_grows_the_host_past_its_cap() -> anyhow::Result<()> {
    let (dir, plugins) = Host::scratch()?;
    std::fs::copy(plugin("memory-hog"), plugins.join("hog.wasm"))?;
    std::fs::write(
        plugins.join("hog.toml"),
        format!(
            "subscribe = \"hog_in\"\n\
             memory = \"{CAP_MIB}MiB\"\n\
             timeout = \"20s\"\n\
             middleware = [\n\
               {{ poison_queue = {{ topic = \"poison\" }} }},\n\
               {{ retry = {{ max_retries = {}, initial_interval = \"10ms\" }} }},\n\
             ]\n",
            ATTEMPTS - 1
        ),
    )?;
    let host = Host::start(dir, plugins, &[]).await?;
    let mut poison = host.sse("poison").await?;
    let before = host.peak_rss()?;

    host.publish("hog_in", "grow").await?;
    let poisoned = next_event(&mut poison, Duration::from_secs(120)).await?;
    let reason = poisoned["metadata"]["reason_poisoned"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(reason, "memory limit", "{poisoned}");

    let after = host.peak_rss()?;
    let grown_mib = after.saturating_sub(before) >> 20;
    println!(
        "memory-hog: {ATTEMPTS} attempts at a {CAP_MIB} MiB cap; host peak RSS {} -> {} MiB (+{grown_mib} MiB)",
        before >> 20,
        after >> 20
    );
    // One instance at its cap, plus room for the fresh instance and the host's own buffers;
    // a leak of even two capped instances would exceed it.
    assert!(
        grown_mib < 2 * CAP_MIB,
        "the host grew by {grown_mib} MiB over {ATTEMPTS} attempts at a {CAP_MIB} MiB cap"
    );
    let h = host.handler("hog").await?;
    assert_eq!(h["state"], "running", "the handler keeps serving: {h}");
    Ok(())
}

/// Two handlers whose guests compute until their 3 s deadline, five messages each, on the
/// real binary (a 2-core machine): `/healthz` keeps answering quickly, a third handler keeps
/// serving, and SIGTERM still closes the host (cutting the guests off at `close_timeout`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spinning_guests_leave_the_http_api_and_other_handlers_alone() -> anyhow::Result<()> {
    let (dir, plugins) = Host::scratch()?;
    for name in ["spin1", "spin2"] {
        std::fs::copy(plugin("spin-forever"), plugins.join(format!("{name}.wasm")))?;
        std::fs::write(
            plugins.join(format!("{name}.toml")),
            format!("subscribe = \"{name}_in\"\nfuel = 1_000_000_000_000\ntimeout = \"3s\"\n"),
        )?;
    }
    std::fs::copy(plugin("uppercase"), plugins.join("up.wasm"))?;
    std::fs::write(
        plugins.join("up.toml"),
        "subscribe = \"up_in\"\npublish = \"up_out\"\n",
    )?;
    std::fs::write(
        dir.path().join("wasmill.toml"),
        "[host]\nclose_timeout = \"2s\"\n",
    )?;
    let host = Host::start(dir, plugins, &["--config", "wasmill.toml"]).await?;
    let mut out = host.sse("up_out").await?;

    // The third handler's rate alone, then beside the spinning guests.
    let alone = relay_rate(&host, &mut out, 200).await?;
    for _ in 0..5 {
        host.publish("spin1_in", "x").await?;
        host.publish("spin2_in", "x").await?;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut latencies = Vec::new();
    for _ in 0..100 {
        let asked = std::time::Instant::now();
        let r = host
            .http
            .get(format!("{}/healthz", host.url))
            .timeout(Duration::from_secs(10))
            .send()
            .await?;
        assert!(r.status().is_success());
        latencies.push(asked.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let beside = relay_rate(&host, &mut out, 200).await?;
    latencies.sort();
    let p99 = latencies[98];
    println!(
        "two spinning guests: /healthz p99 {p99:?} (max {:?}); third handler {beside:.0} msgs/s beside them, {alone:.0} alone",
        latencies[99]
    );
    // Generous bounds (a shared 2-core machine): the figures themselves are printed above.
    assert!(p99 < Duration::from_millis(250), "/healthz p99 {p99:?}");
    // The target is half the rate (0.74x measured on a quiet machine); a quarter
    // keeps the test meaningful (0.03x without the guest lane) when other processes load the
    // machine's two cores.
    assert!(
        beside >= alone / 4.0,
        "the third handler fell from {alone:.0} to {beside:.0} msgs/s"
    );
    let status = host.terminate(Duration::from_secs(30)).await?;
    assert!(status.code().is_some(), "SIGTERM closed the host: {status}");
    Ok(())
}

/// Messages/s through the `up` handler: `n` published over HTTP, the `n` outputs read back.
async fn relay_rate(
    host: &Host,
    out: &mut tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    n: u32,
) -> anyhow::Result<f64> {
    let started = std::time::Instant::now();
    for _ in 0..n {
        host.publish("up_in", "x").await?;
    }
    for _ in 0..n {
        next_event(out, Duration::from_secs(30)).await?;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// With no failure handling configured, the default policy retries an always-failing message
/// with growing waits and then poisons it to `<topic>.poison` (the unit tests of
/// `failure_policy` show the next message handled right after).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_policy_poisons_a_failing_message_and_moves_on() -> anyhow::Result<()> {
    let (dir, plugins) = Host::scratch()?;
    std::fs::copy(plugin("always-fail"), plugins.join("fail.wasm"))?;
    std::fs::write(plugins.join("fail.toml"), "subscribe = \"jobs\"\n")?;
    let host = Host::start(dir, plugins, &[]).await?;
    let mut poison = host.sse("jobs.poison").await?;
    let started = std::time::Instant::now();
    host.publish("jobs", "x").await?;
    let poisoned = next_event(&mut poison, Duration::from_secs(30)).await?;
    let took = started.elapsed();
    assert_eq!(
        poisoned["metadata"]["reason_poisoned"], "always fails",
        "{poisoned}"
    );
    assert_eq!(
        poisoned["metadata"]["handler_poisoned"], "fail",
        "{poisoned}"
    );
    // Five attempts, 100 + 200 + 400 + 800 ms apart.
    assert!(
        took >= Duration::from_millis(1400),
        "poisoned after {took:?}"
    );
    let h = host.handler("fail").await?;
    assert_eq!(h["counts"]["retried"], 4, "{h}");
    assert_eq!(h["counts"]["poisoned"], 1, "{h}");
    Ok(())
}
