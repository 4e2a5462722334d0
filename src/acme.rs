//! ACME (RFC 8555) certificates over HTTP-01: the account in `store/acme/`, orders, the
//! challenge tokens the plain-HTTP listener answers, the renewal policy, and the
//! daemon's renewer (ensure `[[acme.certificate]]`, renew, back off, alert).
//!
//! One code path: `acme request` (CLI and jobs), the renewer and `acme renew` all end in
//! [`obtain`], and store the result as a normal store entry with source `acme`, so the
//! hot reload serves it. A renewal replaces the entry's directory (same id, same
//! assignments; see `store::atomic::replace_entry`); the old certificate is served until then.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use instant_acme::{
    Account, AccountBuilder, AccountCredentials, AuthorizationStatus, ChallengeType, ExternalAccountKey, Identifier,
    NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::config::{self, Acme as AcmeConfig};
use crate::pki::{self, CertInfo, IdentityRequest, KeyType, PrivateKey, Subject, rfc3339};
use crate::store::{AcmeMeta, CertMeta, NewCert, Source, Store};

/// Where progress lines go: stderr for the CLI, the log for the daemon, a job's messages.
pub type Progress<'a> = &'a (dyn Fn(&str) + Send + Sync);

// === renewal policy ===

/// `renew_before_days` and `alert_before_days`, before scaling to a certificate's lifetime.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    pub renew_before: Duration,
    pub alert_before: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self { renew_before: Duration::from_secs(30 * 86_400), alert_before: Duration::from_secs(25 * 86_400) }
    }
}

impl Policy {
    pub fn of(acme: Option<&AcmeConfig>) -> Self {
        acme.map_or_else(Self::default, |a| Self { renew_before: a.renew_before, alert_before: a.alert_before })
    }

    /// How long before `not_after` renewal starts and the error state begins: renewal at
    /// min(renew_before, a third of the lifetime), the error state at the same fraction
    /// of that as alert_before is of renew_before (25/30 by default).
    pub fn thresholds(&self, not_before: OffsetDateTime, not_after: OffsetDateTime) -> (Duration, Duration) {
        let lifetime = (not_after - not_before).max(time::Duration::ZERO).unsigned_abs();
        let renew = self.renew_before.min(lifetime / 3);
        let ratio = self.alert_before.as_secs_f64() / self.renew_before.as_secs_f64().max(1.0);
        (renew, renew.mul_f64(ratio.clamp(0.0, 1.0)))
    }
}

/// Where an ACME certificate stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Not yet in the renewal window.
    Valid,
    /// In the renewal window, no failed attempt yet.
    Renewing,
    /// Renewal failed; retrying with backoff, above the alert threshold.
    Retrying,
    /// Renewal failing below the alert threshold: alerts are sent daily.
    Error,
    Expired,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Valid => "valid",
            Self::Renewing => "renewing",
            Self::Retrying => "retrying",
            Self::Error => "error",
            Self::Expired => "expired",
        }
    }
}

/// `acme status`, the `acme` part of `cert list`, and the admin status.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AcmeView {
    pub id: String,
    pub friendly_name: String,
    pub hostnames: Vec<String>,
    pub not_after: String,
    pub status: String,
    /// When renewal starts (or started).
    pub renew_at: String,
    /// When a failing renewal becomes the error state.
    pub error_at: String,
    pub next_attempt: Option<String>,
    pub last_attempt: Option<String>,
    pub last_result: Option<String>,
    pub failures: u32,
}

/// The renewal schedule of one certificate.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub renew_at: OffsetDateTime,
    pub error_at: OffsetDateTime,
    pub status: Status,
}

pub fn schedule(meta: &AcmeMeta, info: &CertInfo, policy: &Policy, now: OffsetDateTime) -> Schedule {
    schedule_at(meta, info.not_before, info.not_after, policy, now)
}

fn schedule_at(
    meta: &AcmeMeta,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    policy: &Policy,
    now: OffsetDateTime,
) -> Schedule {
    let (renew, alert) = policy.thresholds(not_before, not_after);
    let renew_at = not_after - renew;
    let error_at = not_after - alert;
    let failing = meta.failures > 0;
    let status = if now >= not_after {
        Status::Expired
    } else if failing && now >= error_at {
        Status::Error
    } else if failing {
        Status::Retrying
    } else if now >= renew_at {
        Status::Renewing
    } else {
        Status::Valid
    };
    Schedule { renew_at, error_at, status }
}

pub fn view(id: &str, meta: &CertMeta, info: &CertInfo, policy: &Policy, now: OffsetDateTime) -> Option<AcmeView> {
    view_at(id, &meta.friendly_name, meta.acme.as_ref()?, info.not_before, info.not_after, policy, now)
}

/// The ACME certificates of a snapshot, their status as of now (the admin status page).
pub fn snapshot_views(snapshot: &crate::snapshot::Snapshot) -> Vec<AcmeView> {
    let now = OffsetDateTime::now_utc();
    let t = |s: i64| OffsetDateTime::from_unix_timestamp(s).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    snapshot
        .certificates
        .iter()
        .filter_map(|c| {
            let acme = c.acme.as_ref()?;
            view_at(&c.id, &c.friendly_name, acme, t(c.not_before), t(c.not_after), &snapshot.acme_policy, now)
        })
        .collect()
}

fn view_at(
    id: &str,
    friendly_name: &str,
    acme: &AcmeMeta,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    policy: &Policy,
    now: OffsetDateTime,
) -> Option<AcmeView> {
    let s = schedule_at(acme, not_before, not_after, policy, now);
    Some(AcmeView {
        id: id.to_owned(),
        friendly_name: friendly_name.to_owned(),
        hostnames: acme.hostnames.clone(),
        not_after: rfc3339(not_after),
        status: s.status.as_str().to_owned(),
        renew_at: rfc3339(s.renew_at),
        error_at: rfc3339(s.error_at),
        next_attempt: acme.next_attempt.map(rfc3339),
        last_attempt: acme.last_attempt.map(rfc3339),
        last_result: acme.last_result.clone(),
        failures: acme.failures,
    })
}

/// Every ACME certificate in the store, for `acme status`.
pub fn status(store: &Store, policy: &Policy, now: OffsetDateTime) -> Result<Vec<AcmeView>> {
    let (entries, _) = store.certs()?;
    Ok(entries.iter().filter_map(|e| view(&e.id, &e.meta, &e.info, policy, now)).collect())
}

/// Wait after the `failures`-th consecutive failure: doubling from a 20th of the renewal
/// threshold (at least 1 s, at most 5 min), capped at a quarter of it (at most 6 h).
pub fn backoff(failures: u32, renew_threshold: Duration) -> Duration {
    let first = (renew_threshold / 20).clamp(Duration::from_secs(1), Duration::from_secs(300));
    let cap = (renew_threshold / 4).clamp(first, Duration::from_secs(6 * 3600));
    first.saturating_mul(1u32 << failures.saturating_sub(1).min(20)).min(cap)
}

// === challenge tokens ===

/// HTTP-01 tokens and their key authorizations, answered by the plain-HTTP listener at
/// `/.well-known/acme-challenge/TOKEN`. The daemon's own orders live in memory; an order
/// run by the CLI while the daemon holds the port is published as a file in
/// `store/acme/challenges/`, which the daemon reads when the memory has no answer.
#[derive(Clone, Default)]
pub struct Challenges {
    tokens: Arc<Mutex<HashMap<String, String>>>,
    dir: Option<PathBuf>,
}

/// `store/acme/challenges/`.
pub fn challenge_dir(store: &Path) -> PathBuf {
    store.join("acme").join("challenges")
}

/// base64url, as RFC 8555 tokens are: nothing else can name a file.
fn valid_token(token: &str) -> bool {
    (16..=256).contains(&token.len()) && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Challenges {
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self { tokens: Arc::default(), dir }
    }

    /// The key authorization for `token`, if an order is waiting for it.
    pub fn answer(&self, token: &str) -> Option<String> {
        if !valid_token(token) {
            return None;
        }
        if let Some(v) = self.tokens.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(token) {
            return Some(v.clone());
        }
        let path = self.dir.as_ref()?.join(token);
        let text = crate::input::read_text(&path, 4096, crate::input::Links::Refuse).ok()?;
        Some(text.trim().to_owned())
    }

    /// Publishes a token until the guard is dropped; `on_disk` also writes the file.
    fn publish(&self, token: &str, key_authorization: &str, on_disk: bool) -> Result<TokenGuard> {
        if !valid_token(token) {
            bail!("the CA sent a malformed challenge token {token:?}");
        }
        let mut file = None;
        if on_disk && let Some(dir) = &self.dir {
            crate::store::atomic::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
            let path = dir.join(token);
            crate::store::write_export(&path, key_authorization.as_bytes(), false, true)?;
            file = Some(path);
        }
        self.tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(token.to_owned(), key_authorization.to_owned());
        Ok(TokenGuard { challenges: self.clone(), token: token.to_owned(), file })
    }
}

struct TokenGuard {
    challenges: Challenges,
    token: String,
    file: Option<PathBuf>,
}

impl Drop for TokenGuard {
    fn drop(&mut self) {
        self.challenges.tokens.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.token);
        if let Some(f) = &self.file {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// How this process answers challenges: the daemon answers from memory; the CLI also
/// publishes files for a running daemon and checks, for every port it could not bind,
/// that whoever holds it gives the right answer before telling the CA to look.
#[derive(Clone)]
pub struct Responder {
    pub challenges: Challenges,
    pub on_disk: bool,
    /// Addresses held by another process (the daemon) to check before `set_ready`.
    pub check: Vec<SocketAddr>,
}

// === account ===

#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: serde_json::Value,
}

fn account_path(store: &Path) -> PathBuf {
    store.join("acme").join("account.json")
}

fn builder(acme: &AcmeConfig) -> Result<AccountBuilder> {
    let Some(bundle) = &acme.ca_bundle else {
        return Account::builder().map_err(|e| anyhow!("ACME HTTP client: {e}"));
    };
    use rustls_pki_types::pem::PemObject;
    let pem = crate::input::read(bundle, crate::input::MAX_PEM, crate::input::Links::Follow)
        .with_context(|| format!("acme.ca_bundle {}", bundle.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| anyhow!("acme.ca_bundle {}: {e}", bundle.display()))?;
        roots.add(cert).map_err(|e| anyhow!("acme.ca_bundle {}: {e}", bundle.display()))?;
    }
    if roots.is_empty() {
        bail!("acme.ca_bundle {}: no certificates in the file", bundle.display());
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, instant_acme::BodyWrapper<bytes::Bytes>>(https);
    Ok(Account::builder_with_http(Box::new(client)))
}

/// The stored account for the configured directory, or a new one (saved 0600).
async fn account(acme: &AcmeConfig, store_dir: &Path, progress: Progress<'_>) -> Result<Account> {
    let path = account_path(store_dir);
    match crate::input::read_text(&path, crate::input::MAX_TOML, crate::input::Links::Refuse) {
        Ok(text) => {
            let stored: StoredAccount =
                serde_json::from_str(&text).with_context(|| format!("{}: not an account file", path.display()))?;
            if stored.directory == acme.directory {
                let creds: AccountCredentials = serde_json::from_value(stored.credentials)
                    .with_context(|| format!("{}: damaged credentials", path.display()))?;
                return builder(acme)?
                    .from_credentials(creds)
                    .await
                    .map_err(|e| anyhow!("ACME directory {}: {}", acme.directory, describe(&e)));
            }
            progress(&format!("the directory changed from {}: creating a new account", stored.directory));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(anyhow!("{}: {e}", path.display())),
    }
    progress(&format!("creating an ACME account at {}", acme.directory));
    let eab = match &acme.eab {
        None => None,
        Some((kid, file)) => {
            use base64::Engine;
            let text = crate::input::read_text(file, crate::input::MAX_PASSWORD, crate::input::Links::Follow)
                .with_context(|| format!("acme.eab_hmac_key_file {}", file.display()))?;
            let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(text.trim().trim_end_matches('='))
                .map_err(|e| anyhow!("acme.eab_hmac_key_file {}: not base64url: {e}", file.display()))?;
            Some(ExternalAccountKey::new(kid.clone(), &key))
        }
    };
    let contact: Vec<&str> = acme.contact.iter().map(String::as_str).collect();
    let new = NewAccount { contact: &contact, terms_of_service_agreed: true, only_return_existing: false };
    let (account, creds) = builder(acme)?
        .create(&new, acme.directory.clone(), eab.as_ref())
        .await
        .map_err(|e| anyhow!("creating an account at {}: {}", acme.directory, describe(&e)))?;
    let stored = StoredAccount { directory: acme.directory.clone(), credentials: serde_json::to_value(&creds)? };
    let json = serde_json::to_vec_pretty(&stored)?;
    let store_dir = store_dir.to_owned();
    blocking(move || {
        let mut store = Store::open_existing(&store_dir)?;
        store.write_acme_account(&json)?;
        Ok(())
    })
    .await?;
    progress(&format!("account {} saved in {}", account.id(), path.display()));
    Ok(account)
}

/// An ACME error as the CA said it: problem type, detail, subproblems.
pub fn describe(e: &instant_acme::Error) -> String {
    match e {
        instant_acme::Error::Api(p) => problem(p),
        other => {
            // Connection errors hide their cause in the source chain.
            let mut s = other.to_string();
            let mut src = std::error::Error::source(other);
            while let Some(inner) = src {
                let t = inner.to_string();
                if !s.contains(&t) {
                    s = format!("{s}: {t}");
                }
                src = inner.source();
            }
            s
        }
    }
}

fn problem(p: &instant_acme::Problem) -> String {
    let mut s = format!(
        "{}: {}",
        p.r#type.as_deref().unwrap_or("(no problem type)"),
        p.detail.as_deref().unwrap_or("(no detail)")
    );
    for sub in &p.subproblems {
        s.push_str(&format!("; {sub}"));
    }
    s
}

// === orders ===

/// Orders a certificate for `hostnames` with `key`; returns the chain PEM (leaf first).
async fn issue(
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
                Box::pin(self::account(acme, store_dir, progress))
                    .await?
                    .new_order(&NewOrder::new(&ids))
                    .await
                    .map_err(|e| anyhow!("placing the order: {}", describe(&e)))?
            }
            r => r.map_err(|e| anyhow!("placing the order: {}", describe(&e)))?,
        };
        progress(&format!("order placed for {}", hostnames.join(", ")));
        let mut guards = Vec::new();
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

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| anyhow!("task failed: {e}"))?
}

/// What `acme request` and a renewal did.
#[derive(Clone, Debug, Serialize)]
pub struct Obtained {
    pub id: String,
    pub friendly_name: String,
    pub hostnames: Vec<String>,
    pub serial: String,
    pub not_after: String,
    /// "issued", "renewed" or "unchanged" (already valid; nothing ordered).
    pub action: &'static str,
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
}

/// Validates `--hostname` values: FQDNs HTTP-01 can prove, lowercase, each once.
pub fn check_hostnames(hostnames: &[String]) -> Result<Vec<String>> {
    if hostnames.is_empty() {
        bail!("--hostname: at least one is required");
    }
    let mut out: Vec<String> = Vec::new();
    for h in hostnames {
        let h = config::check_acme_hostname(h).map_err(|e| anyhow!("--hostname {h:?}: {e}"))?;
        if !out.contains(&h) {
            out.push(h);
        }
    }
    Ok(out)
}

/// The ACME entry for exactly these hostnames, if any: (id, meta).
fn find_entry(store: &Store, hostnames: &[String]) -> Result<Option<(String, CertMeta)>> {
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
    let hostnames = check_hostnames(&params.hostnames)?;
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
            return Ok(Obtained {
                id: entry.id.clone(),
                friendly_name: entry.meta.friendly_name.clone(),
                hostnames,
                serial: entry.info.serial.clone(),
                not_after: rfc3339(entry.info.not_after),
                action: "unchanged",
            });
        }
        return renew(acme, store_dir, &entry.id, true, responder, progress).await;
    }
    let key_type = params.key_type.unwrap_or(acme.key_type);
    let key = key_type.generate()?;
    let chain = issue(acme, store_dir, &hostnames, key_type, &key, responder, progress).await?;
    let (cert_pem, chain_pem, info) = split_chain(&chain, &key)?;
    let meta = AcmeMeta {
        hostnames: hostnames.clone(),
        directory: acme.directory.clone(),
        last_attempt: Some(now_seconds()),
        last_result: Some("ok".into()),
        ..AcmeMeta::default()
    };
    let id = {
        let (store_dir, name, key_pem) = (store_dir.to_owned(), name.clone(), key.to_pem());
        let listeners = params.listeners.clone();
        blocking(move || {
            let mut store = Store::open(&store_dir)?;
            let id = store.add_cert(&NewCert {
                friendly_name: &name,
                source: Source::Acme,
                key_type: Some(key_type),
                cert_pem: &cert_pem,
                chain_pem: &chain_pem,
                key_pem: Some(&key_pem),
                acme: Some(meta),
            })?;
            store.assign(&id, &listeners, true)?;
            Ok(id)
        })
        .await?
    };
    progress(&format!("stored as {id} ({name}), valid until {}", rfc3339(info.not_after)));
    if !params.listeners.is_empty() {
        progress(&format!("served on listener(s) {}", params.listeners.join(", ")));
    }
    Ok(Obtained {
        id,
        friendly_name: name,
        hostnames,
        serial: info.serial,
        not_after: rfc3339(info.not_after),
        action: "issued",
    })
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
        return Ok(Obtained {
            id: entry.id.clone(),
            friendly_name: entry.meta.friendly_name.clone(),
            hostnames: meta.hostnames.clone(),
            serial: entry.info.serial.clone(),
            not_after: rfc3339(entry.info.not_after),
            action: "unchanged",
        });
    }
    let key_type = entry.meta.key_type.unwrap_or(acme.key_type);
    let key = match (acme.reuse_key, entry.private_key()) {
        (true, Some(k)) => PrivateKey::from_der(k.pkcs8_der()).map_err(|e| anyhow!("{}: key: {e}", entry.id))?,
        _ => key_type.generate()?,
    };
    progress(&format!("renewing {} ({}) for {}", entry.id, entry.meta.friendly_name, meta.hostnames.join(", ")));
    let result = issue(acme, store_dir, &meta.hostnames, key_type, &key, responder, progress).await;
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
                store.renew_entry(
                    &id2,
                    &NewCert {
                        friendly_name: &name2,
                        source: Source::Acme,
                        key_type: Some(key_type),
                        cert_pem: &cert_pem,
                        chain_pem: &chain_pem,
                        key_pem: Some(&key_pem),
                        acme: Some(meta),
                    },
                )?;
                Ok(())
            })
            .await?;
            progress(&format!("renewed {id}: serial {}, valid until {}", info.serial, rfc3339(info.not_after)));
            Ok(Obtained {
                id,
                friendly_name: name,
                hostnames,
                serial: info.serial,
                not_after: rfc3339(info.not_after),
                action: if reissue { "reissued" } else { "renewed" },
            })
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

fn now_seconds() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

// === the daemon's renewer ===

/// Longest sleep between passes: the CA's ARI window and clock changes are noticed.
const CHECK_INTERVAL: Duration = Duration::from_secs(12 * 3600);

/// Runs until `shutdown`: a pass at start, after every configuration change and when the
/// next certificate falls due (with jitter), each pass ensuring `[[acme.certificate]]`,
/// renewing what is due and sending alerts.
pub async fn renewer(
    store_dir: PathBuf,
    mut configs: tokio::sync::watch::Receiver<Arc<config::Config>>,
    challenges: Challenges,
    kick: Arc<tokio::sync::Notify>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut pending: HashMap<Vec<String>, (u32, OffsetDateTime)> = HashMap::new();
    let mut ari = AriCache::default();
    loop {
        let config = configs.borrow_and_update().clone();
        let wake = match &config.acme {
            Some(acme) => pass(&config, acme, &store_dir, &challenges, &mut pending, &mut ari).await,
            None => CHECK_INTERVAL,
        };
        tracing::debug!(secs = wake.as_secs_f64(), "next ACME check");
        let deadline = tokio::time::Instant::now() + wake;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                // SIGHUP and the periodic rescan: failures recorded by `acme renew`, a
                // deleted certificate of [[acme.certificate]].
                () = kick.notified() => break,
                r = configs.changed() => {
                    if r.is_err() {
                        return;
                    }
                    // Every reload publishes its configuration; only [acme] and [alerts]
                    // matter here.
                    let new = configs.borrow().clone();
                    if new.acme != config.acme || new.alerts != config.alerts || new.listeners != config.listeners {
                        break;
                    }
                }
                () = shutdown.cancelled() => return,
            }
        }
    }
}

/// ACME Renewal Information (RFC 9773): the CA's suggested renewal time per
/// certificate, asked again only after the Retry-After it gave.
#[derive(Default)]
struct AriCache {
    /// By certificate DER hash: the chosen moment (if any) and when to ask again.
    answers: HashMap<[u8; 32], (Option<OffsetDateTime>, OffsetDateTime)>,
    /// The directory has no renewalInfo (or no account exists yet): do not ask.
    off_until: Option<OffsetDateTime>,
}

impl AriCache {
    /// The moment in the CA's suggested window at which to renew `der`: a fixed point of
    /// the window per certificate (from its hash), as RFC 9773 asks clients to spread.
    async fn window(
        &mut self,
        account: &mut Option<Option<Account>>,
        acme: &AcmeConfig,
        store_dir: &Path,
        der: &[u8],
    ) -> Option<OffsetDateTime> {
        use sha2::Digest;
        let now = OffsetDateTime::now_utc();
        if self.off_until.is_some_and(|t| now < t) {
            return None;
        }
        let hash: [u8; 32] = sha2::Sha256::digest(der).into();
        if let Some((at, until)) = self.answers.get(&hash)
            && now < *until
        {
            return *at;
        }
        if account.is_none() {
            // Only the stored account of this directory: asking never creates one.
            let stored =
                crate::input::read_text(&account_path(store_dir), crate::input::MAX_TOML, crate::input::Links::Refuse)
                    .ok()
                    .and_then(|t| serde_json::from_str::<StoredAccount>(&t).ok())
                    .is_some_and(|a| a.directory == acme.directory);
            let quiet = |_: &str| {};
            *account = Some(if stored { self::account(acme, store_dir, &quiet).await.ok() } else { None });
        }
        let Some(Some(acct)) = account.as_ref() else {
            self.off_until = Some(now + time::Duration::HOUR);
            return None;
        };
        let cert = rustls_pki_types::CertificateDer::from(der.to_vec());
        let id = instant_acme::CertificateIdentifier::try_from(&cert).ok()?;
        match acct.renewal_info(&id).await {
            Ok((info, retry_after)) => {
                let w = info.suggested_window;
                let f = u64::from_le_bytes(hash[..8].try_into().ok()?) as f64 / u64::MAX as f64;
                let at = w.start + (w.end - w.start).max(time::Duration::ZERO) * f;
                // RFC 9773 §4.3: ask again after Retry-After (at least an hour, at most a day).
                let again = retry_after.clamp(Duration::from_secs(3600), Duration::from_secs(86_400));
                self.answers.insert(hash, (Some(at), now + again));
                Some(at)
            }
            Err(instant_acme::Error::Unsupported(_)) => {
                self.off_until = Some(now + time::Duration::DAY);
                None
            }
            Err(e) => {
                tracing::debug!(error = %describe(&e), "ACME renewal information unavailable");
                self.answers.insert(hash, (None, now + time::Duration::HOUR));
                None
            }
        }
    }
}

fn jitter(max: Duration) -> Duration {
    let mut b = [0u8; 4];
    let _ = aws_lc_rs::rand::fill(&mut b);
    max.mul_f64(f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX))
}

async fn pass(
    config: &config::Config,
    acme: &AcmeConfig,
    store_dir: &Path,
    challenges: &Challenges,
    pending: &mut HashMap<Vec<String>, (u32, OffsetDateTime)>,
    ari: &mut AriCache,
) -> Duration {
    let responder = Responder { challenges: challenges.clone(), on_disk: false, check: Vec::new() };
    let log = |line: &str| tracing::info!(target: "acme", "{line}");
    let policy = Policy::of(Some(acme));
    let mut wake = CHECK_INTERVAL;

    // Configured certificates that have no entry yet.
    let dir = store_dir.to_owned();
    let wanted = acme.certificates.clone();
    let missing = blocking(move || {
        let store = Store::open_existing(&dir)?;
        let mut missing = Vec::new();
        for c in wanted {
            if find_entry(&store, &c.hostnames)?.is_none() {
                missing.push(c);
            }
        }
        Ok(missing)
    })
    .await;
    for c in missing.unwrap_or_else(|e| {
        tracing::error!(error = %format!("{e:#}"), "ACME: cannot read the store");
        Vec::new()
    }) {
        let key: Vec<String> = c.hostnames.clone();
        let now = OffsetDateTime::now_utc();
        if let Some((_, next)) = pending.get(&key)
            && *next > now
        {
            wake = wake.min((*next - now).unsigned_abs());
            continue;
        }
        // Checked against [[listener]] when the configuration was loaded.
        let listeners =
            crate::ops::checked_listeners(config, c.listeners.as_deref().unwrap_or_default()).unwrap_or_default();
        // The configuration declares the names: editing it is the operator's --replace.
        let params = RequestParams {
            hostnames: c.hostnames.clone(),
            key_type: c.key_type,
            name: c.name.clone(),
            listeners,
            replace: true,
        };
        match request(acme, store_dir, &params, &responder, &log).await {
            Ok(o) => {
                pending.remove(&key);
                tracing::info!(id = %o.id, hostnames = %o.hostnames.join(","), "ACME certificate issued");
            }
            Err(e) => {
                let failures = pending.get(&key).map_or(1, |p| p.0 + 1);
                // A day is the renewal threshold of nothing yet: back off as for a 90-day certificate.
                let wait = backoff(failures, policy.renew_before);
                pending.insert(key.clone(), (failures, now + wait));
                wake = wake.min(wait);
                let message = format!("{e:#}").replace('\n', " ");
                tracing::error!(hostnames = %key.join(","), error = %message, "ACME order failed");
                if failures == 1 {
                    let alert = crate::alerts::Alert {
                        kind: "order-failed",
                        id: String::new(),
                        friendly_name: c.name.clone().unwrap_or_else(|| key[0].clone()),
                        hostnames: key.clone(),
                        not_after: None,
                        error: message,
                    };
                    crate::alerts::send(&config.alerts, &alert).await;
                }
            }
        }
    }

    // Every ACME entry: renew what is due, alert on failures.
    let dir = store_dir.to_owned();
    let entries = blocking(move || {
        let store = Store::open_existing(&dir)?;
        let mut out = Vec::new();
        for id in store.cert_ids()? {
            if store.read_meta(&id).is_ok_and(|m| m.acme.is_some())
                && let Ok(e) = store.read_cert(&id)
            {
                let der = e.leaf_der();
                out.push((e.id, e.meta, e.info, der));
            }
        }
        Ok(out)
    })
    .await
    .unwrap_or_default();
    let mut account = None;
    for (id, meta, info, der) in entries {
        let Some(mut am) = meta.acme.clone() else { continue };
        let now = OffsetDateTime::now_utc();
        let s = schedule(&am, &info, &policy, now);
        // After a failure (also of a forced or ARI-early renewal) the backoff decides.
        let mut attempt_at = match am.next_attempt {
            Some(next) if am.failures > 0 => next,
            _ => s.renew_at,
        };
        // RFC 9773: the CA may want it renewed earlier (e.g. ahead of a revocation).
        if now < attempt_at
            && am.failures == 0
            && let Some(at) = ari.window(&mut account, acme, store_dir, &der).await
            && at < attempt_at
        {
            if at <= now {
                tracing::info!(%id, "the CA's suggested renewal window (ARI) has started");
            }
            attempt_at = at;
        }
        if now < attempt_at {
            // Scheduled renewals are spread (many certificates issued together); a retry
            // keeps its backoff time.
            let spread = if am.failures > 0 {
                Duration::ZERO
            } else {
                let (renew_threshold, _) = policy.thresholds(info.not_before, info.not_after);
                jitter((renew_threshold / 20).min(Duration::from_secs(600)))
            };
            wake = wake.min((attempt_at - now).unsigned_abs() + spread);
        } else {
            match renew(acme, store_dir, &id, true, &responder, &log).await {
                Ok(_) => continue,
                Err(e) => tracing::error!(%id, error = %format!("{e:#}"), "ACME renewal failed"),
            }
            // Re-read what renew() recorded.
            let (dir, id2) = (store_dir.to_owned(), id.clone());
            if let Ok(m) = blocking(move || Ok(Store::open_existing(&dir)?.read_meta(&id2)?)).await
                && let Some(a) = m.acme
            {
                am = a;
            }
            if let Some(next) = am.next_attempt {
                wake = wake.min((next - OffsetDateTime::now_utc()).max(time::Duration::SECOND).unsigned_abs());
            }
        }
        if am.failures > 0 {
            let now = OffsetDateTime::now_utc();
            let s = schedule(&am, &info, &policy, now);
            let kind = if matches!(s.status, Status::Error | Status::Expired) { "error" } else { "renewal-failed" };
            let daily = am.last_alert.is_none_or(|t| now - t >= time::Duration::DAY);
            let escalated = am.last_alert_kind.as_deref() != Some(kind) && kind == "error";
            let first = am.last_alert_kind.is_none();
            if first || escalated || (kind == "error" && daily) {
                let alert = crate::alerts::Alert {
                    kind,
                    id: id.clone(),
                    friendly_name: meta.friendly_name.clone(),
                    hostnames: am.hostnames.clone(),
                    not_after: Some(info.not_after),
                    error: am.last_result.clone().unwrap_or_default(),
                };
                if crate::alerts::send(&config.alerts, &alert).await {
                    am.last_alert = Some(now_seconds());
                    am.last_alert_kind = Some(kind.to_owned());
                    let (dir, id2, am2) = (store_dir.to_owned(), id.clone(), am.clone());
                    if let Err(e) = blocking(move || Ok(Store::open_existing(&dir)?.update_acme(&id2, &am2)?)).await {
                        tracing::error!(%id, error = %format!("{e:#}"), "recording the alert");
                    }
                }
            }
            if kind == "error" {
                let next_daily = am.last_alert.map_or(now, |t| t + time::Duration::DAY);
                wake = wake.min((next_daily - now).max(time::Duration::SECOND).unsigned_abs());
            } else {
                // Wake when the failure turns into the error state.
                wake = wake.min((s.error_at - now).max(time::Duration::SECOND).unsigned_abs());
            }
        }
    }
    wake.max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn days(d: f64) -> Duration {
        Duration::from_secs_f64(d * 86_400.0)
    }

    #[test]
    fn thresholds_scale_with_the_lifetime() {
        let p = Policy::default();
        let t0 = OffsetDateTime::UNIX_EPOCH;
        let (renew, alert) = p.thresholds(t0, t0 + time::Duration::days(90));
        assert_eq!((renew, alert), (days(30.0), days(25.0)));
        let (renew, alert) = p.thresholds(t0, t0 + time::Duration::days(45));
        assert_eq!(renew, days(15.0));
        assert!((alert.as_secs_f64() - days(12.5).as_secs_f64()).abs() < 1.0);
        let (renew, _) = p.thresholds(t0, t0 + time::Duration::days(365));
        assert_eq!(renew, days(30.0));
        // A renew_before above the lifetime is capped at a third of it.
        let big = Policy { renew_before: days(400.0), alert_before: days(300.0) };
        let (renew, alert) = big.thresholds(t0, t0 + time::Duration::seconds(300));
        assert_eq!(renew, Duration::from_secs(100));
        assert_eq!(alert, Duration::from_secs(75));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let t = days(30.0);
        assert_eq!(backoff(1, t), Duration::from_secs(300));
        assert_eq!(backoff(2, t), Duration::from_secs(600));
        assert_eq!(backoff(30, t), Duration::from_secs(6 * 3600));
        let short = Duration::from_secs(10);
        assert_eq!(backoff(1, short), Duration::from_secs(1));
        assert_eq!(backoff(5, short), Duration::from_millis(2500));
    }

    #[test]
    fn tokens_name_no_files_outside() {
        assert!(valid_token("LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"));
        assert!(!valid_token("../../../../etc/passwd"));
        assert!(!valid_token("short"));
        let c = Challenges::new(None);
        let g = c.publish("LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0", "ka", false).unwrap();
        assert_eq!(c.answer("LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0").as_deref(), Some("ka"));
        drop(g);
        assert_eq!(c.answer("LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"), None);
    }

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
