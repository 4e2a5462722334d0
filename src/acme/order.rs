//! One ACME order over HTTP-01: authorizations, challenges published (and checked
//! through another process's listener when it holds the port), finalization with a CSR
//! for our key, and the chain downloaded. Every order is counted.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use instant_acme::{
    AuthorizationStatus, ChallengeStatus, ChallengeType, Identifier, NewOrder, OrderStatus, RetryPolicy,
};

use super::Progress;
use super::account::{account, account_path, describe, problem};
use super::challenges::Responder;
use crate::config::{Acme as AcmeConfig, Challenge};
use crate::pki::{self, IdentityRequest, KeyType, PrivateKey, Subject};

/// Orders a certificate for `hostnames` with `key`; returns the chain PEM (leaf first).
#[allow(clippy::too_many_arguments)] // one order's inputs, passed through from request and renew
pub(super) async fn issue(
    acme: &AcmeConfig,
    store_dir: &Path,
    hostnames: &[String],
    key_type: KeyType,
    key: &mut PrivateKey,
    challenge_type: Challenge,
    responder: &Responder,
    replaces: Option<&[u8]>,
    progress: Progress<'_>,
) -> Result<String> {
    let record_id = record_id(hostnames);
    // DNS-01 records placed, removed after the order whatever its outcome.
    let dns_records = std::sync::Mutex::new(Vec::new());
    // Every order is counted, whoever placed it and however it ended.
    let r: Result<String> = async {
        let account = account(acme, store_dir, progress).await?;
        // On a cluster: an order a previous renewer left unfinished is resumed, with its key.
        let mut resumed = None;
        if let Some(c) = &responder.cluster
            && let Ok(Some(bytes)) = c.cluster.recorded_order(&record_id).await
            && let Ok(rec) = serde_json::from_slice::<OrderRecord>(&bytes)
        {
            match (account.order(rec.url.clone()).await, PrivateKey::from_pem(&rec.key_pem)) {
                (Ok(mut o), Ok(k)) => {
                    if matches!(o.state().status, OrderStatus::Invalid) {
                        progress("the recorded order is invalid; placing a new one");
                    } else {
                        progress(&format!("resuming the order {} a previous renewer placed", rec.url));
                        *key = k;
                        resumed = Some(o);
                    }
                }
                _ => progress("the recorded order cannot be resumed; placing a new one"),
            }
        }
        let ids: Vec<Identifier> = hostnames.iter().map(|h| Identifier::Dns(h.clone())).collect();
        let mut order = if let Some(o) = resumed {
            o
        } else {
            let o = place(&account, &ids, replaces, acme, store_dir, progress).await?;
            if let Some(c) = &responder.cluster {
                let rec = OrderRecord { url: o.url().to_owned(), key_pem: key.to_pem() };
                c.cluster.record_order(&record_id, &serde_json::to_vec(&rec)?, c.fence.as_ref()).await?;
            }
            o
        };
        if matches!(order.state().status, OrderStatus::Pending) {
            progress(&format!("order placed for {}", hostnames.join(", ")));
        }
        let mut guards = Vec::new();
        let mut alpn_guards = Vec::new();
        let mut cluster_guards = Vec::new();
        {
            let mut authzs = order.authorizations();
            while let Some(authz) = authzs.next().await {
                let mut authz = authz.map_err(|e| anyhow!("reading an authorization: {}", describe(&e)))?;
                let name = authz.identifier().to_string();
                match authz.status {
                    AuthorizationStatus::Pending => {}
                    AuthorizationStatus::Valid => {
                        progress(&format!("{name}: already authorized"));
                        continue;
                    }
                    other => bail!("{name}: the authorization is {other:?}"),
                }
                let wanted = match challenge_type {
                    Challenge::Http01 => ChallengeType::Http01,
                    Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
                    Challenge::Dns01 => ChallengeType::Dns01,
                };
                let mut challenge = authz
                    .challenge(wanted)
                    .ok_or_else(|| anyhow!("{name}: the CA offers no {} challenge", challenge_type.as_str()))?;
                let key_auth = challenge.key_authorization();
                let token = challenge.token.clone();
                match challenge_type {
                    Challenge::Http01 => {
                        guards.push(responder.challenges.publish(&token, key_auth.as_str(), responder.on_disk)?);
                        if let Some(c) = &responder.cluster {
                            cluster_guards.push(c.publish(&token, key_auth.as_str()).await?);
                        }
                        for addr in &responder.check {
                            self_check(*addr, &token, key_auth.as_str()).await?;
                        }
                    }
                    Challenge::Dns01 => {
                        let domain = name.trim_start_matches("*.").to_owned();
                        let record = super::dns::Record {
                            name: format!("_acme-challenge.{domain}"),
                            value: key_auth.dns_value(),
                            domain,
                        };
                        // Removed afterwards even if placing it failed half-way.
                        let placed = super::dns::present(acme, &record, progress).await;
                        dns_records.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(record);
                        placed?;
                    }
                    Challenge::TlsAlpn01 => {
                        alpn_guards.push(responder.challenges.publish_alpn(
                            &name,
                            key_auth.as_str(),
                            responder.on_disk,
                        )?);
                        if let Some(c) = &responder.cluster {
                            cluster_guards.push(c.publish(&format!("alpn/{name}"), key_auth.as_str()).await?);
                        }
                    }
                }
                // A resumed order's challenge may have been submitted already.
                if challenge.status == ChallengeStatus::Pending {
                    challenge.set_ready().await.map_err(|e| anyhow!("{name}: {}", describe(&e)))?;
                }
                progress(&format!(
                    "{name}: {} challenge ready, waiting for the CA to check it",
                    challenge_type.as_str()
                ));
            }
        }
        // A resumed order may be finalized already: then only the download is left.
        let finalized = matches!(order.state().status, OrderStatus::Processing | OrderStatus::Valid);
        let status = if finalized {
            order.state().status
        } else {
            order
                .poll_ready(
                    &RetryPolicy::new().initial_delay(Duration::from_millis(500)).timeout(Duration::from_secs(120)),
                )
                .await
                .map_err(|e| anyhow!("validation: {}", describe(&e)))?
        };
        if !finalized && status != OrderStatus::Ready {
            let mut why = Vec::new();
            let mut authzs = order.authorizations();
            while let Some(Ok(authz)) = authzs.next().await {
                for c in &authz.challenges {
                    if let Some(p) = &c.error {
                        why.push(format!("{}: {}", authz.identifier(), problem(p)));
                    }
                }
            }
            bail!(
                "validation failed: {}",
                if why.is_empty() { format!("order is {status:?}") } else { why.join("; ") }
            );
        }
        drop(guards);
        drop(alpn_guards);
        drop(cluster_guards);
        if !finalized {
            progress(&format!("validated; finalizing with a new {key_type} key"));
            let identity = IdentityRequest {
                friendly_name: hostnames[0].clone(),
                subject: Subject { common_name: Some(hostnames[0].clone()), ..Subject::default() },
                sans: hostnames.to_vec(),
            }
            .validate()?;
            let csr_pem = pki::certificate_request(&identity, key_type, key)?;
            let csr = pem::parse(&csr_pem).map_err(|e| anyhow!("CSR: {e}"))?;
            order.finalize_csr(csr.contents()).await.map_err(|e| anyhow!("finalizing: {}", describe(&e)))?;
        }
        let chain = order
            .poll_certificate(
                &RetryPolicy::new().initial_delay(Duration::from_millis(500)).timeout(Duration::from_secs(120)),
            )
            .await
            .map_err(|e| anyhow!("downloading the certificate: {}", describe(&e)))?;
        Ok(chain)
    }
    .await;
    // The TXT records go, also when the order failed.
    let records = std::mem::take(&mut *dns_records.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    for record in &records {
        match super::dns::cleanup(acme, record).await {
            Ok(()) => progress(&format!("TXT record {} removed", record.name)),
            Err(e) => progress(&format!("{e:#}")),
        }
    }
    // Finished either way: a successor starts afresh (a failure is retried with backoff).
    if let Some(c) = &responder.cluster {
        c.cluster.forget_order(&record_id).await;
    }
    let result = if r.is_ok() { "ok" } else { "error" };
    metrics::counter!(crate::metrics::names::ACME_ORDERS, "result" => result).increment(1);
    r
}

/// An order recorded on a cluster while in progress.
#[derive(serde::Serialize, serde::Deserialize)]
struct OrderRecord {
    url: String,
    key_pem: String,
}

/// The record's name: the hostnames' hash (one order per set of names at a time).
fn record_id(hostnames: &[String]) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(hostnames.join("\n").as_bytes())[..16])
}

/// Places a new order; a CA that forgot the account gets a new one first. A renewal
/// names the certificate it replaces (`replaces`, RFC 9773 §5) when the CA offers ARI,
/// so the CA can exempt it from rate limits; refused that way, it is placed plainly.
async fn place(
    account: &instant_acme::Account,
    ids: &[Identifier],
    replaces: Option<&[u8]>,
    acme: &AcmeConfig,
    store_dir: &Path,
    progress: Progress<'_>,
) -> Result<instant_acme::Order> {
    let old = replaces.map(|der| rustls_pki_types::CertificateDer::from(der.to_vec()));
    if let Some(id) = old.as_ref().and_then(|c| instant_acme::CertificateIdentifier::try_from(c).ok()) {
        match account.new_order(&NewOrder::new(ids).replaces(id)).await {
            Ok(o) => {
                progress("order placed as the replacement of the current certificate (ARI)");
                return Ok(o);
            }
            // No renewalInfo in the directory: nothing was sent.
            Err(instant_acme::Error::Unsupported(_)) => {}
            Err(e) => {
                progress(&format!("the CA refused the order as a replacement ({}); placing it plainly", describe(&e)))
            }
        }
    }
    Ok(match account.new_order(&NewOrder::new(ids)).await {
        Err(instant_acme::Error::Api(p))
            if p.r#type.as_deref().is_some_and(|t| t.ends_with(":accountDoesNotExist")) =>
        {
            // The CA forgot the account (a test CA restarted, or it was deactivated).
            progress("the CA does not know the stored account; creating a new one");
            let _ = std::fs::remove_file(account_path(store_dir));
            Box::pin(super::account::account(acme, store_dir, progress))
                .await?
                .new_order(&NewOrder::new(ids))
                .await
                .map_err(|e| anyhow!("placing the order: {}", describe(&e)))?
        }
        r => r.map_err(|e| anyhow!("placing the order: {}", describe(&e)))?,
    })
}

/// GETs the challenge from `addr` (another process's listener) and compares the answer.
async fn self_check(addr: SocketAddr, token: &str, expected: &str) -> Result<()> {
    let target = crate::http::loopback_for(addr);
    let path = format!("/.well-known/acme-challenge/{token}");
    let got =
        tokio::task::spawn_blocking(move || crate::http::http_get(target, &path)).await.map_err(|e| anyhow!("{e}"))?;
    match got {
        Some((200, body)) if body.trim() == expected => Ok(()),
        Some((status, _)) => bail!(
            "acme.http_listen {addr}: another program holds the port and answered {status} for the challenge; \
             stop it, or let a running Portcullis daemon answer (it needs the same store)"
        ),
        None => bail!("acme.http_listen {addr}: the port is in use but nothing answers HTTP on it"),
    }
}
