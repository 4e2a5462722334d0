//! ACME against a real ACME server: Debian's `pebble` with `pebble-challtestsrv` as its
//! DNS (every name is 127.0.0.1), its API certificate trusted through `[acme] ca_bundle`.
//! Issuance, serving without restart, no re-order on restart, forced renewal, and the
//! failure path with a real SMTP server (aiosmtpd) and an alert_command.
#![allow(clippy::disallowed_methods)]

mod common;

use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::knot::{knot, nsupdate_hook, txt};
use common::pebble::{Pebble, served, wait_for};
use common::{Env, Proc, free_port, wait_port};

fn config(env: &Env, pebble: &Pebble, tls_port: u16, admin_port: u16, acme_extra: &str, rest: &str) -> String {
    let _ = env;
    format!(
        "[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n{}\n[[listener]]\nname = \"public\"\nbind = [\"127.0.0.1:{tls_port}\"]\n\
         [[route]]\nhosts = [\"*\"]\nhandler = {{ type = \"static\", body = \"hello\\n\" }}\n{rest}\n",
        pebble.acme_section(acme_extra)
    )
}

fn acme_status(env: &Env, config_path: &std::path::Path) -> Vec<serde_json::Value> {
    let out = env.run(&["--config", config_path.to_str().unwrap(), "--json", "acme", "status"]);
    out.json().as_array().unwrap().clone()
}

#[test]
fn issuance_served_without_restart_and_not_reordered_on_restart() {
    let env = Env::initialised();
    let (http_port, tls_port, admin_port) = (free_port(), free_port(), free_port());
    let pebble = Pebble::start(&env, 7_776_000, http_port);
    let root = pebble.dir.join("ca.pem");
    let jobs = format!("[jobs]\ndir = \"{}\"\n", env.path("jobs").display());
    let cfg = config(
        &env,
        &pebble,
        tls_port,
        admin_port,
        "[[acme.certificate]]\nhostnames = [\"a.test\", \"www.a.test\"]\n",
        &jobs,
    );
    let mut daemon = env.daemon(&cfg, &[tls_port, http_port, admin_port]);
    let cfg_path = env.path("portcullis.toml");

    // The configured certificate is ordered at start and served, with pebble's chain.
    let (serial, issuer) = wait_for(60, "a.test served by pebble", || {
        served(tls_port, "a.test").filter(|(_, issuer)| issuer.contains("Pebble Intermediate"))
    });
    assert!(issuer.contains("Pebble Intermediate"), "{issuer}");
    assert_eq!(served(tls_port, "www.a.test").unwrap().0, serial);
    let list = env.list();
    let a = list.iter().find(|c| c["source"] == "acme").expect("an acme entry");
    assert_eq!(a["acme"]["status"], "valid");
    assert_eq!(a["acme"]["hostnames"], serde_json::json!(["a.test", "www.a.test"]));
    // Chain: leaf + pebble's intermediate, verified by openssl against pebble's root.
    let id = a["id"].as_str().unwrap().to_owned();
    let pem = env.run(&["cert", "show", &id, "--pem"]).ok().to_owned();
    assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 2, "{pem}");
    let pebble_root = common::curl(&[
        "--cacert",
        root.to_str().unwrap(),
        &format!("https://127.0.0.1:{}/roots/0", pebble_management_port(&pebble)),
    ]);
    assert!(pebble_root.0, "pebble root");
    env.write("pebble-root.pem", &pebble_root.1);
    env.write("served.pem", &pem);
    let split = pem.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----\n".len();
    env.write("leaf.pem", &pem[..split]);
    env.write("inter.pem", &pem[split..]);
    let (ok, out, err) = common::openssl(
        &[
            "verify",
            "-CAfile",
            env.path("pebble-root.pem").to_str().unwrap(),
            "-untrusted",
            env.path("inter.pem").to_str().unwrap(),
            env.path("leaf.pem").to_str().unwrap(),
        ],
        None,
    );
    assert!(ok, "openssl verify: {out}{err}");
    // The key is 0600 and the account is stored 0600.
    assert_eq!(common::mode(&env.store().join("certs").join(&id).join("key.pem")), 0o600);
    assert_eq!(common::mode(&env.store().join("acme/account.json")), 0o600);

    // `acme request` while the daemon holds the HTTP port: the daemon answers from the
    // published token files, and the new certificate is served without restart.
    let out = env.run(&["--config", cfg_path.to_str().unwrap(), "acme", "request", "--hostname", "b.test"]);
    let text = out.ok();
    assert!(text.contains("issued b-test"), "{text}\n{}", out.stderr);
    assert!(out.stderr.contains("in use"), "{}", out.stderr);
    wait_for(10, "b.test served", || served(tls_port, "b.test").filter(|(_, i)| i.contains("Pebble")));
    // Asking again does nothing while the certificate is valid.
    let again = env.run(&["--config", cfg_path.to_str().unwrap(), "acme", "request", "--hostname", "b.test"]);
    assert!(again.ok().contains("unchanged b-test"), "{}", again.stdout);

    // The same as an admin job, answered from the daemon's own challenge map.
    fs::write(env.path("jobs/incoming/.j.tmp"), "action = \"acme-request\"\nhostname = [\"j.test\"]\n").unwrap();
    fs::rename(env.path("jobs/incoming/.j.tmp"), env.path("jobs/incoming/get-j.toml")).unwrap();
    let result = wait_for(60, "the acme-request job's result", || {
        fs::read_to_string(env.path("jobs/done/get-j.result.json")).ok()
    });
    let result: serde_json::Value = serde_json::from_str(&result).unwrap();
    assert_eq!(result["outputs"]["action"], "issued", "{result:#}");
    assert_eq!(result["outputs"]["id"], "j-test");
    wait_for(10, "j.test served", || served(tls_port, "j.test").filter(|(_, i)| i.contains("Pebble")));

    // The admin status lists them with their renewal status.
    wait_for(10, "three ACME certificates in /status.json", || {
        let s: serde_json::Value =
            serde_json::from_str(&common::curl(&[&format!("http://127.0.0.1:{admin_port}/status.json")]).1).ok()?;
        (s["acme"].as_array()?.len() == 3).then_some(())
    });

    // A restart does not order again: same serial, no new order in the log.
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(20), Some(0));
    let mut daemon = env.daemon(&cfg, &[tls_port, http_port, admin_port]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(served(tls_port, "a.test").unwrap().0, serial);
    assert!(!env.daemon_log().contains("order placed"), "{}", env.daemon_log());
    // A name added to [[acme.certificate]]: the same entry is issued again for the new
    // set (same id and assignments), served without restart.
    fs::write(&cfg_path, cfg.replace("[\"a.test\", \"www.a.test\"]", "[\"a.test\", \"www.a.test\", \"new.a.test\"]"))
        .unwrap();
    let (new_serial, _) = wait_for(60, "new.a.test served", || {
        served(tls_port, "new.a.test").filter(|(s, i)| i.contains("Pebble") && *s != serial)
    });
    assert_eq!(served(tls_port, "a.test").unwrap().0, new_serial);
    let a = env.list().into_iter().find(|c| c["id"] == "a-test").unwrap();
    assert_eq!(a["acme"]["hostnames"], serde_json::json!(["a.test", "www.a.test", "new.a.test"]));
    assert_eq!(env.list().iter().filter(|c| c["source"] == "acme").count(), 3);
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(20), Some(0));

    // Without a daemon the CLI answers the challenge itself on [acme] http_listen.
    let out = env.run(&[
        "--config",
        cfg_path.to_str().unwrap(),
        "acme",
        "request",
        "--hostname",
        "c.test",
        "--key",
        "rsa-2048",
    ]);
    assert!(out.ok().contains("issued c-test"), "{}", out.stderr);
    assert!(out.stderr.contains("answering HTTP-01"), "{}", out.stderr);
    let c = env.list().into_iter().find(|c| c["id"] == "c-test").unwrap();
    assert_eq!(c["key"], "RSA 2048");

    // More names for the same certificate (its friendly name is its first hostname):
    // reissued in place, nothing dropped.
    let request = |names: &[&str], extra: &[&str]| {
        let mut args = vec!["--config", cfg_path.to_str().unwrap(), "acme", "request"];
        for n in names {
            args.extend(["--hostname", n]);
        }
        args.extend_from_slice(extra);
        env.run(&args)
    };
    request(&["c.test", "extra.c.test"], &[]).ok();
    let c = env.list().into_iter().find(|c| c["id"] == "c-test").unwrap();
    assert_eq!(c["acme"]["hostnames"], serde_json::json!(["c.test", "extra.c.test"]));
    // Fewer names would drop one that clients use: refused, naming it, store unchanged.
    let before = env.tree();
    let out = request(&["c.test"], &[]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("c-test (c.test) also covers extra.c.test, which this request would drop")
            && out.stderr.contains("--replace"),
        "{}",
        out.stderr
    );
    assert_eq!(env.tree(), before, "the refused request changed the store");
    // --replace drops it on purpose.
    request(&["c.test"], &["--replace"]).ok();
    let c = env.list().into_iter().find(|c| c["id"] == "c-test").unwrap();
    assert_eq!(c["acme"]["hostnames"], serde_json::json!(["c.test"]));
}

fn pebble_management_port(p: &Pebble) -> u16 {
    let text = fs::read_to_string(p.dir.join("pebble.json")).unwrap();
    let i =
        text.find("managementListenAddress\": \"127.0.0.1:").unwrap() + "managementListenAddress\": \"127.0.0.1:".len();
    text[i..].split('"').next().unwrap().parse().unwrap()
}

#[test]
fn forced_renewal_is_served_without_restart() {
    let env = Env::initialised();
    let (http_port, tls_port, admin_port) = (free_port(), free_port(), free_port());
    // 30-second certificates; renew_before_days far above the validity: renewal starts at
    // a third of the lifetime before expiry.
    let _pebble = Pebble::start(&env, 30, http_port);
    let pebble = &_pebble;
    let cfg = config(
        &env,
        pebble,
        tls_port,
        admin_port,
        "renew_before_days = 10\n[[acme.certificate]]\nhostnames = [\"r.test\"]\n",
        "",
    );
    let _daemon = env.daemon(&cfg, &[tls_port, http_port, admin_port]);
    let (first, _) = wait_for(60, "r.test served", || served(tls_port, "r.test").filter(|(_, i)| i.contains("Pebble")));
    let (second, _) = wait_for(60, "a renewed r.test served", || {
        served(tls_port, "r.test").filter(|(s, i)| i.contains("Pebble") && *s != first)
    });
    assert_ne!(first, second);
    // Same entry (id, assignments) with a new serial.
    let list = env.list();
    let r: Vec<_> = list.iter().filter(|c| c["source"] == "acme").collect();
    assert_eq!(r.len(), 1, "renewal replaces the entry: {list:?}");
    assert!(env.daemon_log().contains("renewed r-test"), "{}", env.daemon_log());
    let metrics = common::curl(&[&format!("http://127.0.0.1:{admin_port}/metrics")]).1;
    assert!(metrics.contains("portcullis_acme_orders_total{result=\"ok\"}"), "{metrics}");
}

#[test]
fn failing_renewal_enters_error_state_alerts_and_keeps_serving() {
    let env = Env::initialised();
    let (http_port, tls_port, admin_port, smtp_port) = (free_port(), free_port(), free_port(), free_port());
    let maildir = env.path("mail");
    let _smtp = Proc(
        Command::new("/usr/bin/python3")
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{smtp_port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3-aiosmtpd (make test installs it)"),
    );
    wait_port(smtp_port);
    let mut pebble = Pebble::start(&env, 30, http_port);
    let alerts_file = env.path("alerts.txt");
    let rest = format!(
        "[alerts]\nalert_command = \"echo \\\"$PORTCULLIS_ALERT_KIND $PORTCULLIS_ALERT_ID $PORTCULLIS_ALERT_HOSTNAMES\\\" >> {}\"\n\
         [alerts.smtp]\nhost = \"127.0.0.1\"\nport = {smtp_port}\nsecurity = \"none\"\nfrom = \"portcullis@example.test\"\nto = [\"ops@example.test\"]\n",
        alerts_file.display()
    );
    let cfg = config(&env, &pebble, tls_port, admin_port, "[[acme.certificate]]\nhostnames = [\"f.test\"]\n", &rest);
    let _daemon = env.daemon(&cfg, &[tls_port, http_port, admin_port]);
    let (serial, _) =
        wait_for(60, "f.test served", || served(tls_port, "f.test").filter(|(_, i)| i.contains("Pebble")));
    pebble.stop();

    // Renewal starts 10 s before expiry and fails; the error state begins 8.3 s before.
    let cfg_path = env.path("portcullis.toml");
    let view = wait_for(60, "the error state", || {
        acme_status(&env, &cfg_path).into_iter().find(|v| v["id"] == "f-test" && v["status"] == "error")
    });
    let result = view["last_result"].as_str().unwrap();
    assert!(result.contains("Connection refused") || result.contains("connect"), "{result}");
    assert!(view["failures"].as_u64().unwrap() >= 1);
    let list = env.list();
    assert_eq!(list.iter().find(|c| c["id"] == "f-test").unwrap()["acme"]["status"], "error");
    let table = env.run(&["--config", cfg_path.to_str().unwrap(), "cert", "list"]).ok().to_owned();
    assert!(table.lines().any(|l| l.starts_with("f-test") && l.contains("error")), "{table}");
    // The old certificate is still served.
    assert_eq!(served(tls_port, "f.test").unwrap().0, serial);
    let metrics = wait_for(20, "portcullis_acme_renewal_failing 1", || {
        let m = common::curl(&[&format!("http://127.0.0.1:{admin_port}/metrics")]).1;
        m.contains("portcullis_acme_renewal_failing{id=\"f-test\"} 1").then_some(m)
    });
    assert!(metrics.contains("portcullis_acme_orders_total{result=\"error\"}"), "{metrics}");

    // Alerts: the first failure and the error state, by mail and by command.
    let mails = wait_for(30, "two alert mails", || {
        let files: Vec<String> =
            fs::read_dir(maildir.join("new")).ok()?.map(|e| fs::read_to_string(e.unwrap().path()).unwrap()).collect();
        (files.len() >= 2).then_some(files)
    });
    assert!(mails.iter().any(|m| m.contains("Subject: [portcullis] certificate renewal failed: f.test")), "{mails:?}");
    assert!(mails.iter().any(|m| m.contains("renewal failing, expiry near")), "{mails:?}");
    assert!(mails.iter().all(|m| m.contains("To: ops@example.test") && !m.contains("PRIVATE KEY")));
    // The command runs after the mail is sent, so its line may trail the second mail.
    let lines = wait_for(30, "both alert_command lines", || {
        let lines = fs::read_to_string(&alerts_file).ok()?;
        (lines.contains("renewal-failed f-test f.test") && lines.contains("error f-test f.test")).then_some(lines)
    });
    // Once a day: no second error alert right away.
    assert_eq!(lines.matches("error f-test").count(), 1, "{lines}");
}

#[test]
fn invalid_requests_are_refused_before_any_order() {
    let env = Env::initialised();
    let before = env.tree();
    let cfg = env.write(
        "portcullis.toml",
        "[acme]\ndirectory = \"https://127.0.0.1:9/dir\"\nagree_tos = true\nhttp_listen = \"127.0.0.1:9\"\n",
    );
    let cfg = cfg.to_str().unwrap();
    for (args, expect) in [
        (vec!["--hostname", "localhost"], "--hostname \"localhost\": not a fully qualified domain name"),
        (vec!["--hostname", "*.example.com"], "a wildcard name needs challenge = \"dns-01\""),
        (
            vec!["--hostname", "*.example.com", "--challenge", "dns-01"],
            "--challenge dns-01: no [[acme.dns_update]] zone holds *.example.com",
        ),
        (vec!["--hostname", "ok.example.com", "--challenge", "dns-02"], "--challenge \"dns-02\""),
        (vec!["--hostname", "a..b.example"], "--hostname \"a..b.example\""),
        (vec!["--hostname", "10.0.0.1"], "an IP address"),
        (vec!["--hostname", "ok.example.com", "--key", "dsa"], "--key \"dsa\""),
    ] {
        let mut full = vec!["--config", cfg, "acme", "request"];
        full.extend(args);
        let out = env.run(&full);
        assert_eq!(out.code, Some(1), "{full:?}: {out:?}");
        assert!(out.stderr.contains(expect), "{full:?}: {}", out.stderr);
        assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    }
    // No ToS agreement: the configuration is refused, naming the key.
    let no_tos = env.write("no-tos.toml", "[acme]\ndirectory = \"https://127.0.0.1:9/dir\"\n");
    let out = env.run(&["--config", no_tos.to_str().unwrap(), "acme", "request", "--hostname", "a.example.com"]);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("acme.agree_tos: must be set to true"), "{}", out.stderr);
    let out = env.run(&["--config", no_tos.to_str().unwrap(), "check-config"]);
    assert_eq!(out.code, Some(1));
    // A wildcard in [[acme.certificate]] is refused the same way.
    let wild =
        env.write("wild.toml", "[acme]\nagree_tos = true\n[[acme.certificate]]\nhostnames = [\"*.example.com\"]\n");
    let out = env.run(&["--config", wild.to_str().unwrap(), "check-config"]);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("acme.certificate[0].hostnames") && out.stderr.contains("dns-01"), "{}", out.stderr);
    // No [acme] at all.
    let out = env.run(&["acme", "request", "--hostname", "a.example.com"]);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("no [acme] section"), "{}", out.stderr);
    assert_eq!(env.tree(), before, "refused requests changed the store");
}

/// Waits (60 s) until the daemon of `env` serves a pebble certificate for `sni`; its
/// serial and issuer. On a timeout the daemon's log says why.
fn issued(env: &Env, port: u16, sni: &str) -> (String, String) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = served(port, sni).filter(|(_, issuer)| issuer.contains("Pebble")) {
            return s;
        }
        assert!(std::time::Instant::now() < deadline, "{sni} not issued:\n{}", env.daemon_log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn tls_alpn_01_on_the_tls_listener_without_port_80() {
    let env = Env::initialised();
    let (tls_port, admin_port) = (free_port(), free_port());
    // No plain-HTTP listener anywhere: the default challenge is tls-alpn-01, answered on
    // the TLS listener pebble validates against.
    let pebble = Pebble::start_with_tls(&env, 7_776_000, free_port(), tls_port);
    let cfg = format!(
        "[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n[[listener]]\nname = \"public\"\nbind = [\"127.0.0.1:{tls_port}\"]\n\
         [[route]]\nhosts = [\"*\"]\nhandler = {{ type = \"static\", body = \"hello\\n\" }}\n\
         {}",
        pebble.acme_section_on("[]", "[[acme.certificate]]\nhostnames = [\"alpn.test\"]")
    );
    let _daemon = env.daemon(&cfg, &[tls_port, admin_port]);
    let (serial, issuer) = issued(&env, tls_port, "alpn.test");
    assert!(!serial.is_empty(), "{issuer}");
    let log = env.daemon_log();
    assert!(log.contains("alpn.test: tls-alpn-01 challenge ready"), "{log}");
    let list = env.list();
    let entry = list.iter().find(|c| c["source"] == "acme").expect("an acme entry");
    assert_eq!(entry["acme"]["hostnames"], serde_json::json!(["alpn.test"]));
    // Nothing else ever gets a challenge certificate: acme-tls/1 alone for a name without
    // a pending challenge fails the handshake (openssl as the client) ...
    let connect = format!("127.0.0.1:{tls_port}");
    let (ok, out, _) = common::openssl(
        &["s_client", "-connect", &connect, "-servername", "alpn.test", "-alpn", "acme-tls/1"],
        Some(""),
    );
    assert!(!ok || !out.contains("BEGIN CERTIFICATE") && !out.contains("Server certificate"), "{out}");
    // ... and a client offering it among others negotiates http/1.1 and gets the real one.
    let (_, out, _) = common::openssl(
        &["s_client", "-connect", &connect, "-servername", "alpn.test", "-alpn", "http/1.1,acme-tls/1"],
        Some(""),
    );
    assert!(out.contains("ALPN protocol: http/1.1"), "{out}");
    assert_eq!(served(tls_port, "alpn.test").unwrap().0, serial);
    // The command line, with the daemon holding the TLS port: the daemon presents the
    // challenge certificate from the key authorization the command leaves in the store.
    let cfg_path = env.path("portcullis.toml");
    let run = env.run(&[
        "--config",
        cfg_path.to_str().unwrap(),
        "acme",
        "request",
        "--hostname",
        "cli-alpn.test",
        "--challenge",
        "tls-alpn-01",
    ]);
    run.ok();
    assert!(run.stderr.contains("cli-alpn.test: tls-alpn-01 challenge ready"), "{}", run.stderr);
    wait_for(10, "cli-alpn.test served", || {
        served(tls_port, "cli-alpn.test").filter(|(_, i)| i.contains("Pebble")).map(|_| ())
    });
    assert!(!env.store().join("acme/challenges/alpn/cli-alpn.test").exists(), "the challenge file stayed");
}

#[test]
fn external_account_binding_is_required_and_used() {
    let env = Env::initialised();
    let (http_port, tls_port, admin_port) = (free_port(), free_port(), free_port());
    // pebble in its EAB mode: accounts only with a MAC key it knows.
    let hmac = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
    let pebble = Pebble::start_custom(
        &env,
        7_776_000,
        http_port,
        free_port(),
        &format!("\"externalAccountBindingRequired\": true, \"externalAccountMACKeys\": {{\"kid-1\": \"{hmac}\"}}"),
    );
    env.write("eab.key", &format!("{hmac}\n"));
    env.write("wrong.key", "c2VjcmV0LXRoYXQtcGViYmxlLWRvZXMtbm90LWtub3ctYWJvdXQtYXQtYWxsLXJlYWxseQ\n");
    let base = |kid: &str, file: &str| {
        format!(
            "[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n[[listener]]\nname = \"public\"\nbind = [\"127.0.0.1:{tls_port}\"]\n\
             [[route]]\nhosts = [\"*\"]\nhandler = {{ type = \"static\", body = \"hello\\n\" }}\n{}\
             eab_kid = \"{kid}\"\neab_hmac_key_file = \"{}\"\n",
            pebble.acme_section(""),
            env.path(file).display()
        )
    };
    // A MAC key the CA does not know: the account is refused, with the CA's words.
    let wrong = env.write("wrong.toml", &base("kid-1", "wrong.key"));
    let run = env.run(&["--config", wrong.to_str().unwrap(), "acme", "request", "--hostname", "eab.test"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains("creating an account") && run.stderr.to_lowercase().contains("external"),
        "{}",
        run.stderr
    );
    assert!(!env.store().join("acme/account.json").exists());
    // The right one: the account is created with the binding and the order succeeds.
    let right = env.write("right.toml", &base("kid-1", "eab.key"));
    let run = env.run(&["--config", right.to_str().unwrap(), "acme", "request", "--hostname", "eab.test"]);
    run.ok();
    assert!(env.store().join("acme/account.json").exists());
    let list = env.list();
    assert!(
        list.iter().any(|c| c["source"] == "acme" && c["acme"]["hostnames"] == serde_json::json!(["eab.test"])),
        "{list:?}"
    );
}

#[test]
fn dns_01_wildcard_through_nsupdate_to_knot() {
    let env = Env::initialised();
    let (_knot, dns_port, secret) = knot(&env);
    let pebble = Pebble::start_with_dns(&env, 7_776_000, dns_port);
    let (tls_port, admin_port) = (free_port(), free_port());
    let hook = nsupdate_hook(&env, "hook.sh", dns_port, &secret);
    let acme = |hook: &std::path::Path, certs: &str| {
        format!(
            "[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n[[listener]]\nname = \"public\"\nbind = [\"127.0.0.1:{tls_port}\"]\n\
             [[route]]\nhosts = [\"*\"]\nhandler = {{ type = \"static\", body = \"hello\\n\" }}\n\
             {}",
            pebble.acme_section_on("[]", &format!("dns_command = \"sh {}\"\n{certs}", hook.display()))
        )
    };
    let cfg = acme(
        &hook,
        "[[acme.certificate]]\nhostnames = [\"*.example.test\", \"example.test\"]\nchallenge = \"dns-01\"\n",
    );
    let _daemon = env.daemon(&cfg, &[tls_port, admin_port]);
    let (serial, _) = issued(&env, tls_port, "a.example.test");
    assert_eq!(served(tls_port, "example.test").unwrap().0, serial);
    assert_eq!(served(tls_port, "b.example.test").unwrap().0, serial);
    // The TXT records are gone afterwards (dig against the zone's server).
    wait_for(10, "TXT records removed", || txt(dns_port, "_acme-challenge.example.test").is_empty().then_some(()));
    // A wrong TSIG key: the order fails with the DNS server's answer named.
    let wrong_hook = nsupdate_hook(&env, "wrong.sh", dns_port, "d3JvbmctdHNpZy1rZXktZm9yLXRoZS10ZXN0LXpvbmU=");
    let wrong = env.write("wrong.toml", &acme(&wrong_hook, ""));
    let run = env.run(&[
        "--config",
        wrong.to_str().unwrap(),
        "acme",
        "request",
        "--hostname",
        "c.example.test",
        "--challenge",
        "dns-01",
    ]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("dns_command present") && run.stderr.contains("BADSIG"), "{}", run.stderr);
}

#[test]
fn dns_01_by_rfc2136_with_tsig_and_a_propagation_check() {
    let env = Env::initialised();
    let (_knot, dns_port, secret) = knot(&env);
    let pebble = Pebble::start_with_dns(&env, 7_776_000, dns_port);
    // The key as `tsig-keygen` prints it; a bare secret works too (the wrong one below).
    env.write(
        "tsig.key",
        &format!("key \"portcullis-test\" {{\n\talgorithm hmac-sha256;\n\tsecret \"{secret}\";\n}};\n"),
    );
    env.write("wrong.key", "d3JvbmctdHNpZy1rZXktZm9yLXRoZS10ZXN0LXpvbmU=\n");
    let config = |name: &str, key: &str, check: &str| {
        env.write(
            name,
            &pebble.acme_section_on(
                "[]",
                &format!(
                    "[[acme.dns_update]]\nzone = \"example.test\"\nserver = \"127.0.0.1:{dns_port}\"\n\
                     key_name = \"portcullis-test\"\nsecret_file = \"{}\"\ncheck_servers = [{check}]\npropagation_timeout_secs = 3\n",
                    env.path(key).display()
                ),
            ),
        )
    };
    let request = |cfg: &std::path::Path, hostnames: &[&str]| {
        let mut args = vec!["--config", cfg.to_str().unwrap(), "acme", "request", "--challenge", "dns-01"];
        for h in hostnames {
            args.extend(["--hostname", h]);
        }
        env.run(&args)
    };
    let good = config("good.toml", "tsig.key", &format!("\"127.0.0.1:{dns_port}\""));
    let run = request(&good, &["*.example.test", "example.test"]);
    run.ok();
    assert!(run.stderr.contains("(RFC 2136)"), "{}", run.stderr);
    assert!(run.stderr.contains("served by every authoritative server of example.test"), "{}", run.stderr);
    // openssl reads the issued certificate: both names, issued by pebble.
    let list = env.list();
    let id = list.iter().find(|c| c["source"] == "acme").expect("an acme entry")["id"].as_str().unwrap().to_owned();
    let cert = env.store().join("certs").join(&id).join("cert.pem");
    let text = common::openssl_ok(&["x509", "-noout", "-text", "-in", cert.to_str().unwrap()], None);
    assert!(text.contains("DNS:*.example.test") && text.contains("DNS:example.test"), "{text}");
    assert!(text.contains("Pebble"), "{text}");
    // The records were removed after validation (dig at the zone's server).
    assert_eq!(txt(dns_port, "_acme-challenge.example.test"), "");
    // A wrong TSIG key: refused by the server, whose answer is named; nothing stored.
    let before = env.tree();
    let wrong = config("wrong.toml", "wrong.key", &format!("\"127.0.0.1:{dns_port}\""));
    let run = request(&wrong, &["w.example.test"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains("[acme.dns_update] adding TXT _acme-challenge.w.example.test")
            && run.stderr.contains(&format!("127.0.0.1:{dns_port}"))
            && run.stderr.contains("TSIG BADSIG"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("d3JvbmctdHNp"), "the secret was printed: {}", run.stderr);
    assert_eq!(env.tree(), before);
    // A server that never serves the record (nothing listens there): the order fails
    // after the propagation timeout naming it, and the record is removed anyway.
    let lagging = free_port();
    let slow = config("slow.toml", "tsig.key", &format!("\"127.0.0.1:{dns_port}\", \"127.0.0.1:{lagging}\""));
    let run = request(&slow, &["p.example.test"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains(&format!("_acme-challenge.p.example.test: not served by 127.0.0.1:{lagging} after 3 s")),
        "{}",
        run.stderr
    );
    assert_eq!(txt(dns_port, "_acme-challenge.p.example.test"), "");
    assert_eq!(env.tree(), before);
    // Config errors name the key.
    let bad = env.write(
        "bad.toml",
        &pebble.acme_section_on(
            "[]",
            "[[acme.dns_update]]\nzone = \"example.test\"\nserver = \"nowhere\"\nkey_name = \"k\"\nsecret_file = \"x\"\nalgorithm = \"hmac-md5\"\n",
        ),
    );
    let run = env.run(&["--config", bad.to_str().unwrap(), "check-config"]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("acme.dns_update[0].server: \"nowhere\" is not an address:port"), "{}", run.stderr);
    assert!(run.stderr.contains("acme.dns_update[0].algorithm: \"hmac-md5\""), "{}", run.stderr);
}
