//! One message through a handler: the chain, the output published in one call, then the ack
//! (or the nack, logged without flooding).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;

use super::handler::BoxHandler;
use super::repeat_limit::{RepeatLimiter, Verdict, first_line};
use super::stats::HandlerStats;
use crate::error::{ErrorKind, HandlerError};
use crate::message::{DeliveryHandle, Message, RouteInfo};
use crate::pubsub::DynPublisher;

/// Runs one message through the chain, publishes the output, acks or nacks.
pub(super) struct Worker {
    pub(super) chain: BoxHandler,
    pub(super) route: Arc<RouteInfo>,
    pub(super) publish: Option<(String, DynPublisher)>,
    pub(super) stats: Arc<HandlerStats>,
}

impl Worker {
    pub(super) async fn process(&self, mut msg: Message) {
        msg.context_mut().set_route(&self.route);
        let started = Instant::now();
        // The chain takes the message; the router keeps what it settles and logs, which is
        // cheaper than a clone of the content.
        let delivery = msg.delivery_handle();
        let uuid = msg.uuid.clone();
        let result = AssertUnwindSafe(self.chain.handle(msg))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| Err(panicked(&*panic)));
        let result = match result {
            Ok(out) => self.publish_output(out).await,
            Err(e) => Err(e),
        };
        self.stats.record_duration(started.elapsed());
        self.settle(delivery, &uuid, result);
    }

    /// Runs `msgs` through the chain in one [`Handler::handle_batch`](super::Handler), then
    /// publishes the output of every message that succeeded in one call and settles each
    /// message on its own result (a failed publish fails the messages whose output it held).
    pub(super) async fn process_batch(&self, mut msgs: Vec<Message>) {
        if msgs.len() == 1 {
            return self.process(msgs.remove(0)).await;
        }
        let started = Instant::now();
        let kept: Vec<(DeliveryHandle, String)> = msgs
            .iter_mut()
            .map(|m| {
                m.context_mut().set_route(&self.route);
                (m.delivery_handle(), m.uuid.clone())
            })
            .collect();
        let n = msgs.len();
        let mut results = AssertUnwindSafe(self.chain.handle_batch(msgs))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                let e = panicked(&*panic);
                (0..n).map(|_| Err(e.clone())).collect()
            });
        if results.len() != n {
            let got = results.len();
            results.resize_with(n, || {
                Err(HandlerError::new(format!(
                    "the handler returned {got} results for a batch of {n}"
                )))
            });
            results.truncate(n);
        }
        let mut output = Vec::new();
        let mut outcomes: Vec<Result<(), HandlerError>> = Vec::with_capacity(n);
        for r in results {
            outcomes.push(r.map(|out| output.extend(out)));
        }
        if let Err(e) = self.publish_output(output).await {
            for o in outcomes.iter_mut().filter(|o| o.is_ok()) {
                *o = Err(e.clone());
            }
        }
        let elapsed = started.elapsed();
        for ((delivery, uuid), outcome) in kept.into_iter().zip(outcomes) {
            self.stats.record_duration(elapsed);
            self.settle(delivery, &uuid, outcome);
        }
    }

    /// Acks `delivery` on success; else logs (without flooding), counts and nacks it.
    fn settle(&self, delivery: DeliveryHandle, uuid: &str, result: Result<(), HandlerError>) {
        match result {
            Ok(()) => {
                delivery.ack();
                HandlerStats::inc(&self.stats.processed);
            }
            Err(e) => {
                let reason = e.to_string();
                let summary = first_line(&reason, 512);
                match failure_log().check((&*self.route.handler, e.kind().as_str(), summary)) {
                    Verdict::Log { suppressed: 0 } => tracing::warn!(
                        handler = %self.route.handler,
                        uuid = %uuid,
                        kind = e.kind().as_str(),
                        "handler failed, nacking: {reason}"
                    ),
                    Verdict::Log { suppressed } => tracing::warn!(
                        handler = %self.route.handler,
                        uuid = %uuid,
                        kind = e.kind().as_str(),
                        "handler failed, nacking: {summary} (the same failure repeated {suppressed} times since it was last logged)"
                    ),
                    Verdict::Suppress => {}
                }
                HandlerStats::inc(&self.stats.failed);
                self.stats.set_last_error(&e);
                delivery.nack();
            }
        }
    }

    async fn publish_output(&self, mut out: Vec<Message>) -> std::result::Result<(), HandlerError> {
        if out.is_empty() {
            return Ok(());
        }
        let Some((topic, publisher)) = &self.publish else {
            return Err(HandlerError::with_kind(
                ErrorKind::Publish,
                format!(
                    "handler {} has no publisher but returned {} messages",
                    self.route.handler,
                    out.len()
                ),
            ));
        };
        for m in &mut out {
            m.context_mut().set_route(&self.route);
        }
        publisher.publish(topic, out).await.map_err(|e| {
            HandlerError::with_kind(ErrorKind::Publish, format!("publish to {topic}: {e}"))
        })
    }
}

/// Failures are logged once per handler, kind and reason every 10 s, with a count of the
/// repeats left out (a message failing in a loop would otherwise flood the log).
fn failure_log() -> &'static RepeatLimiter {
    static LIMITER: std::sync::OnceLock<RepeatLimiter> = std::sync::OnceLock::new();
    LIMITER.get_or_init(|| RepeatLimiter::new(Duration::from_secs(10)))
}

/// A panic caught around the chain, as the error its message(s) fail with.
fn panicked(panic: &(dyn std::any::Any + Send)) -> HandlerError {
    HandlerError::with_kind(ErrorKind::Panic, format!("panic: {}", panic_message(panic)))
}

/// The text of a panic payload.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}
