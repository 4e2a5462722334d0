//! Fills a store with N self-signed certificates assigned to one listener, for the
//! startup and reload scale measurements of docs/PERFORMANCE.md:
//!   cargo run --release --example fillstore -- STORE_DIR N [LISTENER]
//! Writes entries straight through the store (the CLI would check each friendly name
//! against every entry, which is slow at this size).

use portcullis::store::Store;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (dir, n) = (std::path::PathBuf::from(&args[1]), args[2].parse::<usize>().expect("N"));
    let listener = args.get(3).cloned().unwrap_or_else(|| "default".into());
    let mut store = Store::open_or_create(&dir).expect("store");
    let ids = portcullis::testing::fill_self_signed(&mut store, n, "Tenant", "example.com").expect("fill");
    store.assign_all(&listener, &ids).unwrap();
    eprintln!("{n} entries assigned to listener {listener}");
}
