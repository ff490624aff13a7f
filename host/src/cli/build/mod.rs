//! `wasmill build [DIR...]`: plugin projects into `.wasm` components. Each project's language
//! is detected from its files (`Cargo.toml`, `pyproject.toml`/`app.py`, `package.json`,
//! `go.mod`, `wasmill.h` or a Makefile beside `.c` files), its
//! toolchain is run, and the component is written beside the others atomically (a running host
//! never reads half a file). A missing tool is one line saying what to install: nothing is
//! installed behind the user's back, except the `wasm32-wasip2` target through rustup.

mod c;
mod cargo;
mod componentize;
mod go;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;

use super::scaffold::{Kind, Lang};

/// Arguments of `wasmill build`.
#[derive(Args)]
pub struct BuildArgs {
    /// Plugin projects, or folders holding them (default: `plugins/`).
    dirs: Vec<PathBuf>,
    /// Where the .wasm files go (default: the plugins folder).
    #[arg(long, default_value = "plugins")]
    out: PathBuf,
}

/// A plugin project found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    /// Its folder.
    pub dir: PathBuf,
    /// Its language.
    pub lang: Lang,
}

/// The project in `dir`, if `dir` holds one (by its files).
pub fn detect(dir: &Path) -> Option<Project> {
    let has = |f: &str| dir.join(f).is_file();
    let lang = if has("Cargo.toml") && has("src/lib.rs") {
        Lang::Rust
    } else if has("package.json") {
        Lang::Js
    } else if has("app.py") || wasmill_table(&dir.join("pyproject.toml")).is_some() {
        Lang::Python
    } else if go::is_project(dir) {
        Lang::Go
    } else if c::is_project(dir) {
        Lang::C
    } else {
        return None;
    };
    Some(Project {
        dir: dir.to_path_buf(),
        lang,
    })
}

/// `dir` itself when it is a project, else the projects directly inside it, by name.
pub fn projects(dir: &Path) -> Vec<Project> {
    if let Some(p) = detect(dir) {
        return vec![p];
    }
    let mut found: Vec<Project> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| detect(&e.path()))
        .collect();
    found.sort_by(|a, b| a.dir.cmp(&b.dir));
    found
}

/// `pyproject.toml`'s `[tool.wasmill]` table, when the file has one.
fn wasmill_table(pyproject: &Path) -> Option<toml::Table> {
    let text = std::fs::read_to_string(pyproject).ok()?;
    let t: toml::Table = toml::from_str(&text).ok()?;
    t.get("tool")?.get("wasmill")?.as_table().cloned()
}

/// The world a Python or JS project declares (`[tool.wasmill] world` / `"wasmill": {"world"}`);
/// a handler when it says nothing.
fn declared_kind(project: &Project) -> Result<Kind> {
    let world = match project.lang {
        Lang::Python => wasmill_table(&project.dir.join("pyproject.toml"))
            .and_then(|t| t.get("world")?.as_str().map(str::to_string)),
        Lang::Js => package_json(&project.dir)?["wasmill"]["world"]
            .as_str()
            .map(str::to_string),
        Lang::Rust => None,
        Lang::C => return c::declared_kind(&project.dir),
        Lang::Go => return go::declared_kind(&project.dir),
    };
    world.map_or(Ok(Kind::Handler), |w| Kind::parse(&w))
}

fn package_json(dir: &Path) -> Result<serde_json::Value> {
    let path = dir.join("package.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
}

/// The plugin's name (its `.wasm` file's): the package's name, else the folder's.
fn plugin_name(project: &Project) -> Result<String> {
    let declared = match project.lang {
        Lang::Rust => Some(cargo::package_name(&project.dir)?),
        Lang::Js => package_json(&project.dir)?["name"]
            .as_str()
            .map(str::to_string),
        Lang::Python => std::fs::read_to_string(project.dir.join("pyproject.toml"))
            .ok()
            .and_then(|t| toml::from_str::<toml::Table>(&t).ok())
            .and_then(|t| t.get("project")?.get("name")?.as_str().map(str::to_string)),
        Lang::C => c::makefile_var(&project.dir, "NAME"),
        Lang::Go => None,
    };
    match declared {
        Some(n) => Ok(n),
        None => Ok(project
            .dir
            .canonicalize()?
            .file_name()
            .context("a project folder without a name")?
            .to_string_lossy()
            .into_owned()),
    }
}

/// Where `wasmill build DIR` looks: `DIR`, or `plugins/DIR` when only that exists (where
/// `wasmill new` puts a project when a `plugins` folder is present).
fn project_dir(dir: &Path, plugins: &Path) -> PathBuf {
    let inside = plugins.join(dir);
    if !dir.exists() && dir.is_relative() && inside.is_dir() {
        inside
    } else {
        dir.to_path_buf()
    }
}

/// `~/.cargo/bin`, where `cargo install` puts wit-bindgen and wasm-tools.
pub(crate) fn cargo_bin() -> Vec<PathBuf> {
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cargo/bin"))
        .into_iter()
        .collect()
}

/// The files of `dir` (not below it) whose extension is `ext`, by name.
pub(crate) fn files_with_extension(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == ext) && p.is_file())
        .collect();
    found.sort();
    found
}

/// A tool in one of `extra` places, on `PATH` or in `~/.local/bin` (where `scripts/setup.sh`
/// installs), else an error naming what to install.
pub(crate) fn find_tool(name: &str, extra: &[PathBuf], install: &str) -> Result<PathBuf> {
    let local = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/bin"));
    for dir in extra
        .iter()
        .cloned()
        .chain(
            std::env::var_os("PATH")
                .iter()
                .flat_map(std::env::split_paths),
        )
        .chain(local)
    {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("{name} not found: install it with `{install}`")
}

/// `wasmill build`.
pub fn build(a: BuildArgs) -> Result<()> {
    let dirs = if a.dirs.is_empty() {
        vec![PathBuf::from("plugins")]
    } else {
        a.dirs
    };
    std::fs::create_dir_all(&a.out).with_context(|| format!("create {}", a.out.display()))?;
    let mut built = 0;
    for dir in dirs {
        let dir = project_dir(&dir, Path::new("plugins"));
        let found = projects(&dir);
        if found.is_empty() {
            bail!(
                "{}: no plugin project here (Cargo.toml with src/lib.rs, pyproject.toml or \
                 app.py, package.json, go.mod, wasmill.h or a Makefile with .c files)",
                dir.display()
            );
        }
        for project in found {
            let name = plugin_name(&project)?;
            let started = Instant::now();
            let tmp = a.out.join(format!(".{name}.tmp.wasm"));
            let result = match project.lang {
                Lang::Rust => cargo::build(&project.dir, &name, &tmp),
                Lang::Python => componentize::python(&project.dir, declared_kind(&project)?, &tmp),
                Lang::Js => componentize::js(&project.dir, declared_kind(&project)?, &tmp),
                Lang::C => c::build(&project.dir, declared_kind(&project)?, &tmp),
                Lang::Go => go::build(&project.dir, declared_kind(&project)?, &tmp),
            };
            if let Err(e) = result {
                let _ = std::fs::remove_file(&tmp);
                return Err(e.context(format!("build {}", project.dir.display())));
            }
            // Written beside, then renamed: a running host never sees a half-written plugin.
            let dst = a.out.join(format!("{name}.wasm"));
            std::fs::rename(&tmp, &dst).with_context(|| format!("write {}", dst.display()))?;
            let size = std::fs::metadata(&dst).map(|m| m.len()).unwrap_or(0);
            println!(
                "built {} ({} {}, {} KiB, {:.1} s)",
                dst.display(),
                project.lang.name(),
                name,
                size / 1024,
                started.elapsed().as_secs_f64()
            );
            built += 1;
        }
    }
    println!("{built} plugin(s) built");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_of_projects_yields_each_by_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let touch = |p: &str, text: &str| {
            let p = dir.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        touch("r/Cargo.toml", "[package]\nname = \"r\"\n");
        touch("r/src/lib.rs", "");
        touch("p/app.py", "");
        touch(
            "q/pyproject.toml",
            "[tool.wasmill]\nworld = \"middleware\"\n",
        );
        touch("j/package.json", "{\"name\": \"jj\"}");
        touch("g/go.mod", "module wit_component\n");
        touch("not-a-project/notes.txt", "");
        touch("bin-crate/Cargo.toml", "[package]\nname = \"b\"\n");
        let found: Vec<(String, Lang)> = projects(dir.path())
            .into_iter()
            .map(|p| (p.dir.file_name().unwrap().to_string_lossy().into(), p.lang))
            .collect();
        assert_eq!(
            found,
            [
                ("g".into(), Lang::Go),
                ("j".into(), Lang::Js),
                ("p".into(), Lang::Python),
                ("q".into(), Lang::Python),
                ("r".into(), Lang::Rust),
            ]
        );
        let q = detect(&dir.path().join("q")).unwrap();
        assert_eq!(declared_kind(&q).unwrap(), Kind::Middleware);
        assert_eq!(
            plugin_name(&detect(&dir.path().join("j")).unwrap()).unwrap(),
            "jj"
        );
        assert_eq!(
            plugin_name(&detect(&dir.path().join("p")).unwrap()).unwrap(),
            "p"
        );
        assert_eq!(
            declared_kind(&detect(&dir.path().join("p")).unwrap()).unwrap(),
            Kind::Handler
        );
    }

    #[test]
    fn a_project_name_is_also_looked_for_in_the_plugins_folder() {
        let dir = tempfile::tempdir().unwrap();
        let plugins = dir.path().join("plugins");
        std::fs::create_dir_all(plugins.join("greeter")).unwrap();
        std::fs::create_dir_all(dir.path().join("here")).unwrap();
        let here = dir.path().join("here");
        assert_eq!(
            project_dir(Path::new("greeter"), &plugins),
            plugins.join("greeter")
        );
        assert_eq!(project_dir(&here, &plugins), here);
        assert_eq!(
            project_dir(Path::new("nowhere"), &plugins),
            Path::new("nowhere")
        );
    }

    #[test]
    fn a_missing_tool_is_named_with_its_install_command() {
        let e = find_tool("no-such-tool-wasmill", &[], "pip install no-such-tool").unwrap_err();
        assert_eq!(
            e.to_string(),
            "no-such-tool-wasmill not found: install it with `pip install no-such-tool`"
        );
    }
}
