//! The quick start, end to end: a plugin with a sidecar in the plugins folder, a message
//! published over HTTP, the result read over Server-Sent Events, then a graceful SIGTERM.
//! Then the API against careless and hostile clients: a flood of idle connections, foreign
//! origins and hosts, a missing token, odd media types, too many topics.

use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::io::AsyncReadExt;

#[path = "support/mod.rs"]
mod support;

use support::{Host, next_event, plugin};

/// A host with `wasmill.toml` = `config` in its folder.
async fn host_with(config: &str, fd_limit: Option<u64>) -> anyhow::Result<Host> {
    let (dir, plugins) = Host::scratch()?;
    std::fs::write(dir.path().join("wasmill.toml"), config)?;
    Host::start_with(dir, plugins, &["--config", "wasmill.toml"], fd_limit).await
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_idle_connections_leave_healthz_answering() -> anyhow::Result<()> {
    // The host gets fewer descriptors than the flood, as a default `ulimit -n` would give it;
    // the default max_connections (1024) fits.
    let host = host_with("[host]\nheader_timeout = \"3s\"\n", Some(4096)).await?;
    let soft = support::raise_fd_limit()?;
    let n = 20_000usize.min(soft.saturating_sub(500) as usize);
    assert!(
        n > 4096 + 1000,
        "this process's descriptor limit ({soft}) is too low"
    );
    let addr = host.url.trim_start_matches("http://").to_string();
    let started = Instant::now();
    let idle: Vec<tokio::net::TcpStream> = futures::stream::iter(0..n)
        .map(|_| {
            let addr = addr.clone();
            async move {
                tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
        })
        // Few connects at a time, so the listener's accept queue never overflows (a client
        // whose handshake the kernel completed but the queue dropped would hold a socket the
        // host never saw).
        .buffer_unordered(32)
        .filter_map(|s| async move { s })
        .collect()
        .await;
    eprintln!(
        "{} of {n} idle connections opened in {:?}",
        idle.len(),
        started.elapsed()
    );

    // A fresh client is answered at once while the flood is held.
    let started = Instant::now();
    let health = tokio::time::timeout(
        Duration::from_secs(10),
        reqwest::Client::new()
            .get(format!("{}/healthz", host.url))
            .send(),
    )
    .await;
    let status = match &health {
        Ok(Ok(r)) => r.status().as_u16(),
        _ => 0,
    };
    assert_eq!(status, 200, "/healthz during the flood: {health:?}");
    eprintln!("/healthz answered in {:?}", started.elapsed());
    let fds = host.open_fds()?;
    eprintln!("the host holds {fds} descriptors");
    assert!(fds <= 1024 + 256, "the host holds {fds} descriptors");

    // Every idle connection is closed by the host: made room for, or past header_timeout.
    let opened = idle.len();
    let closed = futures::stream::iter(idle)
        .map(|mut s| async move {
            let mut buf = Vec::new();
            tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut buf))
                .await
                .is_ok()
        })
        .buffer_unordered(4096)
        .filter(|closed| futures::future::ready(*closed))
        .count()
        .await;
    assert_eq!(closed, opened, "idle connections left open by the host");
    let r = host
        .http
        .get(format!("{}/healthz", host.url))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 200);
    Ok(())
}

/// A `text/plain` POST (a browser sends it cross-origin without a preflight) with optional
/// `Origin` and `Host` headers; the status and the answer.
async fn post_from(
    host: &Host,
    origin: Option<&str>,
    host_header: Option<&str>,
) -> anyhow::Result<(u16, reqwest::header::HeaderMap, String)> {
    let mut req = host
        .http
        .post(format!("{}/topics/browser", host.url))
        .header("content-type", "text/plain")
        .body("from a page");
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    if let Some(h) = host_header {
        req = req.header("host", h);
    }
    let r = req.send().await?;
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    Ok((status, headers, r.text().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_origin_and_foreign_host_requests_are_refused() -> anyhow::Result<()> {
    let host = host_with(
        "[host]\nallowed_origins = [\"http://dash.example:3000\"]\nallowed_hosts = [\"wasmill.internal\"]\n",
        None,
    )
    .await?;
    let own = host.url.clone();
    let port = own.rsplit(':').next().unwrap_or_default().to_string();

    // A page on another site, straight or through DNS rebinding.
    let (s, _, body) = post_from(&host, Some("http://evil.example"), None).await?;
    assert_eq!(s, 403, "{body}");
    assert!(body.contains("allowed_origins"), "{body}");
    let evil_host = format!("evil.example:{port}");
    let (s, _, body) =
        post_from(&host, Some("http://evil.example"), Some(evil_host.as_str())).await?;
    assert_eq!(s, 403, "{body}");
    let (s, _, body) = post_from(&host, None, Some(evil_host.as_str())).await?;
    assert_eq!(s, 403, "{body}");
    assert!(body.contains("allowed_hosts"), "{body}");
    let sse = host
        .http
        .get(format!("{own}/topics/browser/messages"))
        .header("origin", "http://evil.example")
        .send()
        .await?;
    assert_eq!(sse.status().as_u16(), 403);

    // Programs (no Origin), same-origin pages, listed origins and hosts.
    assert_eq!(post_from(&host, None, None).await?.0, 202);
    assert_eq!(post_from(&host, Some(&own), None).await?.0, 202);
    let localhost = format!("localhost:{port}");
    let localhost_origin = format!("http://{localhost}");
    assert_eq!(
        post_from(&host, Some(&localhost_origin), Some(&localhost))
            .await?
            .0,
        202
    );
    let internal = format!("wasmill.internal:{port}");
    assert_eq!(post_from(&host, None, Some(&internal)).await?.0, 202);
    let (s, headers, body) = post_from(&host, Some("http://dash.example:3000"), None).await?;
    assert_eq!(s, 202, "{body}");
    assert_eq!(
        headers
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("http://dash.example:3000")
    );
    let preflight = |origin: &'static str| {
        host.http
            .request(reqwest::Method::OPTIONS, format!("{own}/topics/browser"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let ok = preflight("http://dash.example:3000").await?;
    assert_eq!(ok.status().as_u16(), 204);
    assert!(ok.headers().contains_key("access-control-allow-methods"));
    assert_eq!(
        preflight("http://evil.example").await?.status().as_u16(),
        403
    );
    Ok(())
}

const TOKEN: &str = "test-token-0123456789abcdef";

/// Runs the `wasmill` CLI with `args` and the environment `env`; (success, stdout, stderr).
async fn cli(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<(bool, String, String)> {
    let out = tokio::process::Command::new(support::binary())
        .args(args)
        .env_remove("WASMILL_TOKEN")
        .envs(env.iter().copied())
        .output()
        .await?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_set_requests_without_it_get_401() -> anyhow::Result<()> {
    let host = host_with(&format!("[host]\ntoken = \"{TOKEN}\"\n"), None).await?;
    let url = host.url.clone();
    let post = |auth: Option<String>| {
        let mut r = host
            .http
            .post(format!("{url}/topics/secret"))
            .body("payload");
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };
    let r = post(None).await?;
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let wrong = post(Some("Bearer test-token-0123456789abcdeX".into())).await?;
    assert_eq!(wrong.status().as_u16(), 401);
    let right = post(Some(format!("Bearer {TOKEN}"))).await?;
    assert_eq!(right.status().as_u16(), 202);
    for path in ["/handlers", "/metrics", "/topics/secret/messages"] {
        let r = host.http.get(format!("{url}{path}")).send().await?;
        assert_eq!(r.status().as_u16(), 401, "{path} without the token");
    }
    let r = host
        .http
        .get(format!("{url}/handlers"))
        .bearer_auth(TOKEN)
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 200);
    let r = host.http.get(format!("{url}/healthz")).send().await?;
    assert_eq!(r.status().as_u16(), 200, "/healthz stays open");

    // The CLI: refused without the token (and told why), accepted with --token or the env.
    let (ok, _, err) = cli(&["publish", "--url", &url, "secret", "x"], &[]).await?;
    assert!(
        !ok && err.contains("401") && err.contains("WASMILL_TOKEN"),
        "{err}"
    );
    let (ok, out, err) = cli(
        &["publish", "--url", &url, "--token", TOKEN, "secret", "x"],
        &[],
    )
    .await?;
    assert!(ok && !out.trim().is_empty(), "{err}");
    let tail = tokio::spawn({
        let url = url.clone();
        async move {
            cli(
                &["tail", "--url", &url, "--count", "1", "secret"],
                &[("WASMILL_TOKEN", TOKEN)],
            )
            .await
        }
    });
    // Publish until the tail has subscribed and read one.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !tail.is_finished() && Instant::now() < deadline {
        let (ok, _, err) = cli(
            &["publish", "--url", &url, "secret", "through the tail"],
            &[("WASMILL_TOKEN", TOKEN)],
        )
        .await?;
        assert!(ok, "{err}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ok, out, err) = tail.await??;
    assert!(ok && out.trim() == "through the tail", "{out}\n{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_media_types_ignore_case_and_parameters() -> anyhow::Result<()> {
    let host = host_with("", None).await?;
    let mut out = host.sse("typed").await?;
    let r = host
        .http
        .post(format!("{}/topics/typed", host.url))
        .header("content-type", "APPLICATION/JSON; charset=utf-8")
        .body(r#"{"metadata":{"k":"v"},"payload":"inside"}"#)
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 202);
    let event = next_event(&mut out, Duration::from_secs(10)).await?;
    assert_eq!(event["payload"], "inside", "{event}");
    assert_eq!(event["metadata"]["k"], "v", "{event}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_past_max_topics_are_refused_with_429() -> anyhow::Result<()> {
    let host = host_with(
        "[pubsub.memory]\nkind = \"memory\"\npersistent = true\nmax_topics = 3\n",
        None,
    )
    .await?;
    for i in 0..3 {
        host.publish(&format!("kept{i}"), "m").await?;
    }
    let r = host
        .http
        .post(format!("{}/topics/one-too-many", host.url))
        .body("m")
        .send()
        .await?;
    let status = r.status().as_u16();
    let body = r.text().await?;
    assert_eq!(status, 429, "{body}");
    assert!(
        body.contains("max_topics") && body.contains("one-too-many"),
        "{body}"
    );
    host.publish("kept0", "still taken").await?;
    Ok(())
}
