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
