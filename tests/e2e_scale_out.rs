//! Several hosts on one consumer group, against the real binary and the machine's brokers:
//! two `wasmill run` processes with the same config share a topic's work through the broker's
//! consumer group; one is killed with SIGKILL mid-stream, and the other takes over what it
//! held unacked (at once where the broker sees the connection die, after `claim_idle` on
//! Redis and `ack_wait` on NATS). Delivered at least once = every message; lost = 0; the
//! duplicates (what the killed host handled but had not acked) are counted and printed.
//!
//! `WASMILL_SCALE_MESSAGES` sets the count (2,000 by default; the full run is 10,000).

use std::collections::HashMap;
use std::time::{Duration, Instant};

#[path = "support/mod.rs"]
mod support;

use support::{RelayTopics, handled, relay_host};
use wasmill::message::Message;

fn messages() -> usize {
    std::env::var("WASMILL_SCALE_MESSAGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000)
}

/// `shares`: the broker hands a group's messages to both hosts at once (Redis, NATS, AMQP);
/// the SQL backends keep a group's order by letting one host at a time hold its offset, so
/// there the second host takes over when the first dies.
async fn two_hosts_share_a_group_and_lose_nothing_when_one_is_killed(
    kind: &str,
    settings: &str,
    shares: bool,
) -> anyhow::Result<()> {
    two_hosts_share_after(kind, settings, shares, Duration::ZERO).await
}

/// [`two_hosts_share_a_group_and_lose_nothing_when_one_is_killed`], waiting `settle` after both
/// hosts run before sending (Kafka: the first host hears of the second at its next heartbeat,
/// then the group rebalances).
async fn two_hosts_share_after(
    kind: &str,
    settings: &str,
    shares: bool,
    settle: Duration,
) -> anyhow::Result<()> {
    let n = messages();
    // The reader (a group of its own) and the hosts' group exist before anything is sent,
    // so no backend drops what comes before a subscriber.
    let mut topics = RelayTopics::make(kind, settings, "scale").await?;
    let (input, output, group) = (
        topics.input.clone(),
        topics.output.clone(),
        topics.group.clone(),
    );

    let mut hosts = vec![
        relay_host(kind, settings, &group, &input, &output).await?,
        relay_host(kind, settings, &group, &input, &output).await?,
    ];
    tokio::time::sleep(settle).await;

    // The first half goes out at once; the busier host is killed a quarter of the way in,
    // while it holds messages unacked; the second half is sent after the kill, for the
    // survivor alone.
    let send = |from: usize, to: usize| {
        let publisher = topics.setup.publisher.clone();
        let topic = input.clone();
        tokio::spawn(async move {
            for chunk in (from..to).collect::<Vec<_>>().chunks(100) {
                let batch = chunk.iter().map(|i| Message::new(i.to_string())).collect();
                publisher.publish(&topic, batch).await?;
            }
            anyhow::Ok(())
        })
    };
    let first_half = send(0, n / 2);
    let mut second_half = None;

    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut killed_after = None;
    let limit = Duration::from_secs(180);
    let started = Instant::now();
    while seen.len() < n {
        let left = limit.saturating_sub(started.elapsed());
        let Ok(Some(m)) = tokio::time::timeout(left, topics.out.recv()).await else {
            break;
        };
        *seen
            .entry(String::from_utf8_lossy(&m.payload).into_owned())
            .or_default() += 1;
        m.ack();
        if killed_after.is_none() && seen.len() >= n / 4 {
            // Kill the busier host: the other must finish what it held.
            let counts = [handled(&hosts[0]).await?, handled(&hosts[1]).await?];
            let busier = usize::from(counts[1] > counts[0]);
            let mut victim = hosts.remove(busier);
            victim.kill().await?;
            killed_after = Some((seen.len(), counts[busier], counts[1 - busier]));
            second_half = Some(send(n / 2, n));
        }
    }
    first_half.await??;
    if let Some(sending) = second_half {
        sending.await??;
    }
    let delivered = seen.values().sum::<usize>();
    let lost: Vec<usize> = (0..n)
        .filter(|i| !seen.contains_key(&i.to_string()))
        .collect();
    let duplicates = delivered - seen.len();
    let (at, killed_handled, other_then) = killed_after.unwrap_or_default();
    let survivor = handled(&hosts[0]).await?;
    eprintln!(
        "{kind}: {n} messages; at {at} outputs the busier host (handled {killed_handled}; the \
         other {other_then}) was killed; the survivor handled {survivor} in all; distinct \
         delivered {}, lost {}, duplicates {duplicates}, {:.1} s",
        seen.len(),
        lost.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        lost.is_empty(),
        "{kind}: lost {} messages: {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    assert!(
        killed_after.is_some(),
        "{kind}: half the outputs never came"
    );
    assert!(
        survivor > other_then,
        "{kind}: the survivor took over ({other_then} before the kill, {survivor} after)"
    );
    if shares {
        assert!(
            killed_handled > 0 && other_then > 0,
            "{kind}: both hosts had handled messages before the kill ({killed_handled}, \
             {other_then})"
        );
    }
    // The survivor goes first: on MySQL its delivery transaction would hold the topic's table
    // (a metadata lock) against the DROP below.
    drop(hosts);
    topics.remove().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_hosts_share_a_group_and_survive_a_kill() -> anyhow::Result<()> {
    two_hosts_share_a_group_and_lose_nothing_when_one_is_killed(
        "redis",
        "url = \"redis://127.0.0.1:6379\"\nclaim_idle = \"2s\"\nclaim_interval = \"1s\"",
        true,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_hosts_share_a_group_and_survive_a_kill() -> anyhow::Result<()> {
    two_hosts_share_a_group_and_lose_nothing_when_one_is_killed(
        "nats",
        "url = \"nats://127.0.0.1:4222\"\nack_wait = \"2s\"",
        true,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_hosts_share_a_group_and_survive_a_kill() -> anyhow::Result<()> {
    two_hosts_share_a_group_and_lose_nothing_when_one_is_killed(
        "amqp",
        "url = \"amqp://guest:guest@127.0.0.1:5672/%2f\"",
        true,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_hosts_share_a_group_and_survive_a_kill() -> anyhow::Result<()> {
    two_hosts_share_a_group_and_lose_nothing_when_one_is_killed(
        "postgres",
        "url = \"postgres://postgres@127.0.0.1:5432/test\"\npoll_interval = \"100ms\"",
        false,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_hosts_share_a_group_and_survive_a_kill() -> anyhow::Result<()> {
    two_hosts_share_a_group_and_lose_nothing_when_one_is_killed(
        "mysql",
        "url = \"mysql://root@127.0.0.1:3306/test\"",
        false,
    )
    .await
}

/// The Kafka broker: `WASMILL_TEST_KAFKA_URL`, or the Tansu that `scripts/ensure-services.sh`
/// starts.
fn kafka_url() -> String {
    std::env::var("WASMILL_TEST_KAFKA_URL").unwrap_or_else(|_| "kafka://127.0.0.1:9092".into())
}

/// Ignored in CI: on Tansu 0.6 the two hosts share the partitions (501 / 499 before the kill),
/// but the killed host's partition was never handed to the survivor (180 s, with
/// `session_timeout` 6 s and `max.poll.interval.ms` 8 s): Tansu's group coordinator does not
/// complete the rebalance that should follow a member's expiry, so the dead partition's
/// messages wait. Run it against a real Kafka cluster:
/// `WASMILL_TEST_KAFKA_URL=kafka://HOST:9092 cargo test --test e2e_scale_out kafka -- --ignored`.
#[ignore = "Tansu 0.6 does not hand a dead member's partitions to the survivor"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_hosts_share_a_group_and_survive_a_kill() -> anyhow::Result<()> {
    // Two partitions, one per host; the killed host's goes to the survivor after the session
    // timeout. One record per batch: Tansu's fetch skips a batch that starts before the
    // committed offset (`pubsub::kafka::tests::tansu_workaround`). No sticky partitioning, so
    // that keyless messages of one burst spread over both partitions.
    let settings = format!(
        "url = \"{}\"\npartitions = 2\nsession_timeout = \"6s\"\nproperties = {{ \
         \"batch.num.messages\" = \"1\", \"sticky.partitioning.linger.ms\" = \"0\", \
         \"max.poll.interval.ms\" = \"8000\" }}",
        kafka_url()
    );
    two_hosts_share_after("kafka", &settings, true, Duration::from_secs(5)).await
}
