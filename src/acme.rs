//! ACME (RFC 8555) certificates over HTTP-01. Each concern is a child module:
//!
//! - [`policy`]: the renewal rules and status views (pure; the snapshot carries a `Policy`);
//! - [`challenges`]: the HTTP-01 tokens the plain-HTTP listener answers;
//! - [`account`]: the stored account and the CA's problem documents;
//! - [`order`]: one order, from authorizations to the downloaded chain;
//! - [`request`]: `acme request` / `acme renew` as store transactions;
//! - [`renewer`]: the daemon's task;
//! - [`ondemand`]: certificates ordered at a client's first handshake.
//!
//! One code path: `acme request` (CLI and jobs), the renewer and `acme renew` all end in
//! `order::issue`, and store the result as a normal store entry with source `acme`, so
//! the hot reload serves it. A renewal replaces the entry's directory (same id, same
//! assignments; see `store::atomic::replace_entry`); the old certificate is served until then.
//! Alerts are sent through [`crate::alerts`].

pub mod account;
pub mod challenges;
mod dns;
pub mod ondemand;
pub mod order;
pub mod policy;
pub mod renewer;
pub mod request;

use anyhow::{Result, anyhow};

pub use account::describe;
pub use challenges::{Challenges, ClusterTokens, Responder, challenge_dir};
pub use policy::{AcmeView, Policy, Status, backoff, schedule};
pub use renewer::{ClusterRole, renewer};
pub use request::{Action, Obtained, RequestParams, check_hostnames, refuse_dropped_names, renew, request};

/// Where progress lines go: stderr for the CLI, the log for the daemon, a job's messages.
pub type Progress<'a> = &'a (dyn Fn(&str) + Send + Sync);

/// Runs store work off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| anyhow!("task failed: {e}"))?
}
