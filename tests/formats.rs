//! Import of every format an admin meets and export of every format we write, with the
//! `openssl` CLI making the inputs and reading the outputs.

// Fixtures are written by hand, as an admin's files would be.
#![allow(clippy::disallowed_methods)]

mod common;

use std::fs;
use std::path::PathBuf;

use common::{Env, mode, openssl, openssl_ok};

/// A CA hierarchy and a leaf made with openssl: root (P-384) → intermediate (P-256) →
/// leaf (RSA-2048 or P-256), plus a password file.
struct Pki {
    env: Env,
}

impl Pki {
    fn new(leaf_key: &str) -> Self {
        let env = Env::initialised();
        let p = Self { env };
        fs::write(p.f("pass"), "s3cret pass\n").unwrap();
        p.ossl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-nodes",
            "-keyout",
            p.f("root.key"),
            "-out",
            p.f("root.pem"),
            "-days",
            "30",
            "-subj",
            "/CN=Test Root",
        ]);
        p.ossl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            p.f("int.key"),
            "-out",
            p.f("int.csr"),
            "-subj",
            "/CN=Test Intermediate",
        ]);
        fs::write(
            p.f("int.ext"),
            "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n",
        )
        .unwrap();
        p.ossl(&[
            "x509",
            "-req",
            "-in",
            p.f("int.csr"),
            "-CA",
            p.f("root.pem"),
            "-CAkey",
            p.f("root.key"),
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            p.f("int.ext"),
            "-out",
            p.f("int.pem"),
        ]);
        let newkey: &[&str] = if leaf_key == "rsa" {
            &["-newkey", "rsa:2048"]
        } else {
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
        };
        let mut args = vec!["req"];
        args.extend_from_slice(newkey);
        args.extend_from_slice(&[
            "-nodes",
            "-keyout",
            p.f("leaf.key"),
            "-out",
            p.f("leaf.csr"),
            "-subj",
            "/CN=www.example.test",
        ]);
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        p.ossl(&args.iter().map(String::as_str).collect::<Vec<_>>());
        fs::write(p.f("leaf.ext"), "subjectAltName=DNS:www.example.test,DNS:example.test\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n").unwrap();
        p.sign_with_intermediate(p.f("leaf.csr"), "30", &["-extfile", p.f("leaf.ext"), "-out", p.f("leaf.pem")]);
        let chain = [p.read("int.pem"), p.read("root.pem")].concat();
        fs::write(p.f("chain.pem"), chain).unwrap();
        p
    }

    /// A file of this fixture. Leaked: tests are short-lived and this keeps argument lists simple.
    fn f(&self, name: &str) -> &'static str {
        Box::leak(self.env.path(name).display().to_string().into_boxed_str())
    }

    fn read(&self, name: &str) -> String {
        fs::read_to_string(self.f(name)).unwrap()
    }

    fn ossl(&self, args: &[&str]) -> String {
        openssl_ok(args, None)
    }

    /// Has the test intermediate sign `csr` for `days` days; `extra` adds openssl
    /// flags (extensions, `-out`).
    fn sign_with_intermediate(&self, csr: &str, days: &str, extra: &[&str]) {
        let mut args = vec!["x509", "-req", "-in", csr, "-CA", self.f("int.pem"), "-CAkey", self.f("int.key")];
        args.extend(["-CAcreateserial", "-days", days]);
        args.extend_from_slice(extra);
        self.ossl(&args);
    }

    /// openssl's SHA-256 fingerprint of a certificate file, lowercase hex.
    fn fingerprint(&self, file: &str, inform: &str) -> String {
        let out = self.ossl(&["x509", "-in", file, "-inform", inform, "-noout", "-fingerprint", "-sha256"]);
        out.trim().split_once('=').unwrap().1.replace(':', "").to_lowercase()
    }

    /// openssl's view of a key file's public key.
    fn pubkey_of_key(&self, file: &str, extra: &[&str]) -> String {
        let mut args = vec!["pkey", "-in", file, "-pubout"];
        args.extend_from_slice(extra);
        self.ossl(&args)
    }

    fn leaf_pubkey(&self) -> String {
        self.ossl(&["x509", "-in", self.f("leaf.pem"), "-noout", "-pubkey"])
    }
}

/// Imports `files` into a fresh copy of the store and returns the one identity entry.
fn import_one(p: &Pki, files: &[&str], password: bool) -> serde_json::Value {
    let env = Env::initialised();
    let mut args: Vec<&str> = vec!["--json", "cert", "import"];
    args.extend(files.iter().copied());
    let pass = p.f("pass");
    if password {
        args.extend(["--password-file", pass]);
    }
    let run = env.run(&args);
    let v = run.json();
    let certs = v["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), 1, "{files:?}: {v}\n{}", run.stderr);
    let c = certs[0].clone();
    // The stored key is the leaf's, as openssl sees it.
    let id = c["id"].as_str().unwrap();
    let key = env.store().join("certs").join(id).join("key.pem");
    assert_eq!(p.pubkey_of_key(key.to_str().unwrap(), &[]), p.leaf_pubkey(), "{files:?}: wrong key");
    assert_eq!(mode(&key), 0o600);
    c
}

#[test]
fn every_import_format_gives_the_same_certificate_and_key() {
    for leaf_key in ["rsa", "ec"] {
        let p = Pki::new(leaf_key);
        let fp = p.fingerprint(p.f("leaf.pem"), "PEM");
        let f = |n: &str| p.f(n);
        let der = |input: &str, out: &str, kind: &str, extra: &[&str]| {
            let mut args = vec![kind, "-in", input, "-outform", "DER", "-out", out];
            args.extend_from_slice(extra);
            p.ossl(&args);
        };
        der(f("leaf.pem"), f("leaf.der"), "x509", &[]);
        p.ossl(&["pkcs8", "-topk8", "-nocrypt", "-in", f("leaf.key"), "-outform", "DER", "-out", f("leaf.key.der")]);
        fs::write(f("bundle.pem"), [p.read("leaf.pem"), p.read("chain.pem"), p.read("leaf.key")].concat()).unwrap();
        p.ossl(&[
            "crl2pkcs7",
            "-nocrl",
            "-certfile",
            f("leaf.pem"),
            "-certfile",
            f("chain.pem"),
            "-outform",
            "DER",
            "-out",
            f("bundle.p7b"),
        ]);
        p.ossl(&[
            "crl2pkcs7",
            "-nocrl",
            "-certfile",
            f("leaf.pem"),
            "-certfile",
            f("chain.pem"),
            "-out",
            f("bundle.p7b.pem"),
        ]);
        let pass = format!("file:{}", f("pass"));
        p.ossl(&["pkcs8", "-topk8", "-v2", "aes256", "-in", f("leaf.key"), "-passout", &pass, "-out", f("enc.p8")]);
        p.ossl(&[
            "pkcs8",
            "-topk8",
            "-v2",
            "aes256",
            "-in",
            f("leaf.key"),
            "-passout",
            &pass,
            "-outform",
            "DER",
            "-out",
            f("enc.p8.der"),
        ]);
        p.ossl(&[
            "pkcs8",
            "-topk8",
            "-v1",
            "PBE-SHA1-3DES",
            "-in",
            f("leaf.key"),
            "-passout",
            &pass,
            "-out",
            f("pbes1.p8"),
        ]);
        p.ossl(&[
            "pkcs12",
            "-export",
            "-in",
            f("leaf.pem"),
            "-inkey",
            f("leaf.key"),
            "-certfile",
            f("chain.pem"),
            "-passout",
            &pass,
            "-out",
            f("modern.p12"),
        ]);
        p.ossl(&[
            "pkcs12",
            "-export",
            "-legacy",
            "-in",
            f("leaf.pem"),
            "-inkey",
            f("leaf.key"),
            "-certfile",
            f("chain.pem"),
            "-passout",
            &pass,
            "-out",
            f("legacy.pfx"),
        ]);
        let trad = if leaf_key == "rsa" { "rsa" } else { "ec" };
        let mut t = vec![trad, "-in", f("leaf.key"), "-out", f("trad.key")];
        if trad == "rsa" {
            t.push("-traditional");
        }
        p.ossl(&t);
        let mut t = vec![trad, "-in", f("leaf.key"), "-outform", "DER", "-out", f("trad.key.der")];
        if trad == "rsa" {
            t.push("-traditional");
        }
        p.ossl(&t);
        let mut t = vec![trad, "-in", f("leaf.key"), "-aes256", "-passout", &pass, "-out", f("trad-enc.key")];
        if trad == "rsa" {
            t.push("-traditional");
        }
        p.ossl(&t);
        assert!(p.read("trad-enc.key").contains("Proc-Type: 4,ENCRYPTED"), "openssl wrote no legacy encryption");

        let cases: Vec<(Vec<&str>, bool)> = vec![
            (vec![f("leaf.pem"), f("leaf.key")], false),
            (vec![f("leaf.der"), f("leaf.key.der")], false),
            (vec![f("bundle.pem")], false),
            (vec![f("bundle.p7b"), f("leaf.key")], false),
            (vec![f("bundle.p7b.pem"), f("leaf.key")], false),
            (vec![f("leaf.pem"), f("enc.p8")], true),
            (vec![f("leaf.der"), f("enc.p8.der")], true),
            (vec![f("leaf.pem"), f("pbes1.p8")], true),
            (vec![f("modern.p12")], true),
            (vec![f("legacy.pfx")], true),
            (vec![f("leaf.pem"), f("trad.key")], false),
            (vec![f("leaf.pem"), f("trad.key.der")], false),
            (vec![f("leaf.pem"), f("trad-enc.key")], true),
        ];
        for (files, password) in cases {
            let c = import_one(&p, &files, password);
            assert_eq!(c["fingerprint_sha256"], fp.as_str(), "{files:?}");
            assert_eq!(c["has_private_key"], true, "{files:?}");
            // By file name: the temporary directory's random name may contain "pfx" too.
            let with_chain = files
                .iter()
                .map(|f| f.rsplit('/').next().unwrap_or(f))
                .any(|n| n.contains("bundle") || n.contains("p12") || n.contains("pfx"));
            if with_chain {
                assert_eq!(c["chain"].as_array().unwrap().len(), 2, "{files:?}: {c}");
                assert_eq!(c["warnings"], serde_json::json!([]), "{files:?}");
            } else {
                assert!(c["warnings"].to_string().contains("chain incomplete"), "{files:?}: {c}");
            }
        }
    }
}

#[test]
fn ec_keys_with_parameters_block_import() {
    let p = Pki::new("ec");
    // `openssl ecparam -genkey` writes an EC PARAMETERS block before the key.
    let out = p.ossl(&["ecparam", "-genkey", "-name", "prime256v1"]);
    assert!(out.contains("EC PARAMETERS"));
    fs::write(p.f("param.key"), out).unwrap();
    p.ossl(&[
        "req",
        "-x509",
        "-key",
        p.f("param.key"),
        "-out",
        p.f("ss.pem"),
        "-days",
        "100",
        "-subj",
        "/CN=legacy.example.test",
        "-addext",
        "subjectAltName=DNS:legacy.example.test",
    ]);
    let env = Env::initialised();
    let v = env.run(&["--json", "cert", "import", p.f("ss.pem"), p.f("param.key")]).json();
    let c = &v["certificates"][0];
    // `openssl req -x509` marks it CA:TRUE, but with its key it is an identity, its own root.
    assert_eq!(c["has_private_key"], true, "{v}");
    assert_eq!(c["warnings"], serde_json::json!([]), "{v}");
    assert_eq!(v["trust"], serde_json::json!([]));
}

#[test]
fn bad_files_are_refused_and_change_nothing() {
    let p = Pki::new("ec");
    let f = |n: &str| p.f(n);
    let pass = format!("file:{}", f("pass"));
    p.ossl(&[
        "pkcs12",
        "-export",
        "-in",
        f("leaf.pem"),
        "-inkey",
        f("leaf.key"),
        "-passout",
        &pass,
        "-out",
        f("x.p12"),
    ]);
    p.ossl(&["pkcs8", "-topk8", "-v2", "aes256", "-in", f("leaf.key"), "-passout", &pass, "-out", f("enc.p8")]);
    p.ossl(&["ec", "-in", f("leaf.key"), "-aes256", "-passout", &pass, "-out", f("trad-enc.key")]);
    p.ossl(&["x509", "-in", f("leaf.pem"), "-outform", "DER", "-out", f("leaf.der")]);
    fs::write(f("wrong"), "not the password\n").unwrap();
    let der = fs::read(f("leaf.der")).unwrap();
    fs::write(f("short.der"), &der[..der.len() / 2]).unwrap();
    let pem = p.read("leaf.pem");
    fs::write(f("short.pem"), &pem[..pem.len() - 30]).unwrap();
    fs::write(f("garbage.bin"), b"\x01\x02\x03 definitely not a certificate").unwrap();
    fs::write(f("notes.txt"), "hello\n").unwrap();
    fs::write(f("huge.pem"), vec![b'A'; (1 << 20) + 1]).unwrap();
    let b64 = pem.lines().filter(|l| !l.starts_with("-----")).collect::<String>();
    let broken = format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", &b64[..b64.len() / 2]);
    fs::write(f("broken.pem"), broken).unwrap();

    let env = Env::initialised();
    let wrong = f("wrong");
    let cases: Vec<(Vec<&str>, String)> = vec![
        (vec![f("x.p12"), "--password-file", wrong], format!("wrong password for {}", f("x.p12"))),
        (vec![f("x.p12")], "give it with --password-file".into()),
        (vec![f("leaf.pem"), f("enc.p8"), "--password-file", wrong], format!("wrong password for {}", f("enc.p8"))),
        (vec![f("leaf.pem"), f("enc.p8")], "give it with --password-file".into()),
        (
            vec![f("leaf.pem"), f("trad-enc.key"), "--password-file", wrong],
            format!("wrong password for {}", f("trad-enc.key")),
        ),
        (
            vec![f("short.der")],
            format!("{}: not a certificate, PKCS#7, PKCS#12 or private key file (tried", f("short.der")),
        ),
        (vec![f("short.pem")], format!("{}: damaged PEM", f("short.pem"))),
        (vec![f("broken.pem")], format!("{}: damaged PEM", f("broken.pem"))),
        (vec![f("garbage.bin")], format!("{}: not a certificate", f("garbage.bin"))),
        (vec![f("notes.txt")], format!("{}: not a certificate", f("notes.txt"))),
        (vec![f("huge.pem")], format!("{}: 1048577 bytes is larger than the limit of 1 MiB", f("huge.pem"))),
        (vec![f("leaf.csr")], format!("{}: this is a certificate signing request", f("leaf.csr"))),
        (vec![f("int.key")], "matches no certificate in this import or the store; nothing imported".into()),
        (vec![f("missing.pem")], format!("{}: No such file", f("missing.pem"))),
        (vec![f("leaf.pem"), f("root.pem"), "--name", ""], "--name \"\"".into()),
    ];
    for (extra, want) in cases {
        let before = env.tree();
        let mut args = vec!["cert", "import"];
        args.extend(extra.iter().copied());
        let run = env.run(&args);
        assert_eq!(run.code, Some(1), "{extra:?}: {}", run.stderr);
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{extra:?}: {}", run.stderr);
        assert!(lines[0].contains(&want), "{extra:?}: {:?} lacks {want:?}", lines[0]);
        assert_eq!(env.tree(), before, "{extra:?}: store changed");
    }
}

#[test]
fn pkcs12_with_several_keys_links_each_and_reports_strays() {
    use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKey, PrivateKeyChain};
    let a = Pki::new("ec");
    let b = Pki::new("rsa");
    // A third key with no certificate.
    let stray = a.f("stray.key");
    a.ossl(&["genpkey", "-algorithm", "ed25519", "-out", stray]);
    let der = |p: &Pki, file: &str, kind: &str| {
        let out = p.env.path(&format!("{file}.der"));
        let out = out.to_str().unwrap();
        if kind == "pkey" {
            p.ossl(&["pkcs8", "-topk8", "-nocrypt", "-in", p.f(file), "-outform", "DER", "-out", out]);
        } else {
            p.ossl(&[kind, "-in", p.f(file), "-outform", "DER", "-out", out]);
        }
        fs::read(out).unwrap()
    };
    let mut ks = KeyStore::new();
    for (alias, p) in [("first", &a), ("second", &b)] {
        let chain = PrivateKeyChain::new(
            alias.as_bytes().to_vec(),
            PrivateKey::from_der(&der(p, "leaf.key", "pkey")).unwrap(),
            [Certificate::from_der(&der(p, "leaf.pem", "x509")).unwrap()],
        );
        ks.add_entry(alias, KeyStoreEntry::PrivateKeyChain(chain));
    }
    let stray_chain =
        PrivateKeyChain::new(b"stray".to_vec(), PrivateKey::from_der(&der(&a, "stray.key", "pkey")).unwrap(), []);
    ks.add_entry("stray", KeyStoreEntry::PrivateKeyChain(stray_chain));
    let p12 = a.env.path("multi.p12");
    fs::write(&p12, ks.writer("s3cret pass").write().unwrap()).unwrap();
    // The oracle agrees the file holds three keys.
    let info =
        openssl_ok(&["pkcs12", "-in", p12.to_str().unwrap(), "-info", "-nodes", "-passin", "pass:s3cret pass"], None);
    assert_eq!(info.matches("-----BEGIN PRIVATE KEY-----").count(), 3, "{info}");

    let env = Env::initialised();
    let run = env.run(&["--json", "cert", "import", p12.to_str().unwrap(), "--password-file", a.f("pass")]);
    let v = run.json();
    let certs = v["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), 2, "{v}");
    let names: Vec<&str> = certs.iter().map(|c| c["friendly_name"].as_str().unwrap()).collect();
    assert!(names.contains(&"first") && names.contains(&"second"), "{names:?}");
    assert!(certs.iter().all(|c| c["has_private_key"] == true));
    assert!(run.stderr.contains("private key (Ed25519) matches no certificate"), "{}", run.stderr);
    let fp_a = a.fingerprint(a.f("leaf.pem"), "PEM");
    let first = certs.iter().find(|c| c["friendly_name"] == "first").unwrap();
    assert_eq!(first["fingerprint_sha256"], fp_a.as_str());
    let key = env.store().join("certs").join(first["id"].as_str().unwrap()).join("key.pem");
    assert_eq!(a.pubkey_of_key(key.to_str().unwrap(), &[]), a.leaf_pubkey());
}

#[test]
fn csr_flow_with_chain_completed_later() {
    let p = Pki::new("ec");
    let env = Env::initialised();
    let csr = env
        .run(&[
            "cert",
            "request",
            "--name",
            "Support 2027",
            "--common-name",
            "support.example.test",
            "--san",
            "remote.example.test",
        ])
        .ok()
        .to_owned();
    fs::write(p.f("ours.csr"), csr).unwrap();
    p.sign_with_intermediate(p.f("ours.csr"), "30", &["-copy_extensions", "copyall", "-out", p.f("ours.pem")]);

    let run = env.run(&["--json", "cert", "import", p.f("ours.pem")]);
    let c = run.json()["certificates"][0].clone();
    assert_eq!(c["id"], "support-2027");
    assert_eq!(c["friendly_name"], "Support 2027");
    assert_eq!(c["source"], "csr");
    assert_eq!(c["has_private_key"], true);
    assert_eq!(
        c["warnings"][0],
        "chain incomplete: missing intermediate \"Test Intermediate\" (import the CA's intermediate certificate)"
    );
    assert!(!env.store().join("requests/support-2027").exists(), "the request is consumed");
    assert_eq!(env.run(&["--json", "cert", "list", "--requests"]).json(), serde_json::json!([]));

    // Only the root: still incomplete, the intermediate is missing.
    env.run(&["cert", "import", p.f("root.pem")]).ok();
    let listed = env.list().into_iter().find(|c| c["id"] == "support-2027").unwrap();
    assert!(listed["warnings"].to_string().contains("missing intermediate"), "{listed}");

    let run = env.run(&["--json", "cert", "import", p.f("int.pem"), p.f("root.pem")]);
    let v = run.json();
    let roles: Vec<(&str, bool)> = v["trust"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["role"].as_str().unwrap(), t["added"].as_bool().unwrap()))
        .collect();
    assert!(roles.contains(&("intermediate", true)) && roles.contains(&("root", false)), "{roles:?}");
    let listed = env.list().into_iter().find(|c| c["id"] == "support-2027").unwrap();
    assert_eq!(listed["warnings"], serde_json::json!([]), "{listed}");
    assert_eq!(listed["chain"], serde_json::json!(["CN=Test Intermediate", "CN=Test Root"]));

    // What is served: the leaf then the intermediate, and openssl verifies it to the root.
    let served = env.run(&["cert", "show", "support-2027", "--pem"]).ok().to_owned();
    assert_eq!(served.matches("BEGIN CERTIFICATE").count(), 2);
    fs::write(p.f("served.pem"), &served).unwrap();
    let (ok, out, err) =
        openssl(&["verify", "-CAfile", p.f("root.pem"), "-untrusted", p.f("served.pem"), p.f("served.pem")], None);
    assert!(ok, "{out}{err}");

    // Importing the same certificate again changes nothing.
    let before = env.tree();
    let run = env.run(&["cert", "import", p.f("ours.pem")]);
    run.ok();
    assert!(run.stderr.contains("already in the store"), "{}", run.stderr);
    assert_eq!(env.tree(), before);

    // Renewal with the same key: the CA signs the same request again, for longer. The
    // renewed certificate becomes a new entry with the stored key and a later expiry.
    p.sign_with_intermediate(p.f("ours.csr"), "60", &["-copy_extensions", "copyall", "-out", p.f("renewed.pem")]);
    let run = env.run(&["--json", "cert", "import", p.f("renewed.pem")]);
    let renewed = run.json()["certificates"][0].clone();
    assert!(run.stderr.contains("uses the private key of certificate support-2027"), "{}", run.stderr);
    assert_eq!(renewed["has_private_key"], true);
    assert_eq!(renewed["warnings"], serde_json::json!([]));
    assert_eq!(renewed["days_left"], 60);
    let list = env.list();
    assert_eq!(list.iter().filter(|c| c["issued_to"] == "support.example.test").count(), 2);
    env.run(&["cert", "replace", "support-2027", renewed["id"].as_str().unwrap()]).ok();
    env.run(&["cert", "delete", "support-2027"]).ok();
    let key = env.store().join("certs").join(renewed["id"].as_str().unwrap()).join("key.pem");
    assert_eq!(
        p.pubkey_of_key(key.to_str().unwrap(), &[]),
        p.ossl(&["x509", "-in", p.f("renewed.pem"), "-noout", "-pubkey"])
    );
}

#[test]
fn exports_read_back_in_openssl() {
    let env = Env::initialised();
    let p = Pki::new("ec");
    env.run(&["cert", "import", p.f("leaf.pem"), p.f("leaf.key"), p.f("chain.pem"), "--name", "Web"]).ok();
    let fp = p.fingerprint(p.f("leaf.pem"), "PEM");
    let out = |n: &str| env.path(n).display().to_string();
    let pass = p.f("pass");
    let passin = format!("file:{pass}");
    let export = |args: &[&str]| {
        let mut all = vec!["cert", "export", "web"];
        all.extend_from_slice(args);
        env.run(&all)
    };

    export(&["--format", "der", "--out", &out("web.der")]).ok();
    assert_eq!(p.fingerprint(&out("web.der"), "DER"), fp);

    export(&["--format", "pem", "--include-chain", "--include-key", "--password-file", pass, "--out", &out("web.pem")])
        .ok();
    let text = fs::read_to_string(out("web.pem")).unwrap();
    assert_eq!(text.matches("BEGIN CERTIFICATE").count(), 3);
    assert!(text.contains("BEGIN ENCRYPTED PRIVATE KEY"));
    assert_eq!(p.fingerprint(&out("web.pem"), "PEM"), fp);
    assert_eq!(p.pubkey_of_key(&out("web.pem"), &["-passin", &passin]), p.leaf_pubkey());
    assert_eq!(mode(&PathBuf::from(out("web.pem"))), 0o600);

    export(&["--format", "p7b", "--out", &out("web.p7b")]).ok();
    let certs = p.ossl(&["pkcs7", "-inform", "DER", "-in", &out("web.p7b"), "-print_certs"]);
    for s in ["subject=CN = www.example.test", "subject=CN = Test Intermediate", "subject=CN = Test Root"] {
        assert!(certs.contains(s), "{certs}");
    }

    export(&["--format", "p8", "--password-file", pass, "--out", &out("web.p8")]).ok();
    assert!(fs::read_to_string(out("web.p8")).unwrap().starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
    assert_eq!(p.pubkey_of_key(&out("web.p8"), &["-passin", &passin]), p.leaf_pubkey());
    assert_eq!(mode(&PathBuf::from(out("web.p8"))), 0o600);
    export(&["--format", "p8", "--no-password", "--out", &out("plain.p8")]).ok();
    assert!(fs::read_to_string(out("plain.p8")).unwrap().starts_with("-----BEGIN PRIVATE KEY-----"));

    export(&["--format", "p12", "--include-chain", "--password-file", pass, "--out", &out("web.p12")]).ok();
    let (ok, info, err) = openssl(&["pkcs12", "-in", &out("web.p12"), "-info", "-nokeys", "-passin", &passin], None);
    assert!(ok, "OpenSSL 3 without -legacy must read it: {err}");
    let all = format!("{info}{err}");
    assert!(all.contains("MAC: sha256"), "{all}");
    assert!(all.contains("PBES2, PBKDF2, AES-256-CBC"), "{all}");
    assert_eq!(info.matches("BEGIN CERTIFICATE").count(), 3);
    let key = p.ossl(&["pkcs12", "-in", &out("web.p12"), "-nocerts", "-nodes", "-passin", &passin]);
    fs::write(out("p12.key"), key).unwrap();
    assert_eq!(p.pubkey_of_key(&out("p12.key"), &[]), p.leaf_pubkey());

    // Refusals: a key needs a password or --no-password; no overwriting without --force.
    let before = env.tree();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--format", "p12", "--out", "x.p12"], "--password-file: exporting a private key needs a password"),
        (vec!["--format", "pem", "--include-key", "--out", "x.pem"], "--password-file"),
        (vec!["--format", "der", "--include-key", "--out", "x.der"], "--include-key"),
        (vec!["--format", "p7b", "--include-key", "--out", "x.p7b"], "--include-key"),
        (vec!["--format", "pfx", "--out", "x.pfx"], "--format \"pfx\""),
    ];
    for (args, want) in cases {
        let run = export(&args);
        assert_eq!(run.code, Some(1), "{args:?}");
        assert!(run.stderr.trim().contains(want) && run.stderr.lines().count() == 1, "{args:?}: {}", run.stderr);
        assert!(!env.path(args.last().unwrap()).exists());
    }
    let run = export(&["--format", "der", "--out", &out("web.der")]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("exists; use --force"), "{}", run.stderr);
    export(&["--format", "der", "--out", &out("web.der"), "--force"]).ok();
    assert_eq!(env.tree(), before);
}

#[test]
fn replication_by_p12_keeps_fingerprint_and_key() {
    let node_a = Env::initialised();
    let node_b = Env::initialised();
    let a = node_a
        .run(&[
            "--json",
            "cert",
            "create-self-signed",
            "--name",
            "Cluster",
            "--key",
            "rsa-2048",
            "--san",
            "cluster.example.test",
        ])
        .json();
    let pass = node_a.write("pass", "replicate me\n");
    let p12 = node_a.path("cluster.p12");
    node_a
        .run(&[
            "cert",
            "export",
            "cluster",
            "--format",
            "p12",
            "--include-chain",
            "--password-file",
            pass.to_str().unwrap(),
            "--out",
            p12.to_str().unwrap(),
        ])
        .ok();
    let b = node_b
        .run(&["--json", "cert", "import", p12.to_str().unwrap(), "--password-file", pass.to_str().unwrap()])
        .json();
    let b = &b["certificates"][0];
    assert_eq!(b["fingerprint_sha256"], a["fingerprint_sha256"]);
    assert_eq!(b["friendly_name"], "Cluster");
    assert_eq!(b["has_private_key"], true);
    let key_a = node_a.store().join("certs/cluster/key.pem");
    let key_b = node_b.store().join("certs").join(b["id"].as_str().unwrap()).join("key.pem");
    let pub_of = |k: &PathBuf| openssl_ok(&["pkey", "-in", k.to_str().unwrap(), "-pubout"], None);
    assert_eq!(pub_of(&key_a), pub_of(&key_b));
}

#[test]
fn replace_moves_the_default_and_checks_names() {
    let env = Env::initialised();
    let make = |name: &str, sans: &[&str]| {
        let mut args = vec!["--json", "cert", "create-self-signed", "--name", name];
        for s in sans {
            args.extend(["--san", s]);
        }
        env.run(&args).json()["id"].as_str().unwrap().to_owned()
    };
    let old = make("Old", &["www.example.test", "api.example.test"]);
    let new = make("New", &["*.example.test"]);
    let narrow = make("Narrow", &["www.example.test"]);
    env.run(&["cert", "set-default", &old]).ok();

    let before = env.tree();
    let run = env.run(&["cert", "replace", &old, &narrow]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("does not cover these names of old: api.example.test (use --force"), "{}", run.stderr);
    assert_eq!(env.tree(), before);

    let run = env.run(&["cert", "replace", &old, &new]);
    assert!(run.ok().contains("new replaces old: moved the default certificate"), "{}", run.stdout);
    let list = env.list();
    assert_eq!(list.iter().find(|c| c["default"] == true).unwrap()["id"], "new");
    env.run(&["cert", "delete", &old]).ok();
    assert_eq!(env.list().iter().find(|c| c["default"] == true).unwrap()["id"], "new");

    let run = env.run(&["cert", "replace", &new, &narrow, "--force"]);
    run.ok();
    assert!(run.stderr.contains("warning: narrow does not cover"), "{}", run.stderr);
    assert_eq!(env.list().iter().find(|c| c["default"] == true).unwrap()["id"], "narrow");

    // A certificate without its key cannot take over.
    let p = Pki::new("ec");
    env.run(&["cert", "import", p.f("leaf.pem"), "--name", "Keyless"]).ok();
    let before = env.tree();
    let run = env.run(&["cert", "replace", "narrow", "keyless", "--force"]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("keyless: has no usable private key"), "{}", run.stderr);
    assert_eq!(env.tree(), before);
    // ...until its key is imported.
    let run = env.run(&["cert", "import", p.f("leaf.key")]);
    run.ok();
    assert!(run.stderr.contains("keyless: private key from"), "{}", run.stderr);
    assert_eq!(env.list().iter().find(|c| c["id"] == "keyless").unwrap()["has_private_key"], true);
}

/// Signs `leaf.csr` with the intermediate for an arbitrary validity window, with
/// `openssl ca` (the one openssl command that takes explicit dates in OpenSSL 3.0).
fn sign_with_dates(p: &Pki, csr: &str, start: &str, end: &str, out: &str) {
    fs::write(p.f("index.txt"), "").unwrap();
    fs::write(p.f("serial"), "1000\n").unwrap();
    let cnf = format!(
        "[ca]\ndefault_ca = d\n[d]\ndatabase = {}\nnew_certs_dir = {}\nserial = {}\npolicy = any\ndefault_md = sha256\ncopy_extensions = copy\nunique_subject = no\n[any]\ncommonName = supplied\n",
        p.f("index.txt"),
        p.env.dir.path().display(),
        p.f("serial")
    );
    fs::write(p.f("ca.cnf"), cnf).unwrap();
    p.ossl(&[
        "ca",
        "-batch",
        "-config",
        p.f("ca.cnf"),
        "-cert",
        p.f("int.pem"),
        "-keyfile",
        p.f("int.key"),
        "-in",
        csr,
        "-startdate",
        start,
        "-enddate",
        end,
        "-out",
        out,
    ]);
}

#[test]
fn certificate_warnings_match_what_openssl_made() {
    let p = Pki::new("ec");
    let env = Env::initialised();
    env.run(&["cert", "import", p.f("int.pem"), p.f("root.pem")]).ok();
    let warnings_of = |file: &str| {
        let v = env.run(&["--json", "cert", "import", file]).json();
        v["certificates"][0]["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    sign_with_dates(&p, p.f("leaf.csr"), "20200101000000Z", "20210101000000Z", p.f("expired.pem"));
    let w = warnings_of(p.f("expired.pem"));
    assert!(w.iter().any(|w| w == "expired on 2021-01-01T00:00:00Z"), "{w:?}");
    assert!(w.iter().any(|w| w == "no private key"), "{w:?}");
    // The CA signed the request without SANs: that is flagged too.
    assert!(w.iter().any(|w| w.starts_with("no subjectAltName")), "{w:?}");

    sign_with_dates(&p, p.f("leaf.csr"), "20400101000000Z", "20410101000000Z", p.f("future.pem"));
    let w = warnings_of(p.f("future.pem"));
    assert!(w.iter().any(|w| w == "not valid before 2040-01-01T00:00:00Z"), "{w:?}");

    p.sign_with_intermediate(p.f("leaf.csr"), "10", &["-extfile", p.f("leaf.ext"), "-out", p.f("soon.pem")]);
    let w = warnings_of(p.f("soon.pem"));
    assert!(w.iter().any(|w| w == "expires in 10 days"), "{w:?}");
    assert!(!w.iter().any(|w| w.contains("chain")), "the chain is complete: {w:?}");

    // A weak self-signed certificate: RSA-1024 with SHA-1.
    let (ok, _, err) = openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:1024",
            "-sha1",
            "-nodes",
            "-keyout",
            p.f("weak.key"),
            "-out",
            p.f("weak.pem"),
            "-days",
            "100",
            "-subj",
            "/CN=weak.example.test",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ],
        None,
    );
    assert!(ok, "{err}");
    let w = warnings_of(p.f("weak.pem"));
    assert!(w.iter().any(|w| w == "weak key: RSA 1024 bits (2048 at least)"), "{w:?}");
    assert!(w.iter().any(|w| w == "weak signature: sha1WithRSAEncryption"), "{w:?}");
}

#[test]
fn ber_pkcs7_from_a_streaming_signer_imports() {
    let p = Pki::new("ec");
    fs::write(p.f("data.txt"), "payload\n").unwrap();
    // `openssl cms -stream` writes indefinite-length BER, as Windows tools do.
    p.ossl(&[
        "cms",
        "-sign",
        "-in",
        p.f("data.txt"),
        "-signer",
        p.f("leaf.pem"),
        "-inkey",
        p.f("leaf.key"),
        "-certfile",
        p.f("chain.pem"),
        "-outform",
        "DER",
        "-stream",
        "-nodetach",
        "-out",
        p.f("ber.p7"),
    ]);
    let bytes = fs::read(p.f("ber.p7")).unwrap();
    assert_eq!(&bytes[..2], &[0x30, 0x80], "openssl wrote definite-length DER, not BER");
    let c = import_one(&p, &[p.f("ber.p7"), p.f("leaf.key")], false);
    assert_eq!(c["fingerprint_sha256"], p.fingerprint(p.f("leaf.pem"), "PEM").as_str());
    assert_eq!(c["chain"].as_array().unwrap().len(), 2);
}
