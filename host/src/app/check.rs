//! The whole configuration checked before anything serves: `wasmill run` refuses to start on
//! any problem, `wasmill check --config FILE` reports them without running anything. Every
//! `[[handlers]]` entry and every sidecar is checked (names, plugin files, topics and named
//! pub/subs, grants, limits, each middleware entry and its options, `{ wasm }` middleware
//! components), each handler plugin is compiled (through the compile cache) and must implement
//! the handler world, and each backend's settings are checked without connecting. Every
//! problem is reported, each naming the file, the entry (`handlers[0]`, or the sidecar file)
//! and the key.

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

use crate::config::options::join_key;
use crate::config::{Config, HandlerConfig, TopicSpec, WasmMiddlewareEntry};
use crate::error::{Error, Result};
use crate::pubsub::registry::{self, KINDS};
use crate::router::middleware::FailurePolicy;
use crate::router::middleware::MiddlewareSpec;
use crate::router::middleware::failure_policy::has_own_failure_handling;
use crate::wasm::{WasmEngine, World};
use futures::StreamExt;

mod rules;

use rules::*;

/// What a check found: counts of what was checked and every problem.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// `[[handlers]]` entries checked.
    pub handlers: usize,
    /// Sidecars (`FILE.toml` beside `FILE.wasm`) checked.
    pub sidecars: usize,
    /// Backends checked (`[pubsub.NAME]`, plus the built-in `memory`).
    pub pubsubs: usize,
    /// Distinct `{ wasm = … }` middleware components checked.
    pub wasm_middleware: usize,
    /// The problems, one line each: `FILE: KEY: what is wrong`.
    pub errors: Vec<String>,
}

impl CheckReport {
    /// Whether nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }

    /// One line saying what was checked.
    pub fn summary(&self, file: &str) -> String {
        format!(
            "{file}: {} handler(s), {} sidecar(s), {} pub/sub(s), {} wasm middleware: {}",
            self.handlers,
            self.sidecars,
            self.pubsubs,
            self.wasm_middleware,
            if self.is_ok() {
                "ok".to_string()
            } else {
                format!("{} error(s)", self.errors.len())
            }
        )
    }

    /// The report when nothing is wrong, else a config error listing every problem.
    pub fn into_result(self) -> Result<CheckReport> {
        if self.is_ok() {
            return Ok(self);
        }
        Err(Error::Config(format!(
            "{} configuration error(s):\n  {}",
            self.errors.len(),
            self.errors.join("\n  ")
        )))
    }
}

/// The static checks of one sidecar (as the plugins-folder watcher reads it at run time):
/// everything but compiling, errors joined.
pub fn check_sidecar(
    cfg: &Config,
    plugins_dir: &Path,
    sidecar: &Path,
    h: &HandlerConfig,
) -> Result<()> {
    let file = sidecar.display().to_string();
    let mut s = Static::new(cfg, plugins_dir);
    s.handler(
        &At {
            file: &file,
            key: String::new(),
        },
        h,
    );
    if s.errors.is_empty() {
        Ok(())
    } else {
        Err(Error::Config(s.errors.join("; ")))
    }
}

/// The `.wasm` files of the plugins folder that a sidecar binds (the configured plugins
/// excepted: their `[[handlers]]` entry wins, as in the plugins manager), sorted.
fn sidecars(cfg: &Config, plugins_dir: &Path) -> Vec<(PathBuf, PathBuf)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(plugins_dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
        .filter(|p| p.with_extension("toml").is_file())
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            !cfg.handlers.iter().any(|h| h.plugin == name)
        })
        .map(|p| (p.with_extension("toml"), p))
        .collect()
}

/// Checks `cfg` as `wasmill run` would use it with the plugins folder `plugins_dir`,
/// compiling every component with `engine`. Returns every problem found.
pub async fn check_config(cfg: &Config, plugins_dir: &Path, engine: &WasmEngine) -> CheckReport {
    let (mut report, compiles) = check_statically(cfg, plugins_dir);
    let compiled = compile_all(engine, &compiles).await;
    for c in &compiles {
        match &compiled[&c.path] {
            Err(e) => report.errors.push(format!("{}: {}: {e}", c.file, c.key)),
            Ok(w) if *w != c.world => {
                let hint = match c.world {
                    World::Handler => {
                        "; a middleware component goes in a middleware list as { wasm = \"FILE.wasm\" }"
                    }
                    World::Middleware => {
                        "; a handler component goes in a [[handlers]] entry or a sidecar"
                    }
                };
                report.errors.push(format!(
                    "{}: {}: {} implements {w}, not {}{hint}",
                    c.file,
                    c.key,
                    c.path.display(),
                    c.world
                ));
            }
            Ok(_) => {}
        }
    }
    report
}

/// The checks of [`check_config`] that need no compiler (`wasmill run` makes them before it
/// starts; the components compile behind their subscriptions, and one that does not compile
/// is listed as failed in `GET /readyz` and `GET /handlers`).
pub fn check_static(cfg: &Config, plugins_dir: &Path) -> CheckReport {
    check_statically(cfg, plugins_dir).0
}

/// The report of the static checks, and the components left to compile.
fn check_statically(cfg: &Config, plugins_dir: &Path) -> (CheckReport, Vec<Compile>) {
    let mut s = Static::new(cfg, plugins_dir);
    s.backends();
    s.http_api();
    s.components();
    let mut names: HashMap<String, String> = HashMap::new();
    let mut name_taken = |s: &mut Static, at: &At, name: &Option<String>| match name {
        None => s.errors.push(at.err("", "missing key \"name\"")),
        Some(n) if n.is_empty() => s.errors.push(at.err("name", "must not be empty")),
        Some(n) => {
            let here = if at.key.is_empty() {
                at.file.to_string()
            } else {
                at.key.clone()
            };
            if let Some(first) = names.get(n) {
                s.errors.push(at.err(
                    "name",
                    format!("duplicate handler name {n:?} (also {first})"),
                ));
            } else {
                names.insert(n.clone(), here);
            }
        }
    };
    let f = cfg.file.as_str();
    for (i, h) in cfg.handlers.iter().enumerate() {
        let at = At {
            file: f,
            key: format!("handlers[{i}]"),
        };
        name_taken(&mut s, &at, &h.name);
        s.handler(&at, h);
    }
    let sidecars = sidecars(cfg, plugins_dir);
    let sidecar_files: Vec<String> = sidecars
        .iter()
        .map(|(t, _)| t.display().to_string())
        .collect();
    for ((toml, wasm), file) in sidecars.iter().zip(&sidecar_files) {
        match HandlerConfig::from_sidecar(toml, wasm) {
            Err(e) => s.errors.push(e.to_string()),
            Ok(h) => {
                let at = At {
                    file,
                    key: String::new(),
                };
                name_taken(&mut s, &at, &h.name);
                s.handler(&at, &h);
            }
        }
    }

    let mut report = CheckReport {
        handlers: cfg.handlers.len(),
        sidecars: sidecars.len(),
        pubsubs: cfg.pubsub.len() + usize::from(!cfg.pubsub.contains_key("memory")),
        ..CheckReport::default()
    };
    let compiles = std::mem::take(&mut s.compiles);
    let mut counted: HashSet<&PathBuf> = HashSet::new();
    for c in &compiles {
        if counted.insert(&c.path) && c.world == World::Middleware {
            report.wasm_middleware += 1;
        }
    }
    report.errors = s.errors;
    (report, compiles)
}

/// Compiles each distinct file of `compiles` (through the compile cache), as many at once as
/// the machine has cores: a Python or JS component takes seconds, and they no longer wait for
/// one another. Each file's world, or why it was refused.
async fn compile_all(
    engine: &WasmEngine,
    compiles: &[Compile],
) -> HashMap<PathBuf, std::result::Result<World, String>> {
    let mut paths: Vec<&PathBuf> = Vec::new();
    for c in compiles {
        if !paths.contains(&&c.path) {
            paths.push(&c.path);
        }
    }
    let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
    futures::stream::iter(paths)
        .map(|path| async move {
            let r = engine
                .compile_file(path)
                .await
                .map(|p| p.info.world)
                .map_err(|e| e.to_string());
            (path.clone(), r)
        })
        .buffer_unordered(parallel)
        .collect()
        .await
}

#[cfg(test)]
#[path = "check_tests.rs"]
mod tests;
