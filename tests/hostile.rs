//! Hostile input against the real binary (issue 16): nothing an attacker or a careless
//! file can hand Portcullis takes the daemon down, pins a core or holds a slot forever.
//! The outages run under `prlimit --as`, so a regression fails here instead of
//! exhausting the machine.
#![allow(clippy::disallowed_methods)]

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Env, free_port, openssl_ok};
use rustls::pki_types::{CertificateDer, ServerName};

/// Runs the real binary under an address-space limit of 1 GiB.
fn limited(env: &Env, args: &[&str]) -> common::Run {
    let mut cmd = Command::new("prlimit");
    cmd.arg("--as=1073741824").arg("--").arg(common::BIN).arg("--store").arg(env.store()).args(args);
    cmd.current_dir(env.dir.path()).env_remove("PORTCULLIS_FAILPOINT");
    let out = cmd.output().expect("prlimit (util-linux)");
    common::Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A P-256 key and its self-signed certificate; the key encrypted as PKCS#8 DER by
/// `openssl pkcs8 @scheme`, with the DER integer `from` replaced by `to` (same length):
/// a cost OpenSSL would take minutes to write is one patched integer.
fn encrypted_key(env: &Env, tag: &str, scheme: &[&str], from: &[u8], to: &[u8]) -> (String, String) {
    let (key, cert, der) =
        (env.path(&format!("{tag}.key")), env.path(&format!("{tag}.pem")), env.path(&format!("{tag}.p8")));
    let (key, cert, der) = (key.to_str().unwrap(), cert.to_str().unwrap(), der.to_str().unwrap());
    common::openssl_self_signed(key, cert, &format!("/CN={tag}.example.com"), "30", &[]);
    let mut args = vec!["pkcs8", "-topk8", "-in", key, "-out", der, "-outform", "DER", "-passout", "pass:secret"];
    args.extend(scheme);
    openssl_ok(&args, None);
    let mut bytes = fs::read(der).unwrap();
    if from.is_empty() {
        return (cert.to_owned(), der.to_owned());
    }
    let at = bytes.windows(from.len()).position(|w| w == from).expect("the integer OpenSSL wrote");
    bytes[at..at + to.len()].copy_from_slice(to);
    fs::write(der, bytes).unwrap();
    (cert.to_owned(), der.to_owned())
}

#[test]
fn key_derivation_costs_are_capped_before_anything_is_derived() {
    let env = Env::new();
    fs::write(env.path("pass"), "secret\n").unwrap();
    let before = env.tree();
    // scrypt N = 2^15 written, patched to N = 2^22 (r = 1): 512 MiB of memory.
    let (cert, der) = encrypted_key(
        &env,
        "scrypt",
        &["-scrypt", "-scrypt_N", "32768", "-scrypt_r", "1", "-scrypt_p", "1"],
        &[0x02, 0x03, 0x00, 0x80, 0x00],
        &[0x02, 0x03, 0x40, 0x00, 0x00],
    );
    let r = limited(&env, &["cert", "import", &cert, &der, "--password-file", "pass"]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert_eq!(
        r.stderr.trim(),
        format!(
            "error: {der}: damaged encrypted PKCS#8 key: scrypt memory 128·N·r = 512 MiB (N = 4194304, r = 1) exceeds the limit of 64 MiB"
        ),
        "{r:?}"
    );
    // PBKDF2 with 65,536 iterations written, patched to 8,388,607.
    let (cert, der) = encrypted_key(
        &env,
        "pbkdf2",
        &["-v2", "aes-256-cbc", "-iter", "65536"],
        &[0x02, 0x03, 0x01, 0x00, 0x00],
        &[0x02, 0x03, 0x7f, 0xff, 0xff],
    );
    let started = Instant::now();
    let r = limited(&env, &["cert", "import", &cert, &der, "--password-file", "pass"]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("key-derivation iterations 8388607 exceed the limit of 1000000"), "{r:?}");
    assert!(r.stderr.trim().lines().count() == 1, "one line: {r:?}");
    assert!(started.elapsed() < Duration::from_secs(20), "refused before deriving");
    assert_eq!(env.tree(), before, "the store is unchanged");

    // Within the limits, the same kind of file imports.
    let (cert, der) =
        encrypted_key(&env, "fine", &["-scrypt", "-scrypt_N", "16384", "-scrypt_r", "8", "-scrypt_p", "1"], &[], &[]);
    limited(&env, &["cert", "import", &cert, &der, "--password-file", "pass"]).ok();
}

#[test]
fn devices_fifos_and_links_are_refused_as_input_with_a_clear_error() {
    let env = Env::new();
    let before = env.tree();
    let r = limited(&env, &["cert", "import", "/dev/zero"]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert_eq!(r.stderr.trim(), "error: /dev/zero: not a regular file (a device)");

    let fifo = env.path("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    // Nobody writes to the FIFO: reading it the ordinary way would block forever.
    let r = limited(&env, &["cert", "import", fifo.to_str().unwrap()]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.trim().ends_with("fifo: not a regular file (a FIFO)"), "{r:?}");

    let key = env.path("k.pem");
    let cert = env.path("c.pem");
    common::openssl_self_signed(key.to_str().unwrap(), cert.to_str().unwrap(), "/CN=dev.example.com", "30", &[]);
    let r = limited(&env, &["cert", "import", cert.to_str().unwrap(), "--password-file", "/dev/zero"]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("/dev/zero: not a regular file (a device)"), "{r:?}");

    let big = env.path("big.pem");
    fs::write(&big, vec![b'A'; (1 << 20) + 1]).unwrap();
    let r = limited(&env, &["cert", "import", big.to_str().unwrap()]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("big.pem: 1048577 bytes is larger than the limit of 1 MiB"), "{r:?}");
    assert_eq!(env.tree(), before, "the store is unchanged");

    // A store file replaced by a link or a FIFO is reported as damaged; the command
    // neither blocks nor follows it.
    env.run(&["cert", "create-self-signed", "--name", "Linked", "--san", "linked.example.com"]).ok();
    let id =
        env.list().into_iter().find(|c| c["friendly_name"] == "Linked").unwrap()["id"].as_str().unwrap().to_owned();
    let key_path = env.store().join("certs").join(&id).join("key.pem");
    fs::remove_file(&key_path).unwrap();
    assert!(Command::new("mkfifo").arg(&key_path).status().unwrap().success());
    let r = limited(&env, &["--json", "cert", "show", &id]);
    let shown = r.stdout.clone();
    assert!(shown.contains("not a regular file (a FIFO)"), "{r:?}");
    fs::remove_file(&key_path).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", &key_path).unwrap();
    let r = limited(&env, &["--json", "cert", "show", &id]);
    assert!(r.stdout.contains("is a symbolic link, which is refused here"), "{r:?}");
}

/// A rustls client that accepts any certificate: these tests look at what the server
/// does with the bytes, and read the certificate with `openssl x509` afterwards.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Handshakes with `sni`, sending the ClientHello fragmented over TLS records at byte
/// offsets `cuts` of its body; returns the served certificate's CN (by openssl).
fn split_hello_cn(port: u16, sni: &str, cuts: &[usize]) -> Option<String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from(sni.to_owned()).unwrap()).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    let body = &hello[5..];
    let mut framed = Vec::new();
    let mut at = 0;
    for &cut in cuts.iter().chain([body.len()].iter()) {
        framed.extend_from_slice(&[0x16, 0x03, 0x01]);
        framed.extend_from_slice(&u16::try_from(cut - at).unwrap().to_be_bytes());
        framed.extend_from_slice(&body[at..cut]);
        at = cut;
    }
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Each record in its own segment, as a middlebox might deliver them.
    tcp.set_nodelay(true).unwrap();
    for record in framed.chunks(framed.len() / (cuts.len() + 1) + 1) {
        tcp.write_all(record).unwrap();
        std::thread::sleep(Duration::from_millis(30));
    }
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).ok()?;
    }
    let der = conn.peer_certificates()?.first()?.to_vec();
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der)
    );
    let subject = openssl_ok(&["x509", "-noout", "-subject", "-nameopt", "multiline"], Some(&pem));
    subject
        .lines()
        .find_map(|l| l.trim().strip_prefix("commonName").map(|v| v.trim().trim_start_matches('=').trim().to_owned()))
}

/// The value of the metric line starting with `prefix` (labels included) on /metrics.
fn metric(admin: u16, prefix: &str) -> Option<f64> {
    let (_, metrics) = common::curl(&[&format!("http://127.0.0.1:{admin}/metrics")]);
    metrics.lines().find_map(|l| l.strip_prefix(prefix)).and_then(|v| v.trim().parse().ok())
}

/// Polls `f` for up to `secs` seconds.
fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

#[test]
fn passthrough_and_http2_connections_cannot_hold_a_slot() {
    let env = Env::new();
    let (https, admin) = (free_port(), free_port());
    let bkey = env.path("backend.key").display().to_string();
    let bcert = env.path("backend.pem").display().to_string();
    common::openssl_self_signed(&bkey, &bcert, "/CN=backend.example.test", "2", &[]);
    let backend_port = free_port();
    let accept = backend_port.to_string();
    let _backend = common::Proc(
        Command::new("openssl")
            .args(["s_server", "-accept", &accept, "-cert", &bcert, "-key", &bkey, "-www", "-quiet"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    common::wait_port(backend_port);
    env.run(&["cert", "create-self-signed", "--name", "Site", "--common-name", "www.example.test"]).ok();
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:{admin}"

[[listener]]
name = "public"
bind = ["127.0.0.1:{https}"]
handshake_timeout_secs = 2
idle_timeout_secs = 2

[[route]]
hosts = ["pass.example.test", "legacy.test"]
handler = {{ type = "passthrough", upstream = "127.0.0.1:{backend_port}" }}

[[route]]
hosts = ["www.example.test"]
handler = {{ type = "static", body = "hello\n" }}
"#
    );
    let daemon = env.daemon(&config, &[https, admin]);
    let active = || metric(admin, "portcullis_connections_active{listener=\"public\"}").unwrap_or(-1.0);

    // The issue's partial ClientHello, then close: 50 of them leave nothing behind.
    let before = cpu_ticks(daemon.0.id());
    for _ in 0..50 {
        let mut s = TcpStream::connect(("127.0.0.1", https)).unwrap();
        s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
    }
    assert!(eventually(5, || active() == 0.0), "slots still held: {}", active());
    // Nothing spins after they left: under a tenth of a core over one second.
    let t = cpu_ticks(daemon.0.id());
    std::thread::sleep(Duration::from_secs(1));
    assert!(cpu_ticks(daemon.0.id()) - t < 10, "the daemon is busy with nobody connected");
    assert!(cpu_ticks(daemon.0.id()) - before < 200);

    // The same, kept open: closed by the server at handshake_timeout_secs, counted.
    let mut held = TcpStream::connect(("127.0.0.1", https)).unwrap();
    held.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
    held.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
    let started = Instant::now();
    assert_eq!(held.read(&mut [0u8; 16]).unwrap_or(0), 0, "closed by the server");
    assert!(started.elapsed() >= Duration::from_millis(1500), "not before the timeout");
    assert!(metric(admin, "portcullis_tls_handshakes_total{listener=\"public\",result=\"timeout\"}").unwrap() >= 1.0);

    // A ClientHello fragmented over records: passed through, or terminated, as whole.
    for cuts in [&[1][..], &[40, 41], &[100]] {
        assert_eq!(split_hello_cn(https, "pass.example.test", cuts).as_deref(), Some("backend.example.test"));
        assert_eq!(split_hello_cn(https, "www.example.test", cuts).as_deref(), Some("www.example.test"));
    }
    // A trailing dot names the same route.
    assert_eq!(common::served_cn(https, Some("legacy.test.")).as_deref(), Some("backend.example.test"));

    // HTTP/2 negotiated, then silence: closed at idle_timeout_secs like HTTP/1.1.
    for alpn in ["h2", "http/1.1"] {
        let connect = format!("127.0.0.1:{https}");
        let started = Instant::now();
        let mut s = Command::new("openssl")
            .args(["s_client", "-connect", &connect, "-servername", "www.example.test", "-alpn", alpn, "-quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let _stdin = s.stdin.take(); // held open: the client says nothing
        let deadline = Instant::now() + Duration::from_secs(15);
        while s.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "{alpn}: a silent connection was not closed");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(started.elapsed() >= Duration::from_millis(1500), "{alpn}: closed before the idle timeout");
    }
    assert!(eventually(5, || active() == 0.0), "slots still held: {}", active());
}

/// User plus system CPU time of a process, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn the_admin_listener_is_capped_timed_and_answers_only_its_own_names() {
    let env = Env::new();
    let (https, admin) = (free_port(), free_port());
    env.run(&["cert", "create-self-signed", "--name", "Site", "--common-name", "www.example.test"]).ok();
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\n[[listener]]\nname = \"public\"\nbind = [\"127.0.0.1:{https}\"]\nmax_connections = 50\n"
    );
    let path = env.write("portcullis.toml", &config);
    // 256 descriptors in all, as a tight LimitNOFILE would give.
    let log = fs::File::create(env.path("daemon.log")).unwrap();
    let _daemon = common::Proc(
        Command::new("prlimit")
            .args(["--nofile=256", "--"])
            .arg(common::BIN)
            .arg("--config")
            .arg(&path)
            .arg("--store")
            .arg(env.store())
            .arg("run")
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    common::wait_port(https);
    common::wait_port(admin);

    // 300 requests that never finish their headers.
    let half: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", admin)).ok())
        .inspect(|s| {
            let _ = (&*s).write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n");
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // The TLS listener still accepts and handshakes.
    assert_eq!(common::served_cn(https, Some("www.example.test")).as_deref(), Some("www.example.test"));
    // Past the cap, connections are closed at once; within it, at the header timeout.
    let closed = |v: &[TcpStream]| v.iter().filter(|s| !open(s)).count();
    assert!(closed(&half) >= 300 - 64, "at most 64 admin connections are kept");
    let log = || fs::read_to_string(env.path("daemon.log")).unwrap_or_default();
    assert!(eventually(15, || closed(&half) == half.len()), "half-sent requests outlived the header timeout");
    assert!(!log().contains("Too many open files"), "{}", log());

    // DNS rebinding: a name that is not this listener's is refused; its own are served.
    let url = format!("http://127.0.0.1:{admin}/status.json");
    let code =
        |host: &str| common::curl(&["-o", "/dev/null", "-w", "%{http_code}", "-H", &format!("Host: {host}"), &url]).1;
    assert_eq!(code("evil.example.com"), "421");
    assert_eq!(code("evil.example.com:80"), "421");
    assert_eq!(code(&format!("localhost:{admin}")), "200");
    assert_eq!(code(&format!("127.0.0.1:{admin}")), "200");
    assert_eq!(code("[::1]"), "200");
}

/// Whether the server still holds `s` open: nothing to read yet, no EOF, no reset.
fn open(s: &TcpStream) -> bool {
    let mut buf = [0u8; 1];
    s.set_nonblocking(true).unwrap();
    let r = s.peek(&mut buf);
    s.set_nonblocking(false).unwrap();
    matches!(r, Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock)
}
