//! TLS-ALPN-01 (RFC 8737): the challenge certificates the TLS listeners present to an
//! ACME server's validation handshake (a ClientHello offering only `acme-tls/1`).
//!
//! Pending challenges live in this process's memory (the daemon's own orders) or, when
//! another process published them (the CLI, or a cluster node's sync writing what
//! the renewer put in etcd), as a file `<store>/acme/challenges/alpn/<domain>` holding
//! the key authorization, read only for such a handshake.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use rustls::sign::CertifiedKey;

/// The ALPN protocol of TLS-ALPN-01.
pub const ACME_TLS_1: &[u8] = b"acme-tls/1";
/// Longest key authorization read from a file (a token and a thumbprint: ~90 bytes).
const MAX_KEY_AUTHORIZATION: u64 = 1024;

static PENDING: OnceLock<Mutex<HashMap<String, Arc<CertifiedKey>>>> = OnceLock::new();
static DIR: OnceLock<PathBuf> = OnceLock::new();

fn pending() -> &'static Mutex<HashMap<String, Arc<CertifiedKey>>> {
    PENDING.get_or_init(Mutex::default)
}

/// Where other processes publish challenges: `<store>/acme/challenges/alpn/`.
pub fn set_dir(dir: PathBuf) {
    let _ = DIR.set(dir);
}

pub use crate::pki::challenge_domain as valid_domain;

fn certified(domain: &str, key_authorization: &str) -> Result<Arc<CertifiedKey>, String> {
    let (cert, key) = crate::pki::alpn_challenge_cert(domain, key_authorization).map_err(|e| e.to_string())?;
    let key = rustls::pki_types::PrivateKeyDer::try_from(key).map_err(|e| e.to_string())?;
    // Not `from_der`: its key check parses the certificate with webpki, which refuses the
    // critical acmeIdentifier extension this certificate exists for.
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signing = provider.key_provider.load_private_key(key).map_err(|e| e.to_string())?;
    Ok(Arc::new(CertifiedKey::new(vec![cert.into()], signing)))
}

/// The challenge certificate for `domain`, if a challenge is pending for it.
pub fn answer(domain: &str) -> Option<Arc<CertifiedKey>> {
    let domain = domain.to_ascii_lowercase();
    if let Some(k) = pending().lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&domain) {
        return Some(Arc::clone(k));
    }
    if !valid_domain(&domain) {
        return None;
    }
    let path = DIR.get()?.join(&domain);
    let text = crate::input::read_text(&path, MAX_KEY_AUTHORIZATION, crate::input::Links::Refuse).ok()?;
    certified(&domain, text.trim()).ok()
}

/// Whether a challenge is pending for `domain` (lowercase): in memory, or as a file
/// another process published. Builds no certificate, unlike [`answer`].
pub fn is_pending(domain: &str) -> bool {
    if pending().lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains_key(domain) {
        return true;
    }
    valid_domain(domain) && DIR.get().is_some_and(|d| d.join(domain).symlink_metadata().is_ok_and(|m| m.is_file()))
}

/// Presents the challenge certificate for `domain` until the guard is dropped.
pub fn publish(domain: &str, key_authorization: &str) -> Result<AlpnGuard, String> {
    let domain = domain.to_ascii_lowercase();
    let key = certified(&domain, key_authorization)
        .map_err(|e| format!("cannot build the TLS-ALPN-01 challenge certificate: {e}"))?;
    pending().lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(domain.clone(), key);
    Ok(AlpnGuard { domain })
}

pub struct AlpnGuard {
    domain: String,
}

impl Drop for AlpnGuard {
    fn drop(&mut self) {
        pending().lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.domain);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_certificates_are_built_and_withdrawn() {
        let guard = publish("alpn-unit.test", "token.thumbprint").unwrap();
        assert!(answer("ALPN-unit.test").is_some());
        assert!(is_pending("alpn-unit.test"));
        drop(guard);
        assert!(answer("alpn-unit.test").is_none());
        assert!(!is_pending("alpn-unit.test"));
        assert!(!valid_domain("../etc") && !valid_domain(".x") && valid_domain("a-b.test"));
    }
}
