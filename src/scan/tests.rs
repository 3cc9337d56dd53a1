//! Scanner tests: named smuggling vectors, then the fast paths against the byte-at-a-time
//! oracle over every split point, length and alignment, and random streams (proptest).

use super::naive;
use super::*;
use proptest::prelude::*;

/// Feeds `stream` to a fresh scanner in pieces cut at `cuts`; returns (end offset in the
/// stream, stored bytes, bare flag).
fn run_split(stream: &[u8], cuts: &[usize], mode: BareLf) -> (Option<usize>, Vec<u8>, bool) {
    let mut scanner = DataScanner::new(mode);
    let mut data = Vec::new();
    let mut parts = Vec::new();
    let mut bounds: Vec<usize> = cuts.iter().copied().filter(|&c| c < stream.len()).collect();
    bounds.sort_unstable();
    bounds.dedup();
    bounds.push(stream.len());
    let mut from = 0;
    for to in bounds {
        let chunk = &stream[from..to];
        parts.clear();
        let scan = scanner.scan(chunk, 0, &mut parts);
        for part in &parts {
            match part {
                Part::Input(r) => data.extend_from_slice(&chunk[r.clone()]),
                Part::Static(s) => data.extend_from_slice(s),
            }
        }
        if let Scan::End(n) = scan {
            return (Some(from + n), data, scanner.saw_bare_line_ending());
        }
        from = to;
    }
    (None, data, scanner.saw_bare_line_ending())
}

/// Checks the scanner against the oracle for one stream and one set of cuts.
fn check(stream: &[u8], cuts: &[usize], mode: BareLf) {
    let want = naive::unstuff(stream, mode);
    let (end, data, bare) = run_split(stream, cuts, mode);
    assert_eq!(end, want.end, "end, stream {stream:?} cuts {cuts:?}");
    if want.end.is_some() {
        assert_eq!(data, want.data, "data, stream {stream:?} cuts {cuts:?}");
        assert_eq!(bare, want.bare, "bare, stream {stream:?} cuts {cuts:?}");
    }
}

#[test]
fn plain_message_and_terminator() {
    let (end, data, bare) = run_split(b"Subject: x\r\n\r\nhello\r\n.\r\nMAIL", &[], BareLf::Reject);
    assert_eq!(end, Some(24));
    assert_eq!(data, b"Subject: x\r\n\r\nhello\r\n");
    assert!(!bare);
}

#[test]
fn empty_message() {
    assert_eq!(
        run_split(b".\r\n", &[], BareLf::Reject),
        (Some(3), vec![], false)
    );
}

#[test]
fn dot_stuffing_is_removed() {
    let (_, data, _) = run_split(b"..hidden\r\n.x\r\n...\r\n.\r\n", &[], BareLf::Reject);
    assert_eq!(data, b".hidden\r\nx\r\n..\r\n");
}

/// The SMTP smuggling vectors: none of these ends the data, whatever the mode; the smuggled
/// commands after them stay message bytes.
const SMUGGLING_VECTORS: &[&[u8]] = &[
    b"\n.\n", b"\r.\r", b"\r\n.\n", b"\n.\r\n", b"\r\n.\r", b"\r.\r\n", b"\n.\r", b"\r.\n",
];

#[test]
fn smuggling_vectors_never_end_data() {
    for mode in [BareLf::Reject, BareLf::Normalize] {
        for vector in SMUGGLING_VECTORS {
            let mut stream = b"Subject: a\r\n\r\nbody".to_vec();
            stream.extend_from_slice(vector);
            let smuggled = b"MAIL FROM:<x@y>\r\nRCPT TO:<v@w>\r\nDATA\r\nevil\r\n";
            stream.extend_from_slice(smuggled);
            let real_end = stream.len() + 5;
            stream.extend_from_slice(b"\r\n.\r\nQUIT\r\n");
            for cut in 0..stream.len() {
                let (end, data, bare) = run_split(&stream, &[cut], mode);
                assert_eq!(end, Some(real_end), "{vector:?} {mode:?} cut {cut}");
                assert!(
                    data.windows(4).any(|w| w == b"MAIL"),
                    "smuggled bytes are data"
                );
                assert_eq!(bare, mode == BareLf::Reject, "{vector:?} {mode:?}");
            }
        }
    }
}

#[test]
fn normalize_turns_bare_lf_into_crlf() {
    let (end, data, bare) = run_split(b"a\nb\r\nc\rd\r\n.\r\n", &[], BareLf::Normalize);
    assert!(end.is_some());
    assert_eq!(data, b"a\r\nb\r\nc\rd\r\n");
    assert!(!bare);
}

#[test]
fn held_back_cr_after_dot_is_data_when_no_lf_follows() {
    for mode in [BareLf::Reject, BareLf::Normalize] {
        let stream = b"x\r\n.\ry\r\n.\r\n";
        for cut in 0..stream.len() {
            check(stream, &[cut], mode);
        }
    }
}

#[test]
fn terminator_split_at_every_byte_found_once() {
    let stream = b"line one\r\n..two\r\n.\r\nNOOP\r\n";
    for a in 0..stream.len() {
        for b in a..stream.len() {
            check(stream, &[a, b], BareLf::Reject);
            check(stream, &[a, b], BareLf::Normalize);
        }
    }
}

#[test]
fn every_length_and_alignment_of_seeds() {
    let seeds: &[&[u8]] = &[
        b"abc\r\n.\r\n",
        b"..\r\n.\r\n",
        b"\r\n\r\n.\r\n",
        b"a\nb\rc\r\n.\r\n",
        b".\r.\r\n.\r\n",
    ];
    for seed in seeds {
        for filler in 0..80 {
            // A long run of plain bytes before the seed moves it across SIMD block boundaries.
            let mut stream = vec![b'x'; filler];
            stream.extend_from_slice(b"\r\n");
            stream.extend_from_slice(seed);
            for offset in 0..32 {
                let mut shifted = vec![0u8; offset];
                shifted.extend_from_slice(&stream);
                let want = naive::unstuff(&stream, BareLf::Reject);
                let mut scanner = DataScanner::new(BareLf::Reject);
                let mut parts = Vec::new();
                let scan = scanner.scan(&shifted[offset..], offset, &mut parts);
                assert_eq!(scan, Scan::End(want.end.unwrap()));
                let mut data = Vec::new();
                for part in &parts {
                    match part {
                        Part::Input(r) => data.extend_from_slice(&shifted[r.clone()]),
                        Part::Static(s) => data.extend_from_slice(s),
                    }
                }
                assert_eq!(data, want.data);
            }
        }
    }
}

#[test]
fn split_line_limits() {
    assert_eq!(
        split_line(b"NOOP\r\nrest"),
        Line::Complete {
            text: 0..4,
            consumed: 6,
            bare_lf: false
        }
    );
    assert_eq!(
        split_line(b"NOOP\n"),
        Line::Complete {
            text: 0..4,
            consumed: 5,
            bare_lf: true
        }
    );
    assert_eq!(split_line(b"NOOP"), Line::Partial);
    let mut exact = vec![b'a'; COMMAND_LINE_MAX - 2];
    exact.extend_from_slice(b"\r\n");
    assert!(matches!(
        split_line(&exact),
        Line::Complete {
            consumed: COMMAND_LINE_MAX,
            ..
        }
    ));
    let long = vec![b'a'; COMMAND_LINE_MAX];
    assert_eq!(
        split_line(&long),
        Line::TooLong {
            consumed: COMMAND_LINE_MAX
        }
    );
    assert_eq!(drain_line(b"aaa\nNOOP"), (4, true));
    assert_eq!(drain_line(b"aaa"), (3, false));
}

fn stream_strategy() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop::sample::select(vec![b'\r', b'\n', b'.', b'a', b'M']);
    prop::collection::vec(byte, 0..200)
}

proptest! {
    #[test]
    fn scanner_matches_oracle_on_random_streams(
        body in stream_strategy(),
        tail in stream_strategy(),
        cuts in prop::collection::vec(0usize..420, 0..8),
    ) {
        let mut stream = body;
        stream.extend_from_slice(b"\r\n.\r\n");
        stream.extend_from_slice(&tail);
        check(&stream, &cuts, BareLf::Reject);
        check(&stream, &cuts, BareLf::Normalize);
    }

    #[test]
    fn scanner_never_ends_early_on_random_bytes(
        stream in prop::collection::vec(any::<u8>(), 0..300),
        cuts in prop::collection::vec(0usize..300, 0..6),
    ) {
        check(&stream, &cuts, BareLf::Reject);
        check(&stream, &cuts, BareLf::Normalize);
    }

    #[test]
    fn split_line_matches_oracle(input in prop::collection::vec(
        prop::sample::select(vec![b'\r', b'\n', b'a']), 0..700)) {
        let want = naive::first_line(&input, COMMAND_LINE_MAX);
        match (split_line(&input), want) {
            (Line::Complete { text, consumed, bare_lf }, Some((t, c, b))) => {
                prop_assert_eq!(&input[text], t);
                prop_assert_eq!(consumed, c);
                prop_assert_eq!(bare_lf, b);
            }
            (Line::TooLong { .. }, None) => prop_assert!(input.len() >= COMMAND_LINE_MAX),
            (Line::Partial, None) => prop_assert!(input.len() < COMMAND_LINE_MAX),
            (got, want) => prop_assert!(false, "got {:?} want {:?}", got, want),
        }
    }
}
