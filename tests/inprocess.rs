//! The data plane in-process: no `portcullis` binary, no openssl, curl or python.
//!
//! A [`Harness`] owns a temp directory with a store (`store/`) and a `portcullis.toml`,
//! the loaded `Config`, the `Publisher` of the snapshots built from them, a socket it
//! bound itself on 127.0.0.1 port 0, and the `proxy::accept_loop` serving that socket
//! inside the test's tokio runtime. Tests change the store or the configuration through
//! it and publish a new snapshot, as the daemon's reload does, then talk TLS to the
//! socket with tokio-rustls. It exists so the data plane can be changed and tested
//! quickly; the tests against the real binary (dataplane.rs, autoselect.rs, ...) stay
//! the end-to-end proof.
//!
//! The oracles are independent of portcullis: the served certificate is read with
//! x509-parser, and HTTP/1.1 is written and read by hand.

// The configuration is written by hand.
#![allow(clippy::disallowed_methods)]

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use portcullis::config::Config;
use portcullis::ops::{self, CreateParams};
use portcullis::pki::{IdentityRequest, KeyType, Subject};
use portcullis::snapshot::{self, Publisher, Snapshot, TlsShared};
use portcullis::store::{FACTORY_NAME, Store};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long any one test may take.
const TEST_LIMIT: Duration = Duration::from_secs(60);

/// The listener every test configures. `bind` is required by the file format but never
/// bound: the harness binds its own socket on port 0 and serves it under this name.
const LISTENER: &str = "[[listener]]\nname = \"edge\"\nbind = [\"127.0.0.1:0\"]\n";

/// A TLS client connection to the harness.
type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// One listener of the data plane, served in-process (see the module doc).
struct Harness {
    /// Holds `store/` and `portcullis.toml`; removed on drop.
    dir: tempfile::TempDir,
    /// Open for the whole test (it holds the store's writers' lock).
    store: Store,
    config: Config,
    /// Session ticket keys and cache, shared by every snapshot as in the daemon.
    shared: TlsShared,
    publisher: Publisher,
    /// The configured listener's name, under which the accept loop serves the socket.
    name: Arc<str>,
    /// Where the accept loop listens: 127.0.0.1 and the port the kernel chose.
    addr: SocketAddr,
    shutdown: CancellationToken,
    /// The connection tasks, for the drain in [`Harness::finish`].
    tracker: TaskTracker,
    accept: JoinHandle<()>,
}

impl Harness {
    /// A store with the factory default plus one self-signed certificate per common name
    /// in `certs`, the configuration `toml` (exactly one `[[listener]]`), and the accept
    /// loop serving the first snapshot. The `max_connections` semaphore is sized from
    /// the configuration, as the daemon sizes it.
    async fn start(toml: &str, certs: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open_or_create(&dir.path().join("store")).expect("new store");
        let config = load_config(dir.path(), toml);
        assert_eq!(config.listeners.len(), 1, "the harness serves exactly one listener");
        let listener = &config.listeners[0];
        let name: Arc<str> = listener.name.as_str().into();
        let limit = Arc::new(Semaphore::new(listener.max_connections));
        let shared = TlsShared::new().expect("TLS session tickets");
        let first = snapshot::build(&config, &store, &shared).expect("first snapshot");
        let (publisher, reader) = Publisher::new(first);
        let tcp = portcullis::http::bind_tcp("127.0.0.1:0".parse().expect("address")).expect("bind 127.0.0.1:0");
        let addr = tcp.local_addr().expect("bound address");
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let accept = tokio::spawn(portcullis::proxy::accept_loop(
            tcp,
            Arc::clone(&name),
            reader,
            limit,
            tracker.clone(),
            shutdown.clone(),
        ));
        let mut h = Self { dir, store, config, shared, publisher, name, addr, shutdown, tracker, accept };
        for cn in certs {
            h.add_cert(cn);
        }
        h.publish();
        h
    }

    /// Creates a self-signed certificate for `cn` (also its only SAN) through `ops`, as
    /// `cert create-self-signed` does; returns its id. Served after the next publish.
    fn add_cert(&mut self, cn: &str) -> String {
        let params = CreateParams {
            identity: IdentityRequest {
                friendly_name: cn.to_owned(),
                subject: Subject { common_name: Some(cn.to_owned()), ..Subject::default() },
                sans: Vec::new(),
            },
            key_type: KeyType::EcdsaP256,
            days: 30,
        };
        ops::create_self_signed(&mut self.store, &params).unwrap_or_else(|e| panic!("create {cn}: {e}")).value.id
    }

    /// Replaces the configuration file and reloads it; served after the next publish.
    /// The listener keeps its name, as the accept loop is bound to it.
    fn set_config(&mut self, toml: &str) {
        let config = load_config(self.dir.path(), toml);
        assert_eq!(config.listeners.len(), 1, "the harness serves exactly one listener");
        assert_eq!(config.listeners[0].name.as_str(), &*self.name, "the listener cannot be renamed under the harness");
        self.config = config;
    }

    /// A snapshot of the current configuration and store.
    fn build(&self) -> Snapshot {
        snapshot::build(&self.config, &self.store, &self.shared).unwrap_or_else(|e| panic!("snapshot: {e}"))
    }

    /// Builds and publishes a snapshot: what the daemon's reload does.
    fn publish(&self) {
        let next = self.build();
        assert!(next.problems.is_empty(), "store problems: {:?}", next.problems);
        self.publisher.publish(next);
    }

    /// A TLS connection with `sni`, or the error that stopped it.
    async fn try_connect(&self, sni: &str) -> std::io::Result<Tls> {
        let tcp = TcpStream::connect(self.addr).await?;
        let server_name = ServerName::try_from(sni.to_owned()).expect("a DNS name");
        TlsConnector::from(common::any_cert_client()).connect(server_name, tcp).await
    }

    /// A TLS connection with `sni`; panics if the handshake fails.
    async fn connect(&self, sni: &str) -> Tls {
        self.try_connect(sni).await.unwrap_or_else(|e| panic!("handshake with SNI {sni}: {e}"))
    }

    /// Stops accepting and waits for every connection task to end, as SIGTERM does.
    async fn finish(self) {
        self.shutdown.cancel();
        self.accept.await.expect("accept loop");
        self.tracker.close();
        tokio::time::timeout(Duration::from_secs(10), self.tracker.wait()).await.expect("connections drained");
    }
}

/// Writes `toml` as `dir/portcullis.toml` (with `[store] dir` pointing at the harness's
/// store) and loads it as the daemon does.
fn load_config(dir: &std::path::Path, toml: &str) -> Config {
    let path = dir.join("portcullis.toml");
    std::fs::write(&path, format!("[store]\ndir = \"store\"\n\n{toml}")).expect("write portcullis.toml");
    Config::load(Some(&path)).unwrap_or_else(|e| panic!("portcullis.toml: {e}\n{toml}"))
}

/// Runs a test body, failing it if it takes longer than [`TEST_LIMIT`].
async fn bounded<T>(body: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_LIMIT, body).await.expect("test timed out")
}

/// The leaf certificate the server sent, as DER.
fn served_leaf(tls: &Tls) -> Vec<u8> {
    tls.get_ref().1.peer_certificates().and_then(|c| c.first()).expect("a server certificate").to_vec()
}

/// The subject common name of a DER certificate, by x509-parser.
fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("an X.509 certificate");
    cert.subject().iter_common_name().next().map(|cn| cn.as_str().expect("a UTF-8 common name").to_owned())
}

/// The DNS names of a DER certificate's subjectAltName, by x509-parser.
fn dns_names(der: &[u8]) -> Vec<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("an X.509 certificate");
    let Some(san) = cert.subject_alternative_name().expect("one subjectAltName at most") else { return Vec::new() };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
            _ => None,
        })
        .collect()
}

/// The common name of the certificate served for `sni`.
async fn served_cn(h: &Harness, sni: &str) -> Option<String> {
    common_name(&served_leaf(&h.connect(sni).await))
}

/// An HTTP response: status code and body.
#[derive(Debug, PartialEq)]
struct Response {
    status: u16,
    body: String,
}

/// Sends `GET / HTTP/1.1` for `host` on `tls` (the connection stays open) and reads the
/// response; its body must have a Content-Length.
async fn get(tls: &mut Tls, host: &str) -> Response {
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: inprocess-test\r\n\r\n");
    tls.write_all(request.as_bytes()).await.expect("send request");
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        read_more(tls, &mut buf).await;
    };
    let head = std::str::from_utf8(&buf[..head_end]).expect("an ASCII response head").to_owned();
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP/1.1 status line: {head}"));
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().expect("a Content-Length number"))
        })
        .unwrap_or_else(|| panic!("no Content-Length: {head}"));
    while buf.len() < head_end + length {
        read_more(tls, &mut buf).await;
    }
    assert_eq!(buf.len(), head_end + length, "bytes after the response:\n{}", String::from_utf8_lossy(&buf));
    Response { status, body: String::from_utf8(buf[head_end..].to_vec()).expect("a UTF-8 body") }
}

/// Appends what the next read brings to `buf`; panics at the end of the stream.
async fn read_more(tls: &mut Tls, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 4096];
    let n = tls.read(&mut chunk).await.expect("read response");
    assert!(n > 0, "connection closed in the middle of a response:\n{}", String::from_utf8_lossy(buf));
    buf.extend_from_slice(&chunk[..n]);
}

/// A route answering every host with `body`.
fn static_any(body: &str) -> String {
    format!("[[route]]\nhosts = [\"*\"]\nhandler = {{ type = \"static\", body = \"{body}\" }}\n")
}

/// Without assignments the listener serves every certificate of the store by SNI, and
/// the factory default for a name nothing covers.
#[tokio::test]
async fn serves_the_certificate_chosen_by_sni() {
    bounded(async {
        let h = Harness::start(&format!("{LISTENER}{}", static_any("hello")), &["a.test", "b.test"]).await;
        assert!(h.publisher.reader().load().listeners[0].assigned.is_none(), "auto-selection expected");

        assert_eq!(served_cn(&h, "a.test").await.as_deref(), Some("a.test"));
        assert_eq!(served_cn(&h, "b.test").await.as_deref(), Some("b.test"));
        assert_eq!(served_cn(&h, "B.Test").await.as_deref(), Some("b.test"), "SNI matches in any case");
        let fallback = served_leaf(&h.connect("nobody.test").await);
        assert_eq!(common_name(&fallback).as_deref(), Some(FACTORY_NAME), "the factory default");
        assert!(dns_names(&fallback).contains(&"localhost".to_owned()), "the factory default covers localhost");

        h.finish().await;
    })
    .await;
}

/// A published snapshot serves new connections; a connection opened before keeps the
/// snapshot it was accepted with (its certificate and its routes) until it closes.
#[tokio::test]
async fn publish_swaps_the_snapshot_for_new_connections_only() {
    bounded(async {
        let mut h = Harness::start(&format!("{LISTENER}{}", static_any("v1")), &["a.test"]).await;
        let mut old = h.connect("a.test").await;
        assert_eq!(get(&mut old, "a.test").await, Response { status: 200, body: "v1".into() });
        assert_eq!(served_cn(&h, "c.test").await.as_deref(), Some(FACTORY_NAME), "c.test is not in the store yet");

        h.add_cert("c.test");
        h.set_config(&format!("{LISTENER}{}", static_any("v2")));
        h.publish();

        let mut new = h.connect("c.test").await;
        assert_eq!(common_name(&served_leaf(&new)).as_deref(), Some("c.test"));
        assert_eq!(get(&mut new, "c.test").await, Response { status: 200, body: "v2".into() });
        assert_eq!(get(&mut old, "a.test").await, Response { status: 200, body: "v1".into() }, "old connection");
        assert_eq!(common_name(&served_leaf(&old)).as_deref(), Some("a.test"));

        drop((old, new));
        h.finish().await;
    })
    .await;
}

/// HTTP routes are chosen per request by Host: a `static` route answers its host, and a
/// host no route names gets 421, on the same connection.
#[tokio::test]
async fn static_route_answers_and_an_unknown_host_gets_421() {
    bounded(async {
        let toml = format!(
            "{LISTENER}[[route]]\nhosts = [\"app.test\"]\n\
             handler = {{ type = \"static\", body = \"hello from app\\n\" }}\n"
        );
        let h = Harness::start(&toml, &["app.test"]).await;
        let mut tls = h.connect("app.test").await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));

        assert_eq!(get(&mut tls, "app.test").await, Response { status: 200, body: "hello from app\n".into() });
        assert_eq!(get(&mut tls, "APP.test:443").await.status, 200, "host matched without case or port");
        let misdirected = get(&mut tls, "other.test").await;
        assert_eq!(misdirected.status, 421, "{misdirected:?}");
        assert!(misdirected.body.contains("no route for this host"), "{misdirected:?}");

        drop(tls);
        h.finish().await;
    })
    .await;
}

/// `max_connections = 1`: while one connection is open, the next is closed at accept;
/// once it closes, a new connection is served again.
#[tokio::test]
async fn max_connections_closes_extra_connections_at_accept() {
    bounded(async {
        let h = Harness::start(
            &format!("{LISTENER}max_connections = 1\nhandshake_timeout_secs = 60\n{}", static_any("one")),
            &["a.test"],
        )
        .await;
        let mut first = h.connect("a.test").await;
        assert_eq!(get(&mut first, "a.test").await.status, 200);

        // The kernel completes the TCP handshake from the backlog; the accept loop then
        // finds no permit and drops the socket without a byte. (Served, it would wait for
        // a ClientHello for handshake_timeout_secs, far longer than this read.)
        let mut second = TcpStream::connect(h.addr).await.expect("TCP connect");
        let mut byte = [0u8; 1];
        match tokio::time::timeout(Duration::from_secs(5), second.read(&mut byte)).await {
            Ok(Ok(0)) => {}
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("second connection not closed at accept: {other:?}"),
        }
        assert_eq!(get(&mut first, "a.test").await.status, 200, "the first connection is unaffected");

        drop(first);
        // Its permit comes back once the server has seen the close.
        let mut third = loop {
            match h.try_connect("a.test").await {
                Ok(tls) => break tls,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        assert_eq!(get(&mut third, "a.test").await, Response { status: 200, body: "one".into() });

        drop(third);
        h.finish().await;
    })
    .await;
}
