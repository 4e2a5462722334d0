//! Names that go into certificates: DNS names, wildcards, IP addresses and the
//! subject's country code. Each check returns the reason in words an operator can act
//! on; the caller adds the flag or field it came from.

use std::fmt;
use std::net::IpAddr;

/// One subjectAltName entry, validated and normalised (DNS names lowercased).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SubjectAltName {
    /// A DNS name, possibly a wildcard `*.parent` covering exactly one label.
    Dns(String),
    /// An IP address: allowed, but the guides advise against it.
    Ip(IpAddr),
}

impl SubjectAltName {
    /// Parses one `--san` value.
    pub fn parse(value: &str) -> Result<Self, String> {
        let value = value.trim();
        if value.is_empty() {
            return Err("empty name".into());
        }
        // Bracketed IPv6 is how addresses appear in URLs; accept it here too.
        let bare = value.strip_prefix('[').and_then(|v| v.strip_suffix(']')).unwrap_or(value);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(Self::Ip(ip));
        }
        validate_dns_pattern(value)?;
        Ok(Self::Dns(value.to_ascii_lowercase()))
    }

    pub fn is_ip(&self) -> bool {
        matches!(self, Self::Ip(_))
    }
}

impl fmt::Display for SubjectAltName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dns(name) => f.write_str(name),
            Self::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Checks a DNS name or a wildcard pattern (`*.` plus a name of at least two labels).
pub fn validate_dns_pattern(name: &str) -> Result<(), String> {
    match name.strip_prefix("*.") {
        Some(parent) => {
            if parent.contains('*') {
                return Err(WILDCARD_RULE.into());
            }
            validate_dns_name(parent)?;
            if !parent.contains('.') {
                return Err(format!(
                    "a wildcard needs a parent domain of at least two labels (\"*.{parent}\" would cover a whole top-level domain)"
                ));
            }
            Ok(())
        }
        None if name.contains('*') => Err(WILDCARD_RULE.into()),
        None => validate_dns_name(name),
    }
}

const WILDCARD_RULE: &str = "a wildcard is only allowed as the whole leftmost label, as in \"*.example.com\"";

/// Checks a plain DNS name: letters, digits and hyphens (RFC 1123 host names), labels of
/// 1-63 characters, at most 253 in all, and a last label that is not all digits.
pub fn validate_dns_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty name".into());
    }
    if !name.is_ascii() {
        return Err("non-ASCII characters: write an internationalised name in its xn-- (A-label) form".into());
    }
    if name.ends_with('.') {
        return Err("a trailing dot is not allowed in a certificate name".into());
    }
    if name.len() > 253 {
        return Err(format!("name is {} characters long; at most 253 are allowed", name.len()));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label (two dots in a row, or a leading dot)".into());
        }
        if label.len() > 63 {
            return Err(format!("label \"{label}\" is longer than 63 characters"));
        }
        if let Some(bad) = label.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-')) {
            return Err(format!("invalid character {bad:?}: only letters, digits, hyphens and dots are allowed"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label \"{label}\" starts or ends with a hyphen"));
        }
    }
    let tld = name.rsplit('.').next().unwrap_or(name);
    if tld.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the last label is all digits, which is neither a DNS name nor an IP address".into());
    }
    Ok(())
}

/// True when a subject common name is also a usable DNS name, so it belongs in the SANs
/// (clients ignore the CN). A single label such as "Portcullis" is read as a title, not a host.
pub fn common_name_is_dns(cn: &str) -> bool {
    cn.contains('.') && validate_dns_pattern(cn).is_ok()
}

/// Checks and upper-cases an ISO 3166-1 alpha-2 country code.
pub fn normalize_country(code: &str) -> Result<String, String> {
    let upper = code.trim().to_ascii_uppercase();
    if upper.len() != 2 || !upper.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err("must be a two-letter ISO 3166-1 alpha-2 code, such as US, DE or GB".into());
    }
    if rust_iso3166::from_alpha2(&upper).is_none() {
        return Err("not an ISO 3166-1 alpha-2 country code".into());
    }
    Ok(upper)
}

/// A domain usable as a file name for a pending TLS-ALPN-01 challenge: lowercase
/// letters, digits, `-` and `.`, not starting with a dot, no `..`.
pub fn challenge_domain(domain: &str) -> bool {
    (1..=253).contains(&domain.len())
        && !domain.starts_with('.')
        && !domain.contains("..")
        && domain.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_patterns() {
        for ok in ["example.com", "a-b.example.com", "localhost", "*.example.com", "xn--bcher-kva.example"] {
            assert!(validate_dns_pattern(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a..b",
            ".a.b",
            "a.b.",
            "-a.b",
            "a-.b",
            "a_b.c",
            "a b.c",
            "*",
            "*.com",
            "a.*.b",
            "f*o.example.com",
            "**.example.com",
            "*.*.example.com",
            "1.2.3",
            "bücher.example",
        ] {
            assert!(validate_dns_pattern(bad).is_err(), "{bad}");
        }
        assert!(validate_dns_name(&format!("{}.com", "a".repeat(64))).is_err());
    }

    #[test]
    fn sans() {
        assert_eq!(SubjectAltName::parse("WWW.Example.COM").unwrap(), SubjectAltName::Dns("www.example.com".into()));
        assert!(SubjectAltName::parse("10.0.0.1").unwrap().is_ip());
        assert!(SubjectAltName::parse("[::1]").unwrap().is_ip());
        assert!(SubjectAltName::parse("10.0.0.256").is_err());
    }

    #[test]
    fn countries() {
        assert_eq!(normalize_country("de").unwrap(), "DE");
        for bad in ["XX", "USA", "U", "1A", "ZZ"] {
            assert!(normalize_country(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn common_names() {
        assert!(common_name_is_dns("support.example.com"));
        assert!(!common_name_is_dns("Portcullis Default"));
        assert!(!common_name_is_dns("intranet"));
    }
}
