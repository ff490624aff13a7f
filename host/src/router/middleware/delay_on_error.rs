//! DelayOnError: a failed message asks to be redelivered later, with a delay that grows with
//! each failure (on backends that can delay redelivery; the in-memory one does).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use crate::message::Message;
use crate::router::{BoxHandler, Handler, HandlerResult, Middleware};

pub use crate::pubsub::delay::{DELAYED_FOR, DELAYED_UNTIL};

/// Delay settings.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DelayOnError {
    /// Delay after the first failure.
    #[serde(with = "crate::config::duration")]
    pub initial_interval: Duration,
    /// Cap of the delay.
    #[serde(with = "crate::config::duration")]
    pub max_interval: Duration,
    /// Growth after each failure.
    pub multiplier: f64,
}

impl Default for DelayOnError {
    fn default() -> Self {
        DelayOnError {
            initial_interval: Duration::from_secs(10),
            max_interval: Duration::from_secs(3600),
            multiplier: 2.0,
        }
    }
}

impl DelayOnError {
    /// The delay after a failure of a message that was delayed for `previous` before.
    pub fn next_delay(&self, previous: Option<Duration>) -> Duration {
        match previous {
            None => self.initial_interval,
            Some(p) => Duration::from_secs_f64(p.as_secs_f64() * self.multiplier),
        }
        .min(self.max_interval)
    }
}

struct Delaying {
    cfg: DelayOnError,
    next: BoxHandler,
}

#[async_trait]
impl Handler for Delaying {
    async fn handle(&self, mut msg: Message) -> HandlerResult {
        let previous = msg
            .metadata
            .get_opt(DELAYED_FOR)
            .and_then(|d| crate::config::duration::parse(d).ok());
        match self.next.handle(msg.clone()).await {
            Ok(out) => Ok(out),
            Err(e) => {
                let delay = self.cfg.next_delay(previous);
                crate::pubsub::delay::delay_for(&mut msg, delay);
                msg.set_redelivery_delay(delay);
                Err(e)
            }
        }
    }
}

impl Middleware for DelayOnError {
    fn wrap(&self, next: BoxHandler) -> BoxHandler {
        Arc::new(Delaying { cfg: *self, next })
    }
    fn name(&self) -> &str {
        "delay_on_error"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::HandlerError;
    use crate::pubsub::Publisher;
    use crate::pubsub::memory::MemoryPubSub;
    use crate::router::{HandlerSpec, Router, RouterConfig, handler_fn};
    use std::sync::Mutex;

    #[test]
    fn delay_grows_to_the_cap() {
        let d = DelayOnError {
            initial_interval: Duration::from_millis(100),
            max_interval: Duration::from_millis(300),
            multiplier: 2.0,
        };
        assert_eq!(d.next_delay(None), Duration::from_millis(100));
        assert_eq!(
            d.next_delay(Some(Duration::from_millis(100))),
            Duration::from_millis(200)
        );
        assert_eq!(
            d.next_delay(Some(Duration::from_millis(200))),
            Duration::from_millis(300)
        );
    }

    #[tokio::test]
    async fn the_memory_backend_waits_before_redelivering() {
        let ps = Arc::new(MemoryPubSub::default());
        let times = Arc::new(Mutex::new(Vec::new()));
        let t = times.clone();
        let router = Router::new(RouterConfig::default());
        let h = router
            .add(
                HandlerSpec::new(
                    "d",
                    "in",
                    ps.clone(),
                    handler_fn(move |_m| {
                        let mut t = t.lock().unwrap();
                        t.push(std::time::Instant::now());
                        let fail = t.len() == 1;
                        async move {
                            if fail {
                                Err(HandlerError::new("later"))
                            } else {
                                Ok(vec![])
                            }
                        }
                    }),
                )
                .middleware(Arc::new(DelayOnError {
                    initial_interval: Duration::from_millis(200),
                    ..DelayOnError::default()
                })),
            )
            .unwrap();
        let r = router.clone();
        tokio::spawn(async move { r.run().await });
        h.started().await;
        ps.publish("in", vec![Message::new("x")]).await.unwrap();
        for _ in 0..200 {
            if times.lock().unwrap().len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let t = times.lock().unwrap().clone();
        assert_eq!(t.len(), 2);
        assert!(
            t[1] - t[0] >= Duration::from_millis(190),
            "{:?}",
            t[1] - t[0]
        );
        router.close().await.unwrap();
    }
}
