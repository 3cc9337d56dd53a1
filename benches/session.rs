//! Session throughput in messages/s with no I/O: pipelined transactions (MAIL, RCPT, DATA or
//! BDAT, body, end) of 1 KiB and 100 KiB bodies through the in-memory driver `Sim` (which
//! copies each read into its pending buffer, as a receive buffer would hold it) and through a
//! bare `Session` driven in place (no copy at all). Message bytes are counted, not kept.

use std::sync::Arc;
use std::time::Instant;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringmx::proto::sim::Sim;
use ringmx::proto::{Config, Output, Part, Session, Step};
use ringmx_wire::dot_stuff;

/// Transactions per timed batch (one read each batch, all pipelined).
const BATCH_1K: usize = 64;
const BATCH_100K: usize = 4;

/// A body of about `size` bytes in 76-character lines, one in 20 starting with a dot.
fn body(size: usize) -> Vec<u8> {
    let text =
        b"The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs. ";
    let mut body = Vec::with_capacity(size);
    let mut line = 0usize;
    while body.len() + 78 <= size {
        if line % 20 == 7 {
            body.push(b'.');
        }
        let take = if line % 20 == 7 { 75 } else { 76 };
        body.extend_from_slice(&text[line % 10..line % 10 + take]);
        body.extend_from_slice(b"\r\n");
        line += 1;
    }
    body
}

/// `count` pipelined transactions carrying `body`, by DATA (dot-stuffed) or one BDAT LAST.
fn batch(body: &[u8], count: usize, bdat: bool) -> Vec<u8> {
    let mut one = b"MAIL FROM:<sender@client.example> BODY=8BITMIME\r\n\
                    RCPT TO:<rcpt@ringmx.example>\r\n"
        .to_vec();
    if bdat {
        one.extend_from_slice(format!("BDAT {} LAST\r\n", body.len()).as_bytes());
        one.extend_from_slice(body);
    } else {
        one.extend_from_slice(b"DATA\r\n");
        dot_stuff(&mut one, body);
    }
    one.repeat(count)
}

/// Feeds one batch to a bare session in place, as a driver would; returns messages stored.
fn drive(session: &mut Session, out: &mut Output, input: &[u8], now: Instant) -> u64 {
    let mut pos = 0;
    let mut stored = 0;
    let mut bytes = 0usize;
    loop {
        let (n, step) = session.handle_input(&input[pos..], now, out);
        for part in &out.body {
            bytes += match part {
                Part::Input(r) => r.len(),
                Part::Static(s) => s.len(),
            };
        }
        out.body.clear();
        pos += n;
        match step {
            Step::Read => break,
            Step::Begin => {}
            Step::Store => {
                session.handle_stored(Ok("0000000001"), out);
                stored += 1;
            }
            Step::Discard | Step::Close | Step::StartTls => panic!("unexpected {step:?}"),
        }
    }
    out.replies.clear();
    black_box(bytes);
    stored
}

fn session(c: &mut Criterion) {
    let mut group = c.benchmark_group("session");
    let cases = [
        ("data-1KiB", 1 << 10, BATCH_1K, false),
        ("bdat-1KiB", 1 << 10, BATCH_1K, true),
        ("data-100KiB", 100 << 10, BATCH_100K, false),
    ];
    for (name, size, count, bdat) in cases {
        let body = body(size);
        let input = batch(&body, count, bdat);
        group.throughput(Throughput::Elements(count as u64));

        let mut sim = Sim::new(Config::default());
        sim.keep_messages = false;
        sim.feed(b"EHLO client.example\r\n");
        sim.feed(&input);
        assert_eq!(
            sim.stored_count, count as u64,
            "{name}: every message stored"
        );
        assert_eq!(
            sim.stored_bytes,
            (count * body.len()) as u64,
            "{name}: bytes"
        );
        group.bench_with_input(BenchmarkId::new("sim", name), &input, |b, input| {
            b.iter(|| {
                sim.feed(black_box(input));
                sim.replies.clear();
            })
        });
        assert!(!sim.closed);

        let now = Instant::now();
        let mut session = Session::new(Arc::new(Config::default()), now);
        let mut out = Output::new();
        session.handle_input(b"EHLO client.example\r\n", now, &mut out);
        out.replies.clear();
        assert_eq!(drive(&mut session, &mut out, &input, now), count as u64);
        group.bench_with_input(BenchmarkId::new("session", name), &input, |b, input| {
            b.iter(|| drive(&mut session, &mut out, black_box(input), now))
        });
    }
    group.finish();
}

criterion_group!(benches, session);
criterion_main!(benches);
