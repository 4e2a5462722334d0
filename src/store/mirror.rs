//! The store as a set of files, for the cluster (docs/CLUSTER.md): what a node pushes to
//! etcd ([`read_all`]) and how it materialises what etcd holds ([`apply`]), entry by
//! entry with the store's atomic writes, stamped with the etcd revision it reflects.
//!
//! A file's path relative to the store root is its name in etcd. Dot-names (`.lock`,
//! `.staging`, the stamp) and `acme/challenges/` (tokens have their own keys) are never
//! mirrored.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::atomic::{self, FILE_MODE, KEY_MODE, StagedFile};
use super::{Error, io_err};
use crate::input::{self, Links};

/// Stamp of a materialised copy: the etcd revision it reflects.
const STAMP: &str = ".cluster.toml";
/// Most files a mirrored store may hold (hostile or runaway etcd contents).
pub const MAX_FILES: usize = 400_000;

/// One file: its bytes and whether it is private (a key: 0600 here, sealed in etcd).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileImage {
    pub bytes: Vec<u8>,
    pub private: bool,
}

/// `.cluster.toml`: which cluster and revision this copy reflects.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Stamp {
    pub prefix: String,
    pub revision: i64,
}

/// A name etcd may give a store file: at most three parts of `[A-Za-z0-9._-]`, none
/// starting with a dot, and not under `acme/challenges/`.
pub fn valid_name(rel: &str) -> bool {
    let parts: Vec<&str> = rel.split('/').collect();
    (1..=3).contains(&parts.len())
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.len() <= 128
                && !p.starts_with('.')
                && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        })
        && !rel.starts_with("acme/challenges/")
        && rel != "acme/challenges"
}

/// The unit written atomically: a certificate or request directory, else the file.
pub fn unit_of(rel: &str) -> &str {
    let mut parts = rel.splitn(3, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(top @ ("certs" | "requests")), Some(id), Some(_)) => &rel[..top.len() + 1 + id.len()],
        _ => rel,
    }
}

/// Every mirrored file of the store at `root`.
pub fn read_all(root: &Path) -> Result<BTreeMap<String, FileImage>, Error> {
    let mut out = BTreeMap::new();
    walk(root, "", 0, &mut out)?;
    Ok(out)
}

fn walk(dir: &Path, rel: &str, depth: usize, out: &mut BTreeMap<String, FileImage>) -> Result<(), Error> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let child = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
        if name.starts_with('.') || child == "acme/challenges" {
            continue;
        }
        let path = entry.path();
        let meta = fs::symlink_metadata(&path).map_err(io_err(&path))?;
        if meta.is_dir() && depth < 2 {
            walk(&path, &child, depth + 1, out)?;
        } else if meta.is_file() && valid_name(&child) {
            if out.len() >= MAX_FILES {
                return Err(Error::Damaged { path: path.clone(), reason: format!("more than {MAX_FILES} files") });
            }
            let bytes = input::read(&path, input::MAX_STATE, Links::Refuse).map_err(io_err(&path))?;
            let private = meta.permissions().mode() & 0o077 == 0 || name == "key.pem";
            out.insert(child, FileImage { bytes, private });
        }
    }
    Ok(())
}

/// Takes the store's writer lock at `root`, creating the directory if needed, without
/// initialising anything (a copy about to be materialised).
pub fn lock(root: &Path) -> Result<File, Error> {
    atomic::create_dir(root).map_err(io_err(root))?;
    let path = root.join(".lock");
    let lock = atomic::open_lock(&path).map_err(io_err(&path))?;
    lock.lock().map_err(io_err(&path))?;
    atomic::clean_staging(root).map_err(io_err(root))?;
    Ok(lock)
}

/// Makes the store at `root` hold exactly `want` (restricted to the units named in
/// `only`, when given), writing each changed certificate or request directory in one
/// atomic step: new and changed entries first, then `state.toml`, removals last, so the
/// state never names an entry that is not there yet. The caller holds the lock.
/// Returns the number of units written or removed.
pub fn apply(root: &Path, want: &BTreeMap<String, FileImage>, only: Option<&BTreeSet<String>>) -> Result<usize, Error> {
    let have = read_all(root)?;
    let mut units: BTreeSet<&str> = want.keys().chain(have.keys()).map(|k| unit_of(k)).collect();
    if let Some(only) = only {
        units.retain(|u| only.contains(*u));
    }
    let files_of = |map: &'_ BTreeMap<String, FileImage>, unit: &str| -> Vec<(String, FileImage)> {
        map.range(unit.to_owned()..)
            .take_while(|(k, _)| k.as_str() == unit || k.starts_with(&format!("{unit}/")))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let (mut writes, mut removes) = (Vec::new(), Vec::new());
    for unit in units {
        let (w, h) = (files_of(want, unit), files_of(&have, unit));
        if w == h {
            continue;
        }
        if w.is_empty() { removes.push((unit, h)) } else { writes.push((unit, w)) }
    }
    // state.toml after the entries it may name.
    writes.sort_by_key(|(u, _)| *u == "state.toml");
    let count = writes.len() + removes.len();
    for (unit, files) in writes {
        let target = root.join(unit);
        let mode = |f: &FileImage| if f.private { KEY_MODE } else { FILE_MODE };
        if unit != files[0].0 {
            // A certificate or request directory.
            let names: Vec<String> = files.iter().map(|(k, _)| k[unit.len() + 1..].to_owned()).collect();
            let staged: Vec<StagedFile<'_>> = files
                .iter()
                .zip(&names)
                .map(|((_, f), name)| StagedFile { name, bytes: &f.bytes, mode: mode(f) })
                .collect();
            if target.exists() {
                if unit.starts_with("certs/") {
                    atomic::replace_entry(root, &target, &staged).map_err(io_err(&target))?;
                } else {
                    // Only certificate entries have a crash-finished replacement; a cut-off
                    // request write is redone by the next full sync.
                    atomic::remove_entry(root, &target).map_err(io_err(&target))?;
                    atomic::create_entry(root, &target, &staged).map_err(io_err(&target))?;
                }
            } else {
                atomic::create_entry(root, &target, &staged).map_err(io_err(&target))?;
            }
        } else {
            let f = &files[0].1;
            if let Some(parent) = target.parent() {
                atomic::create_dir(parent).map_err(io_err(parent))?;
            }
            atomic::replace_file(root, &target, &f.bytes, mode(f)).map_err(io_err(&target))?;
        }
    }
    for (unit, files) in removes {
        let target = root.join(unit);
        if unit != files[0].0 {
            atomic::remove_entry(root, &target).map_err(io_err(&target))?;
        } else {
            atomic::remove_file(&target).map_err(io_err(&target))?;
        }
    }
    Ok(count)
}

/// Writes `files` into the empty directory `root`: a scratch copy for one write, thrown
/// away afterwards, so nothing is staged or synced.
pub fn write_scratch(root: &Path, files: &BTreeMap<String, FileImage>) -> Result<(), Error> {
    atomic::create_dir(root).map_err(io_err(root))?;
    for (rel, f) in files {
        let path = root.join(rel);
        if let Some(parent) = path.parent() {
            atomic::create_dir(parent).map_err(io_err(parent))?;
        }
        let mode = if f.private { KEY_MODE } else { FILE_MODE };
        atomic::write_scratch(&path, &f.bytes, mode).map_err(io_err(&path))?;
    }
    Ok(())
}

/// The stamp of the copy at `root`, if it is one.
pub fn read_stamp(root: &Path) -> Option<Stamp> {
    let text = input::read_text(&root.join(STAMP), input::MAX_TOML, Links::Refuse).ok()?;
    toml::from_str(&text).ok()
}

/// Records that the copy at `root` reflects `stamp`. The caller holds the lock.
pub fn write_stamp(root: &Path, stamp: &Stamp) -> Result<(), Error> {
    let path = root.join(STAMP);
    let text = toml::to_string(stamp).map_err(|e| Error::Damaged { path: path.clone(), reason: e.to_string() })?;
    atomic::replace_file(root, &path, text.as_bytes(), FILE_MODE).map_err(io_err(&path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_inside_the_store() {
        assert!(valid_name("certs/web-1/key.pem"));
        assert!(valid_name("state.toml"));
        assert!(valid_name("trust/ab12.pem"));
        for bad in ["../x", "certs/../../etc", "/etc/passwd", "a/b/c/d", ".lock", "certs/.x/y", "", "acme/challenges/t"]
        {
            assert!(!valid_name(bad), "{bad}");
        }
        assert_eq!(unit_of("certs/a/key.pem"), "certs/a");
        assert_eq!(unit_of("requests/r/meta.toml"), "requests/r");
        assert_eq!(unit_of("trust/x.pem"), "trust/x.pem");
    }

    #[test]
    fn apply_makes_the_copy_match() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s");
        let _lock = lock(&root).unwrap();
        let f = |s: &str, private| FileImage { bytes: s.as_bytes().to_vec(), private };
        let mut want = BTreeMap::new();
        want.insert("certs/a/cert.pem".to_owned(), f("A", false));
        want.insert("certs/a/key.pem".to_owned(), f("K", true));
        want.insert("state.toml".to_owned(), f("store_format = 1\n", false));
        assert_eq!(apply(&root, &want, None).unwrap(), 2);
        assert_eq!(read_all(&root).unwrap(), want);
        let mode = fs::metadata(root.join("certs/a/key.pem")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(apply(&root, &want, None).unwrap(), 0);
        want.remove("certs/a/cert.pem");
        want.remove("certs/a/key.pem");
        want.insert("certs/b/cert.pem".to_owned(), f("B", false));
        assert_eq!(apply(&root, &want, None).unwrap(), 2);
        assert_eq!(read_all(&root).unwrap(), want);
        assert!(!root.join("certs/a").exists());
    }
}
