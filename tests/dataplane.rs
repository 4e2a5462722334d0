//! The data plane against real clients: openssl s_client for certificate selection,
//! curl over HTTP/1.1 and HTTP/2 through http_proxy to a real backend, passthrough to a
//! backend TLS server, tcp_proxy to an echo server, and the admin metrics.

// Fixtures are written by hand.
#![allow(clippy::disallowed_methods)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

use common::{Env, curl, free_port, openssl, served_cn, wait_port};

fn cfg_arg(env: &Env) -> String {
    env.path("portcullis.toml").display().to_string()
}

fn create(env: &Env, name: &str, extra: &[&str]) {
    let mut args = vec!["cert", "create-self-signed", "--name", name];
    args.extend_from_slice(extra);
    env.run(&args).ok();
}

#[test]
fn sni_selection_per_listener() {
    let env = Env::initialised();
    let (p1, p2, p3, admin) = (free_port(), free_port(), free_port(), free_port());
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:{admin}"

[[listener]]
name = "public"
bind = ["127.0.0.1:{p1}"]

[[listener]]
name = "strict"
bind = ["127.0.0.1:{p2}"]
no_sni = "reject"
unknown_sni = "reject"

[[listener]]
name = "plain"
bind = ["127.0.0.1:{p3}"]

[[route]]
listener = "public"
hosts = ["*"]
handler = {{ type = "static", body = "public" }}
"#
    );
    env.write("portcullis.toml", &config);
    let c = cfg_arg(&env);
    create(&env, "Exact", &["--common-name", "www.example.test"]);
    create(&env, "Wild", &["--san", "*.example.test"]);
    create(&env, "Fallback A", &["--san", "fallback-a.example.test"]);
    create(&env, "Global", &["--san", "global.example.test"]);
    for (id, listeners) in [("exact", vec!["public", "strict"]), ("wild", vec!["public"])] {
        let mut args = vec!["--config", &c, "cert", "assign", id];
        for l in &listeners {
            args.extend(["--listener", l]);
        }
        env.run(&args).ok();
    }
    env.run(&["--config", &c, "cert", "set-default", "fallback-a", "--listener", "public"]).ok();
    // Listener names are checked against the configuration.
    let run = env.run(&["--config", &c, "cert", "assign", "exact", "--listener", "nope"]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("--listener: \"nope\" is not a configured listener"), "{}", run.stderr);
    // `cert list` shows where each certificate is in use.
    let list = env.list();
    let listeners_of = |id: &str| list.iter().find(|c| c["id"] == id).unwrap()["listeners"].clone();
    assert_eq!(listeners_of("exact"), serde_json::json!(["public", "strict"]));
    assert_eq!(listeners_of("fallback-a"), serde_json::json!(["public"]));

    let mut daemon = env.daemon(&config, &[p1, p2, p3, admin]);
    // (listener, port, SNI, expected CN or None for a refused handshake, expected `cert which` reason)
    type Case<'a> = (&'a str, u16, Option<&'a str>, Option<&'a str>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        ("public", p1, Some("www.example.test"), Some("www.example.test"), "exact name match"),
        ("public", p1, Some("WWW.Example.TEST"), Some("www.example.test"), "exact name match"),
        ("public", p1, Some("foo.example.test"), Some("Wild"), "wildcard match"),
        (
            "public",
            p1,
            Some("a.b.example.test"),
            Some("Fallback A"),
            "listener default (no candidate certificate of this listener covers the name)",
        ),
        ("public", p1, Some("example.test"), Some("Fallback A"), "listener default"),
        ("public", p1, Some("unknown.test"), Some("Fallback A"), "listener default"),
        ("public", p1, None, Some("Fallback A"), "listener default (no SNI)"),
        ("strict", p2, Some("www.example.test"), Some("www.example.test"), "exact name match"),
        ("strict", p2, Some("foo.example.test"), None, "rejected by the listener's unknown_sni policy"),
        ("strict", p2, None, None, "rejected by the listener's no_sni policy"),
        // No assignments: every stored certificate is a candidate (auto-selection).
        ("plain", p3, Some("www.example.test"), Some("www.example.test"), "exact name match"),
        ("plain", p3, Some("foo.example.test"), Some("Wild"), "wildcard match"),
        ("plain", p3, Some("unknown.test"), Some("Portcullis Default"), "factory default"),
        ("plain", p3, None, Some("Portcullis Default"), "factory default (no SNI)"),
    ];
    for (listener, port, sni, want, reason) in &cases {
        assert_eq!(served_cn(*port, *sni).as_deref(), *want, "{listener} {sni:?}");
        let which =
            env.run(&["--config", &c, "--json", "cert", "which", sni.unwrap_or(""), "--listener", listener]).json();
        assert!(which["reason"].as_str().unwrap().starts_with(reason), "{listener} {sni:?}: {which}");
    }

    // A global default takes over listeners without assignments, after a reload.
    env.run(&["cert", "set-default", "global"]).ok();
    daemon.signal("HUP");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while served_cn(p3, None).as_deref() != Some("Global") {
        assert!(std::time::Instant::now() < deadline, "the global default was not picked up:\n{}", env.daemon_log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(served_cn(p1, None).as_deref(), Some("Fallback A"), "assigned listeners keep their own default");

    // TLS 1.1 is refused; TLS 1.2 and 1.3 work.
    let connect = format!("127.0.0.1:{p1}");
    let (ok, _, _) =
        openssl(&["s_client", "-connect", &connect, "-tls1_1", "-servername", "www.example.test"], Some(""));
    assert!(!ok, "TLS 1.1 handshake succeeded");
    for v in ["-tls1_2", "-tls1_3"] {
        let (_, out, _) = openssl(&["s_client", "-connect", &connect, v, "-servername", "www.example.test"], Some(""));
        assert!(out.contains("Cipher is") && !out.contains("Cipher is (NONE)"), "{v}: {out}");
    }
    // The server's suite order (Mozilla's: AES-128-GCM first) wins over OpenSSL's, which
    // offers AES-256-GCM first; a client offering only AES-256-GCM still gets it.
    let suite = |extra: &[&str]| {
        let mut args = vec!["s_client", "-connect", &connect, "-servername", "www.example.test"];
        args.extend_from_slice(extra);
        let (_, out, _) = openssl(&args, Some(""));
        out.lines().find_map(|l| l.split("Cipher is ").nth(1).map(str::to_owned)).unwrap_or(out)
    };
    assert_eq!(suite(&["-tls1_3"]), "TLS_AES_128_GCM_SHA256");
    assert_eq!(suite(&["-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384"]), "TLS_AES_256_GCM_SHA384");
    assert_eq!(suite(&["-tls1_2"]), "ECDHE-ECDSA-AES128-GCM-SHA256");

    // Metrics count what happened.
    let (_, metrics) = curl(&[&format!("http://127.0.0.1:{admin}/metrics")]);
    let value = |needle: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(needle))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{needle} not in:\n{metrics}"))
    };
    assert!(value("portcullis_tls_handshakes_total{listener=\"public\",result=\"ok\"}") >= 8.0);
    assert!(value("portcullis_tls_handshakes_total{listener=\"strict\",result=\"error\"}") >= 2.0);
    assert!(value("portcullis_sni_selections_total{listener=\"strict\",outcome=\"no_sni_rejected\"}") >= 1.0);
    assert!(value("portcullis_sni_selections_total{listener=\"strict\",outcome=\"unknown_sni_rejected\"}") >= 1.0);
    assert!(value("portcullis_sni_selections_total{listener=\"public\",outcome=\"unknown_sni_default\"}") >= 3.0);
    assert!(value("portcullis_sni_selections_total{listener=\"public\",outcome=\"matched\"}") >= 3.0);
    assert!(value("portcullis_connections_total{listener=\"public\"}") >= 8.0);
    assert!(value("portcullis_bytes_total{listener=\"public\",direction=\"out\"}") > 1000.0);
    assert!(value("portcullis_certificate_expiry_seconds{id=\"exact\",friendly_name=\"Exact\"}") > 364.0 * 86400.0);
    assert!(value("portcullis_reloads_total{result=\"ok\"}") >= 2.0);
    assert!(metrics.contains("portcullis_tls_handshake_duration_seconds"), "{metrics}");
    assert!(metrics.contains("portcullis_connections_active{listener=\"public\"}"), "{metrics}");
    let (ok, health) = curl(&[&format!("http://127.0.0.1:{admin}/healthz")]);
    assert!(ok && health == "ok\n");

    // SIGTERM: exits 0.
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(10), Some(0), "{}", env.daemon_log());
}

#[test]
fn http_proxy_tcp_proxy_and_passthrough() {
    let env = Env::initialised();
    let (_backend, backend_port) = env.backend();
    let (_backend2, backend2_port) = env.backend();
    let dead2_port = free_port();
    let (https, plain, admin) = (free_port(), free_port(), free_port());
    // A TLS backend with its own certificate, for passthrough.
    let tls_backend_port = free_port();
    let bkey = env.path("backend.key").display().to_string();
    let bcert = env.path("backend.pem").display().to_string();
    common::openssl_self_signed(
        &bkey,
        &bcert,
        "/CN=backend.example.test",
        "2",
        &["-addext", "subjectAltName=DNS:pass.example.test"],
    );
    let accept = tls_backend_port.to_string();
    let _tls_backend = common::Proc(
        std::process::Command::new("openssl")
            .args(["s_server", "-accept", &accept, "-cert", &bcert, "-key", &bkey, "-www", "-quiet"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(tls_backend_port);
    // An echo server, for tcp_proxy.
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let echo_port = echo.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in echo.incoming().take(4) {
            let mut s = stream.unwrap();
            let mut line = String::new();
            BufReader::new(s.try_clone().unwrap()).read_line(&mut line).unwrap();
            s.write_all(format!("echo: {line}").as_bytes()).unwrap();
        }
    });
    let dead_port = free_port();
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:{admin}"

[http]
listen = ["127.0.0.1:{plain}"]

[[listener]]
name = "public"
bind = ["127.0.0.1:{https}"]

[[route]]
hosts = ["www.example.test"]
handler = {{ type = "http_proxy", upstreams = ["127.0.0.1:{backend_port}"] }}

[[route]]
hosts = ["echo.example.test"]
handler = {{ type = "tcp_proxy", upstream = "127.0.0.1:{echo_port}" }}

[[route]]
hosts = ["pass.example.test"]
handler = {{ type = "passthrough", upstream = "127.0.0.1:{tls_backend_port}" }}

[[route]]
hosts = ["pool.example.test"]
handler = {{ type = "http_proxy", upstreams = ["127.0.0.1:{dead2_port}", "127.0.0.1:{backend_port}", "127.0.0.1:{backend2_port}"], connect_timeout_secs = 2 }}

[[route]]
hosts = ["down.example.test"]
handler = {{ type = "http_proxy", upstreams = ["127.0.0.1:{dead_port}"], connect_timeout_secs = 2 }}

[[route]]
hosts = ["old.example.test"]
handler = {{ type = "redirect", to = "https://www.example.test", status = 308 }}
"#
    );
    env.write("portcullis.toml", &config);
    let c = cfg_arg(&env);
    create(&env, "Site", &["--common-name", "www.example.test", "--san", "*.example.test"]);
    env.run(&["--config", &c, "cert", "assign", "site", "--listener", "public"]).ok();
    let site_pem = env.write("site.pem", env.run(&["cert", "show", "site", "--pem"]).ok());
    let cacert = site_pem.display().to_string();
    let mut daemon = env.daemon(&config, &[https, plain, admin]);
    // The daemon opts out of transparent huge pages (peak RSS); kernels since 6.x say so
    // in /proc/PID/status.
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.0.id())).unwrap();
    if let Some(line) = status.lines().find(|l| l.starts_with("THP_enabled:")) {
        assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
    }
    let resolve = |host: &str| format!("{host}:{https}:127.0.0.1");
    let url = |host: &str, path: &str| format!("https://{host}:{https}{path}");

    // HTTP/1.1 and HTTP/2, verified against our certificate, with forwarded headers and a
    // 100 kB upload streamed through.
    let upload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let upload_path = env.path("upload.bin");
    std::fs::write(&upload_path, &upload).unwrap();
    let data = format!("@{}", upload_path.display());
    for version in ["--http1.1", "--http2"] {
        let (ok, body) = curl(&[
            version,
            "--cacert",
            &cacert,
            "--resolve",
            &resolve("www.example.test"),
            "-H",
            "Connection: x-client-hop",
            "-H",
            "X-Client-Hop: secret",
            "-H",
            "X-Forwarded-For: 203.0.113.9",
            "--data-binary",
            &data,
            "-w",
            "\n%{http_version} %{http_code}",
            "-D",
            "-",
            &url("www.example.test", "/upload?x=1"),
        ]);
        assert!(ok, "{version}: curl failed: {body}\n{}", env.daemon_log());
        let (head_and_json, tail) = body.rsplit_once('\n').unwrap();
        let want_version = if version == "--http2" { "2" } else { "1.1" };
        assert_eq!(tail, format!("{want_version} 200"), "{body}");
        let json_start = head_and_json.find('{').unwrap();
        let (head, json) = head_and_json.split_at(json_start);
        assert!(!head.to_lowercase().contains("x-backend-hop"), "hop-by-hop response header leaked: {head}");
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["method"], "POST");
        assert_eq!(v["path"], "/upload?x=1");
        assert_eq!(v["body_len"], 100_000);
        assert_eq!(v["body_sha256"], hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&upload)));
        let h = &v["headers"];
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1", "{version}");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], format!("www.example.test:{https}"));
        if version == "--http1.1" {
            // (HTTP/2 has no Connection header: there X-Client-Hop is an ordinary header.)
            assert!(h.get("x-client-hop").is_none(), "hop-by-hop request header leaked: {h}");
        }
    }

    // Round-robin over three upstreams, one of them down: at most the first request that
    // meets the dead one fails (passive health then skips it); both live ones serve.
    let mut ports = Vec::new();
    let mut failed = 0;
    for _ in 0..12 {
        let (_, body) = curl(&[
            "-k",
            "--resolve",
            &resolve("pool.example.test"),
            "-w",
            "\n%{http_code}",
            &url("pool.example.test", "/rr"),
        ]);
        let (json, code) = body.rsplit_once('\n').unwrap();
        if code == "502" {
            failed += 1;
            continue;
        }
        assert_eq!(code, "200", "{body}");
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        ports.push(v["port"].as_u64().unwrap());
    }
    assert!(failed <= 1, "{failed} requests failed: the dead upstream was not skipped");
    for p in [backend_port, backend2_port] {
        let n = ports.iter().filter(|&&x| x == u64::from(p)).count();
        assert!(n >= 4, "upstream {p} served {n} of {} requests: {ports:?}", ports.len());
    }

    // Upstream down: 502 with a short body.
    let (_, body) =
        curl(&["-k", "--resolve", &resolve("down.example.test"), "-w", "%{http_code}", &url("down.example.test", "/")]);
    assert!(body.ends_with("502") && body.contains("Bad Gateway"), "{body}");
    // Unknown host on a listener without a catch-all route: 421.
    let (_, body) = curl(&[
        "-k",
        "--resolve",
        &resolve("nobody.example.test"),
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &url("nobody.example.test", "/"),
    ]);
    assert_eq!(body, "421");
    // Redirect handler.
    let (_, body) = curl(&[
        "-k",
        "--resolve",
        &resolve("old.example.test"),
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        &url("old.example.test", "/a?b"),
    ]);
    assert_eq!(body, "308 https://www.example.test/a?b");
    // The plain-HTTP listener redirects to https.
    let (_, body) = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        "-H",
        "Host: www.example.test",
        &format!("http://127.0.0.1:{plain}/x"),
    ]);
    assert_eq!(body, "301 https://www.example.test/x");

    // tcp_proxy: TLS-terminated echo.
    let connect = format!("127.0.0.1:{https}");
    let (_, out, err) = openssl(
        &["s_client", "-connect", &connect, "-servername", "echo.example.test", "-quiet", "-ign_eof"],
        Some("hello tcp\n"),
    );
    assert!(out.contains("echo: hello tcp"), "{out}{err}");

    // passthrough: the backend's own certificate reaches the client.
    assert_eq!(served_cn(https, Some("pass.example.test")).as_deref(), Some("backend.example.test"));
    assert_eq!(served_cn(https, Some("www.example.test")).as_deref(), Some("www.example.test"));

    // SIGTERM drains: a slow request in flight completes, then the process exits 0.
    let slow = std::thread::spawn({
        let (cacert, resolve, url) = (cacert, resolve("www.example.test"), url("www.example.test", "/slow"));
        move || curl(&["--cacert", &cacert, "--resolve", &resolve, "-w", "\n%{http_code}", &url])
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    daemon.signal("TERM");
    let (ok, body) = slow.join().unwrap();
    assert!(ok && body.ends_with("\n200"), "in-flight request was dropped: {body}");
    assert_eq!(daemon.wait_exit(15), Some(0), "{}", env.daemon_log());
}

/// Established TCP connections to 127.0.0.1:`port`, from the kernel's socket table.
/// Reads a request head for the raw test backends; returns its Content-Length (0 if
/// none), or `None` if the connection ended first.
fn read_head(reader: &mut impl BufRead) -> Option<u64> {
    let mut length = 0;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return None;
        }
        if line == "\r\n" {
            return Some(length);
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
    }
}

fn established_to(port: u16) -> usize {
    let remote = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[2] == remote && f[3] == "01"
        })
        .count()
}

/// http_proxy keeps upstream connections: requests on one client connection and on later
/// client connections reuse one backend connection (the backend reports the source port
/// each request came from), a connection the backend closed while it was idle is not
/// used for the next request, and one idle for `pool_idle_timeout_secs` is closed.
#[test]
fn http_proxy_reuses_upstream_connections_and_survives_closed_ones() {
    let env = Env::initialised();
    let (_backend, backend_port) = env.backend();
    let (_idle_backend, idle_port) = env.backend();
    // A backend that answers one request per connection and then closes it without
    // saying so (no "Connection: close"): a kept connection goes stale under the proxy.
    let closing = TcpListener::bind("127.0.0.1:0").unwrap();
    let closing_port = closing.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&accepted);
    std::thread::spawn(move || {
        for stream in closing.incoming().take(10) {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut s = stream.unwrap();
            read_head(&mut BufReader::new(s.try_clone().unwrap()));
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nclosing").unwrap();
        }
    });
    // A backend that answers before reading the request body ("early"), then reads it
    // and serves the next request on the same connection, telling which one it was.
    let early = TcpListener::bind("127.0.0.1:0").unwrap();
    let early_port = early.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for (n, stream) in early.incoming().take(4).enumerate() {
            let mut s = stream.unwrap();
            let mut reader = BufReader::new(s.try_clone().unwrap());
            for request in 0.. {
                let Some(length) = read_head(&mut reader) else { break }; // the proxy closed it
                let body = format!("connection {n} request {request}");
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                s.write_all(head.as_bytes()).unwrap();
                std::io::copy(&mut std::io::Read::take(&mut reader, length), &mut std::io::sink()).unwrap();
            }
        }
    });
    // A backend that never reads a request body: it answers half a second after the
    // request head (by then an upload fills the socket buffers to it) and holds each
    // connection open.
    let stalling = TcpListener::bind("127.0.0.1:0").unwrap();
    let stalling_port = stalling.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for (n, stream) in stalling.incoming().take(2).enumerate() {
            let mut s = stream.unwrap();
            read_head(&mut BufReader::new(s.try_clone().unwrap()));
            std::thread::sleep(std::time::Duration::from_millis(500));
            s.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nstalled {n}").as_bytes()).unwrap();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_secs(60));
                drop(s);
            });
        }
    });
    let (https, admin) = (free_port(), free_port());
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:{admin}"

[[listener]]
name = "public"
bind = ["127.0.0.1:{https}"]

[[route]]
hosts = ["www.example.test"]
handler = {{ type = "http_proxy", upstreams = ["127.0.0.1:{backend_port}"] }}

[[route]]
hosts = ["stalling.example.test"]
handler = {{ type = "http_proxy", upstreams = ["127.0.0.1:{stalling_port}"] }}

[[route]]
hosts = ["closing.example.test"]
handler = {{ type = "http_proxy", upstreams = ["127.0.0.1:{closing_port}"] }}

[[route]]
hosts = ["early.example.test"]
handler = {{ type = "http_proxy", upstreams = ["127.0.0.1:{early_port}"] }}

[[route]]
hosts = ["idle.example.test"]
handler = {{ type = "http_proxy", upstreams = ["127.0.0.1:{idle_port}"], pool_idle_timeout_secs = 1 }}
"#
    );
    env.write("portcullis.toml", &config);
    let _daemon = env.daemon(&config, &[https, admin]);
    let resolve = |host: &str| format!("{host}:{https}:127.0.0.1");

    // Three requests on one client connection, then two more client connections.
    let url = format!("https://www.example.test:{https}/r");
    let www = resolve("www.example.test");
    let mut ports = Vec::new();
    for urls in [vec![url.as_str(); 3], vec![url.as_str()], vec![url.as_str()]] {
        let mut args = vec!["-k", "--resolve", &www];
        for u in &urls {
            args.push(u);
            args.push("-w");
            args.push("\n");
        }
        let (ok, out) = curl(&args);
        assert!(ok, "{out}\n{}", env.daemon_log());
        for line in out.lines().filter(|l| l.starts_with('{')) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            ports.push(v["peer_port"].as_u64().unwrap());
        }
    }
    assert_eq!(ports.len(), 5, "{ports:?}");
    assert!(ports.iter().all(|p| *p == ports[0]), "one upstream connection for all five requests: {ports:?}");

    // The closing backend: every request succeeds although each kept connection was
    // closed by the backend after its answer.
    let url = format!("https://closing.example.test:{https}/c");
    for i in 0..3 {
        let (ok, out) = curl(&["-k", "--resolve", &resolve("closing.example.test"), &url]);
        assert!(ok && out == "closing", "request {i}: {out}\n{}", env.daemon_log());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);

    // Idle for longer than pool_idle_timeout_secs: the proxy closes its connection.
    let url = format!("https://idle.example.test:{https}/i");
    let (ok, out) = curl(&["-k", "--resolve", &resolve("idle.example.test"), &url]);
    assert!(ok && out.starts_with('{'), "{out}");
    assert_eq!(established_to(idle_port), 1, "one kept connection to the backend");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(6);
    while established_to(idle_port) > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(established_to(idle_port), 0, "the idle connection was closed");

    // A response that ends while its 2 MB request body is still being sent (HTTP/1.1
    // client): the connection is pooled only once the body is through, and then serves
    // the next request.
    let upload = env.write("upload.bin", &"u".repeat(2 << 20));
    let url = format!("https://early.example.test:{https}/e");
    let data = format!("@{}", upload.display());
    let resolve = resolve("early.example.test");
    let (ok, out) = curl(&["-k", "--http1.1", "--resolve", &resolve, "--data-binary", &data, &url]);
    assert!(ok && out == "connection 0 request 0", "{out}\n{}", env.daemon_log());
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (ok, out) = curl(&["-k", "--resolve", &resolve, &url]);
    assert!(ok && out == "connection 0 request 1", "{out}\n{}", env.daemon_log());

    // An HTTP/2 client's 32 MB upload (more than the socket buffers and windows between
    // it and a backend that reads nothing), answered before its end. Without the proxy's help the
    // client waits for an upload nobody reads; the proxy reads and discards the rest for a
    // moment after the response, then resets it with NO_ERROR (RFC 9113 §8.1), and closes
    // the upstream connection, left with part of a body: the next request gets a new one.
    // nghttp (nghttp2) is the client; curl 7.88 waits even after the reset.
    let upload = env.write("upload32.bin", &"u".repeat(32 << 20));
    let url = format!("https://127.0.0.1:{https}/s");
    let nghttp = |args: &[&str]| {
        let out = std::process::Command::new("timeout")
            .args(["20", "nghttp", "-H", ":authority: stalling.example.test"])
            .args(args)
            .arg(&url)
            .output()
            .expect("nghttp (make test installs nghttp2-client)");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let started = std::time::Instant::now();
    let (ok, out) = nghttp(&["-d", upload.to_str().unwrap()]);
    assert!(ok && out == "stalled 0", "{out:?} after {:?}\n{}", started.elapsed(), env.daemon_log());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while established_to(stalling_port) > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(established_to(stalling_port), 0, "the cut upstream connection was closed");
    let (ok, out) = nghttp(&[]);
    assert!(ok && out == "stalled 1", "{out:?}\n{}", env.daemon_log());
}

/// WebSocket through http_proxy (HTTP/1.1 Upgrade, RFC 6455), with Debian's
/// python3-websockets on both ends: echo of text and of 1 MiB binary, the handshake's
/// headers at the backend, the tunnel counted as an active connection until it closes,
/// and a tunnel idle for `tunnel_idle_timeout_secs` closed by the proxy.
#[test]
fn http_proxy_tunnels_websocket_upgrades() {
    use std::process::{Command, Stdio};
    let env = Env::initialised();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/websocket.py");
    let ws_port = free_port();
    let _backend = common::Proc(
        Command::new("/usr/bin/python3")
            .args([script, "server", &ws_port.to_string()])
            .stderr(Stdio::null()) // tracebacks of the connections the idle timeout cuts
            .spawn()
            .expect("python3-websockets (make test installs it)"),
    );
    wait_port(ws_port);
    let (_http_backend, http_port) = env.backend();
    // A backend that switches every request to protocol "foo", asked for or not.
    let switching = TcpListener::bind("127.0.0.1:0").unwrap();
    let switching_port = switching.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in switching.incoming().take(2) {
            let mut s = stream.unwrap();
            read_head(&mut BufReader::new(s.try_clone().unwrap()));
            let _ = s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\n");
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    });
    let (https, admin) = (free_port(), free_port());
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:{admin}"

[runtime]
drain_timeout_secs = 2

[[listener]]
name = "public"
bind = ["127.0.0.1:{https}"]

[[route]]
hosts = ["plain.example.test"]
handler = {{ type = "http_proxy", upstreams = ["127.0.0.1:{http_port}"] }}

[[route]]
hosts = ["switching.example.test"]
handler = {{ type = "http_proxy", upstreams = ["127.0.0.1:{switching_port}"] }}

[[route]]
hosts = ["ws.example.test"]
handler = {{ type = "http_proxy", upstreams = ["127.0.0.1:{ws_port}"] }}

[[route]]
hosts = ["idle.example.test"]
handler = {{ type = "http_proxy", upstreams = ["127.0.0.1:{ws_port}"], tunnel_idle_timeout_secs = 1 }}
"#
    );
    let mut daemon = env.daemon(&config, &[https, admin]);
    let active = r#"portcullis_connections_active{listener="public"}"#;

    // What reaches an HTTP backend (tests/support/backend.py, which ignores upgrades):
    // a WebSocket upgrade is forwarded and its 200 answer passed on; h2c, HTTP/1.0 and a
    // request with a body are not upgrades, so Upgrade and Connection are dropped.
    let resolve = format!("plain.example.test:{https}:127.0.0.1");
    let url = format!("https://plain.example.test:{https}/u");
    let seen = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["-k", "--http1.1", "--resolve", &resolve, "-H", "Connection: Upgrade"];
        args.extend_from_slice(extra);
        args.push(&url);
        let (ok, out) = curl(&args);
        assert!(ok, "{extra:?}: {out}\n{}", env.daemon_log());
        serde_json::from_str::<serde_json::Value>(&out).unwrap_or_else(|e| panic!("{extra:?}: {e}: {out}"))["headers"]
            .clone()
    };
    let h = seen(&["-H", "Upgrade: websocket"]);
    assert_eq!((h["upgrade"].as_str(), h["connection"].as_str()), (Some("websocket"), Some("upgrade")), "{h}");
    for extra in [
        &["-H", "Upgrade: h2c"][..],
        &["-H", "Upgrade: websocket", "--http1.0"],
        &["-H", "Upgrade: websocket", "--data", "body"],
    ] {
        let h = seen(extra);
        assert!(h.get("upgrade").is_none() && h["connection"] != "upgrade", "{extra:?}: {h}");
    }
    // A 101 to a protocol nobody asked for is a 502, with or without an upgrade asked.
    let resolve = format!("switching.example.test:{https}:127.0.0.1");
    let url = format!("https://switching.example.test:{https}/s");
    for extra in [&[][..], &["-H", "Connection: Upgrade", "-H", "Upgrade: websocket"]] {
        let mut args = vec!["-k", "--http1.1", "-o", "/dev/null", "-w", "%{http_code}", "--resolve", &resolve];
        args.extend_from_slice(extra);
        args.push(&url);
        assert_eq!(curl(&args).1, "502", "{extra:?}\n{}", env.daemon_log());
    }

    let mut client = Command::new("/usr/bin/python3")
        .args([script, "client", &format!("wss://ws.example.test:{https}/chat"), &https.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(client.stdout.take().unwrap());
    let mut headers = String::new();
    stdout.read_line(&mut headers).unwrap();
    let mut open = String::new();
    stdout.read_line(&mut open).unwrap();
    if open.trim() != "open" {
        let out = client.wait_with_output().unwrap();
        panic!("{headers}{open}{}\n{}", String::from_utf8_lossy(&out.stderr), env.daemon_log());
    }
    let h: serde_json::Value = serde_json::from_str(&headers).unwrap();
    assert_eq!(h["upgrade"], "websocket", "{h}");
    assert_eq!(h["connection"].as_str().map(str::to_ascii_lowercase).as_deref(), Some("upgrade"), "{h}");
    assert_eq!(h["host"], format!("ws.example.test:{https}"), "{h}");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h}");
    assert_eq!(h["x-forwarded-proto"], "https", "{h}");
    assert!(h["sec-websocket-key"].is_string(), "{h}");
    assert_eq!(common::metric(admin, active), Some(1.0), "the open tunnel is an active connection");

    client.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let status = client.wait().unwrap();
    assert!(status.success() && rest.trim() == "closed", "{rest}\n{}", env.daemon_log());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while common::metric(admin, active) != Some(0.0) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(common::metric(admin, active), Some(0.0), "the closed tunnel is no longer counted");
    let (_, metrics) = curl(&[&format!("http://127.0.0.1:{admin}/metrics")]);
    assert!(
        metrics.lines().any(|l| l.starts_with("portcullis_http_requests_total{")
            && l.contains(r#"route="route[2]""#) // ws.example.test
            && l.contains(r#"status="1xx""#)
            && l.ends_with(" 1")),
        "the 101 counted:\n{metrics}"
    );

    // No bytes either way for tunnel_idle_timeout_secs = 1: closed by the proxy.
    let out = Command::new("/usr/bin/python3")
        .args([script, "idle", &format!("wss://idle.example.test:{https}/"), &https.to_string(), "8"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    let secs: f64 = said
        .trim()
        .strip_prefix("closed after ")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{said}{}", String::from_utf8_lossy(&out.stderr)));
    assert!((0.9..4.0).contains(&secs), "closed after {secs} s");

    // SIGTERM with a tunnel open: the drain gives it drain_timeout_secs (2), then the
    // process exits 0 and the tunnel closes with it.
    let idle = Command::new("/usr/bin/python3")
        .args([script, "idle", &format!("wss://ws.example.test:{https}/"), &https.to_string(), "15"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while common::metric(admin, active) != Some(1.0) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(common::metric(admin, active), Some(1.0), "the tunnel is open");
    let start = std::time::Instant::now();
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(10), Some(0), "{}", env.daemon_log());
    let waited = start.elapsed().as_secs_f64();
    assert!((1.5..6.0).contains(&waited), "exited {waited} s after SIGTERM with a tunnel open");
    let said = String::from_utf8_lossy(&idle.wait_with_output().unwrap().stdout).into_owned();
    assert!(said.starts_with("closed after"), "{said}");
}
