//! Fills a store with N self-signed certificates assigned to one listener, for the
//! startup and reload scale measurements of docs/PERFORMANCE.md:
//!   cargo run --release --example fillstore -- STORE_DIR N [LISTENER]
//! Writes entries straight through the store (the CLI would check each friendly name
//! against every entry, which is slow at this size).

use portcullis::pki::{self, IdentityRequest, KeyType};
use portcullis::store::{NewCert, Source, Store};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (dir, n) = (std::path::PathBuf::from(&args[1]), args[2].parse::<usize>().expect("N"));
    let listener = args.get(3).cloned().unwrap_or_else(|| "default".into());
    let mut store = Store::open(&dir).expect("store");
    let now = time::OffsetDateTime::now_utc();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("Tenant {i}");
        let sans = vec![format!("t{i}.example.com"), format!("*.t{i}.example.com")];
        let identity = IdentityRequest { friendly_name: name.clone(), sans, ..Default::default() }.validate().unwrap();
        let key = KeyType::EcdsaP256.generate().unwrap();
        let cert = pki::self_signed(&identity, KeyType::EcdsaP256, &key, 365, now).unwrap();
        let key_pem = key.to_pem();
        let new = NewCert {
            friendly_name: &name,
            source: Source::SelfSigned,
            key_type: Some(KeyType::EcdsaP256),
            cert_pem: &cert,
            chain_pem: "",
            key_pem: Some(&key_pem),
        };
        ids.push(store.add_cert(&new).unwrap());
        if (i + 1) % 10_000 == 0 {
            eprintln!("{} entries", i + 1);
        }
    }
    store.assign_all(&listener, &ids).unwrap();
    eprintln!("{n} entries assigned to listener {listener}");
}
