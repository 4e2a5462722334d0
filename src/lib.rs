//! Portcullis: a TLS edge proxy that owns its certificates.
//!
//! # Layout
//!
//! Layers from the bottom (docs/ARCHITECTURE.md has the map; tests/layering.rs keeps
//! imports going downward only, with no circle):
//!
//! - leaves, importing nothing of the crate: [`http`] (bodies, `bind_tcp`, the one
//!   `accept` with back-off), [`metrics`] (names and handles), [`input`] (bounded reads),
//!   [`notify`] (systemd's readiness protocol);
//! - foundations: [`pki`] (keys, certificates, CSRs, formats; no file system), [`config`]
//!   (`portcullis.toml → Config`), [`store`] (the on-disk certificate store);
//! - small pieces: [`alerts`], `acme::policy`, `acme::challenges`, `jobs::result`, [`watch`];
//! - the snapshot's ingredients: [`sni`] (`CertMap`, the rustls resolver) and
//!   `proxy::handler` (the handler plugins);
//! - the contract: [`snapshot`] (`Snapshot`, built whole, published by the daemon's
//!   `Publisher`, read through a `Reader`);
//! - side by side, never importing each other: the data plane [`proxy`] and the control
//!   plane [`ops`] (one function per admin action) and [`acme`] (orders, renewals);
//! - surfaces: `cli::args` and `cli::action` (the command line, shared with jobs),
//!   [`admin`] (`/metrics`, `/healthz`, `/status`, `/status.json`), [`jobs`] (admin jobs by
//!   file drop), [`daemon`] (`portcullis run`, both runtimes), [`cli`] (the only place
//!   that prints). [`testing`] holds helpers for benchmarks and tests.
//!
//! **Invariant:** `pki` never touches the file system; files are written only through
//! `store::atomic` (store entries, exports, ACME tokens, job results).

pub mod acme;
pub mod admin;
pub mod alerts;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod http;
pub mod input;
pub mod jobs;
pub mod metrics;
pub mod notify;
pub mod ops;
pub mod pki;
pub mod proxy;
pub mod seal;
pub mod snapshot;
pub mod sni;
pub mod store;
#[doc(hidden)]
pub mod testing;
pub mod watch;

/// The version printed by `--version` and `status`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `--version`: the release and the git revision it was built from.
pub const LONG_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (git ", env!("PORTCULLIS_GIT_REV"), ")");

/// This node's host name, if the OS gives one that is UTF-8.
pub fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

/// Maps `items` on every core (at most 8 threads), keeping their order: reading a store
/// of 100,000 entries is CPU-bound (key and X.509 parsing). Below 64 items `f` runs
/// inline, where starting threads costs more than it saves.
pub fn par_map<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get).min(8);
    if threads == 1 || items.len() < 64 {
        return items.into_iter().map(f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let mut items = items;
    let mut chunks = Vec::new();
    while !items.is_empty() {
        let rest = items.split_off(chunk.min(items.len()));
        chunks.push(std::mem::replace(&mut items, rest));
    }
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> =
            chunks.into_iter().map(|part| scope.spawn(move || part.into_iter().map(f).collect::<Vec<_>>())).collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    })
}
