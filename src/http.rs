//! Small HTTP and socket helpers every layer may use; imports nothing of the crate.
//! Owns: the response body type with its constructors, the loopback `http_get` the CLI
//! uses to ask a running daemon, `bind_tcp`, and [`accept`], the one accept call with
//! back-off that every listener uses.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::{Response, StatusCode};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Body of every response we send.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// A complete response with a short text body.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(hyper::header::CONTENT_TYPE, "text/plain; charset=utf-8".parse().expect("static"));
    resp
}

pub fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).map_err(|never| match never {}).boxed()
}

/// A plain HTTP/1.0 GET on loopback: (status, body), or `None` if nothing answers.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let timeout = Duration::from_secs(2);
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

/// The address to reach a listener bound to `addr` from this host.
pub fn loopback_for(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        ip if ip.is_unspecified() && addr.is_ipv4() => SocketAddr::from(([127, 0, 0, 1], addr.port())),
        ip if ip.is_unspecified() => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port())),
        _ => addr,
    }
}

/// Binds a listening socket. IPv6 sockets are IPv6-only, so `0.0.0.0:443` and
/// `[::]:443` can both be listed (Linux would otherwise map IPv4 into the IPv6 socket).
/// TCP_NODELAY is set here because Linux copies it to every accepted socket, which
/// saves a `setsockopt` per connection.
pub fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// How long a listener waits after a failed accept.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The next connection, or `None` once `shutdown` is cancelled. A failed accept (EMFILE
/// when descriptors run out, ENOBUFS, ...) leaves the connection in the backlog, so
/// accepting again at once would spin a core: it is logged under `what` and retried after
/// [`ACCEPT_BACKOFF`] (warned once per run of failures).
pub async fn accept(
    listener: &TcpListener,
    what: &str,
    shutdown: &CancellationToken,
) -> Option<(TcpStream, SocketAddr)> {
    // One warning per run of failures, not twenty a second.
    let mut failing = false;
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => return Some(c),
                Err(e) => {
                    if !failing {
                        tracing::warn!(listener = %what, error = %e, "accept failed; retrying every 50 ms");
                        failing = true;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                        () = shutdown.cancelled() => return None,
                    }
                }
            },
            () = shutdown.cancelled() => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::bind_tcp;

    /// The accept path no longer sets TCP_NODELAY itself: it relies on the listener's.
    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay() {
        for addr in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(listener) = bind_tcp(addr.parse().unwrap()) else { continue }; // no IPv6 here
            let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
            let (accepted, _) = listener.accept().await.unwrap();
            assert!(accepted.nodelay().unwrap(), "{addr}: accepted socket without TCP_NODELAY");
            drop(client);
        }
    }
}
