//! Crash safety, against the real binary: a `wasmill run` host relaying a topic is killed with
//! SIGKILL three times while clients publish to it over HTTP, and restarted each time. Every
//! message the host answered 202 for was stored, so every one is relayed in the end: lost = 0.
//! Messages handled but not acked when the host died come again (duplicates, counted and
//! printed). Run on SQLite (the embedded durable default, its file kept across restarts) and
//! on each durable broker.
//!
//! `WASMILL_CRASH_MESSAGES` sets the count (1,000 by default; the full run is 10,000).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "support/mod.rs"]
mod support;

use support::{RelayTopics, relay_host};
use tokio::sync::watch;

fn messages() -> usize {
    std::env::var("WASMILL_CRASH_MESSAGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000)
}

/// Concurrent HTTP clients publishing.
const CLIENTS: usize = 4;
/// Kills, evenly spread over the accepted publishes.
const KILLS: usize = 3;

/// Publishes `0..n` to `topic` through whichever host `url` names, from [`CLIENTS`] tasks;
/// a message is retried until the host answers 202 (a refused or cut request during a crash
/// may still have been stored: it then counts as a duplicate, never as lost). Each accepted
/// number goes into `accepted`.
fn publish_all(
    n: usize,
    topic: String,
    url: watch::Receiver<String>,
    accepted: Arc<Mutex<HashSet<usize>>>,
) -> Vec<tokio::task::JoinHandle<anyhow::Result<()>>> {
    (0..CLIENTS)
        .map(|client| {
            let (topic, url, accepted) = (topic.clone(), url.clone(), accepted.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()?;
                for i in (client..n).step_by(CLIENTS) {
                    let started = Instant::now();
                    loop {
                        let base = url.borrow().clone();
                        let answer = http
                            .post(format!("{base}/topics/{topic}"))
                            .body(i.to_string())
                            .send()
                            .await;
                        if matches!(&answer, Ok(r) if r.status().as_u16() == 202) {
                            accepted.lock().unwrap().insert(i);
                            break;
                        }
                        anyhow::ensure!(
                            started.elapsed() < Duration::from_secs(120),
                            "message {i} never accepted: {answer:?}"
                        );
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                Ok(())
            })
        })
        .collect()
}

async fn relay_survives_three_kills(kind: &str, settings: &str) -> anyhow::Result<()> {
    let n = messages();
    // The reader (a group of its own) and the hosts' group exist before anything is sent,
    // so no backend drops what comes before a subscriber.
    let mut topics = RelayTopics::make(kind, settings, "crash").await?;
    let (input, output, group) = (
        topics.input.clone(),
        topics.output.clone(),
        topics.group.clone(),
    );

    let host = relay_host(kind, settings, &group, &input, &output).await?;
    let (url_tx, url_rx) = watch::channel(host.url.clone());
    let accepted = Arc::new(Mutex::new(HashSet::new()));
    let clients = publish_all(n, input.clone(), url_rx, accepted.clone());

    // The chaos: at each quarter of the accepted publishes, SIGKILL and start again.
    let chaos = {
        let (kind, settings) = (kind.to_string(), settings.to_string());
        let (group, input, output) = (group.clone(), input.clone(), output.clone());
        let accepted = accepted.clone();
        tokio::spawn(async move {
            let mut host = host;
            let mut restarts = Vec::new();
            for k in 1..=KILLS {
                while accepted.lock().unwrap().len() < k * n / (KILLS + 1) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                host.kill().await?;
                let down = Instant::now();
                host = relay_host(&kind, &settings, &group, &input, &output).await?;
                restarts.push(down.elapsed());
                url_tx.send_replace(host.url.clone());
            }
            anyhow::Ok((host, restarts))
        })
    };

    let mut seen: HashMap<usize, usize> = HashMap::new();
    let started = Instant::now();
    let limit = Duration::from_secs(300);
    loop {
        let done = clients.iter().all(|c| c.is_finished()) && chaos.is_finished();
        if done
            && accepted
                .lock()
                .unwrap()
                .iter()
                .all(|i| seen.contains_key(i))
        {
            break;
        }
        let left = limit.saturating_sub(started.elapsed());
        let Ok(Some(m)) = tokio::time::timeout(left, topics.out.recv()).await else {
            break;
        };
        let i: usize = String::from_utf8_lossy(&m.payload).parse()?;
        *seen.entry(i).or_default() += 1;
        m.ack();
    }
    for client in clients {
        client.await??;
    }
    let (host, restarts) = chaos.await??;
    let accepted = accepted.lock().unwrap().clone();
    let mut lost: Vec<usize> = accepted
        .iter()
        .copied()
        .filter(|i| !seen.contains_key(i))
        .collect();
    lost.sort_unstable();
    let duplicates = seen.values().sum::<usize>() - seen.len();
    eprintln!(
        "{kind}: {n} messages published over HTTP, {} answered 202; the host was SIGKILLed \
         {KILLS} times (back up in {restarts:.1?}); relayed {} distinct, lost {}, duplicates \
         {duplicates}, {:.1} s",
        accepted.len(),
        seen.len(),
        lost.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        accepted.len(),
        n,
        "{kind}: every message was accepted in the end"
    );
    assert!(
        lost.is_empty(),
        "{kind}: lost {} accepted messages: {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    drop(host);
    topics.remove().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_host_killed_three_times_loses_nothing_accepted() -> anyhow::Result<()> {
    // The database file outlives every host: it is the test's, not a host's scratch folder.
    let db = tempfile::tempdir()?;
    let url = format!("sqlite://{}", db.path().join("wasmill.db").display());
    relay_survives_three_kills("sqlite", &format!("url = \"{url}\"")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_host_killed_three_times_loses_nothing_accepted() -> anyhow::Result<()> {
    relay_survives_three_kills(
        "redis",
        "url = \"redis://127.0.0.1:6379\"\nclaim_idle = \"2s\"\nclaim_interval = \"1s\"",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_host_killed_three_times_loses_nothing_accepted() -> anyhow::Result<()> {
    relay_survives_three_kills("nats", "url = \"nats://127.0.0.1:4222\"\nack_wait = \"2s\"").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_host_killed_three_times_loses_nothing_accepted() -> anyhow::Result<()> {
    relay_survives_three_kills("amqp", "url = \"amqp://guest:guest@127.0.0.1:5672/%2f\"").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_host_killed_three_times_loses_nothing_accepted() -> anyhow::Result<()> {
    relay_survives_three_kills(
        "postgres",
        "url = \"postgres://postgres@127.0.0.1:5432/test\"\npoll_interval = \"100ms\"",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_host_killed_three_times_loses_nothing_accepted() -> anyhow::Result<()> {
    relay_survives_three_kills("mysql", "url = \"mysql://root@127.0.0.1:3306/test\"").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_host_killed_three_times_loses_nothing_accepted() -> anyhow::Result<()> {
    // A client id of this run's own: the restarted host resumes the killed one's persistent
    // session, and the broker sends again what was not acknowledged.
    let id = uuid::Uuid::new_v4().simple().to_string();
    relay_survives_three_kills(
        "mqtt",
        &format!("url = \"mqtt://127.0.0.1:1883\"\nclient_id = \"crash-{id}\""),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_host_killed_three_times_loses_nothing_accepted() -> anyhow::Result<()> {
    // One record per batch: Tansu's fetch skips a batch that starts before the committed
    // offset (`pubsub::kafka::tests::tansu_workaround`).
    relay_survives_three_kills(
        "kafka",
        "url = \"kafka://127.0.0.1:9092\"\nsession_timeout = \"6s\"\n\
         properties = { \"batch.num.messages\" = \"1\" }",
    )
    .await
}
