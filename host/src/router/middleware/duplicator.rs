//! Duplicator: runs the rest of the chain twice (to prove handlers are idempotent).

use std::sync::Arc;

use async_trait::async_trait;

use crate::message::Message;
use crate::router::{BoxHandler, Handler, HandlerResult, Middleware};

/// Runs the chain twice; the first error wins, otherwise both outputs are concatenated.
#[derive(Debug, Clone, Copy, Default)]
pub struct Duplicator;

struct Twice(BoxHandler);

#[async_trait]
impl Handler for Twice {
    async fn handle(&self, msg: Message) -> HandlerResult {
        let mut first = self.0.handle(msg.clone()).await?;
        let second = self.0.handle(msg).await?;
        first.extend(second);
        Ok(first)
    }
}

impl Middleware for Duplicator {
    fn wrap(&self, next: BoxHandler) -> BoxHandler {
        Arc::new(Twice(next))
    }
    fn name(&self) -> &str {
        "duplicator"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::HandlerError;
    use crate::router::handler_fn;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn runs_twice_and_first_error_wins() {
        let n = Arc::new(AtomicUsize::new(0));
        let c = n.clone();
        let h = Duplicator.wrap(handler_fn(move |_m| {
            let i = c.fetch_add(1, Ordering::SeqCst);
            async move { Ok(vec![Message::new(format!("{i}"))]) }
        }));
        let out = h.handle(Message::new("x")).await.unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(n.load(Ordering::SeqCst), 2);
        let failing = Duplicator.wrap(handler_fn(|_m| async { Err(HandlerError::new("first")) }));
        assert_eq!(
            failing
                .handle(Message::new("x"))
                .await
                .unwrap_err()
                .reason(),
            "first"
        );
    }
}
