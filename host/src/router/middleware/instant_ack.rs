//! InstantAck: acks the message before handling it (throughput over delivery guarantees).

use std::sync::Arc;

use async_trait::async_trait;

use crate::message::Message;
use crate::router::{BoxHandler, Handler, HandlerResult, Middleware};

/// Acks the input at once, then runs the chain; the router's later ack or nack is a no-op,
/// so a failure is not redelivered.
#[derive(Debug, Clone, Copy, Default)]
pub struct InstantAck;

struct Acking(BoxHandler);

#[async_trait]
impl Handler for Acking {
    async fn handle(&self, msg: Message) -> HandlerResult {
        msg.ack();
        self.0.handle(msg).await
    }
}

impl Middleware for InstantAck {
    fn wrap(&self, next: BoxHandler) -> BoxHandler {
        Arc::new(Acking(next))
    }
    fn name(&self) -> &str {
        "instant_ack"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::AckState;
    use crate::router::handler_fn;

    #[tokio::test]
    async fn acked_before_the_handler_runs() {
        let h = InstantAck.wrap(handler_fn(|m: Message| async move {
            assert_eq!(m.ack_state(), AckState::Acked);
            Ok(vec![])
        }));
        let m = Message::new("x");
        h.handle(m.clone()).await.unwrap();
        assert!(!m.nack(), "a later nack is refused");
    }
}
