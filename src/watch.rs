//! Watches the store directory and the configuration file, and tells the daemon to
//! reload: notify events debounced (150 ms), the store's `.staging/`, `.lock`
//! and a cluster node's `.cluster-work/` and `.cluster.toml` ignored.
//! The daemon also reloads on a timer, to catch events a file system does not deliver.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
use tokio::sync::mpsc::UnboundedSender;

/// What changed since the last build, as the file watcher saw it.
#[derive(Clone, Debug, Default)]
pub struct Changes {
    /// Look at every entry (the rescan, a watch error or overflow).
    pub everything: bool,
    /// Paths the watcher reported (absolute).
    pub paths: Vec<PathBuf>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        !self.everything && self.paths.is_empty()
    }

    pub fn add(&mut self, other: Self) {
        self.everything |= other.everything;
        if !self.everything {
            self.paths.extend(other.paths);
        }
    }
}

/// Keeps the watches alive; dropping it stops them.
pub struct Watch {
    debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
    /// The config's `conf.d/`, watched by [`Watch::refresh`] whenever it exists.
    fragments: Option<PathBuf>,
    /// The store directory and the inode it had when watched: a store replaced by
    /// another (restored from a backup, `mv store.new store`) is watched again at once.
    store: Option<(PathBuf, u64)>,
}

impl Watch {
    /// Watches `conf.d/` if it exists: the config directory's watch reports its creation,
    /// and the daemon calls this before each reload, so fragments written into a new (or
    /// removed and recreated) `conf.d/` apply at once too. Watching a watched directory
    /// again is harmless (inotify adds to the same watch), so nothing is tracked here:
    /// a recreated directory may even get its old inode number back.
    pub fn refresh(&mut self) {
        use std::os::unix::fs::MetadataExt;
        if let Some((store, inode)) = &mut self.store
            && let Ok(meta) = std::fs::metadata(&*store)
            && meta.ino() != *inode
        {
            match self.debouncer.watch(&*store, RecursiveMode::Recursive) {
                Ok(()) => *inode = meta.ino(),
                Err(e) => tracing::warn!(dir = %store.display(), error = %e, "cannot watch the replaced store"),
            }
        }
        let Some(dir) = self.fragments.as_deref().filter(|d| d.is_dir()) else { return };
        if let Err(e) = self.debouncer.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch");
        }
    }
}

/// A deletion moves the entry into `.staging/deleted-*` and removes it there; the
/// debouncer folds the rename and the removal into one removal inside `.staging/`,
/// which is then the only trace.
fn deleted_entry(kind: &notify::EventKind, path: &Path) -> bool {
    matches!(kind, notify::EventKind::Remove(_))
        && path.parent().and_then(Path::file_name).is_some_and(|d| d == ".staging")
        && path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("deleted-"))
}

/// True for paths whose change can alter the snapshot.
fn relevant(path: &Path, config: Option<&Path>, store: &Path) -> bool {
    if path.starts_with(store) {
        // acme/ holds the account and challenge tokens, which no snapshot reads.
        // On a cluster node: the scratch copies of writes and the revision stamp.
        let internal = path
            .components()
            .any(|c| c == Component::Normal(".staging".as_ref()) || c == Component::Normal(".cluster-work".as_ref()))
            || path.file_name().is_some_and(|n| n == ".lock" || n == ".cluster.toml" || n == ".index")
            || path.strip_prefix(store).is_ok_and(|rel| rel.starts_with("acme"));
        return !internal;
    }
    config.is_some_and(|c| {
        let fragments = crate::config::fragment_dir(c);
        // conf.d/ itself: created (or removed) after start.
        path == c
            || path == fragments
            || (path.parent() == Some(fragments.as_path()) && path.extension().is_some_and(|x| x == "toml"))
    })
}

/// Watches a jobs `incoming/` directory: each batch that creates or renames a job file
/// sends one `()` on `tx`.
pub fn start_jobs(incoming: &Path, tx: UnboundedSender<()>) -> Result<Watch, String> {
    let mut debouncer = new_debouncer(Duration::from_millis(50), None, move |result: DebounceEventResult| {
        let wanted = match result {
            Ok(events) => events.iter().any(|e| {
                !matches!(e.kind, notify::EventKind::Access(_))
                    && e.paths.iter().any(|p| p.extension().is_some_and(|x| x == "toml"))
            }),
            Err(_) => true,
        };
        if wanted {
            let _ = tx.send(());
        }
    })
    .map_err(|e| format!("cannot watch: {e}"))?;
    debouncer.watch(incoming, RecursiveMode::NonRecursive).map_err(|e| format!("{}: {e}", incoming.display()))?;
    Ok(Watch { debouncer, fragments: None, store: None })
}

/// Starts watching; each relevant batch of events sends the paths it touched on `tx`.
pub fn start(store: &Path, config: Option<&Path>, tx: UnboundedSender<Changes>) -> Result<Watch, String> {
    let store_abs = std::fs::canonicalize(store).map_err(|e| format!("{}: {e}", store.display()))?;
    let config_abs: Option<PathBuf> = config.map(|c| std::fs::canonicalize(c).unwrap_or_else(|_| c.to_owned()));
    let (s, c) = (store_abs.clone(), config_abs.clone());
    let mut debouncer = new_debouncer(Duration::from_millis(150), None, move |result: DebounceEventResult| {
        let changes = match result {
            // Reads (open, access, close-after-read) change nothing; the reload itself
            // reads the store, and counting those would reload forever.
            Ok(events) => Changes {
                everything: false,
                paths: events
                    .iter()
                    .filter(|e| !matches!(e.kind, notify::EventKind::Access(_)))
                    .flat_map(|e| {
                        e.paths.iter().filter(|p| relevant(p, c.as_deref(), &s) || deleted_entry(&e.kind, p)).cloned()
                    })
                    .collect(),
            },
            // Overflow or a watch error: rescan everything.
            Err(_) => Changes { everything: true, paths: Vec::new() },
        };
        if !changes.is_empty() {
            let _ = tx.send(changes);
        }
    })
    .map_err(|e| format!("cannot watch: {e}"))?;
    debouncer.watch(&store_abs, RecursiveMode::Recursive).map_err(|e| format!("{}: {e}", store_abs.display()))?;
    // The store's parent too: the event of the store directory being replaced arrives
    // there (the old watch follows the old directory wherever it is moved).
    if let Some(parent) = store_abs.parent()
        && let Err(e) = debouncer.watch(parent, RecursiveMode::NonRecursive)
    {
        tracing::debug!(dir = %parent.display(), error = %e, "cannot watch the store's parent");
    }
    let inode = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&store_abs).map(|m| m.ino()).unwrap_or(0)
    };
    // Directories, not files: editors replace a file by renaming another over it.
    if let Some(dir) = config_abs.as_deref().and_then(Path::parent).filter(|d| d.is_dir()) {
        debouncer.watch(dir, RecursiveMode::NonRecursive).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut watch = Watch {
        debouncer,
        fragments: config_abs.as_deref().map(crate::config::fragment_dir),
        store: Some((store_abs, inode)),
    };
    watch.refresh();
    Ok(watch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_and_lock_are_ignored() {
        let store = Path::new("/s/store");
        let cfg = Some(Path::new("/etc/p/portcullis.toml"));
        assert!(relevant(Path::new("/s/store/certs/a/cert.pem"), cfg, store));
        assert!(relevant(Path::new("/s/store/state.toml"), cfg, store));
        assert!(!relevant(Path::new("/s/store/.staging/entry-1/key.pem"), cfg, store));
        assert!(!relevant(Path::new("/s/store/.lock"), cfg, store));
        assert!(relevant(Path::new("/etc/p/portcullis.toml"), cfg, store));
        assert!(!relevant(Path::new("/etc/p/other.toml"), cfg, store));
        assert!(relevant(Path::new("/etc/p/conf.d/10-site.toml"), cfg, store));
        assert!(!relevant(Path::new("/etc/p/conf.d/README"), cfg, store));
        assert!(relevant(Path::new("/etc/p/conf.d"), cfg, store));
    }
}
