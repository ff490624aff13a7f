//! # Wasmill
//!
//! A message router whose handlers are WebAssembly components. Think of Go's Watermill —
//! router, pub/sub backends, middleware — where the business logic is a `.wasm` file dropped
//! into a folder instead of code compiled into the host.
//!
//! ## Map of the crate
//! - [`message`]: [`Message`] (uuid, metadata, payload), ack/nack, its context.
//! - [`pubsub`]: the [`Publisher`]/[`Subscriber`] contract, the in-memory backend, the
//!   conformance suite, and one module per real broker (feature-gated).
//! - [`router`]: [`Router`], [`Handler`], [`Middleware`], and `router::middleware`, one
//!   module per built-in middleware.
//! - [`wasm`]: the wasmtime engine, loading and validating components, the per-subscriber
//!   sandbox, and the adapters that make a component a handler or a middleware.
//! - [`config`]: the `wasmill.toml` file, validated with errors that name file and key.
//! - [`plugins`]: the plugins folder: watch, compile off the message path, swap.
//! - [`http`]: the HTTP API of `wasmill run`.
//! - [`components`]: built on the pub/sub traits: poison replay, request-reply.
//!
//! ## A native handler on the in-memory pub/sub
//! ```
//! # async fn demo() -> wasmill::Result<()> {
//! use std::sync::Arc;
//! use wasmill::{Message, Router, RouterConfig, router::handler_fn};
//! use wasmill::pubsub::memory::{MemoryPubSub, MemoryConfig};
//!
//! let pubsub = Arc::new(MemoryPubSub::new(MemoryConfig::default()));
//! let router = Router::new(RouterConfig::default());
//! router.add_handler(
//!     "uppercase", "incoming", pubsub.clone(), "outgoing", pubsub.clone(),
//!     handler_fn(|msg: Message| async move {
//!         Ok(vec![Message::new(msg.payload.to_ascii_uppercase())])
//!     }),
//! )?;
//! # Ok(()) }
//! ```

pub mod app;
pub mod bench;
pub mod components;
pub mod config;
pub mod error;
pub mod http;
pub mod message;
pub mod plugins;
pub mod pubsub;
pub mod router;
pub mod wasm;

#[cfg(test)]
mod test_support;

pub use error::{Error, ErrorKind, HandlerError, Result};
pub use message::{AckState, Message, MessageContext, Metadata};
pub use pubsub::{Publisher, Subscriber, Subscription};
pub use router::{
    BoxHandler, BoxMiddleware, Handler, HandlerResult, Middleware, Router, RouterConfig,
};
