//! The ClientHello reader of `passthrough` listeners, which sees a stranger's first bytes
//! before any TLS: any bytes must give an answer, never a panic, and the answer for a
//! complete hello must not depend on what follows it (the rest of the connection).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::proxy::handler::{Peeked, parse_sni};

fuzz_target!(|data: &[u8]| {
    let peeked = parse_sni(data);
    if let Peeked::Hello(_) = &peeked {
        // What follows: the same bytes again, and a record header promising more.
        for tail in [data, &[0x16, 0x03, 0x01, 0xff, 0xff]] {
            let longer = [data, tail].concat();
            assert_eq!(parse_sni(&longer), peeked, "bytes after a complete hello changed the answer");
        }
    }
});
