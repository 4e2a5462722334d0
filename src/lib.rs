//! Portcullis: a TLS edge proxy that owns its certificates.
//!
//! # Layout
//!
//! The modules mirror the boxes of DESIGN.md (docs/ARCHITECTURE.md has the map).
//! Control plane:
//!
//! - [`config`]: the configuration file, `portcullis.toml → FileConfig → Config`.
//! - [`store`]: the on-disk certificate store: atomic writes, the writers' lock,
//!   permissions, `state.toml`, the factory default certificate.
//! - [`pki`]: keys, self-signed certificates, CSRs, reading certificates back. Pure: no
//!   file system.
//! - [`ops`]: one function per admin action, shared by the CLI and the job runner.
//! - [`acme`]: ACME account, orders over HTTP-01, renewal policy, the daemon's renewer;
//!   [`alerts`]: mail and command alerts about failing renewals.
//! - [`jobs`]: admin jobs by file drop, parsed by the CLI's parser, run through `ops`.
//! - [`cli`]: argument parsing and rendering; the only place that prints.
//!
//! Data plane and daemon:
//!
//! - [`snapshot`]: the immutable `Snapshot` built from `Config` + `Store`.
//! - [`sni`]: `CertMap` and the rustls resolver. [`proxy`]: listeners and handlers.
//! - [`admin`]: `/metrics`, `/healthz`, `/status` (HTML) and `/status.json`.
//!   [`watch`]: reload on file changes. [`notify`]: systemd's readiness protocol.
//! - [`daemon`]: `portcullis run`.
//!
//! **Invariant:** `pki` never touches the file system; files are written only through
//! `store::atomic` (store entries, exports, ACME tokens, job results).

pub mod acme;
pub mod admin;
pub mod alerts;
pub mod cli;
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
