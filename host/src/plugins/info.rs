//! What `GET /handlers` shows of the plugins folder's handlers.

use std::time::SystemTime;

use serde::Serialize;

use super::manager::{Entry, HandlerRoute, PluginManager, Refused, TopicRef, lock};
use crate::router::{HandlerState, StatsSnapshot};

/// One handler as `GET /handlers` shows it: an owner of a handler name, or a file refused
/// because another file owns the name it asks for (`state` `failed`, `last_error` says who).
#[derive(Debug, Clone, Serialize)]
pub struct HandlerInfo {
    /// Handler name.
    pub name: String,
    /// Plugin file name.
    pub plugin: String,
    /// sha256 of the version running (empty if none ever loaded).
    pub sha256: String,
    /// When that version was loaded (RFC 3339).
    pub loaded_at: Option<String>,
    /// Subscribed topic.
    pub subscribe: TopicRef,
    /// Output topic.
    pub publish: Option<TopicRef>,
    /// `running`, `failed`, `stopped` (or `pending`).
    pub state: HandlerState,
    /// Counters.
    pub counts: Counts,
    /// The last error: a refused start or reload (of the handler's file or of one of its
    /// `{ wasm }` middleware), or the last message failure.
    pub last_error: Option<String>,
    /// How many times a new version of the handler's file was swapped in.
    pub reloads: u64,
    /// Fuel consumed by all messages so far.
    pub fuel_consumed: u64,
    /// Middleware, outermost first.
    pub middleware: Vec<String>,
    /// The version of each `{ wasm }` middleware of the chain, outermost first.
    pub wasm_middleware: Vec<MiddlewareVersion>,
    /// Whether it is bound by a sidecar.
    pub sidecar: bool,
}

/// The version a `{ wasm }` middleware of a handler runs.
#[derive(Debug, Clone, Serialize)]
pub struct MiddlewareVersion {
    /// The middleware's file name.
    pub file: String,
    /// sha256 of the version running.
    pub sha256: String,
    /// When that version was loaded (RFC 3339).
    pub loaded_at: String,
    /// How many times a new version was swapped in.
    pub reloads: u64,
    /// Why the last new version of the file was refused (none once a good one is loaded).
    pub last_error: Option<String>,
}

/// Message counters of a handler.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    /// Handled and acked.
    pub processed: u64,
    /// Failed (nacked).
    pub failed: u64,
    /// Retries made.
    pub retried: u64,
    /// Sent to a poison queue.
    pub poisoned: u64,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn owner_info(e: &Entry) -> HandlerInfo {
    let stats: StatsSnapshot = e
        .handle
        .as_ref()
        .map(|h| h.stats().snapshot())
        .unwrap_or_default();
    let current = e.pool.as_ref().map(|p| p.current());
    let state = match &e.handle {
        Some(h) if e.compiling && !h.is_stopped() => HandlerState::Pending,
        Some(h) => h.state(),
        None => e.idle,
    };
    let wasm_middleware: Vec<MiddlewareVersion> = e
        .wasm_middleware
        .iter()
        .map(|m| {
            let v = m.pool.current();
            MiddlewareVersion {
                file: m.file.clone(),
                sha256: v.sha256.clone(),
                loaded_at: rfc3339(v.loaded_at),
                reloads: m.reloads,
                last_error: m.error.clone(),
            }
        })
        .collect();
    let middleware_error = e.wasm_middleware.iter().find_map(|m| m.error.clone());
    HandlerInfo {
        name: e.route.name.clone(),
        plugin: e.route.plugin.clone(),
        sha256: current
            .as_ref()
            .map(|c| c.sha256.clone())
            .unwrap_or_default(),
        loaded_at: current.as_ref().map(|c| rfc3339(c.loaded_at)),
        subscribe: e.route.subscribe.clone(),
        publish: e.route.publish.clone(),
        state,
        counts: Counts {
            processed: stats.processed,
            failed: stats.failed,
            retried: stats.retried,
            poisoned: stats.poisoned,
        },
        last_error: e
            .last_error
            .clone()
            .or(middleware_error)
            .or(stats.last_error),
        reloads: e.reloads,
        fuel_consumed: e.pool.as_ref().map_or(0, |p| p.fuel_used()),
        middleware: e.middleware.clone(),
        wasm_middleware,
        sidecar: e.route.from_sidecar,
    }
}

fn refused_info(r: &Refused) -> HandlerInfo {
    let route: &HandlerRoute = &r.route;
    HandlerInfo {
        name: route.name.clone(),
        plugin: route.plugin.clone(),
        sha256: String::new(),
        loaded_at: None,
        subscribe: route.subscribe.clone(),
        publish: route.publish.clone(),
        state: HandlerState::Failed,
        counts: Counts::default(),
        last_error: Some(r.error.clone()),
        reloads: 0,
        fuel_consumed: 0,
        middleware: Vec::new(),
        wasm_middleware: Vec::new(),
        sidecar: route.from_sidecar,
    }
}

impl PluginManager {
    /// What `GET /handlers` shows, by name; a name's owner comes before the files refused it.
    pub fn infos(&self) -> Vec<HandlerInfo> {
        let st = lock(&self.state);
        let mut out: Vec<(bool, HandlerInfo)> = st
            .entries
            .values()
            .map(|e| (false, owner_info(e)))
            .chain(st.refused.iter().map(|r| (true, refused_info(r))))
            .collect();
        out.sort_by(|(ra, a), (rb, b)| (&a.name, ra, &a.plugin).cmp(&(&b.name, rb, &b.plugin)));
        out.into_iter().map(|(_, i)| i).collect()
    }
}
