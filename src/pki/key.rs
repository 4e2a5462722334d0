//! Private keys: the key types Portcullis offers, their generation and their PEM form.

use std::fmt;
use std::str::FromStr;

use rcgen::{KeyPair, PublicKeyData, RsaKeySize};
use serde::{Deserialize, Serialize};

use super::Error;

/// The KEY values of the command line (DESIGN.md), in the order they are offered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyType {
    #[default]
    EcdsaP256,
    EcdsaP384,
    Ed25519,
    Rsa2048,
    Rsa3072,
    Rsa4096,
}

impl KeyType {
    pub const ALL: [Self; 6] =
        [Self::EcdsaP256, Self::EcdsaP384, Self::Ed25519, Self::Rsa2048, Self::Rsa3072, Self::Rsa4096];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::EcdsaP256 => "ecdsa-p256",
            Self::EcdsaP384 => "ecdsa-p384",
            Self::Ed25519 => "ed25519",
            Self::Rsa2048 => "rsa-2048",
            Self::Rsa3072 => "rsa-3072",
            Self::Rsa4096 => "rsa-4096",
        }
    }

    pub fn is_rsa(self) -> bool {
        matches!(self, Self::Rsa2048 | Self::Rsa3072 | Self::Rsa4096)
    }

    /// Generates a new key. RSA-4096 takes seconds; the others are instant.
    pub fn generate(self) -> Result<PrivateKey, Error> {
        use rcgen::{PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519, PKCS_RSA_SHA256};
        let rsa = |size| KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, size);
        let pair = match self {
            Self::EcdsaP256 => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256),
            Self::EcdsaP384 => KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384),
            Self::Ed25519 => KeyPair::generate_for(&PKCS_ED25519).and_then(|pair| {
                // aws-lc-rs writes Ed25519 keys as PKCS#8 v2, which OpenSSL 3.0 rejects;
                // re-encode as v1 before the key is ever written out.
                let v2 = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(pair.serialized_der())
                    .map_err(|_| rcgen::Error::CouldNotParseKeyPair)?;
                let v1 = v2.to_pkcs8v1().map_err(|_| rcgen::Error::CouldNotParseKeyPair)?;
                KeyPair::try_from(v1.as_ref())
            }),
            Self::Rsa2048 => rsa(RsaKeySize::_2048),
            Self::Rsa3072 => rsa(RsaKeySize::_3072),
            Self::Rsa4096 => rsa(RsaKeySize::_4096),
        }
        .map_err(|e| Error::KeyGeneration(self, e.to_string()))?;
        Ok(PrivateKey { pair })
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| {
            let all: Vec<_> = Self::ALL.iter().map(|k| k.as_str()).collect();
            format!("unknown key type \"{s}\" (expected one of: {})", all.join(", "))
        })
    }
}

/// A private key held in memory. Its Debug form never shows the key.
pub struct PrivateKey {
    pair: KeyPair,
}

impl PrivateKey {
    /// Reads a PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        use rustls_pki_types::PrivateKeyDer;
        use rustls_pki_types::pem::PemObject;
        let der = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| format!("not a PEM private key ({e})"))?;
        Self::from_der(der.secret_der())
    }

    /// Reads an unencrypted private key in any of its DER encodings (PKCS#8 v1 or v2,
    /// PKCS#1 RSA, SEC1 EC) and normalises it to PKCS#8 v1, the form every tool reads.
    pub fn from_der(der: &[u8]) -> Result<Self, String> {
        use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
        use aws_lc_rs::rsa::KeyPair as RsaKeyPair;
        use aws_lc_rs::signature::{
            ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, ECDSA_P521_SHA512_ASN1_SIGNING,
            EcdsaKeyPair, Ed25519KeyPair,
        };
        let pkcs8: Vec<u8> = if let Ok(rsa) = RsaKeyPair::from_pkcs8(der).or_else(|_| RsaKeyPair::from_der(der)) {
            let doc: Pkcs8V1Der<'_> = rsa.as_der().map_err(|_| "cannot re-encode the RSA key".to_owned())?;
            doc.as_ref().to_vec()
        } else if let Some(ec) =
            [&ECDSA_P256_SHA256_ASN1_SIGNING, &ECDSA_P384_SHA384_ASN1_SIGNING, &ECDSA_P521_SHA512_ASN1_SIGNING]
                .into_iter()
                .find_map(|alg| EcdsaKeyPair::from_private_key_der(alg, der).ok())
        {
            ec.to_pkcs8v1().map_err(|_| "cannot re-encode the EC key".to_owned())?.as_ref().to_vec()
        } else if let Ok(ed) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            ed.to_pkcs8v1().map_err(|_| "cannot re-encode the Ed25519 key".to_owned())?.as_ref().to_vec()
        } else {
            return Err(
                "not a supported private key (RSA of 2048 bits or more, ECDSA P-256/P-384/P-521, or Ed25519)".into()
            );
        };
        let pair = KeyPair::try_from(pkcs8.as_slice()).map_err(|e| format!("unsupported private key ({e})"))?;
        Ok(Self { pair })
    }

    /// The key as unencrypted PKCS#8 DER.
    pub fn pkcs8_der(&self) -> &[u8] {
        self.pair.serialized_der()
    }

    /// "RSA 2048", "ECDSA P-256", "Ed25519"...
    pub fn describe(&self) -> String {
        use rcgen::{PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ECDSA_P521_SHA512, PKCS_ED25519};
        let alg = self.pair.algorithm();
        if alg == &PKCS_ECDSA_P256_SHA256 {
            "ECDSA P-256".into()
        } else if alg == &PKCS_ECDSA_P384_SHA384 {
            "ECDSA P-384".into()
        } else if alg == &PKCS_ECDSA_P521_SHA512 {
            "ECDSA P-521".into()
        } else if alg == &PKCS_ED25519 {
            "Ed25519".into()
        } else {
            match aws_lc_rs::rsa::KeyPair::from_pkcs8(self.pkcs8_der()) {
                Ok(rsa) => format!("RSA {}", rsa.public_modulus_len() * 8),
                Err(_) => "RSA".into(),
            }
        }
    }

    /// The nearest KEY value (for a CSR made with this key: RSA or not is what counts);
    /// `None` for ECDSA P-521, which Portcullis does not offer.
    pub fn key_type(&self) -> Option<KeyType> {
        let described = self.describe();
        Some(match described.as_str() {
            "ECDSA P-256" => KeyType::EcdsaP256,
            "ECDSA P-384" => KeyType::EcdsaP384,
            "Ed25519" => KeyType::Ed25519,
            "ECDSA P-521" => return None,
            rsa => match rsa.strip_prefix("RSA ").and_then(|b| b.parse::<u32>().ok()) {
                Some(bits) if bits >= 4096 => KeyType::Rsa4096,
                Some(bits) if bits >= 3072 => KeyType::Rsa3072,
                _ => KeyType::Rsa2048,
            },
        })
    }

    /// PKCS#8 PEM ("PRIVATE KEY").
    pub fn to_pem(&self) -> String {
        self.pair.serialize_pem()
    }

    /// The raw public key as it appears in a certificate's subjectPublicKey bit string.
    pub fn public_key_raw(&self) -> &[u8] {
        self.pair.der_bytes()
    }

    pub(crate) fn pair(&self) -> &KeyPair {
        &self.pair
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey").field("algorithm", &self.pair.algorithm()).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_type_names_round_trip() {
        for k in KeyType::ALL {
            assert_eq!(k.as_str().parse::<KeyType>().unwrap(), k);
        }
        assert!("rsa-1024".parse::<KeyType>().unwrap_err().contains("ecdsa-p256"));
    }

    #[test]
    fn generated_keys_reload_from_pem() {
        for k in [KeyType::EcdsaP256, KeyType::EcdsaP384, KeyType::Ed25519] {
            let key = k.generate().unwrap();
            let again = PrivateKey::from_pem(&key.to_pem()).unwrap();
            assert_eq!(again.public_key_raw(), key.public_key_raw());
        }
    }
}
