//! Plugin files stay inside the plugins folder: a name with `..` or a leading `/` is refused by
//! the config check, and a symlink (or a folder symlink on the way) that leads out of the
//! folder is refused wherever a file is read — the config check, a start, a hot reload — so
//! that a plugin cannot be pointed at, or made to load, a file the operator did not put there.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// `path` with its symlinks resolved, when that lies inside `dir` (also resolved); else an
/// error naming the file and where it leads.
pub fn confined(dir: &Path, path: &Path) -> Result<PathBuf> {
    let root = dir
        .canonicalize()
        .map_err(|e| Error::io(format!("resolve the plugins folder {}", dir.display()), e))?;
    let real = path
        .canonicalize()
        .map_err(|e| Error::io(format!("resolve {}", path.display()), e))?;
    if real.starts_with(&root) {
        Ok(real)
    } else {
        Err(Error::Config(format!(
            "{} leads to {}, outside the plugins folder {}: symlinks out of it are refused",
            path.display(),
            real.display(),
            root.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_links_inside_pass_links_out_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let plugins = tmp.path().join("plugins");
        std::fs::create_dir_all(plugins.join("sub")).unwrap();
        std::fs::write(plugins.join("a.wasm"), b"x").unwrap();
        std::fs::write(tmp.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(plugins.join("a.wasm"), plugins.join("b.wasm")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret"), plugins.join("c.wasm")).unwrap();
        std::os::unix::fs::symlink(tmp.path(), plugins.join("up")).unwrap();
        assert!(confined(&plugins, &plugins.join("a.wasm")).is_ok());
        assert!(confined(&plugins, &plugins.join("b.wasm")).is_ok());
        let e = confined(&plugins, &plugins.join("c.wasm"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("outside the plugins folder") && e.contains("secret"),
            "{e}"
        );
        assert!(confined(&plugins, &plugins.join("up/secret")).is_err());
        assert!(confined(&plugins, &plugins.join("missing.wasm")).is_err());
    }
}
