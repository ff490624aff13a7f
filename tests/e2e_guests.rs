//! Plugins in every supported language, as a new user makes them outside any checkout:
//! `wasmill new handler NAME --lang L` in a temporary folder, the handler edited to upper-case
//! its input and to fail on demand, `wasmill build` straight into a running host's plugins
//! folder, then messages through it: the same input and the same output as the Rust example,
//! a permanent failure that skips retries while an exception is retried, and the sandbox
//! holding against an endless loop (fuel or deadline) and a memory hog (the cap) while the
//! handler keeps serving.

use std::path::Path;
use std::time::Duration;

#[path = "support/mod.rs"]
mod support;

use support::{Host, next_event};

/// Runs the `wasmill` CLI in `dir`; (success, stdout, stderr).
fn cli(dir: &Path, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let out = std::process::Command::new(support::binary())
        .args(args)
        .current_dir(dir)
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// The handler body each language gets: "perm" fails permanently, "boom" fails retryably,
/// anything else comes back upper-cased.
fn edit_handler(project: &Path, lang: &str) -> anyhow::Result<()> {
    let (file, from, to) = match lang {
        "rust" => (
            "src/lib.rs",
            "Ok(vec![msg])",
            r#"let mut msg = msg;
        let text = msg.payload_str().map_err(|_| Error::permanent("not utf-8"))?;
        match text {
            "perm" => Err(Error::permanent("told to fail")),
            "boom" => Err(Error::retryable("boom")),
            "spin" => loop {
                std::hint::black_box(());
            },
            "hog" => {
                let hog: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 1 << 24]).collect();
                Err(Error::permanent(format!("held {}", std::hint::black_box(hog).len())))
            }
            _ => {
                let upper = text.to_uppercase();
                msg.set_payload(upper);
                Ok(vec![msg])
            }
        }"#,
        ),
        "python" => (
            "app.py",
            "    return msg\n",
            r#"    text = msg.payload().decode()
    if text == "perm":
        raise wasmill.Permanent("told to fail")
    if text == "boom":
        raise ValueError("boom")
    if text == "spin":
        while True:
            pass
    if text == "hog":
        hog = [bytearray(1 << 24) for _ in range(64)]
        raise wasmill.Permanent(f"held {len(hog)}")
    msg.set_payload(text.upper().encode())
    return msg
"#,
        ),
        "js" => (
            "app.js",
            "  return msg;\n",
            r#"  const text = wasmill.text(msg);
  if (text === 'perm') throw new wasmill.Permanent('told to fail');
  if (text === 'boom') throw new Error('boom');
  if (text === 'spin') for (;;) {}
  if (text === 'hog') {
    const hog = [];
    for (let i = 0; i < 64; i++) hog.push(new Uint8Array(1 << 24));
    throw new wasmill.Permanent(`held ${hog.length}`);
  }
  wasmill.setText(msg, text.toUpperCase());
  return msg;
"#,
        ),
        "c" => (
            "up-c.c",
            "    return wasmill_emit(out, msg);\n",
            r#"    wasmill_bytes_t p = wasmill_payload(msg);
#define IS(s) (p.len == strlen(s) && memcmp(p.ptr, s, p.len) == 0)
    if (IS("perm") || IS("boom") || IS("spin") || IS("hog")) {
        bool perm = IS("perm"), boom = IS("boom"), spin = IS("spin");
        wasmill_bytes_free(&p);
        wasmill_drop(msg);
        if (perm) return wasmill_fail(out, "told to fail", false);
        if (boom) return wasmill_fail(out, "boom", true);
        if (spin) {
            for (volatile int i = 0;; i++) {
            }
        }
        // volatile: the compiler may not drop allocations it can see are never read.
        volatile char *hog[64];
        for (int i = 0; i < 64; i++) {
            hog[i] = malloc(1 << 24);
            if (!hog[i]) return wasmill_fail(out, "out of memory", false);
            hog[i][(1 << 24) - 1] = (char)i;
        }
        return wasmill_fail(out, hog[63][(1 << 24) - 1] == 63 ? "held 64" : "held ?", false);
    }
    for (size_t i = 0; i < p.len; i++) {
        if (p.ptr[i] >= 'a' && p.ptr[i] <= 'z') p.ptr[i] -= 32;
    }
    wasmill_set_payload(msg, p);
    return wasmill_emit(out, msg);
"#,
        ),
        "go" => (
            "handler.go",
            "import . \"wit_component/wasmill_plugin_types\"\n",
            r#"import (
	"fmt"
	"strings"

	. "wit_component/wasmill_plugin_types"
)

func init() { handleText = upper }

func upper(msg *Message) Result {
	text := string(msg.Payload())
	switch text {
	case "perm":
		return Fail("told to fail", false)
	case "boom":
		return Fail("boom", true)
	case "spin":
		for {
		}
	case "hog":
		// One 1 GiB block: Go's runtime asks for it at once (64 blocks of 16 MiB, zeroed one
		// after the other, spend the fuel before they reach the cap).
		hog := make([]byte, 1<<30)
		hog[len(hog)-1] = 1
		return Fail(fmt.Sprintf("held %d", len(hog)), false)
	}
	msg.SetPayload([]byte(strings.ToUpper(text)))
	return Emit(msg) // upper-cased
}

var handleText func(*Message) Result
"#,
        ),
        other => anyhow::bail!("no edit for {other}"),
    };
    let path = project.join(file);
    let mut text = std::fs::read_to_string(&path)?;
    anyhow::ensure!(text.contains(from), "{file} has no {from:?}:\n{text}");
    text = text.replacen(from, to, 1);
    if lang == "go" {
        // Handle hands every message to the function above.
        let emit = "\treturn Emit(msg)\n";
        anyhow::ensure!(text.contains(emit), "{file} has no {emit:?}:\n{text}");
        text = text.replacen(emit, "\treturn handleText(msg)\n", 1);
    }
    std::fs::write(&path, text)?;
    Ok(())
}

async fn scaffold_build_and_serve(lang: &str) -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let name = format!("up-{lang}");
    let (ok, out, err) = cli(work.path(), &["new", "handler", &name, "--lang", lang])?;
    anyhow::ensure!(ok, "wasmill new --lang {lang}: {out}{err}");
    let project = work.path().join(&name);
    edit_handler(&project, lang)?;

    let (dir, plugins) = Host::scratch()?;
    std::fs::write(
        plugins.join(format!("{name}.toml")),
        format!("subscribe = \"in-{lang}\"\npublish = \"out-{lang}\"\n"),
    )?;
    let host = Host::start(dir, plugins.clone(), &[]).await?;
    let mut out = host.sse(&format!("out-{lang}")).await?;

    let plugins_arg = plugins.to_string_lossy().into_owned();
    let (ok, stdout, stderr) = cli(work.path(), &["build", &name, "--out", &plugins_arg])?;
    anyhow::ensure!(ok, "wasmill build ({lang}): {stdout}{stderr}");
    assert!(stdout.contains(&format!("{name}.wasm")), "{stdout}");
    host.wait_handler(&name, Duration::from_secs(120), |h| h["state"] == "running")
        .await?;

    host.publish(&format!("in-{lang}"), "hello").await?;
    let event = next_event(&mut out, Duration::from_secs(30)).await?;
    assert_eq!(event["payload"], "HELLO", "{lang}: {event}");

    // A permanent failure is poisoned at once; a retryable one is retried first.
    let mut poison = host.sse(&format!("in-{lang}.poison")).await?;
    host.publish(&format!("in-{lang}"), "perm").await?;
    let poisoned = next_event(&mut poison, Duration::from_secs(30)).await?;
    let reason = poisoned["metadata"]["reason_poisoned"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("told to fail"), "{lang}: {poisoned}");
    let h = host.handler(&name).await?;
    assert_eq!(h["counts"]["retried"], 0, "{lang}: {h}");

    host.publish(&format!("in-{lang}"), "boom").await?;
    let poisoned = next_event(&mut poison, Duration::from_secs(30)).await?;
    let reason = poisoned["metadata"]["reason_poisoned"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("boom"), "{lang}: {poisoned}");
    let h = host.handler(&name).await?;
    assert!(h["counts"]["retried"].as_u64() > Some(0), "{lang}: {h}");

    // The sandbox: a loop is cut off by fuel or the deadline, a hog by the memory cap.
    host.publish(&format!("in-{lang}"), "spin").await?;
    let poisoned = next_event(&mut poison, Duration::from_secs(60)).await?;
    let reason = poisoned["metadata"]["reason_poisoned"]
        .as_str()
        .unwrap_or_default();
    assert!(
        reason.contains("fuel exhausted") || reason.contains("timeout"),
        "{lang}: {poisoned}"
    );
    host.publish(&format!("in-{lang}"), "hog").await?;
    let poisoned = next_event(&mut poison, Duration::from_secs(60)).await?;
    let reason = poisoned["metadata"]["reason_poisoned"]
        .as_str()
        .unwrap_or_default();
    // The cap holds: the host stops the guest ("memory limit") or the guest's own allocator
    // sees the refusal (Python's MemoryError, JS's out of memory).
    assert!(
        reason.to_lowercase().contains("memory") && !reason.contains("held "),
        "{lang}: {poisoned}"
    );

    host.publish(&format!("in-{lang}"), "still here").await?;
    let event = next_event(&mut out, Duration::from_secs(30)).await?;
    assert_eq!(event["payload"], "STILL HERE", "{lang}: {event}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_handler_scaffolded_outside_the_repository_builds_and_serves() -> anyhow::Result<()>
{
    scaffold_build_and_serve("rust").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_handler_scaffolded_outside_the_repository_builds_and_serves() -> anyhow::Result<()>
{
    scaffold_build_and_serve("python").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_javascript_handler_scaffolded_outside_the_repository_builds_and_serves()
-> anyhow::Result<()> {
    scaffold_build_and_serve("js").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_c_handler_scaffolded_outside_the_repository_builds_and_serves() -> anyhow::Result<()> {
    scaffold_build_and_serve("c").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_handler_scaffolded_outside_the_repository_builds_and_serves() -> anyhow::Result<()> {
    scaffold_build_and_serve("go").await
}

#[test]
fn a_middleware_scaffolded_in_each_language_builds() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let out = work.path().join("out");
    for lang in ["rust", "python", "js", "c", "go"] {
        let name = format!("mw-{lang}");
        let (ok, o, e) = cli(work.path(), &["new", "middleware", &name, "--lang", lang])?;
        anyhow::ensure!(ok, "new middleware --lang {lang}: {o}{e}");
        let (ok, o, e) = cli(
            work.path(),
            &["build", &name, "--out", &out.to_string_lossy()],
        )?;
        anyhow::ensure!(ok, "build middleware --lang {lang}: {o}{e}");
        let wasm = out.join(format!("{name}.wasm"));
        let (ok, o, e) = cli(work.path(), &["check", &wasm.to_string_lossy()])?;
        anyhow::ensure!(ok, "check {lang}: {o}{e}");
        assert!(o.contains("wasmill:plugin/middleware@0.2.0"), "{lang}: {o}");
    }
    Ok(())
}

/// The example plugins of every language (`plugins/uppercase{,-py,-js,-c,-go}`,
/// `plugins/json-enrich{,-py,-js,-c,-go}`), side by side on one host: the same input gives the same
/// output, and the same bad input the same kind of failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_plugins_answer_alike_in_every_language() -> anyhow::Result<()> {
    let (dir, plugins) = Host::scratch()?;
    let names = [
        "uppercase",
        "uppercase-py",
        "uppercase-js",
        "uppercase-c",
        "uppercase-go",
        "json-enrich",
        "json-enrich-py",
        "json-enrich-js",
        "json-enrich-c",
        "json-enrich-go",
    ];
    for name in names {
        std::fs::copy(support::plugin(name), plugins.join(format!("{name}.wasm")))?;
        let input = if name.starts_with("uppercase") {
            "text"
        } else {
            "json"
        };
        std::fs::write(
            plugins.join(format!("{name}.toml")),
            format!("subscribe = \"{input}\"\npublish = \"out-{name}\"\n"),
        )?;
    }
    let host = Host::start(dir, plugins, &[]).await?;
    let mut outs = Vec::new();
    for name in names {
        // Python and JavaScript compile after the host answers (the cache is cold here).
        host.wait_handler(name, Duration::from_secs(300), |h| {
            h["name"] == name && h["state"] == "running"
        })
        .await?;
        outs.push((name, host.sse(&format!("out-{name}")).await?));
    }
    let mut poisons = host.sse("json.poison").await?;

    host.publish_json(
        "text",
        serde_json::json!({"metadata": {"k": "v"}, "payload": "Hello, wasmill!"}),
    )
    .await?;
    host.publish("json", r#"{"order": 7, "items": ["a"]}"#)
        .await?;
    host.publish("json", "[1, 2]").await?;
    for (name, out) in &mut outs {
        let event = next_event(out, Duration::from_secs(30)).await?;
        if name.starts_with("uppercase") {
            assert_eq!(event["payload"], "HELLO, WASMILL!", "{name}: {event}");
            assert_eq!(event["metadata"]["k"], "v", "{name}: {event}");
        } else {
            let value: serde_json::Value =
                serde_json::from_str(event["payload"].as_str().unwrap_or_default())?;
            assert_eq!(
                value,
                serde_json::json!({"order": 7, "items": ["a"], "enriched": true, "handled_by": "json-enrich"}),
                "{name}"
            );
            assert_eq!(
                event["metadata"]["content-type"], "application/json",
                "{name}"
            );
        }
    }
    // `[1, 2]` is JSON but not an object: a permanent failure in each language, poisoned
    // without retries.
    let mut reasons = Vec::new();
    for _ in 0..5 {
        let poisoned = next_event(&mut poisons, Duration::from_secs(30)).await?;
        reasons.push((
            poisoned["metadata"]["handler_poisoned"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            poisoned["metadata"]["reason_poisoned"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        ));
    }
    reasons.sort();
    for ((handler, reason), want) in reasons.iter().zip([
        "json-enrich",
        "json-enrich-c",
        "json-enrich-go",
        "json-enrich-js",
        "json-enrich-py",
    ]) {
        assert_eq!(handler, want);
        assert!(reason.starts_with("invalid json: "), "{handler}: {reason}");
        assert_eq!(
            host.handler(handler).await?["counts"]["retried"],
            0,
            "{handler}"
        );
    }
    Ok(())
}
