//! Incremental rebuilds in-process: a reload reads only the entries the watcher's paths
//! name, the rescan of an unchanged store publishes nothing, and what a snapshot holds
//! is checked against a full build from scratch (the independent oracle here).
#![allow(clippy::disallowed_methods)]

use portcullis::config::Config;
use portcullis::snapshot::{self, Changes, EntryCache, Snapshot, TlsShared};
use portcullis::store::Store;

fn served(s: &Snapshot, name: &str) -> String {
    s.listeners[0].certs.lookup(Some(name)).served().map(|c| c.id.to_string()).unwrap_or_default()
}

fn ids_and_names(s: &Snapshot) -> Vec<(String, Vec<String>, i64)> {
    s.certificates.iter().map(|c| (c.id.to_string(), c.sans.to_vec(), c.not_after)).collect()
}

#[test]
fn rebuild_reads_what_changed_and_publishes_nothing_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let mut store = Store::open_or_create(&root).unwrap();
    let ids = portcullis::testing::fill_self_signed(&mut store, 20, "T", "example.test").unwrap();
    let (config, shared) = (Config::builtin(), TlsShared::new().unwrap());
    let mut cache = EntryCache::default();
    let first = snapshot::build_cached(&config, &store, &shared, &mut cache).unwrap();
    let everything = Changes { everything: true, paths: Vec::new() };
    let nothing = Changes::default();
    // Unchanged: neither the rescan nor an empty change set builds anything.
    assert!(snapshot::rebuild(&config, &store, &shared, &mut cache, &everything).unwrap().is_none());
    assert!(snapshot::rebuild(&config, &store, &shared, &mut cache, &nothing).unwrap().is_none());
    // Entry 3 is replaced by another certificate for other names (as a renewal would):
    // the path of its cert.pem is enough.
    let other = tempfile::tempdir().unwrap();
    let mut scratch = Store::open_or_create(&other.path().join("store")).unwrap();
    let new_ids = portcullis::testing::fill_self_signed(&mut scratch, 1, "N", "renamed.test").unwrap();
    let src = other.path().join("store/certs").join(&new_ids[0]);
    let dst = root.join("certs").join(&ids[3]);
    for f in ["cert.pem", "key.pem"] {
        let tmp = dst.join(format!("{f}.tmp"));
        std::fs::copy(src.join(f), &tmp).unwrap();
        std::fs::rename(&tmp, dst.join(f)).unwrap();
    }
    let by_path = Changes { everything: false, paths: vec![std::fs::canonicalize(dst.join("cert.pem")).unwrap()] };
    let after = snapshot::rebuild(&config, &store, &shared, &mut cache, &by_path).unwrap().expect("a change");
    assert_eq!(served(&after, "0.renamed.test"), ids[3]);
    assert_ne!(served(&first, "0.renamed.test"), ids[3]);
    let oracle = snapshot::build(&config, &store, &shared).unwrap();
    assert_eq!(ids_and_names(&after), ids_and_names(&oracle));
    // A deleted entry: the watcher reports only the removal inside .staging/.
    drop(store);
    let mut store = Store::open_existing(&root).unwrap();
    store.delete(portcullis::store::EntryKind::Cert, &ids[5]).unwrap();
    let grave = std::fs::canonicalize(&root).unwrap().join(".staging/deleted-x");
    let deleted = Changes { everything: false, paths: vec![grave] };
    let after = snapshot::rebuild(&config, &store, &shared, &mut cache, &deleted).unwrap().expect("a change");
    assert!(after.certificates.iter().all(|c| *c.id != *ids[5]));
    assert_eq!(served(&after, "5.example.test"), served(&after, "nothing.test"), "the fallback");
    // A new entry: its directory appears under certs/.
    let added = portcullis::testing::fill_self_signed(&mut store, 1, "Added", "added.test").unwrap();
    let path = std::fs::canonicalize(root.join("certs").join(&added[0])).unwrap();
    let after =
        snapshot::rebuild(&config, &store, &shared, &mut cache, &Changes { everything: false, paths: vec![path] })
            .unwrap()
            .expect("a change");
    assert_eq!(served(&after, "0.added.test"), added[0]);
    let oracle = snapshot::build(&config, &store, &shared).unwrap();
    assert_eq!(ids_and_names(&after), ids_and_names(&oracle));
    // state.toml changed (a new default): the rescan sees it though no entry changed.
    store.set_default(&ids[7]).unwrap();
    let after = snapshot::rebuild(&config, &store, &shared, &mut cache, &everything).unwrap().expect("a change");
    assert_eq!(served(&after, "nothing.test"), ids[7]);
    assert!(snapshot::rebuild(&config, &store, &shared, &mut cache, &everything).unwrap().is_none());
}
