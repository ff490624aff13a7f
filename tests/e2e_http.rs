//! The quick start, end to end: a plugin with a sidecar in the plugins folder, a message
//! published over HTTP, the result read over Server-Sent Events, then a graceful SIGTERM.

use std::time::Duration;

#[path = "support/mod.rs"]
mod support;

use support::{Host, next_event, plugin};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_over_http_read_over_sse_then_sigterm() -> anyhow::Result<()> {
    let (dir, plugins) = Host::scratch()?;
    std::fs::copy(plugin("uppercase"), plugins.join("uppercase.wasm"))?;
    std::fs::write(
        plugins.join("uppercase.toml"),
        "subscribe = \"incoming\"\npublish = \"outgoing\"\n",
    )?;
    let host = Host::start(dir, plugins, &[]).await?;

    let health = host
        .http
        .get(format!("{}/healthz", host.url))
        .send()
        .await?;
    assert_eq!(health.status().as_u16(), 200);

    let mut out = host.sse("outgoing").await?;
    let uuid = host.publish("incoming", "hello").await?;
    assert!(!uuid.is_empty());
    let event = next_event(&mut out, Duration::from_secs(10)).await?;
    assert_eq!(event["payload"], "HELLO", "{event}");

    let h = host.handler("uppercase").await?;
    assert_eq!(h["state"], "running", "{h}");
    assert_eq!(h["sha256"].as_str().map(str::len), Some(64), "{h}");

    // JSON publish with metadata and a chosen uuid.
    let r = host
        .http
        .post(format!("{}/topics/incoming", host.url))
        .json(&serde_json::json!({"uuid": "u-1", "metadata": {"k": "v"}, "payload": "json body"}))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 202);
    let event = next_event(&mut out, Duration::from_secs(10)).await?;
    assert_eq!(event["payload"], "JSON BODY");
    assert_eq!(event["metadata"]["k"], "v");

    let bad = host
        .http
        .post(format!("{}/topics/incoming", host.url))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await?;
    assert_eq!(bad.status().as_u16(), 400);

    let metrics = host
        .http
        .get(format!("{}/metrics", host.url))
        .send()
        .await?
        .text()
        .await?;
    assert!(metrics.contains("wasmill_"), "{metrics}");

    let status = host.terminate(Duration::from_secs(20)).await?;
    assert!(status.success(), "SIGTERM exit status {status}");
    Ok(())
}
