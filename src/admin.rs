//! The admin listener: `/metrics` (Prometheus), `/healthz`. Bound to 127.0.0.1 by default.

pub mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::proxy::handler::{Body, full, text};
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

/// The daemon's view, served as `/status.json`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct DaemonStatus {
    pub version: String,
    pub pid: u32,
    pub reload: ReloadStatus,
    /// Store entries skipped (or kept at their last good version) by the last build.
    pub problems: Vec<String>,
    /// ACME certificates and their renewal status, as of the renewer's last pass.
    #[serde(default)]
    pub acme: Vec<crate::acme::AcmeView>,
    /// The last admin jobs, newest last.
    #[serde(default)]
    pub jobs: Vec<crate::jobs::JobResult>,
}

/// Serves the admin endpoints until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    prometheus: PrometheusHandle,
    snapshot: Arc<ArcSwap<Snapshot>>,
    reloads: Arc<ArcSwap<ReloadStatus>>,
    jobs: crate::jobs::Recent,
    shutdown: CancellationToken,
) {
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
            () = shutdown.cancelled() => return,
        };
        let prometheus = prometheus.clone();
        let snapshot = Arc::clone(&snapshot);
        let reloads = Arc::clone(&reloads);
        let jobs = Arc::clone(&jobs);
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let resp = answer(req.uri().path(), &prometheus, &snapshot, &reloads, &jobs);
                std::future::ready(Ok::<_, std::convert::Infallible>(resp))
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
        });
    }
}

fn answer(
    path: &str,
    prometheus: &PrometheusHandle,
    snapshot: &ArcSwap<Snapshot>,
    reloads: &ArcSwap<ReloadStatus>,
    jobs: &crate::jobs::Recent,
) -> Response<Body> {
    match path {
        "/status.json" => {
            let status = DaemonStatus {
                version: crate::VERSION.into(),
                pid: std::process::id(),
                reload: (**reloads.load()).clone(),
                problems: snapshot.load().problems.clone(),
                acme: crate::acme::snapshot_views(&snapshot.load()),
                jobs: jobs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().cloned().collect(),
            };
            let mut resp = Response::new(full(serde_json::to_vec_pretty(&status).unwrap_or_default()));
            resp.headers_mut().insert(hyper::header::CONTENT_TYPE, "application/json".parse().expect("static"));
            resp
        }
        "/metrics" => {
            metrics::refresh_certificate_expiry(&snapshot.load());
            let mut resp = Response::new(full(prometheus.render()));
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8".parse().expect("static"),
            );
            resp
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        _ => text(StatusCode::NOT_FOUND, "not found: try /metrics, /healthz or /status.json\n"),
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

/// A plain HTTP/1.0 GET on loopback: (status, body), or `None` if nothing answers.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let timeout = std::time::Duration::from_secs(2);
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((status, body.to_owned()))
}

/// Binds the admin listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
