//! A plugin as a router [`Handler`] or [`Middleware`].

use std::sync::Arc;

use async_trait::async_trait;

use super::coalesce::Coalescer;
use super::instance::InstancePool;
use crate::message::Message;
use crate::router::{BoxHandler, Handler, HandlerResult, Middleware};

/// A handler component bound to one subscriber, with its instance pool.
#[derive(Clone)]
pub struct WasmHandler {
    pool: Arc<InstancePool>,
    /// With `batch = N` > 1: the queue that gathers messages into `handle-batch` calls.
    batch: Option<Arc<Coalescer>>,
}

impl WasmHandler {
    /// A handler running calls in `pool`, one message per call.
    pub fn new(pool: Arc<InstancePool>) -> Self {
        WasmHandler { pool, batch: None }
    }

    /// A handler handing the guest up to `max` messages per call (`batch = N`). A plugin
    /// without `handle-batch` (0.1.0) is called once per message, with a warning.
    pub fn batched(pool: Arc<InstancePool>, max: usize) -> Self {
        if max <= 1 {
            return Self::new(pool);
        }
        if !pool.supports_batch() {
            tracing::warn!(
                plugin = %pool.current().name,
                "batch = {max}: the plugin exports no handle-batch (a wasmill:plugin@0.1.0 \
                 handler); it is called once per message"
            );
            return Self::new(pool);
        }
        let batch = Some(Coalescer::new(pool.clone(), max));
        WasmHandler { pool, batch }
    }

    /// The instance pool (version, limits, fuel used, hot swap).
    pub fn pool(&self) -> &Arc<InstancePool> {
        &self.pool
    }
}

#[async_trait]
impl Handler for WasmHandler {
    async fn handle(&self, msg: Message) -> HandlerResult {
        match &self.batch {
            Some(b) => b.handle(msg).await,
            None => self.pool.call(&msg, None).await,
        }
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
