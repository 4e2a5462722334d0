//! Certificate signing requests: verified by `openssl req` and signed by a test CA made
//! with openssl, whose answer must match the key kept in the store.

mod common;

use common::{Env, mode, openssl, openssl_ok};

fn make_ca(env: &Env) -> (String, String) {
    let ca = env.path("ca.pem").display().to_string();
    let ca_key = env.path("ca.key").display().to_string();
    common::openssl_self_signed(&ca_key, &ca, "/CN=Portcullis test CA", "30", &[]);
    (ca, ca_key)
}

#[test]
fn every_key_type_makes_a_csr_a_ca_can_sign() {
    let env = Env::initialised();
    let (ca, ca_key) = make_ca(&env);
    for key in ["ecdsa-p256", "ecdsa-p384", "ed25519", "rsa-2048", "rsa-3072", "rsa-4096"] {
        let run = env.run(&[
            "cert",
            "request",
            "--name",
            &format!("Request {key}"),
            "--key",
            key,
            "--country",
            "US",
            "--state",
            "New York",
            "--locality",
            "Albany",
            "--org",
            "Example Inc",
            "--org-unit",
            "Ops",
            "--common-name",
            "support.example.test",
            "--san",
            "remote.example.test",
        ]);
        let csr = run.ok().to_owned();
        assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"), "{key}: {csr}");
        assert!(run.stderr.contains("private key stays in"), "{}", run.stderr);
        let csr_path = env.write(&format!("{key}.csr"), &csr).display().to_string();

        let (ok, text, err) = openssl(&["req", "-in", &csr_path, "-verify", "-noout", "-text"], None);
        assert!(ok, "{key}: {err}");
        assert!(err.contains("verify OK") || text.contains("verify OK"), "{key}: {err}");
        for want in [
            "Subject: C = US, ST = New York, L = Albany, O = Example Inc, OU = Ops, CN = support.example.test",
            "DNS:support.example.test, DNS:remote.example.test",
        ] {
            assert!(text.contains(want), "{key}: CSR lacks {want:?}:\n{text}");
        }
        // RFC 5280: countryName is a PrintableString, which strict CAs check.
        let asn1 = openssl_ok(&["asn1parse", "-in", &csr_path], None);
        let after_c = asn1.split(":countryName").nth(1).unwrap_or_default();
        assert!(
            after_c.lines().nth(1).is_some_and(|l| l.contains("PRINTABLESTRING") && l.ends_with(":US")),
            "{key}:\n{asn1}"
        );

        // The CA signs it; the answer verifies and belongs to the stored key.
        let signed = env.path(&format!("{key}.crt")).display().to_string();
        common::openssl_ca_sign(&csr_path, &ca, &ca_key, "30", &signed, &["-copy_extensions", "copyall"]);
        let (ok, out, err) = openssl(&["verify", "-CAfile", &ca, &signed], None);
        assert!(ok && out.contains(": OK"), "{key}: {out}{err}");
        let text = openssl_ok(&["x509", "-in", &signed, "-noout", "-text"], None);
        assert!(text.contains("DNS:support.example.test, DNS:remote.example.test"), "{key}: {text}");

        let requests = env.run(&["--json", "cert", "list", "--requests"]).json();
        let entry = requests.as_array().unwrap().iter().find(|r| r["friendly_name"] == format!("Request {key}"));
        let id = entry.unwrap_or_else(|| panic!("{key}: not listed: {requests}"))["id"].as_str().unwrap().to_owned();
        let key_path = env.store().join("requests").join(&id).join("key.pem");
        assert_eq!(mode(&key_path), 0o600);
        let from_key = openssl_ok(&["pkey", "-in", key_path.to_str().unwrap(), "-pubout"], None);
        let from_cert = openssl_ok(&["x509", "-in", &signed, "-noout", "-pubkey"], None);
        assert_eq!(from_key, from_cert, "{key}: the signed certificate is not for the stored key");

        // `cert show` of a request prints the CSR.
        assert_eq!(env.run(&["cert", "show", &id, "--pem"]).ok(), csr);
    }
    // Requests are not certificates: the certificate table is still just the factory default.
    assert_eq!(env.list().len(), 1);
}

#[test]
fn request_table_lists_pending_requests() {
    let env = Env::initialised();
    env.run(&["cert", "request", "--name", "Support 2027", "--san", "support.example.test"]).ok();
    let table = env.run(&["cert", "list", "--requests"]).ok().to_owned();
    let mut lines = table.lines();
    assert!(lines.next().unwrap().starts_with("ID"), "{table}");
    let row = lines.next().unwrap();
    assert!(
        row.starts_with("support-2027") && row.contains("support.example.test") && row.contains("ecdsa-p256"),
        "{row}"
    );
    // Deleting a request removes its key too.
    env.run(&["cert", "delete", "support-2027"]).ok();
    assert!(!env.store().join("requests/support-2027").exists());
}

/// The guides' renewal: "the CA may require the original request". The CSR stays with
/// the certificate it answered, and a new CSR can reuse an entry's key and subject.
#[test]
fn the_original_csr_is_kept_and_a_same_key_renewal_csr_can_be_made() {
    let env = Env::initialised();
    let (ca, ca_key) = make_ca(&env);
    let csr = env
        .run(&[
            "cert",
            "request",
            "--name",
            "Support 2027",
            "--key",
            "rsa-2048",
            "--country",
            "DE",
            "--org",
            "Example GmbH",
            "--common-name",
            "support.example.test",
            "--san",
            "remote.example.test",
        ])
        .ok()
        .to_owned();
    let csr_path = env.write("support.csr", &csr).display().to_string();
    let signed = env.path("support.crt").display().to_string();
    common::openssl_ca_sign(&csr_path, &ca, &ca_key, "30", &signed, &["-copy_extensions", "copyall"]);
    env.run(&["cert", "import", &signed]).ok();
    // The kept CSR is byte for byte the one given to the CA.
    assert_eq!(env.run(&["cert", "show", "support-2027", "--csr"]).ok(), csr);
    assert_eq!(mode(&env.store().join("certs/support-2027/request.pem")), 0o644);
    // A certificate that answered no request here has none.
    let run = env.run(&["cert", "show", "portcullis-default", "--csr"]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("portcullis-default: has no kept CSR"), "{}", run.stderr);

    // Same-key renewal: a new CSR with the certificate's key, subject and names.
    let renewal = env.run(&["cert", "request", "--name", "Support 2028", "--from", "support-2027"]);
    let new_csr = renewal.ok().to_owned();
    assert!(renewal.stderr.contains("uses the private key of support-2027"), "{}", renewal.stderr);
    let new_path = env.write("support-2028.csr", &new_csr).display().to_string();
    let (ok, text, err) = openssl(&["req", "-in", &new_path, "-verify", "-noout", "-text"], None);
    assert!(ok, "{err}");
    assert!(text.contains("Subject: C = DE, O = Example GmbH, CN = support.example.test"), "{text}");
    assert!(text.contains("DNS:support.example.test, DNS:remote.example.test"), "{text}");
    let csr_key = openssl_ok(&["req", "-in", &new_path, "-noout", "-pubkey"], None);
    let cert_key = openssl_ok(&["x509", "-in", &signed, "-noout", "-pubkey"], None);
    assert_eq!(csr_key, cert_key, "the renewal CSR does not use the certificate's key");
    // The CA's answer links to the new request (not to the old certificate).
    let signed2 = env.path("support-2028.crt").display().to_string();
    common::openssl_ca_sign(&new_path, &ca, &ca_key, "60", &signed2, &["-copy_extensions", "copyall"]);
    let v = env.run(&["--json", "cert", "import", &signed2]).json();
    assert_eq!(v["certificates"][0]["id"], "support-2028");
    assert_eq!(v["certificates"][0]["source"], "csr");
    assert_eq!(env.run(&["cert", "show", "support-2028", "--csr"]).ok(), new_csr);
    // --key makes no sense with --from.
    let run = env.run(&["cert", "request", "--name", "X", "--from", "support-2027", "--key", "ed25519"]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
}
