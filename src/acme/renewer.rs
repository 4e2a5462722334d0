//! The daemon's renewer: a pass at start, on every configuration change that matters,
//! on SIGHUP and the rescan, and when the next renewal, retry or alert falls due (with
//! jitter). A pass orders missing `[[acme.certificate]]` entries, renews what is due
//! (earlier if the CA's renewal information says so, RFC 9773) and sends alerts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use instant_acme::Account;
use time::OffsetDateTime;

use super::account::{StoredAccount, account_path, describe};
use super::blocking;
use super::challenges::{Challenges, Responder};
use super::policy::{Policy, Status, backoff, schedule};
use super::request::{RequestParams, find_entry, now_seconds, renew, request};
use crate::config::{self, Acme as AcmeConfig};
use crate::pki::CertInfo;
use crate::store::{AcmeMeta, Store};

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
    cluster: Option<ClusterRole>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut pending: HashMap<Vec<String>, (u32, OffsetDateTime)> = HashMap::new();
    let mut ari = AriCache::default();
    let mut cut_off_alerts = HashMap::new();
    let elected = async |c: &Option<ClusterRole>| match c {
        Some(c) => c.status.elected.notified().await,
        None => std::future::pending().await,
    };
    loop {
        let config = configs.borrow_and_update().clone();
        let wake = match (&config.acme, &cluster) {
            (Some(acme), None) => {
                pass(&config, acme, &store_dir, responder(&challenges, None), None, &mut pending, &mut ari).await
            }
            (Some(acme), Some(role)) if role.status.fence().is_some() => {
                cluster_pass(role, &config, acme, &store_dir, &challenges, &mut pending, &mut ari).await
            }
            (Some(acme), Some(role)) => {
                // Not the renewer: look again now and then (election wakes it at once).
                if role.status.connected.load(std::sync::atomic::Ordering::Relaxed) {
                    Duration::from_secs(30)
                } else {
                    alert_cut_off(&config, acme, &store_dir, &role.cluster, &mut cut_off_alerts).await;
                    Duration::from_secs(5)
                }
            }
            (None, _) => CHECK_INTERVAL,
        };
        tracing::debug!(secs = wake.as_secs_f64(), "next ACME check");
        let deadline = tokio::time::Instant::now() + wake;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                // SIGHUP and the periodic rescan: failures recorded by `acme renew`, a
                // deleted certificate of [[acme.certificate]].
                () = kick.notified() => break,
                () = elected(&cluster) => break,
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
            *account = Some(if stored { super::account::account(acme, store_dir, &quiet).await.ok() } else { None });
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

/// Cut off from etcd, no node renews or records anything, yet a certificate in its
/// error window must still alert: each node cut off checks its own copy and alerts at
/// most daily per certificate (remembered in memory; nothing can be written). The
/// renewer's own daily alerts, recorded in the store, count too.
async fn alert_cut_off(
    config: &config::Config,
    acme: &AcmeConfig,
    store_dir: &Path,
    cluster: &crate::cluster::Cluster,
    sent: &mut HashMap<String, OffsetDateTime>,
) {
    let policy = Policy::of(Some(acme));
    let dir = store_dir.to_owned();
    let entries = blocking(move || {
        let store = Store::open_read_only(&dir)?;
        let mut out = Vec::new();
        for id in store.cert_ids()? {
            if let Ok(e) = store.read_cert(&id)
                && let Some(am) = e.meta.acme.clone()
            {
                out.push((e.id, e.meta.friendly_name, e.info, am));
            }
        }
        Ok(out)
    })
    .await
    .unwrap_or_default();
    let now = OffsetDateTime::now_utc();
    for (id, friendly_name, info, am) in entries {
        let s = schedule(&am, &info, &policy, now);
        if !matches!(s.status, Status::Error | Status::Expired) {
            continue;
        }
        let last = sent.get(&id).copied().max(am.last_alert.filter(|_| am.last_alert_kind.as_deref() == Some("error")));
        if last.is_some_and(|t| now - t < time::Duration::DAY) {
            continue;
        }
        let alert = crate::alerts::Alert {
            kind: "error",
            id: id.clone(),
            friendly_name,
            hostnames: am.hostnames.clone(),
            not_after: Some(info.not_after),
            error: format!(
                "renewals are paused: node {} is cut off from etcd ({}), and no renewer can write",
                cluster.node(),
                cluster.endpoints()
            ),
        };
        tracing::warn!(%id, "ACME: certificate in its error window while cut off from etcd");
        if crate::alerts::send(&config.alerts, &alert).await {
            sent.insert(id, now);
        }
    }
}

/// On a cluster: the node's client and what it knows (is it the renewer?).
#[derive(Clone)]
pub struct ClusterRole {
    pub cluster: crate::cluster::Cluster,
    pub status: Arc<crate::cluster::Status>,
}

/// A pass on a cluster, run only by the elected renewer: on a scratch copy read from
/// etcd, committed at the end under its fence, so a renewer deposed meanwhile (paused
/// past its lease, cut off) writes nothing. Other nodes look again when elected.
async fn cluster_pass(
    role: &ClusterRole,
    config: &config::Config,
    acme: &AcmeConfig,
    store_dir: &Path,
    challenges: &Challenges,
    pending: &mut HashMap<Vec<String>, (u32, OffsetDateTime)>,
    ari: &mut AriCache,
) -> Duration {
    const RETRY: Duration = Duration::from_secs(5);
    let Some(fence) = role.status.fence() else { return CHECK_INTERVAL };
    let mut work = match crate::cluster::Work::begin(&role.cluster, store_dir).await {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "ACME: renewals pause while etcd is unavailable");
            return RETRY;
        }
    };
    let tokens = super::challenges::ClusterTokens {
        cluster: role.cluster.clone(),
        lease: role.status.lease(),
        fence: Some(fence.clone()),
    };
    let dir = work.dir().to_owned();
    let on_cluster = OnCluster { role: role.clone(), fence: fence.clone(), work: &mut work, home: store_dir };
    let wake = pass(config, acme, &dir, responder(challenges, Some(tokens)), Some(on_cluster), pending, ari).await;
    match work.commit(&role.cluster, Some(&fence), store_dir).await {
        Ok(Some(rev)) => tracing::info!(revision = rev, "ACME: renewer pass committed"),
        Ok(None) => {}
        Err(e) => {
            tracing::error!(error = %e, "ACME: the renewer pass's changes were not committed");
            return RETRY;
        }
    }
    wake
}

/// The daemon answers challenges from memory (and on a cluster through etcd too).
fn responder(challenges: &Challenges, cluster: Option<super::challenges::ClusterTokens>) -> Responder {
    Responder { challenges: challenges.clone(), on_disk: false, check: Vec::new(), cluster }
}

async fn pass(
    config: &config::Config,
    acme: &AcmeConfig,
    store_dir: &Path,
    responder: Responder,
    cluster: Option<OnCluster<'_>>,
    pending: &mut HashMap<Vec<String>, (u32, OffsetDateTime)>,
    ari: &mut AriCache,
) -> Duration {
    let mut pass =
        Pass { config, acme, store_dir, responder, policy: Policy::of(Some(acme)), wake: CHECK_INTERVAL, cluster };
    pass.order_missing(pending).await;
    pass.renew_due(ari).await;
    pass.wake.max(Duration::from_secs(1))
}

/// One pass of the renewer: what it works with, and when it wants to run again.
struct Pass<'a> {
    config: &'a config::Config,
    acme: &'a AcmeConfig,
    store_dir: &'a Path,
    responder: Responder,
    policy: Policy,
    /// The earliest moment something falls due (a renewal, a retry, an alert).
    wake: Duration,
    /// On a cluster: the office this pass runs under and its scratch copy.
    cluster: Option<OnCluster<'a>>,
}

/// A renewer pass on a cluster: who holds the office, and the scratch copy it works on
/// for the node's store at `home`.
struct OnCluster<'a> {
    role: ClusterRole,
    fence: crate::cluster::Fence,
    work: &'a mut crate::cluster::Work,
    home: &'a Path,
}

fn log_line(line: &str) {
    tracing::info!(target: "acme", "{line}");
}

impl Pass<'_> {
    fn soon(&mut self, after: Duration) {
        self.wake = self.wake.min(after);
    }

    /// Before each order on a cluster: is this node still the renewer (asked of etcd)?
    /// A renewer paused past its lease stops here instead of ordering what its
    /// successor orders; its commit would be refused anyway.
    /// Commits what the last order changed first, so each certificate is served on every
    /// node as soon as it is issued.
    async fn may_order(&mut self) -> bool {
        let Some(c) = self.cluster.as_mut() else { return true };
        if let Err(e) = c.work.checkpoint(&c.role.cluster, Some(&c.fence), c.home).await {
            tracing::error!(error = %e, "ACME: the renewer's last change was not committed; this pass stops");
            return false;
        }
        let held = c.role.status.fence().as_ref() == Some(&c.fence)
            && c.role.cluster.renewer().await.ok().flatten().as_deref() == Some(c.fence.token.as_str());
        if !held {
            tracing::warn!("ACME: no longer the cluster's renewer; this pass orders nothing more");
        }
        held
    }

    /// Orders the configured certificates that have no entry yet (with backoff per set
    /// of hostnames; the first failure alerts).
    async fn order_missing(&mut self, pending: &mut HashMap<Vec<String>, (u32, OffsetDateTime)>) {
        // Configured certificates that have no entry yet.
        let dir = self.store_dir.to_owned();
        let wanted = self.acme.certificates.clone();
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
                self.soon((*next - now).unsigned_abs());
                continue;
            }
            // Checked against [[listener]] when the configuration was loaded.
            let listeners = c.listeners.clone().filter(|l| self.config.check_listeners(l).is_ok()).unwrap_or_default();
            // The configuration declares the names: editing it is the operator's --replace.
            let params = RequestParams {
                hostnames: c.hostnames.clone(),
                key_type: c.key_type,
                name: c.name.clone(),
                listeners,
                replace: true,
                challenge: c.challenge,
                on_demand: false,
            };
            if !self.may_order().await {
                return;
            }
            match request(self.acme, self.store_dir, &params, &self.responder, &log_line).await {
                Ok(o) => {
                    pending.remove(&key);
                    self.soon(Duration::from_secs(1));
                    tracing::info!(id = %o.id, hostnames = %o.hostnames.join(","), "ACME certificate issued");
                }
                Err(e) => {
                    let failures = pending.get(&key).map_or(1, |p| p.0 + 1);
                    // A day is the renewal threshold of nothing yet: back off as for a 90-day certificate.
                    let wait = backoff(failures, self.policy.renew_before);
                    pending.insert(key.clone(), (failures, now + wait));
                    self.soon(wait);
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
                        crate::alerts::send(&self.config.alerts, &alert).await;
                    }
                }
            }
        }
    }

    /// Renews every ACME entry that is due (or that the CA's renewal information wants
    /// earlier), and alerts on failing ones.
    async fn renew_due(&mut self, ari: &mut AriCache) {
        // Every ACME entry: renew what is due, alert on failures.
        let dir = self.store_dir.to_owned();
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
            let s = schedule(&am, &info, &self.policy, now);
            // After a failure (also of a forced or ARI-early renewal) the backoff decides.
            let mut attempt_at = match am.next_attempt {
                Some(next) if am.failures > 0 => next,
                _ => s.renew_at,
            };
            // RFC 9773: the CA may want it renewed earlier (e.g. ahead of a revocation).
            if now < attempt_at
                && am.failures == 0
                && let Some(at) = ari.window(&mut account, self.acme, self.store_dir, &der).await
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
                    let (renew_threshold, _) = self.policy.thresholds(info.not_before, info.not_after);
                    jitter((renew_threshold / 20).min(Duration::from_secs(600)))
                };
                self.soon((attempt_at - now).unsigned_abs() + spread);
            } else {
                if !self.may_order().await {
                    return;
                }
                match renew(self.acme, self.store_dir, &id, true, &self.responder, &log_line).await {
                    Ok(_) => {
                        // The next pass schedules the new certificate's renewal.
                        self.soon(Duration::from_secs(1));
                        continue;
                    }
                    Err(e) => tracing::error!(%id, error = %format!("{e:#}"), "ACME renewal failed"),
                }
                // Re-read what renew() recorded.
                let (dir, id2) = (self.store_dir.to_owned(), id.clone());
                if let Ok(m) = blocking(move || Ok(Store::open_existing(&dir)?.read_meta(&id2)?)).await
                    && let Some(a) = m.acme
                {
                    am = a;
                }
                if let Some(next) = am.next_attempt {
                    self.soon((next - OffsetDateTime::now_utc()).max(time::Duration::SECOND).unsigned_abs());
                }
            }
            if am.failures > 0 {
                self.alert(&id, &meta.friendly_name, &info, &mut am).await;
            }
        }
    }

    /// A failing renewal: the first failure alerts ("renewal-failed"), the error state
    /// alerts when it begins and then daily ("error"); sets when to look again.
    async fn alert(&mut self, id: &str, friendly_name: &str, info: &CertInfo, am: &mut AcmeMeta) {
        let now = OffsetDateTime::now_utc();
        let s = schedule(am, info, &self.policy, now);
        let kind = if matches!(s.status, Status::Error | Status::Expired) { "error" } else { "renewal-failed" };
        let daily = am.last_alert.is_none_or(|t| now - t >= time::Duration::DAY);
        let escalated = am.last_alert_kind.as_deref() != Some(kind) && kind == "error";
        let first = am.last_alert_kind.is_none();
        if first || escalated || (kind == "error" && daily) {
            let alert = crate::alerts::Alert {
                kind,
                id: id.to_owned(),
                friendly_name: friendly_name.to_owned(),
                hostnames: am.hostnames.clone(),
                not_after: Some(info.not_after),
                error: am.last_result.clone().unwrap_or_default(),
            };
            if crate::alerts::send(&self.config.alerts, &alert).await {
                am.last_alert = Some(now_seconds());
                am.last_alert_kind = Some(kind.to_owned());
                let (dir, id2, am2) = (self.store_dir.to_owned(), id.to_owned(), am.clone());
                if let Err(e) = blocking(move || Ok(Store::open_existing(&dir)?.update_acme(&id2, &am2)?)).await {
                    tracing::error!(%id, error = %format!("{e:#}"), "recording the alert");
                }
            }
        }
        if kind == "error" {
            let next_daily = am.last_alert.map_or(now, |t| t + time::Duration::DAY);
            self.soon((next_daily - now).max(time::Duration::SECOND).unsigned_abs());
        } else {
            // Wake when the failure turns into the error state.
            self.soon((s.error_at - now).max(time::Duration::SECOND).unsigned_abs());
        }
    }
}
