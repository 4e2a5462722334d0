//! The systemd unit passes `systemd-analyze verify`, and the daemon speaks the notify
//! protocol its `Type=notify` relies on: READY=1 when listening, RELOADING=1 then READY=1
//! around a reload, STOPPING=1 on SIGTERM.
#![allow(clippy::disallowed_methods)]

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use common::{Env, free_port};

#[test]
fn unit_file_verifies() {
    let env = Env::new();
    // verify checks that ExecStart exists: point it at the binary under test.
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/portcullis.service")).unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    assert!(unit.contains("CapabilityBoundingSet=CAP_NET_BIND_SERVICE\n"));
    let path = env.path("portcullis.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/portcullis", common::BIN)).unwrap();
    let out =
        Command::new("systemd-analyze").arg("verify").arg(&path).output().expect("systemd-analyze (package systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    // Warnings about the unit itself (unknown keys, bad values) are failures too.
    let own: Vec<&str> = stderr.lines().filter(|l| l.contains("portcullis.service")).collect();
    assert!(own.is_empty(), "{own:?}");
}

fn next(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("a notification within the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn notify_protocol_ready_reloading_stopping() {
    let env = Env::initialised();
    let socket_path = env.path("notify.sock");
    let sock = UnixDatagram::bind(&socket_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let (port, admin) = (free_port(), free_port());
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\n[[listener]]\nname = \"public\"\nbind = [\"127.0.0.1:{port}\"]\n"
    );
    let mut daemon = env.daemon_env(&config, &[], &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())]);
    let ready = next(&sock);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    // READY=1 comes after the listeners are bound.
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("listening when READY=1 is sent");

    daemon.signal("HUP");
    let reloading = next(&sock);
    assert!(reloading.lines().any(|l| l == "RELOADING=1"), "{reloading:?}");
    assert!(reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")), "{reloading:?}");
    let ready = next(&sock);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");

    daemon.signal("TERM");
    let stopping = next(&sock);
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    assert_eq!(daemon.wait_exit(20), Some(0));
}
