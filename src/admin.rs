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

use crate::http::{Body, full, text};
use crate::ops::views::{ReloadStatus, daemon_status};
use crate::snapshot::Reader;

/// Serves the admin endpoints until `shutdown`.
pub async fn serve(
    listener: std::net::TcpListener,
    prometheus: PrometheusHandle,
    snapshot: Reader,
    reloads: Arc<ArcSwap<ReloadStatus>>,
    jobs: crate::jobs::result::Recent,
    cluster: Option<(String, Arc<crate::cluster::Status>)>,
    shutdown: CancellationToken,
) {
    STARTED.get_or_init(std::time::Instant::now);
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "admin listener");
            return;
        }
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let node = crate::hostname().map(|h| h.to_ascii_lowercase());
    loop {
        let Some((tcp, _)) = crate::http::accept(&listener, "admin", &shutdown).await else { return };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else { continue }; // dropped: closed
        let prometheus = prometheus.clone();
        let snapshot = snapshot.clone();
        let reloads = Arc::clone(&reloads);
        let jobs = Arc::clone(&jobs);
        let node = node.clone();
        let cluster = cluster.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let resp = if allowed_host(&req, node.as_deref()) {
                    answer(req.uri(), &prometheus, &snapshot, &reloads, &jobs, cluster.as_ref())
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

/// Certificates on one status page unless `limit` says otherwise: a page of 100,000 rows
/// is tens of megabytes.
pub const STATUS_PAGE_ROWS: usize = 1000;

/// The page `/status?filter=TEXT&limit=N&offset=N` asks for; a bad value is a one-line
/// error naming the parameter.
fn status_page_of(query: Option<&str>) -> Result<crate::ops::ListFilter, String> {
    let mut page = crate::ops::ListFilter { limit: Some(STATUS_PAGE_ROWS), ..Default::default() };
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let number = |min: usize| {
            value.parse::<usize>().ok().filter(|n| *n >= min).ok_or_else(|| {
                format!(
                    "{key}: expected a whole number of at least {min}, got {:?}",
                    value.chars().take(40).collect::<String>()
                )
            })
        };
        match &*key {
            "filter" => page.text = Some(value.trim().to_owned()).filter(|t| !t.is_empty()),
            "limit" => page.limit = Some(number(1)?),
            "offset" => page.offset = number(0)?,
            _ => {}
        }
    }
    Ok(page)
}

fn answer(
    uri: &hyper::Uri,
    prometheus: &PrometheusHandle,
    snapshot: &Reader,
    reloads: &ArcSwap<ReloadStatus>,
    jobs: &crate::jobs::result::Recent,
    cluster: Option<&(String, Arc<crate::cluster::Status>)>,
) -> Response<Body> {
    let path = uri.path();
    match path {
        "/status.json" | "/status" => {
            let page = match status_page_of(uri.query()) {
                Ok(page) => page,
                Err(e) => return text(StatusCode::BAD_REQUEST, format!("400 Bad Request: {e}\n")),
            };
            let uptime = STARTED.get().map_or(0, |t| t.elapsed().as_secs());
            let mut status = daemon_status(&snapshot.load(), &reloads.load(), jobs, uptime, &page);
            status.cluster = cluster.map(|(node, c)| c.view(node));
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

/// Binds the admin listener (before the runtime that serves it is chosen).
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}
