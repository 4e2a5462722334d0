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
    pub fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap() }
    }

    /// A store that already exists (so later commands print no initialisation notes).
    pub fn initialised() -> Self {
        let env = Self::new();
        env.run(&["cert", "list"]).ok();
        env
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
