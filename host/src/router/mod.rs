//! The router: subscribes each handler to its topic, runs every message through the handler's
//! middleware chain and publishes what the handler produced before acking.

mod consume;
mod deferred;
mod handler;
pub mod middleware;
pub mod plugin;
mod repeat_limit;
mod routing;
mod stats;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_batch;
mod worker;

pub use deferred::{Deferred, DeferredSlot, deferred};
pub use handler::{
    BoxHandler, BoxMiddleware, Handler, HandlerResult, Middleware, apply_middleware, handler_fn,
    middleware_fn,
};
pub use routing::{HandlerHandle, HandlerSpec, HandlerState, Plugin, Router, RouterConfig};
pub use stats::{DURATION_BUCKETS, HandlerStats, StatsSnapshot};
pub use worker::panic_message;
