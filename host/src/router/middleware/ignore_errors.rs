//! IgnoreErrors: listed errors count as success (the message is acked with no output).

use std::sync::Arc;

use async_trait::async_trait;

use crate::error::ErrorKind;
use crate::message::Message;
use crate::router::{BoxHandler, Handler, HandlerResult, Middleware};

/// Turns errors whose reason contains one of `reasons`, or whose kind is one of `kinds`, into
/// success with no output.
#[derive(Debug, Clone, Default)]
pub struct IgnoreErrors {
    reasons: Vec<String>,
    kinds: Vec<ErrorKind>,
}

impl IgnoreErrors {
    /// Ignores errors whose reason contains any of `reasons` (substring match).
    pub fn new(reasons: impl IntoIterator<Item = impl Into<String>>) -> Self {
        IgnoreErrors {
            reasons: reasons.into_iter().map(Into::into).collect(),
            kinds: Vec::new(),
        }
    }

    /// Ignores errors of these kinds too.
    pub fn kinds(mut self, kinds: &[ErrorKind]) -> Self {
        self.kinds.extend_from_slice(kinds);
        self
    }
}

struct Ignoring {
    cfg: IgnoreErrors,
    next: BoxHandler,
}

#[async_trait]
impl Handler for Ignoring {
    async fn handle(&self, msg: Message) -> HandlerResult {
        match self.next.handle(msg).await {
            Err(e)
                if self.cfg.kinds.contains(&e.kind())
                    || self
                        .cfg
                        .reasons
                        .iter()
                        .any(|r| e.reason().contains(r.as_str())) =>
            {
                tracing::debug!("ignoring error: {e}");
                Ok(vec![])
            }
            other => other,
        }
    }
}

impl Middleware for IgnoreErrors {
    fn wrap(&self, next: BoxHandler) -> BoxHandler {
        Arc::new(Ignoring {
            cfg: self.clone(),
            next,
        })
    }
    fn name(&self) -> &str {
        "ignore_errors"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::HandlerError;
    use crate::router::handler_fn;

    #[tokio::test]
    async fn listed_errors_become_success() {
        let h = IgnoreErrors::new(["not found"])
            .kinds(&[ErrorKind::Timeout])
            .wrap(handler_fn(|m: Message| async move {
                match &m.payload[..] {
                    b"nf" => Err(HandlerError::new("user not found")),
                    b"to" => Err(HandlerError::with_kind(ErrorKind::Timeout, "timeout")),
                    _ => Err(HandlerError::new("other")),
                }
            }));
        assert!(h.handle(Message::new("nf")).await.unwrap().is_empty());
        assert!(h.handle(Message::new("to")).await.unwrap().is_empty());
        assert!(h.handle(Message::new("x")).await.is_err());
    }
}
