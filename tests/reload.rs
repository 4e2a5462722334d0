//! Hot reload without SIGHUP: store and config changes are picked up by the watcher;
//! a broken config keeps the last good snapshot serving until it is fixed.

// Configs are edited by hand, as an operator would.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use common::{Env, curl, free_port, served_cn};

/// Polls `check` until it is true or `secs` pass; returns how long it took.
fn within(secs: u64, what: &str, env: &Env, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < Duration::from_secs(secs), "{what}: not within {secs}s\n{}", env.daemon_log());
        std::thread::sleep(Duration::from_millis(25));
    }
    start.elapsed()
}

#[test]
fn store_and_config_changes_are_served_without_restart() {
    let env = Env::initialised();
    let (port, admin) = (free_port(), free_port());
    let config = |body: &str| {
        format!(
            "[admin]\nlisten = \"127.0.0.1:{admin}\"\n[[listener]]\nname = \"public\"\nbind = [\"127.0.0.1:{port}\"]\n[[route]]\nhosts = [\"*\"]\nhandler = {{ type = \"static\", body = \"{body}\" }}\n"
        )
    };
    let _daemon = env.daemon(&config("v1"), &[port, admin]);
    let cfg = env.path("portcullis.toml");
    let url = format!("https://127.0.0.1:{port}/");
    let body = || curl(&["-k", &url]).1;
    assert_eq!(body(), "v1");
    assert_eq!(served_cn(port, None).as_deref(), Some("Portcullis Default"));
    // Idle: reading the store (a reload does) must not count as a change.
    std::thread::sleep(Duration::from_millis(1500));
    let (_, metrics) = curl(&[&format!("http://127.0.0.1:{admin}/metrics")]);
    assert!(metrics.contains("portcullis_reloads_total{result=\"ok\"} 1\n"), "reloading while idle:\n{metrics}");

    // A new default certificate, made by the CLI while the proxy runs.
    env.run(&["cert", "create-self-signed", "--name", "Fresh", "--san", "fresh.example.test"]).ok();
    env.run(&["cert", "set-default", "fresh"]).ok();
    let took = within(5, "new default certificate", &env, || served_cn(port, None).as_deref() == Some("Fresh"));
    eprintln!("certificate change served after {took:?}");

    // A config edit: the route's body changes.
    std::fs::write(&cfg, config("v2")).unwrap();
    let took = within(5, "config edit", &env, || body() == "v2");
    eprintln!("config change served after {took:?}");

    // A broken edit: the last good snapshot keeps serving, the error names file and line.
    std::fs::write(&cfg, config("v3").replace("[[route]]", "[[route]\n")).unwrap();
    within(5, "reload error logged", &env, || env.daemon_log().contains("reload failed"));
    assert_eq!(body(), "v2");
    assert!(env.daemon_log().contains("portcullis.toml:"), "{}", env.daemon_log());
    let (_, metrics) = curl(&[&format!("http://127.0.0.1:{admin}/metrics")]);
    assert!(metrics.contains("portcullis_reloads_total{result=\"error\"}"), "{metrics}");
    let (_, status) = curl(&[&format!("http://127.0.0.1:{admin}/status.json")]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert!(status["reload"]["last_error"].as_str().unwrap().contains("portcullis.toml:"), "{status}");
    assert!(metrics.contains("portcullis_last_reload_success_timestamp_seconds"), "{metrics}");
    // An unknown key, then a bad upstream address: each refused, v2 still served.
    for (broken, want) in [
        (config("v3").replace("[[listener]]", "colour = \"blue\"\n[[listener]]"), "unknown field `colour`"),
        (
            config("v3")
                .replace("type = \"static\", body = \"v3\"", "type = \"http_proxy\", upstreams = [\"no-port\"]"),
            "upstreams: \"no-port\" is not host:port",
        ),
    ] {
        std::fs::write(&cfg, broken).unwrap();
        within(5, want, &env, || env.daemon_log().contains(want));
        assert_eq!(body(), "v2");
    }
    // Fixed: served again.
    std::fs::write(&cfg, config("v4")).unwrap();
    within(5, "fixed config", &env, || body() == "v4");
    // `portcullis status` shows the running daemon.
    let status = env.run(&["--config", cfg.to_str().unwrap(), "--json", "status"]).json();
    assert!(status["daemon"]["reload"]["generation"].as_u64().unwrap() > 1, "{status}");
    assert!(status["daemon"]["reload"]["last_error"].is_null(), "{status}");

    // Damage by hand: a garbage certificate file, then a truncated key. The last good
    // version keeps serving, and the problem is reported.
    let dir = env.store().join("certs/fresh");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let good_cert = std::fs::read(&cert).unwrap();
    let good_key = std::fs::read(&key).unwrap();
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n").unwrap();
    within(5, "damaged certificate reported", &env, || {
        let log = env.daemon_log();
        log.contains("cert.pem") && log.contains("still serving the last good version")
    });
    assert_eq!(served_cn(port, None).as_deref(), Some("Fresh"));
    std::fs::write(&cert, &good_cert).unwrap();
    std::fs::write(&key, &good_key[..good_key.len() / 2]).unwrap();
    within(5, "truncated key reported", &env, || env.daemon_log().contains("private key unreadable or missing"));
    assert_eq!(served_cn(port, None).as_deref(), Some("Fresh"));
    // A valid key that does not match the certificate is never served.
    std::fs::copy(env.store().join("certs/portcullis-default/key.pem"), &key).unwrap();
    within(5, "mismatched key not served", &env, || served_cn(port, None).as_deref() == Some("Portcullis Default"));
    std::fs::write(&key, &good_key).unwrap();
    within(5, "repaired entry served again", &env, || served_cn(port, None).as_deref() == Some("Fresh"));

    // Deleting the default certificate falls back to the factory default.
    env.run(&["cert", "delete", "fresh", "--force"]).ok();
    within(5, "fallback to the factory default", &env, || {
        served_cn(port, None).as_deref() == Some("Portcullis Default")
    });

    // The whole store removed: the proxy keeps its last snapshot and says why.
    std::fs::remove_dir_all(env.store()).unwrap();
    within(5, "store removal reported", &env, || env.daemon_log().contains("the store was removed"));
    assert_eq!(body(), "v4");
    assert_eq!(served_cn(port, None).as_deref(), Some("Portcullis Default"));
}

#[test]
fn listener_addresses_follow_the_config() {
    let env = Env::initialised();
    let (port, extra, admin) = (free_port(), free_port(), free_port());
    let config = |with_extra: bool| {
        let binds = if with_extra {
            format!("\"127.0.0.1:{port}\", \"127.0.0.1:{extra}\"")
        } else {
            format!("\"127.0.0.1:{port}\"")
        };
        format!(
            "[admin]\nlisten = \"127.0.0.1:{admin}\"\n[[listener]]\nname = \"public\"\nbind = [{binds}]\n[[route]]\nhosts = [\"*\"]\nhandler = {{ type = \"static\", body = \"ok\" }}\n"
        )
    };
    let _daemon = env.daemon(&config(false), &[port, admin]);
    let cfg = env.path("portcullis.toml");
    let get = |p: u16| curl(&["-k", &format!("https://127.0.0.1:{p}/")]).1;
    assert_eq!(get(extra), "");
    std::fs::write(&cfg, config(true)).unwrap();
    within(5, "new address opened", &env, || get(extra) == "ok");
    std::fs::write(&cfg, config(false)).unwrap();
    within(5, "removed address closed", &env, || std::net::TcpStream::connect(("127.0.0.1", extra)).is_err());
    assert_eq!(get(port), "ok");
}

/// A config file caught empty (an editor or `>` truncates it before writing, and the
/// watcher reads in between) is refused: taken as "built-in defaults" it would close
/// every configured listener. The last good configuration keeps serving.
#[test]
fn an_emptied_config_file_is_refused_not_taken_as_defaults() {
    let env = Env::initialised();
    let (port, admin) = (free_port(), free_port());
    let config = |body: &str| {
        format!(
            "[admin]\nlisten = \"127.0.0.1:{admin}\"\n[[listener]]\nname = \"public\"\nbind = [\"127.0.0.1:{port}\"]\n[[route]]\nhosts = [\"*\"]\nhandler = {{ type = \"static\", body = \"{body}\" }}\n"
        )
    };
    let _daemon = env.daemon(&config("one"), &[port, admin]);
    let cfg = env.path("portcullis.toml");
    let get = || curl(&["-k", &format!("https://127.0.0.1:{port}/")]).1;
    std::fs::write(&cfg, "\n  \n").unwrap();
    within(5, "the refusal logged", &env, || env.daemon_log().contains("the file is empty"));
    assert_eq!(get(), "one", "still serving the last good configuration");
    let r = env.run(&["--config", cfg.to_str().unwrap(), "check-config"]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("portcullis.toml: the file is empty"), "{r:?}");
    std::fs::write(&cfg, config("two")).unwrap();
    within(5, "the written file applied", &env, || get() == "two");
}

/// Under continuous load (parallel clients, a new TLS connection and a request each):
/// ten certificate replacements and ten config edits, with no failed handshake or
/// request, each new certificate served within a second.
#[test]
fn replacements_under_load_drop_nothing() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let env = Env::initialised();
    let (port, admin) = (free_port(), free_port());
    let config = |body: &str, extra_route: bool| {
        let extra = if extra_route {
            "[[route]]\nhosts = [\"extra.example.test\"]\nhandler = { type = \"static\", body = \"extra\" }\n"
        } else {
            ""
        };
        format!(
            "[admin]\nlisten = \"127.0.0.1:{admin}\"\n[[listener]]\nname = \"public\"\nbind = [\"127.0.0.1:{port}\"]\n{extra}[[route]]\nhosts = [\"*\"]\nhandler = {{ type = \"static\", body = \"{body}\" }}\n"
        )
    };
    env.run(&["cert", "create-self-signed", "--name", "Gen 0", "--san", "gen0.example.test"]).ok();
    env.run(&["cert", "set-default", "gen-0"]).ok();
    let _daemon = env.daemon(&config("b0", false), &[port, admin]);
    let cfg = env.path("portcullis.toml");

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
            let url = format!("https://127.0.0.1:{port}/");
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let (good, out) = curl(&["-k", "-o", "/dev/null", "-w", "%{http_code}", &url]);
                    if good && out == "200" {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!("failed request: {good} {out}");
                    }
                }
            })
        })
        .collect();

    let mut slowest = Duration::ZERO;
    for i in 1..=10 {
        let name = format!("Gen {i}");
        env.run(&["cert", "create-self-signed", "--name", &name, "--san", &format!("gen{i}.example.test")]).ok();
        env.run(&["cert", "set-default", &format!("gen-{i}")]).ok();
        let took =
            within(5, &format!("generation {i}"), &env, || served_cn(port, None).as_deref() == Some(name.as_str()));
        slowest = slowest.max(took);
        env.run(&["cert", "delete", &format!("gen-{}", i - 1), "--force"]).ok();
        // And a config edit: a new body, a route added or removed.
        std::fs::write(&cfg, config(&format!("b{i}"), i % 2 == 1)).unwrap();
        let url = format!("https://127.0.0.1:{port}/");
        within(5, &format!("config edit {i}"), &env, || curl(&["-k", &url]).1 == format!("b{i}"));
        // Spread the changes over about 20 s of load.
        std::thread::sleep(Duration::from_millis(1500));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("{ok} requests, {failed} failed; slowest certificate change served after {slowest:?}");
    assert_eq!(failed, 0, "{}", env.daemon_log());
    assert!(ok > 100, "the load was too light to mean anything: {ok} requests");
    assert!(slowest < Duration::from_secs(1), "a new certificate took {slowest:?}");
}

/// Whether the proxy keeps a fresh plain TCP connection open (it waits for a
/// ClientHello) rather than closing it at accept (max_connections reached).
fn kept_open(port: u16) -> bool {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    !matches!(s.read(&mut [0u8; 1]), Ok(0))
}

#[test]
fn limits_and_listener_renames_apply_on_reload() {
    let env = Env::initialised();
    let (port, admin) = (free_port(), free_port());
    let config = |name: &str, max: usize| {
        format!(
            "[admin]\nlisten = \"127.0.0.1:{admin}\"\n[[listener]]\nname = \"{name}\"\nbind = [\"127.0.0.1:{port}\"]\nmax_connections = {max}\n[[route]]\nhosts = [\"*\"]\nhandler = {{ type = \"static\", body = \"{name}\" }}\n"
        )
    };
    let _daemon = env.daemon(&config("public", 1), &[port, admin]);
    let cfg = env.path("portcullis.toml");
    // One connection holds the only permit (it waits for a ClientHello). The startup
    // probe's permit is released first.
    let mut held = None;
    within(5, "one connection held", &env, || {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let open = !matches!(s.read(&mut [0u8; 1]), Ok(0));
        held = open.then_some(s);
        open
    });
    assert!(!kept_open(port), "a second connection was accepted with max_connections = 1");
    // Raised on reload: the same address now takes more.
    std::fs::write(&cfg, config("public", 3)).unwrap();
    within(5, "max_connections raised", &env, || kept_open(port));
    // Lowered again: back to refusing while the first is held.
    std::fs::write(&cfg, config("public", 1)).unwrap();
    within(5, "max_connections lowered", &env, || !kept_open(port));
    // The address moves to a renamed listener without a bind error.
    std::fs::write(&cfg, config("edge", 10)).unwrap();
    within(5, "renamed listener serving", &env, || curl(&["-k", &format!("https://127.0.0.1:{port}/")]).1 == "edge");
    assert!(!env.daemon_log().contains("cannot bind"), "{}", env.daemon_log());
    // A plain-HTTP listener added by a reload (as [acme] http_listen would be).
    let http = free_port();
    std::fs::write(&cfg, format!("[http]\nlisten = [\"127.0.0.1:{http}\"]\n{}", config("edge", 10))).unwrap();
    let redirect =
        || curl(&["-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", &format!("http://127.0.0.1:{http}/x")]).1;
    within(5, "plain-HTTP listener added", &env, || redirect() == "301 https://127.0.0.1/x");
    // [http] redirect_port: the https URL names the port, changed by a reload.
    std::fs::write(
        &cfg,
        format!("[http]\nlisten = [\"127.0.0.1:{http}\"]\nredirect_port = {port}\n{}", config("edge", 10)),
    )
    .unwrap();
    within(5, "redirect_port applied", &env, || redirect() == format!("301 https://127.0.0.1:{port}/x"));
    let to_v6 = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{redirect_url}",
        "-H",
        "Host: [::1]:80",
        &format!("http://127.0.0.1:{http}/y"),
    ])
    .1;
    assert_eq!(to_v6, format!("https://[::1]:{port}/y"));
    std::fs::write(&cfg, config("edge", 10)).unwrap();
    within(5, "plain-HTTP listener removed", &env, || std::net::TcpStream::connect(("127.0.0.1", http)).is_err());
    // The TLS address becomes the plain-HTTP one in one edit (the listener moves away).
    let moved = config("edge", 10).replace(&format!("127.0.0.1:{port}"), &format!("127.0.0.1:{http}"));
    std::fs::write(&cfg, format!("[http]\nlisten = [\"127.0.0.1:{port}\"]\n{moved}")).unwrap();
    let plain = || curl(&["-o", "/dev/null", "-w", "%{http_code}", &format!("http://127.0.0.1:{port}/")]).1;
    within(5, "address moved from TLS to plain HTTP", &env, || plain() == "301");
    assert!(!env.daemon_log().contains("cannot bind"), "{}", env.daemon_log());
}

#[test]
fn a_deleted_certificate_leaves_the_metrics_at_once() {
    let env = Env::initialised();
    let (port, admin) = (free_port(), free_port());
    env.run(&["cert", "create-self-signed", "--name", "Short lived", "--san", "short.example.test"]).ok();
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\n[[listener]]\nname = \"public\"\nbind = [\"127.0.0.1:{port}\"]\n"
    );
    let _daemon = env.daemon(&config, &[port, admin]);
    let metrics = || curl(&[&format!("http://127.0.0.1:{admin}/metrics")]).1;
    let series = "portcullis_certificate_expiry_seconds{id=\"short-lived\",friendly_name=\"Short lived\"}";
    assert!(metrics().contains(series), "{}", metrics());
    for round in 0..3 {
        // Unassigned and not the default: only the watcher notices the deletion. (It is
        // the only certificate for its name, so it takes --force.)
        env.run(&["cert", "delete", "short-lived", "--force"]).ok();
        within(3, "deleted certificate gone from /metrics", &env, || !metrics().contains(series));
        env.run(&["cert", "create-self-signed", "--name", "Short lived", "--san", "short.example.test"]).ok();
        within(3, &format!("re-created certificate in /metrics (round {round})"), &env, || metrics().contains(series));
    }
    // Deleting watched directories is routine: notify's note about each lost watch
    // stays out of the operator's log.
    assert!(!env.daemon_log().contains("unable to remove watch descriptor"), "{}", env.daemon_log());
}

/// conf.d/ fragments apply without restart, also when conf.d/ is created after the
/// daemon started or removed and created again (well before the 60 s rescan).
#[test]
fn conf_d_fragments_apply_without_restart_even_when_created_later() {
    let env = Env::initialised();
    let (port, admin) = (free_port(), free_port());
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\n[[listener]]\nname = \"public\"\nbind = [\"127.0.0.1:{port}\"]\n[[route]]\nhosts = [\"a.example.test\"]\nhandler = {{ type = \"static\", body = \"a\" }}\n"
    );
    let _daemon = env.daemon(&config, &[port, admin]);
    let get = |host: &str| curl(&["-k", "-H", &format!("Host: {host}"), &format!("https://127.0.0.1:{port}/")]).1;
    let fragment = |body: &str| {
        format!(
            "[[route]]\nlistener = \"public\"\nhosts = [\"b.example.test\"]\nhandler = {{ type = \"static\", body = \"{body}\" }}\n"
        )
    };
    assert_eq!(get("a.example.test"), "a");
    assert!(get("b.example.test").contains("421"));
    let dir = env.path("conf.d");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("10-b.toml"), fragment("b1")).unwrap();
    within(5, "fragment in a new conf.d", &env, || get("b.example.test") == "b1");
    std::fs::write(dir.join("10-b.toml"), fragment("b2")).unwrap();
    within(5, "fragment changed", &env, || get("b.example.test") == "b2");
    std::fs::remove_dir_all(&dir).unwrap();
    within(5, "conf.d removed", &env, || get("b.example.test").contains("421"));
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("10-b.toml"), fragment("b3")).unwrap();
    within(5, "fragment in a conf.d created again", &env, || get("b.example.test") == "b3");
    std::fs::write(dir.join("10-b.toml"), fragment("b4")).unwrap();
    within(5, "fragment changed in the new conf.d", &env, || get("b.example.test") == "b4");
    // Removed and recreated at once (one debounced batch; the inode may be reused).
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("10-b.toml"), fragment("b5")).unwrap();
    within(5, "fragment in a conf.d recreated at once", &env, || get("b.example.test") == "b5");
    std::fs::write(dir.join("10-b.toml"), fragment("b6")).unwrap();
    within(5, "fragment changed after that", &env, || get("b.example.test") == "b6");
    assert_eq!(get("a.example.test"), "a");
}
