//! `cert export`: a certificate with its chain, and its key only when asked, in the
//! chosen format, written 0600 when it holds a key.

use std::path::PathBuf;

use serde::Serialize;

use super::{Error, Report, flag};
use crate::pki::{self, ExportFormat};
use crate::store::{self, EntryKind, Store};

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
        .map_err(|reason| Error::Encode { id: id.clone(), format: p.format, reason })?;
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
