//! The HTTP API of `wasmill run` (SPEC.md): publish, Server-Sent Events per topic, handlers,
//! health, readiness (`ready.rs`) and Prometheus metrics. `access.rs` decides who may use it (Host, Origin, token),
//! `conn.rs` bounds its connections.

pub mod access;
pub mod components;
pub mod conn;
pub mod envelope;
mod metrics;
pub mod ready;
pub mod tail;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router as HttpRouter;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

pub use access::Access;
pub use conn::ConnLimits;
pub use envelope::{Envelope, parse_publish_body};
pub use metrics::render_metrics;

use crate::components::poison_keeper::PoisonKeeper;
use crate::plugins::manager::PluginManager;
use crate::pubsub::registry::Backend;
use crate::router::Router;

/// What the API serves from.
#[derive(Clone)]
pub struct ApiState {
    /// Backends by config name.
    pub backends: Arc<HashMap<String, Backend>>,
    /// The name of the default backend.
    pub default_pubsub: String,
    /// The WASM handlers, for `GET /handlers`.
    pub plugins: Option<Arc<PluginManager>>,
    /// The router, for metrics of every handler.
    pub router: Router,
    /// Largest accepted request body.
    pub max_body: usize,
    /// Who may use the API.
    pub access: Arc<Access>,
    /// Bounds on connections.
    pub limits: ConnLimits,
    /// The in-memory poison topics kept for replay.
    pub poison: Arc<PoisonKeeper>,
}

/// The query of the topic routes.
#[derive(Debug, Deserialize)]
struct PubSubQuery {
    /// A named backend (default: the default one).
    pubsub: Option<String>,
    /// `reply=1` on a publish: wait for the reply (request-reply).
    reply: Option<String>,
    /// How long to wait for the reply (`5s` by default).
    timeout: Option<String>,
}

pub(crate) fn error(status: StatusCode, reason: impl std::fmt::Display) -> Response {
    (status, axum::Json(json!({ "error": reason.to_string() }))).into_response()
}

impl ApiState {
    fn backend(&self, q: &PubSubQuery) -> Result<&Backend, Box<Response>> {
        let name = q.pubsub.as_deref().unwrap_or(&self.default_pubsub);
        self.backends.get(name).ok_or_else(|| {
            let mut known: Vec<&str> = self.backends.keys().map(String::as_str).collect();
            known.sort();
            Box::new(error(
                StatusCode::NOT_FOUND,
                format!("unknown pubsub {name:?}; configured: {}", known.join(", ")),
            ))
        })
    }
}

/// The API's routes.
pub fn routes(state: ApiState) -> HttpRouter {
    let limit = state.max_body;
    let access = state.access.clone();
    HttpRouter::new()
        .route("/topics/{topic}", post(publish))
        .route("/topics/{topic}/messages", get(stream))
        .route("/topics/{topic}/replay", post(components::replay_route))
        .route("/handlers", get(handlers))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready::readyz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(access, access::guard))
}

/// Serves the API on `listener` within `state.limits` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = state.limits;
    conn::serve(listener, routes(state), limits, shutdown).await
}

async fn publish(
    State(state): State<ApiState>,
    Path(topic): Path<String>,
    Query(q): Query<PubSubQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let backend = match state.backend(&q) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(envelope::is_json_media_type);
    let msg = match parse_publish_body(is_json, body) {
        Ok(m) => m,
        Err(reason) => return error(StatusCode::BAD_REQUEST, reason),
    };
    if components::wants_reply(q.reply.as_deref()) {
        return components::publish_and_wait(&state, &q, &topic, msg).await;
    }
    let uuid = msg.uuid.clone();
    match backend.publisher.publish(&topic, vec![msg]).await {
        Ok(()) => (StatusCode::ACCEPTED, axum::Json(json!({ "uuid": uuid }))).into_response(),
        Err(e @ crate::Error::Limit(_)) => error(
            StatusCode::TOO_MANY_REQUESTS,
            format!("publish to {topic}: {e}"),
        ),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("publish to {topic}: {e}"),
        ),
    }
}

async fn stream(
    State(state): State<ApiState>,
    Path(topic): Path<String>,
    Query(q): Query<PubSubQuery>,
) -> Response {
    let backend = match state.backend(&q) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let sub = match backend.tail_subscriber().await {
        Ok(s) => s,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    if let Err(e) = sub.subscribe_initialize(&topic).await {
        return error(StatusCode::SERVICE_UNAVAILABLE, e);
    }
    let subscription = match sub.subscribe(&topic).await {
        Ok(s) => s,
        Err(e @ crate::Error::Limit(_)) => return error(StatusCode::TOO_MANY_REQUESTS, e),
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    // One event per message; when the client goes away the reader ends the tail, and with it
    // its consumer group on the broker.
    Sse::new(tail::events(sub, topic, subscription))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

async fn handlers(State(state): State<ApiState>) -> Response {
    let infos = state
        .plugins
        .as_ref()
        .map(|p| p.infos())
        .unwrap_or_default();
    axum::Json(infos).into_response()
}

async fn metrics(State(state): State<ApiState>) -> Response {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        render_metrics(&state.router, state.plugins.as_deref()),
    )
        .into_response()
}
