//! Starting with large components: the HTTP API answers at once (`/healthz`), `/readyz` names
//! what is still compiling, a message published meanwhile waits in its handler's subscription
//! and is handled once the plugin is loaded, and a plugin that does not compile is listed as
//! failed while the others serve.

use std::time::Duration;

#[path = "support/mod.rs"]
mod support;

use support::{Host, next_event};

/// `GET /readyz`: (status, body).
async fn readyz(host: &Host) -> anyhow::Result<(u16, serde_json::Value)> {
    let r = reqwest::get(format!("{}/readyz", host.url)).await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await?))
}

async fn wait_ready(host: &Host, limit: Duration) -> anyhow::Result<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let (status, body) = readyz(host).await?;
        if status == 200 {
            return Ok(body);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "not ready within {limit:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_api_answers_while_a_python_plugin_compiles_and_its_messages_wait_for_it()
-> anyhow::Result<()> {
    let (dir, plugins) = Host::scratch()?;
    // A compile cache of its own: the 18 MB Python component compiles cold (seconds).
    std::fs::write(
        dir.path().join("wasmill.toml"),
        "[host]\ncache_dir = \"cache\"\n",
    )?;
    std::fs::copy(
        support::plugin("uppercase-py"),
        plugins.join("uppercase-py.wasm"),
    )?;
    std::fs::write(
        plugins.join("uppercase-py.toml"),
        "subscribe = \"in\"\npublish = \"out\"\n",
    )?;
    let host = Host::start(dir, plugins, &[]).await?;

    let (status, body) = readyz(&host).await?;
    assert_eq!(status, 503, "ready before the plugin compiled: {body}");
    assert_eq!(
        body["compiling"][0], "uppercase-py (uppercase-py.wasm)",
        "{body}"
    );
    let handler = host.handler("uppercase-py").await?;
    assert_eq!(handler["state"], "pending", "{handler}");

    let mut out = host.sse("out").await?;
    host.publish("in", "published while compiling").await?;
    let (status, body) = readyz(&host).await?;
    assert_eq!(
        status, 503,
        "the message was not published during the compile: {body}"
    );

    wait_ready(&host, Duration::from_secs(300)).await?;
    let event = next_event(&mut out, Duration::from_secs(30)).await?;
    assert_eq!(event["payload"], "PUBLISHED WHILE COMPILING");
    let handler = host.handler("uppercase-py").await?;
    assert_eq!(handler["state"], "running", "{handler}");
    Ok(())
}

#[tokio::test]
async fn a_configured_plugin_that_does_not_compile_is_failed_and_the_others_serve()
-> anyhow::Result<()> {
    let (dir, plugins) = Host::scratch()?;
    std::fs::write(plugins.join("broken.wasm"), b"\0asm but not a component")?;
    std::fs::write(
        dir.path().join("wasmill.toml"),
        "[[handlers]]\nname = \"broken\"\nplugin = \"broken.wasm\"\nsubscribe = \"b-in\"\n",
    )?;
    std::fs::copy(support::plugin("uppercase"), plugins.join("uppercase.wasm"))?;
    std::fs::write(
        plugins.join("uppercase.toml"),
        "subscribe = \"in\"\npublish = \"out\"\n",
    )?;
    let host = Host::start(dir, plugins, &[]).await?;
    let broken = host
        .wait_handler("broken failed", Duration::from_secs(60), |h| {
            h["name"] == "broken" && h["state"] == "failed"
        })
        .await?;
    assert!(
        broken["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("broken.wasm"),
        "{broken}"
    );
    let (status, body) = readyz(&host).await?;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["failed"][0]
            .as_str()
            .unwrap_or("")
            .starts_with("broken (broken.wasm): "),
        "{body}"
    );

    host.wait_handler("uppercase running", Duration::from_secs(60), |h| {
        h["name"] == "uppercase" && h["state"] == "running"
    })
    .await?;
    let mut out = host.sse("out").await?;
    host.publish("in", "still serving").await?;
    let event = next_event(&mut out, Duration::from_secs(30)).await?;
    assert_eq!(event["payload"], "STILL SERVING");
    Ok(())
}
