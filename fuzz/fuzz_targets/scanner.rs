//! Fuzzes the data scanner against the byte-at-a-time oracle: arbitrary streams cut into reads
//! at arbitrary points, in both bare-LF modes. The end of data, the unstuffed bytes and the
//! bare-line-ending flag must be the oracle's; every range must lie inside its own read; with
//! no terminator, only a CR may be held back. Both kinds of scanner are checked: the baseline
//! vectors and the widest the CPU has.
//!
//! Input layout: byte 0 the number of cuts (mod 16), then two bytes per cut (little-endian
//! offset, modulo the length), then the stream.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmx::scan::{naive, BareLf, DataScanner, Part, Scan};

fuzz_target!(|data: &[u8]| {
    let Some((&ncuts, rest)) = data.split_first() else {
        return;
    };
    let ncuts = usize::from(ncuts % 16);
    if rest.len() < 2 * ncuts {
        return;
    }
    let (cut_bytes, stream) = rest.split_at(2 * ncuts);
    let mut cuts: Vec<usize> = cut_bytes
        .chunks_exact(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (stream.len() + 1))
        .collect();
    cuts.sort_unstable();
    for mode in [BareLf::Reject, BareLf::Normalize] {
        // The baseline vectors and the widest this CPU has.
        check(DataScanner::baseline(mode), stream, &cuts, mode);
        check(DataScanner::new(mode), stream, &cuts, mode);
    }
});

/// Scans `stream` cut at `cuts` and compares with the oracle.
fn check(mut scanner: DataScanner, stream: &[u8], cuts: &[usize], mode: BareLf) {
    let want = naive::unstuff(stream, mode);
    let mut parts = Vec::new();
    let mut data = Vec::new();
    let mut end = None;
    let mut from = 0;
    for &to in cuts.iter().chain(std::iter::once(&stream.len())) {
        parts.clear();
        let scan = scanner.scan(&stream[from..to], from, &mut parts);
        for part in &parts {
            match part {
                Part::Input(r) => {
                    assert!(r.start >= from && r.start < r.end && r.end <= to, "{r:?}");
                    data.extend_from_slice(&stream[r.clone()]);
                }
                Part::Static(s) => data.extend_from_slice(s),
            }
        }
        if let Scan::End(n) = scan {
            end = Some(from + n);
            break;
        }
        from = to;
    }
    assert_eq!(end, want.end, "end of data ({mode:?})");
    if end.is_some() {
        assert_eq!(data, want.data, "data ({mode:?})");
    } else {
        assert!(want.data.starts_with(&data), "data so far ({mode:?})");
        let held = want.data.len() - data.len();
        assert!(held <= 1, "more than a CR held back");
        // Only the CR after a dot at a line start, which may yet be the terminator's.
        assert!(
            held == 0 || stream == b".\r" || stream.ends_with(b"\r\n.\r"),
            "a CR held back that no dot at a line start comes before"
        );
    }
    assert_eq!(
        scanner.saw_bare_line_ending(),
        want.bare,
        "bare flag ({mode:?})"
    );
}
