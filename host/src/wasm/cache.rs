//! The on-disk cache of compiled components, built so that nobody but the host can plant code
//! in it.
//!
//! A cache entry is native code: loading one skips compiling and validating the component, and
//! the host then runs that code outside the sandbox's checks. So an entry is trusted only if
//! this host wrote it:
//! - the cache lives in its own folder (the platform cache folder by default), never inside
//!   the plugins folder, whose writers may only drop `.wasm` files;
//! - the folder is the host user's (created `0700`; refused when another user owns it or may
//!   write to it), and holds `key`, 32 random bytes made on first use (`0600`);
//! - every entry carries an HMAC-SHA256 under that key over the entry's name (the source's
//!   sha256 and the engine's compatibility hash) and its bytes, so an entry can be neither
//!   forged nor renamed onto another plugin;
//! - the file is read once into memory, the MAC checked over those bytes and the component
//!   deserialized from the same bytes: there is no gap between the check and the use;
//! - an entry that fails any of this (forged, renamed, truncated, unreadable) is logged,
//!   deleted and recompiled from the `.wasm`, never run.
//!
//! The threat model is in `docs/SECURITY.md`.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Component as PathPart, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::error::{Error, Result};

/// The key file's name inside the cache folder.
pub const KEY_FILE: &str = "key";
/// The first bytes of every entry (format version 1).
const MAGIC: &[u8; 8] = b"wasmill\x01";
const KEY_LEN: usize = 32;
const MAC_LEN: usize = 32;
/// Domain separation: these MACs mean "a compile cache entry of format 1".
const MAC_CONTEXT: &[u8] = b"wasmill compile cache entry v1\0";

type HmacSha256 = Hmac<Sha256>;

/// The platform's cache folder for Wasmill: `$XDG_CACHE_HOME/wasmill`, else
/// `$HOME/.cache/wasmill`; `None` when neither is set (absolute).
///
/// A few lines of the XDG base-directory rule rather than the `dirs` crate: the host runs on
/// Linux servers, where this is the whole rule, and the result is easy to predict and to
/// override (`XDG_CACHE_HOME`, or `[host] cache_dir`).
pub fn default_dir() -> Option<PathBuf> {
    let absolute = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    absolute("XDG_CACHE_HOME")
        .or_else(|| absolute("HOME").map(|h| h.join(".cache")))
        .map(|d| d.join("wasmill"))
}

/// The cache folder of a host whose plugins live in `plugins_dir`: `configured` (already
/// resolved against the config file's folder) or [`default_dir`]. A folder inside the plugins
/// folder is an error: whoever may drop a plugin there could plant native code. `Ok(None)`
/// (no cache, logged) when nothing is configured and the platform has no cache folder.
pub fn resolve_dir(configured: Option<PathBuf>, plugins_dir: &Path) -> Result<Option<PathBuf>> {
    let from_config = configured.is_some();
    let Some(dir) = configured.or_else(default_dir) else {
        tracing::warn!(
            "no compile cache: neither XDG_CACHE_HOME nor HOME is set and [host] cache_dir is not configured; plugins are compiled at every start"
        );
        return Ok(None);
    };
    if resolved(&dir).starts_with(resolved(plugins_dir)) {
        return Err(Error::Config(format!(
            "compile cache dir {} is inside the plugins folder {}: whoever can drop a plugin there could plant native code the host runs; set [host] cache_dir to a folder outside it{}",
            dir.display(),
            plugins_dir.display(),
            if from_config {
                ""
            } else {
                " (the default comes from XDG_CACHE_HOME or HOME)"
            }
        )));
    }
    Ok(Some(dir))
}

/// `path` absolute, with symlinks resolved and `.`/`..` removed (as far as it exists; the
/// rest lexically), so that two spellings of one folder compare equal.
fn resolved(path: &Path) -> PathBuf {
    let path = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    // `out` stays canonical while it exists, so `..` may pop it.
    let mut out = PathBuf::new();
    for part in absolute.components() {
        match part {
            PathPart::CurDir => {}
            PathPart::ParentDir => {
                out.pop();
            }
            other => {
                out.push(other);
                if let Ok(c) = out.canonicalize() {
                    out = c;
                }
            }
        }
    }
    out
}

/// The open cache of one engine: its folder, the host's key, the engine's compatibility hash.
pub struct CompileCache {
    dir: PathBuf,
    key: [u8; KEY_LEN],
    compat: [u8; 32],
    /// What the entries may take together (`trim::DEFAULT_MAX_BYTES`).
    max_bytes: u64,
}

impl std::fmt::Debug for CompileCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("CompileCache")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Feeds what a `Hash` impl writes into sha256 (the engine's compatibility hash only offers
/// `Hash`).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        0
    }
}

fn cache_err(dir: &Path, message: impl std::fmt::Display) -> Error {
    Error::Config(format!("compile cache dir {}: {message}", dir.display()))
}

impl CompileCache {
    /// Opens (creating it `0700` if missing) the cache folder `dir` for `engine`, and reads or
    /// makes the host's key. Refuses a folder that another user owns or may write to.
    pub fn open(dir: &Path, engine: &Engine) -> Result<Self> {
        create_private_dir(dir)?;
        check_private_dir(dir)?;
        let key = load_or_create_key(dir)?;
        let mut h = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut h);
        Ok(CompileCache {
            dir: dir.to_path_buf(),
            key,
            compat: h.0.finalize().into(),
            max_bytes: trim::DEFAULT_MAX_BYTES,
        })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the entry of the component whose source has hex sha256 `sha256` lives.
    pub fn entry_path(&self, sha256: &str) -> PathBuf {
        self.dir
            .join(format!("{sha256}-{}.cwasm", hex::encode(&self.compat[..8])))
    }

    fn mac(&self, sha256: &str, payload: &[u8]) -> HmacSha256 {
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&self.key)
            .expect("hmac takes a key of any length");
        mac.update(MAC_CONTEXT);
        mac.update(&(sha256.len() as u64).to_le_bytes());
        mac.update(sha256.as_bytes());
        mac.update(&self.compat);
        mac.update(&(payload.len() as u64).to_le_bytes());
        mac.update(payload);
        mac
    }

    /// The payload of `entry` if it is an authentic entry for `sha256`, else why not.
    fn verify<'a>(&self, sha256: &str, entry: &'a [u8]) -> std::result::Result<&'a [u8], String> {
        let header = MAGIC.len() + MAC_LEN;
        if entry.len() < header {
            return Err(format!("truncated ({} bytes)", entry.len()));
        }
        if &entry[..MAGIC.len()] != MAGIC {
            return Err("not a Wasmill cache entry (bad magic)".into());
        }
        let (tag, payload) = entry[MAGIC.len()..].split_at(MAC_LEN);
        self.mac(sha256, payload).verify_slice(tag).map_err(|_| {
            "authentication failed (forged, renamed, truncated or written under another key)"
                .to_string()
        })?;
        Ok(payload)
    }

    /// The cached component for source `sha256`, or `None` (missing, or refused: then logged
    /// and deleted, and the caller compiles).
    #[allow(unsafe_code)]
    pub fn load(&self, engine: &Engine, sha256: &str) -> Option<Component> {
        let path = self.entry_path(sha256);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                self.refuse(&path, format!("unreadable: {e}"));
                return None;
            }
        };
        let payload = match self.verify(sha256, &bytes) {
            Ok(p) => p,
            Err(reason) => {
                self.refuse(&path, reason);
                return None;
            }
        };
        // SAFETY: deserializing runs native code compiled earlier. These bytes are the ones
        // just authenticated (read once, checked and used from memory): their MAC under this
        // host's secret key, which only the host's user can read, covers the source's sha256
        // and the engine's compatibility hash, so they are what `store` of this host wrote
        // for exactly this component and engine. wasmtime also checks its version header.
        match unsafe { Component::deserialize(engine, payload) } {
            Ok(c) => {
                trim::touch(&path);
                Some(c)
            }
            Err(e) => {
                self.refuse(&path, format!("does not deserialize: {e:#}"));
                None
            }
        }
    }

    fn refuse(&self, path: &Path, reason: impl std::fmt::Display) {
        tracing::warn!(
            path = %path.display(),
            "refusing compile cache entry: {reason}; deleting it and compiling the plugin again"
        );
        if let Err(e) = std::fs::remove_file(path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), "cannot delete compile cache entry: {e}");
        }
    }

    /// Writes the entry of `component` (compiled from source `sha256`), authenticated; a
    /// failure is logged and costs only a later recompile.
    pub fn store(&self, sha256: &str, component: &Component) {
        let path = self.entry_path(sha256);
        let payload = match component.serialize() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot serialize for the compile cache: {e:#}");
                return;
            }
        };
        let tag = self.mac(sha256, &payload).finalize().into_bytes();
        let mut entry = Vec::with_capacity(MAGIC.len() + MAC_LEN + payload.len());
        entry.extend_from_slice(MAGIC);
        entry.extend_from_slice(&tag);
        entry.extend_from_slice(&payload);
        if let Err(e) = write_atomically(&path, &entry) {
            tracing::warn!(path = %path.display(), "cannot write compile cache entry: {e}");
            return;
        }
        trim::trim(&self.dir, self.max_bytes, &path);
    }
}

/// A name beside `path` no other writer of this process or another uses.
fn temp_beside(path: &Path) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}-{n}", std::process::id()));
    path.with_file_name(name)
}

/// Creates `path` readable and writable by its owner only, failing if it exists.
fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// Writes beside, then renames: a reader never sees a half-written entry.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temp_beside(path);
    let written = create_private_file(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

fn create_private_dir(dir: &Path) -> Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(|e| Error::io(format!("create compile cache dir {}", dir.display()), e))
}

#[cfg(unix)]
#[allow(unsafe_code)]
fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Refuses a folder another user owns or may write to: they could swap the key or entries.
fn check_private_dir(dir: &Path) -> Result<()> {
    let meta = std::fs::metadata(dir)
        .map_err(|e| Error::io(format!("read compile cache dir {}", dir.display()), e))?;
    if !meta.is_dir() {
        return Err(cache_err(dir, "not a folder"));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if meta.uid() != current_uid() {
            return Err(cache_err(
                dir,
                format!(
                    "owned by uid {}, not by the host's user (uid {}): another user could plant code in it; choose another [host] cache_dir",
                    meta.uid(),
                    current_uid()
                ),
            ));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(cache_err(
                dir,
                format!(
                    "writable by other users (mode {:o}): they could plant code in it; `chmod 700` it or choose another [host] cache_dir",
                    meta.mode() & 0o777
                ),
            ));
        }
    }
    Ok(())
}

/// Why the key file at `path` cannot be used, if it cannot.
fn key_file_problem(path: &Path, bytes: &[u8]) -> Option<String> {
    if bytes.len() != KEY_LEN {
        return Some(format!("{} bytes, not {KEY_LEN}", bytes.len()));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(path).ok()?;
        if !meta.is_file() || meta.uid() != current_uid() || meta.mode() & 0o077 != 0 {
            return Some(format!(
                "not a private file of the host's user (uid {}, mode {:o})",
                meta.uid(),
                meta.mode() & 0o777
            ));
        }
    }
    None
}

/// The host's key in `dir`: read, or made on first use. A key file that is not 32 bytes or
/// not private to the host's user is replaced (its entries then fail and are recompiled).
fn load_or_create_key(dir: &Path) -> Result<[u8; KEY_LEN]> {
    let path = dir.join(KEY_FILE);
    for _ in 0..3 {
        match std::fs::read(&path) {
            Ok(bytes) => match key_file_problem(&path, &bytes) {
                None => {
                    let mut key = [0; KEY_LEN];
                    key.copy_from_slice(&bytes);
                    return Ok(key);
                }
                Some(problem) => {
                    tracing::warn!(path = %path.display(), "replacing the compile cache key: {problem}; every cached component is compiled again");
                    std::fs::remove_file(&path).map_err(|e| {
                        Error::io(format!("delete compile cache key {}", path.display()), e)
                    })?;
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(key) = create_key(&path)? {
                    return Ok(key);
                }
                // Another host made it first: read theirs.
            }
            Err(e) => {
                return Err(Error::io(
                    format!("read compile cache key {}", path.display()),
                    e,
                ));
            }
        }
    }
    Err(cache_err(dir, "the key file keeps changing"))
}

/// Writes a fresh random key to `path` (`0600`), or `None` when another process created the
/// file first. Written beside and hard-linked into place, so no reader sees a partial key
/// and no writer replaces another's.
fn create_key(path: &Path) -> Result<Option<[u8; KEY_LEN]>> {
    use rand::TryRng;
    let mut key = [0; KEY_LEN];
    rand::rngs::SysRng
        .try_fill_bytes(&mut key)
        .map_err(|e| Error::Other(format!("random compile cache key: {e}")))?;
    let io = |what: &str, e| Error::io(format!("{what} compile cache key {}", path.display()), e);
    let tmp = temp_beside(path);
    let linked = create_private_file(&tmp)
        .and_then(|mut f| {
            f.write_all(&key)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(Some(key)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(None),
        Err(e) => Err(io("create", e)),
    }
}

pub mod trim;

#[cfg(all(test, unix))]
mod tests;
