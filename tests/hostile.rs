//! Hostile input against the real binary (issue 16): nothing an attacker or a careless
//! file can hand Portcullis takes the daemon down, pins a core or holds a slot forever.
//! The outages run under `prlimit --as`, so a regression fails here instead of
//! exhausting the machine.
#![allow(clippy::disallowed_methods)]

mod common;

use std::fs;
use std::process::Command;

use common::{Env, openssl_ok};

/// Runs the real binary under an address-space limit of 1 GiB.
fn limited(env: &Env, args: &[&str]) -> common::Run {
    let mut cmd = Command::new("prlimit");
    cmd.arg("--as=1073741824").arg("--").arg(common::BIN).arg("--store").arg(env.store()).args(args);
    cmd.current_dir(env.dir.path()).env_remove("PORTCULLIS_FAILPOINT");
    let out = cmd.output().expect("prlimit (util-linux)");
    common::Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A P-256 key and its self-signed certificate; the key encrypted as PKCS#8 DER by
/// `openssl pkcs8 @scheme`, with the DER integer `from` replaced by `to` (same length):
/// a cost OpenSSL would take minutes to write is one patched integer.
fn encrypted_key(env: &Env, tag: &str, scheme: &[&str], from: &[u8], to: &[u8]) -> (String, String) {
    let (key, cert, der) =
        (env.path(&format!("{tag}.key")), env.path(&format!("{tag}.pem")), env.path(&format!("{tag}.p8")));
    let (key, cert, der) = (key.to_str().unwrap(), cert.to_str().unwrap(), der.to_str().unwrap());
    common::openssl_self_signed(key, cert, &format!("/CN={tag}.example.com"), "30", &[]);
    let mut args = vec!["pkcs8", "-topk8", "-in", key, "-out", der, "-outform", "DER", "-passout", "pass:secret"];
    args.extend(scheme);
    openssl_ok(&args, None);
    let mut bytes = fs::read(der).unwrap();
    if from.is_empty() {
        return (cert.to_owned(), der.to_owned());
    }
    let at = bytes.windows(from.len()).position(|w| w == from).expect("the integer OpenSSL wrote");
    bytes[at..at + to.len()].copy_from_slice(to);
    fs::write(der, bytes).unwrap();
    (cert.to_owned(), der.to_owned())
}

#[test]
fn key_derivation_costs_are_capped_before_anything_is_derived() {
    let env = Env::new();
    fs::write(env.path("pass"), "secret\n").unwrap();
    let before = env.tree();
    // scrypt N = 2^15 written, patched to N = 2^22 (r = 1): 512 MiB of memory.
    let (cert, der) = encrypted_key(
        &env,
        "scrypt",
        &["-scrypt", "-scrypt_N", "32768", "-scrypt_r", "1", "-scrypt_p", "1"],
        &[0x02, 0x03, 0x00, 0x80, 0x00],
        &[0x02, 0x03, 0x40, 0x00, 0x00],
    );
    let r = limited(&env, &["cert", "import", &cert, &der, "--password-file", "pass"]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert_eq!(
        r.stderr.trim(),
        format!(
            "error: {der}: damaged encrypted PKCS#8 key: scrypt memory 128·N·r = 512 MiB (N = 4194304, r = 1) exceeds the limit of 64 MiB"
        ),
        "{r:?}"
    );
    // PBKDF2 with 65,536 iterations written, patched to 8,388,607.
    let (cert, der) = encrypted_key(
        &env,
        "pbkdf2",
        &["-v2", "aes-256-cbc", "-iter", "65536"],
        &[0x02, 0x03, 0x01, 0x00, 0x00],
        &[0x02, 0x03, 0x7f, 0xff, 0xff],
    );
    let started = std::time::Instant::now();
    let r = limited(&env, &["cert", "import", &cert, &der, "--password-file", "pass"]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("key-derivation iterations 8388607 exceed the limit of 1000000"), "{r:?}");
    assert!(r.stderr.trim().lines().count() == 1, "one line: {r:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "refused before deriving");
    assert_eq!(env.tree(), before, "the store is unchanged");

    // Within the limits, the same kind of file imports.
    let (cert, der) =
        encrypted_key(&env, "fine", &["-scrypt", "-scrypt_N", "16384", "-scrypt_r", "8", "-scrypt_p", "1"], &[], &[]);
    limited(&env, &["cert", "import", &cert, &der, "--password-file", "pass"]).ok();
}

#[test]
fn devices_fifos_and_links_are_refused_as_input_with_a_clear_error() {
    let env = Env::new();
    let before = env.tree();
    let r = limited(&env, &["cert", "import", "/dev/zero"]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert_eq!(r.stderr.trim(), "error: /dev/zero: not a regular file (a device)");

    let fifo = env.path("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    // Nobody writes to the FIFO: reading it the ordinary way would block forever.
    let r = limited(&env, &["cert", "import", fifo.to_str().unwrap()]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.trim().ends_with("fifo: not a regular file (a FIFO)"), "{r:?}");

    let key = env.path("k.pem");
    let cert = env.path("c.pem");
    common::openssl_self_signed(key.to_str().unwrap(), cert.to_str().unwrap(), "/CN=dev.example.com", "30", &[]);
    let r = limited(&env, &["cert", "import", cert.to_str().unwrap(), "--password-file", "/dev/zero"]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("/dev/zero: not a regular file (a device)"), "{r:?}");

    let big = env.path("big.pem");
    fs::write(&big, vec![b'A'; (1 << 20) + 1]).unwrap();
    let r = limited(&env, &["cert", "import", big.to_str().unwrap()]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("big.pem: 1048577 bytes is larger than the limit of 1 MiB"), "{r:?}");
    assert_eq!(env.tree(), before, "the store is unchanged");

    // A store file replaced by a link or a FIFO is reported as damaged; the command
    // neither blocks nor follows it.
    env.run(&["cert", "create-self-signed", "--name", "Linked", "--san", "linked.example.com"]).ok();
    let id =
        env.list().into_iter().find(|c| c["friendly_name"] == "Linked").unwrap()["id"].as_str().unwrap().to_owned();
    let key_path = env.store().join("certs").join(&id).join("key.pem");
    fs::remove_file(&key_path).unwrap();
    assert!(Command::new("mkfifo").arg(&key_path).status().unwrap().success());
    let r = limited(&env, &["--json", "cert", "show", &id]);
    let shown = r.stdout.clone();
    assert!(shown.contains("not a regular file (a FIFO)"), "{r:?}");
    fs::remove_file(&key_path).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", &key_path).unwrap();
    let r = limited(&env, &["--json", "cert", "show", &id]);
    assert!(r.stdout.contains("is a symbolic link, which is refused here"), "{r:?}");
}
