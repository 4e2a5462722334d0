//! An independent scanner, Debian's testssl.sh, against a listener: no vulnerable
//! protocol, cipher or known attack. Certificate findings (the test certificate is
//! self-signed, has no revocation info) and HTTP header advice are not about the TLS
//! stack and are left out. The summary of a run is kept in docs/testssl.md.

mod common;

use std::process::Command;

use common::{Env, free_port};

#[test]
fn testssl_finds_nothing_vulnerable() {
    let env = Env::initialised();
    let (port, admin) = (free_port(), free_port());
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\n[[listener]]\nname = \"public\"\nbind = [\"127.0.0.1:{port}\"]\n[[route]]\nhosts = [\"*\"]\nhandler = {{ type = \"static\", body = \"hello\" }}\n"
    );
    let _daemon = env.daemon(&config, &[port, admin]);
    let json = env.path("testssl.json");
    let out = Command::new("testssl")
        .args(["--quiet", "--color", "0", "--warnings", "off", "--jsonfile"])
        .arg(&json)
        .arg(format!("127.0.0.1:{port}"))
        .output()
        .expect("testssl (Debian package testssl.sh; make test installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let findings: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&json).expect("testssl wrote no JSON")).unwrap();
    assert!(findings.len() > 50, "testssl found too little to be a real scan:\n{text}");
    let not_tls_stack =
        |id: &str| id.starts_with("cert") || ["DNS_CAArecord", "HSTS", "security_headers"].contains(&id);
    let bad: Vec<String> = findings
        .iter()
        .filter(|f| matches!(f["severity"].as_str(), Some("MEDIUM" | "HIGH" | "CRITICAL")))
        .filter(|f| !not_tls_stack(f["id"].as_str().unwrap_or_default()))
        .map(|f| format!("{} {}: {}", f["id"], f["severity"], f["finding"]))
        .collect();
    assert!(bad.is_empty(), "testssl findings:\n{}\n\n{text}", bad.join("\n"));
    // The protocols it saw.
    for (id, want) in [
        ("SSLv2", "not offered"),
        ("SSLv3", "not offered"),
        ("TLS1", "not offered"),
        ("TLS1_1", "not offered"),
        ("TLS1_2", "offered"),
        ("TLS1_3", "offered"),
    ] {
        let f = findings.iter().find(|f| f["id"] == id).unwrap_or_else(|| panic!("no {id} finding"));
        assert!(f["finding"].as_str().unwrap().starts_with(want), "{id}: {f}");
    }
}
