//! Writing certificates and keys in the formats other systems import: DER, PEM, PKCS#7
//! (.p7b), PKCS#8 (.p8, encrypted with PBES2/PBKDF2-SHA256/AES-256-CBC) and PKCS#12
//! (AES-256-CBC with PBKDF2 and a SHA-256 MAC, which OpenSSL 3 reads without -legacy).
//!
//! Which flags make sense for which format is the caller's decision; this module encodes.

use std::fmt;
use std::str::FromStr;

use super::PrivateKey;

/// PBKDF2 iterations for encrypted PKCS#8: well above OpenSSL's 2048, cheap for one key.
const PBKDF2_ITERATIONS: u32 = 100_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    Der,
    Pem,
    P7b,
    P8,
    P12,
}

impl ExportFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Der => "der",
            Self::Pem => "pem",
            Self::P7b => "p7b",
            Self::P8 => "p8",
            Self::P12 => "p12",
        }
    }
}

impl fmt::Display for ExportFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ExportFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        [Self::Der, Self::Pem, Self::P7b, Self::P8, Self::P12]
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| format!("unknown format \"{s}\" (expected one of: der, pem, p7b, p8, p12)"))
    }
}

/// The bytes of an export and whether they contain the private key.
pub struct Exported {
    pub bytes: Vec<u8>,
    pub has_key: bool,
}

fn pem_block(tag: &str, der: &[u8]) -> String {
    pem::encode_config(&pem::Pem::new(tag, der), pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF))
}

/// The key as PEM: "ENCRYPTED PRIVATE KEY" with a password, "PRIVATE KEY" without.
fn key_pem(key: &PrivateKey, password: Option<&str>) -> Result<String, String> {
    let Some(password) = password else { return Ok(pem_block("PRIVATE KEY", key.pkcs8_der())) };
    let mut salt = [0u8; 16];
    let mut iv = [0u8; 16];
    aws_lc_rs::rand::fill(&mut salt).map_err(|_| "no randomness")?;
    aws_lc_rs::rand::fill(&mut iv).map_err(|_| "no randomness")?;
    let params = pkcs8::pkcs5::pbes2::Parameters::generate_pbkdf2_sha256_aes256cbc(PBKDF2_ITERATIONS, &salt, iv)
        .map_err(|e| e.to_string())?;
    let info = pkcs8::PrivateKeyInfoRef::try_from(key.pkcs8_der()).map_err(|e| e.to_string())?;
    let doc = info.encrypt_with_params(params, password).map_err(|e| e.to_string())?;
    Ok(pem_block("ENCRYPTED PRIVATE KEY", doc.as_bytes()))
}

/// Encodes `leaf` (with `chain`, issuer first, and `key` where the format holds them).
/// `password: None` writes the key unencrypted (the caller has checked `--no-password`).
pub fn export(
    format: ExportFormat,
    leaf: &[u8],
    chain: &[Vec<u8>],
    key: Option<&PrivateKey>,
    password: Option<&str>,
    alias: &str,
) -> Result<Exported, String> {
    let bytes = match format {
        ExportFormat::Der => leaf.to_vec(),
        ExportFormat::Pem => {
            let mut text: String = std::iter::once(leaf)
                .chain(chain.iter().map(Vec::as_slice))
                .map(|d| pem_block("CERTIFICATE", d))
                .collect();
            if let Some(key) = key {
                text.push_str(&key_pem(key, password)?);
            }
            text.into_bytes()
        }
        ExportFormat::P7b => {
            use der::{Decode, Encode};
            let certs = std::iter::once(leaf)
                .chain(chain.iter().map(Vec::as_slice))
                .map(x509_cert::Certificate::from_der)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            let ci = cms::content_info::ContentInfo::try_from(certs).map_err(|e| e.to_string())?;
            ci.to_der().map_err(|e| e.to_string())?
        }
        ExportFormat::P8 => key_pem(key.ok_or("no private key")?, password)?.into_bytes(),
        ExportFormat::P12 => {
            use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKeyChain};
            let key = key.ok_or("no private key")?;
            let certs = std::iter::once(leaf)
                .chain(chain.iter().map(Vec::as_slice))
                .map(Certificate::from_der)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            let key_id = super::fingerprint_sha256(leaf);
            let p12_key = p12_keystore::PrivateKey::from_der(key.pkcs8_der()).map_err(|e| e.to_string())?;
            let entry = PrivateKeyChain::new(hex::decode(&key_id[..40]).unwrap_or_default(), p12_key, certs);
            let mut store = KeyStore::new();
            store.add_entry(alias, KeyStoreEntry::PrivateKeyChain(entry));
            store.writer(password.unwrap_or("")).write().map_err(|e| e.to_string())?
        }
    };
    Ok(Exported {
        bytes,
        has_key: key.is_some() && matches!(format, ExportFormat::Pem | ExportFormat::P8 | ExportFormat::P12),
    })
}
