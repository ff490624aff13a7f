//! The SSE route against a served API: clients that leave take their consumer groups with
//! them, and a client that reads nothing never holds a producer back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use super::*;
use crate::message::Message;
use crate::pubsub::registry;

async fn serve_backend(
    kind: &str,
    settings: &str,
) -> (String, Backend, tokio_util::sync::CancellationToken) {
    serve_limited(kind, settings, ConnLimits::default()).await
}

async fn serve_limited(
    kind: &str,
    settings: &str,
    limits: ConnLimits,
) -> (String, Backend, tokio_util::sync::CancellationToken) {
    let table: toml::Table = toml::from_str(settings).unwrap();
    let backend = registry::connect("b", kind, &table).await.unwrap();
    let mut backends = HashMap::new();
    backends.insert("b".to_string(), backend);
    let state = ApiState {
        backends: Arc::new(backends.clone()),
        default_pubsub: "b".into(),
        plugins: None,
        router: crate::router::Router::new(crate::router::RouterConfig::default()),
        max_body: 1 << 20,
        access: Default::default(),
        limits,
        poison: crate::components::poison_keeper::PoisonKeeper::new(100),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move { serve(listener, state, async move { s.cancelled().await }).await });
    (url, backends.remove("b").unwrap(), stop)
}

/// Opens and closes `n` SSE clients of `topic`, `parallel` at a time, each waiting for the
/// response head (by then its subscription exists).
async fn churn(url: &str, topic: &str, n: usize, parallel: usize) {
    let client = reqwest::Client::new();
    let url = format!("{url}/topics/{topic}/messages");
    futures::stream::iter(0..n)
        .for_each_concurrent(parallel, |_| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let r = client.get(&url).send().await.expect("SSE request");
                assert!(r.status().is_success(), "{}", r.status());
                drop(r);
            }
        })
        .await;
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left = check().await;
        if left == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {left} left behind"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sse_clients_leave_no_redis_group_behind() {
    let (url, _backend, stop) = serve_backend("redis", "url = \"redis://127.0.0.1:6379\"").await;
    let topic = crate::pubsub::conformance::unique_topic("sse_churn");
    churn(&url, &topic, 1000, 20).await;
    let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    eventually("redis consumer groups", async || {
        let groups: Vec<redis::Value> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&topic)
            .query_async(&mut con)
            .await
            .unwrap_or_default();
        groups.len()
    })
    .await;
    let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(&topic).query_async(&mut con).await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sse_clients_leave_no_nats_consumer_behind() {
    let (url, backend, stop) = serve_backend("nats", "url = \"nats://127.0.0.1:4222\"").await;
    let topic = crate::pubsub::conformance::unique_topic("sse_churn");
    churn(&url, &topic, 1000, 20).await;
    let js = async_nats::jetstream::new(async_nats::connect("127.0.0.1:4222").await.unwrap());
    let name = crate::pubsub::nats::stream_name(&topic);
    eventually("nats consumers", async || {
        let mut stream = js.get_stream(&name).await.unwrap();
        stream.info().await.unwrap().state.consumer_count
    })
    .await;
    let _ = backend.subscriber.remove_topic(&topic).await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_nothing_never_blocks_the_producer() {
    let (url, backend, stop) = serve_backend("memory", "").await;
    let client = reqwest::Client::new();
    // Connected, never read: its socket and its queue fill up.
    let stalled = client
        .get(format!("{url}/topics/busy/messages"))
        .send()
        .await
        .unwrap();
    assert!(stalled.status().is_success());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let payload = "x".repeat(1000);
    let published = tokio::time::timeout(Duration::from_secs(60), async {
        for _ in 0..20_000 {
            backend
                .publisher
                .publish("busy", vec![Message::new(payload.clone())])
                .await
                .unwrap();
        }
    })
    .await;
    assert!(
        published.is_ok(),
        "the producer was held back by a client that reads nothing"
    );
    let metrics = client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dropped: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("wasmill_sse_dropped_total{topic=\"busy\"} "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        dropped > 0,
        "drops for the slow client are counted:\n{metrics}"
    );
    drop(stalled);
    stop.cancel();
}

/// Reads `stream` until the server closes it; how long that took, or `None` past `limit`.
async fn closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let started = tokio::time::Instant::now();
    let mut buf = Vec::new();
    tokio::time::timeout(limit, stream.read_to_end(&mut buf))
        .await
        .ok()
        .map(|_| started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_connections_are_closed_after_their_timeouts() {
    use tokio::io::AsyncWriteExt;
    let limits = ConnLimits {
        header_timeout: Duration::from_millis(500),
        body_timeout: Duration::from_millis(500),
        ..ConnLimits::default()
    };
    let (url, _backend, stop) = serve_limited("memory", "", limits).await;
    let addr = url.trim_start_matches("http://");
    // Silent from the start.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Half a request head, never finished.
    let mut slow_head = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow_head
        .write_all(b"POST /topics/t HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    // A request answered, then idle on keep-alive.
    let mut kept = tokio::net::TcpStream::connect(addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    // A body announced and never sent in full.
    let mut slow_body = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow_body
        .write_all(b"POST /topics/t HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\nabc")
        .await
        .unwrap();
    for (what, s) in [
        ("silent", &mut silent),
        ("slow head", &mut slow_head),
        ("idle keep-alive", &mut kept),
        ("slow body", &mut slow_body),
    ] {
        let took = closed_within(s, Duration::from_secs(10)).await;
        assert!(took.is_some(), "{what}: still open after 10 s");
    }
    stop.cancel();
}
