//! The renewal rules, pure: `[acme]` thresholds scaled to a certificate's lifetime
//! ([`Policy`]), where a certificate stands ([`Status`], [`schedule`]), the backoff after
//! a failure, and the [`AcmeView`] rows `acme status`, `cert list` and the admin status
//! show. The snapshot carries a `Policy`; nothing here orders or writes.

use std::time::Duration;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::config::Acme as AcmeConfig;
use crate::pki::{CertInfo, rfc3339};
use crate::store::{AcmeMeta, CertMeta, Store};

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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Configured in `[[acme.certificate]]`, no certificate yet (`acme status` only).
    NotIssued,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Status {
    /// A failing renewal below the alert threshold: the error state (an expired
    /// certificate whose renewal failed counts too).
    pub fn failing(self, failures: u32) -> bool {
        self == Self::Error || (self == Self::Expired && failures > 0)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Valid => "valid",
            Self::Renewing => "renewing",
            Self::Retrying => "retrying",
            Self::Error => "error",
            Self::Expired => "expired",
            Self::NotIssued => "not-issued",
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
    pub status: Status,
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

pub fn schedule_at(
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

pub fn view_at(
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
        status: s.status,
        renew_at: rfc3339(s.renew_at),
        error_at: rfc3339(s.error_at),
        next_attempt: acme.next_attempt.map(rfc3339),
        last_attempt: acme.last_attempt.map(rfc3339),
        last_result: acme.last_result.clone(),
        failures: acme.failures,
    })
}

/// Every ACME certificate in the store, for `acme status`.
pub fn store_views(store: &Store, policy: &Policy, now: OffsetDateTime) -> Result<Vec<AcmeView>> {
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
}
