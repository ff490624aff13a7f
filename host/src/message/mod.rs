//! The message that flows through pub/subs, the router and handlers.
//!
//! A [`Message`] is a UUID, a metadata map and a payload, plus the delivery state that a
//! subscriber attached to it: ack/nack (idempotent and exclusive, as in Watermill) and a
//! [`MessageContext`] that is cancelled once the message is acked or nacked.
//!
//! Cloning a message shares its delivery (ack on a clone acks the original); [`Message::copy`]
//! makes a new, unacknowledged message with the same content, as Watermill's `Copy` does.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::router::HandlerStats;

/// The metadata of a message: string keys to string values, order not significant.
///
/// Shared copy-on-write: cloning a message (the router and the subscriptions do it several
/// times per message) is an atomic increment; the first change to a shared map copies it.
#[derive(Debug, Clone, Default)]
pub struct Metadata(Option<Arc<HashMap<String, String>>>);

static EMPTY: std::sync::LazyLock<HashMap<String, String>> = std::sync::LazyLock::new(HashMap::new);

impl Metadata {
    /// An empty metadata map.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value for `key`, or `""` when missing (Watermill's `Get`).
    pub fn get(&self, key: &str) -> &str {
        self.get_opt(key).unwrap_or("")
    }

    /// The value for `key`, or `None` when missing.
    pub fn get_opt(&self, key: &str) -> Option<&str> {
        self.0.as_ref()?.get(key).map(String::as_str)
    }

    /// Sets `key` to `value`, replacing any previous value.
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.map_mut().insert(key.into(), value.into());
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        if !self.contains(key) {
            return None;
        }
        self.map_mut().remove(key)
    }

    /// Whether `key` is present.
    pub fn contains(&self, key: &str) -> bool {
        self.0.as_ref().is_some_and(|m| m.contains_key(key))
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |m| m.len())
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Iterates over the entries in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.as_map().iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The underlying map.
    pub fn as_map(&self) -> &HashMap<String, String> {
        self.0.as_deref().unwrap_or(&EMPTY)
    }

    /// The map, for a change: copied first if another message shares it.
    fn map_mut(&mut self) -> &mut HashMap<String, String> {
        Arc::make_mut(self.0.get_or_insert_with(Default::default))
    }
}

impl PartialEq for Metadata {
    fn eq(&self, other: &Self) -> bool {
        self.as_map() == other.as_map()
    }
}

impl Eq for Metadata {}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Metadata {
    fn from_iter<T: IntoIterator<Item = (K, V)>>(iter: T) -> Self {
        iter.into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect::<HashMap<String, String>>()
            .into()
    }
}

impl From<HashMap<String, String>> for Metadata {
    fn from(m: HashMap<String, String>) -> Self {
        if m.is_empty() {
            Metadata(None)
        } else {
            Metadata(Some(Arc::new(m)))
        }
    }
}

impl IntoIterator for Metadata {
    type Item = (String, String);
    type IntoIter = std::collections::hash_map::IntoIter<String, String>;
    fn into_iter(self) -> Self::IntoIter {
        match self.0 {
            Some(m) => Arc::unwrap_or_clone(m).into_iter(),
            None => HashMap::new().into_iter(),
        }
    }
}

/// Where a message's delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckState {
    /// Neither acked nor nacked yet.
    Pending,
    /// Acknowledged: the subscriber may forget it.
    Acked,
    /// Negatively acknowledged: the subscriber redelivers it.
    Nacked,
}

/// The shared ack/nack cell of one delivery.
#[derive(Debug)]
struct Delivery {
    /// An [`AckState`] as a number: settled once, by one compare-and-swap.
    state: AtomicU8,
    /// Wakes those waiting in [`Message::settled`].
    waiters: Notify,
    /// How long the backend should wait before redelivering after a nack, if someone asked.
    redelivery_delay: std::sync::Mutex<Option<Duration>>,
    /// Ended when the message is acked or nacked (or by whoever owns the delivery); the
    /// message context's token. Made on first use: most deliveries are settled without
    /// anyone asking for it, and a token costs two allocations and a lock on drop.
    done: std::sync::OnceLock<CancellationToken>,
    /// Told when the message is settled, if the subscription that delivered it asked
    /// ([`Message::notify_settled`]).
    settled_notify: std::sync::OnceLock<Arc<Notify>>,
}

impl AckState {
    fn from_u8(v: u8) -> AckState {
        match v {
            1 => AckState::Acked,
            2 => AckState::Nacked,
            _ => AckState::Pending,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            AckState::Pending => 0,
            AckState::Acked => 1,
            AckState::Nacked => 2,
        }
    }
}

impl Delivery {
    fn new() -> Arc<Self> {
        Arc::new(Delivery {
            state: AtomicU8::new(AckState::Pending.as_u8()),
            waiters: Notify::new(),
            redelivery_delay: std::sync::Mutex::new(None),
            done: std::sync::OnceLock::new(),
            settled_notify: std::sync::OnceLock::new(),
        })
    }

    fn state(&self) -> AckState {
        AckState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// The delivery's token, made now if nobody asked before; cancelled if the delivery is
    /// settled.
    fn token(&self) -> &CancellationToken {
        let token = self.done.get_or_init(CancellationToken::new);
        // A settlement racing the token's creation may have looked for it too early: both
        // sides look at the other after a full fence, so at least one of them cancels it.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.state() != AckState::Pending && !token.is_cancelled() {
            token.cancel();
        }
        token
    }

    /// Whether the delivery is settled or its token was cancelled.
    fn is_done(&self) -> bool {
        self.state() != AckState::Pending || self.done.get().is_some_and(|t| t.is_cancelled())
    }

    /// Waits until the delivery is acked or nacked, and says which.
    async fn settled(&self) -> AckState {
        loop {
            let woken = self.waiters.notified();
            tokio::pin!(woken);
            // Registered before the state is read: a settlement in between still wakes it.
            woken.as_mut().enable();
            match self.state() {
                AckState::Pending => woken.await,
                settled => return settled,
            }
        }
    }

    /// Settles to `to` unless already settled; true if the delivery is (now) in state `to`.
    fn settle(&self, to: AckState) -> bool {
        let swapped = self.state.compare_exchange(
            AckState::Pending.as_u8(),
            to.as_u8(),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        match swapped {
            Ok(_) => {
                self.waiters.notify_waiters();
                std::sync::atomic::fence(Ordering::SeqCst);
                if let Some(token) = self.done.get() {
                    token.cancel();
                }
                if let Some(n) = self.settled_notify.get() {
                    n.notify_one();
                }
                true
            }
            Err(current) => current == to.as_u8(),
        }
    }
}

/// A message's delivery without its content (see [`Message::delivery_handle`]).
#[derive(Debug, Clone)]
pub struct DeliveryHandle(Arc<Delivery>);

impl DeliveryHandle {
    /// Where the delivery stands.
    pub fn ack_state(&self) -> AckState {
        self.0.state()
    }

    /// The redelivery delay asked for with [`Message::set_redelivery_delay`], if any.
    pub fn redelivery_delay(&self) -> Option<Duration> {
        self.0.redelivery_delay.lock().ok().and_then(|d| *d)
    }

    /// Acknowledges the delivery, as [`Message::ack`] does.
    pub fn ack(&self) -> bool {
        self.0.settle(AckState::Acked)
    }

    /// Negatively acknowledges the delivery, as [`Message::nack`] does.
    pub fn nack(&self) -> bool {
        self.0.settle(AckState::Nacked)
    }

    /// Waits until the delivery is acked or nacked, as [`Message::settled`] does.
    pub async fn settled(&self) -> AckState {
        self.0.settled().await
    }
}

/// Values the router attaches to a message while it is handled, and its cancellation.
///
/// The router sets the handler name and topics; Timeout sets a deadline on the copy it passes
/// down (the caller's context is untouched, so a later Retry attempt gets a fresh deadline:
/// Watermill #467).
#[derive(Debug, Clone, Default)]
pub struct MessageContext {
    cancel: ContextToken,
    deadline: Option<Instant>,
    route: Option<Arc<RouteInfo>>,
}

/// Where a context's token comes from. Shared either way, so that cloning a message
/// (several times per message on the hot path) is an atomic increment rather than a lock of
/// the token's tree.
#[derive(Debug, Clone)]
enum ContextToken {
    /// The delivery's own token, made when first asked for.
    Delivery(Arc<Delivery>),
    /// A token of its own (a child with a deadline, or a context without a delivery).
    Own(Arc<CancellationToken>),
}

impl Default for ContextToken {
    fn default() -> Self {
        ContextToken::Own(Arc::new(CancellationToken::new()))
    }
}

impl MessageContext {
    /// The token cancelled when the message is acked or nacked, or when a deadline passes.
    pub fn cancellation(&self) -> &CancellationToken {
        match &self.cancel {
            ContextToken::Delivery(d) => d.token(),
            ContextToken::Own(t) => t,
        }
    }

    /// Whether the context is done (acked, nacked or cancelled).
    pub fn is_cancelled(&self) -> bool {
        match &self.cancel {
            ContextToken::Delivery(d) => d.is_done(),
            ContextToken::Own(t) => t.is_cancelled(),
        }
    }

    /// The deadline set by a Timeout middleware, if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The time left before the deadline, if there is one.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// A child context with a deadline `after` from now (or the parent's, if that is sooner).
    /// The child's token is cancelled with the parent's, not the other way round.
    pub fn with_timeout(&self, after: Duration) -> MessageContext {
        let deadline = Instant::now() + after;
        let deadline = match self.deadline {
            Some(d) if d < deadline => d,
            _ => deadline,
        };
        MessageContext {
            cancel: ContextToken::Own(Arc::new(self.cancellation().child_token())),
            deadline: Some(deadline),
            route: self.route.clone(),
        }
    }

    /// The name of the handler processing this message.
    pub fn handler_name(&self) -> &str {
        self.route.as_ref().map_or("", |r| &r.handler)
    }

    /// The name (kind) of the subscriber that delivered this message.
    pub fn subscriber_name(&self) -> &str {
        self.route.as_ref().map_or("", |r| &r.subscriber)
    }

    /// The name (kind) of the publisher the handler's output goes to.
    pub fn publisher_name(&self) -> &str {
        self.route
            .as_ref()
            .and_then(|r| r.publisher.as_deref())
            .unwrap_or("")
    }

    /// The topic this message was received from.
    pub fn subscribe_topic(&self) -> &str {
        self.route.as_ref().map_or("", |r| &r.subscribe_topic)
    }

    /// The topic the handler's output is published to.
    pub fn publish_topic(&self) -> &str {
        self.route
            .as_ref()
            .and_then(|r| r.publish_topic.as_deref())
            .unwrap_or("")
    }

    /// The counters of the handler processing this message, for middleware to update.
    pub fn stats(&self) -> Option<&Arc<HandlerStats>> {
        self.route.as_ref().and_then(|r| r.stats.as_ref())
    }

    /// The token cancelled when the router handling this message starts closing, if any.
    pub fn closing(&self) -> Option<&CancellationToken> {
        self.route
            .as_ref()
            .and_then(|r| r.close.as_ref())
            .map(|c| &c.closing)
    }

    /// Whether the router's close timed out with this message in flight: whatever still runs
    /// for it should stop.
    pub fn is_aborted(&self) -> bool {
        self.route
            .as_ref()
            .and_then(|r| r.close.as_ref())
            .is_some_and(|c| c.abort.is_cancelled())
    }

    /// Sets the router's values on the context; used by the router for each message.
    pub fn set_route(&mut self, route: &Arc<RouteInfo>) {
        self.route = Some(route.clone());
    }
}

/// The router's description of a handler, copied into every message's context.
#[derive(Debug, Clone)]
pub struct RouteInfo {
    /// The handler name.
    pub handler: Arc<str>,
    /// The subscriber's name.
    pub subscriber: Arc<str>,
    /// The publisher's name, when the handler publishes.
    pub publisher: Option<Arc<str>>,
    /// The subscribed topic.
    pub subscribe_topic: Arc<str>,
    /// The topic output goes to, when the handler publishes.
    pub publish_topic: Option<Arc<str>>,
    /// The handler's counters.
    pub stats: Option<Arc<HandlerStats>>,
    /// The router's close signals, when the handler runs in a router.
    pub close: Option<CloseSignals>,
}

/// What a router's graceful close tells the messages in flight.
#[derive(Debug, Clone, Default)]
pub struct CloseSignals {
    /// Cancelled when the router starts closing: waits that only delay a message (a Retry
    /// backoff) end early, so they do not sleep through `close_timeout`.
    pub closing: CancellationToken,
    /// Cancelled when `close_timeout` passed with messages still in flight: work still running
    /// (a WebAssembly guest computing) is cut off and its message nacked.
    pub abort: CancellationToken,
}

/// A message: UUID, metadata and payload, with its delivery state.
#[derive(Debug, Clone)]
pub struct Message {
    /// An identifier for debugging and deduplication; may be empty.
    pub uuid: String,
    /// String key/value pairs travelling with the payload.
    pub metadata: Metadata,
    /// The body.
    pub payload: Bytes,
    delivery: Arc<Delivery>,
    ctx: MessageContext,
}

impl Message {
    /// A new message with a fresh UUID (v7: time-ordered) and empty metadata.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Self::with_uuid(new_uuid(), payload)
    }

    /// A new message with the given UUID.
    pub fn with_uuid(uuid: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        let delivery = Delivery::new();
        let ctx = MessageContext {
            cancel: ContextToken::Delivery(delivery.clone()),
            deadline: None,
            route: None,
        };
        Message {
            uuid: uuid.into(),
            metadata: Metadata::new(),
            payload: payload.into(),
            delivery,
            ctx,
        }
    }

    /// The same message with metadata `key` set to `value`.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.set(key, value);
        self
    }

    /// A new message with the same UUID, metadata and payload but its own, unacked delivery
    /// and an empty context (Watermill's `Copy`).
    pub fn copy(&self) -> Message {
        let mut m = Message::with_uuid(self.uuid.clone(), self.payload.clone());
        m.metadata = self.metadata.clone();
        m
    }

    /// [`copy`](Message::copy) for a message the caller is done with: the UUID, metadata and
    /// payload move into the new message instead of being cloned.
    pub fn into_copy(self) -> Message {
        let mut m = Message::with_uuid(self.uuid, self.payload);
        m.metadata = self.metadata;
        m
    }

    /// Acknowledges the message. Returns `true` when the message is acked (now or already),
    /// `false` when it had been nacked. Never blocks.
    pub fn ack(&self) -> bool {
        self.delivery.settle(AckState::Acked)
    }

    /// Negatively acknowledges the message so that the subscriber redelivers it. Returns `true`
    /// when the message is nacked (now or already), `false` when it had been acked.
    pub fn nack(&self) -> bool {
        self.delivery.settle(AckState::Nacked)
    }

    /// Asks the backend to wait `delay` before redelivering this message if it is nacked
    /// (DelayOnError sets it). Backends that support delayed redelivery honour it; others
    /// redeliver as usual.
    pub fn set_redelivery_delay(&self, delay: Duration) {
        if let Ok(mut d) = self.delivery.redelivery_delay.lock() {
            *d = Some(delay);
        }
    }

    /// The redelivery delay asked for with [`Message::set_redelivery_delay`], if any.
    pub fn redelivery_delay(&self) -> Option<Duration> {
        self.delivery.redelivery_delay.lock().ok().and_then(|d| *d)
    }

    /// Has `notify` told (`notify_one`) when this delivery is acked or nacked: a subscription
    /// that holds many deliveries waits on one `Notify` instead of a future per message.
    /// Only the first call per delivery counts.
    pub fn notify_settled(&self, notify: &Arc<Notify>) {
        let _ = self.delivery.settled_notify.set(notify.clone());
    }

    /// Where this delivery stands.
    pub fn ack_state(&self) -> AckState {
        self.delivery.state()
    }

    /// A handle on this delivery alone, without the content: cheaper to keep than a clone
    /// for a backend that only needs to learn how the delivery was settled.
    pub fn delivery_handle(&self) -> DeliveryHandle {
        DeliveryHandle(self.delivery.clone())
    }

    /// Waits until the message is acked or nacked, and says which.
    pub async fn settled(&self) -> AckState {
        self.delivery.settled().await
    }

    /// Waits until the message is acked; returns `false` if it was nacked instead.
    pub async fn acked(&self) -> bool {
        self.settled().await == AckState::Acked
    }

    /// Waits until the message is nacked; returns `false` if it was acked instead.
    pub async fn nacked(&self) -> bool {
        self.settled().await == AckState::Nacked
    }

    /// The message's context.
    pub fn context(&self) -> &MessageContext {
        &self.ctx
    }

    /// The message's context, mutably (the router and Timeout use this).
    pub fn context_mut(&mut self) -> &mut MessageContext {
        &mut self.ctx
    }

    /// The same message (sharing the delivery) with another context.
    pub fn with_context(mut self, ctx: MessageContext) -> Self {
        self.ctx = ctx;
        self
    }

    /// Whether two messages share one delivery (one is a clone of the other).
    pub fn same_delivery(&self, other: &Message) -> bool {
        Arc::ptr_eq(&self.delivery, &other.delivery)
    }
}

/// Messages are equal when their UUID, metadata and payload are (Watermill's `Equals`).
impl PartialEq for Message {
    fn eq(&self, other: &Self) -> bool {
        self.uuid == other.uuid && self.metadata == other.metadata && self.payload == other.payload
    }
}

impl Eq for Message {}

/// A new message UUID: v7, so that ids sort by creation time.
pub fn new_uuid() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[cfg(test)]
mod tests;
