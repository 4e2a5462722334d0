//! The `Snapshot`: everything the data plane needs, built whole by the control plane
//! from the configuration and the store, validated, then published with one
//! `ArcSwap::store`. Connections load it once at accept and keep it until they close.
//!
//! Which certificates a listener serves (DESIGN.md, "Serving rule"; the guides' "SSL
//! certificate auto-selection"): a listener without assignments in state.toml considers
//! every servable certificate in the store; a listener with assignments only those (and
//! its own default), like an appliance's IP addresses. Several candidates for one name
//! rank by [`Rank`]. The fallback for no SNI or an unknown name is the listener's default,
//! else the global default if it is a candidate, else the earliest-assigned candidate,
//! else the factory default.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::{ProducesTickets, StoresServerSessions};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{self, Config, HostPattern};
use crate::metrics::{ListenerMetrics, RouteMetrics, SniCounters};
use crate::pki::KeyLink;
use crate::proxy::handler::{self, Handler};
use crate::sni::{CertMap, CertMapBuilder, DefaultKind, Rank, Resolver, Served};
use crate::store::{self, CertEntry, Stamp, Store};

/// Why a snapshot could not be built (the last good one keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store could not be listed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// A route's handler options (`ROUTE.handler` names the route).
    #[error("{route}.handler: {source}")]
    Handler { route: String, source: handler::OptionError },
    /// rustls refused the TLS setup.
    #[error("{0}")]
    Tls(String),
    /// The fallback of last resort is missing or broken.
    #[error("the factory default certificate {} cannot be served", store::FACTORY_ID)]
    FactoryDefault,
}

/// A routed handler.
pub struct Route {
    pub hosts: Vec<HostPattern>,
    pub handler: Handler,
    /// Request counters labelled "route[2]" (or "built-in").
    pub metrics: RouteMetrics,
}

/// One listener, ready to accept.
pub struct ListenerSnap {
    pub config: config::Listener,
    pub certs: Arc<CertMap>,
    /// The assigned certificates, in assignment order; `None`: every servable
    /// certificate of the store is a candidate (auto-selection).
    pub assigned: Option<Vec<String>>,
    pub tls: Arc<ServerConfig>,
    pub routes: Vec<Route>,
    /// Which route serves a host: exact, then wildcard, then `*`.
    pub route_table: RouteTable,
    pub has_passthrough: bool,
    pub metrics: ListenerMetrics,
}

impl ListenerSnap {
    /// The route that serves `host` (without port; any case, trailing dot ignored).
    pub fn route(&self, host: &str) -> Option<&Route> {
        self.route_table.lookup(host).map(|i| &self.routes[i])
    }
}

/// Route precedence, as for certificates (DESIGN.md): an exact host, then a wildcard
/// (one label, keyed by its parent domain), then `"*"`; among routes naming the same
/// pattern the first in configuration order wins. Lookups allocate nothing.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: HashMap<Box<str>, usize>,
    wildcard: HashMap<Box<str>, usize>,
    any: Option<usize>,
}

impl RouteTable {
    /// Indexes `routes`; returns the table and, for each route that can never match
    /// (every pattern taken by an earlier route), its index.
    pub fn new<'a>(routes: impl IntoIterator<Item = &'a [HostPattern]>) -> (Self, Vec<usize>) {
        let mut t = Self::default();
        let mut shadowed = Vec::new();
        for (i, hosts) in routes.into_iter().enumerate() {
            let mut reachable = false;
            for h in hosts {
                let fresh = match h {
                    HostPattern::Exact(n) => t.exact.try_insert_first(n, i),
                    HostPattern::Wildcard(p) => t.wildcard.try_insert_first(p, i),
                    HostPattern::Any => t.any.get_or_insert(i) == &i,
                };
                reachable |= fresh;
            }
            if !reachable {
                shadowed.push(i);
            }
        }
        (t, shadowed)
    }

    pub fn lookup(&self, host: &str) -> Option<usize> {
        let mut buf = [0u8; crate::sni::MAX_NAME];
        let Some(host) = crate::sni::normalise(host, &mut buf) else { return self.any };
        if let Some(&i) = self.exact.get(host) {
            return Some(i);
        }
        if let Some(&i) = crate::sni::wildcard_parent(host).and_then(|p| self.wildcard.get(p)) {
            return Some(i);
        }
        self.any
    }
}

trait InsertFirst {
    /// Inserts unless the key is there; true if `i` holds it now.
    fn try_insert_first(&mut self, key: &str, i: usize) -> bool;
}

impl InsertFirst for HashMap<Box<str>, usize> {
    fn try_insert_first(&mut self, key: &str, i: usize) -> bool {
        *self.entry(key.into()).or_insert(i) == i
    }
}

/// A certificate's identity and expiry, for the expiry gauge and status.
pub struct CertSummary {
    pub id: Arc<str>,
    pub friendly_name: Arc<str>,
    pub issued_to: Arc<str>,
    pub issued_by: Arc<str>,
    /// Shared with the build cache: a rebuild copies no names.
    pub sans: Arc<[String]>,
    pub has_key: bool,
    /// Problems found when the entry was read (chain, key, file modes, expiry then).
    pub warnings: Arc<[String]>,
    /// The global default (the factory default when none is set).
    pub default: bool,
    /// Listeners where it is assigned or the listener default (shared between the
    /// certificates with the same listeners: one allocation, not 100,000).
    pub listeners: Arc<[String]>,
    pub not_before: i64,
    pub not_after: i64,
    /// ACME certificates: hostnames and renewal status from meta.toml.
    pub acme: Option<Arc<store::AcmeMeta>>,
    /// How it ranks against other candidates for the same name, as of the build.
    pub rank: Rank,
    /// Whether it can be served (has its key, and rustls accepts it).
    pub servable: bool,
}

/// A root or intermediate of the trust pool, for the status page.
pub struct TrustSummary {
    pub fingerprint_sha256: String,
    pub subject: String,
    pub issued_by: String,
    pub root: bool,
    pub not_after: i64,
    /// Certificate entries whose chain goes through it.
    pub used_by: Vec<Arc<str>>,
}

/// State shared by every snapshot, so TLS sessions survive reloads.
#[derive(Clone)]
pub struct TlsShared {
    pub ticketer: Arc<dyn ProducesTickets>,
    pub sessions: Arc<dyn StoresServerSessions>,
}

impl TlsShared {
    pub fn new() -> Result<Self, Error> {
        Ok(Self {
            // Rotating ticket keys (AWS-LC ticketer: a new key every 6 hours, the old one
            // still accepted), and a bounded stateful cache for TLS 1.2 session ids.
            ticketer: rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| Error::Tls(e.to_string()))?,
            sessions: rustls::server::ServerSessionMemoryCache::new(20_000),
        })
    }
}

pub struct Snapshot {
    pub listeners: Vec<ListenerSnap>,
    pub certificates: Vec<CertSummary>,
    /// Store entries that were skipped, and other things worth reporting.
    pub problems: Vec<String>,
    /// Store directories and keys that others may read or write (modes): shown with the
    /// problems; `check-config` warns (fails with `--strict`), so a loose mode does not
    /// stop a restart.
    pub permissions: Vec<String>,
    /// Worth knowing, but nothing is broken (a route that can never match).
    pub warnings: Vec<String>,
    /// The trust pool: imported roots and intermediates.
    pub trust: Vec<TrustSummary>,
    /// `[acme]` thresholds, which decide an ACME certificate's status at any moment.
    pub acme_policy: crate::acme::policy::Policy,
    /// `[http] redirect_port`: the port of the https URL the plain-HTTP listeners
    /// redirect to.
    pub redirect_port: u16,
    /// `[admin] certificate_series`: the bound on per-certificate series in `/metrics`.
    pub certificate_series: usize,
}

/// Publishes snapshots: held by the daemon alone (and by tests), so only the reload
/// path replaces what the data plane serves.
pub struct Publisher(Arc<arc_swap::ArcSwap<Snapshot>>);

/// Reads the current snapshot: one lock-free load per connection (or per admin
/// request); cheap to clone into every accept loop.
#[derive(Clone)]
pub struct Reader(Arc<arc_swap::ArcSwap<Snapshot>>);

impl Publisher {
    /// A publisher serving `first`, and its reader.
    pub fn new(first: Snapshot) -> (Self, Reader) {
        let cell = Arc::new(arc_swap::ArcSwap::from_pointee(first));
        (Self(Arc::clone(&cell)), Reader(cell))
    }

    /// Replaces the snapshot: connections accepted from now on use `next`; open ones
    /// keep theirs until they close.
    pub fn publish(&self, next: Snapshot) {
        let old = self.0.swap(Arc::new(next));
        // Freeing 100,000 summaries and names takes tens of milliseconds: not on the
        // reload's path (the next reload would wait for it).
        if old.certificates.len() > 1000 {
            std::thread::spawn(move || drop(old));
        }
    }

    pub fn reader(&self) -> Reader {
        Reader(Arc::clone(&self.0))
    }
}

impl Reader {
    /// The current snapshot, kept alive as long as the caller holds it.
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.0.load_full()
    }

    /// A short-lived view of the current snapshot (no reference count touched).
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.0.load()
    }
}

impl Snapshot {
    pub fn listener(&self, name: &str) -> Option<&ListenerSnap> {
        self.listeners.iter().find(|l| l.config.name == name)
    }

    /// Certificates some client gets: a listener's fallback, or the winner of one of its
    /// names on some listener (a wildcard name is asked for as one of its hosts).
    pub fn served_ids(&self) -> std::collections::HashSet<&str> {
        let by_id: HashMap<&str, &CertSummary> = self.certificates.iter().map(|c| (&*c.id, c)).collect();
        let mut served = std::collections::HashSet::new();
        for l in &self.listeners {
            served.insert(&*l.certs.fallback_served().0.id);
            for e in l.certs.entries() {
                let Some(c) = by_id.get(&*e.id) else { continue };
                let wins = c.sans.iter().any(|name| l.certs.lookup_name(name).served().is_some_and(|s| s.id == e.id));
                if wins {
                    served.insert(&*c.id);
                }
            }
        }
        served
    }
}

/// What a build keeps of an entry it read, and the entry's directory if its key was
/// unreadable or missing (an earlier good version is then kept instead).
struct Read {
    cached: Cached,
    damaged_key: Option<String>,
}

/// Reads and parses `ids` on every core (in order of `ids` in the result). Each entry is
/// reduced to what the cache keeps in the thread that read it, so the files' text is
/// never all in memory at once.
fn parse_all(
    store: &Store,
    pool: &[crate::pki::PoolCert],
    ids: Vec<(String, Stamp)>,
) -> Vec<(String, Stamp, Result<Read, store::Error>)> {
    let one = |id: &str, stamp: &Stamp| {
        store.read_cert_with(id, pool).map(|entry| {
            let keys = match signing_key(&entry) {
                Ok(key) => {
                    let plain = with_chain(&entry, false, Arc::clone(&key));
                    let with_root =
                        if entry.chain.root.is_some() { with_chain(&entry, true, key) } else { Arc::clone(&plain) };
                    [Ok(plain), Ok(with_root)]
                }
                Err(e) => [Err(e.clone()), Err(e)],
            };
            let damaged_key =
                matches!(entry.key, KeyLink::Unreadable(_) | KeyLink::Missing).then(|| entry.dir.display().to_string());
            Read { cached: Cached::of(&entry, stamp.clone(), keys), damaged_key }
        })
    };
    // A thread is worth starting for a start or a rescan, not for one changed entry.
    crate::par_map(ids, |(id, stamp)| {
        let r = one(&id, &stamp);
        (id, stamp, r)
    })
}

/// The rustls form of a store entry (`send_root`: the root after the intermediates).
pub fn certified_key(entry: &CertEntry, send_root: bool) -> Result<Arc<CertifiedKey>, String> {
    Ok(with_chain(entry, send_root, signing_key(entry)?))
}

/// The entry's private key for rustls, parsed once for both chains. The store already
/// checked it belongs to the certificate (only then is there a private key), so
/// `CertifiedKey::new` is enough; ECDSA keys (the usual) go straight to their parser
/// rather than through rustls' trial of RSA first.
fn signing_key(entry: &CertEntry) -> Result<Arc<dyn rustls::sign::SigningKey>, String> {
    let key = entry.private_key().ok_or("no usable private key")?;
    let der = PrivateKeyDer::try_from(key.pkcs8_der().to_vec()).map_err(|e| e.to_string())?;
    if key.describe().starts_with("ECDSA") {
        return rustls::crypto::aws_lc_rs::sign::any_ecdsa_type(&der).map_err(|e| e.to_string());
    }
    rustls::crypto::aws_lc_rs::default_provider().key_provider.load_private_key(der).map_err(|e| e.to_string())
}

fn with_chain(entry: &CertEntry, send_root: bool, key: Arc<dyn rustls::sign::SigningKey>) -> Arc<CertifiedKey> {
    let mut chain: Vec<CertificateDer<'static>> = entry.served_chain().into_iter().map(CertificateDer::from).collect();
    if send_root && let Some(root) = &entry.chain.root {
        chain.push(CertificateDer::from(root.der.clone()));
    }
    Arc::new(CertifiedKey::new(chain, key))
}

/// What a build keeps of one store entry.
struct Cached {
    stamp: Stamp,
    id: Arc<str>,
    created: i64,
    chain_complete: bool,
    /// SHA-256 fingerprints of the trust certificates its chain goes through.
    chain: Vec<String>,
    friendly_name: Arc<str>,
    issued_to: Arc<str>,
    issued_by: Arc<str>,
    has_key: bool,
    warnings: Arc<[String]>,
    sans: Arc<[String]>,
    not_before: i64,
    not_after: i64,
    acme: Option<Arc<store::AcmeMeta>>,
    /// Its files' modes, if wrong (a key readable by others): reported until fixed.
    file_problems: Vec<String>,
    /// Its files are damaged now; this version is the last good one (reported).
    degraded: Option<String>,
    /// When it was read: a young entry is looked at again by every reload (see
    /// [`YOUNG`]).
    read_at: std::time::Instant,
    /// The rustls key without and with the root appended; `Err` says why it is not served.
    keys: [Result<Arc<CertifiedKey>, String>; 2],
}

impl Cached {
    fn of(entry: &CertEntry, stamp: Stamp, keys: [Result<Arc<CertifiedKey>, String>; 2]) -> Self {
        Self {
            stamp,
            id: entry.id.as_str().into(),
            created: entry.meta.created.unix_timestamp(),
            chain_complete: !entry.chain.missing_intermediate,
            chain: entry
                .chain
                .intermediates
                .iter()
                .chain(&entry.chain.root)
                .map(|c| crate::pki::fingerprint_sha256(&c.der))
                .collect(),
            friendly_name: entry.meta.friendly_name.as_str().into(),
            issued_to: entry.info.issued_to.as_str().into(),
            issued_by: entry.info.issued_by.as_str().into(),
            has_key: entry.key.has_key(),
            warnings: entry.warnings(time::OffsetDateTime::now_utc()).into(),
            sans: entry.info.sans.clone().into(),
            not_before: entry.info.not_before.unix_timestamp(),
            not_after: entry.info.not_after.unix_timestamp(),
            acme: entry.meta.acme.clone().map(Arc::new),
            file_problems: entry.file_warnings.clone(),
            degraded: None,
            read_at: std::time::Instant::now(),
            keys,
        }
    }
}

/// An entry written file by file into a new directory (a cluster node's copy) may be
/// read before its last file lands, and inotify misses events in a directory created
/// just before its watch is added. So entries that are unreadable, unservable,
/// degraded or read in this last while are looked at again by every reload (a stat
/// each when unchanged), not left to the 60 s rescan.
const YOUNG: std::time::Duration = std::time::Duration::from_secs(10);

/// Parsed store entries carried from one build to the next (control plane only): an
/// entry whose files did not change is not parsed again, and an entry that became
/// unreadable keeps its last good version. A reload after file events looks only at
/// the entries the events name ([`Changes`]); the periodic rescan stats every entry but
/// rebuilds nothing when nothing changed.
#[derive(Default)]
pub struct EntryCache {
    trust: Option<Stamp>,
    /// What was wrong in the trust pool when it was last read: reported by every build
    /// until fixed, like the entries' problems.
    trust_problems: Vec<String>,
    /// Store directories and keys others may read, as of the last refresh.
    permissions: Vec<String>,
    /// In id order: builds walk it sorted, without sorting 100,000 ids each time.
    entries: std::collections::BTreeMap<String, Cached>,
    /// Entries that could not be read, with the stamp they had: reported by every build,
    /// read again only when their files change.
    failed: HashMap<String, (Stamp, String)>,
    /// What the last snapshot was built from: a rebuild that finds the same publishes
    /// nothing.
    last: Option<Last>,
}

struct Last {
    config: Config,
    state: store::State,
    problems: Vec<String>,
    permissions: Vec<String>,
    /// When a certificate's validity (and so its rank) next changes, Unix seconds.
    next_edge: i64,
}

pub use crate::watch::Changes;

/// Which entries a refresh looks at.
enum Scope {
    All,
    /// These ids, and every id if `relist` (entries were added or removed).
    Some {
        ids: std::collections::HashSet<String>,
        relist: bool,
    },
}

impl Scope {
    /// The entries `changes` can have touched in the store at `root`.
    fn of(changes: &Changes, root: &std::path::Path) -> Self {
        if changes.everything {
            return Self::All;
        }
        let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_owned());
        let mut ids = std::collections::HashSet::new();
        let mut relist = false;
        for p in &changes.paths {
            let Ok(rel) = p.strip_prefix(&root) else { continue };
            let mut parts = rel.components().map(|c| c.as_os_str().to_string_lossy());
            match (parts.next().as_deref(), parts.next()) {
                (Some("certs"), Some(id)) => {
                    // A new or removed entry directory, or a file inside one.
                    relist |= parts.next().is_none();
                    ids.insert(id.into_owned());
                }
                (Some("certs"), None) => relist = true,
                // A deletion leaves only its removal inside .staging/.
                (Some(".staging"), Some(name)) if name.starts_with("deleted-") => relist = true,
                // The trust pool is checked by every refresh; state.toml is read anyway.
                _ => {}
            }
        }
        Self::Some { ids, relist }
    }
}

impl EntryCache {
    /// Brings the cache up to date with the store for `scope`; returns the problems seen
    /// (of every entry, not only those looked at) and whether any entry changed.
    fn refresh(&mut self, store: &Store, scope: Scope) -> Result<(Vec<String>, bool), Error> {
        let mut changed = false;
        let trust = store.trust_stamp();
        let scope = if self.trust.as_ref() != Some(&trust) {
            // New roots or intermediates can change every chain.
            changed |= self.trust.is_some();
            self.entries.clear();
            self.failed.clear();
            self.trust_problems.clear();
            self.trust = Some(trust);
            Scope::All
        } else {
            scope
        };
        let look_at: Vec<String> = match scope {
            Scope::All => {
                let ids = store.cert_ids()?;
                changed |= self.keep_only(&ids);
                ids
            }
            Scope::Some { mut ids, relist } => {
                ids.extend(self.failed.keys().cloned());
                ids.extend(
                    self.entries
                        .iter()
                        .filter(|(_, c)| c.keys[0].is_err() || c.degraded.is_some() || c.read_at.elapsed() < YOUNG)
                        .map(|(id, _)| id.clone()),
                );
                if relist {
                    let listed = store.cert_ids()?;
                    changed |= self.keep_only(&listed);
                    for id in &listed {
                        if !self.entries.contains_key(id) && !self.failed.contains_key(id) {
                            ids.insert(id.clone());
                        }
                    }
                }
                let mut ids: Vec<String> = ids.into_iter().collect();
                ids.sort_unstable();
                ids
            }
        };
        // Stat pass: which entries need reading.
        let mut to_read = Vec::new();
        for id in look_at {
            if !store.cert_dir(&id).is_dir() {
                changed |= self.entries.remove(&id).is_some() | self.failed.remove(&id).is_some();
                continue;
            }
            let stamp = store.entry_stamp(&id);
            if self.entries.get(&id).is_some_and(|c| c.stamp == stamp)
                || self.failed.get(&id).is_some_and(|(s, _)| *s == stamp)
            {
                continue;
            }
            changed = true;
            self.failed.remove(&id);
            to_read.push((id, stamp));
        }
        if to_read.is_empty() {
            return Ok((self.problems(store), changed));
        }
        let (pool, bad) = store.trust_pool()?;
        self.trust_problems = bad.iter().map(ToString::to_string).collect();
        // Parsing (certificates, chains, keys) is the cost of a start: spread over the
        // cores. Each result is merged in id order below.
        let parsed = parse_all(store, &pool, to_read);
        for (id, stamp, read) in parsed {
            match read {
                Ok(Read { cached, damaged_key: Some(dir) }) => {
                    match self.entries.get_mut(&id).filter(|c| c.keys[0].is_ok()) {
                        // An unreadable or vanished key is damage: keep the last good
                        // version. (A key that no longer matches is never served.)
                        Some(c) => {
                            c.degraded = Some(format!(
                                "{dir}: private key unreadable or missing (still serving the last good version)"
                            ));
                            c.stamp = stamp;
                        }
                        None => {
                            self.entries.insert(id, cached);
                        }
                    }
                }
                Ok(Read { cached, damaged_key: None }) => {
                    self.entries.insert(id, cached);
                }
                Err(e) => match self.entries.get_mut(&id) {
                    Some(c) => {
                        c.degraded = Some(format!("{e} (still serving the last good version)"));
                        c.stamp = stamp;
                    }
                    None => {
                        self.failed.insert(id, (stamp, e.to_string()));
                    }
                },
            }
        }
        Ok((self.problems(store), changed))
    }

    /// Forgets entries no longer in `listed` (the ids in `certs/`); whether any went.
    fn keep_only(&mut self, listed: &[String]) -> bool {
        let set: std::collections::HashSet<&str> = listed.iter().map(String::as_str).collect();
        let before = self.entries.len() + self.failed.len();
        self.entries.retain(|id, _| set.contains(id.as_str()));
        self.failed.retain(|id, _| set.contains(id.as_str()));
        self.entries.len() + self.failed.len() != before
    }

    /// Every problem the cached entries and the trust pool have, in id order.
    fn problems(&mut self, store: &Store) -> Vec<String> {
        let mut by_id: Vec<(&str, String)> = Vec::new();
        let mut permissions = store.permission_problems();
        let mut files: Vec<(&str, &String)> = Vec::new();
        for (id, c) in &self.entries {
            if let Some(d) = &c.degraded {
                by_id.push((id, d.clone()));
            } else if let Err(why) = &c.keys[0] {
                by_id.push((id, format!("{}: not served: {why}", store.cert_dir(id).display())));
            }
            files.extend(c.file_problems.iter().map(|p| (id.as_str(), p)));
        }
        by_id.extend(self.failed.iter().map(|(id, (_, e))| (id.as_str(), e.clone())));
        by_id.sort();
        files.sort();
        permissions.extend(files.into_iter().map(|(_, p)| p.clone()));
        self.permissions = permissions;
        self.trust_problems.iter().cloned().chain(by_id.into_iter().map(|(_, p)| p)).collect()
    }

    /// When the rank of some certificate next changes (it becomes valid, or expires).
    fn next_edge(&self, now: i64) -> i64 {
        self.entries
            .values()
            .flat_map(|c| [c.not_before, c.not_after.saturating_add(1)])
            .filter(|&t| t > now)
            .min()
            .unwrap_or(i64::MAX)
    }
}

/// Builds a snapshot. Configuration errors (a route's handler options) fail the build;
/// an unreadable store entry is skipped and reported in `problems`.
pub fn build(config: &Config, store: &Store, shared: &TlsShared) -> Result<Snapshot, Error> {
    build_cached(config, store, shared, &mut EntryCache::default())
}

/// [`build`] from only the entries `ids` (`without`: as if that certificate were
/// deleted): what `cert which` and `cert delete` need to know about a few names in a
/// store of 100,000. The caller picks every entry that can decide what is served for
/// those names (see `ops::deciding_entries`); the others are left out as if missing.
pub fn build_subset(
    config: &Config,
    store: &Store,
    shared: &TlsShared,
    ids: std::collections::HashSet<String>,
    without: Option<&str>,
) -> Result<Snapshot, Error> {
    let mut cache = EntryCache { trust: Some(store.trust_stamp()), ..EntryCache::default() };
    let (problems, _) = cache.refresh(store, Scope::Some { ids, relist: false })?;
    match without {
        Some(id) => {
            cache.entries.remove(id);
            assemble(config, store, &store.state().without(id), shared, &cache, problems)
        }
        None => assemble(config, store, store.state(), shared, &cache, problems),
    }
}

/// [`build`] reusing (and updating) what an earlier build parsed.
pub fn build_cached(
    config: &Config,
    store: &Store,
    shared: &TlsShared,
    cache: &mut EntryCache,
) -> Result<Snapshot, Error> {
    let (problems, _) = cache.refresh(store, Scope::All)?;
    let snapshot = assemble(config, store, store.state(), shared, cache, problems.clone())?;
    cache.remember(config, store, problems);
    Ok(snapshot)
}

/// [`build_cached`] after `changes`: reads only the entries they name (every entry's
/// stamp for `changes.everything`), and returns `None` when nothing a snapshot is made
/// of changed: no entry, not the configuration, state.toml, the problems, nor any
/// certificate's validity.
pub fn rebuild(
    config: &Config,
    store: &Store,
    shared: &TlsShared,
    cache: &mut EntryCache,
    changes: &Changes,
) -> Result<Option<Snapshot>, Error> {
    let (problems, changed) = cache.refresh(store, Scope::of(changes, store.root()))?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let same = !changed
        && cache.last.as_ref().is_some_and(|l| {
            l.config == *config
                && l.state == *store.state()
                && l.problems == problems
                && l.permissions == cache.permissions
                && now < l.next_edge
        });
    if same {
        return Ok(None);
    }
    let snapshot = assemble(config, store, store.state(), shared, cache, problems.clone())?;
    cache.remember(config, store, problems);
    Ok(Some(snapshot))
}

impl EntryCache {
    fn remember(&mut self, config: &Config, store: &Store, problems: Vec<String>) {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        self.last = Some(Last {
            config: config.clone(),
            state: store.state().clone(),
            problems,
            permissions: self.permissions.clone(),
            next_edge: self.next_edge(now),
        });
    }
}

fn assemble(
    config: &Config,
    store: &Store,
    state: &store::State,
    shared: &TlsShared,
    cache: &EntryCache,
    mut problems: Vec<String>,
) -> Result<Snapshot, Error> {
    let entries = &cache.entries;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let rank = |c: &Cached| Rank {
        valid_now: c.not_before <= now && now <= c.not_after,
        chain_complete: c.chain_complete,
        not_after: c.not_after,
        created: c.created,
    };
    // Id order (the map's), so that equal ranks resolve the same way in every build.
    let ids: Vec<&String> = entries.keys().collect();
    let served = |id: &str, send_root: bool| -> Option<(Served, &[String], Rank)> {
        let c = entries.get(id)?;
        let key = c.keys[usize::from(send_root)].as_ref().ok()?.clone();
        let s = Served { id: Arc::clone(&c.id), friendly_name: Arc::clone(&c.friendly_name), key };
        Some((s, &c.sans, rank(c)))
    };
    for name in state.listeners.keys() {
        if !config.listeners.iter().any(|l| &l.name == name) {
            problems.push(format!("state.toml: listener {name} has assignments but is not in the configuration"));
        }
    }

    let provider = Arc::new(provider());
    let mut warnings = Vec::new();
    let mut listeners = Vec::with_capacity(config.listeners.len());
    for l in &config.listeners {
        let own = state.listeners.get(&l.name);
        let own_default = own.and_then(|a| a.default.as_deref());
        let assigned = own.map(|a| &a.assigned).filter(|a| !a.is_empty());
        let mut builder =
            CertMapBuilder::with_capacity(l.no_sni, l.unknown_sni, assigned.map_or(ids.len(), |a| a.len() + 1));
        match assigned {
            Some(assigned) => {
                // The listener's own default is served by name too, as before assignments.
                for id in own_default.into_iter().chain(assigned.iter().map(String::as_str)) {
                    if builder.position(id).is_some() {
                        continue;
                    }
                    match served(id, l.send_root) {
                        Some((s, names, rank)) => {
                            builder.add(s, names, rank);
                        }
                        None => {
                            problems.push(format!("listener {}: assigned certificate {id} cannot be served", l.name))
                        }
                    }
                }
            }
            None => {
                for id in &ids {
                    if let Some((s, names, rank)) = served(id, l.send_root) {
                        builder.add(s, names, rank);
                    }
                }
            }
        }
        if let Some(id) = own_default
            && builder.position(id).is_none()
        {
            problems.push(format!("listener {}: its default certificate {id} cannot be served", l.name));
        }
        let global = state.default.as_deref();
        let fallback = own_default
            .and_then(|id| builder.position(id))
            .map(|i| (i, DefaultKind::Listener))
            .or_else(|| global.and_then(|id| builder.position(id)).map(|i| (i, DefaultKind::Global)))
            .or_else(|| {
                assigned.and_then(|a| a.iter().find_map(|id| builder.position(id))).map(|i| (i, DefaultKind::Assigned))
            });
        let map = match fallback {
            Some((i, kind)) => builder.build_with(i, kind),
            None => {
                let (s, _, _) = served(store::FACTORY_ID, l.send_root).ok_or(Error::FactoryDefault)?;
                builder.build(s, DefaultKind::Factory)
            }
        };
        let certs = Arc::new(map);

        let mut routes = Vec::new();
        for r in config.routes.iter().filter(|r| r.listener == l.name) {
            let handler =
                handler::build(&r.handler).map_err(|source| Error::Handler { route: r.origin.clone(), source })?;
            routes.push(Route { hosts: r.hosts.clone(), handler, metrics: RouteMetrics::new(&r.label) });
        }
        let (route_table, shadowed) = RouteTable::new(routes.iter().map(|r| r.hosts.as_slice()));
        for i in shadowed {
            let origin = &config.routes.iter().filter(|r| r.listener == l.name).nth(i).expect("same routes").origin;
            warnings.push(format!(
                "{origin}: never matches: every host of it is taken by an earlier route of listener {}",
                l.name
            ));
        }
        let has_passthrough = routes.iter().any(|r| matches!(r.handler, Handler::Passthrough(_)));
        let has_http = routes.iter().any(|r| matches!(r.handler, Handler::Http(_)));

        let resolver =
            Resolver { map: Arc::clone(&certs), counters: SniCounters::new(&l.name), on_demand: l.on_demand };
        let mut tls = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(resolver));
        if has_http {
            // http/1.0 too, as nginx does: a client that offers only it (curl --http1.0)
            // would otherwise get a fatal no_application_protocol alert (RFC 7301 §3.2).
            // acme-tls/1 last: chosen only by a TLS-ALPN-01 validation, which offers it alone.
            tls.alpn_protocols =
                vec![b"h2".to_vec(), b"http/1.1".to_vec(), b"http/1.0".to_vec(), crate::sni::alpn::ACME_TLS_1.to_vec()];
        }
        // Our suite order (see `provider`) rather than the client's.
        tls.ignore_client_order = true;
        tls.ticketer = Arc::clone(&shared.ticketer);
        tls.session_storage = Arc::clone(&shared.sessions);
        listeners.push(ListenerSnap {
            config: l.clone(),
            certs,
            assigned: assigned.cloned(),
            tls: Arc::new(tls),
            routes,
            route_table,
            has_passthrough,
            metrics: ListenerMetrics::new(&l.name),
        });
    }
    // Where each certificate is used, in one pass over state.toml (not one per entry);
    // each distinct list of listeners is made once.
    let mut used_on: HashMap<&str, Vec<&str>> = HashMap::new();
    for (name, l) in &state.listeners {
        for id in l.default.iter().chain(&l.assigned) {
            let on = used_on.entry(id.as_str()).or_default();
            if !on.contains(&name.as_str()) {
                on.push(name);
            }
        }
    }
    let mut lists: HashMap<&[&str], Arc<[String]>> = HashMap::new();
    for on in used_on.values() {
        lists.entry(on.as_slice()).or_insert_with(|| on.iter().map(|s| (*s).to_owned()).collect());
    }
    let unused: Arc<[String]> = Arc::new([]);
    let default_id = state.default_id();
    let certificates: Vec<CertSummary> = entries
        .iter()
        .map(|(id, c)| CertSummary {
            id: Arc::clone(&c.id),
            friendly_name: Arc::clone(&c.friendly_name),
            issued_to: Arc::clone(&c.issued_to),
            issued_by: Arc::clone(&c.issued_by),
            sans: c.sans.clone(),
            has_key: c.has_key,
            warnings: c.warnings.clone(),
            default: default_id == id,
            listeners: used_on
                .get(id.as_str())
                .map_or_else(|| Arc::clone(&unused), |on| Arc::clone(&lists[on.as_slice()])),
            not_before: c.not_before,
            not_after: c.not_after,
            acme: c.acme.clone(),
            rank: rank(c),
            servable: c.keys[0].is_ok(),
        })
        .collect();
    let acme_policy = crate::acme::policy::Policy::of(config.acme.as_ref());
    let trust = trust_summaries(store, entries);
    let permissions = cache.permissions.clone();
    Ok(Snapshot {
        listeners,
        certificates,
        problems,
        permissions,
        warnings,
        trust,
        acme_policy,
        redirect_port: config.redirect_port,
        certificate_series: config.certificate_series,
    })
}

fn trust_summaries(store: &Store, entries: &std::collections::BTreeMap<String, Cached>) -> Vec<TrustSummary> {
    // Unreadable trust files are reported by the entry refresh; here they are left out.
    let Ok((pool, _)) = store.trust_pool() else { return Vec::new() };
    let mut used: HashMap<&str, Vec<Arc<str>>> = HashMap::new();
    for c in entries.values() {
        for fp in &c.chain {
            used.entry(fp.as_str()).or_default().push(Arc::clone(&c.id));
        }
    }
    pool.iter()
        .map(|c| {
            let fingerprint_sha256 = crate::pki::fingerprint_sha256(&c.der);
            let mut used_by = used.remove(fingerprint_sha256.as_str()).unwrap_or_default();
            used_by.sort();
            TrustSummary {
                used_by,
                fingerprint_sha256,
                subject: c.info.subject.clone(),
                issued_by: c.info.issued_by.clone(),
                root: c.info.self_issued,
                not_after: c.info.not_after.unix_timestamp(),
            }
        })
        .collect()
}

/// aws-lc-rs with the cipher suites in Mozilla's recommended server order ("intermediate",
/// v5.7): AES-128-GCM first in TLS 1.3 (TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384,
/// TLS_CHACHA20_POLY1305_SHA256) and in TLS 1.2 (ECDSA before RSA, then AES-256-GCM, then
/// ChaCha20). rustls's default puts AES-256-GCM-SHA384 first; with SHA-384 the TLS 1.3
/// key schedule alone costs about as much as the X25519 exchange (docs/PERFORMANCE.md),
/// for no security a 128-bit suite lacks here.
pub fn provider() -> rustls::crypto::CryptoProvider {
    use rustls::crypto::aws_lc_rs::cipher_suite::*;
    rustls::crypto::CryptoProvider {
        cipher_suites: vec![
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
            TLS13_CHACHA20_POLY1305_SHA256,
            TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::aws_lc_rs::default_provider()
    }
}
