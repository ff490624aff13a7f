//! Watching the plugins folder: turns file-system notifications into "this plugin file is
//! ready" and "this plugin file is gone" events.
//!
//! A file is reported ready when its writer closed it (inotify `CLOSE_WRITE`), when it was
//! moved into the folder (an atomic rename), or, for writers the platform cannot observe
//! closing, once it has been quiet for `settle`. So a half-written file (still open for
//! writing) is never reported; a complete but broken one is, and the loader refuses it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::error::{Error, Result};

/// What happened to a file in the plugins folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileEvent {
    /// The file was written (or appeared) and is complete.
    Ready(PathBuf),
    /// The file was deleted or moved away.
    Removed(PathBuf),
}

impl FileEvent {
    /// The file concerned.
    pub fn path(&self) -> &Path {
        match self {
            FileEvent::Ready(p) | FileEvent::Removed(p) => p,
        }
    }
}

/// Whether a file is one the plugins folder cares about (`.wasm` components and their `.toml`
/// sidecars); editors' temporary files and everything else are ignored.
pub fn is_plugin_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.starts_with('.') || name.ends_with('~') {
        return false;
    }
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("wasm") | Some("toml")
    )
}

/// Watches `dir` (not recursively) and sends [`FileEvent`]s. The watch ends when the returned
/// receiver is dropped.
pub fn watch(dir: &Path, settle: Duration) -> Result<mpsc::Receiver<FileEvent>> {
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<notify::Result<notify::Event>>();
    let mut watcher = notify::recommended_watcher(move |ev| {
        let _ = raw_tx.send(ev);
    })
    .map_err(|e| Error::Other(format!("watch {}: {e}", dir.display())))?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(|e| Error::Other(format!("watch {}: {e}", dir.display())))?;

    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        // The watcher lives as long as this task; dropping it stops the notifications.
        let _watcher = watcher;
        let mut pending: HashMap<PathBuf, tokio::time::Instant> = HashMap::new();
        loop {
            let next_due = pending.values().min().copied();
            let raw = match next_due {
                Some(due) => tokio::select! {
                    r = raw_rx.recv() => r,
                    _ = tokio::time::sleep_until(due) => {
                        let now = tokio::time::Instant::now();
                        let due: Vec<PathBuf> = pending
                            .iter()
                            .filter(|(_, t)| **t <= now)
                            .map(|(p, _)| p.clone())
                            .collect();
                        for p in due {
                            pending.remove(&p);
                            if p.exists() && tx.send(FileEvent::Ready(p)).await.is_err() {
                                return;
                            }
                        }
                        continue;
                    }
                },
                None => raw_rx.recv().await,
            };
            let Some(raw) = raw else { return };
            let event = match raw {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!("plugins folder watch error: {e}");
                    continue;
                }
            };
            for (path, action) in classify(&event) {
                if !is_plugin_file(&path) {
                    continue;
                }
                let out = match action {
                    Action::Ready => {
                        pending.remove(&path);
                        FileEvent::Ready(path)
                    }
                    Action::Removed => {
                        pending.remove(&path);
                        FileEvent::Removed(path)
                    }
                    Action::Settle => {
                        pending.insert(path, tokio::time::Instant::now() + settle);
                        continue;
                    }
                };
                if tx.send(out).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(rx)
}

#[derive(Debug, PartialEq, Eq)]
enum Action {
    Ready,
    Removed,
    Settle,
}

fn classify(event: &notify::Event) -> Vec<(PathBuf, Action)> {
    let all = |a: fn() -> Action| event.paths.iter().map(|p| (p.clone(), a())).collect();
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => all(|| Action::Ready),
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => all(|| Action::Ready),
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) => all(|| Action::Removed),
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
            let mut v = Vec::new();
            if let Some(from) = event.paths.first() {
                v.push((from.clone(), Action::Removed));
            }
            if let Some(to) = event.paths.get(1) {
                v.push((to.clone(), Action::Ready));
            }
            v
        }
        EventKind::Remove(_) => all(|| Action::Removed),
        // Data writes and creations are followed by a close on Linux; elsewhere the settle
        // timer reports the file once it has been quiet.
        EventKind::Create(CreateKind::File | CreateKind::Any) | EventKind::Modify(_) => {
            all(|| Action::Settle)
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    async fn next(rx: &mut mpsc::Receiver<FileEvent>) -> FileEvent {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("no file event within 5s")
            .expect("watch ended")
    }

    #[test]
    fn only_wasm_and_toml_count() {
        assert!(is_plugin_file(Path::new("plugins/a.wasm")));
        assert!(is_plugin_file(Path::new("plugins/a.toml")));
        assert!(!is_plugin_file(Path::new("plugins/.a.wasm.swp")));
        assert!(!is_plugin_file(Path::new("plugins/a.wasm~")));
        assert!(!is_plugin_file(Path::new("plugins/readme.md")));
    }

    #[tokio::test]
    async fn reports_a_file_once_its_writer_closed_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut rx = watch(dir.path(), Duration::from_secs(3)).unwrap();
        let path = dir.path().join("p.wasm");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(b"half").unwrap();
        f.flush().unwrap();
        // Still open: nothing is reported yet (the settle timer is longer than this wait).
        let early = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await;
        assert!(
            early.is_err(),
            "reported a file that is still being written"
        );
        f.write_all(b" and the rest").unwrap();
        drop(f);
        assert_eq!(next(&mut rx).await, FileEvent::Ready(path.clone()));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(next(&mut rx).await, FileEvent::Removed(path));
    }

    #[tokio::test]
    async fn an_atomic_rename_into_the_folder_is_ready() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let mut rx = watch(dir.path(), Duration::from_secs(3)).unwrap();
        let tmp = outside.path().join("x.wasm");
        std::fs::write(&tmp, b"bytes").unwrap();
        let path = dir.path().join("x.wasm");
        std::fs::rename(&tmp, &path).unwrap();
        assert_eq!(next(&mut rx).await, FileEvent::Ready(path));
    }

    #[tokio::test]
    async fn other_files_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut rx = watch(dir.path(), Duration::from_millis(50)).unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        std::fs::write(dir.path().join("h.toml"), b"x").unwrap();
        assert_eq!(
            next(&mut rx).await,
            FileEvent::Ready(dir.path().join("h.toml"))
        );
    }
}
