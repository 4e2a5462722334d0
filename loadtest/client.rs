//! The load client of loadtest/run.sh: HTTPS/1.1 over TLS 1.3 (TLS_AES_128_GCM_SHA256,
//! X25519, ALPN http/1.1, the same for every server measured).
//!
//!   loadclient MODE ADDR SNI CONNS WARMUP_SECS SECS [PATH]
//!   MODE: full      a new connection and a full handshake per request (no resumption)
//!         resumed   a new connection per request, resuming the session (tickets)
//!         keepalive requests back to back on CONNS connections; reports p99 latency
//!         bulk      like keepalive, reporting MB/s of response bodies
//!
//! Prints one JSON line. Certificates and handshake signatures are not verified, so a
//! handshake costs the client less than the server (the server is what is measured).
//! Every run stops by itself after WARMUP_SECS + SECS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[derive(Debug)]
struct AcceptAll(Vec<SignatureScheme>);

impl ServerCertVerifier for AcceptAll {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.clone()
    }
}

/// A ticket store for one server that keeps many tickets: rustls's default keeps 8 per
/// server, which 32 concurrent connections drain, turning some "resumed" runs into full
/// handshakes for servers that send their tickets after the client's Finished (rustls)
/// rather than with their own (OpenSSL).
#[derive(Debug, Default)]
struct ManyTickets(std::sync::Mutex<std::collections::VecDeque<rustls::client::Tls13ClientSessionValue>>);

impl rustls::client::ClientSessionStore for ManyTickets {
    fn set_kx_hint(&self, _: ServerName<'static>, _: rustls::NamedGroup) {}
    fn kx_hint(&self, _: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        None
    }
    fn set_tls12_session(&self, _: ServerName<'static>, _: rustls::client::Tls12ClientSessionValue) {}
    fn tls12_session(&self, _: &ServerName<'_>) -> Option<rustls::client::Tls12ClientSessionValue> {
        None
    }
    fn remove_tls12_session(&self, _: &ServerName<'static>) {}
    fn insert_tls13_ticket(&self, _: ServerName<'static>, value: rustls::client::Tls13ClientSessionValue) {
        let mut q = self.0.lock().unwrap();
        if q.len() >= 4096 {
            q.pop_front();
        }
        q.push_back(value);
    }
    fn take_tls13_ticket(&self, _: &ServerName<'static>) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.0.lock().unwrap().pop_back()
    }
}

fn config(resume: bool) -> Arc<ClientConfig> {
    use rustls::crypto::aws_lc_rs as p;
    let mut provider = p::default_provider();
    provider.cipher_suites = vec![p::cipher_suite::TLS13_AES_128_GCM_SHA256];
    provider.kx_groups = vec![p::kx_group::X25519];
    let schemes = provider.signature_verification_algorithms.supported_schemes();
    let mut c = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAll(schemes)))
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    c.resumption = if resume {
        rustls::client::Resumption::store(Arc::new(ManyTickets::default()))
    } else {
        rustls::client::Resumption::disabled()
    };
    Arc::new(c)
}

/// Reads one HTTP/1.1 response with Content-Length; returns the body length.
async fn read_response<S: AsyncReadExt + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    buf.clear();
    let mut chunk = [0u8; 16384];
    let header_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        return Err(std::io::Error::other(format!("status: {}", head.lines().next().unwrap_or(""))));
    }
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other("no content-length"))?;
    let mut have = buf.len() - header_end;
    while have < len {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        have += n;
    }
    Ok(len)
}

struct Shared {
    measuring: AtomicBool,
    stop: AtomicBool,
    done: AtomicU64,
    resumed: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 7 {
        eprintln!("usage: loadclient full|resumed|keepalive|bulk ADDR SNI CONNS WARMUP_SECS SECS [PATH]");
        std::process::exit(2);
    }
    let mode = a[1].clone();
    let addr: SocketAddr = a[2].parse().expect("ADDR");
    let sni = ServerName::try_from(a[3].clone()).expect("SNI");
    let conns: usize = a[4].parse().expect("CONNS");
    let warmup = Duration::from_secs(a[5].parse().expect("WARMUP"));
    let secs = Duration::from_secs(a[6].parse().expect("SECS"));
    let path = a.get(7).cloned().unwrap_or_else(|| "/small".into());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let shared = Arc::new(Shared {
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        done: AtomicU64::new(0),
        resumed: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let fresh = matches!(mode.as_str(), "full" | "resumed");
    let connector = TlsConnector::from(config(mode == "resumed"));
    let request = Arc::new(format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\n{}\r\n",
        a[3],
        if fresh { "Connection: close\r\n" } else { "" }
    ));
    let latencies = rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..conns {
            let (shared, connector, sni, request) =
                (Arc::clone(&shared), connector.clone(), sni.clone(), Arc::clone(&request));
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut buf = Vec::with_capacity(1 << 16);
                'outer: while !shared.stop.load(Ordering::Relaxed) {
                    let Ok(tcp) = TcpStream::connect(addr).await else {
                        shared.errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    let _ = tcp.set_nodelay(true);
                    let Ok(mut tls) = connector.connect(sni.clone(), tcp).await else {
                        shared.errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
                    loop {
                        let t0 = Instant::now();
                        if tls.write_all(request.as_bytes()).await.is_err() {
                            shared.errors.fetch_add(1, Ordering::Relaxed);
                            continue 'outer;
                        }
                        match read_response(&mut tls, &mut buf).await {
                            Ok(n) => {
                                if shared.measuring.load(Ordering::Relaxed) {
                                    shared.done.fetch_add(1, Ordering::Relaxed);
                                    shared.bytes.fetch_add(n as u64, Ordering::Relaxed);
                                    shared.resumed.fetch_add(u64::from(resumed), Ordering::Relaxed);
                                    lat.push(t0.elapsed().as_micros() as u32);
                                }
                            }
                            Err(_) => {
                                shared.errors.fetch_add(1, Ordering::Relaxed);
                                continue 'outer;
                            }
                        }
                        if fresh || shared.stop.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                }
                lat
            }));
        }
        tokio::time::sleep(warmup).await;
        shared.measuring.store(true, Ordering::Relaxed);
        tokio::time::sleep(secs).await;
        shared.measuring.store(false, Ordering::Relaxed);
        shared.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in tasks {
            if let Ok(Ok(l)) = tokio::time::timeout(Duration::from_secs(2), t).await {
                all.extend(l);
            }
        }
        all
    });
    let mut lat = latencies;
    lat.sort_unstable();
    let p99 = lat.get(lat.len().saturating_sub(1) * 99 / 100).copied().unwrap_or(0);
    let done = shared.done.load(Ordering::Relaxed);
    let s = secs.as_secs_f64();
    println!(
        "{{\"mode\":\"{mode}\",\"requests\":{done},\"rate\":{:.1},\"resumed\":{},\"p99_ms\":{:.3},\"mb_per_s\":{:.1},\"errors\":{}}}",
        done as f64 / s,
        shared.resumed.load(Ordering::Relaxed),
        f64::from(p99) / 1000.0,
        shared.bytes.load(Ordering::Relaxed) as f64 / s / 1e6,
        shared.errors.load(Ordering::Relaxed)
    );
    std::process::exit(0);
}
