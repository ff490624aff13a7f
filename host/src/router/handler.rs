//! Handlers and middleware: the two function shapes the router composes.
//!
//! A [`Handler`] turns one message into zero or more messages to publish, or an error. A
//! [`Middleware`] wraps a handler into another handler, exactly as Watermill's
//! `HandlerMiddleware`: it decides whether, when and with what to call the rest of the chain
//! and may change what comes back. Native Rust handlers, built-in middleware and WebAssembly
//! components all implement these two traits, so they compose freely.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::HandlerError;
use crate::message::Message;

/// What a handler returns: messages to publish, or an error (the message is nacked).
pub type HandlerResult = Result<Vec<Message>, HandlerError>;

/// Handles one message.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Handles `msg`. On `Ok`, the router publishes the returned messages to the handler's
    /// publish topic and then acks `msg`; on `Err`, it nacks `msg`.
    async fn handle(&self, msg: Message) -> HandlerResult;

    /// Handles several messages at once (a handler with `batch = N`): one result per message,
    /// in order. By default each message is handled on its own, one after another, so a
    /// middleware that does not override it runs around every message as with `handle`.
    async fn handle_batch(&self, msgs: Vec<Message>) -> Vec<HandlerResult> {
        let mut out = Vec::with_capacity(msgs.len());
        for msg in msgs {
            out.push(self.handle(msg).await);
        }
        out
    }
}

/// A shared handler; middleware produce and consume these.
pub type BoxHandler = Arc<dyn Handler>;

/// Wraps a handler into another handler.
pub trait Middleware: Send + Sync + 'static {
    /// Returns a handler that runs this middleware around `next`.
    fn wrap(&self, next: BoxHandler) -> BoxHandler;

    /// A short name for logs and `GET /handlers`.
    fn name(&self) -> &str {
        std::any::type_name::<Self>()
    }
}

/// A shared middleware.
pub type BoxMiddleware = Arc<dyn Middleware>;

struct FnHandler<F>(F);

#[async_trait]
impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    async fn handle(&self, msg: Message) -> HandlerResult {
        (self.0)(msg).await
    }
}

/// A handler from an async function or closure.
///
/// ```
/// use wasmill::router::handler_fn;
/// let upper = handler_fn(|msg| async move {
///     let out = wasmill::Message::new(msg.payload.to_ascii_uppercase());
///     Ok(vec![out])
/// });
/// # let _ = upper;
/// ```
pub fn handler_fn<F, Fut>(f: F) -> BoxHandler
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    Arc::new(FnHandler(f))
}

struct FnMiddleware<F> {
    name: String,
    f: F,
}

impl<F> Middleware for FnMiddleware<F>
where
    F: Fn(BoxHandler) -> BoxHandler + Send + Sync + 'static,
{
    fn wrap(&self, next: BoxHandler) -> BoxHandler {
        (self.f)(next)
    }
    fn name(&self) -> &str {
        &self.name
    }
}

/// A middleware from a function of the next handler.
pub fn middleware_fn<F>(name: impl Into<String>, f: F) -> BoxMiddleware
where
    F: Fn(BoxHandler) -> BoxHandler + Send + Sync + 'static,
{
    Arc::new(FnMiddleware {
        name: name.into(),
        f,
    })
}

/// Applies `middleware` to `handler`, the first in the list being the outermost.
pub fn apply_middleware(handler: BoxHandler, middleware: &[BoxMiddleware]) -> BoxHandler {
    middleware
        .iter()
        .rev()
        .fold(handler, |next, m| m.wrap(next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn recording(name: &'static str, log: Arc<Mutex<Vec<String>>>) -> BoxMiddleware {
        middleware_fn(name, move |next: BoxHandler| {
            let log = log.clone();
            handler_fn(move |msg| {
                let next = next.clone();
                let log = log.clone();
                async move {
                    log.lock().unwrap().push(format!("{name} before"));
                    let r = next.handle(msg).await;
                    log.lock().unwrap().push(format!("{name} after"));
                    r
                }
            })
        })
    }

    #[tokio::test]
    async fn first_middleware_is_outermost() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let inner_log = log.clone();
        let h = handler_fn(move |_msg| {
            let log = inner_log.clone();
            async move {
                log.lock().unwrap().push("handler".into());
                Ok(vec![])
            }
        });
        let chain = apply_middleware(
            h,
            &[recording("a", log.clone()), recording("b", log.clone())],
        );
        chain.handle(Message::new("x")).await.unwrap();
        assert_eq!(
            *log.lock().unwrap(),
            ["a before", "b before", "handler", "b after", "a after"]
        );
    }
}
