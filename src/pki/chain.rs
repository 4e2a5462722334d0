//! Certificate roles and chains: which certificate is an identity (leaf), an
//! intermediate or a root, who signed whom, and which names a certificate covers.

use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::CertInfo;

/// A certificate's role, from basicConstraints and issuer/subject, never from names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// An identity certificate: served with its key.
    Leaf,
    Intermediate,
    /// Self-issued and self-signed CA certificate.
    Root,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Leaf => "identity",
            Self::Intermediate => "intermediate",
            Self::Root => "root",
        }
    }
}

/// Classifies a certificate. `has_key` says whether its private key is at hand: a
/// self-signed certificate with its key (one copied from another server, or made by
/// `openssl req -x509`, which marks it CA:TRUE) is an identity that is its own root.
pub fn classify(info: &CertInfo, der: &[u8], has_key: bool) -> Role {
    let self_signed = info.self_issued && verify_signed_by(der, der);
    if has_key && (!info.is_ca || self_signed) {
        Role::Leaf
    } else if info.is_ca && self_signed {
        Role::Root
    } else if info.is_ca {
        Role::Intermediate
    } else {
        Role::Leaf
    }
}

/// True when `issuer_der`'s public key verifies `child_der`'s signature.
pub fn verify_signed_by(child_der: &[u8], issuer_der: &[u8]) -> bool {
    let (Ok((_, child)), Ok((_, issuer))) =
        (X509Certificate::from_der(child_der), X509Certificate::from_der(issuer_der))
    else {
        return false;
    };
    let Ok(issuer_info) = CertInfo::from_der(issuer_der) else { return false };
    let sig_oid = child.signature_algorithm.algorithm.to_id_string();
    let Some(alg) = verification_algorithm(&sig_oid, &issuer_info.key) else { return false };
    let key = UnparsedPublicKey::new(alg, issuer.public_key().subject_public_key.data.as_ref());
    key.verify(child.tbs_certificate.as_ref(), child.signature_value.data.as_ref()).is_ok()
}

/// The AWS-LC algorithm for a signature OID made with a key described as in `CertInfo::key`.
fn verification_algorithm(sig_oid: &str, issuer_key: &str) -> Option<&'static dyn VerificationAlgorithm> {
    Some(match (sig_oid, issuer_key) {
        ("1.2.840.113549.1.1.5", _) => &signature::RSA_PKCS1_1024_8192_SHA1_FOR_LEGACY_USE_ONLY,
        ("1.2.840.113549.1.1.11", _) => &signature::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY,
        ("1.2.840.113549.1.1.12", _) => &signature::RSA_PKCS1_2048_8192_SHA384,
        ("1.2.840.113549.1.1.13", _) => &signature::RSA_PKCS1_1024_8192_SHA512_FOR_LEGACY_USE_ONLY,
        ("1.2.840.10045.4.3.2", "ECDSA P-256") => &signature::ECDSA_P256_SHA256_ASN1,
        ("1.2.840.10045.4.3.2", "ECDSA P-384") => &signature::ECDSA_P384_SHA256_ASN1,
        ("1.2.840.10045.4.3.2", "ECDSA P-521") => &signature::ECDSA_P521_SHA256_ASN1,
        ("1.2.840.10045.4.3.3", "ECDSA P-256") => &signature::ECDSA_P256_SHA384_ASN1,
        ("1.2.840.10045.4.3.3", "ECDSA P-384") => &signature::ECDSA_P384_SHA384_ASN1,
        ("1.2.840.10045.4.3.3", "ECDSA P-521") => &signature::ECDSA_P521_SHA384_ASN1,
        ("1.2.840.10045.4.3.4", "ECDSA P-256") => &signature::ECDSA_P256_SHA512_ASN1,
        ("1.2.840.10045.4.3.4", "ECDSA P-384") => &signature::ECDSA_P384_SHA512_ASN1,
        ("1.2.840.10045.4.3.4", "ECDSA P-521") => &signature::ECDSA_P521_SHA512_ASN1,
        ("1.2.840.10045.4.1", "ECDSA P-256") => &signature::ECDSA_P256_SHA1_ASN1,
        ("1.3.101.112", _) => &signature::ED25519,
        _ => return None,
    })
}

/// A certificate of the trust pool (or of an entry's own chain.pem).
#[derive(Clone, Debug)]
pub struct PoolCert {
    pub der: Vec<u8>,
    pub info: CertInfo,
}

impl PoolCert {
    pub fn new(der: Vec<u8>) -> Result<Self, String> {
        let info = CertInfo::from_der(&der)?;
        Ok(Self { der, info })
    }
}

/// The chain built for a leaf.
#[derive(Clone, Debug, Default)]
pub struct Chain {
    /// Issuer first: the certificates sent after the leaf.
    pub intermediates: Vec<PoolCert>,
    /// The root, when it is in the pool (or the leaf itself when self-signed).
    pub root: Option<PoolCert>,
    /// "missing intermediate ...", "intermediate ... expired", ...
    pub warnings: Vec<String>,
    /// The issuer of the leaf (or of its last intermediate short of a root) is not in the
    /// pool: clients that lack it cannot build a path.
    pub missing_intermediate: bool,
}

/// Builds the chain of `leaf` from `pool`, following issuer names and checking each
/// signature, up to a self-signed root.
pub fn build_chain(leaf_der: &[u8], leaf: &CertInfo, pool: &[PoolCert], now: time::OffsetDateTime) -> Chain {
    let mut chain = Chain::default();
    if leaf.self_issued && verify_signed_by(leaf_der, leaf_der) {
        return chain;
    }
    let mut current: (&[u8], &CertInfo) = (leaf_der, leaf);
    for _ in 0..8 {
        let issuer = pool.iter().find(|c| {
            c.info.subject_raw == current.1.issuer_raw && c.der != current.0 && verify_signed_by(current.0, &c.der)
        });
        let Some(issuer) = issuer else {
            let role = if chain.intermediates.is_empty() { "intermediate" } else { "root" };
            chain.missing_intermediate = chain.intermediates.is_empty();
            chain.warnings.push(format!(
                "chain incomplete: missing {role} \"{}\" (import the CA's {role} certificate)",
                current.1.issued_by
            ));
            return chain;
        };
        if now > issuer.info.not_after {
            chain.warnings.push(format!(
                "CA certificate \"{}\" expired on {}",
                issuer.info.issued_to,
                super::rfc3339(issuer.info.not_after)
            ));
        }
        if issuer.info.self_issued {
            chain.root = Some(issuer.clone());
            return chain;
        }
        chain.intermediates.push(issuer.clone());
        current = (&issuer.der, &issuer.info);
    }
    chain.warnings.push("chain longer than 8 certificates; stopped building it".into());
    chain
}

/// True when a certificate for `names` answers for `name` (exact, or a wildcard that
/// covers exactly one leftmost label). Names compare case-insensitively.
pub fn covers(names: &[String], name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    names.iter().any(|n| {
        let n = n.to_ascii_lowercase();
        n == name
            || n.strip_prefix("*.").is_some_and(|parent| {
                name.split_once('.').is_some_and(|(label, rest)| !label.is_empty() && label != "*" && rest == parent)
            })
    })
}

#[cfg(test)]
mod tests {
    use super::covers;

    #[test]
    fn wildcard_covers_one_label() {
        let names = vec!["*.example.com".to_owned(), "example.com".to_owned()];
        assert!(covers(&names, "www.example.com"));
        assert!(covers(&names, "WWW.Example.com"));
        assert!(covers(&names, "example.com"));
        assert!(!covers(&names, "a.b.example.com"));
        assert!(!covers(&names, "example.org"));
        assert!(covers(&names, "*.example.com"));
    }
}
