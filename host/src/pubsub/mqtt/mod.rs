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
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    DisconnectReasonCode, Packet, PubAck, PubAckReason, Publish, PublishProperties,
};
use rumqttc::v5::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Request, StateError,
};
use rumqttc::{Outgoing, TlsConfiguration, Transport};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{Publisher, SubscribeOptions, Subscriber, Subscription, closed};
use crate::error::{Error, Result};
use crate::message::{Message, Metadata};
use crate::pubsub::kit::{Reconnect, redacted, tls};
use crate::pubsub::registry::{self, Backend};

mod nudge;
mod session;

use nudge::{AckNudge, PollState};
use session::{MqttSource, NewConsumer, SessionSpec, attach};

mod client;
mod config;
mod publisher;

use client::*;
pub(crate) use client::{base_options, envelope, leave_nagle_on, poll_until};
pub use config::*;
use publisher::*;

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
pub(crate) const REQUEST_QUEUE: usize = 1024;

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
        let broker = parse_url(&config.url, config.ca_file.as_ref())?;
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

/// This backend in the registry's table ([`registry::BACKENDS`]).
pub const BACKEND: registry::BackendKind = registry::BackendKind {
    name: "mqtt",
    check: registry::check_as::<MqttConfig>,
    connect: |name, table| {
        Box::pin(async move {
            let cfg: MqttConfig = registry::settings(&name, &table)?;
            let ps = MqttPubSub::connect(cfg).await?;
            // A clean session on the plain topic: sees every message, takes none from groups.
            Ok(Backend::shared(&name, "mqtt", ps.clone()).with_tail(move || ps.tail_subscriber()))
        })
    },
    raw_bench: Some(|name, table, messages, payload_size| {
        Box::pin(async move {
            let cfg: MqttConfig = registry::settings(&name, &table)?;
            crate::bench::raw::mqtt::run(&cfg.url, messages, payload_size).await
        })
    }),
};

#[cfg(test)]
mod tests;
