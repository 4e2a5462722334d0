//! Reading a certificate back: the fields the certificate table shows, and its warnings.

use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::objects::{oid_registry, oid2sn};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

use super::{EXPIRY_WARNING_DAYS, rfc3339};

/// What the certificate table shows about one certificate.
#[derive(Clone, Debug)]
pub struct CertInfo {
    /// The subject in RFC 4514 form.
    pub subject: String,
    /// The subject CN, else the first SAN, else the subject.
    pub issued_to: String,
    /// The issuer CN, else the issuer.
    pub issued_by: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub sans: Vec<String>,
    pub fingerprint_sha256: String,
    /// Serial number, lowercase hex.
    pub serial: String,
    /// e.g. "ECDSA P-256", "RSA 2048", "Ed25519".
    pub key: String,
    pub rsa_bits: Option<usize>,
    /// Signature algorithm short name, e.g. "ecdsa-with-SHA256".
    pub signature: String,
    pub is_ca: bool,
    /// Issuer equals subject.
    pub self_issued: bool,
    /// The raw subjectPublicKey bits, to match against a private key.
    pub public_key_raw: Vec<u8>,
    /// DER of the subject and issuer names, to link certificates into chains.
    pub subject_raw: Vec<u8>,
    pub issuer_raw: Vec<u8>,
}

/// Whole days from `now` to `not_after`, rounded to the nearest day (a 90-day certificate
/// issued a second ago has 90). The one count of days everywhere: `cert show`, the
/// table, `/status.json`, the status page and the warnings.
pub fn days_left(not_after: OffsetDateTime, now: OffsetDateTime) -> i64 {
    let secs = (not_after - now).whole_seconds();
    (secs + 43_200).div_euclid(86_400)
}

/// "expires in 12 days", "expires today", "expired today", "expired 3 days ago".
pub fn expiry_phrase(not_after: OffsetDateTime, now: OffsetDateTime) -> String {
    let plural = |n: i64| if n == 1 { "" } else { "s" };
    if now > not_after {
        match -days_left(not_after, now) {
            0 => "expired today".into(),
            n => format!("expired {n} day{} ago", plural(n)),
        }
    } else {
        match days_left(not_after, now) {
            0 => "expires today".into(),
            n => format!("expires in {n} day{}", plural(n)),
        }
    }
}

/// Lowercase hex SHA-256 of DER bytes.
pub fn fingerprint_sha256(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The subject fields of a certificate that a CSR can carry (C, ST, L, O, OU, CN; the
/// first of each), for a new request with the same subject.
pub fn subject_fields(der: &[u8]) -> Result<super::Subject, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate ({e})"))?;
    let name = cert.subject();
    let first = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>| {
        it.next().and_then(|a| a.as_str().ok()).map(str::to_owned)
    };
    Ok(super::Subject {
        country: first(&mut name.iter_country()),
        state: first(&mut name.iter_state_or_province()),
        locality: first(&mut name.iter_locality()),
        org: first(&mut name.iter_organization()),
        org_unit: first(&mut name.iter_organizational_unit()),
        common_name: first(&mut name.iter_common_name()),
    })
}

fn first_cn(name: &x509_parser::x509::X509Name<'_>) -> Option<String> {
    name.iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_owned)
}

impl CertInfo {
    /// Parses one DER certificate. The error is x509-parser's reason.
    pub fn from_der(der: &[u8]) -> Result<Self, String> {
        let (rest, cert) = X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate ({e})"))?;
        if !rest.is_empty() {
            return Err(format!("{} bytes of trailing data after the certificate", rest.len()));
        }
        let registry = oid_registry();
        let sans: Vec<String> = match cert.subject_alternative_name() {
            Ok(Some(ext)) => ext
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some((*d).to_owned()),
                    GeneralName::IPAddress(b) => ip_from_bytes(b),
                    _ => None,
                })
                .collect(),
            Ok(None) => Vec::new(),
            Err(e) => return Err(format!("bad subjectAltName extension ({e})")),
        };
        let spki = cert.public_key();
        let (key, rsa_bits) = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => (format!("RSA {}", rsa.key_size()), Some(rsa.key_size())),
            Ok(PublicKey::EC(_)) => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok())
                    .and_then(|oid| oid2sn(&oid, registry).ok().map(str::to_owned))
                    .unwrap_or_else(|| "unknown curve".into());
                let curve = match curve.as_str() {
                    "prime256v1" => "P-256".to_owned(),
                    "secp384r1" => "P-384".to_owned(),
                    "secp521r1" => "P-521".to_owned(),
                    other => other.to_owned(),
                };
                (format!("ECDSA {curve}"), None)
            }
            _ => {
                let name = oid2sn(&spki.algorithm.algorithm, registry)
                    .map(str::to_owned)
                    .unwrap_or_else(|_| spki.algorithm.algorithm.to_id_string());
                let name = if name == "ED25519" || name == "ed25519" { "Ed25519".to_owned() } else { name };
                (name, None)
            }
        };
        let signature = oid2sn(&cert.signature_algorithm.algorithm, registry)
            .map(str::to_owned)
            .unwrap_or_else(|_| cert.signature_algorithm.algorithm.to_id_string());
        let subject = cert.subject().to_string();
        let issuer = cert.issuer().to_string();
        Ok(Self {
            issued_to: first_cn(cert.subject()).or_else(|| sans.first().cloned()).unwrap_or_else(|| subject.clone()),
            issued_by: first_cn(cert.issuer()).unwrap_or_else(|| issuer.clone()),
            self_issued: cert.subject().as_raw() == cert.issuer().as_raw(),
            subject,
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            sans,
            fingerprint_sha256: fingerprint_sha256(der),
            serial: hex::encode(cert.raw_serial()),
            key,
            rsa_bits,
            signature,
            is_ca: cert.is_ca(),
            public_key_raw: spki.subject_public_key.data.to_vec(),
            subject_raw: cert.subject().as_raw().to_vec(),
            issuer_raw: cert.issuer().as_raw().to_vec(),
        })
    }

    /// Days from `now` until expiry, to the nearest day (negative once expired), so a
    /// certificate made for 365 days shows 365, not 364.
    pub fn days_left(&self, now: OffsetDateTime) -> i64 {
        days_left(self.not_after, now)
    }

    /// The certificate's own problems, as one short sentence each.
    pub fn warnings(&self, key: KeyLink, now: OffsetDateTime) -> Vec<String> {
        let mut w = Vec::new();
        if now > self.not_after {
            w.push(format!("expired on {}", rfc3339(self.not_after)));
        } else if now < self.not_before {
            w.push(format!("not valid before {}", rfc3339(self.not_before)));
        } else if self.days_left(now) < EXPIRY_WARNING_DAYS {
            w.push(expiry_phrase(self.not_after, now));
        }
        match key {
            KeyLink::Missing => w.push("no private key".into()),
            KeyLink::Mismatch => w.push("private key does not match the certificate".into()),
            KeyLink::Unreadable(ref why) => w.push(format!("private key unreadable: {why}")),
            KeyLink::Matches => {}
        }
        if let Some(bits) = self.rsa_bits.filter(|b| *b < 2048) {
            w.push(format!("weak key: RSA {bits} bits (2048 at least)"));
        }
        if self.signature.to_ascii_lowercase().contains("sha1") {
            w.push(format!("weak signature: {}", self.signature));
        }
        if self.sans.is_empty() {
            w.push("no subjectAltName: clients ignore the common name".into());
        }
        w
    }
}

/// Whether a certificate has its private key, as far as the store knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyLink {
    Matches,
    Mismatch,
    Missing,
    Unreadable(String),
}

impl KeyLink {
    pub fn has_key(&self) -> bool {
        matches!(self, Self::Matches)
    }
}

fn ip_from_bytes(b: &[u8]) -> Option<String> {
    match b.len() {
        4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(b).ok()?).to_string()),
        16 => Some(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?).to_string()),
        _ => None,
    }
}
