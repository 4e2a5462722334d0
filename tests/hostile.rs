//! Hostile input against the real binary (issue 16): nothing an attacker or a careless
//! file can hand Portcullis takes the daemon down, pins a core or holds a slot forever.
//! The outages run under `prlimit --as`, so a regression fails here instead of
//! exhausting the machine.
#![allow(clippy::disallowed_methods)]

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Env, free_port, openssl_ok};
use rustls::pki_types::ServerName;

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

/// Handshakes with `sni`, sending the ClientHello fragmented over TLS records at byte
/// offsets `cuts` of its body; returns the served certificate's CN (by openssl).
fn split_hello_cn(port: u16, sni: &str, cuts: &[usize]) -> Option<String> {
    let mut conn =
        rustls::ClientConnection::new(common::any_cert_client(), ServerName::try_from(sni.to_owned()).unwrap())
            .unwrap();
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
    common::cn_of(&pem)
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
    let active = || common::metric(admin, "portcullis_connections_active{listener=\"public\"}").unwrap_or(-1.0);

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
    assert!(
        common::metric(admin, "portcullis_tls_handshakes_total{listener=\"public\",result=\"timeout\"}").unwrap()
            >= 1.0
    );

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

/// The daemon with `config`, under an open-file limit of `n` (soft and hard), logging
/// to daemon.log.
fn daemon_with_nofile(env: &Env, config: &std::path::Path, n: u32) -> common::Proc {
    let log = fs::File::create(env.path("daemon.log")).unwrap();
    common::Proc(
        Command::new("prlimit")
            .arg(format!("--nofile={n}"))
            .arg("--")
            .arg(common::BIN)
            .arg("--config")
            .arg(config)
            .arg("--store")
            .arg(env.store())
            .arg("run")
            .stderr(log)
            .spawn()
            .unwrap(),
    )
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
    let _daemon = daemon_with_nofile(&env, &path, 256);
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

/// A TLS connection to 127.0.0.1:`port` with `sni`, any certificate accepted.
fn tls(port: u16, sni: &str) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let conn = rustls::ClientConnection::new(common::any_cert_client(), ServerName::try_from(sni.to_owned()).unwrap())
        .unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

/// Sends `head` (and `body`) on a new TLS connection; returns the response's status
/// line and the rest, read until the server closes or 20 s pass.
fn exchange(port: u16, sni: &str, request: &[u8]) -> String {
    let mut s = tls(port, sni);
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// A backend that holds each request `hold` before answering, and records the most
/// connections it had open at once.
fn holding_backend(hold: Duration) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (open, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let peak2 = Arc::clone(&peak);
    std::thread::spawn(move || {
        for stream in listener.incoming().take(50) {
            let Ok(mut s) = stream else { continue };
            let (open, peak) = (Arc::clone(&open), Arc::clone(&peak2));
            std::thread::spawn(move || {
                let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                if s.read(&mut buf).unwrap_or(0) > 0 {
                    std::thread::sleep(hold);
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nheld\n");
                }
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (port, peak)
}

#[test]
fn requests_are_routed_and_forwarded_by_one_host_and_client_errors_are_the_clients() {
    use std::sync::atomic::Ordering;
    let env = Env::new();
    let (https, plain, admin) = (free_port(), free_port(), free_port());
    let (_backend, backend_port) = env.backend();
    let (held_port, peak) = holding_backend(Duration::from_secs(3));
    // A backend that answers with an endless body, for a client that never reads.
    let flood = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let flood_port = flood.local_addr().unwrap().port();
    let (flood_done_tx, flood_done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut s, _) = flood.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n");
        let chunk = vec![b'x'; 64 * 1024];
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) && s.write_all(&chunk).is_ok() {}
        flood_done_tx.send(started.elapsed()).unwrap();
    });
    env.run(&["cert", "create-self-signed", "--name", "Site", "--common-name", "app.test"]).ok();
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:{admin}"

[http]
listen = ["127.0.0.1:{plain}"]

[[listener]]
name = "public"
bind = ["127.0.0.1:{https}"]
write_timeout_secs = 2

[[route]]
hosts = ["app.test"]
handler = {{ type = "http_proxy", upstreams = ["127.0.0.1:{backend_port}"], response_timeout_secs = 2 }}

[[route]]
hosts = ["blocked.test"]
handler = {{ type = "static", status = 403, body = "blocked\n" }}

[[route]]
hosts = ["held.test"]
handler = {{ type = "http_proxy", upstreams = ["127.0.0.1:{held_port}"], max_connections = 2, queue_timeout_secs = 1 }}

[[route]]
hosts = ["flood.test"]
handler = {{ type = "http_proxy", upstreams = ["127.0.0.1:{flood_port}"] }}
"#
    );
    let daemon = env.daemon(&config, &[https, plain, admin]);
    let upstream_errors = || common::metric(admin, "portcullis_upstream_errors_total").unwrap_or(0.0);

    // One host for routing and forwarding: a Host that disagrees with the target is a 400.
    let r = exchange(
        https,
        "app.test",
        b"GET https://app.test/x HTTP/1.1\r\nHost: blocked.test\r\nConnection: close\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert!(r.contains("Host does not match the request target"), "{r}");
    let r = exchange(
        https,
        "app.test",
        b"GET https://user@app.test/x HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 400") && r.contains("userinfo"), "{r}");
    let r = exchange(https, "app.test", b"GET /x HTTP/1.1\r\nHost: app.test/x?\r\nConnection: close\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 400") && r.contains("malformed Host"), "{r}");
    // Agreeing (case and trailing dot aside): routed to app.test, which gets that Host.
    let r =
        exchange(https, "app.test", b"GET https://app.test/x HTTP/1.1\r\nHost: APP.test.\r\nConnection: close\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let body: serde_json::Value = serde_json::from_str(r.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["path"], "/x");
    assert_eq!(body["headers"]["host"], "APP.test.");
    // The absolute form without Host: forwarded with the target's authority as Host.
    let r = exchange(https, "app.test", b"GET https://app.test/y HTTP/1.0\r\n\r\n");
    let body: serde_json::Value = serde_json::from_str(r.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["headers"]["host"], "app.test");
    assert_eq!(common::metric(admin, "portcullis_client_errors_total{reason=\"bad_host\"}"), Some(3.0));

    // A client's malformed chunked body: 400, counted as the client's, not the upstream's.
    let before = upstream_errors();
    let r = exchange(
        https,
        "app.test",
        b"POST /up HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\nhello\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert_eq!(common::metric(admin, "portcullis_client_errors_total{reason=\"bad_body\"}"), Some(1.0));
    // A body that stops arriving: 408 at the response timeout, the client's again.
    let mut slow = tls(https, "app.test");
    slow.write_all(
        b"POST /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100\r\nConnection: close\r\n\r\n0123456789",
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = slow.read_to_end(&mut out);
    let r = String::from_utf8_lossy(&out);
    assert!(r.starts_with("HTTP/1.1 408"), "{r}");
    assert_eq!(common::metric(admin, "portcullis_client_errors_total{reason=\"body_timeout\"}"), Some(1.0));
    assert_eq!(upstream_errors(), before, "client mistakes are not upstream errors");

    // The plain-HTTP redirect builds its Location only from a valid host.
    let r = plain_exchange(plain, b"GET /p HTTP/1.1\r\nHost: evil/x?\r\nConnection: close\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let r = plain_exchange(plain, b"GET /p HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 301") && r.contains("location: https://app.test/p\r\n"), "{r}");

    // max_connections = 2 to held.test: two reach it, then a reload (which builds new
    // handlers), then three more, which wait a second and get 503: the cap outlives it.
    let held = move || {
        std::thread::spawn(move || {
            exchange(https, "held.test", b"GET / HTTP/1.1\r\nHost: held.test\r\nConnection: close\r\n\r\n")
        })
    };
    let mut handles: Vec<_> = (0..2).map(|_| held()).collect();
    std::thread::sleep(Duration::from_millis(300));
    daemon.signal("HUP");
    std::thread::sleep(Duration::from_millis(700));
    handles.extend((0..3).map(|_| held()));
    let answers: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = answers.iter().filter(|r| r.starts_with("HTTP/1.1 200")).count();
    let busy = answers.iter().filter(|r| r.starts_with("HTTP/1.1 503")).count();
    assert_eq!((ok, busy), (2, 3), "{answers:#?}");
    assert!(answers.iter().any(|r| r.to_ascii_lowercase().contains("retry-after: 1")));
    assert_eq!(peak.load(Ordering::SeqCst), 2, "never more than max_connections at the upstream");
    assert_eq!(common::metric(admin, "portcullis_upstream_queue_timeouts_total"), Some(3.0));

    // A client that never reads its response: cut after write_timeout_secs of no
    // progress, and the upstream connection with it.
    let mut stuck = tls(https, "flood.test");
    stuck.write_all(b"GET /big HTTP/1.1\r\nHost: flood.test\r\n\r\n").unwrap();
    let took = flood_done.recv_timeout(Duration::from_secs(30)).expect("the upstream connection was never closed");
    assert!(took < Duration::from_secs(30), "{took:?}");
    drop(stuck);
    let active = || common::metric(admin, "portcullis_connections_active{listener=\"public\"}").unwrap_or(-1.0);
    assert!(eventually(5, || active() == 0.0), "{}", active());
}

fn plain_exchange(port: u16, request: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn unservable_certificates_are_refused_and_hostile_metadata_is_reported_not_rendered() {
    let env = Env::new();
    // 10,000 names: OpenSSL signs it, rustls cannot serve it.
    let mut cnf = String::from("[req]\ndistinguished_name = dn\n[dn]\n[v3]\nsubjectAltName = @alt\n[alt]\n");
    for i in 0..10_000 {
        cnf.push_str(&format!("DNS.{i} = n{i}.many.test\n"));
    }
    let cnf = env.write("many.cnf", &cnf);
    let (key, cert) = (env.path("many.key"), env.path("many.pem"));
    openssl_ok(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "30",
            "-subj",
            "/CN=many.test",
            "-config",
            cnf.to_str().unwrap(),
            "-extensions",
            "v3",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ],
        None,
    );
    let before = env.tree();
    let r = env.run(&["cert", "import", cert.to_str().unwrap(), key.to_str().unwrap()]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("10000 subject alternative names, more than the 1000"), "{r:?}");
    assert_eq!(r.stderr.trim().lines().count(), 1);
    assert_eq!(env.tree(), before, "nothing imported");

    // A friendly name planted in meta.toml (100,000 characters): the entry is reported
    // as damaged; no listing or page carries the name.
    env.run(&["cert", "create-self-signed", "--name", "Planted", "--san", "planted.test"]).ok();
    let id =
        env.list().into_iter().find(|c| c["friendly_name"] == "Planted").unwrap()["id"].as_str().unwrap().to_owned();
    let meta = env.store().join("certs").join(&id).join("meta.toml");
    let text = fs::read_to_string(&meta).unwrap().replace("Planted", &"X".repeat(100_000));
    fs::write(&meta, text).unwrap();
    for args in [&["cert", "list"][..], &["cert", "list", "--wide"], &["--json", "cert", "list"], &["check-config"]] {
        let r = env.run(args);
        assert!(r.stdout.len() + r.stderr.len() < 20_000, "{args:?}: {} bytes", r.stdout.len() + r.stderr.len());
        assert!(!r.stdout.contains("XXXXXXXXXX"), "{args:?}");
        assert!(format!("{}{}", r.stdout, r.stderr).contains("friendly_name is longer than"), "{args:?}: {r:?}");
    }
}

#[test]
fn problems_stay_until_fixed_and_a_replaced_store_is_watched_at_once() {
    let env = Env::new();
    let (https, admin) = (free_port(), free_port());
    env.run(&["cert", "create-self-signed", "--name", "Good", "--common-name", "good.test"]).ok();
    env.run(&["cert", "create-self-signed", "--name", "Other", "--common-name", "other.test"]).ok();
    let id = |name: &str| {
        env.list().into_iter().find(|c| c["friendly_name"] == name).unwrap()["id"].as_str().unwrap().to_owned()
    };
    let (good, other) = (id("Good"), id("Other"));
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\n[[listener]]\nname = \"public\"\nbind = [\"127.0.0.1:{https}\"]\n"
    );
    let daemon = env.daemon(&config, &[https, admin]);
    let problems = || {
        let (_, body) = common::curl(&[&format!("http://127.0.0.1:{admin}/status.json")]);
        serde_json::from_str::<serde_json::Value>(&body).map(|v| v["problems"].to_string()).unwrap_or_default()
    };
    // A key that no longer matches its certificate: never served, reported...
    let store = env.store();
    fs::copy(store.join("certs").join(&other).join("key.pem"), store.join("certs").join(&good).join("key.pem"))
        .unwrap();
    // ...and a store and a key others can read.
    fs::set_permissions(&store, fs::Permissions::from_mode(0o777)).unwrap();
    fs::set_permissions(store.join("certs").join(&other).join("key.pem"), fs::Permissions::from_mode(0o644)).unwrap();
    let all = |p: &str| {
        p.contains(&format!("{good}: not served")) && p.contains("must be 0700") && p.contains("keys must be 0600")
    };
    assert!(eventually(10, || all(&problems())), "{}", problems());
    // Still there after more reloads that read nothing new.
    for _ in 0..2 {
        daemon.signal("HUP");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(all(&problems()), "problems lost after reloads: {}", problems());
    let r = env.run(&["--config", env.path("portcullis.toml").to_str().unwrap(), "check-config"]);
    let said = format!("{}{}", r.stdout, r.stderr);
    assert!(all(&said), "check-config: {said}");

    // The store directory replaced by another (as a restore from backup does): a
    // change in the new one is served at once, not at the next rescan.
    fs::set_permissions(&store, fs::Permissions::from_mode(0o700)).unwrap();
    let copy = env.path("store.new");
    assert!(Command::new("cp").arg("-a").arg(&store).arg(&copy).status().unwrap().success());
    fs::rename(&store, env.path("store.old")).unwrap();
    fs::rename(&copy, &store).unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    env.run(&["cert", "create-self-signed", "--name", "Fresh", "--common-name", "fresh.test"]).ok();
    assert!(
        eventually(5, || common::served_cn(https, Some("fresh.test")).as_deref() == Some("fresh.test")),
        "the new store's change was not served within 5 s"
    );
}

/// Out of file descriptors (EMFILE), every listener's accept fails with the connection
/// still queued; accepting again at once would spin a core. The TLS, plain-HTTP and
/// admin listeners all back off, warn once, and serve again when descriptors free up.
#[test]
fn out_of_descriptors_no_listener_spins() {
    let env = Env::new();
    let (https, plain, admin) = (free_port(), free_port(), free_port());
    env.run(&["cert", "create-self-signed", "--name", "Site", "--common-name", "www.example.test"]).ok();
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\n[http]\nlisten = [\"127.0.0.1:{plain}\"]\n\
         [[listener]]\nname = \"public\"\nbind = [\"127.0.0.1:{https}\"]\nmax_connections = 10000\nhandshake_timeout_secs = 60\n"
    );
    let path = env.write("portcullis.toml", &config);
    let daemon = daemon_with_nofile(&env, &path, 96);
    for port in [https, plain, admin] {
        common::wait_port(port);
    }
    // Silent TLS clients take every descriptor the daemon has left; more wait in the
    // backlogs of all three listeners.
    let mut held: Vec<TcpStream> = (0..150).filter_map(|_| TcpStream::connect(("127.0.0.1", https)).ok()).collect();
    for port in [plain, admin] {
        held.extend((0..5).filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok()));
    }
    let log = || fs::read_to_string(env.path("daemon.log")).unwrap_or_default();
    assert!(eventually(10, || log().contains("Too many open files")), "never ran out: {}", log());
    let before = cpu_ticks(daemon.0.id());
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_ticks(daemon.0.id()) - before;
    assert!(used < 60, "the daemon used {used} ticks of 300 while out of descriptors");
    let warnings = log().matches("accept failed").count();
    assert!((1..=6).contains(&warnings), "{warnings} accept warnings: {}", log());

    // Descriptors free again: every listener serves.
    drop(held);
    assert!(
        eventually(10, || common::served_cn(https, Some("www.example.test")).as_deref() == Some("www.example.test")),
        "the TLS listener did not recover"
    );
    let status = common::curl(&["-o", "/dev/null", "-w", "%{http_code}", &format!("http://127.0.0.1:{plain}/x")]).1;
    assert_eq!(status, "301", "plain HTTP after recovery");
    let health = common::curl(&[&format!("http://127.0.0.1:{admin}/healthz")]).1;
    assert_eq!(health.trim(), "ok", "admin after recovery");
}
