//! Helpers for benchmarks, the load test and tests: certificates made in bulk or in
//! memory. Not part of the operator-facing API (hidden from the docs); nothing in the
//! daemon or the CLI calls them.

use std::sync::Arc;

use rustls::sign::CertifiedKey;

use time::OffsetDateTime;

use crate::ops;
use crate::pki::{self, IdentityRequest, KeyType};
use crate::sni::Served;
use crate::store::{NewCert, Source, Store};

/// Stores `n` self-signed P-256 certificates named "{prefix} {i}" for `{i}.{domain}` and
/// `*.{i}.{domain}`, straight through the store (no per-name scan of every entry), and
/// returns their ids. For benchmarks and scale measurements, not for operators.
pub fn fill_self_signed(store: &mut Store, n: usize, prefix: &str, domain: &str) -> Result<Vec<String>, ops::Error> {
    let now = OffsetDateTime::now_utc();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("{prefix} {i}");
        let sans = vec![format!("{i}.{domain}"), format!("*.{i}.{domain}")];
        let identity = IdentityRequest { friendly_name: name.clone(), sans, ..Default::default() }.validate()?;
        let key = KeyType::EcdsaP256.generate()?;
        let cert = pki::self_signed(&identity, KeyType::EcdsaP256, &key, 365, now)?;
        let key_pem = key.to_pem();
        ids.push(store.add_cert(&NewCert {
            friendly_name: &name,
            source: Source::SelfSigned,
            key_type: Some(KeyType::EcdsaP256),
            cert_pem: &cert,
            chain_pem: "",
            key_pem: Some(&key_pem),
            acme: None,
        })?);
    }
    Ok(ids)
}

/// A throwaway self-signed certificate as a `Served`, for benchmarks and tests.
pub fn served(id: &str) -> Served {
    let key_type = KeyType::EcdsaP256;
    let key = key_type.generate().expect("keygen");
    let identity = IdentityRequest { friendly_name: id.into(), sans: vec![format!("{id}.test")], ..Default::default() }
        .validate()
        .expect("valid identity");
    let pem = pki::self_signed(&identity, key_type, &key, 1, OffsetDateTime::now_utc()).expect("sign");
    let der = pem::parse(pem).expect("pem").into_contents();
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let key_der = rustls_pki_types::PrivateKeyDer::try_from(key.pkcs8_der().to_vec()).expect("pkcs8");
    let key = CertifiedKey::from_der(vec![der.into()], key_der, &provider).expect("certified key");
    Served { id: id.into(), friendly_name: id.into(), key: Arc::new(key) }
}
