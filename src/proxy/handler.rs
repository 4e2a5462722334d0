//! Handlers as plugins. Each handler type is one module: an options struct (serde, unknown
//! keys rejected), a constructor that validates them, and an implementation of
//! [`HttpHandler`] (answers requests after TLS) or [`StreamHandler`] (takes the byte
//! stream). [`REGISTRY`] maps the `type` of a route's handler table to its constructor;
//! adding a handler means adding a module and one line there.

mod http_proxy;
mod passthrough;
mod redirect;
mod static_page;
mod tcp_proxy;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::http::Body;

pub use passthrough::{MAX_HELLO, Passthrough, Peeked, parse_sni};

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A byte stream a handler can take over (TLS-terminated or raw).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// What a stream handler knows about its connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
}

/// What an HTTP handler knows about the request's connection.
#[derive(Clone)]
pub struct HttpConn {
    pub peer: SocketAddr,
    /// The peer's IP as a header value, made once per HTTP connection (X-Forwarded-For)
    /// rather than per request; stream connections never need it.
    pub peer_ip: http::HeaderValue,
    /// The connection's guard, for a handler that turns it into a tunnel (an upgrade).
    pub guard: Arc<ConnGuard>,
}

/// A connection's place under `max_connections` and in the active gauge, held until it
/// closes. An HTTP/1.1 connection upgraded to a tunnel (WebSocket) hands it on to the
/// tunnel's task, spawned on `tunnels` so that a drain waits for it too.
pub struct ConnGuard {
    _permit: tokio::sync::OwnedSemaphorePermit,
    active: metrics::Gauge,
    pub tunnels: tokio_util::task::TaskTracker,
}

impl ConnGuard {
    pub fn new(
        permit: tokio::sync::OwnedSemaphorePermit,
        active: metrics::Gauge,
        tunnels: tokio_util::task::TaskTracker,
    ) -> Self {
        Self { _permit: permit, active, tunnels }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.active.decrement(1.0);
    }
}

/// Answers HTTP requests (HTTP/1.1 and HTTP/2 after TLS).
pub trait HttpHandler: Send + Sync {
    fn call(&self, req: Request<Incoming>, conn: HttpConn) -> BoxFuture<Response<Body>>;
}

/// Takes over a TLS-terminated connection's byte stream.
pub trait StreamHandler: Send + Sync {
    fn serve(&self, io: Box<dyn Io>, conn: ConnInfo) -> BoxFuture<()>;
}

/// A built handler.
#[derive(Clone)]
pub enum Handler {
    Http(Arc<dyn HttpHandler>),
    Stream(Arc<dyn StreamHandler>),
    /// Not terminated: the raw TLS bytes go to the upstream.
    Passthrough(Arc<Passthrough>),
}

/// A handler table that does not build: the key to blame (when one is) and why.
#[derive(Debug, thiserror::Error)]
#[error("{}{reason}", key.map_or_else(String::new, |k| format!("{k}: ")))]
pub struct OptionError {
    pub key: Option<&'static str>,
    pub reason: String,
}

/// The error for `key`.
fn bad(key: &'static str, reason: impl Into<String>) -> OptionError {
    OptionError { key: Some(key), reason: reason.into() }
}

/// A handler type: its name in config and its constructor.
pub struct Plugin {
    pub name: &'static str,
    pub build: fn(&toml::Table) -> Result<Handler, OptionError>,
}

/// Every compiled-in handler type.
pub static REGISTRY: &[Plugin] = &[
    Plugin { name: "static", build: static_page::build },
    Plugin { name: "redirect", build: redirect::build },
    Plugin { name: "http_proxy", build: http_proxy::build },
    Plugin { name: "tcp_proxy", build: tcp_proxy::build },
    Plugin { name: "passthrough", build: passthrough::build },
];

/// Builds the handler a route's table describes.
pub fn build(table: &toml::Table) -> Result<Handler, OptionError> {
    let ty = table.get("type").and_then(toml::Value::as_str).unwrap_or_default();
    let plugin = REGISTRY.iter().find(|p| p.name == ty).ok_or_else(|| {
        let names: Vec<&str> = REGISTRY.iter().map(|p| p.name).collect();
        // Said as before typing: "type \"x\" is not a handler".
        OptionError {
            key: None,
            reason: format!("type {ty:?} is not a handler (expected one of: {})", names.join(", ")),
        }
    })?;
    (plugin.build)(table)
}

/// Deserialises a handler's options (everything but `type`); serde's message names the
/// bad key.
fn options<T: DeserializeOwned>(table: &toml::Table) -> Result<T, OptionError> {
    let mut t = table.clone();
    t.remove("type");
    toml::Value::Table(t)
        .try_into()
        .map_err(|e: toml::de::Error| OptionError { key: None, reason: e.message().trim().to_owned() })
}

/// Options of the stream handlers (`tcp_proxy`, `passthrough`): one upstream.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamOptions {
    upstream: String,
    #[serde(default = "default_connect_timeout")]
    connect_timeout_secs: u64,
}

fn default_connect_timeout() -> u64 {
    5
}

impl StreamOptions {
    /// Parses and checks the options; returns the upstream and the connect timeout.
    fn parse(table: &toml::Table) -> Result<(String, std::time::Duration), OptionError> {
        let o: Self = options(table)?;
        check_upstreams(std::slice::from_ref(&o.upstream)).map_err(|e| OptionError { key: Some("upstream"), ..e })?;
        Ok((o.upstream, std::time::Duration::from_secs(o.connect_timeout_secs.max(1))))
    }
}

/// A TCP connection to `upstream` (host:port) within `timeout`, without Nagle's delay.
async fn dial(upstream: &str, timeout: std::time::Duration) -> std::io::Result<tokio::net::TcpStream> {
    let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(upstream))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// Upstream addresses: host:port, resolved when connecting.
fn check_upstreams(upstreams: &[String]) -> Result<(), OptionError> {
    if upstreams.is_empty() {
        return Err(bad("upstreams", "needs at least one host:port"));
    }
    for u in upstreams {
        let Some((host, port)) = u.rsplit_once(':') else {
            return Err(bad("upstreams", format!("{u:?} is not host:port")));
        };
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(bad("upstreams", format!("{u:?} is not host:port")));
        }
    }
    Ok(())
}
