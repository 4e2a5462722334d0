//! Test helpers: a throwaway store, the real binary, the real `openssl` CLI, and a hash
//! of the store tree to prove that a refused command changed nothing.
#![allow(dead_code, clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use sha2::{Digest, Sha256};

pub mod knot;
pub mod pebble;

pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// A temp directory with a store in `store/`.
pub struct Env {
    pub dir: tempfile::TempDir,
}

/// What a command printed and how it ended.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Self {
        Self {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "command failed:\nstdout: {}\nstderr: {}", self.stdout, self.stderr);
        &self.stdout
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.ok()).unwrap_or_else(|e| panic!("bad JSON ({e}): {}", self.stdout))
    }
}

impl Env {
    /// A temp directory with an initialised store (`portcullis init`).
    pub fn new() -> Self {
        let env = Self::empty();
        env.run(&["init"]).ok();
        env
    }

    /// A temp directory without a store.
    pub fn empty() -> Self {
        Self { dir: tempfile::tempdir().unwrap() }
    }

    /// The same as [`Env::new`]: a store that already exists.
    pub fn initialised() -> Self {
        Self::new()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn store(&self) -> PathBuf {
        self.path("store")
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("--store").arg(self.store()).args(args).current_dir(self.dir.path());
        cmd.env_remove("PORTCULLIS_FAILPOINT");
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.cmd(args).output().unwrap())
    }

    pub fn run_env(&self, args: &[&str], key: &str, value: &str) -> Run {
        Run::from(self.cmd(args).env(key, value).output().unwrap())
    }

    /// Writes `text` to a file in the temp dir and returns its path.
    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        fs::write(&p, text).unwrap();
        p
    }

    /// Every file and directory under the store with its mode and content hash.
    pub fn tree(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        walk(&self.store(), &self.store(), &mut out);
        out
    }

    /// `cert list --json` as an array.
    pub fn list(&self) -> Vec<serde_json::Value> {
        self.run(&["--json", "cert", "list"]).json().as_array().unwrap().clone()
    }
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let rel = path.strip_prefix(root).unwrap().display().to_string();
        let meta = fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o7777;
        if meta.is_dir() {
            out.insert(rel, format!("dir {mode:o}"));
            walk(root, &path, out);
        } else {
            let hash = hex::encode(Sha256::digest(fs::read(&path).unwrap()));
            out.insert(rel, format!("file {mode:o} {hash}"));
        }
    }
}

/// Runs `openssl` with `args` (and optional stdin); returns (success, stdout, stderr).
pub fn openssl(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl CLI (make test installs it)");
    child.stdin.take().unwrap().write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Like [`openssl`] but panics unless it succeeds; returns stdout.
#[track_caller]
pub fn openssl_ok(args: &[&str], stdin: Option<&str>) -> String {
    let (ok, out, err) = openssl(args, stdin);
    assert!(ok, "openssl {args:?} failed: {err}");
    out
}

/// Makes a self-signed P-256 certificate and key with openssl (`extra`: more flags,
/// such as `-addext`).
pub fn openssl_self_signed(key: &str, cert: &str, subject: &str, days: &str, extra: &[&str]) {
    let mut args = vec!["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    args.extend(["-keyout", key, "-out", cert, "-days", days, "-subj", subject]);
    args.extend_from_slice(extra);
    openssl_ok(&args, None);
}

/// A self-signed certificate and key with explicit validity dates (`openssl ca
/// -selfsign`, the one openssl 3.0 command that takes them), imported into the store.
pub fn import_dated(env: &Env, tag: &str, cn: &str, san: &str, start: &str, end: &str) {
    let f = |n: &str| env.path(&format!("{tag}.{n}")).display().to_string();
    let san = format!("subjectAltName=DNS:{san}");
    openssl_p256_csr(&f("key"), &f("csr"), &format!("/CN={cn}"), &["-addext", &san]);
    fs::write(f("index"), "").unwrap();
    fs::write(f("serial"), "1000\n").unwrap();
    let cnf = format!(
        "[ca]\ndefault_ca = d\n[d]\ndatabase = {}\nnew_certs_dir = {}\nserial = {}\npolicy = any\ndefault_md = sha256\n\
         copy_extensions = copy\nunique_subject = no\n[any]\ncommonName = supplied\n",
        f("index"),
        env.dir.path().display(),
        f("serial")
    );
    fs::write(f("cnf"), cnf).unwrap();
    openssl_ok(
        &[
            "ca",
            "-batch",
            "-selfsign",
            "-config",
            &f("cnf"),
            "-keyfile",
            &f("key"),
            "-in",
            &f("csr"),
            "-startdate",
            start,
            "-enddate",
            end,
            "-out",
            &f("pem"),
        ],
        None,
    );
    env.run(&["cert", "import", &f("pem"), &f("key"), "--name", tag]).ok();
}

/// Makes a P-256 key and a CSR for it with openssl (`extra`: more flags, such as
/// `-addext`).
pub fn openssl_p256_csr(key: &str, csr: &str, subject: &str, extra: &[&str]) {
    let mut args = vec!["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    args.extend(["-keyout", key, "-out", csr, "-subj", subject]);
    args.extend_from_slice(extra);
    openssl_ok(&args, None);
}

/// Signs `csr` with the CA `ca`/`ca_key` into `out` (`extra`: e.g. `-copy_extensions
/// copyall` or `-extfile FILE`), as a CA would answer a request.
pub fn openssl_ca_sign(csr: &str, ca: &str, ca_key: &str, days: &str, out: &str, extra: &[&str]) {
    let mut args = vec!["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", days];
    args.extend_from_slice(extra);
    args.extend(["-out", out]);
    openssl_ok(&args, None);
}

/// File mode bits.
pub fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

/// Seconds since the epoch of an openssl date such as "Nov 23 10:57:50 2026 GMT", by
/// GNU date, an oracle independent of our own time code.
pub fn epoch_of(openssl_date: &str) -> i64 {
    let out = Command::new("date").args(["-u", "-d", openssl_date, "+%s"]).output().unwrap();
    assert!(out.status.success(), "date cannot parse {openssl_date:?}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

pub fn now_epoch() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A free loopback port for a daemon to bind. Taken below the kernel's ephemeral range
/// (32768 and up), so no client connection of a parallel test can hold it by chance,
/// and from a per-process sequence, so parallel tests never pick the same one.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 20_000 + (std::process::id() * 97) % 10_000;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(base + n % 2_700).expect("below 32768");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Waits until something accepts on 127.0.0.1:`port` (at most 10 s).
pub fn wait_port(port: u16) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A child process killed when dropped.
pub struct Proc(pub std::process::Child);

impl Proc {
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").arg(format!("-{sig}")).arg(self.0.id().to_string()).status().unwrap();
        assert!(ok.success());
    }

    /// Waits (at most `secs`) for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, secs: u64) -> Option<i32> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status.code();
            }
            assert!(std::time::Instant::now() < deadline, "process did not exit in {secs}s");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Env {
    /// Starts `portcullis run` with `config` (TOML text written to portcullis.toml) and
    /// waits for every port in `ports`.
    pub fn daemon(&self, config: &str, ports: &[u16]) -> Proc {
        self.daemon_env(config, ports, &[])
    }

    /// [`Env::daemon`] with extra environment variables (e.g. a failpoint).
    pub fn daemon_env(&self, config: &str, ports: &[u16], vars: &[(&str, &str)]) -> Proc {
        let path = self.write("portcullis.toml", config);
        let log = fs::File::create(self.path("daemon.log")).unwrap();
        let child = Command::new(BIN)
            .arg("--config")
            .arg(&path)
            .arg("--store")
            .arg(self.store())
            .arg("run")
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .envs(vars.iter().copied())
            .spawn()
            .unwrap();
        let mut proc = Proc(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        for p in ports {
            while std::net::TcpStream::connect(("127.0.0.1", *p)).is_err() {
                if let Some(status) = proc.0.try_wait().unwrap() {
                    panic!("the daemon exited ({status}) before listening on {p}:\n{}", self.daemon_log());
                }
                assert!(std::time::Instant::now() < deadline, "nothing listens on port {p}:\n{}", self.daemon_log());
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        proc
    }

    pub fn daemon_log(&self) -> String {
        fs::read_to_string(self.path("daemon.log")).unwrap_or_default()
    }

    /// Starts tests/support/backend.py on a free port.
    pub fn backend(&self) -> (Proc, u16) {
        let port = free_port();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/backend.py");
        let child = Command::new("python3").arg(script).arg(port.to_string()).stdout(Stdio::null()).spawn().unwrap();
        let proc = Proc(child);
        wait_port(port);
        (proc, port)
    }
}

/// The subject CN of the certificate a TLS server on `port` presents for `sni`
/// (`None`: no SNI), by `openssl s_client`; `None` when the handshake fails.
pub fn served_cn(port: u16, sni: Option<&str>) -> Option<String> {
    let connect = format!("127.0.0.1:{port}");
    let mut args = vec!["s_client", "-connect", &connect, "-showcerts"];
    match sni {
        Some(name) => args.extend(["-servername", name]),
        None => args.push("-noservername"),
    }
    let (_, out, _) = openssl(&args, Some(""));
    let pem_start = out.find("-----BEGIN CERTIFICATE-----")?;
    let pem_end = out.find("-----END CERTIFICATE-----")? + "-----END CERTIFICATE-----".len();
    cn_of(&out[pem_start..pem_end])
}

/// The subject CN of a PEM certificate, read by `openssl x509`.
pub fn cn_of(pem: &str) -> Option<String> {
    let subject = openssl_ok(&["x509", "-noout", "-subject", "-nameopt", "multiline"], Some(pem));
    subject
        .lines()
        .find_map(|l| l.trim().strip_prefix("commonName").map(|v| v.trim().trim_start_matches('=').trim().to_owned()))
}

/// Runs curl with `args`; returns (exit success, stdout).
pub fn curl(args: &[&str]) -> (bool, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl (make test installs it)");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The value of the metric line starting with `prefix` (labels included) on /metrics.
pub fn metric(admin: u16, prefix: &str) -> Option<f64> {
    let (_, metrics) = curl(&[&format!("http://127.0.0.1:{admin}/metrics")]);
    metrics.lines().find_map(|l| l.strip_prefix(prefix)).and_then(|v| v.trim().parse().ok())
}

/// Accepts any certificate (no chain, name or date checks) but checks the handshake
/// signatures, so the server proved it holds the key of the certificate it sent.
#[derive(Debug)]
pub struct AnyCert(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The leaf certificate (DER) served for `sni`, through an in-process rustls client
/// that accepts any certificate: a fast poll, compared byte for byte by the callers.
pub fn served_der(port: u16, sni: &str) -> Option<Vec<u8>> {
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).ok()?;
    let mut conn = rustls::ClientConnection::new(any_cert_client(), name).ok()?;
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(15))).ok()?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).ok()?;
    }
    Some(conn.peer_certificates()?.first()?.to_vec())
}

/// A client that accepts any certificate and offers HTTP/1.1 by ALPN.
pub fn any_cert_client() -> std::sync::Arc<rustls::ClientConfig> {
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    std::sync::Arc::new(config)
}

/// Chromium's flags for a closed network and a root user (see the machine notes).
pub fn chromium(env: &Env, args: &[&str]) -> String {
    let profile = env.path("chromium-profile");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("chromium (make test installs it)");
    assert!(out.status.success(), "chromium: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
