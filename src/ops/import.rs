//! `cert import`: files in any common format (PEM, DER, PKCS#7, PKCS#12, encrypted or
//! legacy keys) sorted into leaves, keys, intermediates and roots; refused before any
//! write when nothing is servable or a key matches nothing.

use std::collections::HashSet;
use std::path::PathBuf;

use serde::Serialize;
use time::OffsetDateTime;

use super::views::CertView;
use super::{Error, Report, flag};
use crate::input::{self, Links};
use crate::pki::{self, FormatError, PrivateKey, Role, rfc3339};
use crate::store::{self, EntryKind, NewCert, Source, Store};

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

/// `cert import`: reads every file first (nothing is written if any fails), plans what
/// each certificate and key becomes, refuses what could not be served, then stores
/// trust certificates, identities and keys.
pub fn import(store: &mut Store, params: &ImportParams) -> Result<Report<Imported>, Error> {
    let found = read(params)?;
    let mut report = Report::new(Imported::default());
    let plan = plan(store, params, found, &mut report)?;
    plan.refuse_unservable()?;
    plan.write(store, &mut report)?;
    Ok(report)
}

/// What the files hold: certificates and keys, each once.
struct Found {
    certs: Vec<(pki::FoundCert, pki::CertInfo)>,
    keys: Vec<pki::FoundKey>,
    /// Files that brought certificates (a key from one of them is part of a bundle).
    cert_files: HashSet<String>,
}

fn read(params: &ImportParams) -> Result<Found, Error> {
    let mut found = pki::Found::default();
    for path in &params.files {
        let file = path.display().to_string();
        let bytes = input::read(path, input::MAX_PEM, Links::Follow)
            .map_err(|error| Error::File { path: path.clone(), error })?;
        pki::read_file(&file, &bytes, params.password.as_deref(), &mut found)?;
    }
    let cert_files: HashSet<String> = found.certs.iter().map(|c| file_of(&c.origin).to_owned()).collect();
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
    Ok(Found { certs, keys, cert_files })
}

/// An identity certificate to store, with its key source and name.
struct Leaf {
    der: Vec<u8>,
    info: pki::CertInfo,
    key: KeySource,
    name: String,
    origin: String,
}

/// What an import will write.
struct Plan {
    leaves: Vec<Leaf>,
    trust: Vec<(Vec<u8>, pki::CertInfo, Role)>,
    /// Keys for entries stored without one: (entry id, index in `keys`).
    attach: Vec<(String, usize)>,
    keys: Vec<pki::FoundKey>,
}

fn plan(store: &Store, params: &ImportParams, found: Found, report: &mut Report<Imported>) -> Result<Plan, Error> {
    let Found { certs, keys, cert_files } = found;
    let (stored, _) = store.certs()?;
    let mut plan = Plan { leaves: Vec::new(), trust: Vec::new(), attach: Vec::new(), keys: Vec::new() };
    let mut used_keys = HashSet::new();
    let mut names_planned: HashSet<String> = HashSet::new();
    let key_of =
        |info: &pki::CertInfo| keys.iter().position(|k| k.key.public_key_raw() == info.public_key_raw.as_slice());
    let leaf_count =
        certs.iter().filter(|(c, info)| pki::classify(info, &c.der, key_of(info).is_some()) == Role::Leaf).count();
    if params.name.is_some() && leaf_count != 1 {
        return Err(flag(
            "--name",
            format!(
                "the import holds {leaf_count} identity certificates; --name names exactly one (import them separately, or without --name)"
            ),
        ));
    }
    for (c, info) in certs {
        let in_import = key_of(&info);
        let stored_key = match in_import {
            Some(_) => None,
            None => store.find_key(&info.public_key_raw)?,
        };
        let role = pki::classify(&info, &c.der, in_import.is_some() || stored_key.is_some());
        if role != Role::Leaf {
            plan.trust.push((c.der, info, role));
            continue;
        }
        if let Some(existing) = stored.iter().find(|e| e.info.fingerprint_sha256 == info.fingerprint_sha256) {
            match in_import {
                Some(k) if !existing.key.has_key() => {
                    used_keys.insert(k);
                    plan.attach.push((existing.id.clone(), k));
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
                free_name(store, &names_planned, alias, &info)
            }
        };
        names_planned.insert(name.to_lowercase());
        plan.leaves.push(Leaf { der: c.der, info, key, name, origin: c.origin });
    }
    // Keys for certificates already in the store without one.
    for (i, k) in keys.iter().enumerate() {
        if used_keys.contains(&i) {
            continue;
        }
        match stored.iter().find(|e| e.info.public_key_raw.as_slice() == k.key.public_key_raw()) {
            Some(entry) if !entry.key.has_key() => {
                used_keys.insert(i);
                plan.attach.push((entry.id.clone(), i));
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
    if plan.leaves.is_empty()
        && plan.trust.is_empty()
        && plan.attach.is_empty()
        && report.value.already_present.is_empty()
    {
        let files: Vec<String> = params.files.iter().map(|p| p.display().to_string()).collect();
        return Err(Error::NothingToImport { files: files.join(", ") });
    }
    plan.keys = keys;
    Ok(plan)
}

/// A name for an imported entry: its alias or subject, else with its expiry date, else
/// numbered; free in the store and in this import.
fn free_name(store: &Store, planned: &HashSet<String>, alias: Option<String>, info: &pki::CertInfo) -> String {
    let base = alias.filter(|a| !a.trim().is_empty()).unwrap_or_else(|| info.issued_to.clone());
    let base: String = base.trim().chars().take(100).collect();
    let expiry = format!("{base} (expires {})", &rfc3339(info.not_after)[..10]);
    let free = |n: &str| !planned.contains(&n.to_lowercase()) && store.check_new_name(n).is_ok();
    [base, expiry.clone()]
        .into_iter()
        .chain((2..).map(|i| format!("{expiry} #{i}")))
        .find(|n| free(n))
        .expect("names are unbounded")
}

impl Plan {
    fn key<'a>(&'a self, leaf: &'a Leaf) -> Option<&'a PrivateKey> {
        match &leaf.key {
            KeySource::Import(k) => Some(&self.keys[*k].key),
            KeySource::Stored(_, key) => Some(key),
            KeySource::Request(_) | KeySource::None => None,
        }
    }

    /// Refuses what the data plane could not serve, before anything is written.
    fn refuse_unservable(&self) -> Result<(), Error> {
        for leaf in &self.leaves {
            let refuse = |why: String| {
                Error::Refused(format!("{}: {}: {why}; nothing imported", leaf.origin, leaf.info.subject))
            };
            if leaf.info.sans.len() > pki::MAX_SANS {
                return Err(refuse(format!(
                    "{} subject alternative names, more than the {} a served certificate may carry",
                    leaf.info.sans.len(),
                    pki::MAX_SANS
                )));
            }
            if let Some(key) = self.key(leaf) {
                pki::check_servable(&leaf.der, key).map_err(|e| refuse(format!("TLS cannot serve it: {e}")))?;
            }
        }
        Ok(())
    }

    /// Writes the trust pool first, so the new entries' chains are complete when read
    /// back; then the identities, then the keys for entries stored without one.
    fn write(self, store: &mut Store, report: &mut Report<Imported>) -> Result<(), Error> {
        let now = OffsetDateTime::now_utc();
        for (der, info, role) in &self.trust {
            let added = store.add_trust(der)?;
            report.value.trust.push(TrustView {
                role: role.as_str(),
                subject: info.subject.clone(),
                fingerprint_sha256: info.fingerprint_sha256.clone(),
                added,
            });
        }
        for leaf in &self.leaves {
            let id = self.write_leaf(store, leaf, report)?;
            let entry = store.read_cert(&id)?;
            report.value.certificates.push(CertView::new(&entry, store.state(), now));
        }
        for (id, k) in self.attach {
            store.attach_key(&id, &self.keys[k].key.to_pem())?;
            report.notes.push(format!("{id}: private key from {} attached", self.keys[k].origin));
            report.value.keys_attached.push(id);
        }
        for id in &report.value.already_present {
            report.notes.push(format!("{id}: this certificate is already in the store"));
        }
        Ok(())
    }

    /// Stores one identity (answering its request if it has one); returns its id.
    fn write_leaf(&self, store: &mut Store, leaf: &Leaf, report: &mut Report<Imported>) -> Result<String, Error> {
        let cert_pem = store::pem_cert(&leaf.der);
        let key_pem = match &leaf.key {
            KeySource::Request(id) => {
                let path = store.request_dir(id).join("key.pem");
                Some(
                    input::read_text(&path, input::MAX_PEM, Links::Refuse)
                        .map_err(|error| Error::File { path, error })?,
                )
            }
            _ => self.key(leaf).map(PrivateKey::to_pem),
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
        Ok(id)
    }
}

/// The file part of an import origin, "FILE (FORMAT)".
fn file_of(origin: &str) -> &str {
    origin.rsplit_once(" (").map_or(origin, |(file, _)| file)
}
