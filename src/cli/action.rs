//! What each store-changing command does, once for the CLI and the job runner: the
//! `cert` commands that write (create, request, import, export, set-default, assign,
//! unassign, replace, delete) turned into their `ops` call, and `acme request`'s flags
//! turned into `acme::RequestParams`. The CLI prints the [`Done`] it gets back; a job
//! records it. Flags are named as on the command line in every error.

use serde::Serialize;

use super::args::{CertCommand, FlagError};
use crate::config::Config;
use crate::ops::{self, Report};
use crate::pki::KeyType;
use crate::store::Store;

/// An error of a command: a flag value that does not parse, or the operation's own.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Flag(#[from] FlagError),
    #[error(transparent)]
    Ops(#[from] ops::Error),
    /// `--hostname` values an ACME order cannot prove.
    #[error("{0}")]
    Hostnames(String),
}

/// What a command did, with its notes and warnings.
pub enum Done {
    Created(Box<Report<ops::CertView>>),
    Requested(Report<ops::RequestCreated>),
    Imported(Report<ops::Imported>),
    Exported(Report<ops::ExportedView>),
    DefaultChanged { listener: Option<String>, report: Report<ops::DefaultChanged> },
    Assigned { on: bool, report: Report<ops::Assigned> },
    Replaced(Report<ops::Replaced>),
    Deleted(Report<ops::DeletedView>),
}

impl Done {
    /// Notes, warnings and the value as JSON (what `--json` prints and a job records).
    pub fn parts(&self) -> (&[String], &[String], serde_json::Value) {
        fn p<T: Serialize>(r: &Report<T>) -> (&[String], &[String], serde_json::Value) {
            (&r.notes, &r.warnings, serde_json::to_value(&r.value).unwrap_or(serde_json::Value::Null))
        }
        match self {
            Self::Created(r) => p(r),
            Self::Requested(r) => p(r),
            Self::Imported(r) => p(r),
            Self::Exported(r) => p(r),
            Self::DefaultChanged { report, .. } => p(report),
            Self::Assigned { report, .. } => p(report),
            Self::Replaced(r) => p(r),
            Self::Deleted(r) => p(r),
        }
    }

    /// Whether the store changed (a running daemon picks it up).
    pub fn changed_store(&self) -> bool {
        !matches!(self, Self::Exported(_))
    }
}

/// Before a slow step, for the CLI to say so; a job says nothing.
pub trait Notice {
    /// A key type that takes seconds to generate.
    fn generating(&self, _key: KeyType) {}
    /// Encrypted files to decrypt (each item runs its key derivation).
    fn decrypting(&self, _files: usize) {}
}

/// No notices.
pub struct Quiet;
impl Notice for Quiet {}

/// Runs a store-changing `cert` command; `None` for the commands that only read
/// (`list`, `show`, `which`), which the CLI answers itself.
pub fn cert(cmd: CertCommand, store: &mut Store, config: &Config, notice: &dyn Notice) -> Option<Result<Done, Error>> {
    apply(cmd, store, config, notice).transpose()
}

fn apply(cmd: CertCommand, store: &mut Store, config: &Config, notice: &dyn Notice) -> Result<Option<Done>, Error> {
    Ok(Some(match cmd {
        CertCommand::CreateSelfSigned { new, days } => {
            let params = new.params(days)?;
            notice.generating(params.key_type);
            Done::Created(Box::new(ops::create_self_signed(store, &params)?))
        }
        CertCommand::Request { new, from } => {
            let params = new.params(0)?;
            Done::Requested(match from {
                Some(from) => ops::create_request_from(store, &from, &params)?,
                None => {
                    notice.generating(params.key_type);
                    ops::create_request(store, &params)?
                }
            })
        }
        CertCommand::Import { files, name, password_file } => {
            let password = password_file.as_deref().map(ops::read_password_file).transpose()?;
            if password.is_some() {
                notice.decrypting(files.len());
            }
            Done::Imported(ops::import(store, &ops::ImportParams { files, name, password })?)
        }
        CertCommand::Export { id, format, out, include_key, include_chain, password_file, no_password, force } => {
            let format =
                format.parse().map_err(|reason: String| FlagError { flag: "--format", value: format, reason })?;
            let password = password_file.as_deref().map(ops::read_password_text).transpose()?;
            let params =
                ops::ExportParams { id, format, out, include_key, include_chain, password, no_password, force };
            Done::Exported(ops::export(store, &params)?)
        }
        CertCommand::SetDefault { id, listener, force } => {
            let report = match &listener {
                Some(l) => ops::set_listener_default(store, config, &id, l, force)?,
                None => ops::set_default(store, &id, force)?,
            };
            Done::DefaultChanged { listener, report }
        }
        CertCommand::Assign { id, listeners, force } => {
            Done::Assigned { on: true, report: ops::assign(store, config, &id, &listeners, true, force)? }
        }
        CertCommand::Unassign { id, listeners } => {
            Done::Assigned { on: false, report: ops::assign(store, config, &id, &listeners, false, false)? }
        }
        CertCommand::Replace { old, new, force } => Done::Replaced(ops::replace(store, &old, &new, force)?),
        CertCommand::Delete { id, force } => Done::Deleted(ops::delete(store, config, &id, force)?),
        CertCommand::List { .. } | CertCommand::Show { .. } | CertCommand::Which { .. } => return Ok(None),
    }))
}

/// `acme request`'s flags as an order: the key type parsed, the hostnames checked, the
/// listeners checked against the configuration.
pub fn acme_request(
    hostnames: &[String],
    key: Option<&str>,
    name: Option<String>,
    listeners: &[String],
    replace: bool,
    challenge: Option<&str>,
    config: &Config,
) -> Result<crate::acme::RequestParams, Error> {
    let key_type = key.map(super::args::key_type).transpose()?;
    let challenge = challenge.map(super::args::challenge).transpose()?;
    let wildcards = challenge == Some(crate::config::Challenge::Dns01);
    let hostnames =
        crate::acme::check_hostnames(hostnames, wildcards).map_err(|e| Error::Hostnames(format!("{e:#}")))?;
    if wildcards
        && let Some(acme) = &config.acme
        && let Some(h) = hostnames.iter().find(|h| !acme.dns_01_covers(h))
    {
        return Err(Error::Hostnames(format!(
            "--challenge dns-01: no [[acme.dns_update]] zone holds {h} and there is no [acme] dns_command to place its TXT record"
        )));
    }
    let listeners = ops::checked_listeners(config, listeners)?;
    Ok(crate::acme::RequestParams { hostnames, key_type, name, listeners, replace, challenge, on_demand: false })
}
