//! Crash-safe writes. Everything is written into `.staging/` on the store's file system,
//! fsynced, then renamed into place and the parent directory fsynced, so a crash at any
//! point leaves either the old state or the new one, plus leftovers in `.staging/` that
//! the next writer removes.

// The one place allowed to create files: everything else goes through these functions.
#![allow(clippy::disallowed_methods)]

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Name of the staging directory inside the store.
pub(crate) const STAGING: &str = ".staging";

/// Mode of private keys; everything else is 0644 inside 0700 directories.
pub(crate) const KEY_MODE: u32 = 0o600;
pub(crate) const FILE_MODE: u32 = 0o644;
pub(crate) const DIR_MODE: u32 = 0o700;

/// One file of a staged write.
pub(crate) struct StagedFile<'a> {
    pub name: &'a str,
    pub bytes: &'a [u8],
    pub mode: u32,
}

/// Test builds can stop the process at a named point to prove crash safety.
#[cfg(feature = "failpoints")]
pub(crate) fn failpoint(name: &str) {
    if std::env::var("PORTCULLIS_FAILPOINT").is_ok_and(|v| v == name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn failpoint(_name: &str) {}

fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{prefix}-{}-{nanos}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

pub(crate) fn create_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(path)
}

fn fsync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

fn write_synced(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Creates a file that needs no durability (a throwaway scratch copy): no staging, no
/// fsync; refuses to replace anything.
pub(crate) fn write_scratch(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(path)?;
    f.write_all(bytes)
}

fn staging(root: &Path) -> io::Result<PathBuf> {
    let dir = root.join(STAGING);
    create_dir(&dir)?;
    Ok(dir)
}

fn parent(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

/// Writes `files` into a new directory `.staging/<name>`, everything fsynced.
fn stage_entry(root: &Path, name: &str, files: &[StagedFile<'_>]) -> io::Result<PathBuf> {
    let stage = staging(root)?.join(name);
    create_dir(&stage)?;
    for f in files {
        write_synced(&stage.join(f.name), f.bytes, f.mode)?;
    }
    fsync_dir(&stage)?;
    failpoint("entry-staged");
    Ok(stage)
}

/// Creates directory `target` with `files`, all or nothing. Fails if `target` exists.
pub(crate) fn create_entry(root: &Path, target: &Path, files: &[StagedFile<'_>]) -> io::Result<()> {
    let stage = stage_entry(root, &unique_name("entry"), files)?;
    if target.exists() {
        return Err(io::Error::new(io::ErrorKind::AlreadyExists, "already exists"));
    }
    create_dir(parent(target))?;
    fs::rename(&stage, target)?;
    fsync_dir(parent(target))?;
    failpoint("entry-renamed");
    Ok(())
}

/// Prefix of a staged replacement of `certs/<name>`: `replace.<name>.<unique>`.
const REPLACE: &str = "replace.";

/// Replaces directory `target` (which must exist) with one holding `files`: the new
/// directory is staged complete, the old one is renamed into `.staging/`, the new one
/// into place. A crash between the two renames leaves the staged replacement, which the
/// next writer moves into place ([`clean_staging`]): old state or new, never neither.
/// (Plain renames, unlike `RENAME_EXCHANGE`, are seen by the file watcher.)
pub(crate) fn replace_entry(root: &Path, target: &Path, files: &[StagedFile<'_>]) -> io::Result<()> {
    let name = target.file_name().and_then(|n| n.to_str()).ok_or_else(|| io::Error::other("bad entry path"))?;
    let stage = stage_entry(root, &format!("{REPLACE}{name}.{}", unique_name("new")), files)?;
    // The staged replacement must outlive a crash once the old entry has moved out.
    fsync_dir(parent(&stage))?;
    let old = staging(root)?.join(unique_name("deleted"));
    fs::rename(target, &old)?;
    failpoint("entry-moved-out");
    fs::rename(&stage, target)?;
    fsync_dir(parent(target))?;
    fsync_dir(parent(&stage))?;
    failpoint("entry-replaced");
    fs::remove_dir_all(&old)
}

/// Replaces (or creates) one file atomically.
pub(crate) fn replace_file(root: &Path, target: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let stage = staging(root)?.join(unique_name("file"));
    write_synced(&stage, bytes, mode)?;
    failpoint("file-staged");
    fs::rename(&stage, target)?;
    fsync_dir(parent(target))?;
    failpoint("file-renamed");
    Ok(())
}

/// Removes directory `target`: one rename takes it out of the store, then it is deleted.
pub(crate) fn remove_entry(root: &Path, target: &Path) -> io::Result<()> {
    let grave = staging(root)?.join(unique_name("deleted"));
    fs::rename(target, &grave)?;
    fsync_dir(parent(target))?;
    failpoint("entry-unlinked");
    fs::remove_dir_all(&grave)
}

/// Removes one file atomically: unlinked, then the directory is synced.
pub(crate) fn remove_file(target: &Path) -> io::Result<()> {
    fs::remove_file(target)?;
    fsync_dir(parent(target))
}

/// Removes what interrupted writes left in `.staging/`; returns the names removed.
/// Only a writer holding the store lock may call this.
pub(crate) fn clean_staging(root: &Path) -> io::Result<Vec<String>> {
    let dir = root.join(STAGING);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        // A replacement cut off after the old entry left: finish it.
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if let Some(rest) = file_name.strip_prefix(REPLACE)
            && let Some((name, _)) = rest.split_once('.')
        {
            let target = root.join("certs").join(name);
            if !target.exists() {
                fs::rename(&path, &target)?;
                fsync_dir(parent(&target))?;
                removed.push(format!("{file_name} (moved into place as {})", target.display()));
                continue;
            }
        }
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(&path)?;
        } else {
            fs::remove_file(&path)?;
        }
        removed.push(entry.file_name().to_string_lossy().into_owned());
    }
    if !removed.is_empty() {
        fsync_dir(&dir)?;
    }
    Ok(removed)
}

/// Opens (creating if needed) the lock file.
pub(crate) fn open_lock(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(KEY_MODE).open(path)
}

/// Writes a file outside the store (an export) atomically: a temporary file in the
/// same directory, fsynced, then linked into place (refusing to replace an existing file)
/// or, with `overwrite`, renamed over it.
pub(crate) fn write_file_at(target: &Path, bytes: &[u8], mode: u32, overwrite: bool) -> io::Result<()> {
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{}", unique_name(&format!("{name}.tmp"))));
    write_synced(&tmp, bytes, mode)?;
    let placed = if overwrite { fs::rename(&tmp, target) } else { fs::hard_link(&tmp, target) };
    if !overwrite || placed.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    placed?;
    fsync_dir(dir)
}
