//! Subscription sessions: one MQTT session per (broker, client id) in a process, its
//! connection driven by a task on a thread of its own ([`spawn_session`]), and the messages it
//! received pulled by the subscriptions that share it.
//!
//! The session task polls the connection's event loop itself (kept alive across its
//! `select!`: rumqttc's `EventLoop::poll` is not cancel-safe) and queues every PUBLISH in the
//! session's [`Delivery`]. A subscription ([`MqttSource`]) takes the next message from there
//! in its consumer's own task, and on its next call finds its deliveries settled and queues
//! their PUBACKs in the client, in the order the broker sent the messages; the session task
//! writes them out on its next poll. A consumer that has the next message at hand holds the
//! PUBACKs back, up to [`ACK_BATCH`] of them or for [`ACK_HOLD`] (the session sends them then),
//! so that it wakes the session's thread once for many. No message crosses a channel between
//! tasks: at concurrency 1 a message costs the session task one wake-up (the socket) and the
//! consumer at most one (a message arrived while it waited).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::Duration;

use crate::pubsub::kit::Reconnect;
use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, Packet, Publish, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{MIN_BACKOFF, NAME, Polled, TAKEN_OVER_BACKOFF, has_uuid, open_envelope, reason_of};
use crate::error::{Error, Result};
use crate::message::{AckState, DeliveryHandle, Message};
use crate::pubsub::MessageSource;

mod delivery;

pub(crate) use delivery::MqttSource;
use delivery::*;

/// What a subscription session is, for the process-wide registry.
#[derive(Clone)]
pub(super) struct SessionSpec {
    /// Registry key: broker and client id.
    pub key: String,
    pub options: MqttOptions,
    /// The subscription's topic filter.
    pub filter: String,
    /// A persistent session (or a clean one, for tails).
    pub persistent: bool,
    /// The broker's URL without credentials, for logs.
    pub shown: String,
    pub reconnect_max: Duration,
    /// Capacity of a connection's request queue: room for a PUBACK of every message the
    /// broker may have in flight (its receive maximum), so that queueing one never waits.
    pub request_queue: usize,
}

/// A request to a session task.
enum Request {
    /// Wait until subscribed (answered on `ready`), registering a consumer if one is given.
    Attach {
        consumer: Option<NewConsumer>,
        ready: oneshot::Sender<Result<()>>,
    },
    /// A consumer's subscription ended (its source was dropped).
    Detach(u64),
}

/// A consumer joining a session.
pub(super) struct NewConsumer {
    /// Its [`MqttSource`]'s id.
    pub id: u64,
    /// Cancelled once the session let go of it and its acks went out.
    pub detached: CancellationToken,
    /// Its subscriber's close token: closing ends the consumer too.
    pub closed: CancellationToken,
}

/// A session's handle in the registry.
pub(super) struct SessionShared {
    requests: mpsc::UnboundedSender<Request>,
    /// Cleared (under the registry lock) when the session decided to end.
    accepting: AtomicBool,
    /// Cancelled once the session ended and disconnected.
    done: CancellationToken,
    /// The messages of the current connection, shared with the consumers.
    delivery: Arc<Delivery>,
}

/// The sessions of this process, by broker and client id: subscriptions of one (topic, group)
/// share one session rather than taking it over from each other.
static SESSIONS: LazyLock<Mutex<HashMap<String, Arc<SessionShared>>>> =
    LazyLock::new(Default::default);

fn sessions() -> MutexGuard<'static, HashMap<String, Arc<SessionShared>>> {
    SESSIONS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Ids of [`MqttSource`]s, unique in the process.
static NEXT_CONSUMER: AtomicU64 = AtomicU64::new(0);

/// A fresh consumer id.
pub(super) fn consumer_id() -> u64 {
    NEXT_CONSUMER.fetch_add(1, Ordering::Relaxed)
}

/// Hands `consumer` to the session of `spec`, starting it if needed. Returns the session and
/// a receiver answered once the session is subscribed.
pub(super) async fn attach(
    spec: &SessionSpec,
    consumer: Option<NewConsumer>,
) -> (Arc<SessionShared>, oneshot::Receiver<Result<()>>) {
    let (ready, answer) = oneshot::channel();
    let mut request = Request::Attach { consumer, ready };
    loop {
        let ending = {
            let mut map = sessions();
            match map.get(&spec.key) {
                Some(s) if s.accepting.load(Ordering::SeqCst) => match s.requests.send(request) {
                    Ok(()) => return (s.clone(), answer),
                    Err(mpsc::error::SendError(back)) => {
                        // Its task is gone (its runtime shut down): replace it.
                        request = back;
                        map.remove(&spec.key);
                        continue;
                    }
                },
                Some(s) => s.clone(),
                None => {
                    let (tx, rx) = mpsc::unbounded_channel();
                    let shared = Arc::new(SessionShared {
                        requests: tx,
                        accepting: AtomicBool::new(true),
                        done: CancellationToken::new(),
                        delivery: Arc::default(),
                    });
                    let _ = shared.requests.send(request);
                    map.insert(spec.key.clone(), shared.clone());
                    spawn_session(Session::new(spec.clone(), shared.clone(), rx));
                    return (shared, answer);
                }
            }
        };
        // The session is ending: wait until it disconnected, so that its last acks are in.
        if tokio::time::timeout(Duration::from_secs(5), ending.done.cancelled())
            .await
            .is_err()
        {
            let mut map = sessions();
            if map.get(&spec.key).is_some_and(|s| Arc::ptr_eq(s, &ending)) {
                map.remove(&spec.key);
            }
        }
    }
}

/// Runs `session` on a thread of its own (a current-thread runtime), or as a task of the
/// current runtime when no thread can be started.
///
/// A session's work is mostly system calls (reading PUBLISHes, writing a PUBACK per message),
/// and its consumers wake it with every ack. As a task of the consumers' runtime it is woken
/// into the waking worker's LIFO slot, which no other worker may steal: the session then waits
/// for the consumer to yield, and the two take turns on one worker while the other idles. On a
/// thread of its own it writes the PUBACKs while the consumer handles the next messages.
fn spawn_session(session: Session) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::warn!(
                "mqtt: no runtime for a session thread ({e}); the session shares the host's"
            );
            tokio::spawn(session.run());
            return;
        }
    };
    // The session goes over a channel so that it is still here if the thread cannot start.
    let (hand_over, handed) = std::sync::mpsc::channel::<Session>();
    let started = std::thread::Builder::new()
        .name("wasmill-mqtt-session".into())
        .spawn(move || {
            if let Ok(session) = handed.recv() {
                runtime.block_on(session.run());
            }
        });
    let session = match started {
        Ok(_) => match hand_over.send(session) {
            Ok(()) => return,
            Err(std::sync::mpsc::SendError(session)) => session,
        },
        Err(e) => {
            tracing::warn!(
                "mqtt: no thread for a session ({e}); the session shares the host's runtime"
            );
            session
        }
    };
    tokio::spawn(session.run());
}

// ---------------------------------------------------------------------------------------------
// The session task

struct Consumer {
    id: u64,
    detached: CancellationToken,
}

/// A pending poll of a connection's event loop, owning it. The event loop is boxed: it goes
/// into a new future for every event, and moving it by value (its options and state) in and
/// out of each was the top of a busy session's profile (`memmove`, ~9% of its CPU).
type PollFuture = Pin<Box<dyn Future<Output = (Box<EventLoop>, Polled)> + Send>>;

fn poll_next(mut eventloop: Box<EventLoop>) -> PollFuture {
    Box::pin(async move {
        let polled = eventloop.poll().await;
        (eventloop, polled)
    })
}

/// The session's current connection.
struct Link {
    client: AsyncClient,
    /// The event loop's poll in progress (`None` once it failed).
    polling: Option<PollFuture>,
    connected: bool,
    subscribed: bool,
}

/// The next event of the current connection. Cancel-safe: the poll in progress stays in the
/// link, and a finished one is replaced before returning.
async fn poll_link(link: &mut Option<Link>) -> Polled {
    let Some(l) = link.as_mut() else {
        return std::future::pending().await;
    };
    let Some(polling) = l.polling.as_mut() else {
        return std::future::pending().await;
    };
    let (eventloop, polled) = polling.await;
    l.polling = polled.is_ok().then(|| poll_next(eventloop));
    polled
}

/// One subscription session: a connection (reconnected as needed) and the consumers its
/// messages go to.
struct Session {
    spec: SessionSpec,
    shared: Arc<SessionShared>,
    requests: mpsc::UnboundedReceiver<Request>,
    consumers: Vec<Consumer>,
    /// Each consumer's subscriber closing.
    closing: FuturesUnordered<BoxFuture<'static, u64>>,
    ready: Vec<oneshot::Sender<Result<()>>>,
    /// Consumers let go while no other was left: released when the session ends.
    released: Vec<CancellationToken>,
    link: Option<Link>,
    reconnect_at: Option<Instant>,
    reconnect: Reconnect,
    was_connected: bool,
}

impl Session {
    fn new(
        spec: SessionSpec,
        shared: Arc<SessionShared>,
        requests: mpsc::UnboundedReceiver<Request>,
    ) -> Session {
        let reconnect = Reconnect::new(MIN_BACKOFF, spec.reconnect_max);
        Session {
            spec,
            shared,
            requests,
            consumers: Vec::new(),
            closing: FuturesUnordered::new(),
            ready: Vec::new(),
            released: Vec::new(),
            link: None,
            reconnect_at: Some(Instant::now()),
            reconnect,
            was_connected: false,
        }
    }

    async fn run(mut self) {
        while let Ok(request) = self.requests.try_recv() {
            self.take(request);
        }
        // When the PUBACKs a consumer holds back are to go out (ACK_HOLD after it said so).
        let mut acks_due = None;
        let delivery = self.shared.delivery.clone();
        loop {
            if self.idle() && self.retiring() {
                break;
            }
            if self.link.is_none() && self.reconnect_at.is_some_and(|t| t <= Instant::now()) {
                self.connect();
            }
            let timer = if self.link.is_none() {
                self.reconnect_at
            } else {
                None
            };
            tokio::select! {
                request = self.requests.recv() => {
                    if let Some(request) = request {
                        self.take(request);
                    }
                }
                Some(id) = self.closing.next(), if !self.closing.is_empty() => self.let_go(id),
                polled = poll_link(&mut self.link) => self.on_polled(polled),
                _ = super::sleep_until_opt(timer) => {}
                () = delivery.acks_held.notified(), if acks_due.is_none() => {
                    acks_due = Some(Instant::now() + ACK_HOLD);
                }
                _ = super::sleep_until_opt(acks_due), if acks_due.is_some() => {
                    acks_due = None;
                    delivery.flush_held();
                }
            }
        }
        self.retire().await;
    }

    fn take(&mut self, request: Request) {
        match request {
            Request::Attach { consumer, ready } => {
                if let Some(c) = consumer {
                    self.shared.delivery.lock().register(c.id);
                    let (id, closed) = (c.id, c.closed);
                    self.closing.push(
                        async move {
                            closed.cancelled().await;
                            id
                        }
                        .boxed(),
                    );
                    self.consumers.push(Consumer {
                        id,
                        detached: c.detached,
                    });
                }
                if self.link.as_ref().is_some_and(|l| l.subscribed) {
                    let _ = ready.send(Ok(()));
                } else {
                    self.ready.push(ready);
                }
            }
            Request::Detach(id) => self.let_go(id),
        }
    }

    /// Lets consumer `id` go: what it did not settle goes to the others.
    fn let_go(&mut self, id: u64) {
        let Some(i) = self.consumers.iter().position(|c| c.id == id) else {
            return;
        };
        let consumer = self.consumers.swap_remove(i);
        self.shared.delivery.release(id);
        if self.consumers.is_empty() {
            // Its acks leave with the disconnect.
            self.released.push(consumer.detached);
        } else {
            consumer.detached.cancel();
        }
    }

    /// No consumer left and nobody waiting for the subscription.
    fn idle(&mut self) -> bool {
        self.ready.retain(|r| !r.is_closed());
        self.ready.is_empty() && self.consumers.is_empty()
    }

    /// Decides to end, under the registry lock, unless a request slipped in.
    fn retiring(&mut self) -> bool {
        let _map = sessions();
        while let Ok(request) = self.requests.try_recv() {
            self.take(request);
        }
        if !self.idle() {
            return false;
        }
        self.shared.accepting.store(false, Ordering::SeqCst);
        true
    }

    fn connect(&mut self) {
        let (client, eventloop) =
            AsyncClient::new(self.spec.options.clone(), self.spec.request_queue);
        self.shared.delivery.lock().connected(client.clone());
        self.link = Some(Link {
            client,
            polling: Some(poll_next(Box::new(eventloop))),
            connected: false,
            subscribed: false,
        });
        self.reconnect_at = None;
    }

    /// Forgets the connection (and what it delivered) and schedules the next one.
    fn lose(&mut self, why: &str, taken_over: bool) {
        let Some(link) = self.link.take() else { return };
        self.shared.delivery.lock().lost();
        let client_id = self.spec.options.client_id();
        let backoff = self.reconnect.next_delay();
        let delay = if taken_over {
            tracing::warn!(url = %self.spec.shown, client_id, "mqtt: another client took this session over (give each host its own client_id); retrying in {TAKEN_OVER_BACKOFF:?}");
            TAKEN_OVER_BACKOFF
        } else {
            if link.connected {
                tracing::warn!(url = %self.spec.shown, client_id, "mqtt subscription: connection lost: {why}; reconnecting");
            } else {
                tracing::debug!(url = %self.spec.shown, client_id, "mqtt subscription: connect failed: {why}");
            }
            backoff
        };
        self.reconnect_at = Some(Instant::now() + delay);
    }

    fn on_polled(&mut self, polled: Polled) {
        match polled {
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                self.shared.delivery.lock().received(publish);
                self.shared.delivery.arrived.notify_waiters();
            }
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                self.reconnect.reset();
                if self.spec.persistent && self.was_connected && !ack.session_present {
                    tracing::warn!(url = %self.spec.shown, client_id = self.spec.options.client_id(), "mqtt: the broker had lost this session; messages published meanwhile are lost");
                }
                self.was_connected = true;
                let Some(link) = self.link.as_mut() else {
                    return;
                };
                link.connected = true;
                // Always (re)subscribe: harmless when the session kept the subscription.
                if let Err(e) = link
                    .client
                    .try_subscribe(self.spec.filter.clone(), QoS::AtLeastOnce)
                {
                    self.lose(&e.to_string(), false);
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let refused = ack
                    .return_codes
                    .iter()
                    .find(|c| !matches!(c, SubscribeReasonCode::Success(_)));
                if let Some(code) = refused {
                    let why = format!("subscribe {}: refused ({code:?})", self.spec.filter);
                    for r in self.ready.drain(..) {
                        let _ = r.send(Err(Error::pubsub_msg(NAME, why.clone())));
                    }
                    self.lose(&why, false);
                    return;
                }
                if let Some(link) = self.link.as_mut() {
                    link.subscribed = true;
                }
                for r in self.ready.drain(..) {
                    let _ = r.send(Ok(()));
                }
            }
            Ok(_) => {}
            Err(e) => {
                let taken_over = reason_of(&e) == Some(DisconnectReasonCode::SessionTakenOver);
                self.lose(&e.to_string(), taken_over);
            }
        }
    }

    /// Sends the last PUBACKs, disconnects, and leaves the registry.
    async fn retire(mut self) {
        let link = self.link.take();
        self.shared.delivery.lock().lost();
        if let Some(mut link) = link
            && link.connected
            && link.client.try_disconnect().is_ok()
        {
            // The queued PUBACKs go out before the DISCONNECT; the poll fails once the broker
            // closed the connection.
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Some(polling) = link.polling.as_mut() {
                    let (eventloop, polled) = polling.await;
                    link.polling = polled.is_ok().then(|| poll_next(eventloop));
                }
            })
            .await;
        }
        {
            let mut map = sessions();
            if map
                .get(&self.spec.key)
                .is_some_and(|s| Arc::ptr_eq(s, &self.shared))
            {
                map.remove(&self.spec.key);
            }
        }
        self.shared.done.cancel();
        for t in self.released.drain(..) {
            t.cancel();
        }
        for c in &self.consumers {
            c.detached.cancel();
        }
    }
}

#[cfg(test)]
mod tests;
