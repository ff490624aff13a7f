//! Retry: calls the rest of the chain again after a failure, with exponential backoff.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use crate::error::HandlerError;
use crate::message::Message;
use crate::router::{BoxHandler, Handler, HandlerResult, HandlerStats, Middleware};

/// Retry settings (Watermill's `middleware.Retry`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Retries after the first attempt (so at most `max_retries + 1` calls).
    pub max_retries: u32,
    /// Wait before the first retry.
    #[serde(with = "crate::config::duration")]
    pub initial_interval: Duration,
    /// Cap of the wait between retries.
    #[serde(with = "crate::config::duration")]
    pub max_interval: Duration,
    /// Growth of the wait after each retry.
    pub multiplier: f64,
    /// Stop retrying once this much time has passed since the first attempt (zero = off).
    #[serde(with = "crate::config::duration")]
    pub max_elapsed_time: Duration,
    /// Randomize each wait by up to ± this fraction.
    pub randomization_factor: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_retries: 3,
            initial_interval: Duration::from_millis(100),
            max_interval: Duration::from_secs(10),
            multiplier: 2.0,
            max_elapsed_time: Duration::ZERO,
            randomization_factor: 0.0,
        }
    }
}

type ShouldRetry = Arc<dyn Fn(&HandlerError, u32, Duration) -> bool + Send + Sync>;
type OnRetry = Arc<dyn Fn(u32, Duration) + Send + Sync>;

/// Retries a failing chain `max_retries` times with exponential backoff; returns the last
/// error. Errors marked not retryable are returned at once (override with `should_retry`).
#[derive(Clone)]
pub struct Retry {
    config: RetryConfig,
    should_retry: ShouldRetry,
    on_retry: Option<OnRetry>,
}

impl Retry {
    /// Retry with these settings.
    pub fn new(config: RetryConfig) -> Self {
        Retry {
            config,
            should_retry: Arc::new(|e, _, _| e.is_retryable()),
            on_retry: None,
        }
    }

    /// Decides per failure whether to retry (retry number from 1, the wait before it).
    pub fn should_retry(
        mut self,
        f: impl Fn(&HandlerError, u32, Duration) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.should_retry = Arc::new(f);
        self
    }

    /// Called before each retry with its number (from 1) and the wait before it.
    pub fn on_retry(mut self, f: impl Fn(u32, Duration) + Send + Sync + 'static) -> Self {
        self.on_retry = Some(Arc::new(f));
        self
    }

    /// The wait before retry number `n` (from 1), before randomization.
    pub fn interval(&self, n: u32) -> Duration {
        let c = &self.config;
        let secs = c.initial_interval.as_secs_f64() * c.multiplier.powi(n.saturating_sub(1) as i32);
        Duration::from_secs_f64(secs.min(c.max_interval.as_secs_f64()).max(0.0))
    }

    fn jittered(&self, d: Duration) -> Duration {
        let f = self.config.randomization_factor;
        if f <= 0.0 {
            return d;
        }
        let r: f64 = rand::random::<f64>() * 2.0 - 1.0;
        Duration::from_secs_f64((d.as_secs_f64() * (1.0 + f * r)).max(0.0))
    }
}

struct Retrying {
    retry: Retry,
    next: BoxHandler,
}

#[async_trait]
impl Handler for Retrying {
    async fn handle(&self, msg: Message) -> HandlerResult {
        let started = tokio::time::Instant::now();
        let first = self.next.handle(msg.clone()).await;
        self.retry_after(msg, first, started).await
    }

    /// The batch's first attempt together; each message that failed is retried on its own.
    async fn handle_batch(&self, msgs: Vec<Message>) -> Vec<HandlerResult> {
        let started = tokio::time::Instant::now();
        let first = self.next.handle_batch(msgs.clone()).await;
        let mut out = Vec::with_capacity(msgs.len());
        for (msg, result) in msgs.into_iter().zip(first) {
            out.push(self.retry_after(msg, result, started).await);
        }
        out
    }
}

impl Retrying {
    /// Retries `msg` after an attempt that gave `result`, as the policy says.
    async fn retry_after(
        &self,
        msg: Message,
        mut result: HandlerResult,
        started: tokio::time::Instant,
    ) -> HandlerResult {
        let mut retry_num = 0;
        loop {
            let err = match result {
                Ok(out) => return Ok(out),
                Err(e) => e,
            };
            retry_num += 1;
            let c = &self.retry.config;
            let wait = self.retry.jittered(self.retry.interval(retry_num));
            let out_of_time =
                !c.max_elapsed_time.is_zero() && started.elapsed() + wait > c.max_elapsed_time;
            if retry_num > c.max_retries
                || out_of_time
                || !(self.retry.should_retry)(&err, retry_num, wait)
            {
                return Err(err);
            }
            tracing::debug!(uuid = %msg.uuid, retry = retry_num, ?wait, "retrying after: {err}");
            if let Some(f) = &self.retry.on_retry {
                f(retry_num, wait);
            }
            if let Some(stats) = msg.context().stats() {
                HandlerStats::inc(&stats.retried);
            }
            let closing = msg.context().closing().cloned().unwrap_or_default();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                // The message's context ended (acked elsewhere, or shutting down): stop.
                _ = msg.context().cancellation().cancelled() => return Err(err),
                // The router is closing: give up now rather than sleep through its
                // close_timeout; the nacked message is delivered again later.
                _ = closing.cancelled() => return Err(err),
            }
            result = self.next.handle(msg.clone()).await;
        }
    }
}

impl Middleware for Retry {
    fn wrap(&self, next: BoxHandler) -> BoxHandler {
        Arc::new(Retrying {
            retry: self.clone(),
            next,
        })
    }

    fn name(&self) -> &str {
        "retry"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::handler_fn;
    use std::sync::Mutex;

    fn failing(times: Arc<Mutex<Vec<tokio::time::Instant>>>, succeed_on: usize) -> BoxHandler {
        handler_fn(move |_m| {
            let times = times.clone();
            async move {
                let mut t = times.lock().unwrap();
                t.push(tokio::time::Instant::now());
                if t.len() >= succeed_on {
                    Ok(vec![])
                } else {
                    Err(HandlerError::new("nope"))
                }
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn calls_max_retries_plus_one_times_with_growing_intervals() {
        let times = Arc::new(Mutex::new(Vec::new()));
        let r = Retry::new(RetryConfig {
            max_retries: 3,
            initial_interval: Duration::from_millis(100),
            multiplier: 2.0,
            max_interval: Duration::from_secs(1),
            ..RetryConfig::default()
        });
        let h = r.wrap(failing(times.clone(), usize::MAX));
        let err = h.handle(Message::new("x")).await.unwrap_err();
        assert_eq!(err.reason(), "nope");
        let t = times.lock().unwrap();
        assert_eq!(t.len(), 4, "max_retries + 1 attempts");
        let gaps: Vec<u128> = t.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect();
        assert_eq!(gaps, [100, 200, 400]);
    }

    #[tokio::test(start_paused = true)]
    async fn max_interval_caps_and_success_stops() {
        let times = Arc::new(Mutex::new(Vec::new()));
        let r = Retry::new(RetryConfig {
            max_retries: 5,
            initial_interval: Duration::from_millis(300),
            multiplier: 3.0,
            max_interval: Duration::from_millis(500),
            ..RetryConfig::default()
        });
        r.wrap(failing(times.clone(), 4))
            .handle(Message::new("x"))
            .await
            .unwrap();
        let t = times.lock().unwrap();
        assert_eq!(t.len(), 4);
        let gaps: Vec<u128> = t.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect();
        assert_eq!(gaps, [300, 500, 500]);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried_and_hooks_run() {
        let calls = Arc::new(Mutex::new(0));
        let c = calls.clone();
        let h = handler_fn(move |_m| {
            *c.lock().unwrap() += 1;
            async { Err(HandlerError::permanent("bad input")) }
        });
        Retry::new(RetryConfig::default())
            .wrap(h)
            .handle(Message::new("x"))
            .await
            .unwrap_err();
        assert_eq!(*calls.lock().unwrap(), 1);

        let hooked = Arc::new(Mutex::new(Vec::new()));
        let hk = hooked.clone();
        let times = Arc::new(Mutex::new(Vec::new()));
        Retry::new(RetryConfig {
            max_retries: 2,
            ..RetryConfig::default()
        })
        .on_retry(move |n, d| hk.lock().unwrap().push((n, d)))
        .wrap(failing(times, usize::MAX))
        .handle(Message::new("x"))
        .await
        .unwrap_err();
        let h = hooked.lock().unwrap();
        assert_eq!(h.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn max_elapsed_time_stops_early() {
        let times = Arc::new(Mutex::new(Vec::new()));
        Retry::new(RetryConfig {
            max_retries: 10,
            initial_interval: Duration::from_millis(100),
            multiplier: 1.0,
            max_elapsed_time: Duration::from_millis(250),
            ..RetryConfig::default()
        })
        .wrap(failing(times.clone(), usize::MAX))
        .handle(Message::new("x"))
        .await
        .unwrap_err();
        assert_eq!(times.lock().unwrap().len(), 3, "attempts at 0, 100, 200 ms");
    }
}
