//! Keys and certificates: key generation, self-signed certificates, CSRs, and reading
//! certificates back for listings and warnings.
//!
//! Everything here is pure: no file system, no store. Validation errors name the
//! command-line flag they came from (`--san`, `--country`, ...); the job runner maps the
//! flag to its field name.

mod chain;
mod export;
mod formats;
mod info;
mod kdf;
mod key;
mod legacy;
mod names;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType, SerialNumber,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub use chain::{Chain, PoolCert, Role, build_chain, classify, covers, verify_signed_by};
pub use export::{ExportFormat, Exported, export};
pub use formats::{FormatError, Found, FoundCert, FoundKey, MAX_FILE, read_file};
pub use info::{CertInfo, KeyLink, days_left, expiry_phrase, fingerprint_sha256, subject_fields};
pub use key::{KeyType, PrivateKey};
pub use names::{
    SubjectAltName, challenge_domain, common_name_is_dns, normalize_country, validate_dns_name, validate_dns_pattern,
};

/// Validity of a self-signed certificate when `--days` is not given.
pub const DEFAULT_DAYS: u32 = 365;
/// Longest `--days` accepted: a guard against typos such as 36500 for 365.
pub const MAX_DAYS: u32 = 3650;
/// Certificates expiring within this many days get a warning.
pub const EXPIRY_WARNING_DAYS: i64 = 30;

/// Errors from building keys, certificates and CSRs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag's value failed validation; the message names the flag and the value.
    #[error("{flag} {value:?}: {reason}")]
    InvalidFlag { flag: &'static str, value: String, reason: String },
    /// A flag that must be given was not.
    #[error("{flag}: {reason}")]
    MissingFlag { flag: &'static str, reason: String },
    /// The crypto library could not generate a key (should not happen).
    #[error("could not generate a {0} key: {1}")]
    KeyGeneration(KeyType, String),
    /// The crypto library could not sign (should not happen).
    #[error("could not sign the {what}: {reason}")]
    Sign { what: &'static str, reason: String },
}

fn invalid(flag: &'static str, value: &str, reason: impl Into<String>) -> Error {
    Error::InvalidFlag { flag, value: value.to_owned(), reason: reason.into() }
}

/// Subject fields as the operator typed them (the subject flags of DESIGN.md).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subject {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_unit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_name: Option<String>,
}

impl Subject {
    /// The subject in OpenSSL's one-line order, e.g. `C=DE, O=Example, CN=www.example.com`.
    pub fn one_line(&self) -> String {
        self.fields().map(|(_, short, _, v)| format!("{short}={v}")).collect::<Vec<_>>().join(", ")
    }

    /// (flag, short name, upper bound from RFC 5280, value) of each field that is set.
    fn fields(&self) -> impl Iterator<Item = (&'static str, &'static str, usize, &str)> {
        [
            ("--country", "C", 2, &self.country),
            ("--state", "ST", 128, &self.state),
            ("--locality", "L", 128, &self.locality),
            ("--org", "O", 64, &self.org),
            ("--org-unit", "OU", 64, &self.org_unit),
            ("--common-name", "CN", 64, &self.common_name),
        ]
        .into_iter()
        .filter_map(|(flag, short, max, v)| v.as_deref().map(|v| (flag, short, max, v)))
    }

    fn distinguished_name(&self) -> DistinguishedName {
        let mut dn = DistinguishedName::new();
        for (_, short, _, value) in self.fields() {
            let ty = match short {
                "C" => DnType::CountryName,
                "ST" => DnType::StateOrProvinceName,
                "L" => DnType::LocalityName,
                "O" => DnType::OrganizationName,
                "OU" => DnType::OrganizationalUnitName,
                _ => DnType::CommonName,
            };
            // RFC 5280: countryName is a PrintableString (two letters, checked above).
            match rcgen::string::PrintableString::try_from(value) {
                Ok(p) if short == "C" => dn.push(ty, rcgen::DnValue::PrintableString(p)),
                _ => dn.push(ty, value),
            }
        }
        dn
    }
}

/// What a new certificate or CSR asks for, before validation.
#[derive(Clone, Debug, Default)]
pub struct IdentityRequest {
    pub friendly_name: String,
    pub subject: Subject,
    pub sans: Vec<String>,
}

/// A validated subject and SAN list, with what validation decided on the operator's behalf.
#[derive(Clone, Debug)]
pub struct Identity {
    pub subject: Subject,
    pub sans: Vec<SubjectAltName>,
    /// Decisions worth telling the operator (e.g. the common name was added as first SAN).
    pub notes: Vec<String>,
    /// Accepted but discouraged input (e.g. IP addresses).
    pub warnings: Vec<String>,
}

impl IdentityRequest {
    /// Validates every field, normalises names and applies the common-name rule.
    pub fn validate(&self) -> Result<Identity, Error> {
        let mut notes = Vec::new();
        let mut warnings = Vec::new();
        let mut subject = Subject::default();
        let clean = |flag: &'static str, v: &Option<String>| -> Result<Option<String>, Error> {
            let Some(v) = v else { return Ok(None) };
            let t = v.trim();
            if t.is_empty() {
                return Err(invalid(flag, v, "must not be empty"));
            }
            if t.chars().any(char::is_control) {
                return Err(invalid(flag, v, "control characters are not allowed"));
            }
            Ok(Some(t.to_owned()))
        };
        subject.country = match clean("--country", &self.subject.country)? {
            Some(c) => Some(normalize_country(&c).map_err(|r| invalid("--country", &c, r))?),
            None => None,
        };
        subject.state = clean("--state", &self.subject.state)?;
        subject.locality = clean("--locality", &self.subject.locality)?;
        subject.org = clean("--org", &self.subject.org)?;
        subject.org_unit = clean("--org-unit", &self.subject.org_unit)?;
        subject.common_name = clean("--common-name", &self.subject.common_name)?;
        if subject.common_name.is_none() && self.friendly_name.chars().count() <= 64 {
            // The guides call the CN "a human-readable title": the friendly name is one.
            subject.common_name = Some(self.friendly_name.trim().to_owned());
        }
        for (flag, _, max, value) in subject.fields() {
            if value.chars().count() > max {
                return Err(invalid(flag, value, format!("longer than {max} characters")));
            }
        }

        let mut sans: Vec<SubjectAltName> = Vec::with_capacity(self.sans.len() + 1);
        for raw in &self.sans {
            let san = SubjectAltName::parse(raw).map_err(|r| invalid("--san", raw, r))?;
            if sans.contains(&san) {
                return Err(invalid("--san", raw, "given more than once"));
            }
            if let SubjectAltName::Ip(ip) = san {
                warnings.push(format!(
                    "--san {ip}: IP addresses in certificates are discouraged; clients should reach the service by a DNS name"
                ));
            }
            sans.push(san);
        }
        // A common name with a dot that is a DNS name is one. A given --common-name of one
        // label ("localhost") is a host name too when it is the only name there is;
        // beside --san names it stays a title, as the friendly name standing in does.
        let single_label_host = self.subject.common_name.is_some() && sans.is_empty();
        let is_dns = |cn: &str| common_name_is_dns(cn) || (single_label_host && validate_dns_pattern(cn).is_ok());
        if let Some(cn) = subject.common_name.as_deref().filter(|cn| is_dns(cn)) {
            let san = SubjectAltName::Dns(cn.to_ascii_lowercase());
            match sans.iter().position(|s| *s == san) {
                Some(0) => {}
                Some(i) => {
                    sans.remove(i);
                    sans.insert(0, san);
                    notes.push(format!("the common name {cn} is a DNS name: moved it to the first SAN"));
                }
                None => {
                    sans.insert(0, san);
                    notes.push(format!("the common name {cn} is a DNS name: added it as the first SAN"));
                }
            }
        }
        if sans.is_empty() {
            return Err(Error::MissingFlag {
                flag: "--san",
                reason: "a server certificate needs at least one DNS name or IP address (give --san NAME, or a --common-name that is a DNS name)".into(),
            });
        }
        Ok(Identity { subject, sans, notes, warnings })
    }
}

impl Identity {
    fn params(&self, key: KeyType) -> Result<CertificateParams, Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name = self.subject.distinguished_name();
        params.subject_alt_names = self
            .sans
            .iter()
            .map(|san| match san {
                SubjectAltName::Dns(name) => {
                    name.clone().try_into().map(SanType::DnsName).map_err(|e| invalid("--san", name, format!("{e}")))
                }
                SubjectAltName::Ip(ip) => Ok(SanType::IpAddress(*ip)),
            })
            .collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if key.is_rsa() {
            // TLS 1.2 RSA key exchange needs it; harmless otherwise.
            params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        Ok(params)
    }
}

/// Checks `--days` for a self-signed certificate.
/// Subject alternative names a served certificate may carry. Public CAs issue at most
/// a few hundred; tens of thousands make a certificate TLS cannot send.
pub const MAX_SANS: usize = 1000;

/// Whether rustls can serve `cert_der` with `key`: the check the data plane makes when
/// it builds a snapshot, made at import so that nothing unservable is stored.
pub fn check_servable(cert_der: &[u8], key: &PrivateKey) -> Result<(), String> {
    let key = rustls_pki_types::PrivateKeyDer::try_from(key.pkcs8_der().to_vec()).map_err(|e| e.to_string())?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    rustls::sign::CertifiedKey::from_der(vec![cert_der.to_vec().into()], key, &provider)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

pub fn validate_days(days: u32) -> Result<u32, Error> {
    if days == 0 || days > MAX_DAYS {
        return Err(invalid("--days", &days.to_string(), format!("must be between 1 and {MAX_DAYS}")));
    }
    Ok(days)
}

/// A 128-bit random serial: positive, and always 16 bytes long so it never shrinks.
fn random_serial() -> Result<SerialNumber, Error> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| Error::Sign { what: "serial", reason: "no randomness".into() })?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// Issues a self-signed server certificate valid from `now` for `days` days; returns PEM.
pub fn self_signed(
    identity: &Identity,
    key_type: KeyType,
    key: &PrivateKey,
    days: u32,
    now: OffsetDateTime,
) -> Result<String, Error> {
    let mut params = identity.params(key_type)?;
    // Whole seconds: X.509 times have no fractions, and tests compare with openssl's view.
    let now = now.replace_nanosecond(0).unwrap_or(now);
    params.not_before = now;
    params.not_after = now + time::Duration::days(i64::from(days));
    params.serial_number = Some(random_serial()?);
    let cert =
        params.self_signed(key.pair()).map_err(|e| Error::Sign { what: "certificate", reason: e.to_string() })?;
    Ok(cert.pem())
}

/// The TLS-ALPN-01 challenge certificate for `domain` (RFC 8737 §3): self-signed, a
/// fresh P-256 key, the domain as its only SAN and the SHA-256 of the key authorization
/// in a critical acmeIdentifier extension. Returns (certificate DER, PKCS#8 key DER).
pub fn alpn_challenge_cert(domain: &str, key_authorization: &str) -> Result<(Vec<u8>, Vec<u8>), Error> {
    use sha2::Digest;
    let key = KeyType::EcdsaP256.generate()?;
    let mut params = CertificateParams::new(vec![domain.to_owned()])
        .map_err(|e| Error::Sign { what: "challenge certificate", reason: e.to_string() })?;
    let digest = sha2::Sha256::digest(key_authorization.as_bytes());
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(&digest)];
    let cert = params
        .self_signed(key.pair())
        .map_err(|e| Error::Sign { what: "challenge certificate", reason: e.to_string() })?;
    Ok((cert.der().to_vec(), key.pkcs8_der().to_vec()))
}

/// Builds a PKCS#10 CSR signed by `key`; returns PEM ("CERTIFICATE REQUEST").
pub fn certificate_request(identity: &Identity, key_type: KeyType, key: &PrivateKey) -> Result<String, Error> {
    let params = identity.params(key_type)?;
    let csr =
        params.serialize_request(key.pair()).map_err(|e| Error::Sign { what: "request", reason: e.to_string() })?;
    csr.pem().map_err(|e| Error::Sign { what: "request", reason: e.to_string() })
}

/// RFC 3339 with whole seconds, the one time format of our JSON and metadata.
pub fn rfc3339(t: OffsetDateTime) -> String {
    use time::format_description::well_known::Rfc3339;
    t.replace_nanosecond(0).unwrap_or(t).format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(cn: Option<&str>, sans: &[&str]) -> IdentityRequest {
        IdentityRequest {
            friendly_name: "Test".into(),
            subject: Subject { common_name: cn.map(Into::into), ..Subject::default() },
            sans: sans.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_single_label_common_name_given_is_a_san() {
        let id = request(Some("localhost"), &[]).validate().unwrap();
        assert_eq!(id.sans, vec![SubjectAltName::Dns("localhost".into())]);
        // The friendly name standing in for the CN is not a host name without a dot.
        let mut r = request(None, &["a.example.com"]);
        r.friendly_name = "Lab".into();
        let id = r.validate().unwrap();
        assert_eq!(id.sans, vec![SubjectAltName::Dns("a.example.com".into())]);
    }

    #[test]
    fn common_name_becomes_first_san() {
        let id = request(Some("www.example.com"), &["api.example.com"]).validate().unwrap();
        assert_eq!(id.sans[0], SubjectAltName::Dns("www.example.com".into()));
        assert_eq!(id.sans.len(), 2);
        assert_eq!(id.notes.len(), 1);
        let id = request(Some("www.example.com"), &["api.example.com", "WWW.example.com"]).validate().unwrap();
        assert_eq!(id.sans[0], SubjectAltName::Dns("www.example.com".into()));
        assert_eq!(id.sans.len(), 2);
    }

    #[test]
    fn rejects_duplicates_and_empty() {
        assert!(matches!(
            request(None, &["a.example.com", "A.example.com"]).validate(),
            Err(Error::InvalidFlag { flag: "--san", .. })
        ));
        assert!(matches!(request(Some("A Title"), &[]).validate(), Err(Error::MissingFlag { flag: "--san", .. })));
    }

    #[test]
    fn friendly_name_is_default_common_name() {
        let id = request(None, &["a.example.com"]).validate().unwrap();
        assert_eq!(id.subject.common_name.as_deref(), Some("Test"));
    }
}
