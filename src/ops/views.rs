//! What the operator is shown: the certificate table (`cert list`, `cert show`), the
//! requests and the trust pool, `status`, and the daemon's own view (`/status.json`,
//! rendered as `/status`, and read back by `portcullis status`). Reads only.

use serde::Serialize;
use time::OffsetDateTime;

use super::Error;
use crate::config::Config;
use crate::input::{self, Links};
use crate::pki::{self, KeyType, rfc3339};
use crate::snapshot::Snapshot;
use crate::store::{self, CertEntry, EntryKind, RequestEntry, State, Store};

/// One row of the certificate table (`cert list --json` is an array of these).
#[derive(Clone, Debug, Serialize)]
pub struct CertView {
    pub id: String,
    pub friendly_name: String,
    pub source: &'static str,
    pub issued_to: String,
    pub issued_by: String,
    pub subject: String,
    pub not_before: String,
    pub not_after: String,
    pub days_left: i64,
    /// "expires in 12 days", "expired 3 days ago" (the same count as `days_left`).
    pub expiry: String,
    pub sans: Vec<String>,
    pub fingerprint_sha256: String,
    pub serial: String,
    pub key: String,
    pub signature: String,
    pub has_private_key: bool,
    pub default: bool,
    pub listeners: Vec<String>,
    pub warnings: Vec<String>,
    /// Issuer first: the intermediates, then the root when known.
    pub chain: Vec<String>,
    pub created: String,
    /// ACME certificates: hostnames and renewal status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acme: Option<crate::acme::policy::AcmeView>,
}

impl CertView {
    pub fn new(entry: &CertEntry, state: &State, now: OffsetDateTime) -> Self {
        Self::with_policy(entry, state, now, &crate::acme::policy::Policy::default())
    }

    /// With the renewal policy of `[acme]`, which decides an ACME certificate's status.
    pub fn with_policy(
        entry: &CertEntry,
        state: &State,
        now: OffsetDateTime,
        policy: &crate::acme::policy::Policy,
    ) -> Self {
        Self::with_listeners(entry, state.default_id(), state.listeners_of(&entry.id), now, policy)
    }

    fn with_listeners(
        entry: &CertEntry,
        default_id: &str,
        listeners: Vec<String>,
        now: OffsetDateTime,
        policy: &crate::acme::policy::Policy,
    ) -> Self {
        let info = &entry.info;
        let warnings = entry.warnings(now);
        Self {
            id: entry.id.clone(),
            friendly_name: entry.meta.friendly_name.clone(),
            source: entry.meta.source.as_str(),
            issued_to: info.issued_to.clone(),
            issued_by: info.issued_by.clone(),
            subject: info.subject.clone(),
            not_before: rfc3339(info.not_before),
            not_after: rfc3339(info.not_after),
            days_left: info.days_left(now),
            expiry: pki::expiry_phrase(info.not_after, now),
            sans: info.sans.clone(),
            fingerprint_sha256: info.fingerprint_sha256.clone(),
            serial: info.serial.clone(),
            key: info.key.clone(),
            signature: info.signature.clone(),
            has_private_key: entry.key.has_key(),
            default: default_id == entry.id,
            listeners,
            warnings,
            chain: entry.chain.intermediates.iter().chain(&entry.chain.root).map(|c| c.info.subject.clone()).collect(),
            created: rfc3339(entry.meta.created),
            acme: crate::acme::policy::view(&entry.id, &entry.meta, info, policy, now),
        }
    }
}

/// One pending certificate signing request.
#[derive(Clone, Debug, Serialize)]
pub struct RequestView {
    pub id: String,
    pub friendly_name: String,
    pub subject: String,
    pub sans: Vec<String>,
    pub key_type: KeyType,
    pub created: String,
}

impl From<&RequestEntry> for RequestView {
    fn from(entry: &RequestEntry) -> Self {
        Self {
            id: entry.id.clone(),
            friendly_name: entry.meta.friendly_name.clone(),
            subject: entry.meta.subject.one_line(),
            sans: entry.meta.sans.clone(),
            key_type: entry.meta.key_type,
            created: rfc3339(entry.meta.created),
        }
    }
}

/// `cert show ID --csr`: the CSR a certificate was issued for, when it answered a
/// request made here.
pub fn show_csr(store: &Store, key: &str) -> Result<String, Error> {
    let (kind, id) = store.resolve(key)?;
    if kind == EntryKind::Request {
        return Ok(store.read_request(&id)?.request_pem);
    }
    store.cert_request_pem(&id).ok_or(Error::WrongKind {
        id,
        reason: "has no kept CSR: it was not issued for a request made here (`cert request --from ID` makes a new one with its key)",
    })
}

/// Which rows a listing shows: those matching `text`, at most `limit` of them (in id order).
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    /// A case-insensitive part of the id, friendly name, issued-to name or a SAN.
    pub text: Option<String>,
    pub limit: Option<usize>,
    /// Rows skipped before the first shown (paging).
    pub offset: usize,
}

impl ListFilter {
    /// Whether a row with these texts matches.
    pub fn matches<'a>(&self, mut fields: impl Iterator<Item = &'a str>) -> bool {
        let Some(text) = &self.text else { return true };
        let text = text.to_lowercase();
        fields.any(|f| f.to_lowercase().contains(&text))
    }
}

/// A page of a listing: the rows shown and how many matched in all.
#[derive(Clone, Debug)]
pub struct Page<T> {
    pub rows: Vec<T>,
    pub matched: usize,
    pub total: usize,
}

/// `cert list`: the readable certificates the filter selects, plus one line per entry
/// that is not readable. With a filter or a limit, only the selected entries are read
/// whole (the others only as far as their names).
pub fn list_certs(
    store: &Store,
    now: OffsetDateTime,
    policy: &crate::acme::policy::Policy,
    filter: &ListFilter,
) -> Result<(Page<CertView>, Vec<String>), Error> {
    let mut problems = Vec::new();
    let (selected, matched, total) = if filter.text.is_some() {
        // The store's index holds every entry's names: a filter over 100,000 entries
        // reads only the entries it selects.
        let mut total = 0;
        let matching = store.select_certs(|r| {
            total += 1;
            filter.matches(r.fields())
        });
        let matched = matching.len();
        (matching, matched, total)
    } else {
        let ids = store.cert_ids()?;
        let total = ids.len();
        (ids, total, total)
    };
    let page: Vec<String> = selected.into_iter().skip(filter.offset).take(filter.limit.unwrap_or(usize::MAX)).collect();
    let (entries, bad) = store.certs_of(page)?;
    problems.extend(bad.iter().map(ToString::to_string));
    let state = store.state();
    // One pass over state.toml for a long listing, one per row for a short one.
    let listeners = (entries.len() > 64).then(|| state.listeners_by_id());
    let rows = entries
        .iter()
        .map(|e| {
            let on = match &listeners {
                Some(map) => map.get(e.id.as_str()).cloned().unwrap_or_default(),
                None => state.listeners_of(&e.id),
            };
            CertView::with_listeners(e, state.default_id(), on, now, policy)
        })
        .collect();
    Ok((Page { rows, matched, total }, problems))
}

/// `cert list --requests`.
pub fn list_requests(store: &Store) -> Result<(Vec<RequestView>, Vec<String>), Error> {
    let (entries, bad) = store.requests()?;
    Ok((entries.iter().map(RequestView::from).collect(), bad.iter().map(ToString::to_string).collect()))
}

/// `cert show`: one entry, with its PEM (leaf then chain, or the CSR).
pub enum Shown {
    Cert(Box<CertView>, String),
    Request(RequestView, String),
    Trust(Box<TrustCert>, String),
}

/// A root or intermediate of the trust pool, as the appliance's certificate table shows
/// it (with "private key: no").
#[derive(Clone, Debug, Serialize)]
pub struct TrustCert {
    pub fingerprint_sha256: String,
    /// "root" (self-issued) or "intermediate".
    pub role: &'static str,
    pub subject: String,
    pub issued_to: String,
    pub issued_by: String,
    pub not_before: String,
    pub not_after: String,
    pub days_left: i64,
    pub private_key: bool,
    /// Certificate entries whose chain goes through it.
    pub used_by: Vec<String>,
    pub warnings: Vec<String>,
}

/// `cert list --trust`: the trust pool, and the files in it that cannot be read.
pub fn list_trust(store: &Store, now: OffsetDateTime) -> Result<(Vec<TrustCert>, Vec<String>), Error> {
    let (pool, bad) = store.trust_pool()?;
    let (entries, _) = store.certs()?;
    let mut used: std::collections::HashMap<String, Vec<String>> = std::collections::HashMap::new();
    for e in &entries {
        for c in e.chain.intermediates.iter().chain(&e.chain.root) {
            used.entry(pki::fingerprint_sha256(&c.der)).or_default().push(e.id.clone());
        }
    }
    let list = pool
        .iter()
        .map(|c| {
            let fingerprint = pki::fingerprint_sha256(&c.der);
            let mut warnings = Vec::new();
            if now > c.info.not_after {
                warnings.push(format!("expired on {}", rfc3339(c.info.not_after)));
            }
            TrustCert {
                used_by: used.remove(&fingerprint).unwrap_or_default(),
                fingerprint_sha256: fingerprint,
                role: if c.info.self_issued { "root" } else { "intermediate" },
                subject: c.info.subject.clone(),
                issued_to: c.info.issued_to.clone(),
                issued_by: c.info.issued_by.clone(),
                not_before: rfc3339(c.info.not_before),
                not_after: rfc3339(c.info.not_after),
                days_left: pki::days_left(c.info.not_after, now),
                private_key: false,
                warnings,
            }
        })
        .collect();
    Ok((list, bad.iter().map(ToString::to_string).collect()))
}

pub fn show(store: &Store, key: &str, now: OffsetDateTime) -> Result<Shown, Error> {
    let resolved = match store.resolve(key) {
        Err(store::Error::NotFound(_)) if let Some(fp) = store.resolve_trust(key)? => {
            let (list, _) = list_trust(store, now)?;
            let t = list.into_iter().find(|t| t.fingerprint_sha256 == fp).ok_or(store::Error::NotFound(fp.clone()))?;
            let path = store.root().join("trust").join(format!("{fp}.pem"));
            let pem = input::read_text(&path, input::MAX_PEM, Links::Refuse)
                .map_err(|error| Error::File { path: path.clone(), error })?;
            return Ok(Shown::Trust(Box::new(t), pem));
        }
        r => r?,
    };
    Ok(match resolved {
        (EntryKind::Cert, id) => {
            let entry = store.read_cert(&id)?;
            // What is served: the leaf, then the intermediates.
            let pem = entry.served_chain().iter().map(|der| store::pem_cert(der)).collect();
            Shown::Cert(Box::new(CertView::new(&entry, store.state(), now)), pem)
        }
        (EntryKind::Request, id) => {
            let entry = store.read_request(&id)?;
            Shown::Request(RequestView::from(&entry), entry.request_pem)
        }
    })
}

/// `status`: the node's identity and the certificates it serves.
#[derive(Clone, Debug, Serialize)]
pub struct NodeStatus {
    pub version: &'static str,
    pub hostname: String,
    pub store: String,
    pub listeners: Vec<ListenerRow>,
    pub default: InUse,
    pub in_use: Vec<InUse>,
    pub certificates: usize,
    pub pending_requests: usize,
    pub problems: Vec<String>,
    /// The running daemon's view (from its admin listener), if one answers.
    pub daemon: Option<DaemonStatus>,
}

/// A certificate that is served, and why.
#[derive(Clone, Debug, Serialize)]
pub struct InUse {
    pub id: String,
    pub friendly_name: String,
    pub fingerprint_sha256: String,
    pub not_after: String,
    pub role: String,
}

/// `snapshot`: what the daemon would serve from this store (built by the caller, which
/// may need it too), or why it cannot be built.
pub fn status(
    store: &Store,
    config: &Config,
    snapshot: &Result<Snapshot, crate::snapshot::Error>,
) -> Result<NodeStatus, Error> {
    let now = OffsetDateTime::now_utc();
    let policy = crate::acme::policy::Policy::of(config.acme.as_ref());
    let (certs, mut problems) = list_certs(store, now, &policy, &ListFilter::default())?;
    let certs = certs.rows;
    let (requests, bad_requests) = list_requests(store)?;
    problems.extend(bad_requests);
    let state = store.state();
    let in_use_of = |c: &CertView, role: String| InUse {
        id: c.id.clone(),
        friendly_name: c.friendly_name.clone(),
        fingerprint_sha256: c.fingerprint_sha256.clone(),
        not_after: c.not_after.clone(),
        role,
    };
    let by_id: std::collections::HashMap<&str, &CertView> = certs.iter().map(|c| (c.id.as_str(), c)).collect();
    let find = |id: &str| by_id.get(id).copied();
    let default_id = state.default_id();
    let default = match find(default_id) {
        Some(c) => in_use_of(c, "default".into()),
        None => {
            problems.push(format!("state.toml: the default certificate {default_id} cannot be read"));
            InUse {
                id: default_id.to_owned(),
                friendly_name: String::new(),
                fingerprint_sha256: String::new(),
                not_after: String::new(),
                role: "default (unreadable)".into(),
            }
        }
    };
    let mut in_use = vec![default.clone()];
    for (listener, l) in &state.listeners {
        let roles = l.default.iter().map(|id| (id, "default")).chain(l.assigned.iter().map(|id| (id, "assigned")));
        for (id, role) in roles {
            match find(id) {
                Some(c) => in_use.push(in_use_of(c, format!("{role} on listener {listener}"))),
                None => problems.push(format!("state.toml: listener {listener} refers to missing certificate {id}")),
            }
        }
    }
    // Auto-selection: a listener without assignments serves every certificate that wins
    // one of its names, which state.toml does not list.
    if let Ok(snapshot) = snapshot {
        let served = snapshot.served_ids();
        let listed: std::collections::HashSet<String> = in_use.iter().map(|u| u.id.clone()).collect();
        for c in certs.iter().filter(|c| served.contains(c.id.as_str())) {
            if !listed.contains(&c.id) {
                in_use.push(in_use_of(c, "served by SNI".into()));
            }
        }
    }
    let in_use_ids: std::collections::HashSet<&str> = in_use.iter().map(|u| u.id.as_str()).collect();
    for c in certs.iter().filter(|c| in_use_ids.contains(c.id.as_str())) {
        for w in &c.warnings {
            problems.push(format!("{} (in use): {w}", c.id));
        }
    }
    let listeners = match snapshot {
        Ok(snapshot) => listener_rows(snapshot),
        Err(e) => {
            problems.push(e.to_string());
            Vec::new()
        }
    };
    Ok(NodeStatus {
        version: crate::VERSION,
        hostname: crate::hostname().unwrap_or_default(),
        store: store.root().display().to_string(),
        listeners,
        default,
        in_use,
        certificates: certs.len(),
        pending_requests: requests.len(),
        problems,
        daemon: query(config.admin_listen),
    })
}

/// The ACME certificates of a snapshot, their status as of now (the admin status page).
pub fn snapshot_views(snapshot: &Snapshot) -> Vec<crate::acme::policy::AcmeView> {
    let now = OffsetDateTime::now_utc();
    let t = |s: i64| OffsetDateTime::from_unix_timestamp(s).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    snapshot
        .certificates
        .iter()
        .filter_map(|c| {
            let acme = c.acme.as_ref()?;
            crate::acme::policy::view_at(
                &c.id,
                &c.friendly_name,
                acme,
                t(c.not_before),
                t(c.not_after),
                &snapshot.acme_policy,
                now,
            )
        })
        .collect()
}

/// What the daemon knows about its reloads, for `/status.json` and `portcullis status`.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ReloadStatus {
    pub generation: u64,
    /// RFC 3339 time of the last successful load (one that found nothing changed
    /// publishes nothing, and counts: the daemon is up to date).
    pub last_success: Option<String>,
    /// The last failed reload, if it is more recent than the last success.
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
}

/// Assigned certificates named in a listener's one-line summary.
pub const SHOWN_ASSIGNED: usize = 20;

/// A listener, its addresses, which certificates it may serve and its fallback.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ListenerRow {
    pub name: String,
    pub bind: Vec<String>,
    /// The assigned certificates in assignment order; empty: every certificate in the
    /// store is a candidate (auto-selection).
    #[serde(default)]
    pub assigned: Vec<String>,
    /// Served without SNI or for an unknown name (unless the policy rejects those).
    #[serde(default)]
    pub fallback: String,
    /// Why: "listener default", "global default", "earliest-assigned certificate" or
    /// "factory default".
    #[serde(default)]
    pub fallback_reason: String,
}

impl ListenerRow {
    /// "all certificates (auto-selection)" or the assigned ids.
    /// At most [`SHOWN_ASSIGNED`] ids: a listener with 100,000 assignments is one line.
    pub fn candidates(&self) -> String {
        let n = self.assigned.len();
        if n == 0 {
            "all certificates (auto-selection)".into()
        } else if n <= SHOWN_ASSIGNED {
            format!("assigned only: {}", self.assigned.join(", "))
        } else {
            format!("assigned only: {} (and {} more)", self.assigned[..SHOWN_ASSIGNED].join(", "), n - SHOWN_ASSIGNED)
        }
    }
}

/// The listener rows of a snapshot.
pub fn listener_rows(snapshot: &Snapshot) -> Vec<ListenerRow> {
    snapshot
        .listeners
        .iter()
        .map(|l| {
            let (fallback, kind) = l.certs.fallback_served();
            ListenerRow {
                name: l.config.name.clone(),
                bind: l.config.bind.iter().map(ToString::to_string).collect(),
                assigned: l.assigned.clone().unwrap_or_default(),
                fallback: fallback.id.to_string(),
                fallback_reason: kind.as_str().to_owned(),
            }
        })
        .collect()
}

/// A row of the certificate table, as the guides show it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CertRow {
    pub id: String,
    pub friendly_name: String,
    pub issued_to: String,
    pub issued_by: String,
    pub not_after: String,
    pub days_left: i64,
    /// "expires in 12 days", "expired 3 days ago".
    #[serde(default)]
    pub expiry: String,
    #[serde(default)]
    pub expired: bool,
    pub sans: Vec<String>,
    pub private_key: bool,
    pub default: bool,
    pub listeners: Vec<String>,
    pub warnings: Vec<String>,
    /// ACME certificates: valid, renewing, retrying, error or expired.
    pub acme_status: Option<crate::acme::policy::Status>,
}

/// A root or intermediate of the trust pool.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TrustRow {
    pub fingerprint_sha256: String,
    /// "root" or "intermediate".
    pub role: String,
    pub subject: String,
    pub issued_by: String,
    pub not_after: String,
    pub expiry: String,
    pub expired: bool,
    /// Always false: the trust pool holds no keys (the appliance's table says so too).
    pub private_key: bool,
    pub used_by: Vec<String>,
}

/// The daemon's view, served as `/status.json` and rendered as `/status`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct DaemonStatus {
    pub version: String,
    #[serde(default)]
    pub hostname: String,
    pub pid: u32,
    #[serde(default)]
    pub uptime_secs: u64,
    #[serde(default)]
    pub listeners: Vec<ListenerRow>,
    /// The page of certificates shown: at most `page.limit` of those matching `page.filter`,
    /// from `page.offset`, in id order.
    #[serde(default)]
    pub certificates: Vec<CertRow>,
    #[serde(default)]
    pub page: PageInfo,
    #[serde(default)]
    pub trust: Vec<TrustRow>,
    pub reload: ReloadStatus,
    /// Store entries skipped (or kept at their last good version) by the last build.
    pub problems: Vec<String>,
    /// ACME certificates and their renewal status, as of the renewer's last pass.
    #[serde(default)]
    pub acme: Vec<crate::acme::policy::AcmeView>,
    /// The last admin jobs, newest last.
    #[serde(default)]
    pub jobs: Vec<crate::jobs::result::JobResult>,
    /// On a cluster node: its sync, applied revision and role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::cluster::StatusView>,
}

/// Which certificates a status shows, and how many there are: the status page and
/// `/status.json` of a store of 100,000 certificates show a page, not everything.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct PageInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    pub offset: usize,
    pub limit: usize,
    /// Certificates matching the filter (all of them without one).
    pub matched: usize,
    /// Certificates in the snapshot.
    pub total: usize,
}

/// The daemon's status from its current snapshot, reload record and last jobs, with the
/// page of certificates (and of ACME certificates) that `page` selects.
pub fn daemon_status(
    snapshot: &Snapshot,
    reloads: &ReloadStatus,
    jobs: &crate::jobs::result::Recent,
    uptime_secs: u64,
    page: &ListFilter,
) -> DaemonStatus {
    let now = OffsetDateTime::now_utc();
    let limit = page.limit.unwrap_or(usize::MAX);
    let acme: Vec<crate::acme::policy::AcmeView> = snapshot_views(snapshot)
        .into_iter()
        .filter(|a| page.matches(std::iter::once(a.id.as_str()).chain(a.hostnames.iter().map(String::as_str))))
        .skip(page.offset)
        .take(limit)
        .collect();
    // By id: one lookup per row, not a scan of the ACME list (10,000+ certificates).
    let acme_status: std::collections::HashMap<&str, crate::acme::policy::Status> =
        acme.iter().map(|a| (a.id.as_str(), a.status)).collect();
    let matching: Vec<&crate::snapshot::CertSummary> = snapshot
        .certificates
        .iter()
        .filter(|c| {
            let names = [&*c.id, &*c.friendly_name, &*c.issued_to];
            page.matches(names.into_iter().chain(c.sans.iter().map(String::as_str)))
        })
        .collect();
    let info = PageInfo {
        filter: page.text.clone(),
        offset: page.offset,
        limit: page.limit.unwrap_or(matching.len()),
        matched: matching.len(),
        total: snapshot.certificates.len(),
    };
    let certificates = matching
        .into_iter()
        .skip(page.offset)
        .take(limit)
        .map(|c| {
            let not_after = OffsetDateTime::from_unix_timestamp(c.not_after).unwrap_or(now);
            CertRow {
                id: c.id.to_string(),
                friendly_name: c.friendly_name.to_string(),
                issued_to: c.issued_to.to_string(),
                issued_by: c.issued_by.to_string(),
                not_after: rfc3339(not_after),
                days_left: pki::days_left(not_after, now),
                expiry: pki::expiry_phrase(not_after, now),
                expired: now > not_after,
                sans: c.sans.to_vec(),
                private_key: c.has_key,
                default: c.default,
                listeners: c.listeners.to_vec(),
                warnings: c.warnings.to_vec(),
                acme_status: acme_status.get(&*c.id).copied(),
            }
        })
        .collect();
    DaemonStatus {
        version: crate::LONG_VERSION.into(),
        hostname: crate::hostname().unwrap_or_default(),
        pid: std::process::id(),
        uptime_secs,
        listeners: listener_rows(snapshot),
        certificates,
        page: info,
        trust: snapshot
            .trust
            .iter()
            .map(|t| {
                let not_after = OffsetDateTime::from_unix_timestamp(t.not_after).unwrap_or(now);
                TrustRow {
                    fingerprint_sha256: t.fingerprint_sha256.clone(),
                    role: if t.root { "root" } else { "intermediate" }.into(),
                    subject: t.subject.clone(),
                    issued_by: t.issued_by.clone(),
                    not_after: rfc3339(not_after),
                    expiry: pki::expiry_phrase(not_after, now),
                    expired: now > not_after,
                    private_key: false,
                    used_by: t.used_by.iter().map(ToString::to_string).collect(),
                }
            })
            .collect(),
        reload: reloads.clone(),
        problems: snapshot.problems.iter().chain(&snapshot.permissions).cloned().collect(),
        acme,
        jobs: jobs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().cloned().collect(),
        cluster: None,
    }
}

/// Asks a running daemon for its status (`portcullis status`); `None` if none answers.
pub fn query(addr: std::net::SocketAddr) -> Option<DaemonStatus> {
    let (status, body) = crate::http::http_get(addr, "/status.json")?;
    if status != 200 {
        return None;
    }
    serde_json::from_str(&body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_assignment_list_is_summed_up() {
        let row = |n: usize| ListenerRow {
            name: "public".into(),
            bind: Vec::new(),
            assigned: (0..n).map(|i| format!("c{i}")).collect(),
            fallback: String::new(),
            fallback_reason: String::new(),
        };
        assert_eq!(row(0).candidates(), "all certificates (auto-selection)");
        assert_eq!(row(2).candidates(), "assigned only: c0, c1");
        let long = row(100_000).candidates();
        assert!(long.starts_with("assigned only: c0, c1, ") && long.ends_with("c19 (and 99980 more)"), "{long}");
    }
}
