//! The [`Router`]: handlers, their subscriptions, and graceful close.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::consume::{next_message, run_in_batches, run_in_lanes};
use super::handler::{BoxHandler, BoxMiddleware, apply_middleware};
use super::stats::HandlerStats;
use super::worker::Worker;
use crate::error::{Error, Result};
use crate::message::{CloseSignals, RouteInfo};
use crate::pubsub::{DynPublisher, DynSubscriber, SubscribeOptions};

/// Router settings.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// How long `close` waits for in-flight messages before giving up (Watermill: 30s).
    pub close_timeout: Duration,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            close_timeout: Duration::from_secs(30),
        }
    }
}

/// Everything the router needs to run one handler.
pub struct HandlerSpec {
    /// Unique handler name.
    pub name: String,
    /// The topic to consume.
    pub subscribe_topic: String,
    /// Where to consume it from.
    pub subscriber: DynSubscriber,
    /// Where produced messages go; `None` for a consumer handler (which must produce nothing).
    pub publish: Option<(String, DynPublisher)>,
    /// The handler.
    pub handler: BoxHandler,
    /// Handler-level middleware, after the router-level ones; the first is the outermost.
    pub middleware: Vec<BoxMiddleware>,
    /// How many messages may be processed at once (at least 1).
    pub concurrency: usize,
    /// With `concurrency` > 1: messages with equal values of this metadata key are processed
    /// one at a time, in the order received.
    pub order_key: Option<String>,
    /// Up to how many messages go to the chain at once ([`Handler::handle_batch`]): those at
    /// hand when one arrives, never waiting for more. 1: one message at a time.
    pub batch: usize,
}

impl HandlerSpec {
    /// A spec with one message at a time and no middleware.
    pub fn new(
        name: impl Into<String>,
        subscribe_topic: impl Into<String>,
        subscriber: DynSubscriber,
        handler: BoxHandler,
    ) -> Self {
        HandlerSpec {
            name: name.into(),
            subscribe_topic: subscribe_topic.into(),
            subscriber,
            publish: None,
            handler,
            middleware: Vec::new(),
            concurrency: 1,
            order_key: None,
            batch: 1,
        }
    }

    /// Publishes the handler's output to `topic` on `publisher`.
    pub fn publish_to(mut self, topic: impl Into<String>, publisher: DynPublisher) -> Self {
        self.publish = Some((topic.into(), publisher));
        self
    }

    /// Adds a handler-level middleware (after those already added).
    pub fn middleware(mut self, m: BoxMiddleware) -> Self {
        self.middleware.push(m);
        self
    }

    /// Processes up to `n` messages at once.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Hands the chain up to `n` messages at once: after each message received, those already
    /// at hand (up to `n` in all) go with it in one [`Handler::handle_batch`]; a lone message
    /// never waits for company. Batches run `concurrency` at a time (one at a time, in order,
    /// with an `order_key`).
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n.max(1);
        self
    }

    /// Keeps order among messages with equal values of metadata `key`.
    pub fn order_key(mut self, key: impl Into<String>) -> Self {
        self.order_key = Some(key.into());
        self
    }
}

/// A router plugin: runs when the router starts; an error aborts `run`.
pub type Plugin = Box<dyn FnOnce(&Router) -> Result<()> + Send>;

/// The lifecycle of one handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HandlerState {
    /// Registered, not started yet.
    Pending,
    /// Subscribed and processing.
    Running,
    /// Could not subscribe (see the stats' last error).
    Failed,
    /// Stopped; its in-flight messages finished.
    Stopped,
}

struct HandlerEntry {
    spec: Mutex<Option<HandlerSpec>>,
    stats: Arc<HandlerStats>,
    state: Mutex<HandlerState>,
    stop: CancellationToken,
    started: CancellationToken,
    stopped: CancellationToken,
}

/// A handle to a registered handler: add middleware before it starts, stop it, watch it.
#[derive(Clone)]
pub struct HandlerHandle {
    name: String,
    entry: Arc<HandlerEntry>,
}

impl HandlerHandle {
    /// The handler's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds a handler-level middleware. Middleware is snapshotted when the handler starts, so
    /// this returns an error once it has started.
    pub fn add_middleware(&self, m: BoxMiddleware) -> Result<()> {
        let mut spec = self.entry.spec.lock().unwrap_or_else(|p| p.into_inner());
        match spec.as_mut() {
            Some(s) => {
                s.middleware.push(m);
                Ok(())
            }
            None => Err(Error::Other(format!(
                "handler {:?}: middleware can only be added before it starts",
                self.name
            ))),
        }
    }

    /// Stops the handler: no new messages are taken; in-flight ones finish.
    pub fn stop(&self) {
        self.entry.stop.cancel();
    }

    /// Waits until the handler has subscribed.
    pub async fn started(&self) {
        self.entry.started.cancelled().await
    }

    /// Waits until the handler has stopped and its in-flight messages finished.
    pub async fn stopped(&self) {
        self.entry.stopped.cancelled().await
    }

    /// Whether the handler has stopped.
    pub fn is_stopped(&self) -> bool {
        self.entry.stopped.is_cancelled()
    }

    /// The handler's counters.
    pub fn stats(&self) -> &Arc<HandlerStats> {
        &self.entry.stats
    }

    /// The handler's lifecycle state.
    pub fn state(&self) -> HandlerState {
        *self.entry.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Inner {
    config: RouterConfig,
    handlers: Mutex<HashMap<String, Arc<HandlerEntry>>>,
    middleware: Mutex<Vec<BoxMiddleware>>,
    plugins: Mutex<Vec<(String, Plugin)>>,
    pubsubs: Mutex<Vec<PubSubRef>>,
    started: AtomicBool,
    running: CancellationToken,
    shutdown: CancellationToken,
    /// Handed to every message's route: `closing` is `shutdown`, `abort` is cancelled when
    /// `close_timeout` passed with messages in flight.
    close_signals: CloseSignals,
    closed: CancellationToken,
    tasks: TaskTracker,
    close_result: tokio::sync::OnceCell<std::result::Result<(), Duration>>,
}

enum PubSubRef {
    Pub(DynPublisher),
    Sub(DynSubscriber),
}

/// How long a close waits, after cancelling what was still in flight at `close_timeout`, for
/// those messages to be nacked.
const ABORT_GRACE: Duration = Duration::from_secs(2);

/// Routes messages from subscribers through handlers to publishers.
///
/// Cloning gives another handle to the same router.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

impl Router {
    /// A router with no handlers.
    pub fn new(config: RouterConfig) -> Self {
        let shutdown = CancellationToken::new();
        Router {
            inner: Arc::new(Inner {
                config,
                handlers: Mutex::new(HashMap::new()),
                middleware: Mutex::new(Vec::new()),
                plugins: Mutex::new(Vec::new()),
                pubsubs: Mutex::new(Vec::new()),
                started: AtomicBool::new(false),
                running: CancellationToken::new(),
                shutdown: shutdown.clone(),
                close_signals: CloseSignals {
                    closing: shutdown,
                    abort: CancellationToken::new(),
                },
                closed: CancellationToken::new(),
                tasks: TaskTracker::new(),
                close_result: tokio::sync::OnceCell::new(),
            }),
        }
    }

    /// Adds a router-level middleware; it applies to handlers that start after this call.
    pub fn add_middleware(&self, m: BoxMiddleware) {
        lock(&self.inner.middleware).push(m);
    }

    /// Adds a plugin, run when the router starts.
    pub fn add_plugin(
        &self,
        name: impl Into<String>,
        plugin: impl FnOnce(&Router) -> Result<()> + Send + 'static,
    ) {
        lock(&self.inner.plugins).push((name.into(), Box::new(plugin)));
    }

    /// Adds a handler that publishes its output (Watermill's `AddHandler`).
    pub fn add_handler(
        &self,
        name: impl Into<String>,
        subscribe_topic: impl Into<String>,
        subscriber: DynSubscriber,
        publish_topic: impl Into<String>,
        publisher: DynPublisher,
        handler: BoxHandler,
    ) -> Result<HandlerHandle> {
        self.add(
            HandlerSpec::new(name, subscribe_topic, subscriber, handler)
                .publish_to(publish_topic, publisher),
        )
    }

    /// Adds a handler that publishes nothing (Watermill's `AddConsumerHandler`).
    pub fn add_consumer_handler(
        &self,
        name: impl Into<String>,
        subscribe_topic: impl Into<String>,
        subscriber: DynSubscriber,
        handler: BoxHandler,
    ) -> Result<HandlerHandle> {
        self.add(HandlerSpec::new(name, subscribe_topic, subscriber, handler))
    }

    /// Adds a handler. Names are unique among handlers that have not stopped. A handler added
    /// while the router runs starts at once.
    pub fn add(&self, spec: HandlerSpec) -> Result<HandlerHandle> {
        if self.inner.shutdown.is_cancelled() {
            return Err(Error::Other(format!(
                "handler {:?}: router is closed",
                spec.name
            )));
        }
        let name = spec.name.clone();
        let entry = {
            let mut handlers = lock(&self.inner.handlers);
            if handlers
                .get(&name)
                .is_some_and(|e| !e.stopped.is_cancelled())
            {
                return Err(Error::DuplicateHandler(name));
            }
            {
                let mut ps = lock(&self.inner.pubsubs);
                ps.push(PubSubRef::Sub(spec.subscriber.clone()));
                if let Some((_, p)) = &spec.publish {
                    ps.push(PubSubRef::Pub(p.clone()));
                }
            }
            let entry = Arc::new(HandlerEntry {
                spec: Mutex::new(Some(spec)),
                stats: Arc::new(HandlerStats::default()),
                state: Mutex::new(HandlerState::Pending),
                stop: self.inner.shutdown.child_token(),
                started: CancellationToken::new(),
                stopped: CancellationToken::new(),
            });
            handlers.insert(name.clone(), entry.clone());
            entry
        };
        if self.inner.running.is_cancelled() {
            self.start_handler(&name, &entry);
        }
        Ok(HandlerHandle { name, entry })
    }

    /// A handle to the handler called `name`, if registered.
    pub fn handler(&self, name: &str) -> Option<HandlerHandle> {
        lock(&self.inner.handlers)
            .get(name)
            .map(|entry| HandlerHandle {
                name: name.to_string(),
                entry: entry.clone(),
            })
    }

    /// Handles to every registered handler.
    pub fn handlers(&self) -> Vec<HandlerHandle> {
        lock(&self.inner.handlers)
            .iter()
            .map(|(name, entry)| HandlerHandle {
                name: name.clone(),
                entry: entry.clone(),
            })
            .collect()
    }

    /// Runs the router until [`Router::close`] is called (by a plugin such as the signals
    /// handler, or another task). Runs plugins first; an error from one aborts.
    pub async fn run(&self) -> Result<()> {
        if self.inner.started.swap(true, Ordering::SeqCst) {
            return Err(Error::AlreadyRunning);
        }
        let plugins = std::mem::take(&mut *lock(&self.inner.plugins));
        for (name, plugin) in plugins {
            plugin(self).map_err(|e| Error::Plugin {
                name: name.clone(),
                message: e.to_string(),
            })?;
        }
        self.run_handlers();
        self.inner.running.cancel();
        tracing::info!("router running");
        self.inner.shutdown.cancelled().await;
        self.inner.closed.cancelled().await;
        match self.inner.close_result.get() {
            Some(Err(t)) => Err(Error::CloseTimeout(*t)),
            _ => Ok(()),
        }
    }

    /// Runs the router until `shutdown` resolves, then closes it gracefully.
    pub async fn run_until(&self, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
        tokio::select! {
            r = self.run() => r,
            _ = shutdown => self.close().await,
        }
    }

    /// Starts every registered handler that has not started (Watermill's `RunHandlers`).
    pub fn run_handlers(&self) {
        let entries: Vec<_> = lock(&self.inner.handlers)
            .iter()
            .map(|(n, e)| (n.clone(), e.clone()))
            .collect();
        for (name, entry) in entries {
            self.start_handler(&name, &entry);
        }
    }

    /// Waits until the router is running (plugins ran, handlers started).
    pub async fn running(&self) {
        self.inner.running.cancelled().await
    }

    /// Whether the router is running.
    pub fn is_running(&self) -> bool {
        self.inner.running.is_cancelled() && !self.inner.shutdown.is_cancelled()
    }

    /// Whether the router has been closed.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.is_cancelled()
    }

    /// The router's settings.
    pub fn config(&self) -> &RouterConfig {
        &self.inner.config
    }

    /// Closes the router: stops taking messages, waits up to `close_timeout` for in-flight ones,
    /// then closes every subscriber and publisher. Idempotent; concurrent callers all wait.
    pub async fn close(&self) -> Result<()> {
        let inner = self.inner.clone();
        let result = inner
            .close_result
            .get_or_init(|| async {
                tracing::info!("router closing");
                inner.shutdown.cancel();
                inner.tasks.close();
                let timeout = inner.config.close_timeout;
                let drained = tokio::time::timeout(timeout, inner.tasks.wait()).await;
                if drained.is_err() {
                    // Cut off what still runs (a computing guest sees `abort` on its next
                    // epoch tick) so its message is nacked rather than dropped mid-way, and
                    // give the handlers a moment to settle before the backends close.
                    tracing::warn!(
                        ?timeout,
                        "close_timeout passed with messages in flight: cancelling them"
                    );
                    inner.close_signals.abort.cancel();
                    let _ = tokio::time::timeout(ABORT_GRACE, inner.tasks.wait()).await;
                }
                let refs = std::mem::take(&mut *lock(&inner.pubsubs));
                for r in refs {
                    let res = match &r {
                        PubSubRef::Pub(p) => p.close().await,
                        PubSubRef::Sub(s) => s.close().await,
                    };
                    if let Err(e) = res {
                        tracing::warn!("closing pub/sub: {e}");
                    }
                }
                inner.closed.cancel();
                match drained {
                    Ok(()) => {
                        tracing::info!("router closed");
                        Ok(())
                    }
                    Err(_) => {
                        tracing::error!(?timeout, "router close timed out with messages in flight");
                        Err(timeout)
                    }
                }
            })
            .await;
        result.map_err(Error::CloseTimeout)
    }

    fn start_handler(&self, name: &str, entry: &Arc<HandlerEntry>) {
        let Some(spec) = lock(&entry.spec).take() else {
            return;
        };
        let mut middleware = lock(&self.inner.middleware).clone();
        middleware.extend(spec.middleware.iter().cloned());
        let chain = apply_middleware(spec.handler.clone(), &middleware);
        let route = Arc::new(RouteInfo {
            handler: name.into(),
            subscriber: spec.subscriber.name().into(),
            publisher: spec.publish.as_ref().map(|(_, p)| p.name().into()),
            subscribe_topic: spec.subscribe_topic.as_str().into(),
            publish_topic: spec.publish.as_ref().map(|(t, _)| t.as_str().into()),
            stats: Some(entry.stats.clone()),
            close: Some(self.inner.close_signals.clone()),
        });
        let worker = Arc::new(Worker {
            chain,
            route,
            publish: spec.publish.clone(),
            stats: entry.stats.clone(),
        });
        let entry = entry.clone();
        self.inner.tasks.spawn(async move {
            run_handler(spec, worker, entry).await;
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Critical sections here never leave data half-updated, so poisoning is harmless.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn set_state(entry: &HandlerEntry, state: HandlerState) {
    *lock(&entry.state) = state;
}

/// Subscribes and feeds messages to the worker until stopped; then waits for in-flight ones.
async fn run_handler(spec: HandlerSpec, worker: Arc<Worker>, entry: Arc<HandlerEntry>) {
    let name = &spec.name;
    let batching = spec.batch > 1;
    let options = SubscribeOptions {
        max_in_flight: if batching {
            spec.batch * spec.concurrency
        } else {
            spec.concurrency
        },
    };
    let subscription = tokio::select! {
        r = spec.subscriber.subscribe_with(&spec.subscribe_topic, options) => r,
        _ = entry.stop.cancelled() => {
            set_state(&entry, HandlerState::Stopped);
            entry.stopped.cancel();
            return;
        }
    };
    let mut subscription = match subscription {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(handler = %name, topic = %spec.subscribe_topic, "subscribe failed: {e}");
            entry.stats.set_last_error(format!("subscribe: {e}"));
            set_state(&entry, HandlerState::Failed);
            entry.started.cancel();
            entry.stopped.cancel();
            return;
        }
    };
    set_state(&entry, HandlerState::Running);
    entry.started.cancel();
    tracing::info!(handler = %name, topic = %spec.subscribe_topic, "handler started");

    let in_flight = TaskTracker::new();
    if batching {
        let batches = spec.concurrency.max(1);
        let lanes = if spec.order_key.is_some() { 1 } else { batches };
        run_in_batches(
            &mut subscription,
            &entry.stop,
            &worker,
            &in_flight,
            lanes,
            spec.batch,
        )
        .await;
    } else if spec.concurrency <= 1 {
        while let Some(msg) = next_message(&mut subscription, &entry.stop).await {
            worker.process(msg).await;
        }
    } else if let Some(key) = &spec.order_key {
        run_in_lanes(
            &mut subscription,
            &entry.stop,
            &worker,
            &in_flight,
            spec.concurrency,
            key,
        )
        .await;
    } else {
        let permits = Arc::new(Semaphore::new(spec.concurrency));
        while let Some(msg) = next_message(&mut subscription, &entry.stop).await {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let worker = worker.clone();
            in_flight.spawn(async move {
                worker.process(msg).await;
                drop(permit);
            });
        }
    }
    in_flight.close();
    in_flight.wait().await;
    // Only now let the subscription go, so in-flight acks reach a live subscription.
    drop(subscription);
    set_state(&entry, HandlerState::Stopped);
    entry.stopped.cancel();
    tracing::info!(handler = %name, "handler stopped");
}
