//! Debian's `pebble` with `pebble-challtestsrv` as its DNS (every name is 127.0.0.1),
//! its API certificate trusted through `[acme] ca_bundle`: the ACME server of the tests.
#![allow(dead_code, clippy::disallowed_methods)]

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{Env, Proc, free_port, openssl_ok, wait_port};

/// A pebble + challtestsrv pair on free loopback ports.
pub struct Pebble {
    pub dir: PathBuf,
    pub acme_port: u16,
    pub http_port: u16,
    procs: Vec<Proc>,
}

impl Pebble {
    /// Starts pebble issuing certificates valid for `validity_secs`; validation goes to
    /// `http_port`.
    pub fn start(env: &Env, validity_secs: u64, http_port: u16) -> Self {
        Self::start_with_tls(env, validity_secs, http_port, free_port())
    }

    /// [`Pebble::start`] validating TLS-ALPN-01 on `tls_port`.
    pub fn start_with_tls(env: &Env, validity_secs: u64, http_port: u16, tls_port: u16) -> Self {
        Self::start_custom(env, validity_secs, http_port, tls_port, "\"externalAccountBindingRequired\": false")
    }

    /// [`Pebble::start_with_tls`] with more of pebble's settings (`"key": value, ...`).
    pub fn start_custom(env: &Env, validity_secs: u64, http_port: u16, tls_port: u16, settings: &str) -> Self {
        Self::start_full(env, validity_secs, http_port, tls_port, settings, None)
    }

    /// Pebble resolving through the DNS server on 127.0.0.1:`dns` (DNS-01 tests).
    pub fn start_with_dns(env: &Env, validity_secs: u64, dns: u16) -> Self {
        Self::start_full(
            env,
            validity_secs,
            free_port(),
            free_port(),
            "\"externalAccountBindingRequired\": false",
            Some(dns),
        )
    }

    fn start_full(
        env: &Env,
        validity_secs: u64,
        http_port: u16,
        tls_port: u16,
        settings: &str,
        dns_server: Option<u16>,
    ) -> Self {
        let dir = env.path("pebble");
        fs::create_dir_all(&dir).unwrap();
        let p = |f: &str| dir.join(f).display().to_string();
        super::openssl_self_signed(
            &p("ca.key"),
            &p("ca.pem"),
            "/CN=pebble API test CA",
            "2",
            &["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        );
        openssl_ok(
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &p("wfe.key"),
                "-out",
                &p("wfe.csr"),
                "-subj",
                "/CN=localhost",
            ],
            None,
        );
        fs::write(
            dir.join("wfe.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        super::openssl_ca_sign(
            &p("wfe.csr"),
            &p("ca.pem"),
            &p("ca.key"),
            "2",
            &p("wfe.pem"),
            &["-extfile", &p("wfe.ext")],
        );
        let (acme_port, mgmt_port, dns_port, chall_mgmt) = (free_port(), free_port(), free_port(), free_port());
        fs::write(
            dir.join("pebble.json"),
            format!(
                r#"{{"pebble": {{"listenAddress": "127.0.0.1:{acme_port}", "managementListenAddress": "127.0.0.1:{mgmt_port}",
                "certificate": "{}", "privateKey": "{}", "httpPort": {http_port}, "tlsPort": {tls_port},
                "ocspResponderURL": "", {settings},
                "certificateValidityPeriod": {validity_secs}}}}}"#,
                p("wfe.pem"),
                p("wfe.key"),
            ),
        )
        .unwrap();
        let log = |name: &str| fs::File::create(dir.join(name)).unwrap();
        let mut procs = Vec::new();
        let dns_port = match dns_server {
            Some(p) => p,
            None => {
                procs.push(Proc(
                    Command::new("pebble-challtestsrv")
                        .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", "", "-dns01"])
                        .arg(format!("127.0.0.1:{dns_port}"))
                        .args(["-http01", "", "-https01", "", "-tlsalpn01", "", "-management"])
                        .arg(format!("127.0.0.1:{chall_mgmt}"))
                        .stdout(log("challtestsrv.log"))
                        .stderr(Stdio::null())
                        .spawn()
                        .expect("pebble-challtestsrv (make test installs pebble)"),
                ));
                dns_port
            }
        };
        let pebble = Proc(
            Command::new("pebble")
                .args(["-strict", "-config"])
                .arg(dir.join("pebble.json"))
                .arg("-dnsserver")
                .arg(format!("127.0.0.1:{dns_port}"))
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .env("PEBBLE_AUTHZREUSE", "0")
                .stdout(log("pebble.log"))
                .stderr(Stdio::null())
                .spawn()
                .expect("pebble (make test installs it)"),
        );
        wait_port(acme_port);
        procs.push(pebble);
        Self { dir, acme_port, http_port, procs }
    }

    pub fn acme_section(&self, extra: &str) -> String {
        self.acme_section_on(&format!("\"127.0.0.1:{}\"", self.http_port), extra)
    }

    /// `[acme]` for this pebble with `http_listen` set to the TOML value given (`[]`: none).
    pub fn acme_section_on(&self, http_listen: &str, extra: &str) -> String {
        format!(
            "[acme]\ndirectory = \"https://127.0.0.1:{}/dir\"\ncontact = [\"mailto:ops@example.test\"]\nagree_tos = true\n\
             ca_bundle = \"{}\"\nhttp_listen = {http_listen}\n{extra}\n",
            self.acme_port,
            self.dir.join("ca.pem").display(),
        )
    }

    /// Orders pebble has taken so far.
    pub fn orders(&self) -> usize {
        fs::read_to_string(self.dir.join("pebble.log")).unwrap_or_default().matches("Added order").count()
    }

    pub fn stop(&mut self) {
        self.procs.clear();
    }
}

/// The serial (lowercase hex) and issuer of the certificate served for `sni`.
pub fn served(port: u16, sni: &str) -> Option<(String, String)> {
    let connect = format!("127.0.0.1:{port}");
    let (_, out, _) = super::openssl(&["s_client", "-connect", &connect, "-servername", sni, "-showcerts"], Some(""));
    let start = out.find("-----BEGIN CERTIFICATE-----")?;
    let end = out.find("-----END CERTIFICATE-----")? + "-----END CERTIFICATE-----".len();
    let text = openssl_ok(&["x509", "-noout", "-serial", "-issuer"], Some(&out[start..end]));
    let serial = text.lines().find_map(|l| l.strip_prefix("serial="))?.trim_start_matches('0').to_ascii_lowercase();
    let issuer = text.lines().find_map(|l| l.strip_prefix("issuer="))?.trim().to_owned();
    Some((serial, issuer))
}

pub fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {secs}s waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
