//! The data plane: listeners, the per-connection path (passthrough peek, TLS handshake,
//! routing to a handler), the plain-HTTP redirect listener, and draining on shutdown.
//!
//! Per connection: one `snapshot::Reader` load at accept; the connection keeps that
//! snapshot until it closes. No lock is taken; the certificate is chosen by the
//! snapshot's `CertMap`.
//!
//! **Layering** (tests/layering.rs): the data plane sees the store and the configuration
//! only as the `Snapshot`; it imports neither the control plane (`ops`, `acme` beyond
//! `acme::challenges`) nor a surface.

pub mod handler;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http::{Body, text};
use crate::snapshot::{ListenerSnap, Reader, Snapshot};
use handler::{ConnGuard, ConnInfo, Handler, HttpConn, Peeked};

/// Accepts on `listener` (bound for the configured listener `name`) until `shutdown`.
pub async fn accept_loop(
    listener: TcpListener,
    name: Arc<str>,
    cell: Reader,
    limit: Arc<Semaphore>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        let Some((tcp, peer)) = crate::http::accept(&listener, &name, &shutdown).await else { return };
        let snapshot = cell.load_full();
        let Some(index) = snapshot.listeners.iter().position(|l| *l.config.name == *name) else { continue };
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            snapshot.listeners[index].metrics.refused.increment(1);
            continue; // dropping `tcp` closes it
        };
        let shutdown = shutdown.clone();
        let tunnels = tracker.clone();
        let fut = async move {
            let l = &snapshot.listeners[index];
            l.metrics.connections.increment(1);
            l.metrics.active.increment(1.0);
            let guard = ConnGuard::new(permit, l.metrics.active.clone(), tunnels);
            connection(&snapshot, index, tcp, peer, guard, shutdown).await;
        };
        // The connection's future is about 14 KB (TLS state, hyper's connection): boxed
        // once here, it is not copied again each time the task changes stage.
        tracker.spawn(Box::pin(fut));
    }
}

async fn connection(
    snapshot: &Arc<Snapshot>,
    index: usize,
    tcp: TcpStream,
    peer: SocketAddr,
    guard: ConnGuard,
    shutdown: CancellationToken,
) {
    let l = &snapshot.listeners[index];
    let mut tcp = tcp;
    // Bytes of the ClientHello read to choose a passthrough route; replayed to the TLS
    // acceptor otherwise. Empty (no allocation) on listeners without passthrough routes.
    let mut hello = Vec::new();
    let start = Instant::now();
    if l.has_passthrough || l.config.on_demand {
        let name = match tokio::time::timeout(l.config.handshake_timeout, read_hello(&mut tcp, &mut hello)).await {
            Ok(Some(name)) => name,
            Ok(None) => {
                l.metrics.handshake_error.increment(1);
                return; // not a ClientHello, or closed before one arrived
            }
            Err(_) => {
                l.metrics.handshake_timeout.increment(1);
                return;
            }
        };
        if let Some(name) = &name
            && let Some(route) = l.route(name)
            && let Handler::Passthrough(p) = &route.handler
        {
            let (up, down) = p.splice(tcp, &hello).await;
            l.metrics.bytes_in.increment(up);
            l.metrics.bytes_out.increment(down);
            return;
        }
        if l.config.on_demand
            && let Some(name) = name
            && on_demand_candidate(l, &name)
        {
            // Waits (within the handshake timeout) for the one order of this name; the
            // resolver then serves what it issued. Refused or failed: the fallback.
            let left = l.config.handshake_timeout.saturating_sub(start.elapsed());
            let _ = tokio::time::timeout(left, crate::sni::ondemand::obtain(&name)).await;
        }
    }
    let counted = Counted::new(tcp, hello, l);
    let acceptor = TlsAcceptor::from(Arc::clone(&l.tls));
    let left = l.config.handshake_timeout.saturating_sub(start.elapsed());
    let tls = match tokio::time::timeout(left, acceptor.accept(counted)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            l.metrics.handshake_error.increment(1);
            tracing::debug!(listener = %l.config.name, %peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            l.metrics.handshake_timeout.increment(1);
            return;
        }
    };
    l.metrics.handshake_ok.increment(1);
    l.metrics.handshake_duration.record(start.elapsed().as_secs_f64());
    // A TLS-ALPN-01 validation only looks at the certificate (RFC 8737 §3).
    if tls.get_ref().1.alpn_protocol() == Some(crate::sni::alpn::ACME_TLS_1) {
        return;
    }
    let conn = ConnInfo { peer };
    // Stream handlers are chosen by SNI; HTTP handlers per request by Host.
    let sni_route = tls.get_ref().1.server_name().and_then(|sni| l.route(sni));
    if let Some(route) = sni_route
        && let Handler::Stream(h) = &route.handler
    {
        h.serve(Box::new(tls), conn).await;
        return;
    }
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    serve_http(snapshot, index, tls, h2, conn, guard, shutdown).await;
}

/// Whether a hello for `name` may order a certificate on demand: no certificate of the
/// listener covers it, none was issued for it since the snapshot, and it is not an ACME
/// server's TLS-ALPN-01 validation of a pending order (which must not wait for itself).
fn on_demand_candidate(l: &ListenerSnap, name: &str) -> bool {
    let mut buf = [0u8; crate::sni::MAX_NAME];
    let Some(name) = crate::sni::normalise(name, &mut buf) else { return false };
    matches!(
        l.certs.lookup(Some(name)),
        crate::sni::Selection::Default { miss: crate::sni::Miss::Unknown, .. }
            | crate::sni::Selection::Rejected(crate::sni::Miss::Unknown)
    ) && crate::sni::ondemand::issued(name).is_none()
        && !crate::sni::alpn::is_pending(name)
}

/// Reads the ClientHello into `buf` and returns its SNI (`Some(None)`: a hello without
/// one); `None` if the bytes are not a ClientHello or the client closed first. The
/// caller bounds the time; the size is bounded by `MAX_HELLO`.
async fn read_hello(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Option<String>> {
    use tokio::io::AsyncReadExt;
    buf.reserve(2048);
    loop {
        match handler::parse_sni(buf) {
            Peeked::Hello(name) => return Some(name),
            Peeked::NotTls => return None,
            Peeked::Incomplete if buf.len() > handler::MAX_HELLO + 1024 => return None,
            Peeked::Incomplete => {}
        }
        if tcp.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}

/// Serves HTTP/2 if ALPN chose it, HTTP/1.1 otherwise (over TLS, HTTP/2 needs ALPN:
/// RFC 9113 §3.2), so nothing is sniffed or buffered to tell them apart.
async fn serve_http<I>(
    snapshot: &Arc<Snapshot>,
    index: usize,
    io: I,
    h2: bool,
    conn: ConnInfo,
    guard: ConnGuard,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let l = &snapshot.listeners[index];
    let snap = Arc::clone(snapshot);
    let peer_ip = http::HeaderValue::from_str(&conn.peer.ip().to_string()).expect("an IP address is a header value");
    let conn = HttpConn { peer: conn.peer, peer_ip, guard: Arc::new(guard) };
    // HTTP/2 has no header-read timeout in hyper: a client that never sends its preface,
    // or never a request, would hold the connection (and its max_connections slot).
    let idle = h2.then(|| Arc::new(Idle::new()));
    let watch = idle.clone();
    let service = service_fn(move |mut req: Request<Incoming>| {
        let busy = watch.as_ref().map(|i| i.start());
        let l = &snap.listeners[index];
        let (route, bad) = match request_host(&mut req) {
            Ok(host) => (host.and_then(|h| l.route_table.lookup(h)), None),
            Err(why) => (None, Some(why)),
        };
        let fut = route.and_then(|ri| match &l.routes[ri].handler {
            Handler::Http(h) => Some((h.call(req, conn.clone()), ri)),
            _ => None,
        });
        let snap = Arc::clone(&snap);
        async move {
            let resp: Response<Body> = match fut {
                None if let Some(why) = bad => {
                    crate::metrics::client_error("bad_host");
                    text(StatusCode::BAD_REQUEST, format!("400 Bad Request: {why}\n"))
                }
                Some((f, ri)) => {
                    let resp = f.await;
                    snap.listeners[index].routes[ri].metrics.count(resp.status().as_u16());
                    resp
                }
                None => text(StatusCode::MISDIRECTED_REQUEST, "421 Misdirected Request: no route for this host\n"),
            };
            drop(busy);
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    // Both connection types stop the same way: graceful shutdown, then run to the end.
    macro_rules! drive {
        ($conn:expr) => {{
            let conn = $conn;
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        }};
    }
    let io = TokioIo::new(io);
    if h2 {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(l.config.max_header_bytes).unwrap_or(u32::MAX))
            .keep_alive_interval(Some(l.config.idle_timeout / 2))
            .keep_alive_timeout(l.config.idle_timeout / 2);
        let conn = builder.serve_connection(io, service);
        tokio::pin!(conn);
        let idle = idle.expect("made for h2");
        tokio::select! {
            _ = conn.as_mut() => {}
            () = shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
            () = idle.expired(l.config.idle_timeout) => {
                // Never a request (no preface, or silence after it): nothing to finish,
                // and hyper would wait for the preface forever; dropped. Otherwise
                // GOAWAY: responses still streaming finish (a client that stops reading
                // them meets write_timeout), no new streams start.
                if idle.seen.load(std::sync::atomic::Ordering::Relaxed) {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        }
    } else {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(l.config.idle_timeout)
            .max_buf_size(l.config.max_header_bytes.max(8192));
        drive!(builder.serve_connection(io, service).with_upgrades());
    }
}

/// When an HTTP/2 connection last had a request in progress.
struct Idle {
    /// Requests whose response headers are not sent yet.
    active: std::sync::atomic::AtomicUsize,
    /// Milliseconds since `epoch` at which the last request started or was answered.
    last: std::sync::atomic::AtomicU64,
    /// Whether any request came.
    seen: std::sync::atomic::AtomicBool,
    epoch: tokio::time::Instant,
}

/// A request in progress on an [`Idle`] connection.
struct Busy(Arc<Idle>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.active.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Idle {
    fn new() -> Self {
        Self { active: 0.into(), last: 0.into(), seen: false.into(), epoch: tokio::time::Instant::now() }
    }

    fn touch(&self) {
        self.last.store(self.epoch.elapsed().as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    fn start(self: &Arc<Self>) -> Busy {
        self.active.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.seen.store(true, std::sync::atomic::Ordering::Relaxed);
        self.touch();
        Busy(Arc::clone(self))
    }

    /// Resolves once no request has been in progress for `timeout`.
    async fn expired(&self, timeout: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        loop {
            let last = Duration::from_millis(self.last.load(Relaxed));
            tokio::time::sleep_until(self.epoch + last + timeout).await;
            if self.active.load(Relaxed) == 0 && Duration::from_millis(self.last.load(Relaxed)) == last {
                return;
            }
            if self.active.load(Relaxed) != 0 {
                tokio::time::sleep(timeout).await; // busy: look again later
            }
        }
    }
}

/// The host a request is for, without port, with its Host header made to agree: the
/// request target's authority (HTTP/2 `:authority`, HTTP/1.1 absolute form) if it has
/// one, else Host. Routing and forwarding then see the same name. Refused (RFC 9112
/// §3.2.2 allows it): a Host that disagrees with the authority, userinfo, a malformed
/// host.
fn request_host<B>(req: &mut Request<B>) -> Result<Option<&str>, &'static str> {
    if let Some(authority) = req.uri().authority() {
        if authority.as_str().contains('@') {
            return Err("userinfo is not allowed in the request target");
        }
        match req.headers().get(hyper::header::HOST) {
            Some(h) => {
                let h = h.to_str().map_err(|_| "malformed Host")?;
                if !same_host(host_of(h).ok_or("malformed Host")?, authority.host()) {
                    return Err("Host does not match the request target");
                }
            }
            None => {
                let value =
                    hyper::header::HeaderValue::from_str(authority.as_str()).map_err(|_| "malformed authority")?;
                req.headers_mut().insert(hyper::header::HOST, value);
            }
        }
        let host = req.uri().authority().map(|a| a.host()).unwrap_or_default();
        return if valid_host(host.trim_start_matches('[').trim_end_matches(']')) {
            Ok(Some(host.trim_start_matches('[').trim_end_matches(']')))
        } else {
            Err("malformed host in the request target")
        };
    }
    match req.headers().get(hyper::header::HOST) {
        None => Ok(None),
        Some(h) => host_of(h.to_str().map_err(|_| "malformed Host")?).map(Some).ok_or("malformed Host"),
    }
}

/// The host of a Host header value (`name`, `name:port`, `[v6]:port`), if well formed.
fn host_of(value: &str) -> Option<&str> {
    let (host, port) = match value.strip_prefix('[') {
        Some(v6) => {
            let (ip, rest) = v6.split_once(']')?;
            ip.parse::<std::net::Ipv6Addr>().ok()?;
            (ip, rest.strip_prefix(':'))
        }
        None => match value.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (value, None),
        },
    };
    if port.is_some_and(|p| p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    (host.contains(':') || valid_host(host)).then_some(host)
}

/// A DNS name or an IPv4 address: letters, digits, `-`, `_` and dots, at most 253 (a
/// trailing dot allowed). Nothing that could change a URL built from it.
fn valid_host(host: &str) -> bool {
    let name = host.strip_suffix('.').unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        || host.parse::<std::net::Ipv6Addr>().is_ok()
}

/// Host names compared as SNI is: case-insensitive, a trailing dot ignored.
fn same_host(a: &str, b: &str) -> bool {
    let a = a.trim_start_matches('[').trim_end_matches(']');
    let b = b.trim_start_matches('[').trim_end_matches(']');
    a.strip_suffix('.').unwrap_or(a).eq_ignore_ascii_case(b.strip_suffix('.').unwrap_or(b))
}

/// Connections a plain-HTTP listener serves at once: each lives for one redirect or
/// challenge answer, so this is plenty, and it bounds the descriptors it can take.
pub const MAX_PLAIN_CONNECTIONS: usize = 1024;

/// The plain-HTTP listener: answers ACME HTTP-01 challenges from `challenges`;
/// everything else redirects to https on the same host, at the port `redirect_port`
/// gives at that moment (the daemon's reads the current snapshot).
pub async fn redirect_loop(
    listener: TcpListener,
    challenges: crate::acme::challenges::Challenges,
    redirect_port: impl Fn() -> u16 + Clone + Send + Sync + 'static,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_PLAIN_CONNECTIONS));
    loop {
        let Some((tcp, _)) = crate::http::accept(&listener, "plain HTTP", &shutdown).await else { return };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else { continue }; // dropped: closed
        let challenges = challenges.clone();
        let redirect_port = redirect_port.clone();
        tracker.spawn(async move {
            let _slot = slot;
            let service = service_fn(|req: Request<Incoming>| {
                let challenges = challenges.clone();
                let redirect_port = redirect_port.clone();
                async move { Ok::<_, std::convert::Infallible>(plain_answer(req, &challenges, redirect_port()).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), service);
            // Answers are a few hundred bytes: a client that will not take them (or keeps
            // the connection open for more) is cut after this long.
            let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
        });
    }
}

/// The plain-HTTP answer: an HTTP-01 key authorization (from this node, or on a cluster
/// from etcd when this node's copy lags), else a redirect to https.
async fn plain_answer(
    mut req: Request<Incoming>,
    challenges: &crate::acme::challenges::Challenges,
    redirect_port: u16,
) -> Response<Body> {
    if let Some(token) = req.uri().path().strip_prefix("/.well-known/acme-challenge/") {
        return match challenges.answer_or_fetch(token).await {
            Some(key_authorization) => text(StatusCode::OK, key_authorization),
            None => text(StatusCode::NOT_FOUND, "no such challenge\n"),
        };
    }
    let host = match request_host(&mut req) {
        Ok(Some(host)) => host.to_owned(),
        _ => return text(StatusCode::BAD_REQUEST, "400 Bad Request: missing or malformed Host\n"),
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let (open, close) = if host.contains(':') { ("[", "]") } else { ("", "") }; // IPv6
    let location = match redirect_port {
        443 => format!("https://{open}{host}{close}{path}"),
        port => format!("https://{open}{host}{close}:{port}{path}"),
    };
    let mut resp = text(StatusCode::MOVED_PERMANENTLY, format!("moved to {location}\n"));
    if let Ok(v) = location.parse() {
        resp.headers_mut().insert(hyper::header::LOCATION, v);
    }
    resp
}

/// A TCP stream that counts bytes locally and adds them to the listener's counters
/// when dropped: no atomic per read or write.
struct Counted {
    inner: TcpStream,
    /// Bytes read before the TLS handshake (a ClientHello read for passthrough),
    /// replayed first.
    replay: Vec<u8>,
    replayed: usize,
    /// Armed while a write is blocked: a client that stops reading is cut after
    /// `write_timeout`. Allocated at the first stall only.
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    stalled: bool,
    write_timeout: Duration,
    read: u64,
    written: u64,
    bytes_in: metrics::Counter,
    bytes_out: metrics::Counter,
}

impl Counted {
    fn new(inner: TcpStream, replay: Vec<u8>, l: &ListenerSnap) -> Self {
        Self {
            inner,
            read: replay.len() as u64,
            replay,
            replayed: 0,
            stall: None,
            stalled: false,
            write_timeout: l.config.write_timeout,
            written: 0,
            bytes_in: l.metrics.bytes_in.clone(),
            bytes_out: l.metrics.bytes_out.clone(),
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.bytes_in.increment(self.read);
        self.bytes_out.increment(self.written);
    }
}

impl AsyncRead for Counted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.replayed < self.replay.len() {
            let n = buf.remaining().min(self.replay.len() - self.replayed);
            buf.put_slice(&self.replay[self.replayed..self.replayed + n]);
            self.replayed += n;
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.read += (buf.filled().len() - before) as u64;
        r
    }
}

impl Counted {
    /// Counts a write's bytes, or starts (or goes on with) a stall.
    fn wrote(&mut self, r: Poll<io::Result<usize>>, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(Ok(n)) => {
                self.written += n as u64;
                self.stalled = false;
            }
            Poll::Pending => return self.stalled(cx),
            Poll::Ready(Err(_)) => {}
        }
        r
    }

    /// After a write returned `Pending`: `Pending` until the stall has lasted
    /// `write_timeout`, then an error, which ends the connection.
    fn stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let deadline = tokio::time::Instant::now() + self.write_timeout;
        let timer = self.stall.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.stalled {
            self.stalled = true;
            timer.as_mut().reset(deadline);
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "client stopped reading"))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for Counted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        self.wrote(r, cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(r, cx)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
