//! Self-signed certificates of every key type, read back by the real `openssl` CLI.

mod common;

use common::{Env, epoch_of, mode, now_epoch, openssl, openssl_ok};

/// (key flag, what `openssl x509 -text` says of the key, signature algorithm)
const KEYS: &[(&str, &[&str], &str)] = &[
    ("ecdsa-p256", &["Public-Key: (256 bit)", "NIST CURVE: P-256"], "ecdsa-with-SHA256"),
    ("ecdsa-p384", &["Public-Key: (384 bit)", "NIST CURVE: P-384"], "ecdsa-with-SHA384"),
    ("ed25519", &["Public Key Algorithm: ED25519"], "Signature Algorithm: ED25519"),
    ("rsa-2048", &["Public-Key: (2048 bit)", "rsaEncryption"], "sha256WithRSAEncryption"),
    ("rsa-3072", &["Public-Key: (3072 bit)", "rsaEncryption"], "sha256WithRSAEncryption"),
    ("rsa-4096", &["Public-Key: (4096 bit)", "rsaEncryption"], "sha256WithRSAEncryption"),
];

#[test]
fn every_key_type_reads_back_in_openssl() {
    let env = Env::initialised();
    for (i, (key, key_text, sig)) in KEYS.iter().enumerate() {
        let days = 30 + i as i64;
        let name = format!("Site {key}");
        let run = env.run(&[
            "--json",
            "cert",
            "create-self-signed",
            "--name",
            &name,
            "--key",
            key,
            "--country",
            "de",
            "--state",
            "Bavaria",
            "--locality",
            "Munich",
            "--org",
            "Example GmbH",
            "--org-unit",
            "Web",
            "--common-name",
            "www.example.test",
            "--san",
            "*.example.test",
            "--san",
            "127.0.0.1",
            "--days",
            &days.to_string(),
        ]);
        let created = run.json();
        let id = created["id"].as_str().unwrap().to_owned();
        assert!(run.stderr.contains("note: the common name www.example.test is a DNS name"), "{}", run.stderr);
        assert!(run.stderr.contains("warning: --san 127.0.0.1"), "{}", run.stderr);

        let pem = env.run(&["cert", "show", &id, "--pem"]).ok().to_owned();
        let cert = env.write(&format!("{id}.pem"), &pem);
        let cert = cert.to_str().unwrap();
        let text = openssl_ok(&["x509", "-in", cert, "-noout", "-text"], None);
        for want in [
            "Subject: C = DE, ST = Bavaria, L = Munich, O = Example GmbH, OU = Web, CN = www.example.test",
            "Issuer: C = DE, ST = Bavaria, L = Munich, O = Example GmbH, OU = Web, CN = www.example.test",
            "DNS:www.example.test, DNS:*.example.test, IP Address:127.0.0.1",
            "CA:FALSE",
            "TLS Web Server Authentication",
            "Digital Signature",
            sig,
        ]
        .iter()
        .chain(key_text.iter())
        {
            assert!(text.contains(want), "{key}: openssl does not show {want:?}:\n{text}");
        }

        // Validity: starts now, ends after exactly `days` days (to the second).
        let dates = openssl_ok(&["x509", "-in", cert, "-noout", "-startdate", "-enddate"], None);
        let field = |name: &str| {
            let line = dates.lines().find(|l| l.starts_with(name)).unwrap();
            epoch_of(line.split_once('=').unwrap().1)
        };
        let (start, end) = (field("notBefore"), field("notAfter"));
        assert!((now_epoch() - start).abs() < 300, "{key}: notBefore {start} is not now");
        assert_eq!(end - start, days * 86_400, "{key}: validity is not {days} days");

        // A 128-bit serial: 16 bytes, as openssl prints it.
        let serial = openssl_ok(&["x509", "-in", cert, "-noout", "-serial"], None);
        assert_eq!(serial.trim().trim_start_matches("serial=").len(), 32, "{key}: {serial}");

        // It verifies as its own root.
        let (ok, out, err) = openssl(&["verify", "-CAfile", cert, cert], None);
        assert!(ok && out.contains(": OK"), "{key}: self-verification failed: {out}{err}");

        // The stored key is the certificate's, is 0600, and openssl reads it.
        let key_path = env.store().join("certs").join(&id).join("key.pem");
        assert_eq!(mode(&key_path), 0o600, "{key}: key mode");
        let from_key = openssl_ok(&["pkey", "-in", key_path.to_str().unwrap(), "-pubout"], None);
        let from_cert = openssl_ok(&["x509", "-in", cert, "-noout", "-pubkey"], None);
        assert_eq!(from_key, from_cert, "{key}: key does not match certificate");

        // The listing agrees with openssl.
        let fp = openssl_ok(&["x509", "-in", cert, "-noout", "-fingerprint", "-sha256"], None);
        let fp = fp.trim().split_once('=').unwrap().1.replace(':', "").to_lowercase();
        assert_eq!(created["fingerprint_sha256"], fp.as_str());
        assert_eq!(created["sans"], serde_json::json!(["www.example.test", "*.example.test", "127.0.0.1"]));
        assert_eq!(created["has_private_key"], true);
        assert_eq!(created["source"], "self-signed");
    }
}

#[test]
fn list_json_has_the_documented_columns() {
    let env = Env::initialised();
    env.run(&["cert", "create-self-signed", "--name", "Support", "--san", "support.example.test"]).ok();
    let list = env.list();
    assert_eq!(list.len(), 2, "factory default + ours: {list:?}");
    let ours = list.iter().find(|c| c["friendly_name"] == "Support").unwrap();
    for (field, kind) in [
        ("id", "string"),
        ("friendly_name", "string"),
        ("source", "string"),
        ("issued_to", "string"),
        ("issued_by", "string"),
        ("not_before", "string"),
        ("not_after", "string"),
        ("sans", "array"),
        ("fingerprint_sha256", "string"),
        ("has_private_key", "bool"),
        ("default", "bool"),
        ("listeners", "array"),
        ("warnings", "array"),
    ] {
        let v = &ours[field];
        let got = match v {
            serde_json::Value::String(_) => "string",
            serde_json::Value::Array(_) => "array",
            serde_json::Value::Bool(_) => "bool",
            _ => "other",
        };
        assert_eq!(got, kind, "{field}: {v}");
    }
    // RFC 3339 per GNU date, and 365 days by default.
    let nb = epoch_of(ours["not_before"].as_str().unwrap());
    let na = epoch_of(ours["not_after"].as_str().unwrap());
    assert_eq!(na - nb, 365 * 86_400);
    let fp = ours["fingerprint_sha256"].as_str().unwrap();
    assert!(fp.len() == 64 && fp.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    assert_eq!(ours["warnings"], serde_json::json!([]));
    assert_eq!(ours["default"], false);
    // The friendly name is the default common name, as on the appliances.
    assert_eq!(ours["issued_to"], "Support");

    // The table shows the same rows (--wide: every cell in full).
    let table = env.run(&["cert", "list", "--wide"]).ok().to_owned();
    let header = table.lines().next().unwrap();
    for col in
        ["ID", "FRIENDLY NAME", "ISSUED TO", "ISSUED BY", "EXPIRES", "SANS", "KEY", "DEFAULT", "LISTENERS", "WARNINGS"]
    {
        assert!(header.contains(col), "{header}");
    }
    assert!(table.lines().any(|l| l.starts_with("support ") && l.contains("support.example.test")), "{table}");
}

#[test]
fn factory_default_is_created_on_first_use_and_valid() {
    let env = Env::empty();
    let init = env.run(&["init"]);
    assert!(init.stderr.contains("initialised a new store"), "{}", init.stderr);
    assert!(init.ok().contains("initialised store"), "{}", init.stdout);
    let again = env.run(&["init"]);
    assert!(again.ok().contains("exists already; nothing changed"), "{}", again.stdout);
    let run = env.run(&["--json", "cert", "list"]);
    let list = run.json();
    let factory = &list[0];
    assert_eq!(factory["id"], "portcullis-default");
    assert_eq!(factory["friendly_name"], "Portcullis Default");
    assert_eq!(factory["source"], "factory");
    assert_eq!(factory["default"], true);
    assert_eq!(factory["has_private_key"], true);
    let pem = env.run(&["cert", "show", "portcullis-default", "--pem"]).ok().to_owned();
    let text = openssl_ok(&["x509", "-noout", "-text"], Some(&pem));
    assert!(text.contains("DNS:localhost"), "{text}");
    // A second run reuses it.
    assert_eq!(env.list()[0]["fingerprint_sha256"], factory["fingerprint_sha256"]);
}

#[test]
fn list_filters_by_name_and_limits() {
    let env = Env::initialised();
    for (name, san) in [("Shop EU", "shop.example.eu"), ("Shop US", "www.example.com"), ("Blog", "blog.example.org")] {
        env.run(&["cert", "create-self-signed", "--name", name, "--san", san]).ok();
    }
    let ids = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["--json", "cert", "list"];
        all.extend(args);
        let v = env.run(&all).json();
        v.as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap().to_owned()).collect()
    };
    // By friendly name, by SAN (case-insensitive), by id.
    assert_eq!(ids(&["--filter", "shop"]), ["shop-eu", "shop-us"]);
    assert_eq!(ids(&["--filter", "WWW.EXAMPLE"]), ["shop-us"]);
    assert_eq!(ids(&["--filter", "blog"]), ["blog"]);
    assert!(ids(&["--filter", "nothing-like-it"]).is_empty());
    // A limit, in id order, says how many matched.
    let limited = env.run(&["cert", "list", "--filter", "example", "--limit", "2"]);
    let out = limited.ok();
    assert!(out.contains("blog") && out.contains("shop-eu") && !out.contains("shop-us"), "{out}");
    assert!(limited.stderr.contains("2 of 4 certificates shown (3 matched)"), "{}", limited.stderr);
    // A bad limit is named (a usage error, as every bad flag value: status 2).
    let bad = env.run(&["cert", "list", "--limit", "many"]);
    assert_eq!(bad.code, Some(2));
    assert!(bad.stderr.contains("--limit"), "{}", bad.stderr);
}
