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

/// Serves the admin endpoints until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    prometheus: PrometheusHandle,
    snapshot: Arc<ArcSwap<Snapshot>>,
    shutdown: CancellationToken,
) {
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
            () = shutdown.cancelled() => return,
        };
        let prometheus = prometheus.clone();
        let snapshot = Arc::clone(&snapshot);
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let resp = answer(req.uri().path(), &prometheus, &snapshot);
                std::future::ready(Ok::<_, std::convert::Infallible>(resp))
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
        });
    }
}

fn answer(path: &str, prometheus: &PrometheusHandle, snapshot: &ArcSwap<Snapshot>) -> Response<Body> {
    match path {
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
        _ => text(StatusCode::NOT_FOUND, "not found: try /metrics or /healthz\n"),
    }
}

/// Binds the admin listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
