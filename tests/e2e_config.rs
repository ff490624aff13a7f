//! The configuration is checked as a whole before anything serves: `wasmill run` refuses to
//! start on a bad config (naming file, handler and key), and `wasmill check --config` passes
//! the README's example setup and fails a broken one, with the real binary.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

#[path = "support/mod.rs"]
mod support;

use support::{Host, binary, free_port, plugin, repo_root};

/// Runs `wasmill ARGS` in `dir` until it exits (at most a minute).
async fn wasmill(dir: &Path, args: &[&str]) -> Result<Output> {
    let child = tokio::process::Command::new(binary())
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("spawn wasmill")?;
    tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .context("wasmill did not exit within a minute")?
        .context("wait for wasmill")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The `wasmill.toml` block of the README's "The configuration" section.
fn readme_example() -> String {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let section = readme
        .split("## The configuration")
        .nth(1)
        .expect("a configuration section in README.md");
    section
        .split("```toml")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a toml block in the configuration section")
        .to_string()
}

const UNKNOWN_OPTION: &str = "wasmill.toml: handlers[0].middleware[1].retry: unknown option \"max_retry\" (expected max_retries, initial_interval";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_refuses_to_start_on_an_unknown_middleware_option() -> Result<()> {
    let (dir, plugins) = Host::scratch()?;
    std::fs::copy(plugin("uppercase"), plugins.join("uppercase.wasm"))?;
    std::fs::write(
        dir.path().join("wasmill.toml"),
        "[[handlers]]\nname = \"up\"\nplugin = \"uppercase.wasm\"\nsubscribe = \"in\"\n\
         middleware = [\"correlation_id\", { retry = { max_retry = 3 } }]\n",
    )?;
    let addr = format!("127.0.0.1:{}", free_port());
    let out = wasmill(
        dir.path(),
        &["run", "--config", "wasmill.toml", "--http", &addr],
    )
    .await?;
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "run exited with success:\n{stderr}");
    assert!(stderr.contains(UNKNOWN_OPTION), "{stderr}");
    assert!(!stderr.contains("HTTP API listening"), "{stderr}");
    assert!(!stderr.contains("handler loaded"), "{stderr}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_passes_the_readme_example_and_fails_a_broken_one() -> Result<()> {
    let (dir, plugins) = Host::scratch()?;
    std::fs::copy(plugin("uppercase"), plugins.join("uppercase.wasm"))?;
    let example = readme_example();
    std::fs::write(dir.path().join("wasmill.toml"), &example)?;
    let out = wasmill(dir.path(), &["check", "--config", "wasmill.toml"]).await?;
    assert!(
        out.status.success(),
        "check failed on the README example:\n{}\n{example}",
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("wasmill.toml: 1 handler(s)") && stdout.trim_end().ends_with("ok"),
        "{stdout}"
    );

    // Broken twice over: both problems are reported, each naming file, handler and key.
    let broken = example.replace(
        "\"correlation_id\", ",
        "\"correlation_id\", { retry = { max_retry = 3 } }, ",
    ) + "\n[[handlers]]\nname = \"ghost\"\nplugin = \"ghost.wasm\"\nsubscribe = \"x\"\n";
    assert_ne!(broken, example, "the README example changed shape");
    std::fs::write(dir.path().join("wasmill.toml"), &broken)?;
    let out = wasmill(dir.path(), &["check", "--config", "wasmill.toml"]).await?;
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "check passed a broken config:\n{broken}"
    );
    assert!(stderr.contains(UNKNOWN_OPTION), "{stderr}");
    assert!(
        stderr.contains("wasmill.toml: handlers[1].plugin: file ")
            && stderr.contains("ghost.wasm not found"),
        "{stderr}"
    );
    assert!(stderr.contains("2 error(s)"), "{stderr}");

    // `wasmill check FILE.wasm` still inspects a component.
    let out = wasmill(dir.path(), &["check", "plugins/uppercase.wasm"]).await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("implements wasmill:plugin/handler"),
        "{}",
        text(&out.stdout)
    );
    Ok(())
}
