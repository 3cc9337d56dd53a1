//! What counting costs per message: the metric work the connection does for one pipelined
//! 1 KiB message (bytes read, the replies scanned for their codes, the store timed and
//! observed, the message and its recipient counted), with metrics on, against the same code
//! path with metrics off (only the `Option` checks), and the scrape that sums the shards. The
//! figures are compared with the server's CPU time per message (see README, "Metrics and
//! logs"): counting must stay a small fraction of it.

use std::sync::Arc;
use std::time::Instant;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use ringmx::metrics::{Metrics, ShardMetrics};

/// The replies of one pipelined message (MAIL, RCPT, DATA in one batch, then the 250 queued).
const REPLIES: &[u8] = b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n";
const QUEUED: &[u8] = b"250 2.0.0 Ok: queued as 019F0A1B2C3D4E5F6071\r\n";

/// The per-message metric work of the connection loop, as `serve`/`feed`/`start_write` do it;
/// `now` is the time the feed took when the read completed (the loop reads it anyway).
#[inline(never)]
fn one_message(metrics: Option<&ShardMetrics>, bytes: u64, now: Instant) {
    if let Some(m) = metrics {
        m.bytes_received(bytes);
    }
    let timing = metrics.map(|_| (now, 1usize));
    if let (Some(m), Some((started, recipients))) = (metrics, timing) {
        m.store_latency(started.elapsed());
        m.message_stored(recipients);
    }
    if let Some(m) = metrics {
        m.replies(black_box(REPLIES));
        m.replies(black_box(QUEUED));
    }
}

fn counting(c: &mut Criterion) {
    let metrics = Metrics::new(2, None, "uring");
    let shard: Arc<ShardMetrics> = metrics.shard(0);
    c.bench_function("metrics/per_message_on", |b| {
        b.iter(|| one_message(Some(black_box(&shard)), black_box(1100), Instant::now()))
    });
    c.bench_function("metrics/per_message_off", |b| {
        b.iter(|| one_message(black_box(None), black_box(1100), Instant::now()))
    });
    c.bench_function("metrics/clock_read", |b| b.iter(Instant::now));
    c.bench_function("metrics/replies_scan", |b| {
        b.iter(|| {
            shard.replies(black_box(REPLIES));
            shard.replies(black_box(QUEUED));
        })
    });
    c.bench_function("metrics/scrape_2_shards", |b| {
        b.iter(|| black_box(metrics.render()).len())
    });
}

criterion_group!(benches, counting);
criterion_main!(benches);
