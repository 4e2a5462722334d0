//! Certificate operations: one function per admin action (create, request, list, show,
//! set-default, delete, status). The CLI and the job runner both call these, so an
//! action behaves the same however it is submitted. Each returns a serialisable value
//! plus the notes and warnings the operator should see.

use serde::Serialize;
use time::OffsetDateTime;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::input::{self, Links};
use crate::pki::{self, ExportFormat, FormatError, IdentityRequest, KeyType, PrivateKey, Role, rfc3339};
use crate::snapshot::Snapshot;
use crate::store::{self, CertEntry, EntryKind, NewCert, NewRequest, RequestEntry, Source, State, Store};

/// Errors of an operation: the store's or the PKI's, each naming path, id or flag.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Pki(#[from] pki::Error),
    /// The id names a request where a certificate is needed (or the reverse).
    #[error("{id}: {reason}")]
    WrongKind { id: String, reason: &'static str },
    #[error(transparent)]
    Format(#[from] FormatError),
    /// An input file could not be read.
    #[error("{path}: {error}")]
    File { path: PathBuf, error: std::io::Error },
    /// A flag does not fit the rest of the command.
    #[error("{flag}: {reason}")]
    Flag { flag: &'static str, reason: String },
    /// `cert replace`: the new certificate does not qualify.
    #[error("{0}")]
    Replace(String),
    /// A change that would break what clients are served; `--force` overrides it.
    #[error("{0}")]
    Refused(String),
}

fn flag(flag: &'static str, reason: impl Into<String>) -> Error {
    Error::Flag { flag, reason: reason.into() }
}

/// A result with what the operator should be told about it.
#[derive(Debug)]
pub struct Report<T> {
    pub value: T,
    pub notes: Vec<String>,
    pub warnings: Vec<String>,
}

impl<T> Report<T> {
    fn new(value: T) -> Self {
        Self { value, notes: Vec::new(), warnings: Vec::new() }
    }
}

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
            default: state.default_id() == entry.id,
            listeners: state.listeners_of(&entry.id),
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

/// What a new certificate or request is made of.
#[derive(Clone, Debug, Default)]
pub struct CreateParams {
    pub identity: IdentityRequest,
    pub key_type: KeyType,
    /// Validity of a self-signed certificate; ignored for requests (the CA decides).
    pub days: u32,
}

fn prepare(store: &Store, params: &CreateParams) -> Result<(String, pki::Identity), Error> {
    let name = store.check_new_name(&params.identity.friendly_name)?;
    let mut request = params.identity.clone();
    request.friendly_name.clone_from(&name);
    let identity = request.validate()?;
    Ok((name, identity))
}

/// `cert create-self-signed`.
pub fn create_self_signed(store: &mut Store, params: &CreateParams) -> Result<Report<CertView>, Error> {
    let (name, identity) = prepare(store, params)?;
    let days = pki::validate_days(params.days)?;
    let key = params.key_type.generate()?;
    let now = OffsetDateTime::now_utc();
    let cert_pem = pki::self_signed(&identity, params.key_type, &key, days, now)?;
    let id = store.add_cert(&NewCert {
        friendly_name: &name,
        source: Source::SelfSigned,
        key_type: Some(params.key_type),
        cert_pem: &cert_pem,
        chain_pem: "",
        key_pem: Some(&key.to_pem()),
        acme: None,
    })?;
    let entry = store.read_cert(&id)?;
    let mut report = Report::new(CertView::new(&entry, store.state(), now));
    report.notes = identity.notes;
    report.warnings = identity.warnings;
    Ok(report)
}

/// The outcome of `cert request`.
#[derive(Clone, Debug, Serialize)]
pub struct RequestCreated {
    #[serde(flatten)]
    pub request: RequestView,
    pub csr_pem: String,
}

/// `cert request`: a new key and CSR, kept in `requests/<id>/` until the CA answers.
pub fn create_request(store: &mut Store, params: &CreateParams) -> Result<Report<RequestCreated>, Error> {
    let (name, identity) = prepare(store, params)?;
    let key = params.key_type.generate()?;
    let mut report = store_request(store, &name, identity, params.key_type, &key)?;
    let dir = store.request_dir(&report.value.request.id);
    report.notes.push(format!("the private key stays in {} until the signed certificate is imported", dir.display()));
    Ok(report)
}

/// Signs a CSR for `identity` with `key` and stores it as pending request `name`.
fn store_request(
    store: &mut Store,
    name: &str,
    identity: pki::Identity,
    key_type: KeyType,
    key: &PrivateKey,
) -> Result<Report<RequestCreated>, Error> {
    let csr_pem = pki::certificate_request(&identity, key_type, key)?;
    let sans: Vec<String> = identity.sans.iter().map(ToString::to_string).collect();
    let id = store.add_request(&NewRequest {
        friendly_name: name,
        key_type,
        subject: &identity.subject,
        sans: &sans,
        request_pem: &csr_pem,
        key_pem: &key.to_pem(),
    })?;
    let entry = store.read_request(&id)?;
    let mut report = Report::new(RequestCreated { request: RequestView::from(&entry), csr_pem });
    report.notes = identity.notes;
    report.warnings = identity.warnings;
    Ok(report)
}

/// `cert request --from ID`: a new CSR with certificate ID's private key, subject and
/// names (a same-key renewal); subject fields and SANs given in `params` override.
pub fn create_request_from(
    store: &mut Store,
    from: &str,
    params: &CreateParams,
) -> Result<Report<RequestCreated>, Error> {
    let id = match store.resolve(from)? {
        (EntryKind::Cert, id) => id,
        (EntryKind::Request, id) => {
            return Err(Error::WrongKind { id, reason: "is a pending request; its CSR is `cert show ID --pem`" });
        }
    };
    let entry = store.read_cert(&id)?;
    let key = entry
        .private_key()
        .ok_or(Error::WrongKind { id: id.clone(), reason: "has no private key to make a request with" })?;
    let key_type = key.key_type().ok_or_else(|| {
        flag("--from", format!("{id}: its {} key cannot sign a request here; make a new key instead", key.describe()))
    })?;
    let old = pki::subject_fields(&entry.leaf_der())
        .map_err(|reason| Error::Replace(format!("{}: {reason}", entry.dir.display())))?;
    let given = &params.identity.subject;
    let pick = |new: &Option<String>, old: Option<String>| new.clone().or(old);
    let mut identity = params.identity.clone();
    identity.subject = pki::Subject {
        country: pick(&given.country, old.country),
        state: pick(&given.state, old.state),
        locality: pick(&given.locality, old.locality),
        org: pick(&given.org, old.org),
        org_unit: pick(&given.org_unit, old.org_unit),
        common_name: pick(&given.common_name, old.common_name),
    };
    if identity.sans.is_empty() {
        identity.sans.clone_from(&entry.info.sans);
    }
    let name = store.check_new_name(&identity.friendly_name)?;
    identity.friendly_name.clone_from(&name);
    let identity = identity.validate()?;
    let mut report = store_request(store, &name, identity, key_type, key)?;
    let new_id = &report.value.request.id;
    let note = format!("the request uses the private key of {id}; the CA's answer is linked to {new_id} when imported");
    report.notes.push(note);
    Ok(report)
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

/// `cert list`: every readable certificate, plus one line per entry that is not.
pub fn list_certs(
    store: &Store,
    now: OffsetDateTime,
    policy: &crate::acme::policy::Policy,
) -> Result<(Vec<CertView>, Vec<String>), Error> {
    let (entries, bad) = store.certs()?;
    let views = entries.iter().map(|e| CertView::with_policy(e, store.state(), now, policy)).collect();
    Ok((views, bad.iter().map(ToString::to_string).collect()))
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

/// The outcome of `cert set-default`.
#[derive(Clone, Debug, Serialize)]
pub struct DefaultChanged {
    pub id: String,
    pub previous: String,
}

/// `--listener` values for a new ACME certificate, each checked against the
/// configuration. None given means no assignment: every listener without assignments
/// serves it by SNI (auto-selection), and assigning it everywhere would stop those
/// listeners serving every other certificate.
pub fn checked_listeners(config: &Config, listeners: &[String]) -> Result<Vec<String>, Error> {
    check_listeners(config, listeners)?;
    Ok(listeners.to_vec())
}

fn check_listeners(config: &Config, listeners: &[String]) -> Result<(), Error> {
    for name in listeners {
        if !config.listeners.iter().any(|l| &l.name == name) {
            let have: Vec<&str> = config.listeners.iter().map(|l| l.name.as_str()).collect();
            return Err(flag(
                "--listener",
                format!("{name:?} is not a configured listener (configured: {})", have.join(", ")),
            ));
        }
    }
    Ok(())
}

/// `cert set-default ID --listener NAME`: the listener's own default.
pub fn set_listener_default(
    store: &mut Store,
    config: &Config,
    key: &str,
    listener: &str,
    force: bool,
) -> Result<Report<DefaultChanged>, Error> {
    check_listeners(config, &[listener.to_owned()])?;
    let (id, warnings) = servable(store, key, force)?;
    let previous = store.set_listener_default(listener, Some(&id))?;
    let mut report = Report::new(DefaultChanged { id, previous: previous.unwrap_or_else(|| "-".into()) });
    report.warnings = warnings;
    report.notes.push(format!("listener {listener} serves {} when SNI picks no certificate", report.value.id));
    Ok(report)
}

/// A certificate that can be served: exists, is not a request, has its key. One that
/// clients would refuse (expired, not yet valid, its intermediate missing) needs `force`.
fn servable(store: &Store, key: &str, force: bool) -> Result<(String, Vec<String>), Error> {
    let (kind, id) = store.resolve(key)?;
    if kind == EntryKind::Request {
        return Err(Error::WrongKind {
            id,
            reason: "is a pending request; import its signed certificate first, then use that",
        });
    }
    let entry = store.read_cert(&id)?;
    if !entry.key.has_key() {
        return Err(Error::WrongKind { id, reason: "has no usable private key, so it cannot be served" });
    }
    let now = OffsetDateTime::now_utc();
    let mut refusals = Vec::new();
    if now > entry.info.not_after {
        refusals.push(format!("expired on {}", rfc3339(entry.info.not_after)));
    } else if now < entry.info.not_before {
        refusals.push(format!("not valid before {}", rfc3339(entry.info.not_before)));
    }
    if entry.chain.missing_intermediate {
        refusals.push(format!(
            "its chain misses the intermediate \"{}\" (import it first: portcullis cert import INTERMEDIATE.pem)",
            entry.info.issued_by
        ));
    }
    if !refusals.is_empty() && !force {
        return Err(Error::Refused(format!(
            "{id}: clients would reject it: {} (use --force to serve it anyway)",
            refusals.join("; ")
        )));
    }
    let warnings = CertView::new(&entry, store.state(), now).warnings;
    Ok((id, warnings))
}

/// The outcome of `cert assign` / `cert unassign`.
#[derive(Clone, Debug, Serialize)]
pub struct Assigned {
    pub id: String,
    pub changed: Vec<String>,
}

/// `cert assign ID --listener NAME...` (or unassign): which listeners serve the certificate.
pub fn assign(
    store: &mut Store,
    config: &Config,
    key: &str,
    listeners: &[String],
    assign: bool,
    force: bool,
) -> Result<Report<Assigned>, Error> {
    check_listeners(config, listeners)?;
    let (id, warnings) = if assign {
        servable(store, key, force)?
    } else {
        let (_, id) = store.resolve(key)?;
        (id, Vec::new())
    };
    let changed = store.assign(&id, listeners, assign)?;
    let mut report = Report::new(Assigned { id: id.clone(), changed: changed.clone() });
    report.warnings = warnings;
    if changed.is_empty() {
        report.notes.push(format!("{id}: nothing changed"));
    }
    Ok(report)
}

/// `cert which HOSTNAME`: the certificate a listener would serve, and why, through the
/// same `CertMap` lookup as the handshake.
#[derive(Clone, Debug, Serialize)]
pub struct Which {
    pub listener: String,
    pub hostname: String,
    pub id: Option<String>,
    pub friendly_name: Option<String>,
    pub reason: String,
    /// "auto-selection" (every certificate in the store) or "assigned".
    pub candidates: &'static str,
    /// Other candidates that cover the name, each with why the served one won.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub outranked: Vec<Outranked>,
    /// Stored certificates that cover the name but are not candidates on this listener
    /// (a listener with assignments serves only those).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_assigned: Vec<String>,
}

/// A candidate that lost to the served certificate.
#[derive(Clone, Debug, Serialize)]
pub struct Outranked {
    pub id: String,
    /// What the served certificate has that this one lacks: "exact name beats a wildcard",
    /// "valid now", "complete chain", "expires later", "newer entry" or "listed first".
    pub lost_on: &'static str,
}

pub fn which(store: &Store, config: &Config, hostname: &str, listener: Option<&str>) -> Result<Which, Error> {
    let name = match listener {
        Some(n) => {
            check_listeners(config, &[n.to_owned()])?;
            n.to_owned()
        }
        None => config.listeners.first().map(|l| l.name.clone()).unwrap_or_default(),
    };
    let hostname = hostname.strip_suffix('.').unwrap_or(hostname).to_ascii_lowercase();
    let shared = crate::snapshot::TlsShared::new().map_err(Error::Replace)?;
    let snapshot = crate::snapshot::build(config, store, &shared).map_err(Error::Replace)?;
    let l = snapshot.listener(&name).ok_or_else(|| flag("--listener", format!("{name:?} is not configured")))?;
    let sni = (!hostname.is_empty()).then_some(hostname.as_str());
    let selection = l.certs.lookup(sni);
    let matched = matches!(selection, crate::sni::Selection::Exact(_) | crate::sni::Selection::Wildcard(_));
    let summaries: std::collections::HashMap<&str, &crate::snapshot::CertSummary> =
        snapshot.certificates.iter().map(|c| (&*c.id, c)).collect();
    let covers = |id: &str| summaries.get(id).is_some_and(|c| pki::covers(&c.sans, &hostname));
    let exact = |id: &str| summaries.get(id).is_some_and(|c| c.sans.iter().any(|s| s.eq_ignore_ascii_case(&hostname)));
    let mut outranked = Vec::new();
    if matched && let Some(winner) = selection.served() {
        let ranks = l.certs.ranks();
        let entries = l.certs.entries();
        let win_rank = entries.iter().position(|e| e.id == winner.id).map(|i| ranks[i]).unwrap_or_default();
        for (e, r) in entries.iter().zip(ranks) {
            if e.id == winner.id || !covers(&e.id) {
                continue;
            }
            // An exact name beats a wildcard whatever their ranks.
            let lost_on = if exact(&winner.id) && !exact(&e.id) {
                "exact name beats a wildcard"
            } else {
                win_rank.beats(r).unwrap_or("listed first")
            };
            outranked.push(Outranked { id: e.id.to_string(), lost_on });
        }
    }
    let candidates: HashSet<&str> = l.certs.entries().iter().map(|e| &*e.id).collect();
    let not_assigned = if hostname.is_empty() {
        Vec::new()
    } else {
        snapshot
            .certificates
            .iter()
            .filter(|c| c.servable && !candidates.contains(&*c.id) && pki::covers(&c.sans, &hostname))
            .map(|c| c.id.to_string())
            .collect()
    };
    Ok(Which {
        not_assigned,
        outranked,
        candidates: if l.assigned.is_some() { "assigned" } else { "auto-selection" },
        listener: name,
        id: selection.served().map(|s| s.id.to_string()),
        friendly_name: selection.served().map(|s| s.friendly_name.to_string()),
        reason: selection.reason(),
        hostname,
    })
}

/// `cert set-default ID`.
pub fn set_default(store: &mut Store, key: &str, force: bool) -> Result<Report<DefaultChanged>, Error> {
    let (id, warnings) = servable(store, key, force)?;
    let previous = store.set_default(&id)?;
    let mut report = Report::new(DefaultChanged { id, previous });
    report.warnings = warnings;
    Ok(report)
}

/// The outcome of `cert delete`.
#[derive(Clone, Debug, Serialize)]
pub struct DeletedView {
    pub id: String,
    pub kind: &'static str,
    pub was_default: bool,
    pub listeners: Vec<String>,
}

/// `cert delete ID`: a certificate (never the factory default) or a pending request. A
/// certificate that is served (a default, assigned, or the only candidate for a name on
/// a listener) needs `force`; the refusal says what would be served instead.
pub fn delete(store: &mut Store, config: &Config, key: &str, force: bool) -> Result<Report<DeletedView>, Error> {
    let (kind, id) = match store.resolve(key) {
        Err(store::Error::NotFound(_)) if let Some(fp) = store.resolve_trust(key)? => {
            return delete_trust(store, &fp, force);
        }
        r => r?,
    };
    let mut consequences = Vec::new();
    if kind == EntryKind::Cert && id != store::FACTORY_ID {
        consequences = served_consequences(store, config, &id)?;
        if !consequences.is_empty() && !force {
            return Err(Error::Refused(format!(
                "{id} is served: {} (use --force to delete it anyway)",
                consequences.join("; ")
            )));
        }
    }
    let deleted = store.delete(kind, &id)?;
    let mut report = Report::new(DeletedView {
        id: id.clone(),
        kind: if kind == EntryKind::Cert { "certificate" } else { "request" },
        was_default: deleted.was_default,
        listeners: deleted.listeners.clone(),
    });
    if kind == EntryKind::Request {
        report.notes.push(format!("deleted pending request {id} and its private key"));
    }
    report.notes.extend(consequences.into_iter().map(|c| format!("{id} was served: {c}")));
    if !deleted.listeners.is_empty() {
        report.notes.push(format!("{id} was removed from listener(s): {}", deleted.listeners.join(", ")));
    }
    Ok(report)
}

/// `cert delete FINGERPRINT`: a root or intermediate of the trust pool. One that a
/// certificate's chain goes through needs `force` (that chain becomes incomplete).
fn delete_trust(store: &mut Store, fingerprint: &str, force: bool) -> Result<Report<DeletedView>, Error> {
    let (list, _) = list_trust(store, OffsetDateTime::now_utc())?;
    let used_by = list.into_iter().find(|t| t.fingerprint_sha256 == fingerprint).map(|t| t.used_by).unwrap_or_default();
    if !used_by.is_empty() && !force {
        return Err(Error::Refused(format!(
            "{fingerprint}: the chain of {} goes through it and would be incomplete (use --force to delete it anyway)",
            used_by.join(", ")
        )));
    }
    store.remove_trust(fingerprint)?;
    let mut report = Report::new(DeletedView {
        id: fingerprint.to_owned(),
        kind: "trust certificate",
        was_default: false,
        listeners: Vec::new(),
    });
    if !used_by.is_empty() {
        report.warnings.push(format!("the chain of {} is incomplete now", used_by.join(", ")));
    }
    Ok(report)
}

/// What deleting certificate `id` would change for clients, one phrase per change:
/// the snapshot as served now against the snapshot without it.
fn served_consequences(store: &Store, config: &Config, id: &str) -> Result<Vec<String>, Error> {
    use crate::sni::Selection;
    let shared = crate::snapshot::TlsShared::new().map_err(Error::Replace)?;
    let now = crate::snapshot::build(config, store, &shared).map_err(Error::Replace)?;
    let after = crate::snapshot::build_without(config, store, &shared, id).map_err(Error::Replace)?;
    let names: Vec<String> = now.certificates.iter().find(|c| &*c.id == id).map(|c| c.sans.clone()).unwrap_or_default();
    let describe = |sel: &Selection<'_>| match sel.served() {
        Some(s) => format!("{} ({})", s.id, sel.reason()),
        None => format!("nothing ({})", sel.reason()),
    };
    let mut out = Vec::new();
    if store.state().default.as_deref() == Some(id) {
        out.push(format!("it is the global default; the factory default {} takes over", store::FACTORY_ID));
    }
    for (l, l_after) in now.listeners.iter().zip(&after.listeners) {
        let name = &l.config.name;
        let (fallback, kind) = l.certs.fallback_served();
        if &*fallback.id == id {
            let sel = l_after.certs.lookup(None);
            out.push(format!("fallback ({}) of listener {name}; instead: {}", kind.as_str(), describe(&sel)));
        }
        if l.assigned.as_ref().is_some_and(|a| a.iter().any(|a| a == id)) {
            out.push(format!("assigned to listener {name}"));
        }
        for host in &names {
            let sel = l.certs.lookup_name(host);
            let by_name = matches!(sel, Selection::Exact(_) | Selection::Wildcard(_));
            if !by_name || sel.served().is_none_or(|s| &*s.id != id) {
                continue;
            }
            let sel_after = l_after.certs.lookup_name(host);
            if !matches!(sel_after, Selection::Exact(_) | Selection::Wildcard(_)) {
                out.push(format!(
                    "the only certificate for {host} on listener {name}; instead: {}",
                    describe(&sel_after)
                ));
            }
        }
    }
    Ok(out)
}

/// `status`: the node's identity and the certificates it serves.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub hostname: String,
    pub store: String,
    pub listeners: Vec<crate::admin::ListenerRow>,
    pub default: InUse,
    pub in_use: Vec<InUse>,
    pub certificates: usize,
    pub pending_requests: usize,
    pub problems: Vec<String>,
    /// The running daemon's view (from its admin listener), if one answers.
    pub daemon: Option<crate::admin::DaemonStatus>,
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
pub fn status(store: &Store, config: &Config, snapshot: &Result<Snapshot, String>) -> Result<Status, Error> {
    let now = OffsetDateTime::now_utc();
    let (certs, mut problems) = list_certs(store, now, &crate::acme::policy::Policy::of(config.acme.as_ref()))?;
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
    let find = |id: &str| certs.iter().find(|c| c.id == id);
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
    for c in &certs {
        for w in &c.warnings {
            if in_use.iter().any(|u| u.id == c.id) {
                problems.push(format!("{} (in use): {w}", c.id));
            }
        }
    }
    let listeners = match snapshot {
        Ok(snapshot) => crate::admin::listener_rows(snapshot),
        Err(e) => {
            problems.push(e.clone());
            Vec::new()
        }
    };
    Ok(Status {
        version: crate::VERSION,
        hostname: crate::hostname().unwrap_or_default(),
        store: store.root().display().to_string(),
        listeners,
        default,
        in_use,
        certificates: certs.len(),
        pending_requests: requests.len(),
        problems,
        daemon: crate::admin::query(config.admin_listen),
    })
}

/// What `cert import` reads.
#[derive(Clone, Debug, Default)]
pub struct ImportParams {
    pub files: Vec<PathBuf>,
    /// Friendly name for the (single) identity certificate.
    pub name: Option<String>,
    pub password: Option<Vec<u8>>,
}

/// A root or intermediate certificate of an import.
#[derive(Clone, Debug, Serialize)]
pub struct TrustView {
    pub role: &'static str,
    pub subject: String,
    pub fingerprint_sha256: String,
    /// False when the trust pool already had it.
    pub added: bool,
}

/// The outcome of `cert import`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Imported {
    /// New certificate entries.
    pub certificates: Vec<CertView>,
    /// Existing entries that received their private key.
    pub keys_attached: Vec<String>,
    /// Identity certificates that were already in the store, by id.
    pub already_present: Vec<String>,
    pub trust: Vec<TrustView>,
}

/// Where an imported leaf's key comes from.
enum KeySource {
    Import(usize),
    Request(String),
    Stored(String, PrivateKey),
    None,
}

/// `cert import`: reads every file first (nothing is written if any fails), classifies
/// the certificates, links keys, then stores trust certificates, identities and keys.
pub fn import(store: &mut Store, params: &ImportParams) -> Result<Report<Imported>, Error> {
    let mut found = pki::Found::default();
    for path in &params.files {
        let file = path.display().to_string();
        let bytes = input::read(path, input::MAX_PEM, Links::Follow)
            .map_err(|error| Error::File { path: path.clone(), error })?;
        pki::read_file(&file, &bytes, params.password.as_deref(), &mut found)?;
    }
    let now = OffsetDateTime::now_utc();
    let mut report = Report::new(Imported::default());

    // Files that brought certificates (a key from one of them is part of a bundle).
    let cert_files: HashSet<String> = found.certs.iter().map(|c| file_of(&c.origin).to_owned()).collect();
    // Certificates, once each, with their parsed form.
    let mut seen = HashSet::new();
    let mut certs = Vec::new();
    for c in found.certs {
        let info = pki::CertInfo::from_der(&c.der).map_err(|reason| FormatError::Corrupt {
            file: c.origin.clone(),
            format: "certificate",
            reason,
        })?;
        if seen.insert(info.fingerprint_sha256.clone()) {
            certs.push((c, info));
        }
    }
    let mut keys: Vec<pki::FoundKey> = Vec::new();
    for k in found.keys {
        if !keys.iter().any(|o| o.key.public_key_raw() == k.key.public_key_raw()) {
            keys.push(k);
        }
    }
    let (stored, _) = store.certs()?;

    // Plan: leaves with their key source and name; trust certificates; keys for keyless entries.
    struct Leaf {
        der: Vec<u8>,
        info: pki::CertInfo,
        key: KeySource,
        name: String,
        origin: String,
    }
    let mut leaves: Vec<Leaf> = Vec::new();
    let mut trust = Vec::new();
    let mut used_keys = HashSet::new();
    let mut attach: Vec<(String, usize)> = Vec::new();
    let mut names_planned: HashSet<String> = HashSet::new();
    let leaf_count = certs
        .iter()
        .filter(|(c, info)| {
            let has_key = keys.iter().any(|k| k.key.public_key_raw() == info.public_key_raw.as_slice());
            pki::classify(info, &c.der, has_key) == Role::Leaf
        })
        .count();
    if params.name.is_some() && leaf_count != 1 {
        return Err(flag(
            "--name",
            format!(
                "the import holds {leaf_count} identity certificates; --name names exactly one (import them separately, or without --name)"
            ),
        ));
    }
    for (c, info) in certs {
        let in_import = keys.iter().position(|k| k.key.public_key_raw() == info.public_key_raw.as_slice());
        let stored_key = match in_import {
            Some(_) => None,
            None => store.find_key(&info.public_key_raw)?,
        };
        let role = pki::classify(&info, &c.der, in_import.is_some() || stored_key.is_some());
        if role != Role::Leaf {
            trust.push((c.der, info, role));
            continue;
        }
        if let Some(existing) = stored.iter().find(|e| e.info.fingerprint_sha256 == info.fingerprint_sha256) {
            match in_import {
                Some(k) if !existing.key.has_key() => {
                    used_keys.insert(k);
                    attach.push((existing.id.clone(), k));
                }
                Some(k) => {
                    // Its key came along again (the same PKCS#12 imported twice).
                    used_keys.insert(k);
                    report.value.already_present.push(existing.id.clone());
                }
                None => report.value.already_present.push(existing.id.clone()),
            }
            continue;
        }
        let key = match (in_import, stored_key) {
            (Some(k), _) => {
                used_keys.insert(k);
                KeySource::Import(k)
            }
            (None, Some((EntryKind::Request, id, _))) => KeySource::Request(id),
            (None, Some((EntryKind::Cert, id, key))) => KeySource::Stored(id, key),
            (None, None) => KeySource::None,
        };
        let name = match (&params.name, &key) {
            (Some(name), _) => store.check_new_name(name)?,
            (None, KeySource::Request(id)) => store.read_request(id)?.meta.friendly_name,
            (None, _) => {
                // The key bag's name is the entry's alias; certificate bags often carry the subject.
                let alias = in_import.and_then(|k| keys[k].alias.clone()).or_else(|| c.alias.clone());
                let base = alias.filter(|a| !a.trim().is_empty()).unwrap_or_else(|| info.issued_to.clone());
                let base: String = base.trim().chars().take(100).collect();
                let expiry = format!("{base} (expires {})", &rfc3339(info.not_after)[..10]);
                let free = |n: &str| !names_planned.contains(&n.to_lowercase()) && store.check_new_name(n).is_ok();
                [base.clone(), expiry.clone()]
                    .into_iter()
                    .chain((2..).map(|i| format!("{expiry} #{i}")))
                    .find(|n| free(n))
                    .expect("names are unbounded")
            }
        };
        names_planned.insert(name.to_lowercase());
        leaves.push(Leaf { der: c.der, info, key, name, origin: c.origin });
    }
    // Keys for certificates already in the store without one.
    for (i, k) in keys.iter().enumerate() {
        if used_keys.contains(&i) {
            continue;
        }
        match stored.iter().find(|e| e.info.public_key_raw.as_slice() == k.key.public_key_raw()) {
            Some(entry) if !entry.key.has_key() => {
                used_keys.insert(i);
                attach.push((entry.id.clone(), i));
            }
            Some(entry) => {
                report.notes.push(format!("{}: the private key of {} is already in the store", k.origin, entry.id))
            }
            None if cert_files.contains(file_of(&k.origin)) => report.warnings.push(format!(
                "{}: private key ({}) matches no certificate in this import or the store; not stored",
                k.origin,
                k.key.describe()
            )),
            None => {
                // A key file given on purpose that fits nothing is a mistake (the wrong
                // file): the certificate would be stored without a key and never served.
                // (A stray key inside a bundle whose certificates import is only reported.)
                return Err(Error::Refused(format!(
                    "{}: private key ({}) matches no certificate in this import or the store; nothing imported",
                    k.origin,
                    k.key.describe()
                )));
            }
        }
    }
    if leaves.is_empty() && trust.is_empty() && attach.is_empty() && report.value.already_present.is_empty() {
        let files: Vec<String> = params.files.iter().map(|p| p.display().to_string()).collect();
        return Err(Error::Replace(format!(
            "{}: nothing to import (a private key needs its certificate, in the same import or already in the store)",
            files.join(", ")
        )));
    }

    // Refuse what the data plane could not serve, before anything is written.
    for leaf in &leaves {
        let refuse =
            |why: String| Error::Refused(format!("{}: {}: {why}; nothing imported", leaf.origin, leaf.info.subject));
        if leaf.info.sans.len() > pki::MAX_SANS {
            return Err(refuse(format!(
                "{} subject alternative names, more than the {} a served certificate may carry",
                leaf.info.sans.len(),
                pki::MAX_SANS
            )));
        }
        let key = match &leaf.key {
            KeySource::Import(k) => Some(&keys[*k].key),
            KeySource::Stored(_, key) => Some(key),
            KeySource::Request(_) | KeySource::None => None,
        };
        if let Some(key) = key {
            pki::check_servable(&leaf.der, key).map_err(|e| refuse(format!("TLS cannot serve it: {e}")))?;
        }
    }

    // Write: trust pool first, so the new entries' chains are complete when read back.
    for (der, info, role) in trust {
        let added = store.add_trust(&der)?;
        report.value.trust.push(TrustView {
            role: role.as_str(),
            subject: info.subject.clone(),
            fingerprint_sha256: info.fingerprint_sha256.clone(),
            added,
        });
    }
    for leaf in leaves {
        let cert_pem = store::pem_cert(&leaf.der);
        let key_pem = match &leaf.key {
            KeySource::Import(k) => Some(keys[*k].key.to_pem()),
            KeySource::Stored(_, key) => Some(key.to_pem()),
            KeySource::Request(id) => {
                let path = store.request_dir(id).join("key.pem");
                Some(
                    input::read_text(&path, input::MAX_PEM, Links::Refuse)
                        .map_err(|error| Error::File { path, error })?,
                )
            }
            KeySource::None => None,
        };
        let new = NewCert {
            friendly_name: &leaf.name,
            source: if matches!(leaf.key, KeySource::Request(_)) { Source::Csr } else { Source::Imported },
            key_type: None,
            cert_pem: &cert_pem,
            chain_pem: "",
            key_pem: key_pem.as_deref(),
            acme: None,
        };
        let id = match &leaf.key {
            KeySource::Request(id) => {
                store.answer_request(id, &new)?;
                report.notes.push(format!("{id}: the certificate answers pending request {id}, which is now complete"));
                id.clone()
            }
            _ => store.add_cert(&new)?,
        };
        match &leaf.key {
            KeySource::Stored(other, _) => {
                report.notes.push(format!("{id}: uses the private key of certificate {other} (same public key)"));
            }
            KeySource::None => report.warnings.push(format!(
                "{id}: no private key in this import or the store ({}); stored without one, so it cannot be served until its key is imported",
                leaf.origin
            )),
            _ => {}
        }
        let _ = &leaf.info;
        let entry = store.read_cert(&id)?;
        report.value.certificates.push(CertView::new(&entry, store.state(), now));
    }
    for (id, k) in attach {
        store.attach_key(&id, &keys[k].key.to_pem())?;
        report.notes.push(format!("{id}: private key from {} attached", keys[k].origin));
        report.value.keys_attached.push(id);
    }
    for id in &report.value.already_present {
        report.notes.push(format!("{id}: this certificate is already in the store"));
    }
    Ok(report)
}

/// The file part of an import origin, "FILE (FORMAT)".
fn file_of(origin: &str) -> &str {
    origin.rsplit_once(" (").map_or(origin, |(file, _)| file)
}

/// What `cert export` writes.
#[derive(Clone, Debug)]
pub struct ExportParams {
    pub id: String,
    pub format: ExportFormat,
    pub out: PathBuf,
    pub include_key: bool,
    pub include_chain: bool,
    /// The password; `None` with `no_password` writes an unencrypted key.
    pub password: Option<String>,
    pub no_password: bool,
    pub force: bool,
}

/// The outcome of `cert export`.
#[derive(Clone, Debug, Serialize)]
pub struct ExportedView {
    pub id: String,
    pub format: &'static str,
    pub path: String,
    pub certificates: usize,
    pub includes_key: bool,
    pub key_encrypted: bool,
    pub fingerprint_sha256: String,
}

/// `cert export`: one certificate (with chain and key where asked) in one format.
pub fn export(store: &Store, p: &ExportParams) -> Result<Report<ExportedView>, Error> {
    use ExportFormat::{Der, P7b, P8, P12, Pem};
    let (kind, id) = store.resolve(&p.id)?;
    if kind == EntryKind::Request {
        return Err(Error::WrongKind { id, reason: "is a pending request; `cert show ID --pem` prints its CSR" });
    }
    match p.format {
        Der if p.include_key => {
            return Err(flag("--include-key", "a DER file holds only the certificate; use --format pem or p12"));
        }
        Der if p.include_chain => {
            return Err(flag("--include-chain", "a DER file holds one certificate; use --format p7b, pem or p12"));
        }
        P7b if p.include_key => {
            return Err(flag("--include-key", "PKCS#7 holds no private keys; use --format p12 or pem"));
        }
        P8 if p.include_chain => {
            return Err(flag("--include-chain", "PKCS#8 holds only the key; use --format p12 or pem"));
        }
        _ => {}
    }
    let wants_key = matches!(p.format, P8 | P12) || (p.format == Pem && p.include_key);
    let entry = store.read_cert(&id)?;
    let key = if wants_key {
        Some(entry.private_key().ok_or(Error::WrongKind { id: id.clone(), reason: "has no private key to export" })?)
    } else {
        None
    };
    let password = match (&p.password, wants_key) {
        (Some(pw), true) if pw.is_empty() => {
            return Err(flag(
                "--password-file",
                "the password is empty; use --no-password to export the key unencrypted",
            ));
        }
        (Some(pw), true) => Some(pw.as_str()),
        (None, true) if p.no_password => None,
        (None, true) => {
            return Err(flag(
                "--password-file",
                "exporting a private key needs a password (--password-file F), or --no-password to write it unencrypted",
            ));
        }
        (_, false) => None,
    };
    if p.out.exists() && !p.force {
        return Err(flag("--out", format!("{} exists; use --force to overwrite it", p.out.display())));
    }
    let leaf = entry.leaf_der();
    let chain: Vec<Vec<u8>> = if p.include_chain || p.format == P7b {
        entry.chain.intermediates.iter().chain(&entry.chain.root).map(|c| c.der.clone()).collect()
    } else {
        Vec::new()
    };
    let exported = pki::export(p.format, &leaf, &chain, key, password, &entry.meta.friendly_name)
        .map_err(|reason| Error::Replace(format!("{id}: cannot encode as {}: {reason}", p.format)))?;
    store::write_export(&p.out, &exported.bytes, exported.has_key, p.force)?;
    let mut report = Report::new(ExportedView {
        id: id.clone(),
        format: p.format.as_str(),
        path: p.out.display().to_string(),
        certificates: if p.format == P8 { 0 } else { 1 + chain.len() },
        includes_key: exported.has_key,
        key_encrypted: exported.has_key && password.is_some(),
        fingerprint_sha256: entry.info.fingerprint_sha256.clone(),
    });
    if exported.has_key && password.is_none() {
        report.warnings.push(format!("{} holds the private key unencrypted (mode 0600)", p.out.display()));
    }
    if !wants_key && p.password.is_some() {
        report.notes.push("no private key in this export: the password was not used".into());
    }
    if (p.include_chain || p.format == P7b) && !entry.chain.warnings.is_empty() {
        report.warnings.extend(entry.chain.warnings.iter().map(|w| format!("{id}: {w}")));
    }
    Ok(report)
}

/// The outcome of `cert replace`.
#[derive(Clone, Debug, Serialize)]
pub struct Replaced {
    pub old: String,
    pub new: String,
    pub moved: Vec<String>,
}

/// `cert replace OLD NEW`: NEW takes over OLD's default role and listener assignments,
/// if it has a private key and covers OLD's names (or `force`).
pub fn replace(store: &mut Store, old: &str, new: &str, force: bool) -> Result<Report<Replaced>, Error> {
    let cert_id = |key: &str| -> Result<String, Error> {
        match store.resolve(key)? {
            (EntryKind::Cert, id) => Ok(id),
            (EntryKind::Request, id) => Err(Error::WrongKind { id, reason: "is a pending request, not a certificate" }),
        }
    };
    let (old_id, new_id) = (cert_id(old)?, cert_id(new)?);
    if old_id == new_id {
        return Err(Error::Replace(format!("{old_id}: a certificate cannot replace itself")));
    }
    let (old_e, new_e) = (store.read_cert(&old_id)?, store.read_cert(&new_id)?);
    if !new_e.key.has_key() {
        return Err(Error::Replace(format!(
            "{new_id}: has no usable private key, so it cannot be served; import its key first"
        )));
    }
    let old_names = if old_e.info.sans.is_empty() { vec![old_e.info.issued_to] } else { old_e.info.sans };
    let missing: Vec<&String> = old_names.iter().filter(|n| !pki::covers(&new_e.info.sans, n)).collect();
    let mut report = Report::new(Replaced { old: old_id.clone(), new: new_id.clone(), moved: Vec::new() });
    if !missing.is_empty() {
        let list = missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
        if !force {
            return Err(Error::Replace(format!(
                "{new_id} does not cover these names of {old_id}: {list} (use --force to replace anyway)"
            )));
        }
        report.warnings.push(format!("{new_id} does not cover these names of {old_id}: {list}"));
    }
    let now = OffsetDateTime::now_utc();
    report
        .warnings
        .extend(CertView::new(&new_e, store.state(), now).warnings.into_iter().map(|w| format!("{new_id}: {w}")));
    report.value.moved = store.replace(&old_id, &new_id)?;
    if report.value.moved.is_empty() {
        report.notes.push(format!("{old_id} was neither a default nor assigned to a listener: nothing moved"));
    } else {
        report.notes.push(format!("{old_id} can now be deleted: portcullis cert delete {old_id}"));
    }
    Ok(report)
}

/// Reads a `--password-file`: its first line, without the line ending.
pub fn read_password_file(path: &Path) -> Result<Vec<u8>, Error> {
    let bytes = input::read(path, input::MAX_PASSWORD, Links::Follow)
        .map_err(|error| Error::File { path: path.to_owned(), error })?;
    let line = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
    Ok(line.strip_suffix(b"\r").unwrap_or(line).to_vec())
}

/// [`read_password_file`] for passwords that protect exports: they must be UTF-8.
pub fn read_password_text(path: &Path) -> Result<String, Error> {
    String::from_utf8(read_password_file(path)?)
        .map_err(|_| flag("--password-file", format!("{}: the password is not UTF-8", path.display())))
}

/// Stores `n` self-signed P-256 certificates named "{prefix} {i}" for `{i}.{domain}` and
/// `*.{i}.{domain}`, straight through the store (no per-name scan of every entry), and
/// returns their ids. For benchmarks and scale measurements, not for operators.
#[doc(hidden)]
pub fn fill_self_signed(store: &mut Store, n: usize, prefix: &str, domain: &str) -> Result<Vec<String>, Error> {
    let now = OffsetDateTime::now_utc();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("{prefix} {i}");
        let sans = vec![format!("{i}.{domain}"), format!("*.{i}.{domain}")];
        let identity = IdentityRequest { friendly_name: name.clone(), sans, ..Default::default() }.validate()?;
        let key = KeyType::EcdsaP256.generate()?;
        let cert = pki::self_signed(&identity, KeyType::EcdsaP256, &key, 365, now)?;
        let key_pem = key.to_pem();
        ids.push(store.add_cert(&NewCert {
            friendly_name: &name,
            source: Source::SelfSigned,
            key_type: Some(KeyType::EcdsaP256),
            cert_pem: &cert,
            chain_pem: "",
            key_pem: Some(&key_pem),
            acme: None,
        })?);
    }
    Ok(ids)
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
