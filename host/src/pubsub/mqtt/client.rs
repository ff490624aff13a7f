//! What every client of the backend shares: names and topics checked, the message envelope in MQTT 5 properties, the connection options, and polling a client's event loop.

use super::*;

/// FNV-1a: a short, stable (across builds and versions) fingerprint of a topic for client ids.
pub(super) fn fingerprint(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A topic we can publish to and subscribe to exactly (no wildcards, no `$` topics).
pub(super) fn check_topic(topic: &str) -> Result<()> {
    if topic.is_empty()
        || topic.starts_with('$')
        || topic.contains(['+', '#', '\0'])
        || topic.len() > u16::MAX as usize
    {
        return Err(Error::pubsub_msg(
            NAME,
            format!(
                "invalid topic {topic:?}: MQTT topics must be non-empty, without '+', '#' or a leading '$'"
            ),
        ));
    }
    Ok(())
}

pub(super) fn check_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.contains(['/', '+', '#', '\0']) {
        return Err(Error::Config(format!(
            "mqtt {what} {name:?}: must be non-empty, without '/', '+' or '#'"
        )));
    }
    Ok(())
}

/// The MQTT 5 user properties that carry a message's uuid and metadata.
pub(crate) fn envelope(msg: &Message) -> PublishProperties {
    let mut user_properties = Vec::with_capacity(msg.metadata.len() + 1);
    user_properties.push((UUID_PROPERTY.to_string(), msg.uuid.clone()));
    for (k, v) in msg.metadata.iter().filter(|(k, _)| *k != UUID_PROPERTY) {
        user_properties.push((k.to_string(), v.to_string()));
    }
    PublishProperties {
        user_properties,
        ..PublishProperties::default()
    }
}

/// The message a PUBLISH carries.
pub(super) fn open_envelope(publish: &Publish) -> Message {
    let mut uuid = None;
    let mut metadata = Metadata::new();
    if let Some(props) = &publish.properties {
        for (k, v) in &props.user_properties {
            if k == UUID_PROPERTY {
                uuid = Some(v.clone());
            } else {
                metadata.set(k.clone(), v.clone());
            }
        }
    }
    let mut msg = Message::with_uuid(
        uuid.unwrap_or_else(crate::message::new_uuid),
        publish.payload.clone(),
    );
    msg.metadata = metadata;
    msg
}

/// Whether the message carries its uuid (Wasmill published it).
pub(super) fn has_uuid(publish: &Publish) -> bool {
    publish
        .properties
        .as_ref()
        .is_some_and(|p| p.user_properties.iter().any(|(k, _)| k == UUID_PROPERTY))
}

pub(super) fn reason_of(e: &ConnectionError) -> Option<DisconnectReasonCode> {
    match e {
        ConnectionError::MqttState(StateError::ServerDisconnect { reason_code, .. }) => {
            Some(*reason_code)
        }
        _ => None,
    }
}

pub(super) async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

pub(super) type Polled = std::result::Result<Event, ConnectionError>;

/// Drives the publisher connection's event loop until it fails, forwarding everything, and
/// pings to fetch the PUBACKs the broker holds back ([`nudge`]) while few publish calls wait
/// for them. The event loop is never cancelled mid-poll (that could lose a packet it already
/// took from its queue).
pub(super) fn spawn_poller(
    mut eventloop: EventLoop,
    feeding: Arc<Feeding>,
) -> (mpsc::UnboundedReceiver<Polled>, JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut nudge = AckNudge::new();
        loop {
            let polled = eventloop.poll().await;
            if let Ok(event) = &polled {
                let now = Instant::now();
                nudge.observe(event, eventloop.options.keep_alive(), now);
                let state = PollState {
                    collision: eventloop.state.collision.is_some(),
                    read_drained: eventloop.state.events.is_empty(),
                    few_and_idle: feeding.calls.load(Ordering::Acquire) <= nudge::MAX_CALLS
                        && feeding.fed.load(Ordering::Acquire) <= nudge.sent(),
                };
                if nudge.should_nudge(event, state, now) {
                    eventloop.state.await_pingresp = false;
                    eventloop.pending.push_back(Request::PingReq);
                }
            }
            let failed = polled.is_err();
            if tx.send(polled).is_err() || failed {
                return;
            }
        }
    });
    (rx, task)
}

/// Turns Nagle's algorithm back on for a subscription's client. Its only small packets are
/// its PUBACKs, and nothing waits for them while fewer than receive_maximum are due: Nagle's
/// algorithm may hold them back until the broker's ACK and send many in one segment (a busy
/// session spent ~30% of its CPU sending one segment per PUBACK over loopback).
pub(crate) fn leave_nagle_on(options: &mut MqttOptions) {
    let mut network = options.network_options();
    network.set_tcp_nodelay(false);
    options.set_network_options(network);
}

/// The connection options shared by every client of a backend.
pub(crate) fn base_options(broker: &Broker, config: &MqttConfig, client_id: String) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    o.set_keep_alive(config.keep_alive.max(Duration::from_secs(5)))
        .set_connection_timeout(config.connect_timeout.as_secs().max(1))
        .set_max_packet_size(Some(MAX_PACKET_SIZE));
    // Without TCP_NODELAY (rumqttc's default is off), Nagle's algorithm holds small packets
    // back until the broker's delayed ACK: ~40 ms per round of publishes or PUBACKs.
    let mut network = o.network_options();
    network.set_tcp_nodelay(true);
    o.set_network_options(network);
    if let Some(user) = &broker.username {
        o.set_credentials(user.clone(), broker.password.clone().unwrap_or_default());
    }
    if let Some(tls) = &broker.tls {
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls.clone(),
        )));
    }
    o
}

/// Polls a short-lived client's `eventloop` until `done` says so, for at most `limit`; the
/// error says what went wrong.
pub(crate) async fn poll_until(
    eventloop: &mut EventLoop,
    limit: Duration,
    mut done: impl FnMut(&Event) -> bool,
) -> std::result::Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(Ok(ev)) => {
                if done(&ev) {
                    return Ok(());
                }
            }
            Ok(Err(e)) => return Err(format!("connection: {e}")),
            Err(_) => return Err(format!("no answer within {limit:?}")),
        }
    }
}
