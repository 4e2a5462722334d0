//! `http_proxy`: a reverse proxy to HTTP/1.1 upstreams. Keep-alive connections are
//! pooled per upstream, upstreams used round-robin, and one that fails to connect is
//! skipped for a while (passive health check). Bodies stream both ways without buffering.
//!
//! The pool is ours rather than hyper-util's: a stack of idle connections per upstream.
//! A connection goes back when the response body has been read to its end, so a request
//! costs no pool-key hashing and no task spawned to return it (docs/PERFORMANCE.md).
//! An HTTP/2 client's upload that is still open when its response has been sent is cut
//! (`Returning`), and its upstream connection closed.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use serde::Deserialize;

use super::{BoxFuture, Handler, HttpConn, HttpHandler, OptionError};
use crate::http::Body;

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
    /// An upgraded connection (WebSocket) with no bytes either way for this long closes.
    #[serde(default = "hour")]
    tunnel_idle_timeout_secs: u64,
    /// Requests in flight to one upstream, each on its own connection; more wait.
    #[serde(default = "thousand")]
    max_connections: usize,
    /// How long a request waits for one of `max_connections`; then 503.
    #[serde(default = "ten")]
    queue_timeout_secs: u64,
}

fn thousand() -> usize {
    1000
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
fn hour() -> u64 {
    3600
}

struct Upstream {
    authority: String,
    /// The Host header for a request that came without one.
    host: HeaderValue,
    /// `mono_millis` until which this upstream is skipped.
    down_until: AtomicU64,
    /// Idle keep-alive connections, most recently used last. A stack, so that a few
    /// warm connections carry the load and the rest age out (each grows its buffers when
    /// used: a queue cycled bulk responses through all of them, +3 MB peak RSS). The
    /// lock is held for one push or pop.
    idle: Mutex<Vec<Conn>>,
    /// `max_connections`: a permit per request in flight, held until its response body
    /// ends (or its tunnel closes). A connection is opened only for a request holding
    /// one and no idle connection to take, so open connections stay within the cap.
    slots: Arc<tokio::sync::Semaphore>,
}

/// A connection to an upstream.
struct Conn {
    sender: SendRequest<Upload>,
    /// The task that runs the connection: aborting it closes the connection.
    task: tokio::task::AbortHandle,
    /// When it became idle (`mono_millis`), 0 while in use. Its connection task closes
    /// it once idle for `pool_idle_timeout_secs`.
    idle_since: Arc<AtomicU64>,
}

/// Milliseconds on a monotonic clock, never 0.
fn mono_millis() -> u64 {
    static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
    EPOCH.elapsed().as_millis() as u64 + 1
}

/// Whether a connection idle since `since` (`mono_millis`, 0: in use) has been idle for
/// `idle_timeout`.
fn idle_expired(since: u64, idle_timeout: Duration) -> bool {
    since != 0 && mono_millis().saturating_sub(since) >= idle_timeout.as_millis() as u64
}

/// Idle connections kept per upstream; more are closed when they come back.
const MAX_IDLE: usize = 256;

struct HttpProxy {
    upstreams: Vec<Arc<Upstream>>,
    next: AtomicUsize,
    connect_timeout: Duration,
    response_timeout: Duration,
    fail_timeout: Duration,
    idle_timeout: Duration,
    tunnel_idle_timeout: Duration,
    queue_timeout: Duration,
}

pub(super) fn build(table: &toml::Table) -> Result<Handler, OptionError> {
    let o: Options = super::options(table)?;
    super::check_upstreams(&o.upstreams)?;
    if o.max_connections == 0 {
        return Err(super::bad("max_connections", "must be at least 1"));
    }
    Ok(Handler::Http(Arc::new(HttpProxy {
        upstreams: o
            .upstreams
            .into_iter()
            .map(|authority| {
                let host = HeaderValue::from_str(&authority)
                    .map_err(|e| OptionError { key: None, reason: format!("upstream {authority:?}: {e}") })?;
                let slots = slots_for(&authority, o.max_connections);
                Ok(Arc::new(Upstream {
                    authority,
                    host,
                    down_until: AtomicU64::new(0),
                    idle: Mutex::new(Vec::new()),
                    slots,
                }))
            })
            .collect::<Result<_, OptionError>>()?,
        next: AtomicUsize::new(0),
        connect_timeout: Duration::from_secs(o.connect_timeout_secs.max(1)),
        response_timeout: Duration::from_secs(o.response_timeout_secs.max(1)),
        fail_timeout: Duration::from_secs(o.fail_timeout_secs),
        idle_timeout: Duration::from_secs(o.pool_idle_timeout_secs.max(1)),
        tunnel_idle_timeout: Duration::from_secs(o.tunnel_idle_timeout_secs.max(1)),
        queue_timeout: Duration::from_secs(o.queue_timeout_secs.max(1)),
    })))
}

/// The `max_connections` slots of an upstream, shared by every route that names it and
/// kept across reloads (each reload builds new handlers; requests still running on the
/// old ones hold their slots): the cap is per upstream, not per snapshot. A new cap
/// starts a new count. Control plane only: called when handlers are built.
fn slots_for(authority: &str, cap: usize) -> Arc<tokio::sync::Semaphore> {
    type Slots = std::collections::HashMap<(String, usize), std::sync::Weak<tokio::sync::Semaphore>>;
    static SLOTS: LazyLock<Mutex<Slots>> = LazyLock::new(Mutex::default);
    let mut slots = SLOTS.lock().unwrap_or_else(PoisonError::into_inner);
    slots.retain(|_, s| s.strong_count() > 0);
    let key = (authority.to_owned(), cap);
    if let Some(s) = slots.get(&key).and_then(std::sync::Weak::upgrade) {
        return s;
    }
    let s = Arc::new(tokio::sync::Semaphore::new(cap));
    slots.insert(key, Arc::downgrade(&s));
    s
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

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

/// Removes hop-by-hop headers and those the Connection header names. Most requests
/// have none, and most responses only `Connection: keep-alive`: one pass over the names
/// finds which are present, only those are removed, and nothing is allocated unless
/// Connection names a header outside the fixed list.
/// Returns the Upgrade header's value if Connection listed `upgrade` (RFC 9110 §7.8).
fn strip_hop_by_hop(headers: &mut HeaderMap) -> Option<HeaderValue> {
    let mut present = 0u16; // bit i: HOP_BY_HOP[i]
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return None;
    }
    let mut upgrade = None;
    let mut listed = Vec::new();
    for token in headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
    {
        if token.eq_ignore_ascii_case("upgrade") {
            upgrade = headers.get(hyper::header::UPGRADE).cloned();
        } else if !HOP_BY_HOP.iter().any(|h| h.as_str().eq_ignore_ascii_case(token))
            && let Some(name) = headers.keys().find(|k| k.as_str().eq_ignore_ascii_case(token))
        {
            listed.push(name.clone());
        }
    }
    for name in listed {
        headers.remove(name);
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    upgrade
}

/// Puts back the two headers of an upgrade that `strip_hop_by_hop` removed.
fn set_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(hyper::header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(hyper::header::UPGRADE, protocol);
}

impl HttpProxy {
    /// The next upstream that is not marked down (or, if all are, the next one anyway).
    fn pick(&self) -> &Arc<Upstream> {
        let now = mono_millis();
        let n = self.upstreams.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.upstreams[(start + i) % n])
            .find(|u| u.down_until.load(Ordering::Relaxed) <= now)
            .unwrap_or(&self.upstreams[start % n])
    }
}

/// Why a request did not get a response.
enum Failure {
    /// No connection could be made: the upstream is marked down.
    Connect(std::io::Error),
    Request(hyper::Error),
}

impl Upstream {
    /// An idle connection that is still open and was not idle too long.
    fn take_idle(&self, idle_timeout: Duration) -> Option<Conn> {
        loop {
            let conn = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop()?;
            let since = conn.idle_since.swap(0, Ordering::AcqRel);
            if !conn.sender.is_closed() && !idle_expired(since, idle_timeout) {
                return Some(conn);
            }
        }
    }

    /// Pools a connection whose response has ended. One still busy (its request body is
    /// still being sent, say) is pooled when it is ready, so no request waits on it.
    fn give_back(self: Arc<Self>, mut conn: Conn) {
        if conn.sender.is_ready() {
            self.put_idle(conn);
        } else if !conn.sender.is_closed() {
            tokio::spawn(async move {
                if conn.sender.ready().await.is_ok() {
                    self.put_idle(conn);
                }
            });
        }
    }

    fn put_idle(&self, conn: Conn) {
        conn.idle_since.store(mono_millis(), Ordering::Release);
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
        // else: dropped after the lock is released, which closes it.
    }

    async fn connect(&self, timeout: Duration, idle_timeout: Duration) -> std::io::Result<Conn> {
        let tcp = super::dial(&self.authority, timeout).await?;
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            // Bounded read buffers: large bodies stream through in 64 KiB steps instead
            // of growing a buffer per pooled connection (peak RSS under bulk load).
            .max_buf_size(64 * 1024)
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(std::io::Error::other)?;
        let idle_since = Arc::new(AtomicU64::new(0));
        let watch = Arc::clone(&idle_since);
        let task = tokio::spawn(async move {
            // Upgrades: after a 101 the socket goes to the response's `OnUpgrade`.
            let conn = conn.with_upgrades();
            tokio::pin!(conn);
            loop {
                tokio::select! {
                    _ = conn.as_mut() => return,
                    () = tokio::time::sleep(idle_timeout) => {
                        // Returning drops the connection, which closes it; the pool
                        // finds it closed and skips it.
                        if idle_expired(watch.load(Ordering::Acquire), idle_timeout) {
                            return;
                        }
                    }
                }
            }
        })
        .abort_handle();
        Ok(Conn { sender, task, idle_since })
    }

    /// Sends `req` on an idle connection, or a new one. A request an idle connection
    /// could not take (it closed meanwhile) is sent on the next one, or a new one.
    async fn send(
        self: Arc<Self>,
        mut req: Request<Upload>,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Result<(Response<Incoming>, Conn), Failure> {
        loop {
            let (mut conn, fresh) = match self.take_idle(idle_timeout) {
                Some(c) => (c, false),
                None => (self.connect(connect_timeout, idle_timeout).await.map_err(Failure::Connect)?, true),
            };
            // A connection comes back when its last body ended; hyper may not have
            // finished with it yet.
            if let Err(e) = conn.sender.ready().await {
                if fresh {
                    return Err(Failure::Request(e));
                }
                continue;
            }
            match conn.sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, conn)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if !fresh => req = unsent,
                    _ => return Err(Failure::Request(e.into_error())),
                },
            }
        }
    }
}

/// An HTTP/2 client's upload, shared by the request that carries it upstream and the
/// response that may cut it (`Returning`); `None` once cut.
type Slot = Arc<Mutex<Option<Incoming>>>;

fn held(slot: &Slot) -> std::sync::MutexGuard<'_, Option<Incoming>> {
    slot.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A request body on its way upstream.
enum Upload {
    /// With, for a body still to come, a flag that is true until it has all arrived.
    Whole(Incoming, Option<Arc<std::sync::atomic::AtomicBool>>),
    /// An HTTP/2 client's upload, which the response side cuts (`Returning`).
    Cuttable(Slot),
}

/// The client's request body failed (a bad chunk size, a reset stream): the client's
/// mistake, answered 400, not an upstream failure. Found in hyper's error chain.
#[derive(Debug)]
struct ClientBody(hyper::Error);

impl std::fmt::Display for ClientBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client request body: {}", self.0)
    }
}

impl std::error::Error for ClientBody {}

fn client_body(e: hyper::Error) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(ClientBody(e))
}

/// Whether the client is still sending the request body.
fn still_arriving(flag: Option<&std::sync::atomic::AtomicBool>, slot: Option<&Slot>) -> bool {
    flag.is_some_and(|f| f.load(Ordering::Relaxed))
        || slot.is_some_and(|s| held(s).as_ref().is_some_and(|b| !b.is_end_stream()))
}

/// Whether the client's body is what failed.
fn from_client(e: &hyper::Error) -> bool {
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if c.is::<ClientBody>() {
            return true;
        }
        cause = c.source();
    }
    false
}

impl hyper::body::Body for Upload {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        match self.get_mut() {
            Self::Whole(body, arriving) => {
                let frame = std::task::ready!(std::pin::Pin::new(&mut *body).poll_frame(cx));
                if let Some(flag) = arriving
                    && (frame.is_none() || body.is_end_stream())
                {
                    flag.store(false, Ordering::Relaxed);
                }
                std::task::Poll::Ready(frame.map(|f| f.map_err(client_body)))
            }
            Self::Cuttable(slot) => match held(slot).as_mut() {
                Some(body) => std::pin::Pin::new(body).poll_frame(cx).map_err(client_body),
                None => std::task::Poll::Ready(Some(Err("upload reset after the response".into()))),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Whole(body, _) => body.is_end_stream(),
            Self::Cuttable(slot) => held(slot).as_ref().is_some_and(|b| b.is_end_stream()),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Self::Whole(body, _) => body.size_hint(),
            Self::Cuttable(slot) => held(slot).as_ref().map(|b| b.size_hint()).unwrap_or_default(),
        }
    }
}

/// A response body that returns its connection to the pool when it ends. Dropped before
/// its end (the client went away), the connection is closed instead.
///
/// An HTTP/2 client's upload still open when the response is over (the upstream answered
/// early: a 413, a 401) is cut when hyper drops this body, after the response's END_STREAM.
/// The upstream connection, left with part of a body, is closed; the rest of the upload is
/// read and discarded for `LINGER`, and then the client's stream is dropped, which makes h2
/// reset it with NO_ERROR (RFC 9113 §8.1): the client stops sending instead of waiting for
/// an upload that an upstream which answered early may never read. The pause lets h2 send
/// the response's queued DATA first; dropped at once, the reset went out before it.
struct Returning {
    body: Incoming,
    back: Option<(Conn, Arc<Upstream>)>,
    upload: Option<Slot>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Returning {
    fn wrap(
        resp: Response<Incoming>,
        conn: Conn,
        upstream: Arc<Upstream>,
        upload: Option<Slot>,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Response<Body> {
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let mut body = Self { body, back: Some((conn, upstream)), upload, _permit: permit };
        body.end_if_done();
        Response::from_parts(parts, body.boxed())
    }

    /// An HTTP/2 client's upload that has not ended: its connection is never pooled.
    fn uploading(&self) -> bool {
        self.upload.as_ref().is_some_and(|slot| held(slot).as_ref().is_some_and(|b| !b.is_end_stream()))
    }

    /// hyper stops polling a body that says it has ended, so check after every frame.
    fn end_if_done(&mut self) {
        if self.body.is_end_stream() {
            self.end();
        }
    }

    fn end(&mut self) {
        if self.uploading() {
            return; // cut when dropped
        }
        if let Some((conn, upstream)) = self.back.take() {
            upstream.give_back(conn);
        }
    }

    /// Closes the connection unless it went back to the pool: part of a request or a
    /// response is still on it.
    fn close(&mut self) {
        if let Some((conn, _)) = self.back.take() {
            conn.task.abort();
        }
    }
}

/// How long the rest of a cut upload is read before the client's stream is reset.
const LINGER: Duration = Duration::from_secs(1);

impl Drop for Returning {
    fn drop(&mut self) {
        let upload = self.upload.as_ref().and_then(|slot| held(slot).take());
        if let Some(mut upload) = upload.filter(|b| !b.is_end_stream())
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let rest = async { while let Some(Ok(_)) = upload.frame().await {} };
                let _ = tokio::time::timeout(LINGER, rest).await;
            });
        }
        self.close();
    }
}

impl hyper::body::Body for Returning {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let frame = std::task::ready!(std::pin::Pin::new(&mut self.body).poll_frame(cx));
        match &frame {
            None => self.end(),
            Some(Ok(_)) => self.end_if_done(),
            Some(Err(_)) => self.close(),
        }
        std::task::Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl HttpHandler for HttpProxy {
    fn call(&self, req: Request<Incoming>, conn: HttpConn) -> BoxFuture<Response<Body>> {
        let (parts, body) = req.into_parts();
        let mut cut = None;
        let mut arriving = None;
        let body = if parts.version == Version::HTTP_2 && !body.is_end_stream() {
            let slot = Arc::new(Mutex::new(Some(body)));
            cut = Some(Arc::clone(&slot));
            Upload::Cuttable(slot)
        } else if !body.is_end_stream() {
            let flag = Arc::new(std::sync::atomic::AtomicBool::new(true));
            arriving = Some(Arc::clone(&flag));
            Upload::Whole(body, Some(flag))
        } else {
            Upload::Whole(body, None)
        };
        let mut req = Request::from_parts(parts, body);
        let upstream = Arc::clone(self.pick());
        // The host the client asked for: Host for HTTP/1.1, :authority for HTTP/2.
        let host = req
            .headers()
            .get(hyper::header::HOST)
            .cloned()
            .or_else(|| req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()));
        // Origin form (RFC 9112 §3.2.1): the upstream learns the host from Host.
        let path = req.uri().path_and_query().cloned().unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(path);
        // Only HTTP/1.1 upgrades (RFC 9110 §7.8: ignored in HTTP/1.0; HTTP/2 has none),
        // only without a request body (the sockets change hands once it has been read),
        // and never to h2c (a cleartext HTTP/2 tunnel past this proxy's request handling).
        let can_upgrade = req.version() == Version::HTTP_11 && req.body().is_end_stream();
        *req.version_mut() = Version::HTTP_11;
        let headers = req.headers_mut();
        let upgrade =
            strip_hop_by_hop(headers).filter(|p| can_upgrade && !protocols(p).any(|t| t.eq_ignore_ascii_case("h2c")));
        let xff = match headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(prior) => HeaderValue::from_str(&format!("{prior}, {}", conn.peer.ip())).ok(),
            None => Some(conn.peer_ip),
        };
        if let Some(v) = xff {
            headers.insert(X_FORWARDED_FOR, v);
        }
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        match host {
            Some(host) => {
                headers.insert(X_FORWARDED_HOST, host.clone());
                headers.insert(hyper::header::HOST, host);
            }
            None => {
                headers.insert(hyper::header::HOST, upstream.host.clone());
            }
        }
        // The client's side of an upgrade, taken before the request goes upstream.
        let client_side = upgrade.map(|protocol| {
            set_upgrade(req.headers_mut(), protocol.clone());
            Upgrade {
                client: hyper::upgrade::on(&mut req),
                asked: protocol,
                guard: conn.guard,
                idle_timeout: self.tunnel_idle_timeout,
            }
        });
        let (connect_timeout, idle_timeout) = (self.connect_timeout, self.idle_timeout);
        let timeout = self.response_timeout;
        let fail_timeout = self.fail_timeout;
        let queue_timeout = self.queue_timeout;
        Box::pin(async move {
            let authority = &upstream.authority;
            let permit = match Arc::clone(&upstream.slots).try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    match tokio::time::timeout(queue_timeout, Arc::clone(&upstream.slots).acquire_owned()).await {
                        Ok(Ok(p)) => p,
                        _ => {
                            crate::metrics::upstream_queue_timeout();
                            tracing::warn!(upstream = %authority, "upstream at max_connections: request refused after queue_timeout_secs");
                            let mut resp = crate::http::text(
                                StatusCode::SERVICE_UNAVAILABLE,
                                format!("503 Service Unavailable: upstream {authority} is busy\n"),
                            );
                            resp.headers_mut().insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("1"));
                            return resp;
                        }
                    }
                }
            };
            let sent = Arc::clone(&upstream).send(req, connect_timeout, idle_timeout);
            // Why the upstream failed, answered with a 502 below; responses return early.
            let error = match tokio::time::timeout(timeout, sent).await {
                Ok(Ok((resp, _))) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
                    // The connection is no longer HTTP: never pooled again.
                    let switched = resp.headers().get(hyper::header::UPGRADE).cloned();
                    match (client_side, switched) {
                        (Some(up), Some(switched))
                            if protocols(&switched)
                                .all(|t| protocols(&up.asked).any(|a| a.eq_ignore_ascii_case(t))) =>
                        {
                            return tunnel(resp, up, switched, permit);
                        }
                        (_, switched) => format!("switched to {switched:?}, a protocol not asked for"),
                    }
                }
                Ok(Ok((resp, conn))) => return Returning::wrap(resp, conn, upstream, cut, permit),
                Ok(Err(Failure::Connect(e))) => {
                    upstream.down_until.store(mono_millis() + fail_timeout.as_millis() as u64, Ordering::Relaxed);
                    format!("connect: {e}")
                }
                Ok(Err(Failure::Request(e))) if from_client(&e) => {
                    crate::metrics::client_error("bad_body");
                    tracing::debug!(upstream = %authority, error = %e, "client request body failed");
                    return crate::http::text(StatusCode::BAD_REQUEST, "400 Bad Request: malformed request body\n");
                }
                Ok(Err(Failure::Request(e))) => e.to_string(),
                Err(_) if still_arriving(arriving.as_deref(), cut.as_ref()) => {
                    // The upstream waits for a body the client is still sending.
                    crate::metrics::client_error("body_timeout");
                    return crate::http::text(
                        StatusCode::REQUEST_TIMEOUT,
                        "408 Request Timeout: the request body did not arrive in time\n",
                    );
                }
                Err(_) => {
                    crate::metrics::upstream_error();
                    tracing::warn!(upstream = %authority, "upstream response timed out");
                    return crate::http::text(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!("504 Gateway Timeout: upstream {authority} did not answer\n"),
                    );
                }
            };
            crate::metrics::upstream_error();
            tracing::warn!(upstream = %authority, %error, "upstream request failed");
            crate::http::text(StatusCode::BAD_GATEWAY, format!("502 Bad Gateway: upstream {authority} failed\n"))
        })
    }
}

/// An upgrade the client asked for, waiting for the upstream's answer.
struct Upgrade {
    client: hyper::upgrade::OnUpgrade,
    /// The Upgrade header sent upstream.
    asked: HeaderValue,
    guard: Arc<super::ConnGuard>,
    idle_timeout: Duration,
}

/// The protocols an Upgrade header lists (`websocket`, `h2c`, `foo/2`).
fn protocols(value: &HeaderValue) -> impl Iterator<Item = &str> {
    value.to_str().unwrap_or_default().split(',').map(str::trim).filter(|t| !t.is_empty())
}

/// Answers an upgrade the upstream accepted (101, `switched` to a protocol the client asked for) and
/// starts the tunnel: once hyper has sent the 101 and handed over both sockets, bytes are
/// copied both ways until either side closes or none pass for the idle timeout. The
/// tunnel keeps the client connection's guard (max_connections, the active gauge, the
/// drain).
fn tunnel(
    mut resp: Response<Incoming>,
    up: Upgrade,
    switched: HeaderValue,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Response<Body> {
    let upstream = hyper::upgrade::on(&mut resp);
    let (mut parts, _) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    set_upgrade(&mut parts.headers, switched);
    let (client, guard, idle_timeout) = (up.client, up.guard, up.idle_timeout);
    let tunnels = guard.tunnels.clone();
    tunnels.spawn(async move {
        let _guard = guard;
        let _permit = permit;
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade not completed");
                return;
            }
        };
        let last = AtomicU64::new(mono_millis());
        let mut client = Active { io: TokioIo::new(client), last: &last };
        let mut upstream = Active { io: TokioIo::new(upstream), last: &last };
        let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
        tokio::pin!(copy);
        let timeout = idle_timeout.as_millis() as u64;
        loop {
            // Sleeps until the idle timeout of the last bytes seen, not a whole timeout more.
            let idle = mono_millis().saturating_sub(last.load(Ordering::Relaxed));
            if idle >= timeout {
                tracing::debug!("tunnel idle timeout");
                return;
            }
            tokio::select! {
                _ = copy.as_mut() => return,
                () = tokio::time::sleep(Duration::from_millis(timeout - idle)) => {}
            }
        }
    });
    Response::from_parts(parts, crate::http::full(bytes::Bytes::new()))
}

/// A tunnel's socket that notes when bytes last arrived (on either side: they share `last`).
struct Active<'a, T> {
    io: T,
    last: &'a AtomicU64,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Active<'_, T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.last.store(mono_millis(), Ordering::Relaxed);
        }
        r
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Active<'_, T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        m
    }

    fn names(m: &HeaderMap) -> Vec<&str> {
        let mut v: Vec<&str> = m.keys().map(HeaderName::as_str).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn hop_by_hop_headers_are_removed_and_the_rest_kept() {
        let mut m = map(&[("host", "a"), ("accept", "*/*")]);
        assert_eq!(strip_hop_by_hop(&mut m), None);
        assert_eq!(names(&m), ["accept", "host"]);

        let mut m = map(&[("content-length", "5"), ("connection", "keep-alive"), ("keep-alive", "timeout=5")]);
        assert_eq!(strip_hop_by_hop(&mut m), None);
        assert_eq!(names(&m), ["content-length"]);

        // Names listed in Connection (any case, over several lines) go too; absent ones
        // and the fixed list need no second mention.
        let mut m = map(&[
            ("connection", "close, X-Private"),
            ("connection", " x-other ,te"),
            ("x-private", "1"),
            ("X-Other", "2"),
            ("x-kept", "3"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic eA=="),
            ("trailer", "x-sum"),
        ]);
        assert_eq!(strip_hop_by_hop(&mut m), None);
        assert_eq!(names(&m), ["x-kept"]);
    }

    #[test]
    fn an_upgrade_is_reported_only_when_connection_lists_it() {
        let mut m = map(&[("connection", "Upgrade"), ("upgrade", "websocket"), ("sec-websocket-key", "k")]);
        assert_eq!(strip_hop_by_hop(&mut m), Some(HeaderValue::from_static("websocket")));
        assert_eq!(names(&m), ["sec-websocket-key"]);

        let mut m = map(&[("connection", "keep-alive"), ("upgrade", "websocket")]);
        assert_eq!(strip_hop_by_hop(&mut m), None);
        assert!(m.is_empty());
    }
}
