use super::*;
use crate::pubsub::conformance::{Features, Harness, OwnedPubSub};
use crate::pubsub::testkit::{Kind, PrivateServer};
use crate::pubsub::{DynPublisher, DynSubscriber};

fn url() -> String {
    std::env::var("WASMILL_TEST_MQTT_URL").unwrap_or_else(|_| "mqtt://127.0.0.1:1883".into())
}

struct MqttHarness {
    group: String,
}

impl MqttHarness {
    fn new() -> Self {
        MqttHarness {
            group: crate::pubsub::conformance::unique_group(),
        }
    }

    fn config(&self, group: &str) -> MqttConfig {
        self.config_at(url(), group)
    }

    fn config_at(&self, url: String, group: &str) -> MqttConfig {
        MqttConfig {
            url,
            consumer_group: Some(group.to_string()),
            client_id: "wasmill-test".into(),
            // Test sessions must not pile up on the broker.
            session_expiry: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(5),
            reconnect_max_delay: Duration::from_millis(200),
            ..MqttConfig::default()
        }
    }
}

#[async_trait]
impl Harness for MqttHarness {
    fn features(&self) -> Features {
        // Not promised: exactly_once (QoS 1 redelivers after a reconnect); guaranteed_order
        // across subscribers (several subscriptions of a group split the messages);
        // new_subscriber_receives_old_messages (a group whose session did not exist yet
        // gets nothing published before: MQTT keeps messages only for existing sessions).
        Features {
            consumer_groups: true,
            guaranteed_order_with_single_subscriber: true,
            persistent: true,
            ..Features::default()
        }
    }

    async fn pubsub(&self) -> Result<(DynPublisher, DynSubscriber)> {
        let ps = MqttPubSub::connect(self.config(&self.group)).await?;
        Ok(crate::pubsub::conformance::pair(ps))
    }

    async fn subscriber_in_group(&self, group: &str) -> Result<DynSubscriber> {
        Ok(Arc::new(MqttPubSub::connect(self.config(group)).await?))
    }

    /// A private Mosquitto with persistence, restarted: on SIGTERM it writes the
    /// sessions and their queued messages, and reads them back when it starts.
    async fn owned_pubsub(&self) -> Result<Option<OwnedPubSub>> {
        let server = PrivateServer::start(Kind::Mosquitto).await?;
        let ps = MqttPubSub::connect(self.config_at(server.url(), &self.group)).await?;
        let (publisher, subscriber) = crate::pubsub::conformance::pair(ps);
        Ok(Some(OwnedPubSub {
            publisher,
            subscriber,
            outage: Box::new(server),
        }))
    }
}

crate::conformance_tests!(MqttHarness::new());

#[test]
fn urls_parse_and_redact() {
    let b = parse_url("mqtt://user:secret@broker.example:1884/", None).unwrap();
    assert_eq!((b.host.as_str(), b.port), ("broker.example", 1884));
    assert_eq!(b.username.as_deref(), Some("user"));
    assert_eq!(b.password.as_deref(), Some("secret"));
    assert_eq!(b.shown, "mqtt://user:***@broker.example:1884/");
    let b = parse_url("tcp://[::1]", None).unwrap();
    assert_eq!((b.host.as_str(), b.port), ("::1", 1883));
    assert_eq!(redacted("mqtt://127.0.0.1:1883"), "mqtt://127.0.0.1:1883");
    let b = parse_url("mqtts://u:pw@h", None).unwrap();
    assert!(b.tls.is_some() && b.port == 8883);
    let err = parse_url("wss://u:pw@h", None).unwrap_err().to_string();
    assert!(err.contains("WebSocket") && !err.contains("pw"), "{err}");
    let ca = PathBuf::from("/ca.pem");
    let err = parse_url("mqtt://u:pw@h", Some(&ca))
        .unwrap_err()
        .to_string();
    assert!(err.contains("ca_file") && !err.contains("pw"), "{err}");
    assert!(parse_url("mqtt://h:notaport", None).is_err());
    assert!(parse_url("redis://h", None).is_err());
}

#[test]
fn config_parses_with_defaults_and_rejects_unknown_keys() {
    let c: MqttConfig = toml::from_str(
        "url = \"mqtt://10.0.0.1\"\nconsumer_group = \"billing\"\nsession_expiry = \"1h\"\nresume_delay = \"250ms\"",
    )
    .unwrap();
    assert_eq!(c.session_expiry, Duration::from_secs(3600));
    assert_eq!(c.resume_delay, Duration::from_millis(250));
    assert_eq!(c.receive_maximum, u16::MAX);
    assert_eq!(c.client_id, "wasmill");
    assert!(toml::from_str::<MqttConfig>("qos = 2").is_err());
}

#[test]
fn envelope_round_trips_and_ids_are_stable() {
    let msg = Message::with_uuid("u-1", "body").with_metadata("k", "v");
    let p = Publish::new(
        "t",
        QoS::AtLeastOnce,
        msg.payload.clone(),
        Some(envelope(&msg)),
    );
    let back = open_envelope(&p);
    assert_eq!(back.uuid, "u-1");
    assert_eq!(back.metadata, msg.metadata);
    assert_eq!(back.payload, msg.payload);
    let foreign = open_envelope(&Publish::new("t", QoS::AtLeastOnce, "x", None));
    assert!(!foreign.uuid.is_empty());
    assert_eq!(fingerprint("orders"), fingerprint("orders"));
    assert_ne!(fingerprint("orders"), fingerprint("orders2"));
    assert!(check_topic("a/b.c").is_ok());
    assert!(check_topic("a/+").is_err() && check_topic("$SYS/x").is_err());
}

#[tokio::test]
async fn unreachable_server_is_a_clear_error() {
    let err = MqttPubSub::connect(MqttConfig {
        url: "mqtt://user:secret@127.0.0.1:1".into(),
        connect_timeout: Duration::from_secs(1),
        ..MqttConfig::default()
    })
    .await
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("mqtt") && err.contains("127.0.0.1:1"), "{err}");
    assert!(!err.contains("secret"), "password leaked: {err}");
}

#[tokio::test]
async fn tail_sees_messages_and_closes_alone() {
    let h = MqttHarness::new();
    let ps = MqttPubSub::connect(h.config(&h.group)).await.unwrap();
    let topic = crate::pubsub::conformance::unique_topic("tail");
    let tail = ps.tail_subscriber();
    let mut sub = tail.subscribe(&topic).await.unwrap();
    ps.publish(&topic, vec![Message::new("hello")])
        .await
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&m.payload[..], b"hello");
    m.ack();
    Subscriber::close(&tail).await.unwrap();
    assert!(sub.recv().await.is_none());
    ps.publish(&topic, vec![Message::new("still open")])
        .await
        .unwrap();
    Publisher::close(&ps).await.unwrap();
}

/// Far more than Mosquitto's 20 in flight + 1000 queued pile up behind an unacked
/// message: the session buffers them (Receive Maximum), the broker drops none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_consumer_loses_nothing() {
    let h = MqttHarness::new();
    let ps = MqttPubSub::connect(h.config(&h.group)).await.unwrap();
    let topic = crate::pubsub::conformance::unique_topic("stalled");
    ps.subscribe_initialize(&topic).await.unwrap();
    let mut sub = ps.subscribe(&topic).await.unwrap();
    let msgs: Vec<Message> = (0..5000).map(|i| Message::new(format!("m{i}"))).collect();
    ps.publish(&topic, msgs[..1].iter().map(Message::copy).collect())
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .unwrap()
        .unwrap();
    // Everything else is published while the first message stays unacked.
    ps.publish(&topic, msgs[1..].iter().map(Message::copy).collect())
        .await
        .unwrap();
    first.ack();
    let rest =
        crate::pubsub::conformance::bulk_read(&mut sub, msgs.len() - 1, Duration::from_secs(60))
            .await;
    crate::pubsub::conformance::assert_all_received(&msgs[1..], &rest, false);
    drop(sub);
    Publisher::close(&ps).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_at_hand_are_taken_without_waiting_within_the_in_flight_limit() {
    let h = MqttHarness::new();
    let ps = MqttPubSub::connect(h.config(&h.group)).await.unwrap();
    let topic = crate::pubsub::conformance::unique_topic("at-hand");
    ps.subscribe_initialize(&topic).await.unwrap();
    let options = crate::pubsub::SubscribeOptions { max_in_flight: 3 };
    let mut sub = ps.subscribe_with(&topic, options).await.unwrap();
    let msgs: Vec<Message> = (0..5).map(|i| Message::new(format!("m{i}"))).collect();
    ps.publish(&topic, msgs.iter().map(Message::copy).collect())
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut batch = vec![first];
    while let Some(m) = sub.try_recv() {
        batch.push(m);
    }
    let got: Vec<String> = batch
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into())
        .collect();
    assert_eq!(got, ["m0", "m1", "m2"], "the in-flight limit holds");
    for m in batch {
        m.ack();
    }
    let rest = crate::pubsub::conformance::bulk_read(&mut sub, 2, Duration::from_secs(10)).await;
    crate::pubsub::conformance::assert_all_received(&msgs[3..], &rest, false);
    drop(sub);
    Publisher::close(&ps).await.unwrap();
}

#[tokio::test]
async fn shared_subscription_splits_a_group_between_client_ids() {
    let h = MqttHarness::new();
    let topic = crate::pubsub::conformance::unique_topic("shared");
    let mut members = Vec::new();
    let mut subs = Vec::new();
    for prefix in ["host-a", "host-b"] {
        let ps = MqttPubSub::connect(MqttConfig {
            client_id: prefix.into(),
            shared_subscription: true,
            ..h.config(&h.group)
        })
        .await
        .unwrap();
        ps.subscribe_initialize(&topic).await.unwrap();
        subs.push(ps.subscribe(&topic).await.unwrap());
        members.push(ps);
    }
    let msgs: Vec<Message> = (0..20).map(|i| Message::new(format!("m{i}"))).collect();
    members[0]
        .publish(&topic, msgs.iter().map(Message::copy).collect())
        .await
        .unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut per_member = [0; 2];
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < msgs.len() {
        let (a, b) = subs.split_at_mut(1);
        let (member, m) = tokio::select! {
            m = a[0].recv() => (0, m),
            m = b[0].recv() => (1, m),
            _ = tokio::time::sleep_until(deadline) => (0, None),
        };
        let m = m.expect("a message");
        m.ack();
        per_member[member] += 1;
        seen.insert(m.uuid.clone());
    }
    assert!(
        per_member.iter().all(|&n| n > 0),
        "not shared: {per_member:?}"
    );
    assert!(msgs.iter().all(|m| seen.contains(&m.uuid)));
    drop(subs);
    for ps in members {
        Publisher::close(&ps).await.unwrap();
    }
}

/// Publish calls back to back across rumqttc's keep-alive pings: the pings that fetch
/// held-back PUBACKs ([`nudge`]) never leave one unanswered when a keep-alive ping goes out
/// (rumqttc would fail the connection, and the calls in flight with it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_across_keepalive_pings_keeps_the_connection() {
    let h = MqttHarness::new();
    let ps = MqttPubSub::connect(MqttConfig {
        keep_alive: Duration::from_secs(5),
        ..h.config(&h.group)
    })
    .await
    .unwrap();
    let topic = crate::pubsub::conformance::unique_topic("keepalive");
    // Two keep-alive pings, with windows in flight all along.
    let until = Instant::now() + Duration::from_secs(11);
    let mut windows = 0;
    while Instant::now() < until {
        let msgs = (0..100).map(|i| Message::new(format!("m{i}"))).collect();
        if let Err(e) = ps.publish(&topic, msgs).await {
            panic!("window {windows}: {}", e.report());
        }
        windows += 1;
    }
    Publisher::close(&ps).await.unwrap();
}
