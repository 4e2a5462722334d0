//! `/status`: the node and its certificates as server-rendered HTML (the same data as
//! `/status.json`). One page, inline CSS, no scripts or external assets; the tables
//! scroll sideways on a phone.

use std::fmt::Write;

use crate::ops::views::DaemonStatus;

/// Escapes text for HTML element content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const CSS: &str = "\
body{font:15px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;max-width:80rem;padding:1rem;color:#1b1f24;background:#fff}\
h1{font-size:1.4rem;margin:.2rem 0}h2{font-size:1.1rem;margin:1.6rem 0 .4rem}\
.meta{color:#57606a}.wrap{overflow-x:auto}\
table{border-collapse:collapse;width:100%;font-size:.9rem}\
th,td{text-align:left;padding:.35rem .5rem;border-bottom:1px solid #d0d7de;vertical-align:top}\
td{overflow-wrap:anywhere}.fp code{word-break:break-all}\
th{background:#f6f8fa;white-space:nowrap}\
.ok{color:#1a7f37}.warn{color:#9a6700}.bad{color:#cf222e;font-weight:600}\
code{font-size:.85rem}#reload th{width:9rem}\
@media (prefers-color-scheme:dark){body{background:#0d1117;color:#e6edf3}th{background:#161b22}th,td{border-color:#30363d}.meta{color:#8b949e}}";

fn class_of_status(s: &str) -> &'static str {
    match s {
        "valid" | "done" | "ok" => "ok",
        "renewing" | "retrying" => "warn",
        _ => "bad",
    }
}

/// The certificates heading, how many are shown of how many, a filter form (no script),
/// and links to the previous and next pages.
fn page_controls(h: &mut String, p: &crate::ops::views::PageInfo, shown: usize) {
    let filter = p.filter.as_deref().unwrap_or("");
    let link = |offset: usize| {
        let mut q = form_urlencoded::Serializer::new(String::new());
        if !filter.is_empty() {
            q.append_pair("filter", filter);
        }
        q.append_pair("limit", &p.limit.to_string()).append_pair("offset", &offset.to_string());
        format!("/status?{}", q.finish())
    };
    let range = if shown == 0 { "none".to_owned() } else { format!("{}–{}", p.offset + 1, p.offset + shown) };
    let of = if p.filter.is_some() {
        format!("{} matching “{}” ({} in all)", p.matched, esc(filter), p.total)
    } else {
        p.total.to_string()
    };
    let _ = write!(
        h,
        "<h2>Certificates</h2><form id=filter method=get action=/status class=meta>\
         <label>Filter <input name=filter value='{value}' placeholder='id, name or hostname'></label> \
         <input type=hidden name=limit value='{limit}'><button>Show</button> \
         <span id=shown>showing {range} of {of}</span>",
        value = esc(filter),
        limit = p.limit,
    );
    if p.offset > 0 {
        let _ = write!(h, " <a id=prev href='{}'>previous</a>", esc(&link(p.offset.saturating_sub(p.limit))));
    }
    if p.offset + shown < p.matched {
        let _ = write!(h, " <a id=next href='{}'>next</a>", esc(&link(p.offset + shown)));
    }
    h.push_str("</form>");
}

/// Renders the page.
pub fn render(s: &DaemonStatus) -> String {
    let mut h = String::with_capacity(16 * 1024);
    let _ = write!(
        h,
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
         <meta name=viewport content='width=device-width,initial-scale=1'>\
         <title>Portcullis on {host}</title><style>{CSS}</style></head><body>\
         <h1>Portcullis on {host}</h1>\
         <p class=meta>version {version} · pid {pid} · up {uptime} · snapshot generation {generation}</p>",
        host = esc(&s.hostname),
        version = esc(&s.version),
        pid = s.pid,
        uptime = uptime(s.uptime_secs),
        generation = s.reload.generation,
    );

    if let Some(c) = &s.cluster {
        let (class, state) =
            if c.connected { ("", "in sync") } else { ("bad", "cut off from etcd: serving its last copy") };
        let _ = write!(
            h,
            "<h2>Cluster</h2><div class=wrap><table id=cluster><tr><th>Node<th>etcd<th>Applied revision<th>Lag\
             <th>Renewer<th>Sync errors<th>Last error</tr><tr><td>{node}<td class='{class}'>{state}<td>{applied}<td>{lag}\
             <td>{renewer}<td>{errors}<td>{last}</tr></table></div>",
            node = esc(&c.node),
            applied = c.applied_revision,
            lag = c.lag,
            renewer = if c.is_renewer {
                "this node".to_owned()
            } else {
                esc(c.renewer.as_deref().and_then(|r| r.split(' ').next()).unwrap_or("none elected"))
            },
            errors = c.sync_errors,
            last = esc(c.last_error.as_deref().unwrap_or("–")),
        );
    }

    h.push_str(
        "<h2>Listeners</h2><div class=wrap><table id=listeners><tr><th>Name<th>Addresses<th>Certificates\
         <th>Fallback (no SNI, unknown name)</tr>",
    );
    for l in &s.listeners {
        let _ = write!(
            h,
            "<tr><td>{}<td>{}<td>{}<td>{} <span class=meta>({})</span></tr>",
            esc(&l.name),
            esc(&l.bind.join(", ")),
            esc(&l.candidates()),
            esc(&l.fallback),
            esc(&l.fallback_reason)
        );
    }
    h.push_str("</table></div>");

    page_controls(&mut h, &s.page, s.certificates.len());
    let _ = write!(
        h,
        "<div class=wrap><table id=certificates><tr>\
         <th>Friendly name<th>Issued to<th>Issued by<th>Expiration<th>Alternative names\
         <th>Private key<th>Default<th>Listeners<th>ACME<th>Warnings</tr>"
    );
    for c in &s.certificates {
        let expiry_class = if c.expired {
            "bad"
        } else if c.days_left < 14 {
            "warn"
        } else {
            ""
        };
        let acme = c
            .acme_status
            .map(crate::acme::policy::Status::as_str)
            .map_or_else(|| "–".to_owned(), |st| format!("<span class={}>{}</span>", class_of_status(st), esc(st)));
        let _ = write!(
            h,
            "<tr data-id='{id}'><td>{name}<td>{to}<td>{by}<td class='{expiry_class}'>{exp} ({days})<td>{sans}\
             <td>{key}<td>{default}<td>{listeners}<td>{acme}<td class=warn>{warnings}</tr>",
            id = esc(&c.id),
            name = esc(&c.friendly_name),
            to = esc(&c.issued_to),
            by = esc(&c.issued_by),
            exp = esc(c.not_after.get(..10).unwrap_or(&c.not_after)),
            days = esc(&c.expiry),
            sans = esc(&c.sans.join(", ")),
            key = if c.private_key { "yes" } else { "<span class=bad>no</span>" },
            default = if c.default { "yes" } else { "" },
            listeners = esc(&c.listeners.join(", ")),
            warnings = esc(&c.warnings.join("; ")),
        );
    }
    h.push_str("</table></div>");

    if !s.trust.is_empty() {
        h.push_str(
            "<h2>Trust pool</h2><div class=wrap><table id=trust><tr><th>Subject<th>Role<th>Issued by\
             <th>Expiration<th>Private key<th>Used by<th>SHA-256 fingerprint</tr>",
        );
        for t in &s.trust {
            let _ = write!(
                h,
                "<tr data-fingerprint='{fp}'><td>{subject}<td>{role}<td>{by}<td class='{class}'>{exp} ({expiry})\
                 <td>no<td>{used}<td class=fp><code>{fp}</code></tr>",
                fp = esc(&t.fingerprint_sha256),
                subject = esc(&t.subject),
                role = esc(&t.role),
                by = esc(&t.issued_by),
                class = if t.expired { "bad" } else { "" },
                exp = esc(t.not_after.get(..10).unwrap_or(&t.not_after)),
                expiry = esc(&t.expiry),
                used = if t.used_by.is_empty() { "–".to_owned() } else { esc(&t.used_by.join(", ")) },
            );
        }
        h.push_str("</table></div>");
    }

    if !s.acme.is_empty() {
        h.push_str(
            "<h2>ACME renewal</h2><div class=wrap><table id=acme><tr><th>Certificate<th>Hostnames<th>Status\
             <th>Renewal from<th>Next attempt<th>Last attempt<th>Result</tr>",
        );
        for a in &s.acme {
            let _ = write!(
                h,
                "<tr><td>{}<td>{}<td class={}>{}<td>{}<td>{}<td>{}<td>{}</tr>",
                esc(&a.friendly_name),
                esc(&a.hostnames.join(", ")),
                class_of_status(a.status.as_str()),
                esc(a.status.as_str()),
                esc(&a.renew_at),
                esc(a.next_attempt.as_deref().unwrap_or("–")),
                esc(a.last_attempt.as_deref().unwrap_or("–")),
                esc(a.last_result.as_deref().unwrap_or("–")),
            );
        }
        h.push_str("</table></div>");
    }

    h.push_str("<h2>Last reload</h2><div class=wrap><table id=reload>");
    let _ = write!(h, "<tr><th>Last success<td class=ok>{}</tr>", esc(s.reload.last_success.as_deref().unwrap_or("–")));
    if let Some(err) = &s.reload.last_error {
        let _ = write!(
            h,
            "<tr><th>Last error<td class=bad>{} {}</tr>",
            esc(s.reload.last_error_at.as_deref().unwrap_or("")),
            esc(err)
        );
    }
    for p in &s.problems {
        let _ = write!(h, "<tr><th>Problem<td class=warn>{}</tr>", esc(p));
    }
    h.push_str("</table></div>");

    h.push_str("<h2>Recent jobs</h2>");
    if s.jobs.is_empty() {
        h.push_str("<p class=meta>No admin jobs since start.</p>");
    } else {
        h.push_str("<div class=wrap><table id=jobs><tr><th>Job<th>Action<th>Status<th>Finished<th>Detail</tr>");
        for j in s.jobs.iter().rev() {
            let detail = j.error.clone().unwrap_or_else(|| j.messages.join("; "));
            let _ = write!(
                h,
                "<tr><td>{}<td>{}<td class={}>{}<td>{}<td>{}</tr>",
                esc(&j.job),
                esc(&j.action),
                class_of_status(j.status.as_str()),
                esc(j.status.as_str()),
                esc(&j.finished),
                esc(&detail)
            );
        }
        h.push_str("</table></div>");
    }
    h.push_str("<p class=meta>Machine-readable: <a href=/status.json>/status.json</a> · <a href=/metrics>/metrics</a></p></body></html>\n");
    h
}

fn uptime(secs: u64) -> String {
    let (d, h, m) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60);
    if d > 0 {
        format!("{d}d {h}h {m}m")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else {
        format!("{m}m {}s", secs % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc("<script>alert('x')</script> & \""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;"
        );
    }
}
