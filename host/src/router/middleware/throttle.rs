//! Throttle: at most `count` messages per `per`, for all messages of a handler.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Mutex;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::message::Message;
use crate::router::{BoxHandler, Handler, HandlerResult, Middleware};

/// Every message waits for a tick of one shared ticker of `count` ticks per `per`
/// (Watermill's `Throttle`).
#[derive(Clone)]
pub struct Throttle {
    period: Duration,
    // Created on first use, inside the runtime (a tokio interval needs one).
    ticker: Arc<Mutex<Option<Interval>>>,
}

impl Throttle {
    /// Allows `count` messages per `per` (at least one per `per`).
    pub fn new(count: u32, per: Duration) -> Self {
        Throttle {
            period: (per / count.max(1)).max(Duration::from_nanos(1)),
            ticker: Arc::new(Mutex::new(None)),
        }
    }
}

struct Throttled {
    period: Duration,
    ticker: Arc<Mutex<Option<Interval>>>,
    next: BoxHandler,
}

#[async_trait]
impl Handler for Throttled {
    async fn handle(&self, msg: Message) -> HandlerResult {
        // An async mutex: waiting for the tick is the point of holding it.
        let mut ticker = self.ticker.lock().await;
        let interval = ticker.get_or_insert_with(|| {
            let mut i = tokio::time::interval_at(Instant::now(), self.period);
            i.set_missed_tick_behavior(MissedTickBehavior::Delay);
            i
        });
        interval.tick().await;
        drop(ticker);
        self.next.handle(msg).await
    }
}

impl Middleware for Throttle {
    fn wrap(&self, next: BoxHandler) -> BoxHandler {
        Arc::new(Throttled {
            period: self.period,
            ticker: self.ticker.clone(),
            next,
        })
    }
    fn name(&self) -> &str {
        "throttle"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::handler_fn;

    #[tokio::test(start_paused = true)]
    async fn spaces_messages_evenly() {
        let h =
            Throttle::new(10, Duration::from_secs(1)).wrap(handler_fn(|_m| async { Ok(vec![]) }));
        let start = Instant::now();
        for _ in 0..21 {
            h.handle(Message::new("x")).await.unwrap();
        }
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(2),
            "21 messages at 10/s take 2s"
        );
    }
}
