//! MQTT 5 (built and tested against Mosquitto 2.0): QoS 1 everywhere, persistent sessions,
//! manual acknowledgements, one session per (topic, consumer group).
//!
//! - **Envelope**: MQTT 5 user properties. The uuid travels in the `wasmill-uuid` property and
//!   every metadata entry in a property of its own; the payload is the MQTT payload, untouched.
//!   A message from a foreign publisher (no uuid property) gets a fresh uuid.
//! - **Publish** goes through one connection per backend (clean session) whose event loop runs
//!   in a task of its own. A call returns once the broker sent a PUBACK for every message; a
//!   refusal (a PUBACK reason code of 0x80 or more), a lost connection or `publish_timeout`
//!   makes it fail, and the caller retries (duplicates are possible, losses are not). Packet
//!   ids are matched to callers in the order the requests enter the client's queue (one caller
//!   feeds at a time); each connection is a fresh client, so nothing of a dead connection is
//!   ever confused with the next one. A broker that holds PUBACKs back behind Nagle's algorithm
//!   (Mosquitto's default) gets a PINGREQ once the client has nothing else to send and at most
//!   two calls wait, so a call does not wait for the client's delayed ACK ([`nudge`]).
//! - **Subscriptions**: a persistent session (clean start off, `session_expiry`) whose client
//!   id is stable per (topic, consumer group): `{client_id}-{group}-{hash of topic}`, subscribed
//!   to the topic with QoS 1. Each consumer group hence gets every message; in a group, the
//!   subscriptions of one process share the session (and its connection) and split its
//!   messages. Another *process* using the same `client_id` and group takes the session over
//!   (logged; each side then backs off for 5 s): run one consumer process per group and
//!   `client_id`.
//! - **`shared_subscription = true`** subscribes to `$share/{group}/{topic}` instead, so that
//!   processes with distinct `client_id`s share a group's messages (MQTT shared
//!   subscriptions). Caveat, checked on Mosquitto 2.0.11: the broker does not restore `$share`
//!   subscriptions from its persistence file, so after a broker restart, messages published
//!   before the subscription reconnects match no subscription and are dropped (`resume_delay`
//!   keeps this backend's own publishers out of that window, not others); and a member that
//!   stays away keeps its share of the messages queued in its session. Off by default.
//! - **Acks**: manual. A message is PUBACKed only once the consumer acked it, in the order the
//!   broker sent them (an acked message waits for the earlier ones). A nack redelivers the
//!   message from the session's local buffer (after its redelivery delay, if it asked for one)
//!   without telling the broker, which would not redeliver before the session resumes anyway.
//!   Delivery is in order: the next message goes out only when a consumer has room
//!   ([`SubscribeOptions::max_in_flight`]), and a nacked message goes out again before later ones.
//! - **`subscribe_initialize`** connects the session, subscribes, and leaves: the broker then
//!   queues the topic's messages for the session until a subscription reads them.
//! - **Reconnect**: every connection is a fresh client; when one fails, the subscription
//!   reconnects with backoff (50 ms doubling up to `reconnect_max_delay`), subscribes again,
//!   and the broker resends what was not PUBACKed; deliveries of the dead connection are
//!   forgotten (acking them does nothing; the broker redelivers them). The publisher reconnects
//!   the same way and fails the calls it could not confirm.
//! - **Tail** ([`MqttPubSub::tail_subscriber`]): a clean session with a fresh client id of its
//!   own, subscribed to the plain topic, so it sees every message and takes none from the
//!   groups; closing it leaves the backend open.
//!
//! ## Mosquitto's limits (what "no message lost" rests on)
//!
//! Mosquitto 2.0 bounds three things per client by `max_queued_messages` (default 1000):
//! 1. messages queued for a *connected* client beyond its in-flight window: more are dropped;
//! 2. messages kept for an *offline* session (counting those that were in flight when it
//!    left): more are dropped ("Outgoing messages are being dropped for client …" in its log);
//! 3. packets waiting for the client's socket to accept them: more are discarded, but a
//!    discarded PUBLISH stays "in flight" in the session, so it is resent at the next reconnect
//!    (delayed, not lost).
//!
//! What this module does about it:
//! - A large in-flight window: subscriptions announce a Receive Maximum of `receive_maximum`
//!   (default 65535, where MQTT 3.1.1 clients get the broker's `max_inflight_messages`, 20).
//!   Mosquitto pushes up to that many unacked messages and the session buffers them locally,
//!   so a slow consumer can lag ~66,000 messages behind before (1) drops anything (the test
//!   `a_stalled_consumer_loses_nothing` piles 5,000 behind an unacked message).
//! - Each session's task polls its connection and buffers every message it receives, whatever
//!   the consumers do (they take messages from that buffer in their own tasks: see
//!   [`session`]), so the socket does not back up (3).
//! - Subscriptions reconnect fast (at most `reconnect_max_delay` between attempts) and resume
//!   their sessions, subscription included, across a broker restart (the broker saves them on
//!   SIGTERM when `persistence` is on). The publisher, after it got a lost connection back,
//!   waits `resume_delay` before publishing, so that subscriptions are back first (2).
//!
//! What remains, with the broker's default configuration: a session that stays offline (no
//! subscription running) while more than 1000 messages are published to its topic loses the
//! excess (2); a session that reconnects with more unacked messages than the socket buffers
//! hold (a few MiB) plus 1000 gets the rest only at its next reconnect (3). A smaller
//! `receive_maximum` (below 1000) rules (3) out but makes (1) drop beyond `receive_maximum` +
//! 1000. The broker's `max_queued_messages 0` (unlimited) in `mosquitto.conf` removes all three.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    DisconnectReasonCode, Packet, PubAck, PubAckReason, Publish, PublishProperties,
};
use rumqttc::v5::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Request, StateError,
};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{Publisher, SubscribeOptions, Subscriber, Subscription, closed};
use crate::error::{Error, Result};
use crate::message::{Message, Metadata};

mod nudge;
mod session;

use nudge::{AckNudge, PollState};
use session::{MqttSource, NewConsumer, SessionSpec, attach};

const NAME: &str = "mqtt";
/// The user property that carries a message's uuid.
const UUID_PROPERTY: &str = "wasmill-uuid";
/// The largest packet MQTT can carry; announced so that the broker never drops a message as
/// too large for us.
const MAX_PACKET_SIZE: u32 = 268_435_455;
/// First delay before reconnecting.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// How long to stay away after another client took our session over.
const TAKEN_OVER_BACKOFF: Duration = Duration::from_secs(5);
/// Capacity of a client's request queue (publishes, acks).
const REQUEST_QUEUE: usize = 1024;

/// Settings of `kind = "mqtt"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// `mqtt://[user[:password]@]host[:port]` (port 1883 by default; `tcp://` works too).
    pub url: String,
    /// Consumer group: subscriptions in one group share a topic's messages, each group gets
    /// all of them (default `wasmill`). No `/`, `+` or `#`.
    pub consumer_group: Option<String>,
    /// Prefix of the client ids. A subscription's session is `{client_id}-{group}-{hash of
    /// topic}`, so a restarted host resumes its sessions. Two processes with the same prefix
    /// and group take the session over from each other: give each process its own prefix.
    pub client_id: String,
    /// Subscribe through the shared subscription `$share/{group}/{topic}`, so that processes
    /// with distinct `client_id`s share a group's messages. Mosquitto 2.0 does not restore
    /// shared subscriptions after a broker restart (messages published before the
    /// subscription reconnects are lost), hence off by default.
    pub shared_subscription: bool,
    /// How long the broker keeps a subscription's session, and the messages queued for it,
    /// while no subscription is connected.
    #[serde(with = "crate::config::duration")]
    pub session_expiry: Duration,
    /// How many unacknowledged messages the broker may push to one session (MQTT 5 Receive
    /// Maximum, 1 to 65535): the session buffers them, so a slow consumer may lag this far
    /// behind (plus the broker's `max_queued_messages`) before the broker drops messages.
    pub receive_maximum: u16,
    /// Keep-alive interval (at least 5 s).
    #[serde(with = "crate::config::duration")]
    pub keep_alive: Duration,
    /// Bound on connecting and on a subscription's confirmation by the broker.
    #[serde(with = "crate::config::duration")]
    pub connect_timeout: Duration,
    /// Bound on one publish call: waiting for the connection and for every PUBACK.
    #[serde(with = "crate::config::duration")]
    pub publish_timeout: Duration,
    /// Longest wait between two reconnection attempts of a subscription (and the publisher).
    #[serde(with = "crate::config::duration")]
    pub reconnect_max_delay: Duration,
    /// After the publisher lost its connection and got it back, how long it waits before
    /// publishing again, so that subscriptions resume their sessions first (the broker keeps
    /// only `max_queued_messages` for an offline session).
    #[serde(with = "crate::config::duration")]
    pub resume_delay: Duration,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            url: "mqtt://127.0.0.1:1883".into(),
            consumer_group: None,
            client_id: "wasmill".into(),
            shared_subscription: false,
            session_expiry: Duration::from_secs(7 * 24 * 3600),
            receive_maximum: u16::MAX,
            keep_alive: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            publish_timeout: Duration::from_secs(10),
            reconnect_max_delay: Duration::from_millis(500),
            resume_delay: Duration::from_secs(1),
        }
    }
}

/// Where the broker is, from the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Broker {
    host: String,
    port: u16,
    username: Option<String>,
    password: Option<String>,
    /// The URL without its password, for messages.
    shown: String,
}

/// The URL with its password replaced by `***`.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((auth, host)) => {
            let user = auth.split_once(':').map_or(auth, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_string(),
    }
}

fn parse_url(url: &str) -> Result<Broker> {
    let shown = redacted(url);
    let bad = |why: &str| Error::pubsub_msg(NAME, format!("invalid url {shown}: {why}"));
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("expected mqtt://host[:port]"))?;
    match scheme {
        "mqtt" | "tcp" => {}
        "mqtts" | "ssl" | "ws" | "wss" => {
            return Err(bad("only plain TCP (mqtt://) is compiled into this build"));
        }
        _ => return Err(bad("expected mqtt://host[:port]")),
    }
    let (auth, hostport) = match rest.rsplit_once('@') {
        Some((a, h)) => (Some(a), h),
        None => (None, rest),
    };
    let hostport = hostport.trim_end_matches('/');
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        (h, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() || hostport.contains('/') {
        return Err(bad("expected mqtt://host[:port]"));
    }
    let port = match port {
        Some(p) => p.parse().map_err(|_| bad("invalid port"))?,
        None => 1883,
    };
    let (username, password) = match auth {
        Some(a) => match a.split_once(':') {
            Some((u, p)) => (Some(u.to_string()), Some(p.to_string())),
            None => (Some(a.to_string()), None),
        },
        None => (None, None),
    };
    Ok(Broker {
        host: host.to_string(),
        port,
        username,
        password,
        shown,
    })
}

/// FNV-1a: a short, stable (across builds and versions) fingerprint of a topic for client ids.
fn fingerprint(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A topic we can publish to and subscribe to exactly (no wildcards, no `$` topics).
fn check_topic(topic: &str) -> Result<()> {
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

fn check_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.contains(['/', '+', '#', '\0']) {
        return Err(Error::Config(format!(
            "mqtt {what} {name:?}: must be non-empty, without '/', '+' or '#'"
        )));
    }
    Ok(())
}

/// The MQTT 5 user properties that carry a message's uuid and metadata.
fn envelope(msg: &Message) -> PublishProperties {
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
fn open_envelope(publish: &Publish) -> Message {
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
fn has_uuid(publish: &Publish) -> bool {
    publish
        .properties
        .as_ref()
        .is_some_and(|p| p.user_properties.iter().any(|(k, _)| k == UUID_PROPERTY))
}

fn reason_of(e: &ConnectionError) -> Option<DisconnectReasonCode> {
    match e {
        ConnectionError::MqttState(StateError::ServerDisconnect { reason_code, .. }) => {
            Some(*reason_code)
        }
        _ => None,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

type Polled = std::result::Result<Event, ConnectionError>;

/// Drives the publisher connection's event loop until it fails, forwarding everything, and
/// pings to fetch the PUBACKs the broker holds back ([`nudge`]) while few publish calls wait
/// for them. The event loop is never cancelled mid-poll (that could lose a packet it already
/// took from its queue).
fn spawn_poller(
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
fn leave_nagle_on(options: &mut MqttOptions) {
    let mut network = options.network_options();
    network.set_tcp_nodelay(false);
    options.set_network_options(network);
}

/// The connection options shared by every client of a backend.
fn base_options(broker: &Broker, config: &MqttConfig, client_id: String) -> MqttOptions {
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
    o
}

/// Polls a short-lived client's `eventloop` until `done` says so, for at most `limit`; the
/// error says what went wrong.
async fn poll_until(
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

// ---------------------------------------------------------------------------------------------
// Publisher side

type Waiter = oneshot::Sender<std::result::Result<(), String>>;

/// Who waits for which PUBACK on one connection.
#[derive(Default)]
struct Waiters {
    /// The connection is gone: nothing more may be fed to it.
    dead: bool,
    /// Fed to the client, packet id not known yet (in feeding order).
    unassigned: VecDeque<Waiter>,
    /// Sent with this packet id (a queue: a collision reuses an id still in flight).
    inflight: HashMap<u16, VecDeque<Waiter>>,
    /// A publish the client holds back because its packet id collided.
    collided: Option<u16>,
}

impl Waiters {
    fn fail_all(&mut self, why: &str) {
        self.dead = true;
        let inflight = self.inflight.drain().flat_map(|(_, q)| q);
        for w in self.unassigned.drain(..).chain(inflight) {
            let _ = w.send(Err(why.to_string()));
        }
    }
}

/// One connection of the publisher.
struct PubConn {
    client: AsyncClient,
    /// Held while feeding a call's messages, so that the queue order is the waiters' order.
    feed: tokio::sync::Mutex<()>,
    waiters: Mutex<Waiters>,
    /// A caller gave up while handing a message over: end this connection.
    broken: CancellationToken,
    /// What the publish calls hand over, for the poller's nudges.
    feeding: Arc<Feeding>,
}

/// What the publish calls hand to one connection, as its poller sees it ([`nudge`]).
#[derive(Default)]
struct Feeding {
    /// Publishes handed (or being handed) to the client, counted before each hand-over.
    fed: AtomicUsize,
    /// Publish calls in progress.
    calls: AtomicUsize,
}

/// Counts one publish call in progress for as long as it lives.
struct CallInProgress(Arc<Feeding>);

impl CallInProgress {
    fn new(feeding: &Arc<Feeding>) -> Self {
        feeding.calls.fetch_add(1, Ordering::AcqRel);
        CallInProgress(feeding.clone())
    }
}

impl Drop for CallInProgress {
    fn drop(&mut self) {
        self.0.calls.fetch_sub(1, Ordering::AcqRel);
    }
}

impl PubConn {
    fn waiters(&self) -> MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sent(&self, pkid: u16, held_back: bool) {
        let mut w = self.waiters();
        if !held_back && w.collided == Some(pkid) {
            // The held-back publish is out now; it was assigned when it collided.
            w.collided = None;
            return;
        }
        if held_back {
            w.collided = Some(pkid);
        }
        if let Some(waiter) = w.unassigned.pop_front() {
            w.inflight.entry(pkid).or_default().push_back(waiter);
        }
    }

    fn acked(&self, ack: &PubAck) {
        let mut w = self.waiters();
        let Some(queue) = w.inflight.get_mut(&ack.pkid) else {
            return;
        };
        let waiter = queue.pop_front();
        if queue.is_empty() {
            w.inflight.remove(&ack.pkid);
        }
        let result = match ack.reason {
            PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Ok(()),
            other => Err(format!("the broker refused the message ({other:?})")),
        };
        if let Some(waiter) = waiter {
            let _ = waiter.send(result);
        }
    }
}

/// The publisher's connection, kept up by a task of its own.
struct PubLink {
    /// The connection publishes go to, when there is one.
    current: watch::Sender<Option<Arc<PubConn>>>,
    /// Why the last connection attempt failed.
    last_error: Mutex<String>,
}

impl PubLink {
    fn set_error(&self, e: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }

    fn error(&self) -> String {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Keeps the publisher connected until `stop`; a fresh client per connection.
async fn run_publisher(
    link: Arc<PubLink>,
    options: MqttOptions,
    config: Arc<MqttConfig>,
    shown: String,
    stop: CancellationToken,
) {
    let mut backoff = MIN_BACKOFF;
    let mut was_connected = false;
    loop {
        if stop.is_cancelled() {
            return;
        }
        let (client, eventloop) = AsyncClient::new(options.clone(), REQUEST_QUEUE);
        let feeding = Arc::new(Feeding::default());
        let conn = Arc::new(PubConn {
            client,
            feed: tokio::sync::Mutex::new(()),
            waiters: Mutex::new(Waiters::default()),
            broken: CancellationToken::new(),
            feeding: feeding.clone(),
        });
        let (mut events, poller) = spawn_poller(eventloop, feeding);
        let mut resume_at = None;
        let mut connected = false;
        let mut leave_by = None;
        let failure: Option<String> = loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                        connected = true;
                        backoff = MIN_BACKOFF;
                        if was_connected {
                            resume_at = Some(Instant::now() + config.resume_delay);
                        } else {
                            link.current.send_replace(Some(conn.clone()));
                        }
                        was_connected = true;
                    }
                    Some(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => conn.sent(pkid, false),
                    Some(Ok(Event::Outgoing(Outgoing::AwaitAck(pkid)))) => conn.sent(pkid, true),
                    Some(Ok(Event::Incoming(Packet::PubAck(ack)))) => conn.acked(&ack),
                    Some(Ok(Event::Outgoing(Outgoing::Disconnect))) => break None,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break Some(e.to_string()),
                    None => break Some("the client's event loop ended".into()),
                },
                _ = stop.cancelled(), if leave_by.is_none() => {
                    leave_by = Some(Instant::now() + Duration::from_secs(2));
                    if !connected || conn.client.try_disconnect().is_err() {
                        break None;
                    }
                }
                _ = sleep_until_opt(leave_by) => break None,
                _ = conn.broken.cancelled() => {
                    break Some("a publish gave up while handing a message over".into());
                }
                _ = sleep_until_opt(resume_at) => {
                    resume_at = None;
                    link.current.send_replace(Some(conn.clone()));
                }
            }
        };
        link.current.send_if_modified(|c| {
            let mine = c.as_ref().is_some_and(|c| Arc::ptr_eq(c, &conn));
            if mine {
                *c = None;
            }
            mine
        });
        conn.waiters()
            .fail_all(failure.as_deref().unwrap_or("the publisher was closed"));
        poller.abort();
        let Some(why) = failure else { return };
        if connected {
            tracing::warn!(url = %shown, "mqtt publisher: connection lost: {why}; reconnecting");
        } else {
            tracing::debug!(url = %shown, "mqtt publisher: connect failed: {why}");
        }
        link.set_error(why);
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(config.reconnect_max_delay.max(MIN_BACKOFF));
    }
}

// ---------------------------------------------------------------------------------------------
// The backend

/// The MQTT pub/sub; publisher and subscriber in one.
#[derive(Clone)]
pub struct MqttPubSub {
    config: Arc<MqttConfig>,
    broker: Arc<Broker>,
    publisher: Arc<PubLink>,
    closed: CancellationToken,
    /// A tail: clean sessions on the plain topic.
    tail: bool,
    /// Consumers attached through this value, released once their session let them go.
    detached: Arc<Mutex<Vec<CancellationToken>>>,
    /// Stops the publisher when the last clone is dropped.
    _publisher_guard: Arc<DropGuard>,
}

impl MqttPubSub {
    /// Connects the publisher to the broker at `config.url` (retrying for up to
    /// `connect_timeout`); subscriptions open connections of their own.
    pub async fn connect(config: MqttConfig) -> Result<Self> {
        let broker = parse_url(&config.url)?;
        check_name("client_id", &config.client_id)?;
        if let Some(g) = &config.consumer_group {
            check_name("consumer_group", g)?;
        }
        if config.receive_maximum == 0 {
            return Err(Error::Config(
                "mqtt receive_maximum: must be 1 to 65535".into(),
            ));
        }
        if config.session_expiry < Duration::from_secs(1) {
            return Err(Error::Config(
                "mqtt session_expiry: must be at least 1s (sessions must outlive a disconnect)"
                    .into(),
            ));
        }
        let config = Arc::new(config);
        let closed = CancellationToken::new();
        let publisher_stop = closed.child_token();
        let publisher = Arc::new(PubLink {
            current: watch::Sender::new(None),
            last_error: Mutex::new("not connected yet".into()),
        });
        let client_id = format!("{}-pub-{}", config.client_id, uuid::Uuid::new_v4().simple());
        let mut options = base_options(&broker, &config, client_id);
        options
            .set_clean_start(true)
            .set_outgoing_inflight_upper_limit(1024);
        tokio::spawn(run_publisher(
            publisher.clone(),
            options,
            config.clone(),
            broker.shown.clone(),
            publisher_stop.clone(),
        ));
        let mut current = publisher.current.subscribe();
        let up = matches!(
            tokio::time::timeout(config.connect_timeout, current.wait_for(|c| c.is_some())).await,
            Ok(Ok(_))
        );
        if !up {
            closed.cancel();
            return Err(Error::pubsub_msg(
                NAME,
                format!(
                    "connect {}: {} (gave up after {:?})",
                    broker.shown,
                    publisher.error(),
                    config.connect_timeout
                ),
            ));
        }
        Ok(MqttPubSub {
            config,
            broker: Arc::new(broker),
            publisher,
            closed,
            tail: false,
            detached: Arc::default(),
            _publisher_guard: Arc::new(publisher_stop.drop_guard()),
        })
    }

    /// A subscriber that reads every message of a topic without taking any from the consumer
    /// groups (a clean session with a fresh client id on the plain topic). Closing it leaves
    /// this backend open.
    pub fn tail_subscriber(&self) -> MqttPubSub {
        MqttPubSub {
            closed: self.closed.child_token(),
            tail: true,
            detached: Arc::default(),
            ..self.clone()
        }
    }

    fn group(&self) -> &str {
        self.config.consumer_group.as_deref().unwrap_or("wasmill")
    }

    /// The client id of the session of `topic` in this backend's consumer group.
    fn session_client_id(&self, topic: &str) -> String {
        format!(
            "{}-{}-{:016x}",
            self.config.client_id,
            self.group(),
            fingerprint(topic)
        )
    }

    fn session_spec(&self, topic: &str) -> SessionSpec {
        let (client_id, filter) = if self.tail {
            let id = format!(
                "{}-tail-{}",
                self.config.client_id,
                uuid::Uuid::new_v4().simple()
            );
            (id, topic.to_string())
        } else if self.config.shared_subscription {
            let filter = format!("$share/{}/{topic}", self.group());
            (self.session_client_id(topic), filter)
        } else {
            (self.session_client_id(topic), topic.to_string())
        };
        let mut options = base_options(&self.broker, &self.config, client_id.clone());
        leave_nagle_on(&mut options);
        options
            .set_manual_acks(true)
            .set_receive_maximum(Some(self.config.receive_maximum))
            // Subscriptions publish nothing: keep the client's publish table tiny.
            .set_outgoing_inflight_upper_limit(1);
        if self.tail {
            options.set_clean_start(true);
        } else {
            let expiry = self
                .config
                .session_expiry
                .as_secs()
                .min(u64::from(u32::MAX)) as u32;
            options
                .set_clean_start(false)
                .set_session_expiry_interval(Some(expiry));
        }
        SessionSpec {
            key: format!("{}:{}|{client_id}", self.broker.host, self.broker.port),
            options,
            filter,
            persistent: !self.tail,
            shown: self.broker.shown.clone(),
            reconnect_max: self.config.reconnect_max_delay,
            request_queue: usize::from(self.config.receive_maximum) + REQUEST_QUEUE,
        }
    }

    async fn confirmed(&self, topic: &str, answer: oneshot::Receiver<Result<()>>) -> Result<()> {
        match tokio::time::timeout(self.config.connect_timeout, answer).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Error::pubsub_msg(
                NAME,
                format!("subscribe {topic}: the session ended"),
            )),
            Err(_) => Err(Error::pubsub_msg(
                NAME,
                format!(
                    "subscribe {topic} on {}: no confirmation from the broker within {:?}",
                    self.broker.shown, self.config.connect_timeout
                ),
            )),
        }
    }

    /// The publisher's connection, waiting for it until `deadline`.
    async fn publisher_conn(&self, deadline: Instant) -> Result<Arc<PubConn>> {
        let mut current = self.publisher.current.subscribe();
        let waited = tokio::select! {
            r = tokio::time::timeout_at(deadline, current.wait_for(|c| c.is_some())) => r,
            _ = self.closed.cancelled() => return Err(closed(NAME)),
        };
        match waited {
            Ok(Ok(c)) => c.clone().ok_or_else(|| closed(NAME)),
            Ok(Err(_)) => Err(closed(NAME)),
            Err(_) => Err(Error::pubsub_msg(
                NAME,
                format!(
                    "publish: not connected to {} ({})",
                    self.broker.shown,
                    self.publisher.error()
                ),
            )),
        }
    }
}

#[async_trait]
impl Publisher for MqttPubSub {
    async fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<()> {
        if self.closed.is_cancelled() {
            return Err(closed(NAME));
        }
        check_topic(topic)?;
        if messages.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + self.config.publish_timeout;
        let conn = self.publisher_conn(deadline).await?;
        let _call = CallInProgress::new(&conn.feeding);
        let lost = || Error::pubsub_msg(NAME, format!("publish to {topic}: connection lost"));
        let mut acks = Vec::with_capacity(messages.len());
        let feed = async {
            let _turn = conn.feed.lock().await;
            for m in &messages {
                let (tx, rx) = oneshot::channel();
                {
                    let mut w = conn.waiters();
                    if w.dead {
                        return Err(lost());
                    }
                    w.unassigned.push_back(tx);
                }
                conn.feeding.fed.fetch_add(1, Ordering::Release);
                let sent = conn
                    .client
                    .publish_with_properties(
                        topic,
                        QoS::AtLeastOnce,
                        false,
                        m.payload.clone(),
                        envelope(m),
                    )
                    .await;
                if sent.is_err() {
                    let mut w = conn.waiters();
                    if !w.dead {
                        w.unassigned.pop_back();
                    }
                    return Err(lost());
                }
                acks.push(rx);
            }
            Ok(())
        };
        match tokio::time::timeout_at(deadline, feed).await {
            Ok(r) => r?,
            Err(_) => {
                // A message may or may not be in the client's queue: start afresh.
                conn.broken.cancel();
                return Err(Error::pubsub_msg(
                    NAME,
                    format!("publish to {topic}: timed out handing messages to the client"),
                ));
            }
        }
        for ack in acks {
            match tokio::time::timeout_at(deadline, ack).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(why))) => {
                    return Err(Error::pubsub_msg(
                        NAME,
                        format!("publish to {topic}: {why}"),
                    ));
                }
                Ok(Err(_)) => return Err(lost()),
                Err(_) => {
                    return Err(Error::pubsub_msg(
                        NAME,
                        format!(
                            "publish to {topic}: no PUBACK within {:?}",
                            self.config.publish_timeout
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        self.closed.cancel();
        let detached =
            std::mem::take(&mut *self.detached.lock().unwrap_or_else(|p| p.into_inner()));
        // Let the sessions flush the acks of this value's consumers and disconnect.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            for t in detached {
                t.cancelled().await;
            }
        })
        .await;
        Ok(())
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

#[async_trait]
impl Subscriber for MqttPubSub {
    async fn subscribe_initialize(&self, topic: &str) -> Result<()> {
        if self.closed.is_cancelled() {
            return Err(closed(NAME));
        }
        check_topic(topic)?;
        if self.tail {
            return Ok(());
        }
        let (_, answer) = attach(&self.session_spec(topic), None).await;
        self.confirmed(topic, answer).await
    }

    async fn subscribe_with(&self, topic: &str, options: SubscribeOptions) -> Result<Subscription> {
        if self.closed.is_cancelled() {
            return Err(closed(NAME));
        }
        check_topic(topic)?;
        let detached = CancellationToken::new();
        {
            let mut list = self.detached.lock().unwrap_or_else(|p| p.into_inner());
            list.retain(|t| !t.is_cancelled());
            list.push(detached.clone());
        }
        let id = session::consumer_id();
        let consumer = NewConsumer {
            id,
            detached,
            closed: self.closed.clone(),
        };
        let (session, answer) = attach(&self.session_spec(topic), Some(consumer)).await;
        // Dropped on failure, the source leaves the session again.
        let source = MqttSource::new(session, id, options.max_in_flight);
        self.confirmed(topic, answer).await?;
        Ok(Subscription::pull(source, &self.closed))
    }

    async fn close(&self) -> Result<()> {
        Publisher::close(self).await
    }

    /// Ends this consumer group's session of `topic` on the broker, with the messages it kept
    /// (MQTT stores messages only in sessions; other groups' sessions stay). It resumes the
    /// session with an expiry of 0, so the broker drops it when this connection closes; the
    /// CONNACK says whether it existed. Works after [`Subscriber::close`] too.
    async fn remove_topic(&self, topic: &str) -> Result<bool> {
        if self.tail {
            return Ok(false);
        }
        check_topic(topic)?;
        let mut options = base_options(&self.broker, &self.config, self.session_client_id(topic));
        options
            .set_clean_start(false)
            .set_session_expiry_interval(Some(0))
            .set_manual_acks(true)
            .set_receive_maximum(Some(1));
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        let mut present = false;
        let mut refused = None;
        let polled = poll_until(&mut eventloop, self.config.connect_timeout, |ev| match ev {
            Event::Incoming(Packet::ConnAck(ack)) => {
                present = ack.session_present;
                refused = client.try_disconnect().err().map(|e| e.to_string());
                refused.is_some()
            }
            Event::Outgoing(Outgoing::Disconnect) => true,
            _ => false,
        })
        .await;
        match polled.err().or(refused) {
            None => Ok(present),
            Some(e) => {
                let shown = &self.broker.shown;
                Err(Error::pubsub_msg(
                    NAME,
                    format!("remove topic {topic}: {shown}: {e}"),
                ))
            }
        }
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

// ---------------------------------------------------------------------------------------------
// Raw client benchmark

fn bench_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::pubsub_msg(NAME, format!("raw bench: {what}: {e}"))
}

/// [`poll_until`] for the raw benchmark's errors.
async fn bench_poll(
    eventloop: &mut EventLoop,
    limit: Duration,
    done: impl FnMut(&Event) -> bool,
) -> Result<()> {
    poll_until(eventloop, limit, done)
        .await
        .map_err(|e| bench_err("poll", e))
}

/// The raw client's throughput: QoS 1 publishes until every PUBACK is in, then a consumer
/// (subscribed before, not reading meanwhile) reads and PUBACKs them; in rounds of about
/// 1 MiB of messages.
pub async fn raw_bench(
    url: &str,
    messages: usize,
    payload_size: usize,
) -> Result<super::RawBenchFigures> {
    let broker = parse_url(url)?;
    let config = MqttConfig::default();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let topic = format!("raw_bench_{id}");
    let limit = Duration::from_secs(60);
    let round = super::bench_round(payload_size);

    let mut options = base_options(&broker, &config, format!("wasmill-raw-sub-{id}"));
    // Like a subscription's client (and rumqttc's default).
    leave_nagle_on(&mut options);
    options
        .set_manual_acks(true)
        .set_receive_maximum(Some(u16::MAX))
        .set_outgoing_inflight_upper_limit(1);
    let (consumer, mut consumer_loop) = AsyncClient::new(options, round + 16);
    consumer
        .subscribe(topic.clone(), QoS::AtLeastOnce)
        .await
        .map_err(|e| bench_err("subscribe", e))?;
    bench_poll(&mut consumer_loop, limit, |ev| {
        matches!(ev, Event::Incoming(Packet::SubAck(_)))
    })
    .await?;

    let options = base_options(&broker, &config, format!("wasmill-raw-pub-{id}"));
    let (producer, mut producer_loop) = AsyncClient::new(options, REQUEST_QUEUE);
    let payload = bytes::Bytes::from(vec![b'x'; payload_size]);
    let (mut publish_time, mut consume_time) = (Duration::ZERO, Duration::ZERO);
    let mut consumed = 0;
    let mut left = messages;
    while left > 0 {
        let n = left.min(round);
        left -= n;
        let start = std::time::Instant::now();
        // Like `wasmill bench`: wait for the PUBACKs of each window before the next.
        let mut window_start = 0;
        while window_start < n {
            let w = super::RAW_PUBLISH_WINDOW.min(n - window_start);
            window_start += w;
            let feeder = {
                let (producer, topic, payload) = (producer.clone(), topic.clone(), payload.clone());
                tokio::spawn(async move {
                    for _ in 0..w {
                        let m = super::raw_bench_message(&payload, start);
                        if producer
                            .publish_with_properties(
                                topic.as_str(),
                                QoS::AtLeastOnce,
                                false,
                                m.payload.clone(),
                                envelope(&m),
                            )
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                })
            };
            let mut acked = 0;
            let published = bench_poll(&mut producer_loop, limit, |ev| {
                if matches!(ev, Event::Incoming(Packet::PubAck(_))) {
                    acked += 1;
                }
                acked == w
            })
            .await;
            feeder.abort();
            published?;
        }
        publish_time += start.elapsed();

        let start = std::time::Instant::now();
        let (mut got, mut acked) = (0, 0);
        let mut ack_failed = None;
        bench_poll(&mut consumer_loop, limit, |ev| {
            match ev {
                Event::Incoming(Packet::Publish(p)) => {
                    got += 1;
                    if let Err(e) = consumer.try_ack(p) {
                        ack_failed = Some(e.to_string());
                        return true;
                    }
                }
                Event::Outgoing(Outgoing::PubAck(_)) => acked += 1,
                _ => {}
            }
            acked == n
        })
        .await?;
        if let Some(e) = ack_failed {
            return Err(bench_err("ack", e));
        }
        consumed += got;
        consume_time += start.elapsed();
    }
    // Leave (both sessions are clean: nothing stays on the broker).
    let _ = consumer.try_disconnect();
    let _ = bench_poll(&mut consumer_loop, Duration::from_secs(2), |ev| {
        matches!(ev, Event::Outgoing(Outgoing::Disconnect))
    })
    .await;
    let _ = producer.try_disconnect();
    let _ = bench_poll(&mut producer_loop, Duration::from_secs(2), |ev| {
        matches!(ev, Event::Outgoing(Outgoing::Disconnect))
    })
    .await;
    Ok(super::RawBenchFigures {
        publish_per_sec: messages as f64 / publish_time.as_secs_f64().max(1e-9),
        consume_per_sec: consumed as f64 / consume_time.as_secs_f64().max(1e-9),
    })
}

#[cfg(test)]
mod tests {
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
        let b = parse_url("mqtt://user:secret@broker.example:1884/").unwrap();
        assert_eq!((b.host.as_str(), b.port), ("broker.example", 1884));
        assert_eq!(b.username.as_deref(), Some("user"));
        assert_eq!(b.password.as_deref(), Some("secret"));
        assert_eq!(b.shown, "mqtt://user:***@broker.example:1884/");
        let b = parse_url("tcp://[::1]").unwrap();
        assert_eq!((b.host.as_str(), b.port), ("::1", 1883));
        assert_eq!(redacted("mqtt://127.0.0.1:1883"), "mqtt://127.0.0.1:1883");
        let err = parse_url("mqtts://u:pw@h").unwrap_err().to_string();
        assert!(err.contains("mqtt") && !err.contains("pw"), "{err}");
        assert!(parse_url("mqtt://h:notaport").is_err());
        assert!(parse_url("redis://h").is_err());
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
        let rest = crate::pubsub::conformance::bulk_read(
            &mut sub,
            msgs.len() - 1,
            Duration::from_secs(60),
        )
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
        let rest =
            crate::pubsub::conformance::bulk_read(&mut sub, 2, Duration::from_secs(10)).await;
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

    #[tokio::test]
    async fn raw_bench_reports_positive_figures() {
        let f = raw_bench(&url(), 500, 100).await.unwrap();
        assert!(f.publish_per_sec > 0.0 && f.consume_per_sec > 0.0);
    }
}
