//! CorrelationID: produced messages carry the input's `correlation_id`.

use std::sync::Arc;

use async_trait::async_trait;

use crate::message::Message;
use crate::router::{BoxHandler, Handler, HandlerResult, Middleware};

/// The metadata key.
pub const CORRELATION_ID: &str = "correlation_id";

/// Sets `correlation_id` on `msg`.
pub fn set_correlation_id(msg: &mut Message, id: impl Into<String>) {
    msg.metadata.set(CORRELATION_ID, id);
}

/// The `correlation_id` of `msg` (`""` when it has none).
pub fn correlation_id(msg: &Message) -> &str {
    msg.metadata.get(CORRELATION_ID)
}

/// Copies the input's `correlation_id` onto produced messages that lack one.
#[derive(Debug, Clone, Copy, Default)]
pub struct CorrelationId;

struct Correlating(BoxHandler);

#[async_trait]
impl Handler for Correlating {
    async fn handle(&self, msg: Message) -> HandlerResult {
        let id = correlation_id(&msg).to_string();
        let mut out = self.0.handle(msg).await?;
        stamp(&id, &mut out);
        Ok(out)
    }

    async fn handle_batch(&self, msgs: Vec<Message>) -> Vec<HandlerResult> {
        let ids: Vec<String> = msgs.iter().map(|m| correlation_id(m).to_string()).collect();
        let mut results = self.0.handle_batch(msgs).await;
        for (id, result) in ids.into_iter().zip(&mut results) {
            if let Ok(out) = result {
                stamp(&id, out);
            }
        }
        results
    }
}

/// Gives the outputs lacking a correlation id the input's `id` (if it has one).
fn stamp(id: &str, out: &mut [Message]) {
    if id.is_empty() {
        return;
    }
    for m in out {
        if !m.metadata.contains(CORRELATION_ID) {
            set_correlation_id(m, id.to_string());
        }
    }
}

impl Middleware for CorrelationId {
    fn wrap(&self, next: BoxHandler) -> BoxHandler {
        Arc::new(Correlating(next))
    }

    fn name(&self) -> &str {
        "correlation_id"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::handler_fn;

    #[tokio::test]
    async fn copies_onto_outputs_lacking_one() {
        let h = CorrelationId.wrap(handler_fn(|_m| async {
            Ok(vec![
                Message::new("a"),
                Message::new("b").with_metadata(CORRELATION_ID, "own"),
            ])
        }));
        let mut input = Message::new("x");
        set_correlation_id(&mut input, "c-1");
        let out = h.handle(input).await.unwrap();
        assert_eq!(correlation_id(&out[0]), "c-1");
        assert_eq!(correlation_id(&out[1]), "own");
        let out = h.handle(Message::new("no id")).await.unwrap();
        assert_eq!(correlation_id(&out[0]), "");
    }
}
