//! Knot DNS for the DNS-01 tests: authoritative for example.test on loopback, taking
//! TSIG-signed dynamic updates, written to by a `dns_command` that runs nsupdate.
#![allow(dead_code, clippy::disallowed_methods)]

use std::fs;
use std::process::{Command, Stdio};

use super::{Env, Proc, free_port, wait_port};

/// Knot DNS, authoritative for example.test on a free loopback port, accepting TSIG
/// (hmac-sha256) dynamic updates; returns the process, its port and the key secret.
pub fn knot(env: &Env) -> (Proc, u16, String) {
    let dir = env.path("knot");
    fs::create_dir_all(dir.join("db")).unwrap();
    let port = free_port();
    let secret = "q5LlxZGMaqBGC4y4wT0nnK1EJwDuoNzKQCbW5XcDjwM=".to_owned();
    fs::write(
        dir.join("knot.conf"),
        format!(
            "server:\n    rundir: \"{d}\"\n    listen: 127.0.0.1@{port}\n    user: root:root\n\
             database:\n    storage: \"{d}/db\"\n\
             key:\n  - id: portcullis-test\n    algorithm: hmac-sha256\n    secret: {secret}\n\
             acl:\n  - id: update\n    key: portcullis-test\n    action: update\n\
             zone:\n  - domain: example.test\n    storage: \"{d}\"\n    file: \"example.test.zone\"\n    acl: update\n    zonefile-sync: -1\n\
             log:\n  - target: stderr\n    any: info\n",
            d = dir.display()
        ),
    )
    .unwrap();
    fs::write(
        dir.join("example.test.zone"),
        "$ORIGIN example.test.\n$TTL 60\n@ SOA ns.example.test. admin.example.test. 1 60 60 3600 60\n\
         @ NS ns.example.test.\nns A 127.0.0.1\n@ A 127.0.0.1\n* A 127.0.0.1\n",
    )
    .unwrap();
    let proc = Proc(
        Command::new("knotd")
            .arg("-c")
            .arg(dir.join("knot.conf"))
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("knot.log")).unwrap())
            .spawn()
            .expect("knotd (make test installs knot)"),
    );
    wait_port(port);
    (proc, port, secret)
}

/// A dns_command that writes the record through nsupdate with TSIG key `secret`.
pub fn nsupdate_hook(env: &Env, name: &str, port: u16, secret: &str) -> std::path::PathBuf {
    env.write(
        name,
        &format!(
            "set -e\ncase \"$PORTCULLIS_DNS_ACTION\" in\n  present) op=\"add $PORTCULLIS_DNS_NAME 60\" ;;\n  cleanup) op=\"delete $PORTCULLIS_DNS_NAME\" ;;\nesac\n\
             printf 'server 127.0.0.1 {port}\\nzone example.test\\nupdate %s TXT \"%s\"\\nsend\\n' \"$op\" \"$PORTCULLIS_DNS_VALUE\" \\\n  | nsupdate -y hmac-sha256:portcullis-test:{secret}\n"
        ),
    )
}

pub fn txt(port: u16, name: &str) -> String {
    let out = Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string(), "+short", name, "TXT"])
        .output()
        .expect("dig (make test installs bind9-dnsutils)");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
