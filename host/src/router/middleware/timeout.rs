//! Timeout: the rest of the chain gets a deadline on the message's context and is cut off
//! when it passes. The caller's context is left as it was (Watermill #467), so a Retry
//! outside gives every attempt a fresh deadline.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{ErrorKind, HandlerError};
use crate::message::Message;
use crate::router::{BoxHandler, Handler, HandlerResult, Middleware};

/// Cuts the chain off after `after`.
#[derive(Debug, Clone, Copy)]
pub struct Timeout {
    after: Duration,
}

impl Timeout {
    /// A deadline of `after` for each call.
    pub fn new(after: Duration) -> Self {
        Timeout { after }
    }
}

struct Limited {
    after: Duration,
    next: BoxHandler,
}

#[async_trait]
impl Handler for Limited {
    async fn handle(&self, msg: Message) -> HandlerResult {
        let ctx = msg.context().with_timeout(self.after);
        let token = ctx.cancellation().clone();
        let inner = msg.with_context(ctx);
        let result = tokio::time::timeout(self.after, self.next.handle(inner)).await;
        token.cancel();
        result.unwrap_or_else(|_| {
            Err(HandlerError::with_kind(
                ErrorKind::Timeout,
                format!("timeout after {}", humantime::format_duration(self.after)),
            ))
        })
    }
}

impl Middleware for Timeout {
    fn wrap(&self, next: BoxHandler) -> BoxHandler {
        Arc::new(Limited {
            after: self.after,
            next,
        })
    }

    fn name(&self) -> &str {
        "timeout"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::handler_fn;
    use crate::router::middleware::{Retry, RetryConfig};
    use std::sync::Mutex;

    #[tokio::test(start_paused = true)]
    async fn cuts_off_and_sets_the_deadline() {
        let h =
            Timeout::new(Duration::from_millis(100)).wrap(handler_fn(|m: Message| async move {
                assert!(m.context().deadline().is_some());
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(vec![])
            }));
        let e = h.handle(Message::new("x")).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert_eq!(e.reason(), "timeout after 100ms");
    }

    #[tokio::test(start_paused = true)]
    async fn retry_outside_gets_a_fresh_deadline_each_attempt() {
        let deadlines = Arc::new(Mutex::new(Vec::new()));
        let d = deadlines.clone();
        let inner = handler_fn(move |m: Message| {
            let d = d.clone();
            async move {
                d.lock().unwrap().push(m.context().remaining().unwrap());
                Err(HandlerError::new("again"))
            }
        });
        let chain = Retry::new(RetryConfig {
            max_retries: 2,
            initial_interval: Duration::from_millis(500),
            ..RetryConfig::default()
        })
        .wrap(Timeout::new(Duration::from_millis(300)).wrap(inner));
        let msg = Message::new("x");
        chain.handle(msg.clone()).await.unwrap_err();
        assert!(
            msg.context().deadline().is_none(),
            "caller's context untouched"
        );
        let d = deadlines.lock().unwrap();
        assert_eq!(d.len(), 3);
        assert!(d.iter().all(|r| *r == Duration::from_millis(300)), "{d:?}");
    }
}
