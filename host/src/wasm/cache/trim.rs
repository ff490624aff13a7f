//! Keeps the compile cache within a size: after an entry is written, the least recently used
//! entries (by modification time, which a cache hit refreshes) are deleted until the folder's
//! entries fit. A Python or JavaScript plugin's entry is ~40 MB, so an unbounded cache of a
//! host whose plugins are upgraded often would grow without end.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What the entries of a cache folder may take together by default: 1 GiB (some 25 Python or
/// JavaScript plugins, thousands of Rust or C ones).
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;

/// Marks `entry` as just used (a cache hit), so trimming deletes it last.
pub fn touch(entry: &Path) {
    if let Ok(f) = std::fs::File::options().write(true).open(entry) {
        let _ = f.set_modified(SystemTime::now());
    }
}

/// Deletes the least recently used `.cwasm` entries of `dir` until they take at most
/// `max_bytes`, never `keep` (the entry just written). Returns the entries deleted.
pub fn trim(dir: &Path, max_bytes: u64, keep: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<(SystemTime, u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .filter_map(|p| {
            let m = std::fs::metadata(&p).ok()?;
            Some((m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), p))
        })
        .collect();
    let mut total: u64 = entries.iter().map(|(_, len, _)| len).sum();
    entries.sort();
    let mut deleted = Vec::new();
    for (_, len, path) in entries {
        if total <= max_bytes {
            break;
        }
        if path == keep {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {
                total -= len;
                deleted.push(path);
            }
            Err(e) => tracing::warn!(path = %path.display(), "cannot trim the compile cache: {e}"),
        }
    }
    if !deleted.is_empty() {
        tracing::info!(
            dir = %dir.display(),
            deleted = deleted.len(),
            "compile cache over {} MiB: least recently used entries deleted",
            max_bytes >> 20
        );
    }
    deleted
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn entry(dir: &Path, name: &str, len: usize, age_secs: u64) -> PathBuf {
        let path = dir.join(format!("{name}.cwasm"));
        std::fs::write(&path, vec![0u8; len]).unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(age_secs))
            .unwrap();
        path
    }

    #[test]
    fn the_least_recently_used_go_first_and_the_new_entry_stays() {
        let dir = tempfile::tempdir().unwrap();
        let oldest = entry(dir.path(), "oldest", 400, 300);
        let used = entry(dir.path(), "used", 400, 200);
        let newer = entry(dir.path(), "newer", 400, 100);
        std::fs::write(dir.path().join("key"), [0u8; 32]).unwrap();
        touch(&used); // a cache hit: now the most recently used
        let written = entry(dir.path(), "written", 400, 1000); // old mtime, but just written

        let deleted = trim(dir.path(), 1000, &written);
        assert_eq!(deleted, vec![oldest.clone(), newer.clone()]);
        assert!(used.exists() && written.exists());
        assert!(dir.path().join("key").exists(), "only entries are trimmed");
        assert!(
            trim(dir.path(), 1000, &written).is_empty(),
            "within the size now"
        );
    }
}
