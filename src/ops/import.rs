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
        return Err(Error::NothingToImport { files: files.join(", ") });
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
