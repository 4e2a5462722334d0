//! Reading what administrators bring back from their CA, by content and never by file
//! name: X.509 certificates (DER or PEM, several per file), PKCS#7 bundles (DER, BER or
//! PEM), PKCS#12 (modern and legacy encryption), private keys as PKCS#8 (plain or
//! encrypted), PKCS#1 or SEC1 (plain or with traditional PEM encryption).
//!
//! The output is flat: certificates and keys, each with where it came from. Deciding what
//! is a leaf, an intermediate or a root, and which key belongs to which certificate, is
//! [`super::chain`]'s job.

use x509_parser::prelude::{FromDer, X509Certificate};

use super::PrivateKey;
use super::legacy::{self, LegacyError};

/// Largest file accepted: certificate files are kilobytes; anything bigger is a mistake.
pub const MAX_FILE: usize = 1 << 20;

/// Why a file could not be read. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("wrong password for {file}")]
    WrongPassword { file: String },
    #[error("{file}: {what} is protected by a password: give it with --password-file")]
    NeedPassword { file: String, what: &'static str },
    #[error("{file}: {size} bytes is larger than 1 MiB; not a certificate or key file")]
    TooLarge { file: String, size: usize },
    #[error("{file}: not a certificate, PKCS#7, PKCS#12 or private key file (tried {tried})")]
    Unrecognised { file: String, tried: String },
    #[error("{file}: damaged {format}: {reason}")]
    Corrupt { file: String, format: &'static str, reason: String },
    #[error(
        "{file}: this is a certificate signing request; give it to your CA and import the certificate it sends back"
    )]
    Csr { file: String },
    #[error("{file}: holds only a public key; import the certificate instead")]
    PublicKey { file: String },
    #[error("{file}: unsupported PEM block \"{label}\"")]
    UnsupportedPem { file: String, label: String },
    #[error("{file}: the password file content is not UTF-8, which PKCS#12 needs")]
    PasswordNotUtf8 { file: String },
}

/// A certificate found in a file.
#[derive(Clone, Debug)]
pub struct FoundCert {
    pub der: Vec<u8>,
    /// "FILE (PKCS#12)" and the like, for messages.
    pub origin: String,
    /// A PKCS#12 friendly name, if the file carried one.
    pub alias: Option<String>,
}

/// A private key found in a file, normalised to PKCS#8.
#[derive(Debug)]
pub struct FoundKey {
    pub key: PrivateKey,
    pub origin: String,
    pub alias: Option<String>,
}

/// Everything read from one import.
#[derive(Debug, Default)]
pub struct Found {
    pub certs: Vec<FoundCert>,
    pub keys: Vec<FoundKey>,
}

impl Found {
    fn cert(&mut self, der: Vec<u8>, file: &str, format: &str, alias: Option<String>) {
        self.certs.push(FoundCert { der, origin: format!("{file} ({format})"), alias });
    }

    fn key(&mut self, key: PrivateKey, file: &str, format: &str, alias: Option<String>) {
        self.keys.push(FoundKey { key, origin: format!("{file} ({format})"), alias });
    }
}

/// Reads one file's contents into `found`. `password` is the `--password-file` content.
pub fn read_file(file: &str, bytes: &[u8], password: Option<&[u8]>, found: &mut Found) -> Result<(), FormatError> {
    if bytes.len() > MAX_FILE {
        return Err(FormatError::TooLarge { file: file.into(), size: bytes.len() });
    }
    if memmem(bytes, b"-----BEGIN ") {
        read_pem(file, bytes, password, found)
    } else {
        read_der(file, bytes, password, found)
    }
}

fn memmem(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn corrupt(file: &str, format: &'static str, reason: impl ToString) -> FormatError {
    FormatError::Corrupt { file: file.into(), format, reason: reason.to_string() }
}

/// A whole DER certificate (no trailing bytes), checked by parsing it.
fn parse_cert(der: &[u8]) -> Result<(), String> {
    match X509Certificate::from_der(der) {
        Ok(([], _)) => Ok(()),
        Ok((rest, _)) => Err(format!("{} bytes after the certificate", rest.len())),
        Err(e) => Err(e.to_string()),
    }
}

fn read_pem(file: &str, bytes: &[u8], password: Option<&[u8]>, found: &mut Found) -> Result<(), FormatError> {
    let blocks = pem::parse_many(bytes).map_err(|e| corrupt(file, "PEM", e))?;
    let begins = bytes.windows(11).filter(|w| *w == b"-----BEGIN ").count();
    if blocks.len() != begins {
        return Err(corrupt(
            file,
            "PEM",
            format!("{begins} BEGIN lines but {} complete blocks (truncated?)", blocks.len()),
        ));
    }
    for block in &blocks {
        let der = block.contents();
        match block.tag() {
            "CERTIFICATE" | "X509 CERTIFICATE" => {
                parse_cert(der).map_err(|r| corrupt(file, "PEM certificate", r))?;
                found.cert(der.to_vec(), file, "PEM certificate", None);
            }
            "TRUSTED CERTIFICATE" => {
                // OpenSSL appends its trust settings after the certificate.
                let (rest, _) = X509Certificate::from_der(der).map_err(|e| corrupt(file, "PEM certificate", e))?;
                found.cert(der[..der.len() - rest.len()].to_vec(), file, "PEM certificate", None);
            }
            "PKCS7" | "CERTIFICATE CHAIN" => read_pkcs7(file, der, "PEM PKCS#7", found)?,
            "PRIVATE KEY" => {
                let key = PrivateKey::from_der(der).map_err(|r| corrupt(file, "PKCS#8 key", r))?;
                found.key(key, file, "PKCS#8 key", None);
            }
            "ENCRYPTED PRIVATE KEY" => {
                let key = decrypt_pkcs8(file, der, password)?;
                found.key(key, file, "encrypted PKCS#8 key", None);
            }
            tag @ ("RSA PRIVATE KEY" | "EC PRIVATE KEY") => {
                let encrypted = block.headers().get("Proc-Type").is_some_and(|v| v.contains("ENCRYPTED"));
                let key = if encrypted {
                    let Some(pass) = password else {
                        return Err(FormatError::NeedPassword { file: file.into(), what: "the private key" });
                    };
                    let single = pem::encode(block);
                    match legacy::read_pem_key(single.as_bytes(), pass) {
                        Ok(pkcs8) => PrivateKey::from_der(&pkcs8).map_err(|r| corrupt(file, "legacy key", r))?,
                        Err(LegacyError::BadDecrypt) => return Err(FormatError::WrongPassword { file: file.into() }),
                        Err(LegacyError::Unreadable) => {
                            return Err(corrupt(file, "encrypted legacy key", "unreadable or unsupported cipher"));
                        }
                    }
                } else {
                    PrivateKey::from_der(der).map_err(|r| corrupt(file, "legacy key", r))?
                };
                let what = if tag.starts_with("RSA") { "PKCS#1 RSA key" } else { "SEC1 EC key" };
                found.key(key, file, what, None);
            }
            "EC PARAMETERS" | "X509 CRL" | "DH PARAMETERS" => {}
            "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST" => return Err(FormatError::Csr { file: file.into() }),
            "PUBLIC KEY" | "RSA PUBLIC KEY" => return Err(FormatError::PublicKey { file: file.into() }),
            other => return Err(FormatError::UnsupportedPem { file: file.into(), label: other.into() }),
        }
    }
    Ok(())
}

fn read_der(file: &str, bytes: &[u8], password: Option<&[u8]>, found: &mut Found) -> Result<(), FormatError> {
    use der::Decode;
    let mut tried = Vec::new();
    // PKCS#12 first: its outer structure (version 3, then data) is the most distinctive.
    match pkcs12::pfx::Pfx::from_der(bytes) {
        Ok(_) => return read_pkcs12(file, bytes, password, found),
        Err(e) => tried.push(format!("PKCS#12: {e}")),
    }
    match parse_cert(bytes) {
        Ok(()) => {
            found.cert(bytes.to_vec(), file, "DER certificate", None);
            return Ok(());
        }
        Err(e) => tried.push(format!("X.509 DER: {e}")),
    }
    match read_pkcs7(file, bytes, "PKCS#7", found) {
        Ok(()) => return Ok(()),
        Err(e) => tried.push(format!("PKCS#7: {}", e.to_string().rsplit(": ").next().unwrap_or_default())),
    }
    if EncryptedKeyShape::from_der(bytes).is_ok() {
        let key = decrypt_pkcs8(file, bytes, password)?;
        found.key(key, file, "encrypted PKCS#8 key", None);
        return Ok(());
    }
    match PrivateKey::from_der(bytes) {
        Ok(key) => {
            found.key(key, file, "DER private key", None);
            Ok(())
        }
        Err(e) => {
            tried.push(format!("private key: {e}"));
            Err(FormatError::Unrecognised { file: file.into(), tried: tried.join("; ") })
        }
    }
}

/// The shape of an EncryptedPrivateKeyInfo, whatever its scheme: enough to recognise one
/// whose algorithm the pkcs8 crate does not parse (PBES1).
#[derive(der::Sequence)]
struct EncryptedKeyShape {
    algorithm: x509_cert::spki::AlgorithmIdentifierOwned,
    data: der::asn1::OctetString,
}

/// Certificates of a PKCS#7 SignedData, DER or (as Windows writes it) BER.
fn read_pkcs7(file: &str, bytes: &[u8], format: &'static str, found: &mut Found) -> Result<(), FormatError> {
    use cms::content_info::ContentInfo;
    use cms::signed_data::SignedData;
    use der::{Decode, Encode, EncodingRules};
    const SIGNED_DATA: &str = "1.2.840.113549.1.7.2";
    let sd = match ContentInfo::from_der(bytes) {
        Ok(ci) if ci.content_type.to_string() == SIGNED_DATA => ci.content.decode_as::<SignedData>(),
        Ok(ci) => return Err(corrupt(file, format, format!("content type {} is not signedData", ci.content_type))),
        Err(_) => match ContentInfo::from_ber(bytes) {
            Ok(ci) if ci.content_type.to_string() == SIGNED_DATA => {
                ci.content.decode_as_encoding::<SignedData>(EncodingRules::Ber)
            }
            Ok(ci) => return Err(corrupt(file, format, format!("content type {} is not signedData", ci.content_type))),
            Err(e) => return Err(corrupt(file, format, e)),
        },
    }
    .map_err(|e| corrupt(file, format, e))?;
    let certs = sd.certificates.map(|set| set.0.into_vec()).unwrap_or_default();
    if certs.is_empty() {
        return Err(corrupt(file, format, "holds no certificates"));
    }
    for choice in certs {
        if let cms::cert::CertificateChoices::Certificate(cert) = choice {
            let der = cert.to_der().map_err(|e| corrupt(file, format, e))?;
            parse_cert(&der).map_err(|r| corrupt(file, format, r))?;
            found.cert(der, file, format, None);
        }
    }
    Ok(())
}

fn decrypt_pkcs8(file: &str, der: &[u8], password: Option<&[u8]>) -> Result<PrivateKey, FormatError> {
    let Some(pass) = password else {
        return Err(FormatError::NeedPassword { file: file.into(), what: "the private key" });
    };
    super::kdf::check(der).map_err(|reason| corrupt(file, "encrypted PKCS#8 key", reason))?;
    let pure = pkcs8::EncryptedPrivateKeyInfoRef::try_from(der).map(|info| info.decrypt(pass));
    let plain = match pure {
        Ok(Ok(doc)) => doc.as_bytes().to_vec(),
        // A scheme the pure-Rust crate reads but could not decrypt: a wrong password.
        Ok(Err(_)) => match legacy::decrypt_pkcs8(der, pass) {
            Ok(plain) => plain,
            Err(_) => return Err(FormatError::WrongPassword { file: file.into() }),
        },
        // PBES1 (PKCS#12-style PBE) and other schemes the crate lacks: AWS-LC reads them.
        Err(e) => match legacy::decrypt_pkcs8(der, pass) {
            Ok(plain) => plain,
            Err(LegacyError::BadDecrypt) => return Err(FormatError::WrongPassword { file: file.into() }),
            Err(LegacyError::Unreadable) => return Err(corrupt(file, "encrypted PKCS#8 key", e)),
        },
    };
    PrivateKey::from_der(&plain).map_err(|r| corrupt(file, "encrypted PKCS#8 key", r))
}

fn read_pkcs12(file: &str, bytes: &[u8], password: Option<&[u8]>, found: &mut Found) -> Result<(), FormatError> {
    use p12_keystore::Pkcs12Archive;
    use p12_keystore::error::Error as P12Error;
    let pass = match password {
        Some(p) => std::str::from_utf8(p).map_err(|_| FormatError::PasswordNotUtf8 { file: file.into() })?,
        // Many exports use an empty password; try it before asking for one.
        None => "",
    };
    let archive = Pkcs12Archive::from_pkcs12(bytes, pass).map_err(|e| match e {
        P12Error::MacError(_) | P12Error::UnpadError | P12Error::Pkcs5Error(_) | P12Error::InvalidPrivateKey
            if password.is_none() =>
        {
            FormatError::NeedPassword { file: file.into(), what: "this PKCS#12 file" }
        }
        P12Error::MacError(_) | P12Error::UnpadError | P12Error::Pkcs5Error(_) => {
            FormatError::WrongPassword { file: file.into() }
        }
        other => corrupt(file, "PKCS#12", other),
    })?;
    for bag in archive.certs {
        let der = bag.cert.as_der().to_vec();
        parse_cert(&der).map_err(|r| corrupt(file, "PKCS#12", r))?;
        found.cert(der, file, "PKCS#12", bag.friendly_name);
    }
    for bag in archive.keys {
        let key = PrivateKey::from_der(bag.key.as_der()).map_err(|r| corrupt(file, "PKCS#12 key", r))?;
        found.key(key, file, "PKCS#12", bag.friendly_name);
    }
    Ok(())
}
