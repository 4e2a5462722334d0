//! The gauges the admin listener renders from the current snapshot at each scrape
//! (certificate expiry, failing ACME renewals), appended to the exporter's text.

use crate::metrics::names;
use crate::snapshot::Snapshot;

/// Upper bounds of the expiry histogram's buckets, in seconds: expired, 1, 7, 14, 30, 60
/// and 90 days, one year.
const EXPIRY_BUCKETS: [i64; 8] = [0, 86_400, 604_800, 1_209_600, 2_592_000, 5_184_000, 7_776_000, 31_536_000];

/// The gauges derived from the snapshot, rendered at scrape time from the certificates
/// served now: a deleted certificate's series disappears with it (the exporter's
/// registry would keep reporting its last value).
pub fn render_certificates(snapshot: &Snapshot, out: &mut String) {
    use std::fmt::Write;
    fn label(s: &str) -> String {
        s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let _ = writeln!(
        out,
        "# HELP {n} Seconds until each stored certificate's not_after (negative once expired); the {max} soonest to expire when the store holds more\n# TYPE {n} gauge",
        n = names::CERTIFICATE_EXPIRY,
        max = snapshot.certificate_series,
    );
    // The soonest N in O(n): a store of 100,000 certificates must not be 100,000 series
    // per scrape, and the soonest are the ones an alert is about.
    let mut soonest: Vec<&crate::snapshot::CertSummary> = snapshot.certificates.iter().collect();
    let n = snapshot.certificate_series;
    if soonest.len() > n {
        soonest.select_nth_unstable_by_key(n - 1, |c| (c.not_after, std::sync::Arc::clone(&c.id)));
        soonest.truncate(n);
        soonest.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    }
    for c in soonest {
        let _ = writeln!(
            out,
            "{}{{id=\"{}\",friendly_name=\"{}\"}} {}",
            names::CERTIFICATE_EXPIRY,
            label(&c.id),
            label(&c.friendly_name),
            c.not_after - now
        );
    }
    // Every certificate, counted by time left: cumulative, as a Prometheus histogram.
    let _ = writeln!(
        out,
        "# HELP {n} Stored certificates by seconds until not_after (le=0: expired)\n# TYPE {n} histogram",
        n = names::CERTIFICATES_BY_EXPIRY
    );
    let mut counts = [0u64; EXPIRY_BUCKETS.len()];
    let mut sum = 0i64;
    for c in &snapshot.certificates {
        let left = c.not_after - now;
        sum = sum.saturating_add(left);
        for (bound, count) in EXPIRY_BUCKETS.iter().zip(&mut counts) {
            if left <= *bound {
                *count += 1;
            }
        }
    }
    for (bound, count) in EXPIRY_BUCKETS.iter().zip(counts) {
        let _ = writeln!(out, "{}_bucket{{le=\"{bound}\"}} {count}", names::CERTIFICATES_BY_EXPIRY);
    }
    let total = snapshot.certificates.len();
    let _ = writeln!(out, "{}_bucket{{le=\"+Inf\"}} {total}", names::CERTIFICATES_BY_EXPIRY);
    let _ = writeln!(out, "{}_sum {sum}", names::CERTIFICATES_BY_EXPIRY);
    let _ = writeln!(out, "{}_count {total}", names::CERTIFICATES_BY_EXPIRY);
    let views = crate::ops::views::snapshot_views(snapshot);
    if views.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "# HELP {n} 1 while an ACME certificate's renewal is failing below its alert threshold (the error state), else 0\n# TYPE {n} gauge",
        n = names::ACME_RENEWAL_FAILING
    );
    // Bounded like the expiry series: every failing one first, then the others by id.
    let mut views = views;
    if views.len() > snapshot.certificate_series {
        views.sort_by_key(|v| !v.status.failing(v.failures));
        views.truncate(snapshot.certificate_series);
        views.sort_by(|a, b| a.id.cmp(&b.id));
    }
    for v in views {
        let failing = u8::from(v.status.failing(v.failures));
        let _ = writeln!(out, "{}{{id=\"{}\"}} {failing}", names::ACME_RENEWAL_FAILING, label(&v.id));
    }
}
