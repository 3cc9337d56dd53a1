//! Scanner throughput in bytes/s on realistic message bodies: 76-character lines, about one line in
//! 20 starting with a dot (so stuffed), 1 KiB, 64 KiB and 1 MiB, each ended by CRLF `.` CRLF.
//! Measured: `DataScanner::scan` in reject mode (bare-LF validation on) and in normalize mode, with
//! the widest vectors the CPU has, and in reject mode with the baseline vectors (SSE2 on x86_64);
//! two baselines, the byte-at-a-time oracle and a plain byte state machine that does the same job
//! without copying; and the ceiling, one `memchr_iter(b'\n').count()` pass over the body (memchr's
//! count routine, which never stops at a match), beside `memchr_iter` visiting every LF (the least
//! a scanner that acts on each line end pays; ours acts only on the lines that start with a dot).
//! Every engine's answer is checked against the oracle before it is timed.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringmx::scan::{naive, BareLf, DataScanner, Part, Scan};

/// A dot-stuffed DATA stream of about `size` bytes of 76-character lines (78 with CRLF), one
/// in 20 starting with a stuffed dot, ended by the terminator.
fn body(size: usize) -> Vec<u8> {
    let text =
        b"The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs. ";
    let mut stream = Vec::with_capacity(size + 100);
    let mut line = 0usize;
    while stream.len() + 78 <= size {
        let start = stream.len();
        if line % 20 == 7 {
            stream.extend_from_slice(b"..");
        }
        let take = 76 - (stream.len() - start);
        let skew = line % 10;
        stream.extend_from_slice(&text[skew..skew + take]);
        stream.extend_from_slice(b"\r\n");
        line += 1;
    }
    stream.extend_from_slice(b".\r\n");
    stream
}

/// The byte-at-a-time baseline: the same job as the scanner (terminator, dot-unstuffing as
/// ranges, bare LF/CR detection) with one state transition per byte and no copy.
fn byte_loop(stream: &[u8], parts: &mut Vec<std::ops::Range<usize>>) -> (Option<usize>, bool) {
    // 0: line start, 1: mid-line, 2: after CR, 3: after line-start dot, 4: after dot CR.
    let mut state = 0u8;
    let mut bare = false;
    let mut seg = 0;
    for (i, &b) in stream.iter().enumerate() {
        state = match (state, b) {
            (0, b'.') => {
                if seg < i {
                    parts.push(seg..i);
                }
                seg = i + 1;
                3
            }
            (3, b'\r') => 4,
            (4, b'\n') => return (Some(i + 1), bare),
            (2, b'\n') => 0,
            (4, _) | (2, _) if b == b'\r' => {
                bare = true;
                2
            }
            (4, _) | (2, _) => {
                bare = true;
                1
            }
            (_, b'\r') => 2,
            (_, b'\n') => {
                bare = true;
                1
            }
            _ => 1,
        };
    }
    (None, bare)
}

/// The scanner's unstuffed output for a whole stream in one call.
fn scanner_data(mut scanner: DataScanner, stream: &[u8]) -> (Scan, Vec<u8>, bool) {
    let mut parts = Vec::new();
    let scan = scanner.scan(stream, 0, &mut parts);
    let mut data = Vec::new();
    for part in &parts {
        match part {
            Part::Input(r) => data.extend_from_slice(&stream[r.clone()]),
            Part::Static(s) => data.extend_from_slice(s),
        }
    }
    (scan, data, scanner.saw_bare_line_ending())
}

/// Checks every engine against the oracle on this stream before anything is timed.
fn verify(stream: &[u8]) {
    for mode in [BareLf::Reject, BareLf::Normalize] {
        let want = naive::unstuff(stream, mode);
        let end = want.end.expect("the body has a terminator");
        assert_eq!(end, stream.len());
        assert!(!want.bare);
        for scanner in [DataScanner::new(mode), DataScanner::baseline(mode)] {
            assert_eq!(
                scanner_data(scanner, stream),
                (Scan::End(end), want.data.clone(), false)
            );
        }
    }
    let want = naive::unstuff(stream, BareLf::Reject);
    let mut ranges = Vec::new();
    assert_eq!(byte_loop(stream, &mut ranges), (want.end, false));
    // The terminator's dot ends the last range, so the ranges are the whole message.
    let data: Vec<u8> = ranges
        .iter()
        .flat_map(|r| &stream[r.clone()])
        .copied()
        .collect();
    assert_eq!(data, want.data, "byte loop data");
    let mut bare_ranges = Vec::new();
    assert_eq!(
        byte_loop(b"a\rb\r\n.\r\n", &mut bare_ranges),
        (Some(8), true),
        "byte loop sees a bare CR"
    );
    let lines = memchr::memchr_iter(b'\n', stream).count();
    assert_eq!(lines, stream.iter().filter(|&&b| b == b'\n').count());
}

/// With `RINGMX_BEST_OF=N` in the environment, prints each engine's best time over N runs as
/// GB/s before criterion starts: the minimum is what the code costs when a busy machine does
/// not steal the CPU, where criterion's mean includes the stolen time.
fn best_of_table() {
    let Some(runs) = std::env::var("RINGMX_BEST_OF")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    else {
        return;
    };
    let best = |f: &mut dyn FnMut()| {
        (0..runs)
            .map(|_| {
                let t = std::time::Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .fold(f64::MAX, f64::min)
    };
    println!("best of {runs} runs, GB/s (10^9 bytes/s)");
    println!(
        "size | reject | normalize | reject-baseline | byte-loop | memchr-lf-count | memchr-lf-iter"
    );
    for (name, size) in [("1KiB", 1 << 10), ("64KiB", 64 << 10), ("1MiB", 1 << 20)] {
        let s = body(size);
        verify(&s);
        let gbs = |t: f64| s.len() as f64 / t / 1e9;
        let mut parts: Vec<Part> = Vec::with_capacity(s.len() / 600 + 16);
        let mut ranges = Vec::with_capacity(s.len() / 600 + 16);
        let mut scan = |new: fn(BareLf) -> DataScanner, mode| {
            best(&mut || {
                parts.clear();
                let mut scanner = new(mode);
                black_box(scanner.scan(black_box(&s), 0, &mut parts));
                black_box(scanner.saw_bare_line_ending());
            })
        };
        let reject = scan(DataScanner::new, BareLf::Reject);
        let normalize = scan(DataScanner::new, BareLf::Normalize);
        let reject_baseline = scan(DataScanner::baseline, BareLf::Reject);
        let byte = best(&mut || {
            ranges.clear();
            black_box(byte_loop(black_box(&s), &mut ranges));
        });
        let count = best(&mut || {
            black_box(memchr::memchr_iter(b'\n', black_box(&s)).count());
        });
        let iter = best(&mut || {
            black_box(memchr::memchr_iter(b'\n', black_box(&s)).fold(0, |a, p| a ^ p));
        });
        println!(
            "{name} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2}",
            gbs(reject),
            gbs(normalize),
            gbs(reject_baseline),
            gbs(byte),
            gbs(count),
            gbs(iter)
        );
    }
}

/// A scanner engine timed: its name, how it is made, its mode.
type Engine = (&'static str, fn(BareLf) -> DataScanner, BareLf);

fn scanner(c: &mut Criterion) {
    best_of_table();
    let mut group = c.benchmark_group("scanner");
    for (name, size) in [("1KiB", 1 << 10), ("64KiB", 64 << 10), ("1MiB", 1 << 20)] {
        let stream = body(size);
        verify(&stream);
        group.throughput(Throughput::Bytes(stream.len() as u64));
        let mut parts: Vec<Part> = Vec::with_capacity(stream.len() / 600 + 16);
        let engines: [Engine; 3] = [
            ("reject", DataScanner::new, BareLf::Reject),
            ("normalize", DataScanner::new, BareLf::Normalize),
            ("reject-baseline", DataScanner::baseline, BareLf::Reject),
        ];
        for (engine, new, mode) in engines {
            group.bench_with_input(BenchmarkId::new(engine, name), &stream, |b, s| {
                b.iter(|| {
                    parts.clear();
                    let mut scanner = new(mode);
                    let scan = scanner.scan(black_box(s), 0, &mut parts);
                    black_box((scan, scanner.saw_bare_line_ending()))
                })
            });
        }
        let mut ranges = Vec::with_capacity(stream.len() / 600 + 16);
        group.bench_with_input(BenchmarkId::new("byte-loop", name), &stream, |b, s| {
            b.iter(|| {
                ranges.clear();
                black_box(byte_loop(black_box(s), &mut ranges))
            })
        });
        if size <= 64 << 10 {
            group.bench_with_input(BenchmarkId::new("naive-oracle", name), &stream, |b, s| {
                b.iter(|| black_box(naive::unstuff(black_box(s), BareLf::Reject)))
            });
        }
        group.bench_with_input(
            BenchmarkId::new("memchr-lf-count", name),
            &stream,
            |b, s| b.iter(|| black_box(memchr::memchr_iter(b'\n', black_box(s)).count())),
        );
        group.bench_with_input(BenchmarkId::new("memchr-lf-iter", name), &stream, |b, s| {
            b.iter(|| black_box(memchr::memchr_iter(b'\n', black_box(s)).fold(0, |a, p| a ^ p)))
        });
    }
    group.finish();
}

criterion_group!(benches, scanner);
criterion_main!(benches);
