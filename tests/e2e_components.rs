//! Watermill's components through the product's contract: request-reply (`wasmill request`,
//! `POST /topics/{t}?reply=1`), poison replay (`wasmill replay`,
//! `POST /topics/{poison}/replay`), CQRS, the requeuer, delayed messages, the outbox
//! (`[[forwarders]]` fed by `wasmill_publish` from SQL), fan-in and fan-out, against the real
//! binary.

use std::time::Duration;

#[path = "support/mod.rs"]
mod support;

use support::{Host, next_event, plugin};

/// Runs the `wasmill` CLI; (success, stdout, stderr).
async fn cli(args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let out = tokio::process::Command::new(support::binary())
        .args(args)
        .env_remove("WASMILL_TOKEN")
        .output()
        .await?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// A host whose plugins folder holds `name.wasm` (an example plugin) bound by a sidecar.
async fn host_with(name: &str, sidecar: &str, config: &str) -> anyhow::Result<Host> {
    let (dir, plugins) = Host::scratch()?;
    std::fs::copy(plugin(name), plugins.join(format!("{name}.wasm")))?;
    std::fs::write(plugins.join(format!("{name}.toml")), sidecar)?;
    std::fs::write(dir.path().join("wasmill.toml"), config)?;
    let host = Host::start(dir, plugins, &["--config", "wasmill.toml"]).await?;
    host.wait_handler(name, Duration::from_secs(60), |h| {
        h["name"] == name && h["state"] == "running"
    })
    .await?;
    Ok(host)
}

/// A host running `examples/{example}/wasmill.toml`, passed through `edit` (to make its topics
/// unique), with the example plugins `plugins` in its plugins folder; returns once `handlers`
/// run.
async fn example_host(
    example: &str,
    plugins: &[&str],
    handlers: &[&str],
    edit: impl Fn(String) -> String,
) -> anyhow::Result<Host> {
    let (dir, folder) = Host::scratch()?;
    for name in plugins {
        std::fs::copy(plugin(name), folder.join(format!("{name}.wasm")))?;
    }
    let config = support::repo_root().join(format!("examples/{example}/wasmill.toml"));
    let config = edit(std::fs::read_to_string(config)?);
    std::fs::write(dir.path().join("wasmill.toml"), config)?;
    let host = Host::start(dir, folder, &["--config", "wasmill.toml"]).await?;
    for name in handlers {
        host.wait_handler(name, Duration::from_secs(60), |h| h["state"] == "running")
            .await?;
    }
    Ok(host)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasm_handler_answers_requests_from_the_cli_and_http() -> anyhow::Result<()> {
    let host = host_with(
        "uppercase",
        "subscribe = \"incoming\"\npublish = \"outgoing\"\n",
        "",
    )
    .await?;
    let mut out = host.sse("outgoing").await?;

    let (ok, stdout, stderr) = cli(&["request", "incoming", "hello", "--url", &host.url]).await?;
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "HELLO");
    // The handler's output still goes to its publish topic, without the request's key.
    let event = next_event(&mut out, Duration::from_secs(10)).await?;
    assert_eq!(event["payload"], "HELLO");
    assert!(
        event["metadata"].get("_wasmill_reply_to").is_none(),
        "{event}"
    );

    let r = host
        .http
        .post(format!("{}/topics/incoming?reply=1", host.url))
        .json(&serde_json::json!({"uuid": "req-1", "metadata": {"k": "v"}, "payload": "json"}))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 200);
    let reply: serde_json::Value = r.json().await?;
    assert_eq!(reply["payload"], "JSON", "{reply}");
    assert_eq!(reply["metadata"]["_wasmill_reply_for"], "req-1", "{reply}");

    // Nobody serves `nowhere`: a timeout, 504, and the CLI fails saying so.
    let r = host
        .http
        .post(format!("{}/topics/nowhere?reply=1&timeout=200ms", host.url))
        .body("x")
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 504);
    let (ok, _, stderr) = cli(&[
        "request",
        "nowhere",
        "x",
        "--timeout",
        "200ms",
        "--url",
        &host.url,
    ])
    .await?;
    assert!(!ok);
    assert!(
        stderr.contains("504") && stderr.contains("no reply"),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_request_is_answered_with_the_reason() -> anyhow::Result<()> {
    let host = host_with(
        "always-fail",
        "subscribe = \"orders\"\n",
        "[defaults.on_failure]\nmax_attempts = 2\ninitial_interval = \"10ms\"\n",
    )
    .await?;
    let r = host
        .http
        .post(format!("{}/topics/orders?reply=1", host.url))
        .body("x")
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 502);
    let body: serde_json::Value = r.json().await?;
    assert!(
        !body["error"].as_str().unwrap_or_default().is_empty(),
        "{body}"
    );
    // Answered once, after the last attempt: the message was poisoned, not retried forever.
    host.wait_handler("poisoned", Duration::from_secs(10), |h| {
        h["counts"]["poisoned"] == 1
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poisoned_messages_are_replayed_with_their_uuid_and_metadata() -> anyhow::Result<()> {
    let host = host_with(
        "always-fail",
        "subscribe = \"orders\"\n",
        "[defaults.on_failure]\nmax_attempts = 2\ninitial_interval = \"10ms\"\n",
    )
    .await?;
    for i in 0..3 {
        let r = host
            .http
            .post(format!("{}/topics/orders", host.url))
            .json(&serde_json::json!({"uuid": format!("o-{i}"), "metadata": {"tenant": "t1"}, "payload": format!("order {i}")}))
            .send()
            .await?;
        assert_eq!(r.status().as_u16(), 202);
    }
    host.wait_handler("3 poisoned", Duration::from_secs(20), |h| {
        h["counts"]["poisoned"] == 3
    })
    .await?;

    // To another topic first: the messages as they were published, without the poison keys.
    let mut checked = host.sse("checked").await?;
    let (ok, stdout, stderr) = cli(&[
        "replay",
        "--from",
        "orders.poison",
        "--to",
        "checked",
        "--limit",
        "2",
        "--url",
        &host.url,
    ])
    .await?;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("replayed 2"), "{stdout}");
    for i in 0..2 {
        let e = next_event(&mut checked, Duration::from_secs(10)).await?;
        assert_eq!(e["uuid"], format!("o-{i}"), "{e}");
        assert_eq!(e["payload"], format!("order {i}"));
        assert_eq!(e["metadata"]["tenant"], "t1");
        assert!(e["metadata"].get("reason_poisoned").is_none(), "{e}");
        assert!(e["metadata"].get("topic_poisoned").is_none(), "{e}");
    }

    // The rest back to where it failed (over HTTP): handled (and poisoned) once more.
    let r = host
        .http
        .post(format!("{}/topics/orders.poison/replay", host.url))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 200);
    let report: serde_json::Value = r.json().await?;
    assert_eq!(report["replayed"], 1, "{report}");
    host.wait_handler("poisoned again", Duration::from_secs(20), |h| {
        h["counts"]["poisoned"] == 4
    })
    .await?;
    // Nothing left.
    let r = host
        .http
        .post(format!("{}/topics/orders.poison/replay?limit=5", host.url))
        .send()
        .await?;
    let report: serde_json::Value = r.json().await?;
    assert_eq!(report["replayed"], 1, "the re-poisoned message: {report}");
    Ok(())
}

/// CQRS from the config (examples/05-cqrs): a `[[commands]]` entry binds a command name to a WASM handler, whose
/// named output is published on the event bus, where an `[[events]]` entry's handler takes
/// it; a command of another name on the command's topic is acked and ignored. From `wasmill
/// request`, the reply is the event the command emitted, or why the command was ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_and_events_bound_to_wasm_handlers_in_the_config() -> anyhow::Result<()> {
    let host = example_host(
        "05-cqrs",
        &["uppercase", "json-enrich"],
        &["command.Shout", "event.Shout.json-enrich"],
        |config| config,
    )
    .await?;
    let mut events = host.sse("events.Shout").await?;
    let mut enriched = host.sse("enriched").await?;

    host.publish_json(
        "commands.Shout",
        serde_json::json!({"metadata": {"name": "Other"}, "payload": "{\"ignored\": 1}"}),
    )
    .await?;
    host.publish_json(
        "commands.Shout",
        serde_json::json!({"metadata": {"name": "Shout"}, "payload": "{\"a\": \"b\"}"}),
    )
    .await?;
    let event = next_event(&mut events, Duration::from_secs(20)).await?;
    assert_eq!(event["payload"], "{\"A\": \"B\"}", "{event}");
    assert_eq!(event["metadata"]["name"], "Shout", "{event}");
    let out = next_event(&mut enriched, Duration::from_secs(20)).await?;
    let value: serde_json::Value =
        serde_json::from_str(out["payload"].as_str().unwrap_or_default())?;
    assert_eq!(value["A"], "B", "{out}");
    assert_eq!(value["enriched"], true, "{out}");
    // The ignored command was acked (processed) without an event.
    let h = host.handler("command.Shout").await?;
    assert_eq!(h["counts"]["processed"], 2, "{h}");
    assert_eq!(h["counts"]["failed"], 0, "{h}");
    assert_eq!(h["counts"]["poisoned"], 0, "{h}");
    assert!(
        tokio::time::timeout(
            Duration::from_millis(500),
            next_event(&mut events, Duration::from_secs(1))
        )
        .await
        .map_or(true, |r| r.is_err()),
        "the ignored command made an event"
    );

    // Driven from the CLI as a request: the reply is the event the command emitted ...
    let args = [
        "request",
        "commands.Shout",
        "{\"c\": \"d\"}",
        "--url",
        &host.url,
    ];
    let (ok, stdout, stderr) = cli(&[&args[..], &["-m", "name=Shout"]].concat()).await?;
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "{\"C\": \"D\"}", "{stderr}");
    let event = next_event(&mut events, Duration::from_secs(20)).await?;
    assert_eq!(event["payload"], "{\"C\": \"D\"}", "{event}");
    // ... and a command without its name is answered with why it was ignored.
    let (ok, _, stderr) = cli(&args).await?;
    assert!(!ok && stderr.contains("name=Shout"), "{stderr}");
    Ok(())
}

/// `[[requeue]]`: a message that keeps failing goes back to its topic from the poison queue
/// after the delay, counted, and past `max_requeues` ends on `<poison>.dead`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requeuer_sends_failed_messages_back_then_gives_up() -> anyhow::Result<()> {
    let host = host_with(
        "always-fail",
        "subscribe = \"incoming\"\non_failure = { max_attempts = 1 }\n",
        "[[requeue]]\nfrom = \"incoming.poison\"\ndelay = \"100ms\"\nmax_requeues = 2\n",
    )
    .await?;
    let mut dead = host.sse("incoming.poison.dead").await?;
    let uuid = host.publish("incoming", "doomed").await?;
    let gone = next_event(&mut dead, Duration::from_secs(30)).await?;
    assert_eq!(gone["uuid"], uuid.as_str(), "{gone}");
    assert_eq!(gone["metadata"]["_wasmill_requeued"], "2", "{gone}");
    assert!(
        gone["metadata"]["reason_poisoned"]
            .as_str()
            .is_some_and(|r| r.contains("max_requeues")),
        "{gone}"
    );
    // Three handlings: the first, and one per requeue.
    let h = host.handler("always-fail").await?;
    assert_eq!(h["counts"]["poisoned"], 3, "{h}");
    Ok(())
}

/// examples/06-request-reply-and-replay, as its README runs it: a request answered, a failing
/// message poisoned, then replayed with `wasmill replay` to its topic, with its uuid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_reply_and_replay_example_runs_as_its_readme_says() -> anyhow::Result<()> {
    let host = example_host(
        "06-request-reply-and-replay",
        &["uppercase", "always-fail"],
        &["shout", "fragile"],
        |config| config,
    )
    .await?;
    let (ok, stdout, stderr) = cli(&[
        "request",
        "requests",
        "hello",
        "--timeout",
        "5s",
        "--url",
        &host.url,
    ])
    .await?;
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "HELLO");

    let mut poison = host.sse("fragile.poison").await?;
    let uuid = host.publish("fragile", "order 1").await?;
    let poisoned = next_event(&mut poison, Duration::from_secs(20)).await?;
    assert_eq!(poisoned["uuid"], uuid.as_str());
    let mut again = host.sse("fragile").await?;
    let (ok, stdout, stderr) =
        cli(&["replay", "--from", "fragile.poison", "--url", &host.url]).await?;
    assert!(ok, "{stdout}{stderr}");
    let replayed = next_event(&mut again, Duration::from_secs(20)).await?;
    assert_eq!(replayed["uuid"], uuid.as_str(), "{replayed}");
    assert!(
        replayed["metadata"].get("reason_poisoned").is_none(),
        "{replayed}"
    );
    Ok(())
}

/// examples/07-delay-and-requeue on Redis, as its README runs it (its topics made unique): a
/// reminder published over HTTP with `_watermill_delayed_for` is handled once due and not
/// before; a payment that keeps failing is requeued twice, then dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delay_and_requeue_example_runs_as_its_readme_says() -> anyhow::Result<()> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let (reminders, payments) = (format!("reminders-{run}"), format!("payments-{run}"));
    let host = example_host(
        "07-delay-and-requeue",
        &["uppercase", "always-fail"],
        &["remind", "charge"],
        |config| {
            config
                .replace("\"reminders", &format!("\"{reminders}"))
                .replace("\"payments", &format!("\"{payments}"))
        },
    )
    .await?;
    let mut sent = host.sse(&format!("{reminders}.sent")).await?;
    let published = std::time::Instant::now();
    host.publish_json(
        &reminders,
        serde_json::json!({"payload": "call bob", "metadata": {"_watermill_delayed_for": "2s"}}),
    )
    .await?;
    let reminder = next_event(&mut sent, Duration::from_secs(30)).await?;
    assert_eq!(reminder["payload"], "CALL BOB", "{reminder}");
    assert!(
        published.elapsed() >= Duration::from_millis(1900),
        "handled {:?} after it was published with a 2 s delay",
        published.elapsed()
    );

    let mut dead = host.sse(&format!("{payments}.poison.dead")).await?;
    let uuid = host.publish(&payments, "order 7").await?;
    let gone = next_event(&mut dead, Duration::from_secs(60)).await?;
    assert_eq!(gone["uuid"], uuid.as_str(), "{gone}");
    assert_eq!(gone["metadata"]["_wasmill_requeued"], "2", "{gone}");
    host.terminate(Duration::from_secs(10)).await?;
    let redis = wasmill::pubsub::registry::connect(
        "redis",
        "redis",
        &support::table("url = \"redis://127.0.0.1:6379\"", "cleanup"),
    )
    .await?;
    for topic in [reminders, payments] {
        for suffix in ["", ".sent", ".poison", ".poison.dead"] {
            let _ = redis
                .subscriber
                .remove_topic(&format!("{topic}{suffix}"))
                .await;
        }
    }
    Ok(())
}

/// examples/08-outbox as its README runs it (its topics and table made unique): the README's
/// SQL, through `psql`, publishes with `wasmill_publish` in two transactions; the rolled-back
/// one forwards nothing, the committed one reaches the handler on the destination topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_example_forwards_what_a_sql_transaction_commits() -> anyhow::Result<()> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let unique = |text: &str| {
        text.replace("forwarder_topic", &format!("fwd_{run}"))
            .replace("shop_orders", &format!("shop_{run}"))
            .replace("\"orders", &format!("\"orders_{run}"))
    };
    let readme =
        std::fs::read_to_string(support::repo_root().join("examples/08-outbox/README.md"))?;
    let sql = readme
        .split("<<'SQL'\n")
        .nth(1)
        .and_then(|rest| rest.split("\nSQL\n").next())
        .ok_or_else(|| anyhow::anyhow!("no SQL block in examples/08-outbox/README.md"))?;
    let host = example_host("08-outbox", &["uppercase"], &["ship"], |c| unique(&c)).await?;
    let mut shipped = host.sse(&format!("orders_{run}.shipped")).await?;
    let url = "postgres://postgres@127.0.0.1:5432/test";
    psql(url, &unique(sql)).await?;
    let event = next_event(&mut shipped, Duration::from_secs(30)).await?;
    assert_eq!(event["payload"], "ORDER 7: BOOK", "{event}");
    let more = tokio::time::timeout(Duration::from_secs(1), shipped.recv()).await;
    assert!(more.is_err(), "more was forwarded: {:?}", more);
    host.terminate(Duration::from_secs(10)).await?;
    psql(url, &format!("DROP TABLE shop_{run};")).await?;
    let db = wasmill::pubsub::registry::connect(
        "db",
        "postgres",
        &support::table(&format!("url = \"{url}\""), "cleanup"),
    )
    .await?;
    db.subscriber.remove_topic(&format!("fwd_{run}")).await?;
    Ok(())
}

/// examples/09-fan-in-fan-out as its README runs it, on its SQLite file: orders published to
/// both regional topics reach `orders` through the fan-in, and each of the two handlers of
/// `orders` (one consumer group) handles every order through the fan-out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fan_in_fan_out_example_gives_every_handler_every_order() -> anyhow::Result<()> {
    let host = example_host(
        "09-fan-in-fan-out",
        &["uppercase", "json-enrich"],
        &["shout", "enrich"],
        |config| config,
    )
    .await?;
    let mut shouted = host.sse("orders.shouted").await?;
    let mut enriched = host.sse("orders.enriched").await?;
    for i in 0..6 {
        let region = if i % 2 == 0 { "orders.eu" } else { "orders.us" };
        host.publish(region, &format!("{{\"id\":{i}}}")).await?;
    }
    let mut seen = (Vec::new(), Vec::new());
    for _ in 0..6 {
        let s = next_event(&mut shouted, Duration::from_secs(30)).await?;
        seen.0
            .push(s["payload"].as_str().unwrap_or_default().to_string());
        let e = next_event(&mut enriched, Duration::from_secs(30)).await?;
        let order: serde_json::Value =
            serde_json::from_str(e["payload"].as_str().unwrap_or_default())?;
        assert_eq!(order["enriched"], true, "{e}");
        assert!(
            ["orders.eu", "orders.us"]
                .contains(&e["metadata"]["fanned_in_from"].as_str().unwrap_or_default()),
            "{e}"
        );
        seen.1.push(order["id"].as_i64().unwrap_or(-1));
    }
    seen.0.sort();
    seen.1.sort();
    let want: Vec<String> = (0..6).map(|i| format!("{{\"ID\":{i}}}")).collect();
    assert_eq!(seen.0, want);
    assert_eq!(seen.1, (0..6).collect::<Vec<i64>>());
    let more = tokio::time::timeout(Duration::from_secs(1), shouted.recv()).await;
    assert!(more.is_err(), "more was shouted: {more:?}");
    Ok(())
}

/// examples/09's fan-out with its host SIGKILLed mid-way: 2,000 orders stored in its SQLite
/// file, the host killed once the first is handled, then started again on the same file. In
/// the end each of the two handlers has handled every order (some twice, none lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_killed_mid_way_loses_no_order_for_either_handler() -> anyhow::Result<()> {
    use std::collections::HashSet;
    use wasmill::message::Message;
    let n = 2_000;
    let mut host = example_host(
        "09-fan-in-fan-out",
        &["uppercase", "json-enrich"],
        &["shout", "enrich"],
        |config| config,
    )
    .await?;
    let url = format!(
        "url = \"sqlite://{}\"",
        host.dir.path().join("fan.db").display()
    );
    let store =
        wasmill::pubsub::registry::connect("store", "sqlite", &support::table(&url, "check"))
            .await?;
    let mut outputs = Vec::new();
    for topic in ["orders.shouted", "orders.enriched"] {
        store.subscriber.subscribe_initialize(topic).await?;
        outputs.push(store.subscriber.subscribe(topic).await?);
    }
    let orders: Vec<Message> = (0..n)
        .map(|i| Message::new(format!("{{\"id\":{i}}}")))
        .collect();
    store.publisher.publish("orders", orders).await?;

    // The id of an output of either handler (uppercase writes `{"ID":7}`).
    let id = |m: &Message| {
        let text = String::from_utf8_lossy(&m.payload).to_lowercase();
        serde_json::from_str::<serde_json::Value>(&text).unwrap_or_default()["id"]
            .as_i64()
            .unwrap_or(-1)
    };
    let mut seen = [HashSet::new(), HashSet::new()];
    let first = tokio::time::timeout(Duration::from_secs(30), outputs[0].recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("no output"))?;
    host.kill().await?;
    seen[0].insert(id(&first));
    first.ack();
    let (dir, plugins) = (host.dir, host.plugins);
    let host = Host::start(dir, plugins, &["--config", "wasmill.toml"]).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    for (sub, seen) in outputs.iter_mut().zip(seen.iter_mut()) {
        while seen.len() < n && std::time::Instant::now() < deadline {
            if let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(5), sub.recv()).await {
                seen.insert(id(&m));
                m.ack();
            }
        }
    }
    let lost: Vec<usize> = seen.iter().map(|s| n - s.len()).collect();
    assert_eq!(lost, [0, 0], "orders lost by shout, enrich");
    host.terminate(Duration::from_secs(10)).await?;
    Ok(())
}

/// Runs `sql` through `psql` on `url`, stopping at the first error.
async fn psql(url: &str, sql: &str) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-q"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("psql (PostgreSQL's client) could not start: {e}"))?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin.write_all(sql.as_bytes()).await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    anyhow::ensure!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
