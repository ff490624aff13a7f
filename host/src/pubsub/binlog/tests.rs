//! The binlog source against a private MariaDB with the binary log on (the shared server has it
//! off), each test its own server.

use std::collections::HashMap;
use std::time::Duration;

use mysql_async::prelude::Queryable;

use super::*;
use crate::pubsub::testkit::{Kind, PrivateServer};

const BINLOG_ARGS: &[&str] = &["--log-bin=binlog", "--binlog-format=ROW", "--server-id=1"];

fn shared_mysql_url() -> String {
    std::env::var("WASMILL_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

async fn server() -> PrivateServer {
    PrivateServer::start_with_args(Kind::Mariadb, BINLOG_ARGS)
        .await
        .expect("a private MariaDB with the binlog on")
}

fn config(url: &str, group: &str) -> BinlogConfig {
    BinlogConfig {
        url: url.to_string(),
        consumer_group: Some(group.to_string()),
        heartbeat: Duration::from_secs(1),
        ..BinlogConfig::default()
    }
}

async fn sql(url: &str, statements: &[&str]) {
    let mut conn = mysql_async::Conn::from_url(url).await.unwrap();
    for s in statements {
        conn.query_drop(*s)
            .await
            .unwrap_or_else(|e| panic!("{s}: {e}"));
    }
    conn.disconnect().await.unwrap();
}

async fn next(sub: &mut Subscription) -> Message {
    tokio::time::timeout(Duration::from_secs(20), sub.recv())
        .await
        .expect("a change within 20 s")
        .expect("the subscription is open")
}

fn payload(msg: &Message) -> serde_json::Value {
    serde_json::from_slice(&msg.payload).unwrap()
}

#[tokio::test]
async fn row_changes_become_messages_with_their_table_operation_and_position() {
    let server = server().await;
    let url = server.url();
    sql(
        &url,
        &["CREATE TABLE orders (id INT PRIMARY KEY, item VARCHAR(20), n INT UNSIGNED)"],
    )
    .await;
    let source = BinlogSource::connect(config(&url, "g")).await.unwrap();
    source.subscribe_initialize("orders").await.unwrap();
    sql(
        &url,
        &[
            "CREATE TABLE other (id INT PRIMARY KEY)",
            "INSERT INTO other VALUES (1)",
            "INSERT INTO orders VALUES (1, 'tea', 4000000000)",
            "UPDATE orders SET item = 'coffee' WHERE id = 1",
            "DELETE FROM orders WHERE id = 1",
        ],
    )
    .await;
    let mut sub = source.subscribe("orders").await.unwrap();
    let insert = next(&mut sub).await;
    assert_eq!(
        payload(&insert),
        serde_json::json!({"id": 1, "item": "tea", "n": 4_000_000_000u64})
    );
    assert_eq!(insert.metadata.get("table"), "test.orders");
    assert_eq!(insert.metadata.get("operation"), "insert");
    assert!(insert.metadata.get("binlog_file").starts_with("binlog."));
    assert!(
        insert.metadata.get("gtid").starts_with("0-1-"),
        "{:?}",
        insert.metadata
    );
    // A nack delivers the same change again before the next one.
    insert.nack();
    let again = next(&mut sub).await;
    assert_eq!(again.uuid, insert.uuid);
    again.ack();
    let update = next(&mut sub).await;
    assert_eq!(update.metadata.get("operation"), "update");
    assert_eq!(payload(&update)["item"], "coffee");
    let before: serde_json::Value = serde_json::from_str(update.metadata.get("before")).unwrap();
    assert_eq!(before["item"], "tea");
    update.ack();
    let delete = next(&mut sub).await;
    assert_eq!(delete.metadata.get("operation"), "delete");
    assert_eq!(payload(&delete)["item"], "coffee");
    delete.ack();

    let err = source.publish("orders", vec![Message::new("x")]).await;
    assert!(err.unwrap_err().to_string().contains("source only"));
    let err = source.subscribe("nope").await.unwrap_err().to_string();
    assert!(err.contains("test.nope does not exist"), "{err}");
    Subscriber::close(&source).await.unwrap();
    assert!(source.remove_topic("orders").await.unwrap());
}

#[tokio::test]
async fn a_server_without_a_row_binlog_is_refused_with_the_fix() {
    // The shared MariaDB runs with the binary log off.
    let err = BinlogSource::connect(config(&shared_mysql_url(), "g"))
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("--log-bin"), "{err}");
}

/// 1,000 row changes (single rows and multi-row transactions, across a binlog rotation),
/// read with 8 in flight by a host that stops after 450 of them (the 443rd and the last 5
/// delivered but unacked), while the server restarts and writes go on; the next host, whose server restarts
/// again under it, gets every change: lost = 0, and what repeats is at most the window.
#[tokio::test]
async fn a_restart_resumes_after_the_last_ack_and_loses_nothing() {
    let mut server = server().await;
    let url = server.url();
    sql(
        &url,
        &["CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(10))"],
    )
    .await;
    let window = 8;
    let source = BinlogSource::connect(config(&url, "restart"))
        .await
        .unwrap();
    source.subscribe_initialize("t").await.unwrap();
    write_rows(&url, 0..500).await;
    sql(&url, &["FLUSH BINARY LOGS"]).await;
    write_rows(&url, 500..600).await;

    // Every delivery of each id, and the ids acked: only an ack counts as handled.
    let mut deliveries: HashMap<i64, usize> = HashMap::new();
    let mut acked = std::collections::HashSet::new();
    let options = SubscribeOptions {
        max_in_flight: window,
    };
    let mut sub = source.subscribe_with("t", options).await.unwrap();
    let mut held = Vec::new();
    while deliveries.len() < 450 {
        let msg = next(&mut sub).await;
        let id = payload(&msg)["id"].as_i64().unwrap();
        *deliveries.entry(id).or_default() += 1;
        // The 443rd and the last five are in flight, unacked, when the host stops (acks
        // came after the 443rd: the stored position must not pass it).
        if deliveries.len() == 443 || deliveries.len() > 445 {
            held.push(msg);
        } else {
            msg.ack();
            acked.insert(id);
        }
    }
    drop(sub);
    Subscriber::close(&source).await.unwrap();
    drop(held);

    // The server goes away and comes back; writes go on meanwhile.
    server.restart().await.unwrap();
    write_rows(&url, 600..800).await;

    let source = BinlogSource::connect(config(&url, "restart"))
        .await
        .unwrap();
    let mut sub = source.subscribe_with("t", options).await.unwrap();
    let mut restarted = false;
    while acked.len() < 1000 {
        // A change lost for good never comes: `next` fails after 20 s.
        let msg = next(&mut sub).await;
        let id = payload(&msg)["id"].as_i64().unwrap();
        *deliveries.entry(id).or_default() += 1;
        msg.ack();
        acked.insert(id);
        // And once more under a live subscription, which reconnects by itself.
        if acked.len() == 700 && !restarted {
            restarted = true;
            server.restart().await.unwrap();
            write_rows(&url, 800..1000).await;
        }
    }
    let duplicates = deliveries.values().sum::<usize>() - 1000;
    println!("binlog restart: acked 1000, lost 0, duplicates {duplicates}");
    // The 443rd to the 450th came again: the span from the first unacked change on.
    assert!(
        (6..=window).contains(&duplicates),
        "{duplicates} changes repeated"
    );
    Subscriber::close(&source).await.unwrap();
}

/// Inserts `ids`: every fourth transaction holds four rows, the others one.
async fn write_rows(url: &str, ids: std::ops::Range<i64>) {
    let mut conn = mysql_async::Conn::from_url(url).await.unwrap();
    let mut ids = ids.peekable();
    let mut n = 0;
    while ids.peek().is_some() {
        let take = if n % 4 == 0 { 4 } else { 1 };
        let rows: Vec<String> = ids
            .by_ref()
            .take(take)
            .map(|id| format!("({id}, 'v{id}')"))
            .collect();
        conn.query_drop(format!("INSERT INTO t VALUES {}", rows.join(",")))
            .await
            .unwrap();
        n += 1;
    }
    conn.disconnect().await.unwrap();
}

/// Two hosts with the same config: one reads, the other stands by and takes over, from the
/// first one's last ack, once it is gone.
#[tokio::test]
async fn a_second_host_stands_by_and_takes_over() {
    let server = server().await;
    let url = server.url();
    sql(
        &url,
        &["CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(10))"],
    )
    .await;
    let first = BinlogSource::connect(config(&url, "ha")).await.unwrap();
    let second = BinlogSource::connect(config(&url, "ha")).await.unwrap();
    first.subscribe_initialize("t").await.unwrap();
    write_rows(&url, 0..10).await;
    let mut a = first.subscribe("t").await.unwrap();
    let msg = next(&mut a).await;
    assert_eq!(payload(&msg)["id"], 0);
    // The second host subscribes (and reads the stored position) before the first one's ack:
    // taking over, it must start from what the first one stored last.
    let mut b = second.subscribe("t").await.unwrap();
    msg.ack();
    let idle = tokio::time::timeout(Duration::from_secs(2), b.recv()).await;
    assert!(
        idle.is_err(),
        "the second host must stand by while the first reads"
    );
    drop(a);
    Subscriber::close(&first).await.unwrap();
    for id in 1..10 {
        let msg = next(&mut b).await;
        assert_eq!(
            payload(&msg)["id"],
            id,
            "in order, from the first host's last ack"
        );
        msg.ack();
    }
    Subscriber::close(&second).await.unwrap();
}
