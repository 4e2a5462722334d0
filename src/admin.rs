//! The admin listener: `/metrics` (Prometheus), `/healthz`, `/status` (HTML) and
//! `/status.json` (the same data). Bound to 127.0.0.1 by default.

pub mod scrape;
pub mod status_page;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::http::{Body, full, http_get, text};
use crate::snapshot::Snapshot;

/// What the daemon knows about its reloads, for `/status.json` and `portcullis status`.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ReloadStatus {
    pub generation: u64,
    /// RFC 3339 time of the last published snapshot.
    pub last_success: Option<String>,
    /// The last failed reload, if it is more recent than the last success.
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
}

/// A listener, its addresses, which certificates it may serve and its fallback.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ListenerRow {
    pub name: String,
    pub bind: Vec<String>,
    /// The assigned certificates in assignment order; empty: every certificate in the
    /// store is a candidate (auto-selection).
    #[serde(default)]
    pub assigned: Vec<String>,
    /// Served without SNI or for an unknown name (unless the policy rejects those).
    #[serde(default)]
    pub fallback: String,
    /// Why: "listener default", "global default", "earliest-assigned certificate" or
    /// "factory default".
    #[serde(default)]
    pub fallback_reason: String,
}

impl ListenerRow {
    /// "all certificates (auto-selection)" or the assigned ids.
    pub fn candidates(&self) -> String {
        if self.assigned.is_empty() {
            "all certificates (auto-selection)".into()
        } else {
            format!("assigned only: {}", self.assigned.join(", "))
        }
    }
}

/// The listener rows of a snapshot.
pub fn listener_rows(snapshot: &Snapshot) -> Vec<ListenerRow> {
    snapshot
        .listeners
        .iter()
        .map(|l| {
            let (fallback, kind) = l.certs.fallback_served();
            ListenerRow {
                name: l.config.name.clone(),
                bind: l.config.bind.iter().map(ToString::to_string).collect(),
                assigned: l.assigned.clone().unwrap_or_default(),
                fallback: fallback.id.to_string(),
                fallback_reason: kind.as_str().to_owned(),
            }
        })
        .collect()
}

/// A row of the certificate table, as the guides show it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CertRow {
    pub id: String,
    pub friendly_name: String,
    pub issued_to: String,
    pub issued_by: String,
    pub not_after: String,
    pub days_left: i64,
    /// "expires in 12 days", "expired 3 days ago".
    #[serde(default)]
    pub expiry: String,
    #[serde(default)]
    pub expired: bool,
    pub sans: Vec<String>,
    pub private_key: bool,
    pub default: bool,
    pub listeners: Vec<String>,
    pub warnings: Vec<String>,
    /// ACME certificates: valid, renewing, retrying, error or expired.
    pub acme_status: Option<crate::acme::policy::Status>,
}

/// A root or intermediate of the trust pool.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TrustRow {
    pub fingerprint_sha256: String,
    /// "root" or "intermediate".
    pub role: String,
    pub subject: String,
    pub issued_by: String,
    pub not_after: String,
    pub expiry: String,
    pub expired: bool,
    /// Always false: the trust pool holds no keys (the appliance's table says so too).
    pub private_key: bool,
    pub used_by: Vec<String>,
}

/// The daemon's view, served as `/status.json` and rendered as `/status`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct DaemonStatus {
    pub version: String,
    #[serde(default)]
    pub hostname: String,
    pub pid: u32,
    #[serde(default)]
    pub uptime_secs: u64,
    #[serde(default)]
    pub listeners: Vec<ListenerRow>,
    #[serde(default)]
    pub certificates: Vec<CertRow>,
    #[serde(default)]
    pub trust: Vec<TrustRow>,
    pub reload: ReloadStatus,
    /// Store entries skipped (or kept at their last good version) by the last build.
    pub problems: Vec<String>,
    /// ACME certificates and their renewal status, as of the renewer's last pass.
    #[serde(default)]
    pub acme: Vec<crate::acme::policy::AcmeView>,
    /// The last admin jobs, newest last.
    #[serde(default)]
    pub jobs: Vec<crate::jobs::result::JobResult>,
}

/// Serves the admin endpoints until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    prometheus: PrometheusHandle,
    snapshot: Arc<ArcSwap<Snapshot>>,
    reloads: Arc<ArcSwap<ReloadStatus>>,
    jobs: crate::jobs::result::Recent,
    shutdown: CancellationToken,
) {
    STARTED.get_or_init(std::time::Instant::now);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let node = crate::hostname().map(|h| h.to_ascii_lowercase());
    loop {
        let Some((tcp, _)) = crate::http::accept(&listener, "admin", &shutdown).await else { return };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else { continue }; // dropped: closed
        let prometheus = prometheus.clone();
        let snapshot = Arc::clone(&snapshot);
        let reloads = Arc::clone(&reloads);
        let jobs = Arc::clone(&jobs);
        let node = node.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let resp = if allowed_host(&req, node.as_deref()) {
                    answer(req.uri().path(), &prometheus, &snapshot, &reloads, &jobs)
                } else {
                    text(
                        StatusCode::MISDIRECTED_REQUEST,
                        "421 Misdirected Request: use the admin listener's address, localhost or this node's name as Host\n",
                    )
                };
                std::future::ready(Ok::<_, std::convert::Infallible>(resp))
            });
            let conn = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(tcp), service);
            // Responses are small; a reader that stalls one (or keeps the connection
            // alive forever) loses it after this long.
            let _ = tokio::time::timeout(MAX_LIFETIME, conn).await;
        });
    }
}

/// Connections the admin listener serves at once; more are closed at accept. A few
/// scrapers and browsers need a handful, and the cap keeps the listener from taking the
/// file descriptors the TLS listeners need.
pub const MAX_CONNECTIONS: usize = 64;
/// Time for a request's headers (and between keep-alive requests).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest life of an admin connection.
pub const MAX_LIFETIME: Duration = Duration::from_secs(60);

/// DNS rebinding: a page in a browser on this machine can make its own name resolve to
/// 127.0.0.1 and read the admin listener, but it cannot choose the Host header, which
/// stays its own name. So the admin answers only an IP literal, `localhost` (and
/// `*.localhost`, RFC 6761) or this node's host name. HTTP/1.0 without Host is local
/// tooling and allowed.
fn allowed_host<B>(req: &Request<B>, node: Option<&str>) -> bool {
    let Some(host) = req.headers().get(hyper::header::HOST) else { return req.version() == hyper::Version::HTTP_10 };
    let Ok(host) = host.to_str() else { return false };
    let name = match host.strip_prefix('[') {
        Some(v6) => return v6.split_once(']').is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok()),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name == "localhost"
        || name.ends_with(".localhost")
        || node.is_some_and(|n| n == name || n.split('.').next() == Some(&name))
}

fn answer(
    path: &str,
    prometheus: &PrometheusHandle,
    snapshot: &ArcSwap<Snapshot>,
    reloads: &ArcSwap<ReloadStatus>,
    jobs: &crate::jobs::result::Recent,
) -> Response<Body> {
    match path {
        "/status.json" | "/status" => {
            let status = daemon_status(&snapshot.load(), reloads, jobs);
            let (body, kind) = if path == "/status" {
                (status_page::render(&status).into_bytes(), "text/html; charset=utf-8")
            } else {
                (serde_json::to_vec_pretty(&status).unwrap_or_default(), "application/json")
            };
            let mut resp = Response::new(full(body));
            resp.headers_mut().insert(hyper::header::CONTENT_TYPE, kind.parse().expect("static"));
            resp
        }
        "/metrics" => {
            let mut body = prometheus.render();
            scrape::render_certificates(&snapshot.load(), &mut body);
            let mut resp = Response::new(full(body));
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8".parse().expect("static"),
            );
            resp
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        _ => text(StatusCode::NOT_FOUND, "not found: try /status, /status.json, /metrics or /healthz\n"),
    }
}

/// When the admin listener started: the daemon's uptime.
static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

fn daemon_status(
    snapshot: &Snapshot,
    reloads: &ArcSwap<ReloadStatus>,
    jobs: &crate::jobs::result::Recent,
) -> DaemonStatus {
    let now = time::OffsetDateTime::now_utc();
    let acme = crate::ops::snapshot_views(snapshot);
    // By id: one lookup per row, not a scan of the ACME list (10,000+ certificates).
    let acme_status: std::collections::HashMap<&str, crate::acme::policy::Status> =
        acme.iter().map(|a| (a.id.as_str(), a.status)).collect();
    let certificates = snapshot
        .certificates
        .iter()
        .map(|c| {
            let not_after = time::OffsetDateTime::from_unix_timestamp(c.not_after).unwrap_or(now);
            CertRow {
                id: c.id.to_string(),
                friendly_name: c.friendly_name.to_string(),
                issued_to: c.issued_to.to_string(),
                issued_by: c.issued_by.to_string(),
                not_after: crate::pki::rfc3339(not_after),
                days_left: crate::pki::days_left(not_after, now),
                expiry: crate::pki::expiry_phrase(not_after, now),
                expired: now > not_after,
                sans: c.sans.clone(),
                private_key: c.has_key,
                default: c.default,
                listeners: c.listeners.clone(),
                warnings: c.warnings.clone(),
                acme_status: acme_status.get(&*c.id).copied(),
            }
        })
        .collect();
    DaemonStatus {
        version: crate::LONG_VERSION.into(),
        hostname: crate::hostname().unwrap_or_default(),
        pid: std::process::id(),
        uptime_secs: STARTED.get().map_or(0, |t| t.elapsed().as_secs()),
        listeners: listener_rows(snapshot),
        certificates,
        trust: snapshot
            .trust
            .iter()
            .map(|t| {
                let not_after = time::OffsetDateTime::from_unix_timestamp(t.not_after).unwrap_or(now);
                TrustRow {
                    fingerprint_sha256: t.fingerprint_sha256.clone(),
                    role: if t.root { "root" } else { "intermediate" }.into(),
                    subject: t.subject.clone(),
                    issued_by: t.issued_by.clone(),
                    not_after: crate::pki::rfc3339(not_after),
                    expiry: crate::pki::expiry_phrase(not_after, now),
                    expired: now > not_after,
                    private_key: false,
                    used_by: t.used_by.iter().map(ToString::to_string).collect(),
                }
            })
            .collect(),
        reload: (**reloads.load()).clone(),
        problems: snapshot.problems.iter().chain(&snapshot.permissions).cloned().collect(),
        acme,
        jobs: jobs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().cloned().collect(),
    }
}

/// Asks a running daemon for its status (`portcullis status`); `None` if none answers.
pub fn query(addr: SocketAddr) -> Option<DaemonStatus> {
    let (status, body) = http_get(addr, "/status.json")?;
    if status != 200 {
        return None;
    }
    serde_json::from_str(&body).ok()
}

/// Binds the admin listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
