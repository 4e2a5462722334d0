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
use crate::pki::{self, ExportFormat, FormatError, IdentityRequest, KeyType, PrivateKey, rfc3339};
use crate::store::{self, EntryKind, NewCert, NewRequest, Source, Store};

pub mod export;
pub mod import;
pub mod views;

pub use export::{ExportParams, ExportedView, export};
pub use import::{ImportParams, Imported, TrustView, import};
pub use views::{
    CertView, InUse, ListFilter, NodeStatus, Page, RequestView, Shown, TrustCert, list_certs, list_requests,
    list_trust, show, show_csr, status,
};

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
    /// A stored file the operation needs cannot be read back.
    #[error("{}: {reason}", path.display())]
    Damaged { path: PathBuf, reason: String },
    /// The snapshot an answer needs could not be built (a handler's options, TLS setup).
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::Error),
    /// `cert import`: the files hold nothing that can be stored.
    #[error(
        "{files}: nothing to import (a private key needs its certificate, in the same import or already in the store)"
    )]
    NothingToImport { files: String },
    /// `cert export`: the format cannot hold this certificate or key.
    #[error("{id}: cannot encode as {format}: {reason}")]
    Encode { id: String, format: ExportFormat, reason: String },
    /// A change that would break what clients are served; `--force` overrides it.
    #[error("{0}")]
    Refused(String),
}

pub(crate) fn flag(flag: &'static str, reason: impl Into<String>) -> Error {
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
    pub(crate) fn new(value: T) -> Self {
        Self { value, notes: Vec::new(), warnings: Vec::new() }
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
    let old =
        pki::subject_fields(&entry.leaf_der()).map_err(|reason| Error::Damaged { path: entry.dir.clone(), reason })?;
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
    config.check_listeners(listeners).map_err(|e| flag("--listener", e))
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
    let shared = crate::snapshot::TlsShared::new()?;
    let ids = deciding_entries(store, std::slice::from_ref(&hostname));
    let snapshot = crate::snapshot::build_subset(config, store, &shared, ids, None)?;
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

/// Each listener's assigned certificates that may stand in for "the earliest-assigned
/// servable one" when the store is read only in part: more than this many unservable
/// certificates at the head of an assignment list is not a configuration to plan for.
const FALLBACK_DEPTH: usize = 64;

/// The certificates that can decide what a listener serves for `names`: those whose
/// names equal or cover one of them, the global and listener defaults, the factory
/// default, and the head of each listener's assignments (its fallback). From the store's
/// index: `cert which` and `cert delete` read these, not the whole store.
fn deciding_entries(store: &Store, names: &[String]) -> HashSet<String> {
    let mut ids: HashSet<String> = store
        .select_certs(|r| {
            r.names
                .iter()
                .any(|n| names.iter().any(|h| n.eq_ignore_ascii_case(h) || pki::covers(std::slice::from_ref(n), h)))
        })
        .into_iter()
        .collect();
    let state = store.state();
    ids.insert(state.default_id().to_owned());
    ids.insert(store::FACTORY_ID.to_owned());
    for l in state.listeners.values() {
        ids.extend(l.default.iter().cloned());
        ids.extend(l.assigned.iter().take(FALLBACK_DEPTH).cloned());
    }
    ids
}

/// What deleting certificate `id` would change for clients, one phrase per change:
/// the snapshot as served now against the snapshot without it.
fn served_consequences(store: &Store, config: &Config, id: &str) -> Result<Vec<String>, Error> {
    use crate::sni::Selection;
    let shared = crate::snapshot::TlsShared::new()?;
    let ids = deciding_entries(store, &store.cert_names(id));
    let now = crate::snapshot::build_subset(config, store, &shared, ids.clone(), None)?;
    let after = crate::snapshot::build_subset(config, store, &shared, ids, Some(id))?;
    let names: Vec<String> =
        now.certificates.iter().find(|c| &*c.id == id).map(|c| c.sans.to_vec()).unwrap_or_default();
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
