//! Property: exporting a certificate with its key and importing it elsewhere gives the
//! same certificate and key, for every key type, format and password.

mod common;

use common::{Env, openssl_ok};
use proptest::prelude::*;

const KEYS: [&str; 6] = ["ecdsa-p256", "ecdsa-p384", "ed25519", "rsa-2048", "rsa-3072", "rsa-4096"];

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn export_then_import_round_trips(key in 0..KEYS.len(), p12 in any::<bool>(), password in "[ -~]{1,24}") {
        let key = KEYS[key];
        let a = Env::initialised();
        let b = Env::initialised();
        let made = a.run(&["--json", "cert", "create-self-signed", "--name", "Round trip", "--key", key, "--san", "rt.example.test"]).json();
        let pass = a.write("pass", &format!("{password}\n"));
        let pass = pass.to_str().unwrap();
        let file = a.path(if p12 { "rt.p12" } else { "rt.pem" });
        let file = file.to_str().unwrap();
        let format = if p12 { "p12" } else { "pem" };
        a.run(&["cert", "export", "round-trip", "--format", format, "--include-key", "--password-file", pass, "--out", file]).ok();
        let got = b.run(&["--json", "cert", "import", file, "--password-file", pass]).json();
        let got = &got["certificates"][0];
        prop_assert_eq!(&got["fingerprint_sha256"], &made["fingerprint_sha256"]);
        prop_assert_eq!(&got["has_private_key"], &serde_json::Value::Bool(true));
        let pub_of = |env: &Env, id: &str| {
            let k = env.store().join("certs").join(id).join("key.pem");
            openssl_ok(&["pkey", "-in", k.to_str().unwrap(), "-pubout"], None)
        };
        prop_assert_eq!(pub_of(&a, "round-trip"), pub_of(&b, got["id"].as_str().unwrap()));
    }
}
