//! `http_proxy`: a reverse proxy to HTTP/1.1 upstreams. Keep-alive connections are
//! pooled, upstreams used round-robin, and one that fails to connect is skipped for a
//! while (passive health check). Bodies stream both ways without buffering.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use super::{Body, BoxFuture, Handler, HttpConn, HttpHandler};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    upstreams: Vec<String>,
    #[serde(default = "five")]
    connect_timeout_secs: u64,
    /// Time allowed for the upstream's response headers.
    #[serde(default = "sixty")]
    response_timeout_secs: u64,
    /// How long an upstream that failed is skipped.
    #[serde(default = "ten")]
    fail_timeout_secs: u64,
    #[serde(default = "ninety")]
    pool_idle_timeout_secs: u64,
}

fn five() -> u64 {
    5
}
fn ten() -> u64 {
    10
}
fn sixty() -> u64 {
    60
}
fn ninety() -> u64 {
    90
}

struct Upstream {
    authority: Arc<str>,
    /// Parsed once: each request's URI is built from it without formatting or parsing.
    parsed: http::uri::Authority,
    /// Unix millis until which this upstream is skipped; shared with in-flight requests.
    down_until: Arc<AtomicU64>,
}

struct HttpProxy {
    upstreams: Vec<Upstream>,
    next: AtomicUsize,
    client: Client<HttpConnector, Incoming>,
    response_timeout: Duration,
    fail_timeout: Duration,
}

pub(super) fn build(table: &toml::Table) -> Result<Handler, String> {
    let o: Options = super::options(table)?;
    super::check_upstreams(&o.upstreams)?;
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(o.connect_timeout_secs.max(1))));
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(o.pool_idle_timeout_secs))
        // Bounded read buffers: large bodies stream through in 64 KiB steps instead of
        // growing a buffer per pooled connection (peak RSS under bulk load).
        .http1_max_buf_size(64 * 1024)
        .build(connector);
    Ok(Handler::Http(Arc::new(HttpProxy {
        upstreams: o
            .upstreams
            .into_iter()
            .map(|authority| {
                let parsed = authority.parse().map_err(|e| format!("upstream {authority:?}: {e}"))?;
                Ok(Upstream { authority: authority.into(), parsed, down_until: Arc::new(AtomicU64::new(0)) })
            })
            .collect::<Result<_, String>>()?,
        next: AtomicUsize::new(0),
        client,
        response_timeout: Duration::from_secs(o.response_timeout_secs.max(1)),
        fail_timeout: Duration::from_secs(o.fail_timeout_secs),
    })))
}

fn now_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) never cross a proxy. Constant `HeaderName`s:
/// comparing them is cheap, where a `&str` would be parsed and hashed per lookup.
const HOP_BY_HOP: [HeaderName; 9] = [
    hyper::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    hyper::header::PROXY_AUTHENTICATE,
    hyper::header::PROXY_AUTHORIZATION,
    hyper::header::TE,
    hyper::header::TRAILER,
    hyper::header::UPGRADE,
    hyper::header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers and those the Connection header names. Most messages
/// have none: one pass over the names decides, and nothing is hashed or allocated.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    let listed: Vec<HeaderName> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

impl HttpProxy {
    /// The next upstream that is not marked down (or, if all are, the next one anyway).
    fn pick(&self) -> &Upstream {
        let now = now_millis();
        let n = self.upstreams.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.upstreams[(start + i) % n])
            .find(|u| u.down_until.load(Ordering::Relaxed) <= now)
            .unwrap_or(&self.upstreams[start % n])
    }
}

impl HttpHandler for HttpProxy {
    fn call(&self, mut req: Request<Incoming>, conn: HttpConn) -> BoxFuture<Response<Body>> {
        let upstream = self.pick();
        let authority = upstream.authority.clone();
        // The host the client asked for: Host for HTTP/1.1, :authority for HTTP/2.
        let host = req
            .headers()
            .get(hyper::header::HOST)
            .cloned()
            .or_else(|| req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()));
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(http::uri::Scheme::HTTP);
        parts.authority = Some(upstream.parsed.clone());
        parts.path_and_query =
            Some(req.uri().path_and_query().cloned().unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")));
        let uri = Uri::from_parts(parts);
        let Ok(uri) = uri else {
            return Box::pin(std::future::ready(super::text(StatusCode::BAD_REQUEST, "bad request target\n")));
        };
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prior) => HeaderValue::from_str(&format!("{prior}, {}", conn.peer.ip())).ok(),
            None => Some(conn.peer_ip),
        };
        if let Some(v) = xff {
            headers.insert("x-forwarded-for", v);
        }
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        if let Some(host) = host {
            headers.insert("x-forwarded-host", host.clone());
            headers.insert(hyper::header::HOST, host);
        }
        let pending = self.client.request(req);
        let timeout = self.response_timeout;
        let fail_timeout = self.fail_timeout;
        let health = Arc::clone(&upstream.down_until);
        Box::pin(async move {
            match tokio::time::timeout(timeout, pending).await {
                Ok(Ok(resp)) => {
                    let (mut parts, body) = resp.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    Response::from_parts(parts, body.boxed())
                }
                Ok(Err(e)) => {
                    crate::admin::metrics::upstream_error();
                    if e.is_connect() {
                        health.store(now_millis() + fail_timeout.as_millis() as u64, Ordering::Relaxed);
                    }
                    tracing::warn!(upstream = %authority, error = %e, "upstream request failed");
                    super::text(StatusCode::BAD_GATEWAY, format!("502 Bad Gateway: upstream {authority} failed\n"))
                }
                Err(_) => {
                    crate::admin::metrics::upstream_error();
                    tracing::warn!(upstream = %authority, "upstream response timed out");
                    super::text(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!("504 Gateway Timeout: upstream {authority} did not answer\n"),
                    )
                }
            }
        })
    }
}
