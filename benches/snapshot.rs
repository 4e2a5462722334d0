//! Building a snapshot (reading and parsing every store entry, chains, rustls keys) for
//! a store of 10,000 certificates. The store is made once, in-process, in a temp dir.

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::config::Config;
use portcullis::snapshot::{self, EntryCache, TlsShared};
use portcullis::store::Store;

const CERTS: usize = 10_000;

fn build(c: &mut Criterion) {
    // tmpfs when there is one: the setup writes 10,000 entries with fsync each.
    let dir = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).unwrap();
    let root = dir.path().join("store");
    let mut store = Store::open_or_create(&root).unwrap();
    // Straight to the store: the CLI path checks every name against every entry.
    portcullis::testing::fill_self_signed(&mut store, CERTS, "Site", "example.com").unwrap();
    let ids: Vec<String> = store.certs().unwrap().0.into_iter().map(|e| e.id).collect();
    let config = Config::builtin();
    let shared = TlsShared::new().unwrap();
    let mut group = c.benchmark_group("snapshot");
    group.sample_size(10);
    // No assignments: every certificate in the store is a candidate (auto-selection).
    group.bench_function("build_10000_auto", |b| {
        b.iter(|| {
            let s = snapshot::build(&config, &store, &shared).unwrap();
            assert_eq!(s.listeners[0].certs.entries().len(), CERTS + 1);
        })
    });
    // All assigned to the listener: the per-IP model, and what build_10000 measured
    // before auto-selection.
    store.assign_all("default", &ids).unwrap();
    group.bench_function("build_10000", |b| {
        b.iter(|| {
            let s = snapshot::build(&config, &store, &shared).unwrap();
            // ...plus the factory default, which is in the store too.
            assert_eq!(s.listeners[0].certs.entries().len(), CERTS + 1);
        })
    });
    // A reload after one entry changed: only that entry is parsed again.
    let mut cache = EntryCache::default();
    snapshot::build_cached(&config, &store, &shared, &mut cache).unwrap();
    let touched = root.join("certs").join(&ids[ids.len() / 2]).join("cert.pem");
    let pem = std::fs::read(&touched).unwrap();
    group.bench_function("rebuild_10000_one_changed", |b| {
        b.iter(|| {
            // Same bytes, new mtime: the cache must notice and re-read it.
            let tmp = touched.with_extension("tmp");
            #[allow(clippy::disallowed_methods)]
            std::fs::write(&tmp, &pem).unwrap();
            std::fs::rename(&tmp, &touched).unwrap();
            let s = snapshot::build_cached(&config, &store, &shared, &mut cache).unwrap();
            assert_eq!(s.listeners[0].certs.entries().len(), CERTS + 1);
        })
    });
    // The same change as the watcher reports it: only that entry is looked at.
    let changes = snapshot::Changes { everything: false, paths: vec![std::fs::canonicalize(&touched).unwrap()] };
    group.bench_function("rebuild_10000_one_changed_by_path", |b| {
        b.iter(|| {
            let tmp = touched.with_extension("tmp");
            #[allow(clippy::disallowed_methods)]
            std::fs::write(&tmp, &pem).unwrap();
            std::fs::rename(&tmp, &touched).unwrap();
            let s = snapshot::rebuild(&config, &store, &shared, &mut cache, &changes).unwrap().expect("a change");
            assert_eq!(s.listeners[0].certs.entries().len(), CERTS + 1);
        })
    });
    // The periodic rescan of an unchanged store: every entry stat'ed, nothing built.
    let everything = snapshot::Changes { everything: true, paths: Vec::new() };
    group.bench_function("rescan_10000_unchanged", |b| {
        b.iter(|| assert!(snapshot::rebuild(&config, &store, &shared, &mut cache, &everything).unwrap().is_none()))
    });
    group.finish();
}

criterion_group!(benches, build);
criterion_main!(benches);
