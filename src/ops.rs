//! Certificate operations: one function per admin action (create, request, list, show,
//! set-default, delete, status). The CLI and the job runner both call these, so an
//! action behaves the same however it is submitted. Each returns a serialisable value
//! plus the notes and warnings the operator should see.

use serde::Serialize;
use time::OffsetDateTime;

use crate::config::Config;
use crate::pki::{self, IdentityRequest, KeyType, rfc3339};
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
    pub sans: Vec<String>,
    pub fingerprint_sha256: String,
    pub serial: String,
    pub key: String,
    pub signature: String,
    pub has_private_key: bool,
    pub default: bool,
    pub listeners: Vec<String>,
    pub warnings: Vec<String>,
    pub created: String,
}

impl CertView {
    pub fn new(entry: &CertEntry, state: &State, now: OffsetDateTime) -> Self {
        let info = &entry.info;
        let mut warnings = info.warnings(entry.key.clone(), now);
        warnings.extend(entry.file_warnings.iter().cloned());
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
            sans: info.sans.clone(),
            fingerprint_sha256: info.fingerprint_sha256.clone(),
            serial: info.serial.clone(),
            key: info.key.clone(),
            signature: info.signature.clone(),
            has_private_key: entry.key.has_key(),
            default: state.default_id() == entry.id,
            listeners: state.listeners_of(&entry.id),
            warnings,
            created: rfc3339(entry.meta.created),
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
    let csr_pem = pki::certificate_request(&identity, params.key_type, &key)?;
    let sans: Vec<String> = identity.sans.iter().map(ToString::to_string).collect();
    let id = store.add_request(&NewRequest {
        friendly_name: &name,
        key_type: params.key_type,
        subject: &identity.subject,
        sans: &sans,
        request_pem: &csr_pem,
        key_pem: &key.to_pem(),
    })?;
    let entry = store.read_request(&id)?;
    let mut report = Report::new(RequestCreated { request: RequestView::from(&entry), csr_pem });
    report.notes = identity.notes;
    report
        .notes
        .push(format!("the private key stays in {} until the signed certificate is imported", entry.dir.display()));
    report.warnings = identity.warnings;
    Ok(report)
}

/// `cert list`: every readable certificate, plus one line per entry that is not.
pub fn list_certs(store: &Store, now: OffsetDateTime) -> Result<(Vec<CertView>, Vec<String>), Error> {
    let (entries, bad) = store.certs()?;
    let views = entries.iter().map(|e| CertView::new(e, store.state(), now)).collect();
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
}

pub fn show(store: &Store, key: &str, now: OffsetDateTime) -> Result<Shown, Error> {
    Ok(match store.resolve(key)? {
        (EntryKind::Cert, id) => {
            let entry = store.read_cert(&id)?;
            let mut pem = entry.cert_pem.clone();
            if !pem.ends_with('\n') {
                pem.push('\n');
            }
            pem.push_str(&entry.chain_pem);
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

/// `cert set-default ID`.
pub fn set_default(store: &mut Store, key: &str) -> Result<Report<DefaultChanged>, Error> {
    let (kind, id) = store.resolve(key)?;
    if kind == EntryKind::Request {
        return Err(Error::WrongKind {
            id,
            reason: "is a pending request; import its signed certificate first, then make that the default",
        });
    }
    let entry = store.read_cert(&id)?;
    let mut report = Report::new(DefaultChanged { id: id.clone(), previous: String::new() });
    if !entry.key.has_key() {
        return Err(Error::WrongKind { id, reason: "has no usable private key, so it cannot be served" });
    }
    report.warnings = entry.info.warnings(entry.key.clone(), OffsetDateTime::now_utc());
    report.value.previous = store.set_default(&id)?;
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

/// `cert delete ID`: a certificate (never the factory default) or a pending request.
pub fn delete(store: &mut Store, key: &str) -> Result<Report<DeletedView>, Error> {
    let (kind, id) = store.resolve(key)?;
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
    if deleted.was_default {
        report.notes.push(format!(
            "{id} was the default certificate: the factory default \"{}\" ({}) is the default now",
            store::FACTORY_NAME,
            store::FACTORY_ID
        ));
    }
    if !deleted.listeners.is_empty() {
        report.notes.push(format!("{id} was removed from listener(s): {}", deleted.listeners.join(", ")));
    }
    Ok(report)
}

/// `status`: the node's identity and the certificates it serves.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub hostname: String,
    pub store: String,
    pub listeners: Vec<ListenerStatus>,
    pub default: InUse,
    pub in_use: Vec<InUse>,
    pub certificates: usize,
    pub pending_requests: usize,
    pub problems: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ListenerStatus {
    pub name: String,
    pub bind: Vec<String>,
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

pub fn status(store: &Store, config: &Config) -> Result<Status, Error> {
    let now = OffsetDateTime::now_utc();
    let (certs, mut problems) = list_certs(store, now)?;
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
    Ok(Status {
        version: crate::VERSION,
        hostname: crate::hostname().unwrap_or_default(),
        store: store.root().display().to_string(),
        listeners: config
            .listeners
            .iter()
            .map(|l| ListenerStatus { name: l.name.clone(), bind: l.bind.iter().map(ToString::to_string).collect() })
            .collect(),
        default,
        in_use,
        certificates: certs.len(),
        pending_requests: requests.len(),
        problems,
    })
}
