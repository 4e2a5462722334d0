//! The store's index (`.index`): each entry's friendly name, hostnames and public
//! key, so that a command in a store of 100,000 entries finds a friendly name, a key or
//! the entries a listing filter selects without reading every entry.
//!
//! A cache, never the truth. A hit is checked against the entry itself. The index
//! records the modification times and link counts of `certs/` and `requests/`: an entry
//! added, removed or replaced behind its back (by hand, by a cluster node's copy)
//! changes them, and the index is then rebuilt. Store writers patch the entries they
//! changed and save it when done; a command that changed nothing never writes it. A
//! friendly name edited by hand inside an entry is seen at the next rebuild (`rm
//! .index` forces one).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{EntryKind, Store, atomic};

pub const FILE: &str = ".index";
const MAGIC: &str = "portcullis-index";
const VERSION: &str = "1";

/// The modification times (nanoseconds since the epoch) and link counts of `certs/`
/// and `requests/`: the link count of a directory counts its subdirectories, so an entry
/// added or removed changes it even within one tick of the file system's clock.
pub type Stamp = [u128; 4];

/// One entry as the index knows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub request: bool,
    pub id: String,
    pub friendly_name: String,
    /// Issued-to name and SANs (a request: its subject CN and SANs).
    pub names: Vec<String>,
    /// SHA-256 of the raw public key, hex; empty when the entry has no readable key.
    pub key: String,
}

impl Record {
    pub fn kind(&self) -> EntryKind {
        if self.request { EntryKind::Request } else { EntryKind::Cert }
    }

    /// The texts a listing filter matches: id, friendly name, then the hostnames.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        [self.id.as_str(), self.friendly_name.as_str()].into_iter().chain(self.names.iter().map(String::as_str))
    }
}

/// The index in memory: by kind and id.
#[derive(Clone, Debug, Default)]
pub struct Index {
    pub stamp: Stamp,
    entries: BTreeMap<(bool, String), Record>,
}

pub fn path(root: &Path) -> PathBuf {
    root.join(FILE)
}

/// The store's current [`Stamp`] (a missing directory counts as 0).
pub fn stamp(root: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let of = |sub: &str| {
        std::fs::metadata(root.join(sub)).map_or((0, 0), |m| {
            let mtime = m.modified().ok().and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok());
            (mtime.map_or(0, |d| d.as_nanos()), u128::from(m.nlink()))
        })
    };
    let ((cm, cn), (rm, rn)) = (of("certs"), of("requests"));
    [cm, cn, rm, rn]
}

/// A key's fingerprint as the index keeps it.
pub fn key_hash(public_raw: &[u8]) -> String {
    crate::pki::fingerprint_sha256(public_raw)
}

impl Index {
    /// The saved index if it was written for `expected` (the store as it is now, or as
    /// it was when this writer opened it).
    pub fn load(root: &Path, expected: Stamp) -> Option<Self> {
        let text = std::fs::read_to_string(path(root)).ok()?;
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next()?.split(' ').collect();
        let [magic, version, stamp @ ..] = header.as_slice() else { return None };
        let stamp: Vec<u128> = stamp.iter().map(|n| n.parse().ok()).collect::<Option<_>>()?;
        if *magic != MAGIC || *version != VERSION || stamp != expected {
            return None;
        }
        let mut entries = BTreeMap::new();
        for line in lines {
            let mut f = line.split('\t');
            let (kind, id, friendly_name, key) = (f.next()?, f.next()?, f.next()?, f.next()?);
            let request = match kind {
                "c" => false,
                "r" => true,
                _ => return None,
            };
            let names = f.map(str::to_owned).collect();
            let record = Record {
                request,
                id: id.to_owned(),
                friendly_name: friendly_name.to_owned(),
                names,
                key: key.to_owned(),
            };
            entries.insert((request, id.to_owned()), record);
        }
        Some(Self { stamp: expected, entries })
    }

    /// Reads every entry's names and key (on every core); unreadable entries are left out.
    pub fn build(store: &Store) -> Self {
        let stamp = stamp(store.root());
        let mut ids: Vec<(bool, String)> = Vec::new();
        for (request, sub) in [(false, "certs"), (true, "requests")] {
            ids.extend(
                super::list_ids(&store.root().join(sub)).unwrap_or_default().into_iter().map(|id| (request, id)),
            );
        }
        let entries = crate::par_map(ids, |(request, id)| store.index_record(request, &id))
            .into_iter()
            .flatten()
            .map(|r| ((r.request, r.id.clone()), r))
            .collect();
        Self { stamp, entries }
    }

    /// Writes it atomically (a writer holding the store lock only): a header line, then
    /// one line per entry, its fields separated by tabs (no field can hold a tab or a
    /// line break: friendly names refuse control characters, names and ids are plain).
    pub fn save(&self, root: &Path) -> std::io::Result<()> {
        use std::fmt::Write;
        let mut text = String::with_capacity(64 + self.entries.len() * 128);
        let [a, b, c, d] = self.stamp;
        let _ = writeln!(text, "{MAGIC} {VERSION} {a} {b} {c} {d}");
        for r in self.entries.values() {
            let plain = |s: &str| !s.contains(['\t', '\n', '\r']);
            if !(plain(&r.id) && plain(&r.friendly_name) && r.names.iter().all(|n| plain(n))) {
                // Not written: an index without this entry would miss it.
                return Ok(());
            }
            let kind = if r.request { 'r' } else { 'c' };
            let _ = write!(text, "{kind}\t{}\t{}\t{}", r.id, r.friendly_name, r.key);
            for n in &r.names {
                let _ = write!(text, "\t{n}");
            }
            text.push('\n');
        }
        atomic::replace_file(root, &path(root), text.as_bytes(), atomic::FILE_MODE)
    }

    /// Records what entry `id` is now (`None`: it is gone).
    pub fn set(&mut self, request: bool, id: &str, record: Option<Record>) {
        match record {
            Some(r) => self.entries.insert((request, id.to_owned()), r),
            None => self.entries.remove(&(request, id.to_owned())),
        };
    }

    /// The entry with this friendly name (case-insensitive), certificates first.
    pub fn by_name(&self, name_lower: &str) -> Option<&Record> {
        let mut found = self.entries.values().filter(|r| r.friendly_name.to_lowercase() == name_lower);
        let first = found.next()?;
        Some(if first.request { found.find(|r| !r.request).unwrap_or(first) } else { first })
    }

    /// The entries whose key has this hash, requests first (an answer is imported for a
    /// pending request before anything else).
    pub fn by_key(&self, hash: &str) -> Vec<&Record> {
        let mut found: Vec<&Record> = self.entries.values().filter(|r| r.key == hash).collect();
        found.sort_by_key(|r| !r.request);
        found
    }

    /// Certificate entry `id`.
    pub fn cert(&self, id: &str) -> Option<&Record> {
        self.entries.get(&(false, id.to_owned()))
    }

    /// Every certificate entry, in id order.
    pub fn certs(&self) -> impl Iterator<Item = &Record> {
        self.entries.values().filter(|r| !r.request)
    }
}
