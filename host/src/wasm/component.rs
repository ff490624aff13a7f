//! Compiling a component (through the authenticated compile cache, [`super::cache`]) and
//! checking which Wasmill world it implements.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;
use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use super::bindings::{handler, handler_sync, handler2, handler2_sync, middleware, middleware2};
use super::engine::WasmEngine;
use super::state::PluginState;
use crate::error::{Error, Result};

/// Which Wasmill world a component implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum World {
    /// `wasmill:plugin/handler`.
    Handler,
    /// `wasmill:plugin/middleware`.
    Middleware,
}

impl std::fmt::Display for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            World::Handler => "wasmill:plugin/handler",
            World::Middleware => "wasmill:plugin/middleware",
        })
    }
}

/// Which version of the `wasmill:plugin` package a component implements. The host runs both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum WitVersion {
    /// `wasmill:plugin@0.1.0`: the message passed as a record (copied into and out of the
    /// guest).
    #[serde(rename = "0.1.0")]
    V0_1,
    /// `wasmill:plugin@0.2.0`: the message a resource held by the host.
    #[serde(rename = "0.2.0")]
    V0_2,
}

impl std::fmt::Display for WitVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WitVersion::V0_1 => "0.1.0",
            WitVersion::V0_2 => "0.2.0",
        })
    }
}

/// What a component imports and exports, and which world that makes it.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentInfo {
    /// The world it implements.
    pub world: World,
    /// The version of the package it implements.
    pub version: WitVersion,
    /// Names of its imports.
    pub imports: Vec<String>,
    /// Names of its exports.
    pub exports: Vec<String>,
}

/// The instantiation-ready form of a plugin's world.
pub(crate) enum Pre {
    /// A handler whose imports never wait: instantiated and called synchronously, without
    /// the async call's fiber, and the same handler linked async for when a call computes
    /// too long to hold its thread (`InstancePool`'s demotion).
    SyncHandler(
        handler_sync::HandlerPre<PluginState>,
        handler::HandlerPre<PluginState>,
    ),
    Handler(handler::HandlerPre<PluginState>),
    Middleware(middleware::MiddlewarePre<PluginState>),
    /// 0.2.0's handler, called synchronously (and async once demoted), as `SyncHandler`.
    SyncHandler2(
        handler2_sync::HandlerPre<PluginState>,
        handler2::HandlerPre<PluginState>,
    ),
    Handler2(handler2::HandlerPre<PluginState>),
    Middleware2(middleware2::MiddlewarePre<PluginState>),
}

impl ComponentInfo {
    /// The world with its version: `wasmill:plugin/handler@0.2.0`.
    pub fn world_id(&self) -> String {
        format!("{}@{}", self.world, self.version)
    }
}

/// A compiled, validated plugin version.
pub struct CompiledPlugin {
    /// The plugin's name (its file name).
    pub name: Arc<str>,
    /// Hex sha256 of the file's bytes.
    pub sha256: String,
    /// When this version was loaded.
    pub loaded_at: SystemTime,
    /// What it imports and exports.
    pub info: ComponentInfo,
    pub(crate) pre: Pre,
}

impl std::fmt::Debug for CompiledPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledPlugin")
            .field("name", &self.name)
            .field("sha256", &self.sha256)
            .field("world", &self.info.world)
            .finish()
    }
}

/// Hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn err(plugin: &str, message: impl std::fmt::Display) -> Error {
    Error::Wasm {
        plugin: plugin.to_string(),
        message: message.to_string(),
    }
}

const COMPONENT_LAYER: [u8; 4] = [0x0d, 0x00, 0x01, 0x00];

/// Refuses bytes that are not a component before handing them to the compiler, with a
/// message a user can act on.
fn check_header(name: &str, bytes: &[u8]) -> Result<()> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(err(
            name,
            format!(
                "not a WebAssembly file ({} bytes, no \\0asm header): truncated or not wasm",
                bytes.len()
            ),
        ));
    }
    if bytes[4..8] != COMPONENT_LAYER {
        return Err(err(
            name,
            "a core WebAssembly module, not a component: build for wasm32-wasip2 or wrap it with `wasm-tools component new`",
        ));
    }
    Ok(())
}

/// Which world the component's imports and exports make it, or why it is neither.
fn detect_world(
    name: &str,
    engine: &wasmtime::Engine,
    component: &Component,
) -> Result<ComponentInfo> {
    let ty = component.component_type();
    let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_string()).collect();
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    if !exports.iter().any(|e| e == "handle") {
        return Err(err(
            name,
            format!(
                "does not implement a Wasmill world: no export `handle` (exports: {})",
                if exports.is_empty() {
                    "none".into()
                } else {
                    exports.join(", ")
                }
            ),
        ));
    }
    let mut world = World::Handler;
    let of = |v: &str| {
        imports.iter().any(|i| {
            i.starts_with(&format!("wasmill:plugin/host@{v}"))
                || i.starts_with(&format!("wasmill:plugin/types@{v}"))
        })
    };
    let version = match (of("0.1."), of("0.2.")) {
        (true, true) => {
            return Err(err(
                name,
                "imports both wasmill:plugin@0.1.0 and @0.2.0: a plugin implements one version",
            ));
        }
        (_, true) => WitVersion::V0_2,
        _ => WitVersion::V0_1,
    };
    for import in &imports {
        let allowed = import.starts_with("wasi:")
            || import.starts_with("wasmill:plugin/host@0.1")
            || import.starts_with("wasmill:plugin/types@0.1")
            || import.starts_with("wasmill:plugin/host@0.2")
            || import.starts_with("wasmill:plugin/types@0.2")
            // 0.2.0's worlds `use` the message resource: the component imports its type.
            || (version == WitVersion::V0_2 && (import == "message" || import == "handler-error"));
        if import == "next" {
            world = World::Middleware;
        } else if !allowed {
            return Err(err(
                name,
                format!(
                    "unexpected import `{import}`: a Wasmill plugin may import only wasmill:plugin/host, WASI and (middleware) `next`"
                ),
            ));
        }
    }
    Ok(ComponentInfo {
        world,
        version,
        imports,
        exports,
    })
}

/// The fix for a known cause of a link failure, read from the component's imports: the
/// host grants no `wasi:http`, which componentize-js imports unless built without its `http`
/// and `fetch-event` features.
pub fn link_hint(imports: &[String]) -> Option<&'static str> {
    imports
        .iter()
        .any(|i| i.starts_with("wasi:http/"))
        .then_some(
            "it imports wasi:http, which the host does not grant: built with componentize-js's \
         http feature? rebuild with `-d http -d fetch-event` (jco componentize: \
         `--disable http --disable fetch-event`)",
        )
}

/// Says which world `bytes` implements and what it imports, without keeping it loaded
/// (`wasmill check`).
pub fn inspect(engine: &WasmEngine, name: &str, bytes: &[u8]) -> Result<ComponentInfo> {
    check_header(name, bytes)?;
    let component = Component::new(engine.engine(), bytes)
        .map_err(|e| err(name, format!("invalid component: {e:#}")))?;
    let info = detect_world(name, engine.engine(), &component)?;
    prepare(engine, name, &component, &info)?;
    Ok(info)
}

fn prepare(
    engine: &WasmEngine,
    name: &str,
    component: &Component,
    info: &ComponentInfo,
) -> Result<Pre> {
    let inner = &engine.inner;
    let link = |linker: &wasmtime::component::Linker<PluginState>, what: &str| {
        linker.instantiate_pre(component).map_err(|e| {
            let hint = link_hint(&info.imports)
                .map(|h| format!(" ({h})"))
                .unwrap_or_default();
            err(name, format!("cannot link as a {what}: {e:#}{hint}"))
        })
    };
    let typed =
        |e: wasmtime::Error| err(name, format!("export `handle` has the wrong type: {e:#}"));
    // Linking a handler fails in the synchronous linker when it imports something that may
    // wait (publish, clock subscriptions, ...): it then runs async.
    let sync = inner.handler_sync_linker.instantiate_pre(component).ok();
    Ok(match (info.world, info.version) {
        (World::Handler, WitVersion::V0_1) => {
            let pre =
                handler::HandlerPre::new(link(&inner.handler_linker, "handler")?).map_err(typed)?;
            match sync.and_then(|s| handler_sync::HandlerPre::new(s).ok()) {
                Some(sync) => Pre::SyncHandler(sync, pre),
                None => Pre::Handler(pre),
            }
        }
        (World::Handler, WitVersion::V0_2) => {
            let pre = handler2::HandlerPre::new(link(&inner.handler_linker, "handler")?)
                .map_err(typed)?;
            match sync.and_then(|s| handler2_sync::HandlerPre::new(s).ok()) {
                Some(sync) => Pre::SyncHandler2(sync, pre),
                None => Pre::Handler2(pre),
            }
        }
        (World::Middleware, WitVersion::V0_1) => Pre::Middleware(
            middleware::MiddlewarePre::new(link(&inner.middleware_linker, "middleware")?)
                .map_err(typed)?,
        ),
        (World::Middleware, WitVersion::V0_2) => Pre::Middleware2(
            middleware2::MiddlewarePre::new(link(&inner.middleware2_linker, "middleware")?)
                .map_err(typed)?,
        ),
    })
}

impl WasmEngine {
    /// Compiles and validates a plugin (on a blocking thread: compiling takes milliseconds
    /// to seconds and must stay off the message path). Uses the compile cache when set.
    pub async fn compile(&self, name: &str, bytes: Vec<u8>) -> Result<Arc<CompiledPlugin>> {
        let engine = self.clone();
        let name = name.to_string();
        tokio::task::spawn_blocking(move || engine.compile_blocking(&name, &bytes))
            .await
            .map_err(|e| Error::Other(format!("compile task: {e}")))?
    }

    /// Compiles the file at `path`.
    pub async fn compile_file(&self, path: &Path) -> Result<Arc<CompiledPlugin>> {
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        self.compile(&name, bytes).await
    }

    /// Compiles synchronously (see [`WasmEngine::compile`]).
    pub fn compile_blocking(&self, name: &str, bytes: &[u8]) -> Result<Arc<CompiledPlugin>> {
        check_header(name, bytes)?;
        let sha256 = sha256_hex(bytes);
        let cache = self.inner.cache.as_ref();
        let (component, fresh) = match cache.and_then(|c| c.load(self.engine(), &sha256)) {
            Some(c) => (c, false),
            None => {
                let c = Component::new(self.engine(), bytes)
                    .map_err(|e| err(name, format!("invalid component: {e:#}")))?;
                (c, true)
            }
        };
        let info = detect_world(name, self.engine(), &component)?;
        let pre = prepare(self, name, &component, &info)?;
        // Cached only once its world and imports are accepted: a refused component (tens of
        // megabytes for Python or JS) never takes room in the cache.
        if let (true, Some(cache)) = (fresh, cache) {
            cache.store(&sha256, &component);
        }
        Ok(Arc::new(CompiledPlugin {
            name: name.into(),
            sha256,
            loaded_at: SystemTime::now(),
            info,
            pre,
        }))
    }
}

#[cfg(test)]
mod hint_tests {
    use super::link_hint;

    #[test]
    fn a_wasi_http_import_names_the_componentize_js_flags() {
        let imports = vec![
            "wasi:io/streams@0.2.3".to_string(),
            "wasi:http/types@0.2.3".to_string(),
        ];
        let hint = link_hint(&imports).expect("a hint for wasi:http");
        assert!(hint.contains("-d http -d fetch-event"), "{hint}");
        assert_eq!(link_hint(&imports[..1]), None, "no hint without wasi:http");
    }
}
