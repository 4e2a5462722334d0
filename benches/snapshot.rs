//! Building a snapshot (reading and parsing every store entry, chains, rustls keys) for
//! a store of 10,000 certificates. The store is made once, in-process, in a temp dir.

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::config::Config;
use portcullis::ops::{self, CreateParams};
use portcullis::pki::IdentityRequest;
use portcullis::snapshot::{self, TlsShared};
use portcullis::store::Store;

const CERTS: usize = 10_000;

fn build(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let mut store = Store::open(&root).unwrap();
    for i in 0..CERTS {
        let params = CreateParams {
            identity: IdentityRequest {
                friendly_name: format!("Site {i}"),
                sans: vec![format!("site{i}.example.com")],
                ..Default::default()
            },
            days: 365,
            ..Default::default()
        };
        ops::create_self_signed(&mut store, &params).unwrap();
    }
    // Assign them all to the listener so every entry is turned into a rustls key.
    let ids: Vec<String> = store.certs().unwrap().0.into_iter().map(|e| e.id).collect();
    for id in &ids {
        store.assign(id, &["default".to_owned()], true).unwrap();
    }
    let config = Config::builtin();
    let shared = TlsShared::new().unwrap();
    let mut group = c.benchmark_group("snapshot");
    group.sample_size(10);
    group.bench_function("build_10000", |b| {
        b.iter(|| {
            let s = snapshot::build(&config, &store, &shared, 1).unwrap();
            assert_eq!(s.listeners[0].certs.entries().len(), CERTS);
        })
    });
    group.finish();
}

criterion_group!(benches, build);
criterion_main!(benches);
