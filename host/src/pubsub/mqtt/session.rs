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
// Delivery: the state the session task and its consumers share

/// Where a received message stands.
#[derive(Debug, Clone, Copy, PartialEq)]
enum EntryState {
    /// To deliver (not before the instant, after a nack with a delay).
    Waiting(Option<Instant>),
    InFlight,
    Acked,
}

/// A message received on the current connection, not PUBACKed yet.
struct Entry {
    /// As received: a nacked message is opened from it again.
    publish: Publish,
    /// The uuid given to a message that came without one (it keeps it when redelivered).
    foreign_uuid: Option<String>,
    /// The message to deliver next (`None` while a delivery of it is out).
    msg: Option<Message>,
    state: EntryState,
}

impl Entry {
    /// A fresh delivery of the message, as first received.
    fn reopen(&self) -> Message {
        let mut msg = open_envelope(&self.publish);
        if let Some(uuid) = &self.foreign_uuid {
            msg.uuid = uuid.clone();
        }
        msg
    }
}

/// The messages a session received on its current connection and where each stands; the
/// consumers take them from here in order, and PUBACKs leave in the order they came.
#[derive(Default)]
pub(super) struct Delivery {
    state: Mutex<DeliveryState>,
    /// Told whenever messages arrive or come back for delivery.
    arrived: Notify,
    /// Told when a consumer starts holding PUBACKs back: the session sends them within
    /// [`ACK_HOLD`] unless the consumer did first.
    acks_held: Notify,
}

/// How many acked messages a busy consumer lets wait before it queues their PUBACKs: each
/// queueing wakes the session's thread, a system call for the consumer.
const ACK_BATCH: usize = 32;

/// How long the PUBACK of a handled message may wait for more to go with it.
const ACK_HOLD: Duration = Duration::from_millis(1);

#[derive(Default)]
struct DeliveryState {
    /// Received and not PUBACKed, oldest first; the front's sequence number is `front_seq`.
    entries: VecDeque<Entry>,
    front_seq: u64,
    /// The first message never delivered yet (every later one is fresh too).
    fresh: u64,
    /// Messages nacked and waiting to be delivered again, by sequence number.
    again: BTreeSet<u64>,
    /// The current connection's client (for PUBACKs); `None` while disconnected.
    client: Option<AsyncClient>,
    /// Each consumer's deliveries not settled yet, by sequence number.
    /// (A few consumers at most: a list.)
    in_flight: Vec<(u64, Vec<(u64, DeliveryHandle)>)>,
    /// Messages acked since their PUBACKs were last queued, and since when the first waits.
    held: usize,
    held_since: Option<Instant>,
}

impl Delivery {
    fn lock(&self) -> MutexGuard<'_, DeliveryState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets consumer `consumer` go: what it did not settle goes to the others.
    fn release(&self, consumer: u64) {
        let mut st = self.lock();
        if st.reap(consumer, true) {
            st.flush_acks();
            drop(st);
            self.arrived.notify_waiters();
        }
    }

    /// Queues the PUBACKs a consumer held back (the session's [`ACK_HOLD`] ran out).
    fn flush_held(&self) {
        let mut st = self.lock();
        if st.held > 0 {
            st.flush_acks();
        }
    }
}

impl DeliveryState {
    fn next_seq(&self) -> u64 {
        self.front_seq + self.entries.len() as u64
    }

    fn entry_mut(&mut self, seq: u64) -> Option<&mut Entry> {
        let i = seq.checked_sub(self.front_seq)?;
        self.entries.get_mut(usize::try_from(i).ok()?)
    }

    /// A new connection: its client takes the PUBACKs from now on.
    fn connected(&mut self, client: AsyncClient) {
        self.client = Some(client);
    }

    /// The connection is gone, and with it what it delivered: the broker sends again what was
    /// not PUBACKed. Deliveries still out are forgotten (settling them does nothing).
    fn lost(&mut self) {
        self.client = None;
        self.front_seq = self.next_seq();
        self.fresh = self.front_seq;
        self.entries.clear();
        self.again.clear();
        (self.held, self.held_since) = (0, None);
    }

    fn received(&mut self, publish: Publish) {
        let msg = open_envelope(&publish);
        let foreign_uuid = (!has_uuid(&publish)).then(|| msg.uuid.clone());
        self.entries.push_back(Entry {
            publish,
            foreign_uuid,
            msg: Some(msg),
            state: EntryState::Waiting(None),
        });
    }

    fn register(&mut self, consumer: u64) {
        if !self.in_flight.iter().any(|(id, _)| *id == consumer) {
            self.in_flight.push((consumer, Vec::new()));
        }
    }

    /// Settles what `consumer` has settled (with `gone`, also what it has not: those go to the
    /// other consumers); the PUBACKs wait for [`Self::flush_acks`]. Returns whether the
    /// consumer is registered.
    fn reap(&mut self, consumer: u64, gone: bool) -> bool {
        let Some(i) = self.in_flight.iter().position(|(id, _)| *id == consumer) else {
            return false;
        };
        let DeliveryState {
            entries,
            front_seq,
            again,
            in_flight,
            ..
        } = self;
        let mut acked = 0;
        in_flight[i].1.retain(|(seq, delivery)| {
            let state = match delivery.ack_state() {
                AckState::Pending if !gone => return true,
                AckState::Acked => EntryState::Acked,
                _ => EntryState::Waiting(delivery.redelivery_delay().map(|d| Instant::now() + d)),
            };
            let entry = seq
                .checked_sub(*front_seq)
                .and_then(|i| entries.get_mut(usize::try_from(i).ok()?));
            if let Some(entry) = entry {
                entry.state = state;
                if state == EntryState::Acked {
                    acked += 1;
                } else {
                    entry.msg = Some(entry.reopen());
                    again.insert(*seq);
                }
            }
            false
        });
        if gone {
            in_flight.swap_remove(i);
        }
        self.held += acked;
        true
    }

    /// Queues the held PUBACKs if the consumer is about to wait (`waiting`), holds enough of
    /// them, or held the first long enough; otherwise keeps holding them. Returns whether the
    /// session must be told to send them in time (the first one is held).
    fn send_or_hold_acks(&mut self, waiting: bool) -> bool {
        if self.held == 0 {
            return false;
        }
        let due = match self.held_since {
            _ if waiting || self.held >= ACK_BATCH => true,
            Some(since) => since.elapsed() >= ACK_HOLD,
            None => {
                self.held_since = Some(Instant::now());
                return true;
            }
        };
        if due {
            self.flush_acks();
        }
        false
    }

    /// Queues the PUBACKs of the acked messages at the front (an acked message waits for the
    /// earlier ones).
    fn flush_acks(&mut self) {
        let Some(client) = &self.client else { return };
        while self
            .entries
            .front()
            .is_some_and(|e| e.state == EntryState::Acked)
        {
            let Some(e) = self.entries.front() else { break };
            if client.try_ack(&e.publish).is_err() {
                // The connection is failing (its failure arrives as an event) or the queue is
                // full: the next settlement tries again.
                break;
            }
            self.entries.pop_front();
            self.front_seq += 1;
        }
        self.fresh = self.fresh.max(self.front_seq);
        // What stays acked waits behind an unsettled message: its ack queues them too.
        (self.held, self.held_since) = (0, None);
    }

    /// The next message for `consumer` (if it has room under `max_in_flight`), in order: a
    /// nacked message goes out again before any later one. Otherwise says until when nothing
    /// is due (`None`: until a message arrives or a delivery is settled).
    fn take(
        &mut self,
        consumer: u64,
        max_in_flight: usize,
        settled: &Arc<Notify>,
    ) -> std::result::Result<Message, Option<Instant>> {
        let Some(i) = self.in_flight.iter().position(|(id, _)| *id == consumer) else {
            return Err(None);
        };
        if self.in_flight[i].1.len() >= max_in_flight {
            return Err(None);
        }
        let seq = loop {
            match self.again.first().copied() {
                Some(seq) => match self.entry_mut(seq).map(|e| e.state) {
                    Some(EntryState::Waiting(Some(at))) if at > Instant::now() => {
                        return Err(Some(at));
                    }
                    Some(EntryState::Waiting(_)) => {
                        self.again.remove(&seq);
                        break seq;
                    }
                    // Not waiting any more: nothing to deliver.
                    _ => {
                        self.again.remove(&seq);
                    }
                },
                None if self.fresh < self.next_seq() => {
                    self.fresh += 1;
                    break self.fresh - 1;
                }
                None => return Err(None),
            }
        };
        let Some(msg) = self.entry_mut(seq).map(|entry| {
            entry.state = EntryState::InFlight;
            entry.msg.take().unwrap_or_else(|| entry.reopen())
        }) else {
            return Err(None);
        };
        msg.notify_settled(settled);
        self.in_flight[i].1.push((seq, msg.delivery_handle()));
        Ok(msg)
    }
}

/// A subscription's source: takes messages from its session's [`Delivery`] in the consumer's
/// own task.
pub(super) struct MqttSource {
    session: Arc<SessionShared>,
    id: u64,
    max_in_flight: usize,
    /// Told when one of this consumer's deliveries is settled.
    settled: Arc<Notify>,
}

impl MqttSource {
    /// The source of consumer `id` in `session`.
    pub fn new(session: Arc<SessionShared>, id: u64, max_in_flight: usize) -> MqttSource {
        MqttSource {
            id,
            max_in_flight: max_in_flight.max(1),
            settled: Arc::new(Notify::new()),
            session,
        }
    }
}

impl MqttSource {
    /// The next message if one is at hand (`Ok(Some)`), `Ok(None)` once the session let go of
    /// this consumer (its subscriber closed), else when the next redelivery is due.
    fn take_ready(&self) -> std::result::Result<Option<Message>, Option<Instant>> {
        let delivery = &self.session.delivery;
        let mut st = delivery.lock();
        if !st.reap(self.id, false) {
            return Ok(None);
        }
        match st.take(self.id, self.max_in_flight, &self.settled) {
            Ok(msg) => {
                if st.send_or_hold_acks(false) {
                    drop(st);
                    delivery.acks_held.notify_one();
                }
                Ok(Some(msg))
            }
            Err(due) => {
                st.send_or_hold_acks(true);
                Err(due)
            }
        }
    }
}

#[async_trait]
impl MessageSource for MqttSource {
    fn try_next(&mut self) -> Option<Message> {
        self.take_ready().ok().flatten()
    }

    async fn next(&mut self) -> Option<Message> {
        // Messages are often ready without waiting: take part in tokio's cooperative budget.
        tokio::task::consume_budget().await;
        loop {
            let arrived = self.session.delivery.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let due = match self.take_ready() {
                Ok(msg) => return msg,
                Err(due) => due,
            };
            tokio::select! {
                _ = arrived => {}
                _ = self.settled.notified() => {}
                _ = super::sleep_until_opt(due) => {}
            }
        }
    }
}

impl Drop for MqttSource {
    fn drop(&mut self) {
        self.session.delivery.release(self.id);
        let _ = self.session.requests.send(Request::Detach(self.id));
    }
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
    backoff: Duration,
    was_connected: bool,
}

impl Session {
    fn new(
        spec: SessionSpec,
        shared: Arc<SessionShared>,
        requests: mpsc::UnboundedReceiver<Request>,
    ) -> Session {
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
            backoff: MIN_BACKOFF,
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
        let delay = if taken_over {
            tracing::warn!(url = %self.spec.shown, client_id, "mqtt: another client took this session over (give each host its own client_id); retrying in {TAKEN_OVER_BACKOFF:?}");
            TAKEN_OVER_BACKOFF
        } else {
            if link.connected {
                tracing::warn!(url = %self.spec.shown, client_id, "mqtt subscription: connection lost: {why}; reconnecting");
            } else {
                tracing::debug!(url = %self.spec.shown, client_id, "mqtt subscription: connect failed: {why}");
            }
            self.backoff
        };
        self.backoff = (self.backoff * 2).min(self.spec.reconnect_max.max(MIN_BACKOFF));
        self.reconnect_at = Some(Instant::now() + delay);
    }

    fn on_polled(&mut self, polled: Polled) {
        match polled {
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                self.shared.delivery.lock().received(publish);
                self.shared.delivery.arrived.notify_waiters();
            }
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                self.backoff = MIN_BACKOFF;
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
mod tests {
    use super::*;

    /// A delivery state over a client whose event loop is never polled: its request queue
    /// takes the PUBACKs (a PUBACK went out when the front moved past the message).
    fn state() -> (DeliveryState, EventLoop) {
        let (client, eventloop) = AsyncClient::new(MqttOptions::new("test", "localhost", 1), 64);
        let mut st = DeliveryState::default();
        st.connected(client);
        for pkid in 1..=4u16 {
            st.received(publish(pkid));
        }
        (st, eventloop)
    }

    /// A QoS 1 PUBLISH with packet id `pkid` and payload `m{pkid}`.
    fn publish(pkid: u16) -> Publish {
        let mut p = Publish::new("t", QoS::AtLeastOnce, format!("m{pkid}"), None);
        p.pkid = pkid;
        p
    }

    fn take(st: &mut DeliveryState, consumer: u64, max: usize) -> Option<Message> {
        st.take(consumer, max, &Arc::new(Notify::new())).ok()
    }

    fn payload(m: &Message) -> &[u8] {
        &m.payload
    }

    /// What a consumer does before it waits: settles its deliveries and queues the PUBACKs.
    fn settle(st: &mut DeliveryState, consumer: u64) {
        st.reap(consumer, false);
        st.send_or_hold_acks(true);
    }

    /// Takes, acks and reaps the next message, as a busy consumer's next call does.
    fn handle_next(st: &mut DeliveryState) {
        take(st, 1, 1).unwrap().ack();
        st.reap(1, false);
    }

    #[test]
    fn a_busy_consumer_holds_pubacks_back_until_a_batch_is_due() {
        let (mut st, _el) = state();
        for pkid in 5..=(ACK_BATCH as u16 + 8) {
            st.received(publish(pkid));
        }
        st.register(1);
        handle_next(&mut st);
        assert!(
            st.send_or_hold_acks(false),
            "the first held: the session is told"
        );
        assert_eq!(st.front_seq, 0, "held back");
        for _ in 1..ACK_BATCH - 1 {
            handle_next(&mut st);
            assert!(!st.send_or_hold_acks(false), "told once");
        }
        assert_eq!(st.front_seq, 0, "still held back");
        handle_next(&mut st);
        assert!(!st.send_or_hold_acks(false));
        assert_eq!(st.front_seq, ACK_BATCH as u64, "a batch queued at once");
        handle_next(&mut st);
        assert!(st.send_or_hold_acks(false), "the next batch starts");
    }

    #[test]
    fn held_pubacks_go_out_when_the_consumer_waits_or_the_hold_ends() {
        let (mut st, _el) = state();
        st.register(1);
        handle_next(&mut st);
        assert!(st.send_or_hold_acks(false));
        assert!(!st.send_or_hold_acks(true));
        assert_eq!(st.front_seq, 1, "queued before waiting");

        handle_next(&mut st);
        assert!(st.send_or_hold_acks(false));
        std::thread::sleep(ACK_HOLD * 2);
        handle_next(&mut st);
        assert!(!st.send_or_hold_acks(false));
        assert_eq!(st.front_seq, 3, "the first waited ACK_HOLD: both queued");
    }

    #[test]
    fn the_session_sends_what_a_consumer_holds_back() {
        let (st, _el) = state();
        let delivery = Delivery {
            state: Mutex::new(st),
            ..Delivery::default()
        };
        delivery.lock().register(1);
        handle_next(&mut delivery.lock());
        assert!(delivery.lock().send_or_hold_acks(false));
        delivery.flush_held();
        assert_eq!(delivery.lock().front_seq, 1);
    }

    #[test]
    fn pubacks_leave_in_the_order_received_whatever_the_order_of_acks() {
        let (mut st, _el) = state();
        st.register(1);
        let a = take(&mut st, 1, 2).unwrap();
        let b = take(&mut st, 1, 2).unwrap();
        assert!(take(&mut st, 1, 2).is_none(), "max_in_flight holds");
        b.ack();
        settle(&mut st, 1);
        assert_eq!(st.front_seq, 0, "the second waits for the first");
        a.ack();
        settle(&mut st, 1);
        assert_eq!(st.front_seq, 2);
        assert_eq!(payload(&take(&mut st, 1, 2).unwrap()), b"m3");
    }

    #[test]
    fn a_nacked_message_comes_back_first_with_its_uuid() {
        let (mut st, _el) = state();
        st.register(1);
        let first = take(&mut st, 1, 1).unwrap();
        let uuid = first.uuid.clone();
        first.nack();
        st.reap(1, false);
        let again = take(&mut st, 1, 1).unwrap();
        assert_eq!(payload(&again), b"m1");
        assert_eq!(
            again.uuid, uuid,
            "a message without a uuid keeps the one it was given"
        );
        assert_eq!(again.ack_state(), AckState::Pending, "a fresh delivery");
        again.ack();
        st.reap(1, false);
        assert_eq!(payload(&take(&mut st, 1, 1).unwrap()), b"m2");
    }

    #[test]
    fn a_delayed_nack_holds_back_later_messages_until_due() {
        let (mut st, _el) = state();
        st.register(1);
        let first = take(&mut st, 1, 4).unwrap();
        first.set_redelivery_delay(Duration::from_secs(60));
        first.nack();
        st.reap(1, false);
        match st.take(1, 4, &Arc::new(Notify::new())) {
            Err(Some(at)) => assert!(at > Instant::now()),
            other => panic!("expected a wait, got {other:?}"),
        }
    }

    #[test]
    fn a_consumer_that_leaves_hands_what_it_did_not_settle_to_the_others() {
        let (mut st, _el) = state();
        st.register(1);
        st.register(2);
        let kept = take(&mut st, 1, 2).unwrap();
        let done = take(&mut st, 1, 2).unwrap();
        done.ack();
        assert!(st.reap(1, true));
        st.flush_acks();
        assert!(!st.reap(1, false), "unregistered");
        let again = take(&mut st, 2, 1).unwrap();
        assert_eq!(payload(&again), payload(&kept));
        assert_eq!(st.front_seq, 0, "the acked second waits for the first");
        again.ack();
        settle(&mut st, 2);
        assert_eq!(st.front_seq, 2, "both PUBACKed, in order");
    }

    #[test]
    fn a_lost_connection_forgets_what_it_delivered() {
        let (mut st, _el) = state();
        st.register(1);
        let m = take(&mut st, 1, 1).unwrap();
        st.lost();
        m.ack();
        assert!(st.reap(1, false));
        assert!(
            take(&mut st, 1, 1).is_none(),
            "nothing left: the broker sends it again"
        );
        st.received(publish(9));
        assert_eq!(payload(&take(&mut st, 1, 1).unwrap()), b"m9");
    }
}
