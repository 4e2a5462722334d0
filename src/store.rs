//! The certificate store: the on-disk database of certificates, pending requests, the
//! trust pool and the node's state (DESIGN.md, "The certificate store").
//!
//! ```text
//! store/
//!   .lock  .staging/                     advisory lock of every writer; atomic-write area
//!   .index                               names and keys of every entry (a cache: [`index`])
//!   certs/<id>/    meta.toml cert.pem chain.pem key.pem
//!   requests/<id>/ meta.toml request.pem key.pem
//!   trust/  acme/
//!   state.toml                           default certificate, listener assignments
//! ```
//!
//! A [`Store`] is a writer: opening one takes the exclusive lock for its lifetime, removes
//! leftovers of interrupted writes and creates the factory default certificate on first
//! use. Files are only ever replaced through [`atomic`]. What the store cannot read is
//! reported with its path and never rewritten: a damaged entry is skipped (and listed as
//! a problem), a damaged or newer `state.toml` stops every command.

pub(crate) mod atomic;
pub mod index;
pub mod mirror;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::input::{self, Links};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::pki::{self, CertInfo, Chain, IdentityRequest, KeyLink, KeyType, PoolCert, PrivateKey, Subject};
use atomic::{FILE_MODE, KEY_MODE, StagedFile};

/// The store format this version reads and writes.
pub const FORMAT: u32 = 1;
/// Id and friendly name of the factory default certificate.
pub const FACTORY_ID: &str = "portcullis-default";
pub const FACTORY_NAME: &str = "Portcullis Default";
const FACTORY_DAYS: u32 = 3650;
/// Longest friendly name accepted.
const MAX_NAME: usize = 128;

/// Store errors. Each names the path (or id, or flag) and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file system refused an operation.
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    /// A file exists but is not what the store expects (damaged by hand, truncated, ...).
    #[error("{path}: {reason}")]
    Damaged { path: PathBuf, reason: String },
    /// The store was written by a newer Portcullis; this one will not touch it.
    #[error(
        "{path}: written by a newer Portcullis (store format {found}; this version reads {FORMAT}); upgrade Portcullis"
    )]
    Newer { path: PathBuf, found: i64 },
    /// No certificate or request has this id (or friendly name).
    #[error("{0:?}: no certificate or request with this id or friendly name (see `portcullis cert list`)")]
    NotFound(String),
    /// `--name` failed validation or is taken.
    #[error("--name {value:?}: {reason}")]
    Name { value: String, reason: String },
    /// No store at this path, and this command does not create one.
    #[error(
        "{0}: no certificate store here (did you forget --config? `portcullis init` creates a store, and so does `portcullis run`)"
    )]
    NoStore(PathBuf),
    /// The factory default certificate is permanent.
    #[error("{0}: the factory default certificate cannot be deleted")]
    FactoryPermanent(String),
    /// Building the factory default certificate failed.
    #[error(transparent)]
    Pki(#[from] pki::Error),
}

/// Writes an export file outside the store, atomically; see `atomic::write_file_at`.
pub fn write_export(path: &Path, bytes: &[u8], private: bool, overwrite: bool) -> Result<(), Error> {
    let mode = if private { KEY_MODE } else { FILE_MODE };
    atomic::write_file_at(path, bytes, mode, overwrite).map_err(io_err(path))
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |error| Error::Io { path: path.to_owned(), error }
}

/// Where a certificate came from (DESIGN.md `source`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    Factory,
    SelfSigned,
    Csr,
    Imported,
    Acme,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Factory => "factory",
            Self::SelfSigned => "self-signed",
            Self::Csr => "csr",
            Self::Imported => "imported",
            Self::Acme => "acme",
        }
    }
}

/// `certs/<id>/meta.toml`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertMeta {
    pub store_format: u32,
    pub friendly_name: String,
    pub source: Source,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_type: Option<KeyType>,
    /// ACME certificates: what to order again and how renewal went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acme: Option<AcmeMeta>,
}

/// The `[acme]` table of an ACME certificate's meta.toml: the order and the renewal status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeMeta {
    pub hostnames: Vec<String>,
    /// The directory URL it was ordered from.
    pub directory: String,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    pub last_attempt: Option<OffsetDateTime>,
    /// "ok" or the error of the last attempt, verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_result: Option<String>,
    /// Consecutive failed attempts.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    pub failing_since: Option<OffsetDateTime>,
    /// Not before this (backoff after a failure, or the CA's Retry-After).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    pub next_attempt: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    pub last_alert: Option<OffsetDateTime>,
    /// "renewal-failed" or "error": alerts of one kind are sent at most daily.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_alert_kind: Option<String>,
    /// The challenge type it was ordered with ("tls-alpn-01"); absent: the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenge: Option<String>,
    /// Ordered at a client's first handshake (`[acme.on_demand]`): counts towards
    /// `max_certificates`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub on_demand: bool,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// `requests/<id>/meta.toml`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestMeta {
    pub store_format: u32,
    pub friendly_name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    pub key_type: KeyType,
    pub subject: Subject,
    pub sans: Vec<String>,
}

/// `state.toml`: which certificate is the default, per node and per listener.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub store_format: u32,
    /// The global default certificate; absent means the factory default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub listeners: BTreeMap<String, ListenerState>,
}

/// A listener's own default and assigned certificates.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub assigned: Vec<String>,
}

impl State {
    /// The id served as global default.
    pub fn default_id(&self) -> &str {
        self.default.as_deref().unwrap_or(FACTORY_ID)
    }

    /// The state once certificate `id` is gone: no longer a default or assigned anywhere.
    pub fn without(&self, id: &str) -> Self {
        let mut state = self.clone();
        if state.default.as_deref() == Some(id) {
            state.default = None;
        }
        for l in state.listeners.values_mut() {
            if l.default.as_deref() == Some(id) {
                l.default = None;
            }
            l.assigned.retain(|a| a != id);
        }
        state
    }

    /// Every certificate's listeners (assigned or listener default), for listings: one
    /// pass over `state.toml` instead of one per certificate (100,000 assignments).
    pub fn listeners_by_id(&self) -> std::collections::HashMap<&str, Vec<String>> {
        let mut by_id: std::collections::HashMap<&str, Vec<String>> = std::collections::HashMap::new();
        for (name, l) in &self.listeners {
            let mut ids: Vec<&str> = l.default.iter().chain(&l.assigned).map(String::as_str).collect();
            ids.sort_unstable();
            ids.dedup();
            for id in ids {
                by_id.entry(id).or_default().push(name.clone());
            }
        }
        by_id
    }

    /// Listeners on which `id` is assigned or the listener default.
    pub fn listeners_of(&self, id: &str) -> Vec<String> {
        self.listeners
            .iter()
            .filter(|(_, l)| l.default.as_deref() == Some(id) || l.assigned.iter().any(|a| a == id))
            .map(|(name, _)| name.clone())
            .collect()
    }
}

/// A certificate entry as read from disk.
#[derive(Debug)]
pub struct CertEntry {
    pub id: String,
    pub dir: PathBuf,
    pub meta: CertMeta,
    pub cert_pem: String,
    pub chain_pem: String,
    pub info: CertInfo,
    pub key: KeyLink,
    /// The private key when it matches the certificate (parsed once, when read).
    private: Option<PrivateKey>,
    /// The chain built from the entry's chain.pem and the trust pool.
    pub chain: Chain,
    /// Problems with the entry's files that do not stop it being used (e.g. key mode).
    pub file_warnings: Vec<String>,
}

impl CertEntry {
    /// DER of the leaf.
    pub fn leaf_der(&self) -> Vec<u8> {
        first_cert(&self.cert_pem).unwrap_or_default()
    }

    /// The leaf and the intermediates: what is sent to clients.
    pub fn served_chain(&self) -> Vec<Vec<u8>> {
        std::iter::once(self.leaf_der()).chain(self.chain.intermediates.iter().map(|c| c.der.clone())).collect()
    }

    /// The private key, if the entry has one that matches.
    pub fn private_key(&self) -> Option<&PrivateKey> {
        self.private.as_ref()
    }

    /// Everything worth warning about as of `now`: the certificate and its key, the
    /// chain, the entry's files.
    pub fn warnings(&self, now: OffsetDateTime) -> Vec<String> {
        let mut warnings = self.info.warnings(self.key.clone(), now);
        warnings.extend(self.chain.warnings.iter().cloned());
        warnings.extend(self.file_warnings.iter().cloned());
        warnings
    }
}

/// A pending certificate signing request.
#[derive(Debug)]
pub struct RequestEntry {
    pub id: String,
    pub dir: PathBuf,
    pub meta: RequestMeta,
    pub request_pem: String,
}

/// What a writer wants stored as a new certificate entry.
pub struct NewCert<'a> {
    pub friendly_name: &'a str,
    pub source: Source,
    pub key_type: Option<KeyType>,
    pub cert_pem: &'a str,
    pub chain_pem: &'a str,
    pub key_pem: Option<&'a str>,
    pub acme: Option<AcmeMeta>,
}

/// What a writer wants stored as a new pending request.
pub struct NewRequest<'a> {
    pub friendly_name: &'a str,
    pub key_type: KeyType,
    pub subject: &'a Subject,
    pub sans: &'a [String],
    pub request_pem: &'a str,
    pub key_pem: &'a str,
}

/// Which kind of entry an id named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Cert,
    Request,
}

/// An open, locked store.
pub struct Store {
    root: PathBuf,
    state: State,
    notes: Vec<String>,
    /// The writers' lock; `None` for a read-only view.
    _lock: Option<File>,
    /// The index, once a lookup needed it (see [`index`]).
    index: std::sync::Mutex<Option<index::Index>>,
    /// The store's index stamp when this writer opened it, and the entries it changed
    /// since: the saved index is patched with them, not rebuilt.
    opened: Option<index::Stamp>,
    touched: Vec<(bool, String)>,
}

impl Drop for Store {
    /// A writer that changed entries brings the saved index up to date (best effort:
    /// it is a cache, and a stale one is rebuilt). Only a writer that changed something
    /// writes it: a command that fails, or only reads, leaves the store as it was.
    fn drop(&mut self) {
        if self.touched.is_empty() || self._lock.is_none() {
            return;
        }
        self.with_index(|_| ());
        let stamp = index::stamp(&self.root);
        if let Some(idx) = self.index.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner) {
            idx.stamp = stamp;
            let _ = idx.save(&self.root);
        }
    }
}

impl Store {
    /// Opens the existing store at `root` for writing; blocks while another writer holds
    /// the lock. A missing store is an error ([`Error::NoStore`]), never a reason to
    /// create one: only `portcullis init` and `portcullis run` do ([`Self::open_or_create`]).
    pub fn open(root: &Path) -> Result<Self, Error> {
        if !root.join("state.toml").is_file() {
            if root.is_dir() && has_entries(root) {
                // A store that lost its state.toml: `open_or_create` explains the damage.
                return Self::open_or_create(root);
            }
            return Err(Error::NoStore(root.to_owned()));
        }
        Self::open_or_create(root)
    }

    /// A read-only view of the existing store at `root` (`check-config`, `status`): no
    /// lock, no clean-up of interrupted writes, no factory default created; nothing is
    /// written.
    pub fn open_read_only(root: &Path) -> Result<Self, Error> {
        let state_path = root.join("state.toml");
        if !state_path.is_file() {
            return Err(Error::NoStore(root.to_owned()));
        }
        let state = read_versioned(&state_path)?;
        Ok(Self::unlocked(root, state))
    }

    /// Opens the store at `root` for writing, creating and initialising it if it does not
    /// exist. Blocks while another writer holds the lock.
    pub fn open_or_create(root: &Path) -> Result<Self, Error> {
        match fs::metadata(root) {
            Ok(m) if !m.is_dir() => {
                return Err(Error::Damaged { path: root.to_owned(), reason: "not a directory".into() });
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => atomic::create_dir(root).map_err(io_err(root))?,
            Err(e) => return Err(Error::Io { path: root.to_owned(), error: e }),
        }
        let lock_path = root.join(".lock");
        let lock = atomic::open_lock(&lock_path).map_err(io_err(&lock_path))?;
        lock.lock().map_err(io_err(&lock_path))?;
        let mut store = Self::unlocked(root, State::default());
        store._lock = Some(lock);

        let removed = atomic::clean_staging(root).map_err(io_err(&root.join(atomic::STAGING)))?;
        let (finished, removed): (Vec<String>, Vec<String>) =
            removed.into_iter().partition(|r| r.contains("moved into place"));
        for f in finished {
            store.notes.push(format!("finished an interrupted replacement: {f}"));
        }
        if !removed.is_empty() {
            store.notes.push(format!(
                "removed {} leftover(s) of an interrupted write from {}",
                removed.len(),
                root.join(atomic::STAGING).display()
            ));
        }
        let state_path = store.state_path();
        if state_path.exists() {
            store.state = read_state(&state_path)?;
        } else {
            store.initialise()?;
        }
        if !store.cert_dir(FACTORY_ID).exists() {
            store.create_factory()?;
            store.notes.push(format!(
                "{} was missing: created a new factory default certificate",
                store.cert_dir(FACTORY_ID).display()
            ));
        }
        store.finish_consumed_requests()?;
        store.opened = Some(index::stamp(root));
        Ok(store)
    }

    fn unlocked(root: &Path, state: State) -> Self {
        Self {
            root: root.to_owned(),
            state,
            notes: Vec::new(),
            _lock: None,
            index: std::sync::Mutex::new(None),
            opened: None,
            touched: Vec::new(),
        }
    }

    // === the index ===

    /// Runs `f` on the current index: the one in memory, else the saved one (patched
    /// with this writer's changes), else one built from every entry.
    fn with_index<R>(&self, f: impl FnOnce(&index::Index) -> R) -> R {
        let mut slot = self.index.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.is_none() {
            let saved = match self.opened {
                // A writer knows what it changed since it opened the store.
                Some(opened) => index::Index::load(&self.root, opened).map(|mut idx| {
                    for (request, id) in &self.touched {
                        idx.set(*request, id, self.index_record(*request, id));
                    }
                    idx
                }),
                None => index::Index::load(&self.root, index::stamp(&self.root)),
            };
            *slot = Some(saved.unwrap_or_else(|| index::Index::build(self)));
        }
        f(slot.as_ref().expect("loaded above"))
    }

    /// Notes that entry `id` changed: the index in memory is patched, and the saved one
    /// when this writer is done.
    fn touch(&mut self, kind: EntryKind, id: &str) {
        let request = kind == EntryKind::Request;
        self.touched.push((request, id.to_owned()));
        let record = self.index_record(request, id);
        if let Some(idx) = self.index.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner) {
            idx.set(request, id, record);
        }
    }

    /// What the index keeps of entry `id` (`None`: missing or unreadable).
    fn index_record(&self, request: bool, id: &str) -> Option<index::Record> {
        if request {
            let entry = self.read_request(id).ok()?;
            let key = read_optional(&entry.dir.join("key.pem"))
                .ok()
                .flatten()
                .and_then(|pem| PrivateKey::from_pem(&pem).ok());
            let mut names: Vec<String> = entry.meta.subject.common_name.iter().cloned().collect();
            names.extend(entry.meta.sans);
            Some(index::Record {
                request,
                id: id.to_owned(),
                friendly_name: entry.meta.friendly_name,
                names,
                key: key.map(|k| index::key_hash(k.public_key_raw())).unwrap_or_default(),
            })
        } else {
            let dir = self.cert_dir(id);
            let meta: CertMeta = read_versioned(&dir.join("meta.toml")).ok()?;
            let cert_path = dir.join("cert.pem");
            let leaf = single_cert(&cert_path, &read_text(&cert_path).ok()?).ok()?;
            let info = CertInfo::from_der(&leaf).ok()?;
            let issued_to = info.issued_to;
            let mut names: Vec<String> = info.sans.into_iter().filter(|n| *n != issued_to).collect();
            names.insert(0, issued_to);
            Some(index::Record {
                request,
                id: id.to_owned(),
                friendly_name: meta.friendly_name,
                names,
                key: index::key_hash(&info.public_key_raw),
            })
        }
    }

    /// Certificate `id`'s issued-to name and SANs, as the index knows them.
    pub fn cert_names(&self, id: &str) -> Vec<String> {
        self.with_index(|idx| idx.cert(id).map(|r| r.names.clone()).unwrap_or_default())
    }

    /// The ids of the certificates whose id, friendly name, issued-to name or a SAN
    /// satisfies `keep`, from the index, in id order.
    pub fn select_certs(&self, mut keep: impl FnMut(&index::Record) -> bool) -> Vec<String> {
        self.with_index(|idx| idx.certs().filter(|r| keep(r)).map(|r| r.id.clone()).collect())
    }

    /// Importing the answer to a CSR writes `certs/<id>/` with the request's key, then
    /// removes `requests/<id>/`. A crash in between leaves both; the request is then
    /// already answered, and removing it finishes the import.
    fn finish_consumed_requests(&mut self) -> Result<(), Error> {
        for id in list_ids(&self.root.join("requests"))? {
            let cert_key = self.cert_dir(&id).join("key.pem");
            let request_key = self.request_dir(&id).join("key.pem");
            if cert_key.exists()
                && read_optional(&cert_key).ok().flatten() == read_optional(&request_key).ok().flatten()
            {
                let dir = self.request_dir(&id);
                atomic::remove_entry(&self.root, &dir).map_err(io_err(&dir))?;
                self.notes
                    .push(format!("finished an interrupted import: request {id} was answered by certificate {id}"));
            }
        }
        Ok(())
    }

    /// Opens a store that must already exist (the daemon's reloads): a store directory
    /// that vanished is an error, never a reason to create a new one.
    pub fn open_existing(root: &Path) -> Result<Self, Error> {
        let state = root.join("state.toml");
        if !state.is_file() {
            return Err(Error::Damaged {
                path: state,
                reason: "missing: the store was removed or is not initialised".into(),
            });
        }
        Self::open_or_create(root)
    }

    /// A fresh store has no state.toml. One that has certificates but lost its state.toml
    /// was damaged, and initialising it would silently drop the default and assignments.
    fn initialise(&mut self) -> Result<(), Error> {
        let others: Vec<String> = list_ids(&self.root.join("certs"))?
            .into_iter()
            .chain(list_ids(&self.root.join("requests"))?)
            .filter(|id| id != FACTORY_ID)
            .collect();
        if !others.is_empty() {
            return Err(Error::Damaged {
                path: self.state_path(),
                reason: format!(
                    "missing, but the store holds {} other entr{} ({}); restore state.toml from a backup, or create it with the single line `store_format = {FORMAT}`",
                    others.len(),
                    if others.len() == 1 { "y" } else { "ies" },
                    others.join(", ")
                ),
            });
        }
        for sub in ["certs", "requests", "trust", "acme"] {
            let dir = self.root.join(sub);
            atomic::create_dir(&dir).map_err(io_err(&dir))?;
        }
        if !self.cert_dir(FACTORY_ID).exists() {
            self.create_factory()?;
        }
        self.state = State { store_format: FORMAT, ..State::default() };
        self.write_state()?;
        self.notes.push(format!("initialised a new store at {}", self.root.display()));
        Ok(())
    }

    fn create_factory(&mut self) -> Result<(), Error> {
        let mut sans = vec!["localhost".to_owned()];
        if let Some(host) = crate::hostname().filter(|h| h != "localhost" && pki::validate_dns_name(h).is_ok()) {
            sans.push(host.to_ascii_lowercase());
        }
        sans.extend(["127.0.0.1".to_owned(), "::1".to_owned()]);
        let identity = IdentityRequest {
            friendly_name: FACTORY_NAME.into(),
            subject: Subject { org: Some("Portcullis".into()), ..Subject::default() },
            sans,
        }
        .validate()?;
        let key_type = KeyType::EcdsaP256;
        let key = key_type.generate()?;
        let cert = pki::self_signed(&identity, key_type, &key, FACTORY_DAYS, OffsetDateTime::now_utc())?;
        self.write_cert_entry(
            FACTORY_ID,
            &NewCert {
                friendly_name: FACTORY_NAME,
                source: Source::Factory,
                key_type: Some(key_type),
                cert_pem: &cert,
                chain_pem: "",
                key_pem: Some(&key.to_pem()),
                acme: None,
            },
        )
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Things worth telling the operator that happened while opening (initialisation,
    /// cleanup after a crash).
    pub fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    fn state_path(&self) -> PathBuf {
        self.root.join("state.toml")
    }

    pub fn cert_dir(&self, id: &str) -> PathBuf {
        self.root.join("certs").join(id)
    }

    pub fn request_dir(&self, id: &str) -> PathBuf {
        self.root.join("requests").join(id)
    }

    fn write_state(&self) -> Result<(), Error> {
        let path = self.state_path();
        let text =
            toml::to_string(&self.state).map_err(|e| Error::Damaged { path: path.clone(), reason: e.to_string() })?;
        atomic::replace_file(&self.root, &path, text.as_bytes(), FILE_MODE).map_err(io_err(&path))
    }

    // === reading ===

    /// Every certificate entry, sorted by id, and the entries that could not be read
    /// (unreadable trust-pool files included).
    pub fn certs(&self) -> Result<(Vec<CertEntry>, Vec<Error>), Error> {
        self.certs_of(list_ids(&self.root.join("certs"))?)
    }

    /// The imported roots and intermediates in `trust/`, and the files that could not be read.
    pub fn trust_pool(&self) -> Result<(Vec<PoolCert>, Vec<Error>), Error> {
        let dir = self.root.join("trust");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
            Err(e) => return Err(Error::Io { path: dir, error: e }),
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "pem"))
            .collect();
        paths.sort();
        let mut pool = Vec::new();
        let mut bad = Vec::new();
        for path in paths {
            let parsed = read_text(&path)
                .and_then(|pem| single_cert(&path, &pem))
                .and_then(|der| PoolCert::new(der).map_err(|reason| Error::Damaged { path: path.clone(), reason }));
            match parsed {
                Ok(c) => pool.push(c),
                Err(e) => bad.push(e),
            }
        }
        Ok((pool, bad))
    }

    /// Adds a root or intermediate to the trust pool; false if it was already there.
    pub fn add_trust(&mut self, der: &[u8]) -> Result<bool, Error> {
        let dir = self.root.join("trust");
        let path = dir.join(format!("{}.pem", pki::fingerprint_sha256(der)));
        if path.exists() {
            return Ok(false);
        }
        atomic::create_dir(&dir).map_err(io_err(&dir))?;
        let pem = pem_cert(der);
        atomic::replace_file(&self.root, &path, pem.as_bytes(), FILE_MODE).map_err(io_err(&path))?;
        Ok(true)
    }

    /// The trust-pool certificate whose SHA-256 fingerprint is `key` or starts with it (at
    /// least 8 hex digits, and unique); `None` when `key` does not look like one.
    pub fn resolve_trust(&self, key: &str) -> Result<Option<String>, Error> {
        let key = key.to_ascii_lowercase().replace(':', "");
        if key.len() < 8 || key.len() > 64 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let (pool, _) = self.trust_pool()?;
        let mut found = pool.iter().map(|c| pki::fingerprint_sha256(&c.der)).filter(|f| f.starts_with(&key));
        match (found.next(), found.next()) {
            (Some(f), None) => Ok(Some(f)),
            (Some(_), Some(_)) => Err(Error::NotFound(format!("{key} (several trust certificates start with it)"))),
            (None, _) => Ok(None),
        }
    }

    /// Removes a root or intermediate from the trust pool.
    pub fn remove_trust(&mut self, fingerprint: &str) -> Result<(), Error> {
        let path = self.root.join("trust").join(format!("{fingerprint}.pem"));
        atomic::remove_file(&path).map_err(io_err(&path))
    }

    /// A stored private key (of a pending request, or of a certificate) whose public key
    /// is `public_raw`.
    pub fn find_key(&self, public_raw: &[u8]) -> Result<Option<(EntryKind, String, PrivateKey)>, Error> {
        let hash = index::key_hash(public_raw);
        let hits: Vec<(EntryKind, String)> =
            self.with_index(|idx| idx.by_key(&hash).into_iter().map(|r| (r.kind(), r.id.clone())).collect());
        for (kind, id) in hits {
            let dir = if kind == EntryKind::Cert { self.cert_dir(&id) } else { self.request_dir(&id) };
            if let Ok(Some(pem)) = read_optional(&dir.join("key.pem"))
                && let Ok(key) = PrivateKey::from_pem(&pem)
                && key.public_key_raw() == public_raw
            {
                return Ok(Some((kind, id, key)));
            }
        }
        // Only a stale index could miss a pending request's key, so requests (few) are
        // read to be sure; a certificate's key the index does not know is not looked for.
        for (kind, sub) in [(EntryKind::Request, "requests")] {
            for id in list_ids(&self.root.join(sub))? {
                let Ok(Some(pem)) = read_optional(&self.root.join(sub).join(&id).join("key.pem")) else { continue };
                if let Ok(key) = PrivateKey::from_pem(&pem)
                    && key.public_key_raw() == public_raw
                {
                    return Ok(Some((kind, id, key)));
                }
            }
        }
        Ok(None)
    }

    /// Every pending request, sorted by id, and the entries that could not be read.
    pub fn requests(&self) -> Result<(Vec<RequestEntry>, Vec<Error>), Error> {
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        for id in list_ids(&self.root.join("requests"))? {
            match self.read_request(&id) {
                Ok(entry) => ok.push(entry),
                Err(e) => bad.push(e),
            }
        }
        Ok((ok, bad))
    }

    pub fn read_cert(&self, id: &str) -> Result<CertEntry, Error> {
        let (pool, _) = self.trust_pool()?;
        self.read_cert_with(id, &pool)
    }

    /// The entries `ids` read whole, in order, and those that could not be read.
    pub fn certs_of(&self, ids: Vec<String>) -> Result<(Vec<CertEntry>, Vec<Error>), Error> {
        let (pool, mut bad) = self.trust_pool()?;
        let mut ok = Vec::new();
        for read in crate::par_map(ids, |id| self.read_cert_with(&id, &pool)) {
            match read {
                Ok(entry) => ok.push(entry),
                Err(e) => bad.push(e),
            }
        }
        Ok((ok, bad))
    }

    /// Ids of every certificate entry, sorted.
    pub fn cert_ids(&self) -> Result<Vec<String>, Error> {
        list_ids(&self.root.join("certs"))
    }

    /// Size and modification time of each file of a certificate entry: equal stamps
    /// mean the entry need not be parsed again.
    pub fn entry_stamp(&self, id: &str) -> Stamp {
        let dir = self.cert_dir(id);
        Stamp(["meta.toml", "cert.pem", "chain.pem", "key.pem"].iter().map(|f| file_stamp(&dir.join(f))).collect())
    }

    /// The stamp of the whole trust pool: chains change when it does.
    pub fn trust_stamp(&self) -> Stamp {
        let dir = self.root.join("trust");
        let mut names: Vec<PathBuf> =
            fs::read_dir(&dir).map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect()).unwrap_or_default();
        names.sort();
        Stamp(names.iter().map(|p| file_stamp(p)).collect())
    }

    pub fn read_cert_with(&self, id: &str, pool: &[PoolCert]) -> Result<CertEntry, Error> {
        let dir = self.cert_dir(id);
        let meta_path = dir.join("meta.toml");
        let meta: CertMeta = read_versioned(&meta_path)?;
        // A hand-edited or planted name is reported, never rendered whole.
        if meta.friendly_name.chars().count() > MAX_NAME || meta.friendly_name.chars().any(char::is_control) {
            return Err(Error::Damaged {
                path: meta_path,
                reason: format!("friendly_name is longer than {MAX_NAME} characters or holds control characters"),
            });
        }
        let cert_path = dir.join("cert.pem");
        let cert_pem = read_text(&cert_path)?;
        let leaf = single_cert(&cert_path, &cert_pem)?;
        let info = CertInfo::from_der(&leaf).map_err(|reason| Error::Damaged { path: cert_path.clone(), reason })?;
        let chain_path = dir.join("chain.pem");
        let chain_pem = read_optional(&chain_path)?.unwrap_or_default();
        // The entry's own chain.pem comes first, then the shared trust pool.
        let mut candidates = Vec::new();
        for der in all_certs(&chain_path, &chain_pem)? {
            candidates.push(PoolCert::new(der).map_err(|reason| Error::Damaged { path: chain_path.clone(), reason })?);
        }
        candidates.extend(pool.iter().cloned());
        let mut chain = pki::build_chain(&leaf, &info, &candidates, OffsetDateTime::now_utc());
        if meta.source == Source::Acme {
            // ACME CAs send leaf + intermediates; clients hold the root, it is never served.
            chain.warnings.retain(|w| !w.starts_with("chain incomplete: missing root"));
        }
        let mut file_warnings = Vec::new();
        let key_path = dir.join("key.pem");
        let mut private = None;
        let key = match read_optional(&key_path) {
            Ok(None) => KeyLink::Missing,
            Err(e) => KeyLink::Unreadable(e.to_string()),
            Ok(Some(pem)) => {
                if let Ok(m) = fs::metadata(&key_path) {
                    let mode = m.permissions().mode() & 0o777;
                    if mode & 0o077 != 0 {
                        file_warnings.push(format!("{} is mode {mode:04o}; keys must be 0600", key_path.display()));
                    }
                }
                match PrivateKey::from_pem(&pem) {
                    Ok(k) if k.public_key_raw() == info.public_key_raw.as_slice() => {
                        private = Some(k);
                        KeyLink::Matches
                    }
                    Ok(_) => KeyLink::Mismatch,
                    Err(why) => KeyLink::Unreadable(format!("{}: {why}", key_path.display())),
                }
            }
        };
        Ok(CertEntry { id: id.to_owned(), dir, meta, cert_pem, chain_pem, info, key, private, chain, file_warnings })
    }

    pub fn read_request(&self, id: &str) -> Result<RequestEntry, Error> {
        let dir = self.request_dir(id);
        let meta: RequestMeta = read_versioned(&dir.join("meta.toml"))?;
        if meta.friendly_name.chars().count() > MAX_NAME || meta.friendly_name.chars().any(char::is_control) {
            return Err(Error::Damaged {
                path: dir.join("meta.toml"),
                reason: format!("friendly_name is longer than {MAX_NAME} characters or holds control characters"),
            });
        }
        let request_pem = read_text(&dir.join("request.pem"))?;
        Ok(RequestEntry { id: id.to_owned(), dir, meta, request_pem })
    }

    /// Finds an entry by id, or else by friendly name (case-insensitive).
    pub fn resolve(&self, key: &str) -> Result<(EntryKind, String), Error> {
        if valid_id(key) {
            if self.cert_dir(key).is_dir() {
                return Ok((EntryKind::Cert, key.to_owned()));
            }
            if self.request_dir(key).is_dir() {
                return Ok((EntryKind::Request, key.to_owned()));
            }
        }
        self.find_by_name(key).ok_or_else(|| Error::NotFound(key.to_owned()))
    }

    /// Friendly names are unique across certificates and requests, because a request's
    /// name passes to the certificate that answers it.
    pub fn find_by_name(&self, name: &str) -> Option<(EntryKind, String)> {
        let wanted = name.trim().to_lowercase();
        let hit = self.with_index(|idx| idx.by_name(&wanted).map(|r| (r.kind(), r.id.clone())))?;
        // Checked against the entry: a name edited by hand since the index was built
        // sends the lookup to the entries themselves.
        let (kind, id) = &hit;
        let dir = if *kind == EntryKind::Cert { self.cert_dir(id) } else { self.request_dir(id) };
        let current = read_versioned::<toml::Table>(&dir.join("meta.toml"))
            .ok()
            .and_then(|t| t.get("friendly_name").and_then(|v| v.as_str()).map(str::to_lowercase));
        if current.as_deref() == Some(wanted.as_str()) {
            return Some(hit);
        }
        self.scan_by_name(&wanted)
    }

    /// [`Self::find_by_name`] by reading every entry's meta.toml.
    fn scan_by_name(&self, wanted: &str) -> Option<(EntryKind, String)> {
        for (kind, sub) in [(EntryKind::Cert, "certs"), (EntryKind::Request, "requests")] {
            for id in list_ids(&self.root.join(sub)).ok()? {
                let meta_path = self.root.join(sub).join(&id).join("meta.toml");
                let Ok(table) = read_versioned::<toml::Table>(&meta_path) else { continue };
                if table.get("friendly_name").and_then(|v| v.as_str()).map(str::to_lowercase).as_deref() == Some(wanted)
                {
                    return Some((kind, id));
                }
            }
        }
        None
    }

    /// Validates a new friendly name and returns it trimmed.
    pub fn check_new_name(&self, name: &str) -> Result<String, Error> {
        let bad = |reason: &str| Error::Name { value: name.to_owned(), reason: reason.to_owned() };
        let trimmed = name.trim();
        if trimmed.is_empty() {
            return Err(bad("must not be empty"));
        }
        if trimmed.chars().count() > MAX_NAME {
            return Err(bad(&format!("longer than {MAX_NAME} characters")));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(bad("control characters are not allowed"));
        }
        if let Some((kind, id)) = self.find_by_name(trimmed) {
            let what = if kind == EntryKind::Cert { "certificate" } else { "pending request" };
            return Err(bad(&format!("already used by {what} {id}")));
        }
        Ok(trimmed.to_owned())
    }

    /// Store directories that others may read or write: the store holds private keys,
    /// and `init` makes every directory 0700. One line each, for `problems`.
    pub fn permission_problems(&self) -> Vec<String> {
        ["", "certs", "requests", "trust", "acme"]
            .iter()
            .filter_map(|sub| {
                let dir = if sub.is_empty() { self.root.clone() } else { self.root.join(sub) };
                let mode = fs::symlink_metadata(&dir).ok()?.permissions().mode() & 0o7777;
                (mode & 0o077 != 0)
                    .then(|| format!("{} is mode {mode:04o}; store directories must be 0700", dir.display()))
            })
            .collect()
    }

    /// A short id made from the friendly name, unique among certificates and requests.
    pub fn new_id(&self, friendly_name: &str) -> String {
        let mut slug = String::new();
        for c in friendly_name.chars().flat_map(char::to_lowercase) {
            if c.is_ascii_alphanumeric() {
                slug.push(c);
            } else if !slug.ends_with('-') && !slug.is_empty() {
                slug.push('-');
            }
            if slug.len() >= 40 {
                break;
            }
        }
        let slug = slug.trim_end_matches('-');
        let base = if slug.is_empty() { "cert" } else { slug };
        let free = |id: &str| !self.cert_dir(id).exists() && !self.request_dir(id).exists();
        if free(base) {
            return base.to_owned();
        }
        (2..).map(|n| format!("{base}-{n}")).find(|id| free(id)).expect("ids are unbounded")
    }

    // === writing ===

    /// Stores a new certificate entry under a fresh id made from its friendly name.
    pub fn add_cert(&mut self, new: &NewCert<'_>) -> Result<String, Error> {
        let id = self.new_id(new.friendly_name);
        self.write_cert_entry(&id, new)?;
        self.touch(EntryKind::Cert, &id);
        Ok(id)
    }

    /// Stores the certificate that answers pending request `id` under the same id, with
    /// the request's key, then removes the request (see `finish_consumed_requests`).
    pub fn answer_request(&mut self, id: &str, new: &NewCert<'_>) -> Result<(), Error> {
        // The CSR stays with the certificate: a CA may ask for it again at renewal.
        let csr_path = self.request_dir(id).join("request.pem");
        let csr = read_text(&csr_path)?;
        let extra = [StagedFile { name: "request.pem", bytes: csr.as_bytes(), mode: FILE_MODE }];
        self.write_entry_with(id, new, false, &extra)?;
        self.touch(EntryKind::Cert, id);
        let dir = self.request_dir(id);
        atomic::remove_entry(&self.root, &dir).map_err(io_err(&dir))?;
        self.touch(EntryKind::Request, id);
        Ok(())
    }

    /// The CSR certificate `id` was issued for, when it answered a request made here.
    pub fn cert_request_pem(&self, id: &str) -> Option<String> {
        read_optional(&self.cert_dir(id).join("request.pem")).ok().flatten()
    }

    /// Gives an existing certificate entry its private key.
    pub fn attach_key(&mut self, id: &str, key_pem: &str) -> Result<(), Error> {
        let path = self.cert_dir(id).join("key.pem");
        atomic::replace_file(&self.root, &path, key_pem.as_bytes(), KEY_MODE).map_err(io_err(&path))?;
        self.touch(EntryKind::Cert, id);
        Ok(())
    }

    /// Moves `old`'s default roles and listener assignments to `new`, in one state write.
    /// Returns what moved, in words.
    pub fn replace(&mut self, old: &str, new: &str) -> Result<Vec<String>, Error> {
        let mut state = self.state.clone();
        let mut moved = Vec::new();
        if state.default_id() == old {
            state.default = (new != FACTORY_ID).then(|| new.to_owned());
            moved.push("the default certificate".to_owned());
        }
        for (name, l) in &mut state.listeners {
            if l.default.as_deref() == Some(old) {
                l.default = Some(new.to_owned());
                moved.push(format!("the default of listener {name}"));
            }
            if let Some(i) = l.assigned.iter().position(|a| a == old) {
                if l.assigned.iter().any(|a| a == new) {
                    l.assigned.remove(i);
                } else {
                    l.assigned[i] = new.to_owned();
                }
                moved.push(format!("the assignment to listener {name}"));
            }
        }
        if !moved.is_empty() {
            self.commit_state(state)?;
        }
        Ok(moved)
    }

    fn write_cert_entry(&self, id: &str, new: &NewCert<'_>) -> Result<(), Error> {
        self.write_entry(id, new, false)
    }

    fn write_entry(&self, id: &str, new: &NewCert<'_>, replace: bool) -> Result<(), Error> {
        self.write_entry_with(id, new, replace, &[])
    }

    /// [`Self::write_entry`] with more files in the entry (the answered CSR).
    fn write_entry_with(
        &self,
        id: &str,
        new: &NewCert<'_>,
        replace: bool,
        extra: &[StagedFile<'_>],
    ) -> Result<(), Error> {
        let meta = CertMeta {
            store_format: FORMAT,
            friendly_name: new.friendly_name.to_owned(),
            source: new.source,
            created: now_seconds(),
            key_type: new.key_type,
            acme: new.acme.clone(),
        };
        let meta = toml_text(&meta);
        let mut files = vec![
            StagedFile { name: "meta.toml", bytes: meta.as_bytes(), mode: FILE_MODE },
            StagedFile { name: "cert.pem", bytes: new.cert_pem.as_bytes(), mode: FILE_MODE },
        ];
        if !new.chain_pem.is_empty() {
            files.push(StagedFile { name: "chain.pem", bytes: new.chain_pem.as_bytes(), mode: FILE_MODE });
        }
        if let Some(key) = new.key_pem {
            files.push(StagedFile { name: "key.pem", bytes: key.as_bytes(), mode: KEY_MODE });
        }
        files.extend(extra.iter().map(|f| StagedFile { name: f.name, bytes: f.bytes, mode: f.mode }));
        let dir = self.cert_dir(id);
        if replace {
            atomic::replace_entry(&self.root, &dir, &files).map_err(io_err(&dir))
        } else {
            atomic::create_entry(&self.root, &dir, &files).map_err(io_err(&dir))
        }
    }

    /// Replaces the certificate, chain and key of entry `id` in one step (a renewal):
    /// the id, friendly name, default role and assignments stay; the creation time is
    /// the renewal's. Readers see the old entry or the new one, never a mix.
    pub fn renew_entry(&mut self, id: &str, new: &NewCert<'_>) -> Result<(), Error> {
        if !self.cert_dir(id).is_dir() {
            return Err(Error::NotFound(id.to_owned()));
        }
        self.write_entry(id, new, true)?;
        self.touch(EntryKind::Cert, id);
        Ok(())
    }

    /// The meta.toml of certificate `id`.
    pub fn read_meta(&self, id: &str) -> Result<CertMeta, Error> {
        read_versioned(&self.cert_dir(id).join("meta.toml"))
    }

    /// Saves the ACME account credentials (`acme/account.json`, 0600).
    pub fn write_acme_account(&mut self, json: &[u8]) -> Result<(), Error> {
        let dir = self.root.join("acme");
        atomic::create_dir(&dir).map_err(io_err(&dir))?;
        let path = dir.join("account.json");
        atomic::replace_file(&self.root, &path, json, KEY_MODE).map_err(io_err(&path))
    }

    /// Rewrites the `[acme]` table of certificate `id`'s meta.toml.
    pub fn update_acme(&mut self, id: &str, acme: &AcmeMeta) -> Result<(), Error> {
        let path = self.cert_dir(id).join("meta.toml");
        let mut meta: CertMeta = read_versioned(&path)?;
        meta.acme = Some(acme.clone());
        atomic::replace_file(&self.root, &path, toml_text(&meta).as_bytes(), FILE_MODE).map_err(io_err(&path))
    }

    /// Stores a new pending request (CSR and its private key).
    pub fn add_request(&mut self, new: &NewRequest<'_>) -> Result<String, Error> {
        let id = self.new_id(new.friendly_name);
        let meta = RequestMeta {
            store_format: FORMAT,
            friendly_name: new.friendly_name.to_owned(),
            created: now_seconds(),
            key_type: new.key_type,
            subject: new.subject.clone(),
            sans: new.sans.to_vec(),
        };
        let meta = toml_text(&meta);
        let files = [
            StagedFile { name: "meta.toml", bytes: meta.as_bytes(), mode: FILE_MODE },
            StagedFile { name: "request.pem", bytes: new.request_pem.as_bytes(), mode: FILE_MODE },
            StagedFile { name: "key.pem", bytes: new.key_pem.as_bytes(), mode: KEY_MODE },
        ];
        let dir = self.request_dir(&id);
        atomic::create_entry(&self.root, &dir, &files).map_err(io_err(&dir))?;
        self.touch(EntryKind::Request, &id);
        Ok(id)
    }

    /// Makes `id` (a certificate) the global default; returns the previous default id.
    pub fn set_default(&mut self, id: &str) -> Result<String, Error> {
        if !self.cert_dir(id).is_dir() {
            return Err(Error::NotFound(id.to_owned()));
        }
        let previous = self.state.default_id().to_owned();
        let mut state = self.state.clone();
        // The factory default is the implicit default: store it as "no default".
        state.default = (id != FACTORY_ID).then(|| id.to_owned());
        self.commit_state(state)?;
        Ok(previous)
    }

    /// Makes `id` the default of `listener` (`None` clears it); returns the previous one.
    pub fn set_listener_default(&mut self, listener: &str, id: Option<&str>) -> Result<Option<String>, Error> {
        let mut state = self.state.clone();
        let entry = state.listeners.entry(listener.to_owned()).or_default();
        let previous = std::mem::replace(&mut entry.default, id.map(str::to_owned));
        if entry.default.is_none() && entry.assigned.is_empty() {
            state.listeners.remove(listener);
        }
        self.commit_state(state)?;
        Ok(previous)
    }

    /// Assigns (or with `assign = false` unassigns) `id` on each listener; returns the
    /// listeners that changed.
    pub fn assign(&mut self, id: &str, listeners: &[String], assign: bool) -> Result<Vec<String>, Error> {
        let mut state = self.state.clone();
        let mut changed = Vec::new();
        for name in listeners {
            let entry = state.listeners.entry(name.clone()).or_default();
            let present = entry.assigned.iter().any(|a| a == id);
            if assign && !present {
                entry.assigned.push(id.to_owned());
                changed.push(name.clone());
            } else if !assign && (present || entry.default.as_deref() == Some(id)) {
                entry.assigned.retain(|a| a != id);
                if entry.default.as_deref() == Some(id) {
                    entry.default = None;
                }
                changed.push(name.clone());
            }
            if entry.default.is_none() && entry.assigned.is_empty() {
                state.listeners.remove(name);
            }
        }
        if !changed.is_empty() {
            self.commit_state(state)?;
        }
        Ok(changed)
    }

    /// Assigns many certificates to one listener in a single state write (bulk setups).
    pub fn assign_all(&mut self, listener: &str, ids: &[String]) -> Result<usize, Error> {
        let mut state = self.state.clone();
        let entry = state.listeners.entry(listener.to_owned()).or_default();
        let before = entry.assigned.len();
        for id in ids {
            if !entry.assigned.contains(id) {
                entry.assigned.push(id.clone());
            }
        }
        let added = entry.assigned.len() - before;
        if added > 0 {
            self.commit_state(state)?;
        }
        Ok(added)
    }

    /// Deletes a certificate or request. A certificate's default role and listener
    /// assignments are dropped first, so a crash in between leaves no dangling reference.
    pub fn delete(&mut self, kind: EntryKind, id: &str) -> Result<Deleted, Error> {
        if kind == EntryKind::Request {
            let dir = self.request_dir(id);
            atomic::remove_entry(&self.root, &dir).map_err(io_err(&dir))?;
            self.touch(kind, id);
            return Ok(Deleted { was_default: false, listeners: Vec::new() });
        }
        if id == FACTORY_ID {
            return Err(Error::FactoryPermanent(id.to_owned()));
        }
        let was_default = self.state.default.as_deref() == Some(id);
        let listeners = self.state.listeners_of(id);
        let state = self.state.without(id);
        if was_default || !listeners.is_empty() {
            self.commit_state(state)?;
        }
        let dir = self.cert_dir(id);
        atomic::remove_entry(&self.root, &dir).map_err(io_err(&dir))?;
        self.touch(kind, id);
        Ok(Deleted { was_default, listeners })
    }

    fn commit_state(&mut self, state: State) -> Result<(), Error> {
        let previous = std::mem::replace(&mut self.state, state);
        if let Err(e) = self.write_state() {
            self.state = previous;
            return Err(e);
        }
        Ok(())
    }
}

/// Sizes and modification times of a set of files (see `Store::entry_stamp`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stamp(Vec<(u64, i128)>);

fn file_stamp(path: &Path) -> (u64, i128) {
    match fs::metadata(path) {
        Ok(m) => {
            // The inode's change time: moves with every write, and with a chmod, which
            // must be noticed too (a key made readable to others).
            use std::os::unix::fs::MetadataExt;
            (m.len(), i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()))
        }
        Err(_) => (0, -1),
    }
}

/// What a deletion changed besides removing the entry.
#[derive(Debug)]
pub struct Deleted {
    pub was_default: bool,
    pub listeners: Vec<String>,
}

/// Ids are what `new_id` makes: lowercase ASCII letters, digits and inner hyphens.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
}

/// Entry directories under `dir`, sorted; a missing `dir` is empty. Names that are not
/// valid ids (editor backups, dot-files) are not entries.
/// Whether a store directory holds certificates or requests (so it is a damaged store,
/// not a missing one).
fn has_entries(root: &Path) -> bool {
    ["certs", "requests"].iter().any(|d| fs::read_dir(root.join(d)).is_ok_and(|mut r| r.next().is_some()))
}

fn list_ids(dir: &Path) -> Result<Vec<String>, Error> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::Io { path: dir.to_owned(), error: e }),
    };
    let mut ids = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if valid_id(&name) && entry.file_type().map_err(io_err(dir))?.is_dir() {
            ids.push(name);
        }
    }
    ids.sort();
    Ok(ids)
}

/// Reads a store file: a regular file (never a link, FIFO or device: only Portcullis
/// writes here, so anything else was planted or broken) of bounded size.
fn read_text(path: &Path) -> Result<String, Error> {
    read_optional(path)?.ok_or_else(|| Error::Damaged { path: path.to_owned(), reason: "missing".into() })
}

/// [`read_text`] for a file that may be absent.
fn read_optional(path: &Path) -> Result<Option<String>, Error> {
    let max = if path.ends_with("state.toml") { input::MAX_STATE } else { input::MAX_PEM };
    match input::read_text(path, max, Links::Refuse) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput | io::ErrorKind::FileTooLarge
            ) =>
        {
            Err(Error::Damaged { path: path.to_owned(), reason: e.to_string() })
        }
        Err(e) => Err(Error::Io { path: path.to_owned(), error: e }),
    }
}

/// Reads a TOML file that carries `store_format`, refusing newer formats before looking
/// at anything else (a newer version may have added fields).
/// `state.toml`, parsed again only when it was replaced: the daemon opens the store at
/// every reload, and with 100,000 assignments parsing it is a tenth of a reload. Writers
/// replace it by rename, so a new file has a new inode; size and modification time
/// cover an edit in place.
fn read_state(path: &Path) -> Result<State, Error> {
    use std::os::unix::fs::MetadataExt;
    type Key = (PathBuf, u64, i64, i64, u64);
    static LAST: std::sync::Mutex<Option<(Key, State)>> = std::sync::Mutex::new(None);
    let key = fs::metadata(path).ok().map(|m| (path.to_owned(), m.ino(), m.mtime(), m.mtime_nsec(), m.size()));
    let mut last = LAST.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let (Some(k), Some((cached, state))) = (&key, last.as_ref())
        && k == cached
    {
        return Ok(state.clone());
    }
    let state: State = read_versioned(path)?;
    *last = key.map(|k| (k, state.clone()));
    Ok(state)
}

fn read_versioned<T: DeserializeOwned>(path: &Path) -> Result<T, Error> {
    let text = read_text(path)?;
    let damaged = |reason: String| Error::Damaged { path: path.to_owned(), reason };
    let table: toml::Table = toml::from_str(&text).map_err(|e| damaged(one_line(&e.to_string())))?;
    match table.get("store_format") {
        Some(toml::Value::Integer(n)) if *n > i64::from(FORMAT) => {
            return Err(Error::Newer { path: path.to_owned(), found: *n });
        }
        Some(toml::Value::Integer(n)) if *n >= 1 => {}
        Some(_) => return Err(damaged("store_format must be a positive integer".into())),
        None => return Err(damaged("store_format is missing".into())),
    }
    toml::from_str(&text).map_err(|e| damaged(one_line(&e.to_string())))
}

/// toml's messages span several lines with a source excerpt; keep the first and the last.
pub(crate) fn one_line(msg: &str) -> String {
    let lines: Vec<&str> = msg.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    match (lines.first(), lines.last()) {
        (Some(first), Some(last)) if lines.len() > 1 => {
            let first = first.trim_start_matches("TOML parse error ");
            format!("{first}: {last}")
        }
        _ => msg.trim().to_owned(),
    }
}

fn toml_text<T: Serialize>(value: &T) -> String {
    toml::to_string(value).expect("store metadata always serialises")
}

fn now_seconds() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

/// PEM text of one DER certificate.
pub(crate) fn pem_cert(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

fn first_cert(pem: &str) -> Option<Vec<u8>> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes()).next()?.ok().map(|c| c.to_vec())
}

/// Every certificate of a PEM file (chain.pem), as DER.
fn all_certs(path: &Path, pem: &str) -> Result<Vec<Vec<u8>>, Error> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| {
            c.map(|c| c.to_vec())
                .map_err(|e| Error::Damaged { path: path.to_owned(), reason: format!("bad PEM ({e})") })
        })
        .collect()
}

/// The one certificate of a `cert.pem`, as DER.
fn single_cert(path: &Path, pem: &str) -> Result<Vec<u8>, Error> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let damaged = |reason: String| Error::Damaged { path: path.to_owned(), reason };
    let mut certs = CertificateDer::pem_slice_iter(pem.as_bytes());
    let first = certs
        .next()
        .ok_or_else(|| damaged("no PEM certificate".into()))?
        .map_err(|e| damaged(format!("bad PEM ({e})")))?;
    if certs.next().is_some() {
        return Err(damaged("more than one certificate (the chain belongs in chain.pem)".into()));
    }
    Ok(first.to_vec())
}
