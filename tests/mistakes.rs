//! An admin's mistakes fail loudly and change nothing: exit status 1, one line naming
//! what is wrong, the store tree byte for byte as it was; `--force` where there is one.
#![allow(clippy::disallowed_methods)]

mod common;

use std::fs;

use common::*;

/// Runs a command that must be refused: exit 1, one line on stderr containing `want`,
/// and the store unchanged.
#[track_caller]
fn refused(env: &Env, args: &[&str], want: &str) {
    let before = env.tree();
    let run = env.run(args);
    assert_eq!(run.code, Some(1), "{args:?} was not refused: {}{}", run.stdout, run.stderr);
    assert_eq!(run.stderr.trim().lines().count(), 1, "{args:?}: not one line: {}", run.stderr);
    assert!(run.stderr.contains(want), "{args:?}: {}", run.stderr);
    assert_eq!(env.tree(), before, "{args:?} changed the store");
}

fn create(env: &Env, name: &str, san: &str) {
    env.run(&["cert", "create-self-signed", "--name", name, "--san", san]).ok();
}

#[test]
fn a_missing_store_is_never_created_by_accident() {
    let env = Env::empty();
    let store = env.store();
    for args in [
        vec!["cert", "list"],
        vec!["cert", "create-self-signed", "--name", "X", "--san", "x.test"],
        vec!["check-config"],
        vec!["status"],
        vec!["cert", "which", "x.test"],
    ] {
        let run = env.run(&args);
        assert_eq!(run.code, Some(1), "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains("no certificate store here (did you forget --config?"), "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(&store.display().to_string()), "{}", run.stderr);
        assert!(!store.exists(), "{args:?} created {}", store.display());
    }
    // A typo in [store] dir is the same mistake.
    let cfg = env.write("p.toml", "[store]\ndir = \"sotre\"\n");
    let run = env.run(&["--config", cfg.to_str().unwrap(), "cert", "list"]);
    assert_eq!(run.code, Some(1));
    // (--store on the command line wins over [store] dir: name the config alone.)
    let mut cmd = std::process::Command::new(BIN);
    let out =
        cmd.args(["--config", cfg.to_str().unwrap(), "check-config"]).current_dir(env.dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sotre: no certificate store here"), "{out:?}");
    assert!(!env.path("sotre").exists(), "check-config created the store");
    assert!(run.stderr.contains("no certificate store here"), "{}", run.stderr);
    // `init` creates it, once; check-config then writes nothing at all.
    env.run(&["init"]).ok();
    let before = env.tree();
    env.run(&["check-config"]).ok();
    assert_eq!(env.tree(), before);
    // PORTCULLIS_CONFIG names the configuration when --config is not given.
    let cfg = env.write("env.toml", &format!("[store]\ndir = \"{}\"\n", env.store().display()));
    let out = std::process::Command::new(BIN)
        .args(["cert", "list"])
        .env("PORTCULLIS_CONFIG", &cfg)
        .current_dir(env.dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // Each write command says which store it changed.
    let run = env.run(&["cert", "create-self-signed", "--name", "Y", "--san", "y.test"]);
    run.ok();
    assert!(run.stderr.contains(&format!("note: store {}", env.store().display())), "{}", run.stderr);
}

#[test]
fn deleting_a_served_certificate_needs_force() {
    let env = Env::initialised();
    create(&env, "Only", "only.test");
    create(&env, "Twin A", "twin.test");
    create(&env, "Twin B", "twin.test");
    // The only certificate for a name: refused, naming what would be served instead.
    refused(
        &env,
        &["cert", "delete", "only"],
        "only is served: the only certificate for only.test on listener default; instead: portcullis-default (factory default",
    );
    // Another certificate covers the name: no harm, no --force needed.
    let run = env.run(&["cert", "delete", "twin-a"]);
    run.ok();
    // The global default.
    env.run(&["cert", "set-default", "twin-b", "--force"]).ok();
    refused(
        &env,
        &["cert", "delete", "twin-b"],
        "it is the global default; the factory default portcullis-default takes over",
    );
    let run = env.run(&["cert", "delete", "twin-b", "--force"]);
    run.ok();
    assert!(run.stderr.contains("twin-b was served: it is the global default"), "{}", run.stderr);
    let run = env.run(&["cert", "delete", "only", "--force"]);
    run.ok();
    assert_eq!(env.list().len(), 1);

    // A listener's only assignment: once it is gone the listener serves every
    // certificate again, so the global default, not the factory one, takes over.
    let cfg = env.write("p.toml", "[[listener]]\nname = \"edge\"\nbind = [\"127.0.0.1:1\"]\n");
    let c = cfg.to_str().unwrap();
    create(&env, "G", "g.test");
    create(&env, "Pinned", "pinned.test");
    env.run(&["--config", c, "cert", "set-default", "g"]).ok();
    env.run(&["--config", c, "cert", "assign", "pinned", "--listener", "edge"]).ok();
    refused(
        &env,
        &["--config", c, "cert", "delete", "pinned"],
        "fallback (earliest-assigned certificate) of listener edge; instead: g (global default (no SNI))",
    );
}

#[test]
fn a_key_that_matches_nothing_is_an_error() {
    let env = Env::initialised();
    let (k1, c1, k2, c2) = (env.path("a.key"), env.path("a.pem"), env.path("b.key"), env.path("b.pem"));
    for (k, c, cn) in [(&k1, &c1, "a.keys.test"), (&k2, &c2, "b.keys.test")] {
        openssl_self_signed(
            k.to_str().unwrap(),
            c.to_str().unwrap(),
            &format!("/CN={cn}"),
            "30",
            &["-addext", &format!("subjectAltName=DNS:{cn}")],
        );
    }
    refused(
        &env,
        &["cert", "import", c1.to_str().unwrap(), k2.to_str().unwrap()],
        "b.key (PKCS#8 key): private key (ECDSA P-256) matches no certificate in this import or the store; nothing imported",
    );
    // The right pair imports; the same pair again, and the same PKCS#12 twice, say so.
    env.run(&["cert", "import", c1.to_str().unwrap(), k1.to_str().unwrap()]).ok();
    let again = env.run(&["cert", "import", c1.to_str().unwrap(), k1.to_str().unwrap()]);
    again.ok();
    assert!(again.stderr.contains("already in the store") && !again.stderr.contains("matches no"), "{}", again.stderr);
    let p12 = env.path("b.p12");
    fs::write(env.path("pw"), "secret\n").unwrap();
    openssl_ok(
        &[
            "pkcs12",
            "-export",
            "-inkey",
            k2.to_str().unwrap(),
            "-in",
            c2.to_str().unwrap(),
            "-out",
            p12.to_str().unwrap(),
            "-passout",
            "pass:secret",
        ],
        None,
    );
    let pw = env.path("pw");
    env.run(&["cert", "import", p12.to_str().unwrap(), "--password-file", pw.to_str().unwrap()]).ok();
    let before = env.tree();
    let again = env.run(&["cert", "import", p12.to_str().unwrap(), "--password-file", pw.to_str().unwrap()]);
    again.ok();
    assert!(again.stderr.contains("already in the store"), "{}", again.stderr);
    assert!(!again.stderr.contains("matches no certificate"), "{}", again.stderr);
    assert_eq!(env.tree(), before);
}

#[test]
fn an_expired_or_incomplete_certificate_is_not_served_silently() {
    let env = Env::initialised();
    // An expired certificate with its key.
    let f = |n: &str| env.path(n).display().to_string();
    import_dated(&env, "old", "old.test", "old.test", "20200101000000Z", "20210101000000Z");
    refused(
        &env,
        &["cert", "set-default", "old"],
        "old: clients would reject it: expired on 2021-01-01T00:00:00Z (use --force",
    );
    let cfg = env.write("p.toml", "[[listener]]\nname = \"edge\"\nbind = [\"127.0.0.1:1\"]\n");
    let c = cfg.to_str().unwrap();
    refused(&env, &["--config", c, "cert", "assign", "old", "--listener", "edge"], "expired on 2021-01-01");
    refused(&env, &["--config", c, "cert", "set-default", "old", "--listener", "edge"], "expired on 2021-01-01");

    // A CA-signed leaf whose intermediate was never imported.
    make_chain(&env);
    env.run(&["cert", "import", &f("leaf.pem"), &f("leaf.key"), "--name", "Leaf"]).ok();
    refused(&env, &["cert", "set-default", "leaf"], "its chain misses the intermediate \"Test Intermediate\"");
    // check-config lists problems of served certificates; --strict makes them fatal.
    let check = env.run(&["check-config"]);
    assert!(check.stderr.contains("leaf (served)") && check.stderr.contains("chain incomplete"), "{}", check.stderr);
    assert!(check.stderr.contains("old (served)") && check.stderr.contains("expired"), "{}", check.stderr);
    assert_eq!(check.code, Some(0), "{}", check.stderr);
    assert_eq!(env.run(&["check-config", "--strict"]).code, Some(1));
    // Importing the intermediate fixes it; --force serves the expired one anyway.
    env.run(&["cert", "import", &f("int.pem")]).ok();
    env.run(&["cert", "set-default", "leaf"]).ok();
    let run = env.run(&["cert", "set-default", "old", "--force"]);
    run.ok();
    assert!(run.stderr.contains("expired"), "{}", run.stderr);
}

/// root.pem/key, int.pem/key (signed by the root) and leaf.pem/key for leaf.test
/// (signed by the intermediate), made with openssl in the test directory.
fn make_chain(env: &Env) {
    let f = |n: &str| env.path(n).display().to_string();
    openssl_self_signed(&f("root.key"), &f("root.pem"), "/CN=Test Root", "365", &[]);
    openssl_p256_csr(&f("int.key"), &f("int.csr"), "/CN=Test Intermediate", &[]);
    fs::write(f("int.ext"), "basicConstraints=critical,CA:TRUE\n").unwrap();
    openssl_ca_sign(&f("int.csr"), &f("root.pem"), &f("root.key"), "365", &f("int.pem"), &["-extfile", &f("int.ext")]);
    openssl_p256_csr(&f("leaf.key"), &f("leaf.csr"), "/CN=leaf.test", &["-addext", "subjectAltName=DNS:leaf.test"]);
    openssl_ca_sign(
        &f("leaf.csr"),
        &f("int.pem"),
        &f("int.key"),
        "30",
        &f("leaf.pem"),
        &["-copy_extensions", "copyall"],
    );
}

#[test]
fn the_trust_pool_is_listed_shown_and_deleted_with_care() {
    let env = Env::initialised();
    make_chain(&env);
    let f = |n: &str| env.path(n).display().to_string();
    env.run(&["cert", "import", &f("leaf.pem"), &f("leaf.key"), &f("int.pem"), &f("root.pem"), "--name", "Leaf"]).ok();
    // The fingerprints as openssl computes them.
    let fp = |file: &str| {
        let out = openssl_ok(&["x509", "-in", &f(file), "-noout", "-fingerprint", "-sha256"], None);
        out.trim().rsplit('=').next().unwrap().replace(':', "").to_lowercase()
    };
    let (root_fp, int_fp) = (fp("root.pem"), fp("int.pem"));
    let trust = env.run(&["--json", "cert", "list", "--trust"]).json();
    let trust = trust.as_array().unwrap();
    assert_eq!(trust.len(), 2, "{trust:?}");
    let int = trust.iter().find(|t| t["fingerprint_sha256"] == int_fp.as_str()).expect("intermediate listed");
    assert_eq!(int["role"], "intermediate");
    assert_eq!(int["issued_by"], "Test Root");
    assert_eq!(int["private_key"], false);
    assert_eq!(int["used_by"], serde_json::json!(["leaf"]));
    let table = env.run(&["cert", "list", "--trust"]).ok().to_owned();
    assert!(table.contains(&root_fp[..16]) && table.contains("root") && table.contains("leaf"), "{table}");
    // Shown by a fingerprint prefix; --pem gives back the very certificate.
    let shown = env.run(&["cert", "show", &int_fp[..12]]).ok().to_owned();
    assert!(shown.contains("CN=Test Intermediate"), "{shown}");
    assert!(shown.lines().any(|l| l.starts_with("private key:") && l.ends_with(" no")), "{shown}");
    let pem = env.run(&["cert", "show", &int_fp[..12], "--pem"]).ok().to_owned();
    assert_eq!(
        openssl_ok(&["x509", "-noout", "-fingerprint", "-sha256"], Some(&pem)),
        openssl_ok(&["x509", "-in", &f("int.pem"), "-noout", "-fingerprint", "-sha256"], None)
    );
    // The intermediate carries leaf's chain: refused without --force.
    refused(&env, &["cert", "delete", &int_fp[..12]], "the chain of leaf goes through it and would be incomplete");
    // An unused one goes at once: import an unrelated root first.
    openssl_self_signed(&f("other.key"), &f("other.pem"), "/CN=Unused Root", "30", &[]);
    env.run(&["cert", "import", &f("other.pem")]).ok();
    let other_fp = fp("other.pem");
    let run = env.run(&["cert", "delete", &other_fp]);
    assert!(run.ok().contains(&format!("deleted trust certificate {other_fp}")), "{}", run.stdout);
    assert!(!env.store().join("trust").join(format!("{other_fp}.pem")).exists());
    let run = env.run(&["cert", "delete", &int_fp, "--force"]);
    run.ok();
    assert!(run.stderr.contains("the chain of leaf is incomplete now"), "{}", run.stderr);
    let leaf = env.list().into_iter().find(|c| c["id"] == "leaf").unwrap();
    assert!(leaf["warnings"].to_string().contains("chain incomplete"), "{leaf}");
}

#[test]
fn the_certificate_table_fits_120_columns() {
    let env = Env::initialised();
    let mut args = vec!["cert", "create-self-signed", "--name", "A rather long friendly name for the support portal"];
    let names: Vec<String> = (0..12).map(|i| format!("host-{i}.a-long-domain-name.example.com")).collect();
    for n in &names {
        args.extend(["--san", n]);
    }
    env.run(&args).ok();
    env.run(&["cert", "create-self-signed", "--name", "Short", "--san", "short.test", "--days", "3"]).ok();
    let table = env.run(&["cert", "list"]).ok().to_owned();
    for line in table.lines() {
        assert!(line.chars().count() <= 120, "{} columns: {line}", line.chars().count());
    }
    assert!(table.contains("…"), "nothing was cut: {table}");
    // An id this long (the longest a name makes) is still whole; --wide has everything.
    let id = env.list().into_iter().find(|c| c["id"] != "portcullis-default" && c["id"] != "short").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(table.contains(&id), "{id}: {table}");
    let wide = env.run(&["cert", "list", "--wide"]).ok().to_owned();
    assert!(wide.contains(&names.join(",")), "{wide}");
    assert!(wide.lines().any(|l| l.chars().count() > 120));
}

#[test]
fn check_config_reports_every_problem_and_status_shows_the_last_good_state() {
    let env = Env::initialised();
    let (port, admin) = (free_port(), free_port());
    let good = format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\n[[listener]]\nname = \"edge\"\nbind = [\"127.0.0.1:{port}\"]\n\
         [[route]]\nhosts = [\"*\"]\nhandler = {{ type = \"static\", body = \"x\" }}\n"
    );
    let _daemon = env.daemon(&good, &[port, admin]);
    let cfg = env.path("portcullis.toml");
    // Four problems in the main file, one in a fragment.
    let bad = format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\n[[listener]]\nname = \"edge\"\nbind = [\"127.0.0.1:{port}\", \"bad\"]\n\
         max_connections = 0\nno_sni = \"maybe\"\n[[route]]\nlistener = \"ghost\"\nhosts = [\"*\"]\n\
         handler = {{ type = \"static\", body = \"x\" }}\n"
    );
    fs::create_dir_all(env.path("conf.d")).unwrap();
    fs::write(env.path("conf.d/20-broken.toml"), "[[route]\n").unwrap();
    fs::write(&cfg, &bad).unwrap();
    let c = cfg.to_str().unwrap();
    let before = env.tree();
    let run = env.run(&["--config", c, "check-config"]);
    assert_eq!(run.code, Some(1));
    let lines: Vec<&str> = run.stderr.lines().collect();
    for want in [
        "portcullis.toml:5: listener[0].bind: \"bad\" is not an address:port",
        "portcullis.toml:6: listener[0].max_connections: must be at least 1",
        "portcullis.toml:7: listener[0].no_sni: \"maybe\"",
        "portcullis.toml:9: route[0].listener: \"ghost\" is not a [[listener]] name",
        "20-broken.toml:1:",
    ] {
        assert!(lines.iter().any(|l| l.starts_with("error: ") && l.contains(want)), "{want}: {}", run.stderr);
    }
    assert_eq!(lines.len(), 5, "{}", run.stderr);
    assert_eq!(env.tree(), before);
    // The daemon keeps serving its last good configuration; status says so, and why.
    let status = env.run(&["--config", c, "status"]);
    assert_eq!(status.code, Some(1));
    assert!(
        status.stdout.contains("config error: ") && status.stdout.contains("20-broken.toml:1:"),
        "{}",
        status.stdout
    );
    assert!(status.stdout.contains("still serving snapshot generation"), "{}", status.stdout);
    assert!(status.stdout.contains("listener:     edge on 127.0.0.1:"), "{}", status.stdout);
    assert_eq!(served_cn(port, None).as_deref(), Some("Portcullis Default"));
    // Inside [acme] and [alerts] too, every field is checked (no fragments this time).
    fs::remove_dir_all(env.path("conf.d")).unwrap();
    let sections = env.write(
        "sections.toml",
        "[acme]\ndirectory = \"http://ca.test/dir\"\ncontact = [\"ops\"]\nrenew_before_days = -1\n\
         [[acme.certificate]]\nhostnames = [\"*.wild.test\"]\n[alerts.smtp]\nhost = \"\"\nfrom = \"not a mailbox\"\nto = []\n\
         [[acme.certificate]]\nhostnames = [\"ok.test\"]\nchallenge = \"tls-alpn-02\"\n\
         [cluster]\netcd = [\"ftp://x\"]\nnode = \"a b\"\nsecret_key_file = \"\"\ncert_file = \"c.pem\"\n",
    );
    let run = env.run(&["--config", sections.to_str().unwrap(), "check-config"]);
    assert_eq!(run.code, Some(1));
    for want in [
        "sections.toml:2: acme.directory",
        "sections.toml:1: acme.agree_tos",
        "sections.toml:3: acme.contact",
        "sections.toml:4: acme.renew_before_days",
        "sections.toml:6: acme.certificate[0].hostnames",
        "sections.toml:8: alerts.smtp.host",
        "sections.toml:9: alerts.smtp.from",
        "sections.toml:10: alerts.smtp.to",
        "sections.toml:13: acme.certificate[1].challenge",
        "sections.toml:15: cluster.etcd",
        "sections.toml:16: cluster.node",
        "sections.toml:17: cluster.secret_key_file",
        "sections.toml:18: cluster.cert_file",
    ] {
        assert!(run.stderr.lines().any(|l| l.contains(want)), "{want}: {}", run.stderr);
    }
    assert_eq!(run.stderr.lines().count(), 13, "{}", run.stderr);
}

#[test]
fn a_one_label_common_name_is_a_name() {
    let env = Env::initialised();
    env.run(&["cert", "create-self-signed", "--name", "Local", "--common-name", "localhost"]).ok();
    let pem = env.run(&["cert", "show", "local", "--pem"]).ok().to_owned();
    let text = openssl_ok(&["x509", "-noout", "-ext", "subjectAltName"], Some(&pem));
    assert!(text.contains("DNS:localhost"), "{text}");
}
