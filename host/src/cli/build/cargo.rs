//! Rust projects: `cargo build --release --target wasm32-wasip2`, the target added through
//! rustup when it is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// `package.name` of `project/Cargo.toml`.
pub fn package_name(project: &Path) -> Result<String> {
    let text = std::fs::read_to_string(project.join("Cargo.toml"))
        .with_context(|| format!("read {}/Cargo.toml", project.display()))?;
    let t: toml::Table =
        toml::from_str(&text).with_context(|| format!("parse {}/Cargo.toml", project.display()))?;
    t.get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .map(str::to_string)
        .with_context(|| format!("{}/Cargo.toml: no package.name", project.display()))
}

fn ensure_target() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    let Ok(installed) = installed else {
        // No rustup: cargo says so itself if the target is missing.
        return Ok(());
    };
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l == "wasm32-wasip2")
    {
        return Ok(());
    }
    println!("build: rustup target add wasm32-wasip2");
    if !Command::new("rustup")
        .args(["target", "add", "wasm32-wasip2"])
        .status()?
        .success()
    {
        bail!("rustup target add wasm32-wasip2 failed");
    }
    Ok(())
}

/// Builds the cdylib of `project` and copies its component to `out`.
pub fn build(project: &Path, name: &str, out: &Path) -> Result<()> {
    ensure_target()?;
    let status = Command::new("cargo")
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .current_dir(project)
        .status()
        .context("run cargo (is Rust installed? https://rustup.rs)")?;
    if !status.success() {
        bail!("cargo build failed");
    }
    let meta = Command::new("cargo")
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(project)
        .output()?;
    let meta: serde_json::Value = serde_json::from_slice(&meta.stdout)?;
    let target_dir = PathBuf::from(meta["target_directory"].as_str().unwrap_or("target"));
    let artifact = target_dir
        .join("wasm32-wasip2/release")
        .join(name.replace('-', "_") + ".wasm");
    std::fs::copy(&artifact, out)
        .with_context(|| format!("copy {} (is the crate a cdylib?)", artifact.display()))?;
    Ok(())
}
