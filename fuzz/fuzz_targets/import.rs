//! The format detector and every parser behind `cert import`: any bytes, with and
//! without a password, must give certificates and keys or a clean error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::pki::{Found, read_file};

fuzz_target!(|data: &[u8]| {
    let mut found = Found::default();
    let _ = read_file("fuzz-input", data, None, &mut found);
    let mut found = Found::default();
    let _ = read_file("fuzz-input", data, Some(b"password"), &mut found);
});
