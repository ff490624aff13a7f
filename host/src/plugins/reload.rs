//! What a file event does: check a new version and swap it in (for the handlers the file
//! runs and the `{ wasm }` middleware it is), start what the file should run, stop what it
//! no longer may.
//!
//! A new version is compiled off the message path and checked before anything changes: it
//! must compile, link, and implement the world of every place it serves (a handler's file a
//! handler, a middleware's file a middleware). Otherwise nothing is swapped: the previous
//! version keeps serving and the refusal is logged and shown in `GET /handlers`.

use std::path::Path;
use std::sync::Arc;

use super::manager::{PluginManager, file_name, lock, short};
use super::watch::FileEvent;
use crate::error::Result;
use crate::wasm::{CompiledPlugin, World};

/// The new version if it may serve as `world`, else why not.
fn check(
    plugin: &str,
    compiled: &Result<Arc<CompiledPlugin>>,
    world: World,
) -> std::result::Result<Arc<CompiledPlugin>, String> {
    match compiled {
        Err(e) => Err(e.to_string()),
        Ok(c) if c.info.world != world => Err(format!(
            "plugin {plugin}: implements {}, but is used as {world}",
            c.info.world
        )),
        Ok(c) => Ok(c.clone()),
    }
}

impl PluginManager {
    /// Handles one event of the plugins folder. The events of one plugin (its `.wasm` and
    /// its sidecar) must be handled in order, one at a time; those of different plugins may
    /// run concurrently ([`PluginManager::watch`] does both).
    pub async fn on_event(self: &Arc<Self>, event: FileEvent) {
        let path = event.path().to_path_buf();
        let is_wasm = path.extension().is_some_and(|e| e == "wasm");
        match (event, is_wasm) {
            (FileEvent::Ready(_), true) => self.file_ready(&path).await,
            (FileEvent::Removed(_), true) => self.file_removed(&path).await,
            (FileEvent::Ready(_), false) => self.sidecar_ready(&path).await,
            (FileEvent::Removed(_), false) => {
                let plugin = file_name(&path.with_extension("wasm"));
                self.release(&plugin, true, "sidecar removed").await;
            }
        }
    }

    async fn file_ready(self: &Arc<Self>, path: &Path) {
        let plugin = file_name(path);
        let (handlers, middleware_users) = {
            let st = lock(&self.state);
            let handlers: Vec<String> = st
                .entries
                .values()
                .filter(|e| e.route.plugin == plugin && e.is_live())
                .map(|e| e.route.name.clone())
                .collect();
            let users: Vec<String> = st
                .entries
                .values()
                .filter(|e| e.wasm_middleware.iter().any(|m| m.file == plugin))
                .map(|e| e.route.name.clone())
                .collect();
            (handlers, users)
        };
        if !handlers.is_empty() || !middleware_users.is_empty() {
            let compiled = match super::confine::confined(&self.dir, path) {
                Ok(real) => self.engine.compile_file(&real).await,
                Err(e) => Err(e),
            };
            self.swap_handlers(&plugin, &handlers, &compiled);
            self.swap_middleware(&plugin, &middleware_users, &compiled);
        }
        self.start_missing(path).await;
    }

    /// Swaps a checked new version into the running handlers `names` of `plugin`.
    fn swap_handlers(
        &self,
        plugin: &str,
        names: &[String],
        compiled: &Result<Arc<CompiledPlugin>>,
    ) {
        if names.is_empty() {
            return;
        }
        let checked = check(plugin, compiled, World::Handler);
        let mut swapped = Vec::new();
        {
            let mut st = lock(&self.state);
            for name in names {
                let Some(e) = st
                    .entries
                    .get_mut(name)
                    .filter(|e| e.route.plugin == plugin && e.is_live())
                else {
                    continue;
                };
                let Some(pool) = e.pool.clone() else { continue };
                match &checked {
                    Err(err) => {
                        tracing::error!(handler = %name, plugin, "reload refused, the previous version keeps serving: {err}");
                        e.last_error = Some(format!("reload refused: {err}"));
                    }
                    Ok(new) => {
                        e.last_error = None;
                        let old = pool.current().sha256.clone();
                        if old == new.sha256 {
                            continue;
                        }
                        pool.replace(new.clone());
                        e.reloads += 1;
                        tracing::info!(handler = %name, plugin, from = %short(&old), to = %short(&new.sha256), "plugin reloaded: new version serves the next message");
                        swapped.push(name.clone());
                    }
                }
            }
        }
        let listeners = lock(&self.reload_listeners).clone();
        for name in swapped {
            for f in &listeners {
                f(&name);
            }
        }
    }

    /// Swaps a checked new version of the `{ wasm }` middleware `file` into the chain of
    /// every handler of `users` that has it.
    fn swap_middleware(
        &self,
        file: &str,
        users: &[String],
        compiled: &Result<Arc<CompiledPlugin>>,
    ) {
        if users.is_empty() {
            return;
        }
        let checked = check(file, compiled, World::Middleware);
        let mut st = lock(&self.state);
        for name in users {
            let Some(e) = st.entries.get_mut(name) else {
                continue;
            };
            for slot in e.wasm_middleware.iter_mut().filter(|m| m.file == file) {
                match &checked {
                    Err(err) => {
                        tracing::error!(handler = %name, middleware = %file, "middleware reload refused, the previous version keeps serving: {err}");
                        slot.error = Some(format!("middleware {file}: reload refused: {err}"));
                    }
                    Ok(new) => {
                        slot.error = None;
                        let old = slot.pool.current().sha256.clone();
                        if old == new.sha256 {
                            continue;
                        }
                        slot.pool.replace(new.clone());
                        slot.reloads += 1;
                        tracing::info!(handler = %name, middleware = %file, from = %short(&old), to = %short(&new.sha256), "middleware reloaded: new version serves the next message");
                    }
                }
            }
        }
    }

    /// Starts the handlers `path` should run but that do not run: its configured routes, or
    /// else the route of its sidecar.
    async fn start_missing(self: &Arc<Self>, path: &Path) {
        let plugin = file_name(path);
        let runs = |name: Option<&str>| {
            lock(&self.state).entries.values().any(|e| {
                e.route.plugin == plugin && e.is_live() && name.is_none_or(|n| e.route.name == n)
            })
        };
        let configured: Vec<_> = self
            .configured
            .iter()
            .filter(|r| r.plugin == plugin)
            .cloned()
            .collect();
        if configured.is_empty() {
            if !runs(None)
                && let Some(route) = self.read_sidecar(path)
            {
                self.start(route).await;
            }
            return;
        }
        for route in configured {
            if !runs(Some(&route.name)) {
                self.start(route).await;
            }
        }
    }

    async fn file_removed(self: &Arc<Self>, path: &Path) {
        let plugin = file_name(path);
        let users = lock(&self.state)
            .entries
            .values()
            .filter(|e| e.wasm_middleware.iter().any(|m| m.file == plugin))
            .count();
        if users > 0 {
            tracing::warn!(middleware = %plugin, handlers = users, "middleware file removed: the handlers using it keep the version they loaded");
        }
        self.release(&plugin, false, "plugin removed").await;
    }

    /// A sidecar was written: its handler restarts with the new route. An unreadable or
    /// invalid sidecar changes nothing (the running handler keeps its route).
    async fn sidecar_ready(self: &Arc<Self>, sidecar: &Path) {
        let wasm = sidecar.with_extension("wasm");
        let plugin = file_name(&wasm);
        if self.configured.iter().any(|r| r.plugin == plugin) {
            tracing::warn!(sidecar = %sidecar.display(), "sidecar ignored: the config binds {plugin}");
            return;
        }
        if !wasm.exists() {
            // The sidecar waits for its plugin: the plugin's event starts it.
            return;
        }
        match self.parse_sidecar(sidecar, &wasm) {
            Ok(route) => {
                self.release(&plugin, true, "sidecar changed").await;
                self.start(route).await;
            }
            Err(err) => {
                tracing::error!(sidecar = %sidecar.display(), "invalid sidecar, nothing changed: {err}");
                let mut st = lock(&self.state);
                for e in st
                    .entries
                    .values_mut()
                    .filter(|e| e.route.plugin == plugin && e.route.from_sidecar)
                {
                    e.last_error = Some(format!("sidecar refused: {err}"));
                }
            }
        }
    }
}
