//! C projects: `wit-bindgen c` writes the bindings of the project's world, clang (with
//! wasi-libc and lld) builds a WebAssembly module of them and the project's `.c` files, and
//! `wasm-tools component new` makes it a component. The project's `Makefile` runs the same
//! steps; `NAME =` and `WORLD =` in it name the plugin and its world.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::componentize::{ensure_sdk, run, wit_dir};
use super::{cargo_bin, files_with_extension, find_tool};
use crate::cli::scaffold::{C_SDK, Kind};

/// The value of `KEY = value` in the project's Makefile, if set.
pub fn makefile_var(project: &Path, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(project.join("Makefile")).ok()?;
    text.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        (k.trim() == key && !v.trim().is_empty()).then(|| v.trim().to_string())
    })
}

/// Whether `dir` holds a C plugin project: `wasmill.h`, or a Makefile beside `.c` files.
pub fn is_project(dir: &Path) -> bool {
    dir.join("wasmill.h").is_file()
        || (dir.join("Makefile").is_file() && !files_with_extension(dir, "c").is_empty())
}

/// The world the Makefile declares (`WORLD = middleware`); a handler when it says nothing.
pub fn declared_kind(project: &Path) -> Result<Kind> {
    makefile_var(project, "WORLD").map_or(Ok(Kind::Handler), |w| Kind::parse(&w))
}

/// Builds the C project in `project` into the component `out`.
pub fn build(project: &Path, kind: Kind, out: &Path) -> Result<()> {
    let cargo_bin = cargo_bin();
    let bindgen = find_tool(
        "wit-bindgen",
        &cargo_bin,
        "cargo install --locked wit-bindgen-cli@0.63.0",
    )?;
    let wasm_tools = find_tool(
        "wasm-tools",
        &cargo_bin,
        "cargo install --locked wasm-tools",
    )?;
    let clang = find_tool(
        "clang",
        &[],
        "apt-get install clang lld wasi-libc libclang-rt-dev-wasm32",
    )?;
    find_tool("wasm-ld", &[], "apt-get install lld")?;
    let code = files_with_extension(project, "c");
    if code.is_empty() {
        bail!("{}: no .c file", project.display());
    }
    ensure_sdk(project, "wasmill.h", C_SDK)?;
    let (wit, _keep) = wit_dir(project)?;
    let build = project.join("build");
    let gen_dir = build.join("gen");
    std::fs::create_dir_all(&gen_dir).with_context(|| format!("create {}", gen_dir.display()))?;

    let world = kind.name();
    let mut cmd = Command::new(bindgen);
    cmd.arg("c")
        .arg(&wit)
        .args(["--world", world, "--out-dir"])
        .arg(&gen_dir)
        .stdout(std::process::Stdio::null());
    run(cmd, "wit-bindgen c")?;

    let core = build.join("core.wasm");
    let mut cmd = Command::new(clang);
    // -msimd128: byte loops clang can count vectorise (see docs/guests/c.md), as `make` does.
    cmd.args([
        "--target=wasm32-wasi",
        "-mexec-model=reactor",
        "-O2",
        "-msimd128",
    ]);
    if kind == Kind::Middleware {
        cmd.arg("-DWASMILL_WORLD_MIDDLEWARE");
    }
    cmd.arg("-I")
        .arg(&gen_dir)
        .arg("-I")
        .arg(project)
        .arg("-o")
        .arg(&core)
        .args(&code)
        .arg(gen_dir.join(format!("{world}.c")))
        .arg(gen_dir.join(format!("{world}_component_type.o")))
        .arg("-Wl,--strip-all");
    run(
        cmd,
        "clang (wasm32-wasi; needs wasi-libc and lld: apt-get install wasi-libc lld)",
    )?;

    let mut cmd = Command::new(wasm_tools);
    cmd.args(["component", "new"]).arg(&core).arg("-o").arg(out);
    run(
        cmd,
        "wasm-tools component new (a module importing wasi_snapshot_preview1 uses WASI, \
         which the host does not grant: log with wasmill_log, not printf)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_makefile_names_the_plugin_and_its_world() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("Makefile"),
            "NAME = greeter\nWORLD = middleware\nCFLAGS = -O2\n",
        )
        .unwrap();
        assert_eq!(makefile_var(dir.path(), "NAME").as_deref(), Some("greeter"));
        assert_eq!(declared_kind(dir.path()).unwrap(), Kind::Middleware);
        assert!(!is_project(dir.path()), "a Makefile alone is no C project");
        std::fs::write(dir.path().join("greeter.c"), "").unwrap();
        assert!(is_project(dir.path()));
        std::fs::write(dir.path().join("Makefile"), "WORLD = nonsense\n").unwrap();
        assert!(declared_kind(dir.path()).is_err());
    }
}
