//! Fuzzes the PROXY protocol header parser (v1 and v2) as a connection feeds it: every prefix
//! of the input, as if the bytes came one read at a time. The parser must never panic; the
//! answers over growing prefixes must be `Incomplete` until one decision, which no further byte
//! changes; a header must fit in the bytes given and within `HEADER_BYTES_MAX`, and be decided
//! by its own bytes alone; nothing stays `Incomplete` past `HEADER_BYTES_MAX` bytes (a
//! connection never buffers more waiting for a header).

#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmx::proxy::{parse, Parsed, HEADER_BYTES_MAX};

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(HEADER_BYTES_MAX + 64)];
    let mut decided: Option<(usize, Parsed)> = None;
    for end in 0..=data.len() {
        let parsed = parse(&data[..end]);
        match (&decided, parsed) {
            (None, Parsed::Incomplete) => {
                assert!(end < HEADER_BYTES_MAX, "still incomplete after {end} bytes");
            }
            (None, decision) => {
                if let Parsed::Header { len, .. } = decision {
                    assert!(len <= end && len <= HEADER_BYTES_MAX, "header of {len} bytes in {end}");
                    assert_eq!(parse(&data[..len]), decision, "not decided by its own bytes");
                }
                decided = Some((end, decision));
            }
            (Some((at, first)), later) => {
                assert_eq!(later, *first, "decided at {at} bytes, changed at {end}");
            }
        }
    }
});
