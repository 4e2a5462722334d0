//! The job-file parser: a file dropped in `incoming/` (TOML turned into CLI arguments for
//! clap) must give a job or an error naming the problem, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Job files are read as UTF-8 text before parsing.
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = portcullis::jobs::parse(text, Path::new("/nonexistent/jobs"));
});
