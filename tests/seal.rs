//! The sealed-value format (src/seal.rs) against an independent AES-256-GCM: Python's
//! `cryptography` opens what Portcullis seals, and Portcullis opens what Python seals from
//! the documented layout, so a value in etcd can be recovered without Portcullis.
#![allow(clippy::disallowed_methods)]

use std::process::Command;

use portcullis::seal::{ClusterKey, KEY_LEN, Keyring};

const PY: &str = r#"
import hashlib, os, sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
key = bytes.fromhex(sys.argv[2]); path = sys.argv[3].encode(); aad = b"portcullis-seal-v1\0" + path
if sys.argv[1] == "open":
    v = open(sys.argv[4], "rb").read()
    assert v[:4] == b"PCS1"
    assert v[4:12] == hashlib.sha256(b"portcullis-key-id\0" + key).digest()[:8], "key id"
    sys.stdout.buffer.write(AESGCM(key).decrypt(v[12:24], v[24:], aad))
else:
    nonce = os.urandom(12)
    kid = hashlib.sha256(b"portcullis-key-id\0" + key).digest()[:8]
    open(sys.argv[4], "wb").write(b"PCS1" + kid + nonce + AESGCM(key).encrypt(nonce, sys.argv[5].encode(), aad))
"#;

fn python(args: &[&str]) -> Vec<u8> {
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(PY)
        .args(args)
        .output()
        .expect("python3 with python3-cryptography (make test installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[test]
fn python_opens_what_portcullis_seals_and_the_reverse() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sealed");
    let raw: [u8; KEY_LEN] = std::array::from_fn(|i| i as u8 * 7 + 3);
    let hex_key: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let ring = Keyring::new(ClusterKey::from_bytes(&raw), Vec::new());
    let path = "/portcullis/prod/certs/site-1/key.pem";
    let secret = b"-----BEGIN PRIVATE KEY-----\nexample\n-----END PRIVATE KEY-----\n";

    std::fs::write(&file, ring.current().seal(path, secret)).unwrap();
    assert_eq!(python(&["open", &hex_key, path, file.to_str().unwrap()]), secret);

    python(&["seal", &hex_key, path, file.to_str().unwrap(), "from python"]);
    let sealed = std::fs::read(&file).unwrap();
    assert_eq!(ring.open(path, &sealed).unwrap(), b"from python");
    assert!(ring.open("/portcullis/prod/certs/site-2/key.pem", &sealed).is_err(), "bound to its path");
}
