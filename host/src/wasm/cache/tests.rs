//! The compile cache against forged, renamed and truncated entries, with real plugins.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use super::*;
use crate::message::Message;
use crate::router::Handler;
use crate::wasm::component::sha256_hex;
use crate::wasm::tests::fixture;
use crate::wasm::{EngineConfig, Grants, InstancePool, Limits, WasmEngine, WasmHandler};

fn engine_at(dir: &Path) -> WasmEngine {
    WasmEngine::new(EngineConfig {
        cache_dir: Some(dir.to_path_buf()),
    })
    .expect("engine with a compile cache")
}

fn cache(engine: &WasmEngine) -> &CompileCache {
    engine.cache().expect("the cache is on")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Compiles `name` through `engine` (and its cache) and returns what it makes of "hello".
async fn run(engine: &WasmEngine, name: &str) -> String {
    let plugin = engine.compile_file(&fixture(name)).await.expect("compile");
    let pool = InstancePool::new(
        engine.clone(),
        plugin,
        Limits::default(),
        Grants::default(),
        1,
    );
    let out = WasmHandler::new(Arc::new(pool))
        .handle(Message::new("hello"))
        .await
        .expect("handle");
    String::from_utf8_lossy(&out[0].payload).into_owned()
}

#[tokio::test]
async fn the_key_is_private_and_shared_by_two_engines() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nested/cache");
    let a = engine_at(&dir);
    assert_eq!(mode(&dir), 0o700, "cache folder");
    assert_eq!(mode(&dir.join(KEY_FILE)), 0o600, "key file");

    let b = engine_at(&dir);
    assert_eq!(cache(&a).key, cache(&b).key, "one key per host, read back");
    assert_ne!(cache(&a).key, [0; KEY_LEN]);

    // An entry one engine wrote is authentic for the other.
    assert_eq!(run(&a, "uppercase").await, "HELLO");
    let sha = sha256_hex(&std::fs::read(fixture("uppercase")).unwrap());
    assert_eq!(mode(&cache(&a).entry_path(&sha)), 0o600, "entry file");
    assert!(cache(&b).load(b.engine(), &sha).is_some());

    // A key others could read is replaced (and private again).
    let key = dir.join(KEY_FILE);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let c = engine_at(&dir);
    assert_ne!(cache(&c).key, cache(&a).key);
    assert_eq!(mode(&key), 0o600);
    assert!(
        cache(&c).load(c.engine(), &sha).is_none(),
        "old entry refused"
    );
}

#[tokio::test]
async fn forged_entries_are_refused_and_the_real_plugin_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = engine_at(&tmp.path().join("cache"));
    let cache = cache(&engine);
    let victim = sha256_hex(&std::fs::read(fixture("uppercase")).unwrap());
    let victim_path = cache.entry_path(&victim);

    // The attacker's material: the passthrough plugin, compiled, in this host's cache and
    // in the cache of another host (another key).
    let other_engine = engine_at(&tmp.path().join("other"));
    let other = other_engine.cache().unwrap();
    assert_eq!(run(&engine, "passthrough").await, "hello");
    let pass_bytes = std::fs::read(fixture("passthrough")).unwrap();
    let pass_entry = std::fs::read(cache.entry_path(&sha256_hex(&pass_bytes))).unwrap();
    let pass = Component::new(engine.engine(), &pass_bytes).unwrap();
    let serialized = pass.serialize().unwrap();
    other.store(&victim, &pass);
    let other_key_entry = std::fs::read(other.entry_path(&victim)).unwrap();
    let mut zero_mac = MAGIC.to_vec();
    zero_mac.extend_from_slice(&[0; MAC_LEN]);
    zero_mac.extend_from_slice(&serialized);
    let random: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();

    let forgeries = [
        ("passthrough's authentic entry renamed", pass_entry),
        ("passthrough under another host's key", other_key_entry),
        ("passthrough with a made-up mac", zero_mac),
        ("passthrough's bare serialized bytes", serialized),
        ("random bytes", random),
    ];
    for (what, forged) in forgeries {
        std::fs::write(&victim_path, &forged).unwrap();
        assert_eq!(
            run(&engine, "uppercase").await,
            "HELLO",
            "{what}: the real plugin runs"
        );
        let now = std::fs::read(&victim_path).expect("entry written again");
        assert!(now != forged, "{what}: the forgery is gone");
        assert!(
            cache.load(engine.engine(), &victim).is_some(),
            "{what}: the entry is authentic again"
        );
    }
}

#[tokio::test]
async fn a_truncated_entry_is_recompiled() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = engine_at(&tmp.path().join("cache"));
    assert_eq!(run(&engine, "uppercase").await, "HELLO");
    let sha = sha256_hex(&std::fs::read(fixture("uppercase")).unwrap());
    let path = cache(&engine).entry_path(&sha);
    let whole = std::fs::read(&path).unwrap();
    for len in [
        0,
        20,
        MAGIC.len() + MAC_LEN,
        whole.len() / 2,
        whole.len() - 1,
    ] {
        std::fs::write(&path, &whole[..len]).unwrap();
        assert!(
            cache(&engine).load(engine.engine(), &sha).is_none(),
            "{len} bytes"
        );
        assert!(!path.exists(), "{len} bytes: the bad entry is deleted");
        std::fs::write(&path, &whole[..len]).unwrap();
        assert_eq!(run(&engine, "uppercase").await, "HELLO", "{len} bytes");
        assert_eq!(
            std::fs::read(&path).unwrap().len(),
            whole.len(),
            "{len} bytes"
        );
    }
}

#[test]
fn a_folder_others_may_write_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = WasmEngine::new(EngineConfig {
        cache_dir: Some(dir.clone()),
    })
    .err()
    .expect("refused")
    .to_string();
    assert!(err.contains("writable by other users (mode 777)"), "{err}");
    assert!(!dir.join(KEY_FILE).exists());
}

#[test]
fn a_cache_dir_inside_the_plugins_folder_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let plugins = tmp.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::os::unix::fs::symlink(&plugins, tmp.path().join("link")).unwrap();
    for inside in [
        plugins.join(".wasmill-cache"),
        plugins.clone(),
        tmp.path().join("elsewhere/../plugins/cache"),
        tmp.path().join("link/cache"),
    ] {
        let err = resolve_dir(Some(inside.clone()), &plugins).unwrap_err();
        assert!(
            err.to_string().contains("is inside the plugins folder"),
            "{}: {err}",
            inside.display()
        );
    }
    let outside = tmp.path().join("plugins-cache");
    assert_eq!(
        resolve_dir(Some(outside.clone()), &plugins).unwrap(),
        Some(outside)
    );
}

/// A component that compiles but is refused (here: no `handle` export) leaves no cache
/// entry, while an accepted one does.
#[tokio::test]
async fn a_refused_component_is_never_cached() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = engine_at(&tmp.path().join("cache"));
    // The empty component: valid, compiles, implements no Wasmill world.
    let empty = b"\0asm\x0d\x00\x01\x00".to_vec();
    let refused = engine.compile("empty.wasm", empty.clone()).await;
    assert!(refused.is_err(), "the empty component is refused");
    let path = cache(&engine).entry_path(&sha256_hex(&empty));
    assert!(!path.exists(), "refused, yet cached at {}", path.display());
    assert_eq!(run(&engine, "uppercase").await, "HELLO");
    let sha = sha256_hex(&std::fs::read(fixture("uppercase")).unwrap());
    assert!(cache(&engine).entry_path(&sha).exists(), "accepted: cached");
}
