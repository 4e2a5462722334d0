//! The gauges the admin listener renders from the current snapshot at each scrape
//! (certificate expiry, failing ACME renewals), appended to the exporter's text.

use crate::metrics::names;
use crate::snapshot::Snapshot;

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
        "# HELP {n} Seconds until each stored certificate's not_after (negative once expired)\n# TYPE {n} gauge",
        n = names::CERTIFICATE_EXPIRY
    );
    for c in &snapshot.certificates {
        let _ = writeln!(
            out,
            "{}{{id=\"{}\",friendly_name=\"{}\"}} {}",
            names::CERTIFICATE_EXPIRY,
            label(&c.id),
            label(&c.friendly_name),
            c.not_after - now
        );
    }
    let views = crate::ops::views::snapshot_views(snapshot);
    if views.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "# HELP {n} 1 while an ACME certificate's renewal is failing below its alert threshold (the error state), else 0\n# TYPE {n} gauge",
        n = names::ACME_RENEWAL_FAILING
    );
    for v in views {
        let failing = u8::from(v.status.failing(v.failures));
        let _ = writeln!(out, "{}{{id=\"{}\"}} {failing}", names::ACME_RENEWAL_FAILING, label(&v.id));
    }
}
