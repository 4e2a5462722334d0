//! The serving rule (DESIGN.md, "Serving rule"; the guides' "SSL certificate
//! auto-selection"): every stored certificate is an SNI candidate on a listener without
//! assignments, ties go to the better certificate, the fallback order, and routes by
//! precedence. `openssl s_client` and curl are the oracles.
#![allow(clippy::disallowed_methods)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;

fn config(port: u16, admin: u16) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\n[[listener]]\nname = \"edge\"\nbind = [\"127.0.0.1:{port}\"]\n\
         [[route]]\nhosts = [\"*\"]\nhandler = {{ type = \"static\", body = \"ok\" }}\n"
    )
}

fn create(env: &Env, name: &str, cn: &str, sans: &[&str], days: &str) {
    let mut args = vec!["cert", "create-self-signed", "--name", name, "--common-name", cn, "--days", days];
    for s in sans {
        args.extend(["--san", s]);
    }
    env.run(&args).ok();
}

/// Polls until `sni` is answered with `cn` on `port`; returns how long it took.
fn wait_served(port: u16, sni: Option<&str>, cn: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if served_cn(port, sni).as_deref() == Some(cn) {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{sni:?} is not served {cn} after {limit:?}: {:?}", served_cn(port, sni));
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn every_stored_certificate_is_served_by_sni_without_assign() {
    let env = Env::initialised();
    for i in 0..50 {
        create(&env, &format!("Site {i}"), &format!("site{i}.auto.test"), &[&format!("*.w{i}.auto.test")], "90");
    }
    let (port, admin) = (free_port(), free_port());
    let _d = env.daemon(&config(port, admin), &[port, admin]);
    for i in 0..50 {
        let cn = format!("site{i}.auto.test");
        // Exact, wildcard, and every few a mixed-case or trailing-dot spelling.
        let exact = match i % 3 {
            0 => cn.clone(),
            1 => cn.to_uppercase(),
            _ => format!("{cn}."),
        };
        assert_eq!(served_cn(port, Some(&exact)).as_deref(), Some(cn.as_str()), "SNI {exact}");
        let wild = if i % 2 == 0 { format!("app.w{i}.auto.test") } else { format!("App.W{i}.Auto.Test.") };
        assert_eq!(served_cn(port, Some(&wild)).as_deref(), Some(cn.as_str()), "SNI {wild}");
    }
    // Two labels under a wildcard, unknown names and no SNI: the factory default.
    for sni in [Some("a.b.w1.auto.test"), Some("unknown.test"), None] {
        assert_eq!(served_cn(port, sni).as_deref(), Some("Portcullis Default"), "{sni:?}");
    }
    // What the handshake does, `cert which` says, and the status page lists the mode.
    let which =
        env.run(&["--config", env.path("portcullis.toml").to_str().unwrap(), "cert", "which", "SITE7.auto.test."]);
    assert!(
        which.ok().contains("site7.auto.test on listener edge: site-7 (Site 7): exact name match"),
        "{}",
        which.stdout
    );
    assert!(which.stdout.contains("auto-selection"), "{}", which.stdout);
    let (ok, json) = curl(&[&format!("http://127.0.0.1:{admin}/status.json")]);
    assert!(ok);
    let status: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(status["listeners"][0]["assigned"], serde_json::json!([]));
    assert_eq!(status["listeners"][0]["fallback"], "portcullis-default");
    assert_eq!(status["listeners"][0]["fallback_reason"], "factory default");
    let (_, page) = curl(&[&format!("http://127.0.0.1:{admin}/status")]);
    assert!(page.contains("all certificates (auto-selection)"), "{page}");
    // `status` lists what is served by SNI as in use, with no assignment to show it.
    let cfg = env.path("portcullis.toml");
    let s: serde_json::Value =
        serde_json::from_str(env.run(&["--config", cfg.to_str().unwrap(), "--json", "status"]).ok()).unwrap();
    let in_use: Vec<&serde_json::Value> = s["in_use"].as_array().unwrap().iter().collect();
    for i in [0, 49] {
        let row = in_use.iter().find(|u| u["id"] == format!("site-{i}")).unwrap_or_else(|| panic!("site-{i}: {s:#}"));
        assert_eq!(row["role"], "served by SNI");
    }
    assert_eq!(in_use.len(), 51, "the default and the 50 sites: {s:#}");
}

#[test]
fn a_new_certificate_is_served_at_once_while_clients_keep_connecting() {
    let env = Env::initialised();
    let (port, admin) = (free_port(), free_port());
    let _d = env.daemon(&config(port, admin), &[port, admin]);
    // A client loop (bounded in count and time) that must never see a failed handshake.
    let stop = Arc::new(AtomicBool::new(false));
    let (handshakes, failures) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let client = {
        let (stop, handshakes, failures) = (Arc::clone(&stop), Arc::clone(&handshakes), Arc::clone(&failures));
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            for _ in 0..5_000 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                handshakes.fetch_add(1, Ordering::Relaxed);
                if served_cn(port, Some("new.auto.test")).is_none() {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    wait_served(port, Some("new.auto.test"), "Portcullis Default", Duration::from_secs(5));
    create(&env, "New", "new.auto.test", &[], "90");
    let took = wait_served(port, Some("new.auto.test"), "new.auto.test", Duration::from_secs(3));
    eprintln!("created certificate served by SNI after {took:?}");
    assert!(took < Duration::from_secs(2), "served only after {took:?}");
    // An import, the other way a certificate arrives.
    openssl_self_signed(
        env.path("imp.key").to_str().unwrap(),
        env.path("imp.pem").to_str().unwrap(),
        "/CN=imported.auto.test",
        "30",
        &["-addext", "subjectAltName=DNS:imported.auto.test"],
    );
    env.run(&["cert", "import", env.path("imp.pem").to_str().unwrap(), env.path("imp.key").to_str().unwrap()]).ok();
    let took = wait_served(port, Some("imported.auto.test"), "imported.auto.test", Duration::from_secs(3));
    eprintln!("imported certificate served by SNI after {took:?}");
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    assert!(handshakes.load(Ordering::Relaxed) > 5, "the client loop hardly ran");
    assert_eq!(failures.load(Ordering::Relaxed), 0, "failed handshakes during the changes");
}

#[test]
fn the_better_certificate_wins_a_name() {
    let env = Env::initialised();
    // Renewed first, old second: the later notAfter wins although the old one is newer.
    create(&env, "Renewed", "renewed.twin.test", &["www.twin.test"], "365");
    create(&env, "Old", "old.twin.test", &["www.twin.test"], "30");
    // A valid certificate against an expired one that expires later than... nothing: the
    // expired one was imported last and still loses.
    import_dated(&env, "valid", "valid.exp.test", "www.exp.test", "20200101000000Z", "20990101000000Z");
    import_dated(&env, "expired", "expired.exp.test", "www.exp.test", "20200101000000Z", "20210101000000Z");
    let (port, admin) = (free_port(), free_port());
    let _d = env.daemon(&config(port, admin), &[port, admin]);
    assert_eq!(served_cn(port, Some("www.twin.test")).as_deref(), Some("renewed.twin.test"));
    assert_eq!(served_cn(port, Some("www.exp.test")).as_deref(), Some("valid.exp.test"));
    let cfg = env.path("portcullis.toml");
    let which = env.run(&["--config", cfg.to_str().unwrap(), "--json", "cert", "which", "www.twin.test"]).json();
    assert_eq!(which["id"], "renewed");
    assert_eq!(which["outranked"][0]["id"], "old");
    assert_eq!(which["outranked"][0]["lost_on"], "expires later");
    let which = env.run(&["--config", cfg.to_str().unwrap(), "cert", "which", "www.exp.test"]);
    assert!(
        which.ok().contains("expired also covers www.exp.test; the served one wins on: valid now"),
        "{}",
        which.stdout
    );
}

#[test]
fn assignments_restrict_a_listener_and_the_fallback_order_holds() {
    let env = Env::initialised();
    for (name, cn) in [("A", "a.fb.test"), ("B", "b.fb.test"), ("G", "g.fb.test"), ("L", "l.fb.test")] {
        create(&env, name, cn, &[], "90");
    }
    let (port, admin) = (free_port(), free_port());
    let cfg = config(port, admin);
    let _d = env.daemon(&cfg, &[port, admin]);
    let cfg = env.path("portcullis.toml");
    let cli = |args: &[&str]| {
        let mut all = vec!["--config", cfg.to_str().unwrap()];
        all.extend_from_slice(args);
        env.run(&all).ok().to_owned()
    };
    let limit = Duration::from_secs(3);
    // No assignments, no default: every name by SNI, the factory default otherwise.
    wait_served(port, Some("b.fb.test"), "b.fb.test", limit);
    wait_served(port, None, "Portcullis Default", limit);
    // The global default is a candidate here, so it is the fallback.
    cli(&["cert", "set-default", "g"]);
    wait_served(port, Some("nothing.test"), "g.fb.test", limit);
    // Assignments: only A and B; the global default is not among them, so the earliest
    // assigned (A) is the fallback, and G is no longer served by name.
    cli(&["cert", "assign", "a", "--listener", "edge"]);
    cli(&["cert", "assign", "b", "--listener", "edge"]);
    wait_served(port, None, "a.fb.test", limit);
    assert_eq!(served_cn(port, Some("g.fb.test")).as_deref(), Some("a.fb.test"));
    assert_eq!(served_cn(port, Some("b.fb.test")).as_deref(), Some("b.fb.test"));
    assert_eq!(served_cn(port, Some("l.fb.test")).as_deref(), Some("a.fb.test"));
    let which = cli(&["cert", "which", "g.fb.test"]);
    assert!(which.contains("g covers g.fb.test but is not served on listener edge"), "{which}");
    // Assigning the global default makes it a candidate: it is the fallback again.
    cli(&["cert", "assign", "g", "--listener", "edge"]);
    wait_served(port, None, "g.fb.test", limit);
    // The listener's own default comes first, and is served by name too.
    cli(&["cert", "set-default", "l", "--listener", "edge"]);
    wait_served(port, Some("unknown.test"), "l.fb.test", limit);
    assert_eq!(served_cn(port, Some("l.fb.test")).as_deref(), Some("l.fb.test"));
    let list = cli(&["cert", "list"]);
    assert!(list.contains("listener edge: assigned only: a, b, g; fallback l (listener default)"), "{list}");
    // Unassigning everything returns the listener to auto-selection.
    for id in ["a", "b", "g"] {
        cli(&["cert", "unassign", id, "--listener", "edge"]);
    }
    wait_served(port, Some("b.fb.test"), "b.fb.test", limit);
    assert_eq!(served_cn(port, Some("a.fb.test")).as_deref(), Some("a.fb.test"));
    assert_eq!(served_cn(port, None).as_deref(), Some("l.fb.test"));
}

#[test]
fn routes_follow_precedence_not_config_order() {
    let env = Env::initialised();
    let (port, admin) = (free_port(), free_port());
    // The catch-all first, the wildcard next, the exact host last, and a duplicate of the
    // exact route that can never match.
    let cfg = format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\n[[listener]]\nname = \"edge\"\nbind = [\"127.0.0.1:{port}\"]\n\
         [[route]]\nhosts = [\"*\"]\nhandler = {{ type = \"static\", body = \"any\" }}\n\
         [[route]]\nhosts = [\"*.r.test\"]\nhandler = {{ type = \"static\", body = \"wild\" }}\n\
         [[route]]\nhosts = [\"exact.r.test\"]\nhandler = {{ type = \"static\", body = \"exact\" }}\n\
         [[route]]\nhosts = [\"EXACT.r.test\"]\nhandler = {{ type = \"static\", body = \"never\" }}\n"
    );
    let _d = env.daemon(&cfg, &[port, admin]);
    let get = |host: &str| {
        let url = format!("https://{host}:{port}/");
        let resolve = format!("{}:{port}:127.0.0.1", host.trim_end_matches('.'));
        let (ok, body) = curl(&["-k", "--resolve", &resolve, &url]);
        assert!(ok, "{host}");
        body
    };
    assert_eq!(get("exact.r.test"), "exact");
    assert_eq!(get("EXACT.R.TEST"), "exact");
    assert_eq!(get("other.r.test"), "wild");
    assert_eq!(get("a.b.r.test"), "any");
    assert_eq!(get("elsewhere.test"), "any");
    let check = env.run(&["--config", env.path("portcullis.toml").to_str().unwrap(), "check-config"]);
    assert_eq!(check.code, Some(0), "a shadowed route is a warning, not an error: {}", check.stderr);
    assert!(check.stderr.contains("route[3]: never matches"), "{}", check.stderr);
}
