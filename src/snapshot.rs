//! The `Snapshot`: everything the data plane needs, built whole by the control plane
//! from the configuration and the store, validated, then published with one
//! `ArcSwap::store`. Connections load it once at accept and keep it until they close.
//!
//! Which certificates a listener serves (state.toml): a listener with assignments serves
//! only those, falling back to its own default (or its first assignment), like an
//! appliance's IP addresses; a listener without assignments serves the global default,
//! which is the factory default until `cert set-default` names another.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::{ProducesTickets, StoresServerSessions};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::admin::metrics::{self, ListenerMetrics, RouteMetrics};
use crate::config::{self, Config, HostPattern};
use crate::pki::KeyLink;
use crate::proxy::handler::{self, Handler};
use crate::sni::{CertMap, CertMapBuilder, DefaultKind, Resolver, Served};
use crate::store::{self, CertEntry, Stamp, Store};

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
    pub tls: Arc<ServerConfig>,
    pub routes: Vec<Route>,
    pub has_passthrough: bool,
    pub metrics: ListenerMetrics,
}

impl ListenerSnap {
    /// The first route whose host patterns match `host` (lowercase, without port).
    pub fn route(&self, host: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.hosts.iter().any(|h| h.matches(host)))
    }
}

/// A certificate's identity and expiry, for the expiry gauge and status.
pub struct CertSummary {
    pub id: Arc<str>,
    pub friendly_name: Arc<str>,
    pub issued_to: Arc<str>,
    pub issued_by: Arc<str>,
    pub sans: Vec<String>,
    pub has_key: bool,
    /// Problems found when the entry was read (chain, key, file modes, expiry then).
    pub warnings: Vec<String>,
    /// The global default (the factory default when none is set).
    pub default: bool,
    /// Listeners where it is assigned or the listener default.
    pub listeners: Vec<String>,
    pub not_before: i64,
    pub not_after: i64,
    /// ACME certificates: hostnames and renewal status from meta.toml.
    pub acme: Option<Arc<store::AcmeMeta>>,
}

/// State shared by every snapshot, so TLS sessions survive reloads.
#[derive(Clone)]
pub struct TlsShared {
    pub ticketer: Arc<dyn ProducesTickets>,
    pub sessions: Arc<dyn StoresServerSessions>,
}

impl TlsShared {
    pub fn new() -> Result<Self, String> {
        Ok(Self {
            // Rotating ticket keys (AWS-LC ticketer: a new key every 6 hours, the old one
            // still accepted), and a bounded stateful cache for TLS 1.2 session ids.
            ticketer: rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| e.to_string())?,
            sessions: rustls::server::ServerSessionMemoryCache::new(20_000),
        })
    }
}

pub struct Snapshot {
    pub listeners: Vec<ListenerSnap>,
    pub certificates: Vec<CertSummary>,
    /// Store entries that were skipped, and other things worth reporting.
    pub problems: Vec<String>,
    /// `[acme]` thresholds, which decide an ACME certificate's status at any moment.
    pub acme_policy: crate::acme::Policy,
}

impl Snapshot {
    pub fn listener(&self, name: &str) -> Option<&ListenerSnap> {
        self.listeners.iter().find(|l| l.config.name == name)
    }
}

fn certified_key(entry: &CertEntry, send_root: bool) -> Result<Arc<CertifiedKey>, String> {
    let mut chain: Vec<CertificateDer<'static>> = entry.served_chain().into_iter().map(CertificateDer::from).collect();
    if send_root && let Some(root) = &entry.chain.root {
        chain.push(CertificateDer::from(root.der.clone()));
    }
    let key = entry.private_key().ok_or("no usable private key")?;
    let key = PrivateKeyDer::try_from(key.pkcs8_der().to_vec()).map_err(|e| e.to_string())?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    CertifiedKey::from_der(chain, key, &provider).map(Arc::new).map_err(|e| e.to_string())
}

/// What a build keeps of one store entry.
struct Cached {
    stamp: Stamp,
    friendly_name: Arc<str>,
    issued_to: Arc<str>,
    issued_by: Arc<str>,
    has_key: bool,
    warnings: Vec<String>,
    sans: Vec<String>,
    not_before: i64,
    not_after: i64,
    acme: Option<Arc<store::AcmeMeta>>,
    /// The rustls key without and with the root appended; `Err` says why it is not served.
    keys: [Result<Arc<CertifiedKey>, String>; 2],
}

/// Parsed store entries carried from one build to the next (control plane only): an
/// entry whose files did not change is not parsed again, and an entry that became
/// unreadable keeps its last good version.
#[derive(Default)]
pub struct EntryCache {
    trust: Option<Stamp>,
    entries: HashMap<String, Cached>,
}

impl EntryCache {
    /// Brings the cache up to date with the store; returns the problems seen.
    fn refresh(&mut self, store: &Store) -> Result<Vec<String>, String> {
        let mut problems = Vec::new();
        let trust = store.trust_stamp();
        if self.trust.as_ref() != Some(&trust) {
            // New roots or intermediates can change every chain.
            self.entries.clear();
            self.trust = Some(trust);
        }
        let mut pool = None;
        let ids = store.cert_ids().map_err(|e| e.to_string())?;
        self.entries.retain(|id, _| ids.contains(id));
        for id in ids {
            let stamp = store.entry_stamp(&id);
            if self.entries.get(&id).is_some_and(|c| c.stamp == stamp) {
                continue;
            }
            let pool = match &pool {
                Some(p) => p,
                None => {
                    let (p, bad) = store.trust_pool().map_err(|e| e.to_string())?;
                    problems.extend(bad.iter().map(ToString::to_string));
                    pool.insert(p)
                }
            };
            match store.read_cert_with(&id, pool) {
                Ok(entry) => {
                    let damaged_key = matches!(entry.key, KeyLink::Unreadable(_) | KeyLink::Missing);
                    let last_good = self.entries.get(&id).is_some_and(|c| c.keys[0].is_ok());
                    if damaged_key && last_good {
                        // An unreadable or vanished key is damage: keep the last good
                        // version. (A key that no longer matches is never served.)
                        problems.push(format!(
                            "{}: private key unreadable or missing (still serving the last good version)",
                            entry.dir.display()
                        ));
                        continue;
                    }
                    let plain = certified_key(&entry, false);
                    let with_root =
                        if entry.chain.root.is_some() { certified_key(&entry, true) } else { plain.clone() };
                    let keys = [plain, with_root];
                    if let Err(why) = &keys[0] {
                        problems.push(format!("{}: not served: {why}", entry.dir.display()));
                    }
                    self.entries.insert(
                        id,
                        Cached {
                            stamp,
                            friendly_name: entry.meta.friendly_name.as_str().into(),
                            issued_to: entry.info.issued_to.as_str().into(),
                            issued_by: entry.info.issued_by.as_str().into(),
                            has_key: entry.key.has_key(),
                            warnings: entry.warnings(time::OffsetDateTime::now_utc()),
                            sans: entry.info.sans.clone(),
                            not_before: entry.info.not_before.unix_timestamp(),
                            not_after: entry.info.not_after.unix_timestamp(),
                            acme: entry.meta.acme.clone().map(Arc::new),
                            keys,
                        },
                    );
                }
                Err(e) if self.entries.contains_key(&id) => {
                    problems.push(format!("{e} (still serving the last good version)"));
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
        Ok(problems)
    }
}

/// Builds a snapshot. Configuration errors (a route's handler options) fail the build;
/// an unreadable store entry is skipped and reported in `problems`.
pub fn build(config: &Config, store: &Store, shared: &TlsShared) -> Result<Snapshot, String> {
    build_cached(config, store, shared, &mut EntryCache::default())
}

/// [`build`] reusing (and updating) what an earlier build parsed.
pub fn build_cached(
    config: &Config,
    store: &Store,
    shared: &TlsShared,
    cache: &mut EntryCache,
) -> Result<Snapshot, String> {
    let mut problems = cache.refresh(store)?;
    let entries = &cache.entries;
    let served = |id: &str, send_root: bool| -> Option<(Served, Vec<String>, i64)> {
        let c = entries.get(id)?;
        let key = c.keys[usize::from(send_root)].as_ref().ok()?.clone();
        let s = Served { id: id.into(), friendly_name: Arc::clone(&c.friendly_name), key };
        Some((s, c.sans.clone(), c.not_after))
    };
    let state = store.state();
    for name in state.listeners.keys() {
        if !config.listeners.iter().any(|l| &l.name == name) {
            problems.push(format!("state.toml: listener {name} has assignments but is not in the configuration"));
        }
    }

    let provider = Arc::new(provider());
    let mut listeners = Vec::with_capacity(config.listeners.len());
    for l in &config.listeners {
        let mut builder = CertMapBuilder::new(l.no_sni, l.unknown_sni);
        let assigned = state.listeners.get(&l.name);
        let mut fallback: Option<(usize, DefaultKind)> = None;
        if let Some(a) = assigned.filter(|a| !a.assigned.is_empty() || a.default.is_some()) {
            let ids = a.default.iter().chain(a.assigned.iter());
            for id in ids {
                match served(id, l.send_root) {
                    Some((s, names, not_after)) => {
                        let i = builder.add(s, &names, not_after);
                        fallback.get_or_insert((i, DefaultKind::Listener));
                    }
                    None => problems.push(format!("listener {}: assigned certificate {id} cannot be served", l.name)),
                }
            }
        }
        let map = match fallback {
            Some((i, kind)) => builder.build_with(i, kind),
            None => {
                let global = state.default.as_deref().and_then(|id| served(id, l.send_root));
                let (s, names, not_after, kind) = match global {
                    Some((s, n, t)) => (s, n, t, DefaultKind::Global),
                    None => {
                        let (s, n, t) = served(store::FACTORY_ID, l.send_root).ok_or_else(|| {
                            format!("the factory default certificate {} cannot be served", store::FACTORY_ID)
                        })?;
                        (s, n, t, DefaultKind::Factory)
                    }
                };
                let i = builder.add(s, &names, not_after);
                builder.build_with(i, kind)
            }
        };
        let certs = Arc::new(map);

        let mut routes = Vec::new();
        for r in config.routes.iter().filter(|r| r.listener == l.name) {
            let handler = handler::build(&r.handler).map_err(|e| format!("{}.handler: {e}", r.origin))?;
            routes.push(Route { hosts: r.hosts.clone(), handler, metrics: RouteMetrics::new(&r.label) });
        }
        let has_passthrough = routes.iter().any(|r| matches!(r.handler, Handler::Passthrough(_)));
        let has_http = routes.iter().any(|r| matches!(r.handler, Handler::Http(_)));

        let resolver = Resolver { map: Arc::clone(&certs), counters: metrics::sni_counters(&l.name) };
        let mut tls = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(resolver));
        if has_http {
            // http/1.0 too, as nginx does: a client that offers only it (curl --http1.0)
            // would otherwise get a fatal no_application_protocol alert (RFC 7301 §3.2).
            tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), b"http/1.0".to_vec()];
        }
        // Our suite order (see `provider`) rather than the client's.
        tls.ignore_client_order = true;
        tls.ticketer = Arc::clone(&shared.ticketer);
        tls.session_storage = Arc::clone(&shared.sessions);
        listeners.push(ListenerSnap {
            config: l.clone(),
            certs,
            tls: Arc::new(tls),
            routes,
            has_passthrough,
            metrics: ListenerMetrics::new(&l.name),
        });
    }
    // Where each certificate is used, in one pass over state.toml (not one per entry).
    let mut used_on: HashMap<&str, Vec<String>> = HashMap::new();
    for (name, l) in &store.state().listeners {
        for id in l.default.iter().chain(&l.assigned) {
            let on = used_on.entry(id.as_str()).or_default();
            if !on.contains(name) {
                on.push(name.clone());
            }
        }
    }
    let default_id = store.state().default_id();
    let mut certificates: Vec<CertSummary> = entries
        .iter()
        .map(|(id, c)| CertSummary {
            id: id.as_str().into(),
            friendly_name: Arc::clone(&c.friendly_name),
            issued_to: Arc::clone(&c.issued_to),
            issued_by: Arc::clone(&c.issued_by),
            sans: c.sans.clone(),
            has_key: c.has_key,
            warnings: c.warnings.clone(),
            default: default_id == id,
            listeners: used_on.get(id.as_str()).cloned().unwrap_or_default(),
            not_before: c.not_before,
            not_after: c.not_after,
            acme: c.acme.clone(),
        })
        .collect();
    certificates.sort_by(|a, b| a.id.cmp(&b.id));
    let acme_policy = crate::acme::Policy::of(config.acme.as_ref());
    Ok(Snapshot { listeners, certificates, problems, acme_policy })
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
