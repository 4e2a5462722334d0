//! The configuration loader behind `run`, reloads and `check-config`: any main file, plus
//! conf.d/ fragments, must give a configuration and a list of errors, never a panic.
//!
//! The input is split at NUL bytes (which TOML text cannot hold): the first part is
//! portcullis.toml, each further part a conf.d/NN.toml fragment, so the merge is fuzzed too.
#![no_main]
#![allow(clippy::disallowed_methods)] // fixture files, not store writes

use std::fs;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use libfuzzer_sys::fuzz_target;
use portcullis::config::Config;

/// Largest input tried: configurations are small, and big inputs only slow the run.
const MAX_INPUT: usize = 64 * 1024;
const MAX_FRAGMENTS: usize = 8;

/// A directory of this process's own on tmpfs, so runs in parallel do not collide.
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = PathBuf::from(format!("/dev/shm/portcullis-fuzz-config-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(d.join("conf.d")).expect("create fuzz dir in /dev/shm");
        d
    })
}

/// Fragments the previous input left in conf.d/.
static WRITTEN: AtomicUsize = AtomicUsize::new(0);

fn fragment(i: usize) -> PathBuf {
    dir().join(format!("conf.d/{i:02}.toml"))
}

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_INPUT {
        return;
    }
    let mut parts = data.splitn(MAX_FRAGMENTS + 1, |&b| b == 0);
    let main = dir().join("portcullis.toml");
    fs::write(&main, parts.next().unwrap_or_default()).expect("write main file");
    let mut n = 0;
    for part in parts {
        fs::write(fragment(n), part).expect("write fragment");
        n += 1;
    }
    for stale in n..WRITTEN.swap(n, Ordering::Relaxed) {
        let _ = fs::remove_file(fragment(stale));
    }
    let _ = Config::load_all(Some(&main));
});
