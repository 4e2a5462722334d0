//! Watches the store directory and the configuration file, and tells the daemon to
//! reload: notify events debounced (150 ms), the store's `.staging/` and `.lock` ignored.
//! The daemon also reloads on a timer, to catch events a file system does not deliver.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
use tokio::sync::mpsc::UnboundedSender;

/// Keeps the watches alive; dropping it stops them.
pub struct Watch {
    _debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
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
        let internal = path.components().any(|c| c == Component::Normal(".staging".as_ref()))
            || path.file_name().is_some_and(|n| n == ".lock")
            || path.strip_prefix(store).is_ok_and(|rel| rel.starts_with("acme"));
        return !internal;
    }
    config.is_some_and(|c| {
        path == c
            || (path.parent() == Some(crate::config::fragment_dir(c).as_path())
                && path.extension().is_some_and(|x| x == "toml"))
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
    Ok(Watch { _debouncer: debouncer })
}

/// Starts watching; each relevant batch of events sends one `()` on `tx`.
pub fn start(store: &Path, config: Option<&Path>, tx: UnboundedSender<()>) -> Result<Watch, String> {
    let store_abs = std::fs::canonicalize(store).map_err(|e| format!("{}: {e}", store.display()))?;
    let config_abs: Option<PathBuf> = config.map(|c| std::fs::canonicalize(c).unwrap_or_else(|_| c.to_owned()));
    let (s, c) = (store_abs.clone(), config_abs.clone());
    let mut debouncer = new_debouncer(Duration::from_millis(150), None, move |result: DebounceEventResult| {
        let wanted = match result {
            // Reads (open, access, close-after-read) change nothing; the reload itself
            // reads the store, and counting those would reload forever.
            Ok(events) => events.iter().any(|e| {
                !matches!(e.kind, notify::EventKind::Access(_))
                    && e.paths.iter().any(|p| relevant(p, c.as_deref(), &s) || deleted_entry(&e.kind, p))
            }),
            // Overflow or a watch error: rescan everything.
            Err(_) => true,
        };
        if wanted {
            let _ = tx.send(());
        }
    })
    .map_err(|e| format!("cannot watch: {e}"))?;
    debouncer.watch(&store_abs, RecursiveMode::Recursive).map_err(|e| format!("{}: {e}", store_abs.display()))?;
    if let Some(main) = config_abs.as_deref() {
        // Directories, not files: editors replace a file by renaming another over it.
        let dirs = [main.parent().map(Path::to_owned), Some(crate::config::fragment_dir(main))];
        for dir in dirs.into_iter().flatten().filter(|d| d.is_dir()) {
            debouncer.watch(&dir, RecursiveMode::NonRecursive).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
    }
    Ok(Watch { _debouncer: debouncer })
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
    }
}
