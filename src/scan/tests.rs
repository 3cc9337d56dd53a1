//! Scanner tests: named smuggling vectors, then the fast paths against the byte-at-a-time
//! oracle over every split point, length and alignment, every short stream of the bytes that
//! matter, and random streams (proptest), in both bare-LF modes.

use super::naive;
use super::*;
use proptest::prelude::*;

/// Fresh scanners of every kind this CPU runs: the baseline vectors and the widest it has
/// (the same kind twice where the baseline is the widest).
fn scanners(mode: BareLf) -> [DataScanner; 2] {
    [DataScanner::baseline(mode), DataScanner::new(mode)]
}

/// Feeds `stream` to a fresh scanner of each kind in pieces cut at `cuts`; both must agree;
/// returns (end offset in the stream, stored bytes, bare flag).
fn run_split(stream: &[u8], cuts: &[usize], mode: BareLf) -> (Option<usize>, Vec<u8>, bool) {
    let [baseline, widest] = scanners(mode);
    let got = run_split_with(baseline, stream, cuts);
    assert_eq!(
        got,
        run_split_with(widest, stream, cuts),
        "kinds differ on {stream:?}"
    );
    got
}

fn run_split_with(
    mut scanner: DataScanner,
    stream: &[u8],
    cuts: &[usize],
) -> (Option<usize>, Vec<u8>, bool) {
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
                for mut scanner in scanners(BareLf::Reject) {
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
            (Line::TooLong { consumed }, None) => {
                prop_assert!(input.len() >= COMMAND_LINE_MAX);
                prop_assert_eq!(consumed, COMMAND_LINE_MAX);
            }
            (Line::Partial, None) => prop_assert!(input.len() < COMMAND_LINE_MAX),
            (got, want) => prop_assert!(false, "got {:?} want {:?}", got, want),
        }
    }
}

/// Like `check`, but also for streams with no terminator: the data so far must be the oracle's
/// (less a CR held back after a dot, which may yet start the terminator) and the bare flag the
/// same; and every part must be a non-empty range inside this call's input.
fn check_strict(stream: &[u8], cuts: &[usize], mode: BareLf) {
    for scanner in scanners(mode) {
        check_strict_with(scanner, stream, cuts, mode);
    }
}

fn check_strict_with(mut scanner: DataScanner, stream: &[u8], cuts: &[usize], mode: BareLf) {
    let want = naive::unstuff(stream, mode);
    let mut data = Vec::new();
    let mut parts = Vec::new();
    let mut bounds: Vec<usize> = cuts.iter().copied().filter(|&c| c < stream.len()).collect();
    bounds.sort_unstable();
    bounds.dedup();
    bounds.push(stream.len());
    let mut from = 0;
    let mut end = None;
    for to in bounds {
        parts.clear();
        // `base` = `from`: ranges are offsets into the whole stream.
        let scan = scanner.scan(&stream[from..to], from, &mut parts);
        for part in &parts {
            match part {
                Part::Input(r) => {
                    assert!(
                        r.start >= from && r.start < r.end && r.end <= to,
                        "part {r:?} outside {from}..{to}, stream {stream:?} cuts {cuts:?}"
                    );
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
    let ctx = format!("stream {stream:?} cuts {cuts:?} {mode:?} {scanner:?}");
    assert_eq!(end, want.end, "end, {ctx}");
    if end.is_some() {
        assert_eq!(data, want.data, "data, {ctx}");
    } else {
        let held = want.data.len() - data.len().min(want.data.len());
        assert!(
            want.data.starts_with(&data) && held <= 1,
            "data {data:?} want {:?}, {ctx}",
            want.data
        );
        if held == 1 {
            // Only the CR after a dot at a line start, which may yet be the terminator's.
            assert!(
                stream == b".\r" || stream.ends_with(b"\r\n.\r"),
                "only a CR after a line-start dot is ever held back, {ctx}"
            );
        }
    }
    assert_eq!(scanner.saw_bare_line_ending(), want.bare, "bare, {ctx}");
}

#[test]
fn every_short_stream_of_the_bytes_that_matter() {
    // All streams of up to 7 bytes over CR, LF, '.' and one plain byte, alone and followed by
    // a terminator, each fed whole and cut at every point, in both modes.
    const ALPHABET: [u8; 4] = [b'\r', b'\n', b'.', b'a'];
    let mut checked = 0;
    for len in 0..=7u32 {
        for code in 0..4usize.pow(len) {
            let mut stream: Vec<u8> = (0..len).map(|i| ALPHABET[(code >> (2 * i)) & 3]).collect();
            for with_end in [false, true] {
                if with_end {
                    stream.extend_from_slice(b"\r\n.\r\n");
                }
                for mode in [BareLf::Reject, BareLf::Normalize] {
                    check_strict(&stream, &[], mode);
                    for cut in 1..stream.len() {
                        check_strict(&stream, &[cut], mode);
                    }
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 4 * 21845);
}

/// A realistic body: 76-character lines, some starting with a dot, one bare LF and one bare
/// CR, and a terminator, long enough to cross many SIMD blocks.
fn realistic_stream() -> Vec<u8> {
    let mut stream = Vec::new();
    for i in 0..12u8 {
        if i % 4 == 1 {
            stream.extend_from_slice(b"..");
        }
        stream.extend(std::iter::repeat_n(b'a' + i, 74 - usize::from(i) * 5));
        match i {
            5 => stream.extend_from_slice(b"\n"),
            8 => stream.extend_from_slice(b"\rx\r\n"),
            _ => stream.extend_from_slice(b"\r\n"),
        }
    }
    stream.extend_from_slice(b".\r\nQUIT\r\n");
    stream
}

#[test]
fn every_length_and_alignment_of_a_realistic_stream() {
    // Every prefix of the stream, placed at every alignment in a larger buffer (the scanner
    // sees a slice starting at that offset, so SIMD loads start at every alignment), both modes.
    let stream = realistic_stream();
    let mut buffer = vec![0u8; stream.len() + 64];
    for len in 0..=stream.len() {
        let prefix = &stream[..len];
        for mode in [BareLf::Reject, BareLf::Normalize] {
            let want = naive::unstuff(prefix, mode);
            for (align, mut scanner) in (0..64).flat_map(|a| scanners(mode).map(|s| (a, s))) {
                buffer[align..align + len].copy_from_slice(prefix);
                let input = &buffer[align..align + len];
                let mut parts = Vec::new();
                let scan = scanner.scan(input, align, &mut parts);
                let mut data = Vec::new();
                for part in &parts {
                    match part {
                        Part::Input(r) => data.extend_from_slice(&buffer[r.clone()]),
                        Part::Static(s) => data.extend_from_slice(s),
                    }
                }
                let ctx = format!("len {len} align {align} {mode:?} {scanner:?}");
                match want.end {
                    Some(end) => {
                        assert_eq!(scan, Scan::End(end), "{ctx}");
                        assert_eq!(data, want.data, "{ctx}");
                    }
                    None => {
                        assert_eq!(scan, Scan::More, "{ctx}");
                        assert!(want.data.starts_with(&data), "{ctx}");
                    }
                }
                assert_eq!(scanner.saw_bare_line_ending(), want.bare, "{ctx}");
            }
        }
    }
}

#[test]
fn over_long_command_consumes_only_the_limit() {
    // The LF and whatever is pipelined after it stay for `drain_line` and the next line.
    let mut input = vec![b'a'; 700];
    input.extend_from_slice(b"\r\nNOOP\r\n");
    assert_eq!(
        split_line(&input),
        Line::TooLong {
            consumed: COMMAND_LINE_MAX
        }
    );
    let rest = &input[COMMAND_LINE_MAX..];
    let (drained, found) = drain_line(rest);
    assert!(found);
    assert_eq!(&rest[drained..], b"NOOP\r\n");
    // 511 octets of text and CRLF: the CR is the 512th octet, the LF the 513th.
    let mut over = vec![b'a'; 511];
    over.extend_from_slice(b"\r\n");
    assert!(matches!(split_line(&over), Line::TooLong { .. }));
}

#[test]
fn every_feature_at_every_block_position() {
    // Each sequence that changes what the scanner does, placed at every offset around the
    // first three block edges of a run of plain bytes, the stream fed whole and cut just
    // before, inside and just after it, in both modes: the masks' carries from one block to
    // the next (a CR ending one block and its LF starting the next, a CRLF ending a block and
    // its `.` starting the next, the input's last byte) are all crossed.
    const FEATURES: [&[u8]; 12] = [
        b"\r\n.",
        b"\r\n..",
        b"\r\n.\r\n",
        b"\r\n.\rx",
        b"\r\n.\r",
        b"\r",
        b"\n",
        b"\r\r\n",
        b"\n.\r\n",
        b"\r.\r\n",
        b"\r\n\r\n.\r\n",
        b"\r\n",
    ];
    for feature in FEATURES {
        for at in 0..200 {
            let mut stream = vec![b'x'; at];
            stream.extend_from_slice(feature);
            let tail = stream.len();
            // Bare CR and LF after the terminator are not the message's.
            for with in [&b""[..], b"yy", b"\r\n.\r\n", b"\r\n.\r\n\rx\n"] {
                let mut stream = stream.clone();
                stream.extend_from_slice(with);
                for mode in [BareLf::Reject, BareLf::Normalize] {
                    check_strict(&stream, &[], mode);
                    for cut in [at, at + 1, at + 2, tail, tail + 1] {
                        check_strict(&stream, &[cut], mode);
                    }
                    check_strict(&stream, &[at.saturating_sub(64), at + 1], mode);
                }
            }
        }
    }
}

proptest! {
    #[test]
    fn masks_match_a_byte_loop(block in prop::collection::vec(
        prop::sample::select(vec![b'\n', b'\r', b'.', b'a', 0x8a, 0x8d, 0xae, 0x0b]), 64..65)) {
        let block: &[u8; 64] = block.as_slice().try_into().unwrap();
        let want = |b: u8| block.iter().enumerate().filter(|&(_, &x)| x == b)
            .fold(0u64, |m, (j, _)| m | 1 << j);
        let want = Masks { lf: want(b'\n'), cr: want(b'\r'), dot: want(b'.') };
        prop_assert_eq!(Masks::scalar(block), want);
        prop_assert_eq!(Masks::of_64(block), want);
        #[cfg(target_arch = "x86_64")]
        if avx2() {
            // SAFETY: the CPU has AVX2.
            prop_assert_eq!(unsafe { Masks::of_64_avx2(block) }, want);
        }
    }

    #[test]
    fn masks_of_a_partial_block_see_only_its_bytes(
        bytes in prop::collection::vec(
            prop::sample::select(vec![b'\n', b'\r', b'.', b'a']), 0..130),
        at in 0usize..130,
    ) {
        let at = at.min(bytes.len());
        let end = (at + 64).min(bytes.len());
        prop_assert_eq!(Masks::at(&bytes, at, Masks::of_64), Masks::scalar(&bytes[at..end]));
    }
}

fn biased_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => prop::sample::select(vec![b'\r', b'\n', b'.']),
        2 => any::<u8>(),
    ]
}

proptest! {
    #[test]
    fn scanner_matches_oracle_strictly_on_random_bytes(
        stream in prop::collection::vec(biased_byte(), 0..400),
        cuts in prop::collection::vec(0usize..400, 0..8),
    ) {
        check_strict(&stream, &cuts, BareLf::Reject);
        check_strict(&stream, &cuts, BareLf::Normalize);
    }

    #[test]
    fn scanner_matches_oracle_on_long_random_lines(
        lines in prop::collection::vec(
            (prop::collection::vec(prop::sample::select(vec![b'a', b'.', b'\r', b'\n']), 0..4),
             0usize..200,
             prop::sample::select(vec![&b"\r\n"[..], b"\n", b"\r", b""])),
            0..12),
        cuts in prop::collection::vec(0usize..3000, 0..6),
    ) {
        // Lines of plain bytes long enough to span several 64-byte blocks, with random heads and
        // random line ends, then a terminator.
        let mut stream = Vec::new();
        for (head, filler, end) in &lines {
            stream.extend_from_slice(head);
            stream.extend(std::iter::repeat_n(b'x', *filler));
            stream.extend_from_slice(end);
        }
        stream.extend_from_slice(b"\r\n.\r\n");
        check_strict(&stream, &cuts, BareLf::Reject);
        check_strict(&stream, &cuts, BareLf::Normalize);
    }
}
