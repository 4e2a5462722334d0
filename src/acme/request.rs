//! The store transactions of ACME: `acme request` (issue, or nothing if a valid entry
//! covers the names), `acme renew` and reissue for new names; each ends in one order
//! (`order::issue`) and one store write (a new entry, or the entry renewed in
//! place with its id and assignments), and records failures with their backoff.

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use serde::Serialize;
use time::OffsetDateTime;

use super::challenges::Responder;
use super::order::issue;
use super::policy::{Policy, Status, backoff, schedule};
use super::{Progress, blocking};
use crate::config::{self, Acme as AcmeConfig, Challenge};
use crate::pki::{CertInfo, KeyType, PrivateKey, rfc3339};
use crate::store::{AcmeMeta, CertMeta, NewCert, Source, Store};

#[derive(Clone, Debug, Serialize)]
pub struct Obtained {
    pub id: String,
    pub friendly_name: String,
    pub hostnames: Vec<String>,
    pub serial: String,
    pub not_after: String,
    pub action: Action,
}

/// What happened to the certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Issued,
    Renewed,
    /// Issued again for new hostnames (the configuration changed them).
    Reissued,
    /// Already valid: nothing ordered.
    Unchanged,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Issued => "issued",
            Self::Renewed => "renewed",
            Self::Reissued => "reissued",
            Self::Unchanged => "unchanged",
        })
    }
}

impl Obtained {
    fn new(id: String, friendly_name: String, hostnames: Vec<String>, info: &CertInfo, action: Action) -> Self {
        Self { id, friendly_name, hostnames, serial: info.serial.clone(), not_after: rfc3339(info.not_after), action }
    }
}

/// The store entry an order's certificate becomes (new, or the renewal of one).
fn acme_entry<'a>(
    name: &'a str,
    key_type: KeyType,
    cert_pem: &'a str,
    chain_pem: &'a str,
    key_pem: &'a str,
    meta: AcmeMeta,
) -> NewCert<'a> {
    NewCert {
        friendly_name: name,
        source: Source::Acme,
        key_type: Some(key_type),
        cert_pem,
        chain_pem,
        key_pem: Some(key_pem),
        acme: Some(meta),
    }
}

/// `acme request`: what to order.
#[derive(Clone, Debug, Default)]
pub struct RequestParams {
    pub hostnames: Vec<String>,
    pub key_type: Option<KeyType>,
    pub name: Option<String>,
    /// Listeners to serve it on (checked against the configuration by the caller).
    pub listeners: Vec<String>,
    /// Reissuing an existing certificate (same friendly name) for fewer names may drop
    /// names clients use: only with this set (`--replace`).
    pub replace: bool,
    /// `None`: the configuration's default ([`AcmeConfig::default_challenge`]).
    pub challenge: Option<Challenge>,
    /// Ordered on demand (recorded in the entry's meta).
    pub on_demand: bool,
}

/// Validates `--hostname` values: FQDNs, lowercase, each once; wildcards only for DNS-01.
pub fn check_hostnames(hostnames: &[String], wildcards: bool) -> Result<Vec<String>> {
    if hostnames.is_empty() {
        bail!("--hostname: at least one is required");
    }
    let mut out: Vec<String> = Vec::new();
    for h in hostnames {
        let h = config::check_acme_hostname(h, wildcards).map_err(|e| anyhow!("--hostname {h:?}: {e}"))?;
        if !out.contains(&h) {
            out.push(h);
        }
    }
    Ok(out)
}

/// The ACME entry for exactly these hostnames, if any: (id, meta).
pub(super) fn find_entry(store: &Store, hostnames: &[String]) -> Result<Option<(String, CertMeta)>> {
    for id in store.cert_ids()? {
        if let Ok(meta) = store.read_meta(&id)
            && let Some(a) = &meta.acme
            && config::same_names(&a.hostnames, hostnames)
        {
            return Ok(Some((id, meta)));
        }
    }
    Ok(None)
}

/// Refuses an `acme request` that would reissue the ACME certificate named `name` for
/// `hostnames` when that drops names it covers now (clients use them): `--replace` says
/// the operator means it.
pub fn refuse_dropped_names(store: &Store, name: &str, hostnames: &[String]) -> Result<()> {
    let Some((crate::store::EntryKind::Cert, id)) = store.find_by_name(name) else { return Ok(()) };
    let Some(acme) = store.read_meta(&id)?.acme else { return Ok(()) };
    let lost: Vec<&str> = acme.hostnames.iter().filter(|h| !hostnames.contains(h)).map(String::as_str).collect();
    if !lost.is_empty() {
        bail!(
            "--hostname: {id} ({name}) also covers {}, which this request would drop from the certificate clients are served; list them too, add --replace to drop them, or give --name for a second certificate",
            lost.join(", ")
        );
    }
    Ok(())
}

/// `acme request` (CLI, jobs and `[[acme.certificate]]`): issues a certificate for the
/// hostnames, unless an ACME entry for the same names exists and is not due for renewal,
/// in which case nothing is ordered ("unchanged"), so re-running it is safe. An ACME
/// entry with the same friendly name but other hostnames is issued again for the new
/// names ("reissued": the configuration changed them).
pub async fn request(
    acme: &AcmeConfig,
    store_dir: &Path,
    params: &RequestParams,
    responder: &Responder,
    progress: Progress<'_>,
) -> Result<Obtained> {
    let hostnames = check_hostnames(&params.hostnames, params.challenge == Some(Challenge::Dns01))?;
    let name = params.name.clone().unwrap_or_else(|| hostnames[0].clone());
    let policy = Policy::of(Some(acme));
    let (existing, renamed, name) = {
        let (store_dir, hostnames, listeners) = (store_dir.to_owned(), hostnames.clone(), params.listeners.clone());
        let replace = params.replace;
        blocking(move || {
            let mut store = Store::open(&store_dir)?;
            match find_entry(&store, &hostnames)? {
                Some((id, _)) => {
                    // Finishes an assignment a crash cut off between storing and assigning;
                    // a certificate the operator placed (or unassigned) stays as it is.
                    let state = store.state();
                    if state.listeners_of(&id).is_empty() && state.default_id() != id {
                        store.assign(&id, &listeners, true)?;
                    }
                    Ok((Some(store.read_cert(&id)?), None, name))
                }
                // The ACME certificate of this name, for other hostnames: the names changed.
                None => match store.find_by_name(&name) {
                    Some((crate::store::EntryKind::Cert, id))
                        if store.read_meta(&id).is_ok_and(|m| m.acme.is_some()) =>
                    {
                        if !replace {
                            refuse_dropped_names(&store, &name, &hostnames)?;
                        }
                        Ok((None, Some(id), name))
                    }
                    _ => Ok((None, None, store.check_new_name(&name)?)),
                },
            }
        })
        .await?
    };
    if let Some(id) = renamed {
        return renew_as(acme, store_dir, &id, true, Some(hostnames), responder, progress).await;
    }
    if let Some(entry) = existing {
        let meta_acme = entry.meta.acme.clone().unwrap_or_default();
        let s = schedule(&meta_acme, &entry.info, &policy, OffsetDateTime::now_utc());
        if s.status == Status::Valid {
            progress(&format!(
                "{} ({}) already covers {} and is valid until {}; renewal starts {}",
                entry.id,
                entry.meta.friendly_name,
                hostnames.join(", "),
                rfc3339(entry.info.not_after),
                rfc3339(s.renew_at)
            ));
            return Ok(Obtained::new(
                entry.id.clone(),
                entry.meta.friendly_name.clone(),
                hostnames,
                &entry.info,
                Action::Unchanged,
            ));
        }
        return renew(acme, store_dir, &entry.id, true, responder, progress).await;
    }
    let key_type = params.key_type.unwrap_or(acme.key_type);
    let mut key = key_type.generate()?;
    let challenge = params.challenge.unwrap_or(acme.default_challenge);
    let chain = issue(acme, store_dir, &hostnames, key_type, &mut key, challenge, responder, None, progress).await?;
    let (cert_pem, chain_pem, info) = split_chain(&chain, &key)?;
    let meta = AcmeMeta {
        hostnames: hostnames.clone(),
        directory: acme.directory.clone(),
        challenge: params.challenge.map(|c| c.as_str().to_owned()),
        on_demand: params.on_demand,
        last_attempt: Some(now_seconds()),
        last_result: Some("ok".into()),
        ..AcmeMeta::default()
    };
    let id = {
        let (store_dir, name, key_pem) = (store_dir.to_owned(), name.clone(), key.to_pem());
        let listeners = params.listeners.clone();
        blocking(move || {
            let mut store = Store::open(&store_dir)?;
            let id = store.add_cert(&acme_entry(&name, key_type, &cert_pem, &chain_pem, &key_pem, meta))?;
            store.assign(&id, &listeners, true)?;
            Ok(id)
        })
        .await?
    };
    progress(&format!("stored as {id} ({name}), valid until {}", rfc3339(info.not_after)));
    if !params.listeners.is_empty() {
        progress(&format!("served on listener(s) {}", params.listeners.join(", ")));
    }
    Ok(Obtained::new(id, name, hostnames, &info, Action::Issued))
}

/// Renews ACME entry `id` now (`force`), or only if it is due. On failure the entry's
/// renewal status records it, and the old certificate stays.
pub async fn renew(
    acme: &AcmeConfig,
    store_dir: &Path,
    id: &str,
    force: bool,
    responder: &Responder,
    progress: Progress<'_>,
) -> Result<Obtained> {
    renew_as(acme, store_dir, id, force, None, responder, progress).await
}

/// [`renew`], optionally for a new set of hostnames (the configuration changed them):
/// the entry keeps its id, name and assignments and asks for the new names from now on.
async fn renew_as(
    acme: &AcmeConfig,
    store_dir: &Path,
    id: &str,
    force: bool,
    names: Option<Vec<String>>,
    responder: &Responder,
    progress: Progress<'_>,
) -> Result<Obtained> {
    let entry = {
        let (store_dir, id) = (store_dir.to_owned(), id.to_owned());
        blocking(move || {
            let store = Store::open(&store_dir)?;
            let (_, id) = store.resolve(&id)?;
            Ok(store.read_cert(&id)?)
        })
        .await?
    };
    let Some(mut meta) = entry.meta.acme.clone() else {
        bail!("{}: not an ACME certificate (source {})", entry.id, entry.meta.source.as_str());
    };
    let reissue = names.is_some();
    if let Some(names) = names {
        progress(&format!("{}: hostnames change from {} to {}", entry.id, meta.hostnames.join(", "), names.join(", ")));
        meta.hostnames = names;
    }
    let policy = Policy::of(Some(acme));
    let now = OffsetDateTime::now_utc();
    let s = schedule(&meta, &entry.info, &policy, now);
    if !force && !reissue && s.status == Status::Valid {
        progress(&format!("{}: not due; renewal starts {}", entry.id, rfc3339(s.renew_at)));
        return Ok(Obtained::new(
            entry.id.clone(),
            entry.meta.friendly_name.clone(),
            meta.hostnames.clone(),
            &entry.info,
            Action::Unchanged,
        ));
    }
    let key_type = entry.meta.key_type.unwrap_or(acme.key_type);
    let mut key = match (acme.reuse_key, entry.private_key()) {
        (true, Some(k)) => PrivateKey::from_der(k.pkcs8_der()).map_err(|e| anyhow!("{}: key: {e}", entry.id))?,
        _ => key_type.generate()?,
    };
    progress(&format!("renewing {} ({}) for {}", entry.id, entry.meta.friendly_name, meta.hostnames.join(", ")));
    // The challenge it was ordered with, unless that one is no longer known here.
    let challenge = meta.challenge.as_deref().and_then(|c| Challenge::parse(c).ok()).unwrap_or(acme.default_challenge);
    // A reissue for other names is a new certificate, not a replacement of this one.
    let replaces = (!reissue).then(|| entry.leaf_der());
    let result = issue(
        acme,
        store_dir,
        &meta.hostnames,
        key_type,
        &mut key,
        challenge,
        responder,
        replaces.as_deref(),
        progress,
    )
    .await;
    meta.last_attempt = Some(now_seconds());
    meta.directory = acme.directory.clone();
    let (store_dir, id, name) = (store_dir.to_owned(), entry.id.clone(), entry.meta.friendly_name.clone());
    match result.and_then(|chain| split_chain(&chain, &key)) {
        Ok((cert_pem, chain_pem, info)) => {
            meta.last_result = Some("ok".into());
            meta.failures = 0;
            meta.failing_since = None;
            meta.next_attempt = None;
            meta.last_alert_kind = None;
            let hostnames = meta.hostnames.clone();
            let key_pem = key.to_pem();
            let id2 = id.clone();
            let name2 = name.clone();
            blocking(move || {
                let mut store = Store::open_existing(&store_dir)?;
                store.renew_entry(&id2, &acme_entry(&name2, key_type, &cert_pem, &chain_pem, &key_pem, meta))?;
                Ok(())
            })
            .await?;
            progress(&format!("renewed {id}: serial {}, valid until {}", info.serial, rfc3339(info.not_after)));
            Ok(Obtained::new(id, name, hostnames, &info, if reissue { Action::Reissued } else { Action::Renewed }))
        }
        Err(e) => {
            let message = format!("{e:#}").replace('\n', " ");
            let (renew_threshold, _) = policy.thresholds(entry.info.not_before, entry.info.not_after);
            meta.failures += 1;
            meta.failing_since.get_or_insert(now_seconds());
            meta.last_result = Some(message.clone());
            let wait = retry_after(&message).unwrap_or_else(|| backoff(meta.failures, renew_threshold));
            meta.next_attempt = Some(now_seconds() + wait);
            let id2 = id.clone();
            blocking(move || {
                let mut store = Store::open_existing(&store_dir)?;
                store.update_acme(&id2, &meta)?;
                Ok(())
            })
            .await?;
            Err(anyhow!("renewing {id}: {message}"))
        }
    }
}

/// A rate limit's "retry after 2026-11-23 14:00:00 UTC" in the CA's detail, as a wait.
fn retry_after(message: &str) -> Option<Duration> {
    let i = message.find("retry after ")? + "retry after ".len();
    let text = message.get(i..i + 23)?;
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    let at = time::PrimitiveDateTime::parse(text, &fmt).ok()?.assume_utc();
    let wait = at - OffsetDateTime::now_utc();
    (wait > time::Duration::ZERO).then(|| wait.unsigned_abs())
}

/// Splits the CA's PEM chain into leaf and intermediates and checks the leaf is ours.
fn split_chain(chain_pem: &str, key: &PrivateKey) -> Result<(String, String, CertInfo)> {
    let blocks = pem::parse_many(chain_pem).map_err(|e| anyhow!("the CA's certificate chain: {e}"))?;
    let mut certs = blocks.iter().filter(|b| b.tag() == "CERTIFICATE");
    let leaf = certs.next().ok_or_else(|| anyhow!("the CA sent no certificate"))?;
    let info = CertInfo::from_der(leaf.contents()).map_err(|e| anyhow!("the CA's certificate: {e}"))?;
    if info.public_key_raw != key.public_key_raw() {
        bail!("the CA's certificate is not for the key we sent");
    }
    let cert_pem = crate::store::pem_cert(leaf.contents());
    let chain_pem: String = certs.map(|c| crate::store::pem_cert(c.contents())).collect();
    Ok((cert_pem, chain_pem, info))
}

pub(super) fn now_seconds() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

// === the daemon's renewer ===

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_retry_after_is_read() {
        let later = OffsetDateTime::now_utc() + time::Duration::hours(2);
        let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
        let msg = format!(
            "urn:ietf:params:acme:error:rateLimited: too many certificates: retry after {}",
            later.format(&fmt).unwrap()
        );
        let wait = retry_after(&msg).unwrap();
        assert!(wait > Duration::from_secs(7000) && wait <= Duration::from_secs(7200), "{wait:?}");
        assert_eq!(retry_after("urn:ietf:params:acme:error:connection: refused"), None);
    }
}
