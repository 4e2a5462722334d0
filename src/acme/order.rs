//! One ACME order over HTTP-01: authorizations, challenges published (and checked
//! through another process's listener when it holds the port), finalization with a CSR
//! for our key, and the chain downloaded. Every order is counted.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use instant_acme::{AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus, RetryPolicy};

use super::Progress;
use super::account::{account, account_path, describe, problem};
use super::challenges::Responder;
use crate::config::Acme as AcmeConfig;
use crate::pki::{self, IdentityRequest, KeyType, PrivateKey, Subject};

/// Orders a certificate for `hostnames` with `key`; returns the chain PEM (leaf first).
pub(super) async fn issue(
    acme: &AcmeConfig,
    store_dir: &Path,
    hostnames: &[String],
    key_type: KeyType,
    key: &PrivateKey,
    responder: &Responder,
    progress: Progress<'_>,
) -> Result<String> {
    // Every order is counted, whoever placed it and however it ended.
    let r: Result<String> = async {
        let account = account(acme, store_dir, progress).await?;
        let ids: Vec<Identifier> = hostnames.iter().map(|h| Identifier::Dns(h.clone())).collect();
        let mut order = match account.new_order(&NewOrder::new(&ids)).await {
            Err(instant_acme::Error::Api(p))
                if p.r#type.as_deref().is_some_and(|t| t.ends_with(":accountDoesNotExist")) =>
            {
                // The CA forgot the account (a test CA restarted, or it was deactivated).
                progress("the CA does not know the stored account; creating a new one");
                let _ = std::fs::remove_file(account_path(store_dir));
                Box::pin(super::account::account(acme, store_dir, progress))
                    .await?
                    .new_order(&NewOrder::new(&ids))
                    .await
                    .map_err(|e| anyhow!("placing the order: {}", describe(&e)))?
            }
            r => r.map_err(|e| anyhow!("placing the order: {}", describe(&e)))?,
        };
        progress(&format!("order placed for {}", hostnames.join(", ")));
        let mut guards = Vec::new();
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
                let mut challenge = authz.challenge(ChallengeType::Http01).ok_or_else(|| {
                    anyhow!(
                        "{name}: the CA offers no HTTP-01 challenge (wildcards need DNS-01, which Portcullis does not do)"
                    )
                })?;
                let key_auth = challenge.key_authorization();
                let token = challenge.token.clone();
                guards.push(responder.challenges.publish(&token, key_auth.as_str(), responder.on_disk)?);
                if let Some(c) = &responder.cluster {
                    cluster_guards.push(c.publish(&token, key_auth.as_str()).await?);
                }
                for addr in &responder.check {
                    self_check(*addr, &token, key_auth.as_str()).await?;
                }
                challenge.set_ready().await.map_err(|e| anyhow!("{name}: {}", describe(&e)))?;
                progress(&format!("{name}: HTTP-01 challenge ready, waiting for the CA to fetch it"));
            }
        }
        let status = order
            .poll_ready(&RetryPolicy::new().initial_delay(Duration::from_millis(500)).timeout(Duration::from_secs(120)))
            .await
            .map_err(|e| anyhow!("validation: {}", describe(&e)))?;
        if status != OrderStatus::Ready {
            let mut why = Vec::new();
            let mut authzs = order.authorizations();
            while let Some(Ok(authz)) = authzs.next().await {
                for c in &authz.challenges {
                    if let Some(p) = &c.error {
                        why.push(format!("{}: {}", authz.identifier(), problem(p)));
                    }
                }
            }
            bail!("validation failed: {}", if why.is_empty() { format!("order is {status:?}") } else { why.join("; ") });
        }
        drop(guards);
        drop(cluster_guards);
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
        let chain = order
            .poll_certificate(
                &RetryPolicy::new().initial_delay(Duration::from_millis(500)).timeout(Duration::from_secs(120)),
            )
            .await
            .map_err(|e| anyhow!("downloading the certificate: {}", describe(&e)))?;
        Ok(chain)
    }
    .await;
    let result = if r.is_ok() { "ok" } else { "error" };
    metrics::counter!(crate::metrics::names::ACME_ORDERS, "result" => result).increment(1);
    r
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
