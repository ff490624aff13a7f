//! Python and JavaScript projects: componentize-py and componentize-js, which bundle an
//! interpreter with the project's code into a component of the project's world.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::find_tool;
use crate::cli::scaffold::{JS_SDK, Kind, PYTHON_SDK, WIT};

/// Writes the thin SDK (`file`, `text`) into a project that has none (a checkout that does not
/// commit it, or a hand-made project), saying so.
pub(super) fn ensure_sdk(project: &Path, file: &str, text: &str) -> Result<()> {
    let path = project.join(file);
    if !path.exists() {
        println!("build: writing the SDK {} (it was missing)", path.display());
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

/// The project's `wit/` folder, or the embedded WIT written into a temporary one (removed
/// when the guard drops).
pub(super) fn wit_dir(project: &Path) -> Result<(PathBuf, Option<TempWit>)> {
    let own = project.join("wit");
    if own.is_dir() {
        return Ok((own, None));
    }
    let dir = std::env::temp_dir().join(format!("wasmill-wit-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("plugin.wit"), WIT)?;
    Ok((dir.clone(), Some(TempWit(dir))))
}

/// A temporary WIT folder, removed on drop.
pub(super) struct TempWit(PathBuf);

impl Drop for TempWit {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(super) fn run(mut cmd: Command, what: &str) -> Result<()> {
    let status = cmd.status().with_context(|| format!("run {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// `componentize-py -d wit -w WORLD componentize app -p . -o OUT`, in the project.
pub fn python(project: &Path, kind: Kind, out: &Path) -> Result<()> {
    let tool = find_tool(
        "componentize-py",
        &[],
        "pip install componentize-py==0.25.1",
    )?;
    if !project.join("app.py").is_file() {
        bail!(
            "{}: no app.py (the module holding WitWorld)",
            project.display()
        );
    }
    ensure_sdk(project, "wasmill.py", PYTHON_SDK)?;
    let (wit, _keep) = wit_dir(project)?;
    let wit = std::path::absolute(wit)?;
    let mut cmd = Command::new(tool);
    cmd.current_dir(project)
        .arg("-d")
        .arg(&wit)
        .args(["-w", &kind.world(), "componentize", "app", "-p", "."])
        .arg("-o")
        .arg(std::path::absolute(out)?);
    run(cmd, "componentize-py")
}

/// `componentize-js ENTRY --wit wit -n WORLD -d http fetch-event -o OUT`, in the project. The
/// `wasi:http` features are disabled: the host does not offer `wasi:http`.
pub fn js(project: &Path, kind: Kind, out: &Path) -> Result<()> {
    let tool = find_tool(
        "componentize-js",
        &[project.join("node_modules/.bin")],
        "npm install -g @bytecodealliance/componentize-js@0.23.0",
    )?;
    let package = super::package_json(project)?;
    let entry = package["main"].as_str().unwrap_or("app.js").to_string();
    if !project.join(&entry).is_file() {
        bail!("{}: no {entry} (package.json's main)", project.display());
    }
    ensure_sdk(project, "wasmill.js", JS_SDK)?;
    let (wit, _keep) = wit_dir(project)?;
    let wit = std::path::absolute(wit)?;
    let mut cmd = Command::new(tool);
    cmd.current_dir(project)
        .arg(&entry)
        .arg("--wit")
        .arg(&wit)
        .args(["-n", &kind.world(), "-d", "http", "fetch-event", "-o"])
        .arg(std::path::absolute(out)?);
    run(cmd, "componentize-js")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_sdk_is_written_and_an_edited_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        ensure_sdk(dir.path(), "wasmill.py", PYTHON_SDK).unwrap();
        let path = dir.path().join("wasmill.py");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), PYTHON_SDK);
        std::fs::write(&path, "# mine").unwrap();
        ensure_sdk(dir.path(), "wasmill.py", PYTHON_SDK).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "# mine");
    }
}
