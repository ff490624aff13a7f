//! `wasmill new handler|middleware NAME --lang L`: a plugin project that builds anywhere, in or
//! out of this repository. Every project carries the WIT it is built against (`wit/plugin.wit`,
//! embedded in this binary) and, where the language needs one, a thin SDK written next to the
//! user's code, so nothing is fetched from a registry that does not have it.

mod templates;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;

pub use templates::{C_SDK, GO_SDK, JS_SDK, Kind, Lang, PYTHON_SDK, WIT};

/// Arguments of `wasmill new`.
#[derive(Args)]
pub struct NewArgs {
    /// `handler` or `middleware`.
    kind: String,
    /// The plugin's name (letters, digits, `-` and `_`; the `.wasm` file is named after it).
    name: String,
    /// The language: rust, python, js, c or go.
    #[arg(long, default_value = "rust")]
    lang: String,
    /// Where the project goes (default: `plugins` when that folder exists here, else the
    /// current directory).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// `wasmill new`.
pub fn new(a: NewArgs) -> Result<()> {
    let kind = Kind::parse(&a.kind)?;
    let lang = Lang::parse(&a.lang)?;
    check_name(&a.name)?;
    let parent = a.dir.unwrap_or_else(|| {
        let plugins = PathBuf::from("plugins");
        if plugins.is_dir() {
            plugins
        } else {
            PathBuf::from(".")
        }
    });
    let project = parent.join(&a.name);
    if project.exists() {
        bail!("{} already exists", project.display());
    }
    write_project(&project, &a.name, kind, lang)?;
    println!(
        "created {} ({} {}) — build it with `wasmill build {}`{}",
        project.display(),
        lang.name(),
        kind.name(),
        project.display(),
        lang.toolchain_hint()
    );
    Ok(())
}

/// A plugin name: what a `.wasm` file, a cargo package and a Python module can all be named.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        bail!(
            "{name:?}: a plugin name starts with a letter and holds only letters, digits, \
             '-' and '_' (at most 64)"
        );
    }
    Ok(())
}

/// Writes every file of a new project into `project` (which must not exist yet).
pub fn write_project(project: &Path, name: &str, kind: Kind, lang: Lang) -> Result<()> {
    for (path, text) in templates::files(name, kind, lang) {
        let path = project.join(path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_a_wasm_file_and_a_package_can_carry_are_taken() {
        for good in ["greeter", "json-enrich", "a_1"] {
            check_name(good).unwrap();
        }
        for bad in ["", "1x", "../x", "a b", "x.wasm", &"a".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn every_language_writes_the_wit_and_a_readme() {
        let dir = tempfile::tempdir().unwrap();
        for lang in Lang::ALL {
            for kind in [Kind::Handler, Kind::Middleware] {
                let project = dir.path().join(format!("{}-{}", lang.name(), kind.name()));
                write_project(&project, "demo", kind, lang).unwrap();
                let wit = std::fs::read_to_string(project.join("wit/plugin.wit")).unwrap();
                assert_eq!(wit, WIT);
                let readme = std::fs::read_to_string(project.join("README.md")).unwrap();
                assert!(readme.contains("wasmill build"), "{readme}");
                assert_eq!(
                    crate::cli::build::detect(&project).map(|p| p.lang),
                    Some(lang),
                    "{}",
                    project.display()
                );
            }
        }
    }
}
