//! A plugin as a router [`Handler`] or [`Middleware`].

use std::sync::Arc;

use async_trait::async_trait;

use super::instance::InstancePool;
use crate::message::Message;
use crate::router::{BoxHandler, Handler, HandlerResult, Middleware};

/// A handler component bound to one subscriber, with its instance pool. With `batch = N` the
/// router hands it up to N messages at once: one `handle-batch` call into a 0.2.0 guest.
#[derive(Clone)]
pub struct WasmHandler {
    pool: Arc<InstancePool>,
}

impl WasmHandler {
    /// A handler running calls in `pool`.
    pub fn new(pool: Arc<InstancePool>) -> Self {
        WasmHandler { pool }
    }

    /// The instance pool (version, limits, fuel used, hot swap).
    pub fn pool(&self) -> &Arc<InstancePool> {
        &self.pool
    }
}

#[async_trait]
impl Handler for WasmHandler {
    async fn handle(&self, msg: Message) -> HandlerResult {
        self.pool.call(&msg, None).await
    }

    async fn handle_batch(&self, msgs: Vec<Message>) -> Vec<HandlerResult> {
        self.pool.call_batch(&msgs).await
    }
}

/// A middleware component: wraps the rest of the chain, reached through its `next` import.
#[derive(Clone)]
pub struct WasmMiddleware {
    pool: Arc<InstancePool>,
    name: String,
}

impl WasmMiddleware {
    /// A middleware running calls in `pool`.
    pub fn new(pool: Arc<InstancePool>) -> Self {
        let name = format!("wasm:{}", pool.current().name);
        WasmMiddleware { pool, name }
    }

    /// The instance pool.
    pub fn pool(&self) -> &Arc<InstancePool> {
        &self.pool
    }
}

struct Wrapped {
    pool: Arc<InstancePool>,
    next: BoxHandler,
}

#[async_trait]
impl Handler for Wrapped {
    async fn handle(&self, msg: Message) -> HandlerResult {
        self.pool.call(&msg, Some(self.next.clone())).await
    }
}

impl Middleware for WasmMiddleware {
    fn wrap(&self, next: BoxHandler) -> BoxHandler {
        Arc::new(Wrapped {
            pool: self.pool.clone(),
            next,
        })
    }

    fn name(&self) -> &str {
        &self.name
    }
}
