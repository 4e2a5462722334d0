//! On-demand certificates against Debian's pebble (TLS-ALPN-01 on the listener itself,
//! no port 80): an ask service (a real HTTP server in this test) that allows one name,
//! an allow pattern for a burst and a flood of names, orders counted at pebble and
//! certificates checked with openssl.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::pebble::{Pebble, served, wait_for};
use common::{Env, free_port, metric, served_der};

/// An ask service on a free port: 200 for `allowed.test`, 403 for anything else; every
/// name asked is counted.
fn ask_service() -> (u16, Arc<Mutex<BTreeMap<String, usize>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let asked: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let seen = Arc::clone(&asked);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let domain = line.split_once("domain=").map(|(_, d)| d.split([' ', '&']).next().unwrap_or("").to_owned());
            let status = match domain.as_deref() {
                Some("allowed.test") => "200 OK",
                _ => "403 Forbidden",
            };
            *seen.lock().unwrap().entry(domain.unwrap_or_default()).or_default() += 1;
            let mut stream = stream;
            let _ = write!(stream, "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (port, asked)
}

#[test]
fn on_demand_by_ask_and_allow_one_order_per_name_within_the_rate_limit() {
    let env = Env::initialised();
    let (tls_port, admin_port) = (free_port(), free_port());
    let pebble = Pebble::start_with_tls(&env, 7_776_000, free_port(), tls_port);
    let (ask_port, asked) = ask_service();
    let cfg = format!(
        "[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n[[listener]]\nname = \"public\"\nbind = [\"127.0.0.1:{tls_port}\"]\n\
         on_demand = true\n\
         [[route]]\nhosts = [\"*\"]\nhandler = {{ type = \"static\", body = \"hello\\n\" }}\n{}",
        pebble.acme_section_on(
            "[]",
            &format!(
                "[acme.on_demand]\nask = \"http://127.0.0.1:{ask_port}/check\"\nallow = [\"*.flood.test\"]\n\
                 rate_limit = 5\nrate_period_secs = 3600\nfailure_hold_secs = 600"
            )
        )
    );
    let _daemon = env.daemon(&cfg, &[tls_port, admin_port]);
    let default_der = served_der(tls_port, "nothing.test").expect("the default certificate");

    // The ask service allows the name: the first handshake waits for the order and
    // completes within the handshake timeout; from then on the name is served the new
    // certificate (checked by openssl: pebble issued it).
    let start = Instant::now();
    let first = served_der(tls_port, "allowed.test");
    assert!(start.elapsed() < Duration::from_secs(11), "the triggering handshake took {:?}", start.elapsed());
    assert!(first.is_some(), "the triggering handshake failed:\n{}", env.daemon_log());
    let (serial, issuer) =
        wait_for(15, "allowed.test served", || served(tls_port, "allowed.test").filter(|(_, i)| i.contains("Pebble")));
    assert!(!serial.is_empty(), "{issuer}");
    assert_eq!(pebble.orders(), 1, "one order for allowed.test");
    // A normal ACME entry, marked as ordered on demand, renewed like the others.
    let list = env.list();
    let entry = list.iter().find(|c| c["source"] == "acme").expect("an acme entry");
    assert_eq!(entry["acme"]["hostnames"], serde_json::json!(["allowed.test"]));
    let id = entry["id"].as_str().unwrap();
    let meta = std::fs::read_to_string(env.store().join("certs").join(id).join("meta.toml")).unwrap();
    assert!(meta.contains("on_demand = true"), "{meta}");
    assert_eq!(served(tls_port, "allowed.test").unwrap().0, serial);
    // Deleted, it is no longer served from memory: the next handshake orders it again.
    let cfg_path = env.path("portcullis.toml");
    env.run(&["--config", cfg_path.to_str().unwrap(), "cert", "delete", id, "--force"]).ok();
    let (serial, _) = wait_for(20, "allowed.test ordered again", || {
        served(tls_port, "allowed.test").filter(|(s, i)| i.contains("Pebble") && *s != serial)
    });
    assert_eq!(pebble.orders(), 2, "one new order after the deletion");

    // The ask service refuses: the default certificate, no order, and the refusal is
    // remembered (a second handshake does not ask again).
    assert_eq!(served_der(tls_port, "refused.test").as_deref(), Some(default_der.as_slice()));
    assert_eq!(served_der(tls_port, "refused.test").as_deref(), Some(default_der.as_slice()));
    assert_eq!(asked.lock().unwrap().get("refused.test"), Some(&1), "{:?}", asked.lock().unwrap());
    assert_eq!(asked.lock().unwrap().get("allowed.test"), Some(&2), "{:?}", asked.lock().unwrap());
    assert_eq!(pebble.orders(), 2, "an order for a refused name");
    // Names that are never ordered on demand: no ask, no order.
    for bad in ["localhost", "127.0.0.1", "a_b.test"] {
        let _ = served_der(tls_port, bad);
    }
    assert_eq!(pebble.orders(), 2);
    assert!(!asked.lock().unwrap().contains_key("localhost"), "{:?}", asked.lock().unwrap());

    // 20 concurrent first handshakes for one new name (allowed by pattern, no ask): one
    // order, and every handshake completes.
    let burst: Vec<_> = (0..20).map(|_| std::thread::spawn(move || served_der(tls_port, "burst.flood.test"))).collect();
    let results: Vec<Option<Vec<u8>>> = burst.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(results.iter().all(Option::is_some), "a burst handshake failed:\n{}", env.daemon_log());
    wait_for(15, "burst.flood.test served", || {
        served(tls_port, "burst.flood.test").filter(|(_, i)| i.contains("Pebble"))
    });
    assert_eq!(pebble.orders(), 3, "20 concurrent handshakes for one name: one order");
    assert!(!asked.lock().unwrap().contains_key("burst.flood.test"), "an allowed pattern is not asked");

    // 200 random names over the rate limit (5 per hour, 3 used): at most 2 more orders,
    // and the daemon keeps serving.
    let flood: Vec<_> = (0..10)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..20 {
                    let _ = served_der(tls_port, &format!("r{t}x{i}x{}.flood.test", std::process::id()));
                }
            })
        })
        .collect();
    for t in flood {
        t.join().unwrap();
    }
    // Orders that were placed finish (or fail) before counting.
    std::thread::sleep(Duration::from_secs(2));
    let total = pebble.orders();
    assert!((3..=5).contains(&total), "{total} orders: the rate limit allows 5");
    let limited = metric(admin_port, "portcullis_acme_on_demand_total{result=\"rate_limited\"}").unwrap_or(0.0);
    assert!(limited >= 190.0, "rate-limited decisions: {limited}");
    assert_eq!(served(tls_port, "allowed.test").unwrap().0, serial);
    let log = env.daemon_log();
    assert!(!log.contains("PRIVATE KEY"), "{log}");
}

#[test]
fn on_demand_config_errors_name_the_key() {
    let env = Env::initialised();
    let base = "[[listener]]\nname = \"public\"\nbind = [\"127.0.0.1:1\"]\n";
    let acme = "[acme]\ndirectory = \"https://127.0.0.1:1/dir\"\nagree_tos = true\nhttp_listen = []\n";
    let cases = [
        (format!("{base}on_demand = true\n{acme}"), "listener[0].on_demand: needs [acme.on_demand]"),
        (format!("{base}{acme}[acme.on_demand]\nrate_limit = 5\n"), "acme.on_demand: needs ask"),
        (
            format!("{base}{acme}[acme.on_demand]\nask = \"https://x.test/\"\n"),
            "acme.on_demand.ask: \"https://x.test/\": must be an http:// URL",
        ),
        (format!("{base}{acme}[acme.on_demand]\nallow = [\"*.*.test\"]\n"), "acme.on_demand.allow"),
        (
            format!("{base}{acme}[acme.on_demand]\nallow = [\"a.test\"]\nrate_limit = 0\n"),
            "acme.on_demand.rate_limit: 0: expected 1 to",
        ),
        (
            format!("{base}{acme}[acme.on_demand]\nallow = [\"a.test\"]\nmax_certificates = 0\n"),
            "acme.on_demand.max_certificates",
        ),
        (
            format!("{base}{acme}[acme.on_demand]\nallow = [\"a.test\"]\nfailure_hold_secs = 99999999\n"),
            "acme.on_demand.failure_hold_secs",
        ),
        (format!("{base}{acme}[acme.on_demand]\nallow = [\"a.test\"]\nsurprise = 1\n"), "surprise"),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let path = env.write(&format!("bad{i}.toml"), text);
        let run = env.run(&["--config", path.to_str().unwrap(), "check-config"]);
        assert_eq!(run.code, Some(1), "{text}\n{run:?}");
        let first = run.stderr.lines().next().unwrap_or("");
        assert!(run.stderr.contains(want), "{text}\nwanted {want:?} in:\n{}", run.stderr);
        assert!(first.contains(&*path.display().to_string()), "the file is named: {first}");
    }
}
