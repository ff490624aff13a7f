//! CircuitBreaker: after repeated failures, fail fast for a while instead of calling a
//! handler that is down (gobreaker's closed / open / half-open states).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use tokio::time::Instant;

use crate::error::{ErrorKind, HandlerError};
use crate::message::Message;
use crate::router::{BoxHandler, Handler, HandlerResult, Middleware};

/// Breaker settings.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreakerConfig {
    /// Consecutive failures that open the breaker.
    pub consecutive_failures: u32,
    /// How long it stays open before letting trial calls through.
    #[serde(with = "crate::config::duration")]
    pub timeout: Duration,
    /// Trial calls allowed while half-open.
    pub max_requests: u32,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        CircuitBreakerConfig {
            consecutive_failures: 5,
            timeout: Duration::from_secs(60),
            max_requests: 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { in_trial: u32 },
}

/// A circuit breaker shared by all messages of a handler.
#[derive(Clone)]
pub struct CircuitBreaker {
    cfg: CircuitBreakerConfig,
    state: Arc<Mutex<State>>,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(cfg: CircuitBreakerConfig) -> Self {
        CircuitBreaker {
            cfg,
            state: Arc::new(Mutex::new(State::Closed { failures: 0 })),
        }
    }

    fn admit(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match *s {
            State::Closed { .. } => true,
            State::Open { until } if Instant::now() >= until => {
                *s = State::HalfOpen { in_trial: 1 };
                true
            }
            State::Open { .. } => false,
            State::HalfOpen { in_trial } if in_trial < self.cfg.max_requests.max(1) => {
                *s = State::HalfOpen {
                    in_trial: in_trial + 1,
                };
                true
            }
            State::HalfOpen { .. } => false,
        }
    }

    fn record(&self, ok: bool) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        *s = match (*s, ok) {
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 < self.cfg.consecutive_failures => {
                State::Closed {
                    failures: failures + 1,
                }
            }
            (_, false) => {
                tracing::warn!(open_for = ?self.cfg.timeout, "circuit breaker open");
                State::Open {
                    until: Instant::now() + self.cfg.timeout,
                }
            }
        };
    }
}

struct Breaking {
    cb: CircuitBreaker,
    next: BoxHandler,
}

#[async_trait]
impl Handler for Breaking {
    async fn handle(&self, msg: Message) -> HandlerResult {
        if !self.cb.admit() {
            return Err(HandlerError::with_kind(
                ErrorKind::CircuitOpen,
                "circuit breaker is open",
            ));
        }
        let r = self.next.handle(msg).await;
        self.cb.record(r.is_ok());
        r
    }
}

impl Middleware for CircuitBreaker {
    fn wrap(&self, next: BoxHandler) -> BoxHandler {
        Arc::new(Breaking {
            cb: self.clone(),
            next,
        })
    }
    fn name(&self) -> &str {
        "circuit_breaker"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::handler_fn;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn opens_fails_fast_then_half_opens_and_closes() {
        let healthy = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicUsize::new(0));
        let (h2, c2) = (healthy.clone(), calls.clone());
        let cb = CircuitBreaker::new(CircuitBreakerConfig {
            consecutive_failures: 3,
            timeout: Duration::from_secs(10),
            max_requests: 1,
        });
        let h = cb.wrap(handler_fn(move |_m| {
            c2.fetch_add(1, Ordering::SeqCst);
            let ok = h2.load(Ordering::SeqCst);
            async move {
                if ok {
                    Ok(vec![])
                } else {
                    Err(HandlerError::new("down"))
                }
            }
        }));
        for _ in 0..3 {
            assert_eq!(
                h.handle(Message::new("x")).await.unwrap_err().reason(),
                "down"
            );
        }
        let e = h.handle(Message::new("x")).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::CircuitOpen);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3,
            "open: the handler is not called"
        );
        tokio::time::advance(Duration::from_secs(11)).await;
        healthy.store(true, Ordering::SeqCst);
        h.handle(Message::new("x")).await.unwrap();
        h.handle(Message::new("x")).await.unwrap();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            5,
            "closed again after a good trial"
        );
    }
}
