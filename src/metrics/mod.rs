//! Prometheus metrics (SPEC §8): what each shard counts, and the text a scrape returns.
//!
//! Nothing on the message path is shared between shards: each shard owns one `ShardMetrics`
//! that only its own thread writes, with plain relaxed loads and stores (no locked
//! read-modify-write, so a count costs what an ordinary increment costs), on cache lines of its
//! own. The scrape, on the endpoint's thread (`http`), reads every shard's struct and sums them;
//! a scrape may see one shard's counters a few increments apart from each other, never a torn
//! or lost count. The text is written by the `prometheus-client` crate, and every series of a
//! fixed label set is there from the start, at 0, so dashboards and `rate()` see it before the
//! first event.

pub mod http;

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::proxy;

/// How a connection ended at accept time, as `ringmx_connections_total{result}` counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connection {
    /// Served.
    Accepted = 0,
    /// `RINGMX_MAX_CONNECTIONS` reached: 421 4.3.2.
    RefusedLimit = 1,
    /// `RINGMX_MAX_CONNECTIONS_PER_IP` reached: 421 4.7.0.
    RefusedPerIp = 2,
    /// Arrived while shutting down: 421 4.3.2.
    RefusedShutdown = 3,
}

impl Connection {
    /// Every result, in the order they are exported.
    pub const ALL: [Connection; 4] = [
        Connection::Accepted,
        Connection::RefusedLimit,
        Connection::RefusedPerIp,
        Connection::RefusedShutdown,
    ];

    /// The `result` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Connection::Accepted => "accepted",
            Connection::RefusedLimit => "refused_limit",
            Connection::RefusedPerIp => "refused_per_ip",
            Connection::RefusedShutdown => "refused_shutdown",
        }
    }
}

/// How a TLS handshake ended, as `ringmx_tls_handshakes_total{result}` counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tls {
    /// Completed.
    Ok = 0,
    /// Refused by either side or broken off.
    Failed = 1,
    /// Slower than `RINGMX_TLS_HANDSHAKE_TIMEOUT_SECS`.
    Timeout = 2,
}

impl Tls {
    /// Every result, in the order they are exported.
    pub const ALL: [Tls; 3] = [Tls::Ok, Tls::Failed, Tls::Timeout];

    /// The `result` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Tls::Ok => "ok",
            Tls::Failed => "failed",
            Tls::Timeout => "timeout",
        }
    }
}

/// Reply codes ringmx sends, exported from the start at 0 (any other code seen is exported
/// too, once it has been counted).
pub const REPLY_CODES: [u16; 18] = [
    220, 221, 250, 252, 354, 421, 451, 452, 500, 501, 502, 503, 504, 550, 552, 554, 555, 214,
];
/// Lowest and highest reply codes counted (RFC 5321 4.2: 2yz to 5yz).
const REPLY_CODE_MIN: u16 = 200;
/// See `REPLY_CODE_MIN`.
const REPLY_CODE_MAX: u16 = 599;
/// Counters for codes `REPLY_CODE_MIN..=REPLY_CODE_MAX`.
const REPLY_CODE_SLOTS: usize = (REPLY_CODE_MAX - REPLY_CODE_MIN + 1) as usize;

/// Upper bounds of the latency histograms' buckets, in seconds: 100 µs (a discard or an fsync
/// on NVMe with a write cache) to 10 s (a disk in trouble); past the last, `+Inf`.
pub const LATENCY_BOUNDS_SECONDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// `LATENCY_BOUNDS_SECONDS` in nanoseconds, for comparing without floating point.
const LATENCY_BOUNDS_NS: [u64; 16] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// A counter written by one thread only: a relaxed load and store, no locked instruction.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning shard's thread may call this (two writers could lose counts).
    #[inline]
    pub fn add(&self, n: u64) {
        let now = self.0.load(Ordering::Relaxed);
        self.0.store(now.wrapping_add(n), Ordering::Relaxed);
    }

    /// The current value, from any thread.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A latency histogram written by one thread: a count per bucket and the sum in nanoseconds.
pub struct Histogram {
    /// Observations per bucket, not cumulative; the last is past the highest bound.
    buckets: [Counter; LATENCY_BOUNDS_NS.len() + 1],
    /// Sum of all observations in nanoseconds (585 years before it wraps).
    sum_ns: Counter,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram {
            buckets: std::array::from_fn(|_| Counter::default()),
            sum_ns: Counter::default(),
        }
    }
}

impl Histogram {
    /// Records one observation. Only the owning shard's thread may call this.
    #[inline]
    pub fn observe(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_NS
            .iter()
            .position(|&bound| ns <= bound)
            .unwrap_or(LATENCY_BOUNDS_NS.len());
        self.buckets[bucket].add(1);
        self.sum_ns.add(ns);
    }
}

/// Everything one shard counts. Written only by its shard's thread; read by scrapes.
/// Aligned so that no two shards' counters share a cache line.
#[repr(align(128))]
pub struct ShardMetrics {
    connections: [Counter; 4],
    sessions_active: AtomicI64,
    replies: Box<[Counter]>,
    messages: Counter,
    recipients: Counter,
    bytes_received: Counter,
    tls_handshakes: [Counter; 3],
    proxy_headers: [Counter; 4],
    store_seconds: Histogram,
    fsync_seconds: Histogram,
}

impl Default for ShardMetrics {
    fn default() -> ShardMetrics {
        ShardMetrics {
            connections: Default::default(),
            sessions_active: AtomicI64::new(0),
            replies: (0..REPLY_CODE_SLOTS).map(|_| Counter::default()).collect(),
            messages: Counter::default(),
            recipients: Counter::default(),
            bytes_received: Counter::default(),
            tls_handshakes: Default::default(),
            proxy_headers: Default::default(),
            store_seconds: Histogram::default(),
            fsync_seconds: Histogram::default(),
        }
    }
}

impl ShardMetrics {
    /// Counts a connection by how it ended at accept time.
    #[inline]
    pub fn connection(&self, result: Connection) {
        self.connections[result as usize].add(1);
    }

    /// A session began (after its admission).
    #[inline]
    pub fn session_started(&self) {
        let now = self.sessions_active.load(Ordering::Relaxed);
        self.sessions_active.store(now + 1, Ordering::Relaxed);
    }

    /// A session that `session_started` counted has ended.
    #[inline]
    pub fn session_ended(&self) {
        let now = self.sessions_active.load(Ordering::Relaxed);
        self.sessions_active.store(now - 1, Ordering::Relaxed);
    }

    /// Counts one reply by its code; codes outside 200..=599 are not SMTP replies and ignored.
    #[inline]
    pub fn reply(&self, code: u16) {
        if (REPLY_CODE_MIN..=REPLY_CODE_MAX).contains(&code) {
            self.replies[usize::from(code - REPLY_CODE_MIN)].add(1);
        }
    }

    /// Counts every reply in `replies`, bytes as sent (CRLF-ended lines; a multi-line reply
    /// counts once, at its last line `xyz ` or `xyz`).
    pub fn replies(&self, replies: &[u8]) {
        let mut rest = replies;
        while let [a, b, c, after @ ..] = rest {
            // A reply's last line is `xyz` + space (or nothing) + text; `xyz-` continues it.
            let last_line = matches!(after.first(), None | Some(b' ' | b'\r' | b'\n'));
            if last_line && a.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_digit() {
                let code =
                    u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0');
                self.reply(code);
            }
            match memchr::memchr(b'\n', after) {
                Some(end) => rest = &after[end + 1..],
                None => break,
            }
        }
    }

    /// A message was stored (it got its 250) with `recipients` recipients.
    #[inline]
    pub fn message_stored(&self, recipients: usize) {
        self.messages.add(1);
        self.recipients.add(recipients as u64);
    }

    /// `n` bytes were read from a client.
    #[inline]
    pub fn bytes_received(&self, n: u64) {
        self.bytes_received.add(n);
    }

    /// Counts a TLS handshake by its result.
    #[inline]
    pub fn tls_handshake(&self, result: Tls) {
        self.tls_handshakes[result as usize].add(1);
    }

    /// Counts a PROXY header by its outcome.
    #[inline]
    pub fn proxy_header(&self, outcome: proxy::Outcome) {
        let index = proxy::Outcome::ALL
            .iter()
            .position(|&o| o == outcome)
            .unwrap_or(0);
        self.proxy_headers[index].add(1);
    }

    /// Time from a message's end of data to its 250.
    #[inline]
    pub fn store_latency(&self, elapsed: Duration) {
        self.store_seconds.observe(elapsed);
    }

    /// Time one fsync took.
    #[inline]
    pub fn fsync_latency(&self, elapsed: Duration) {
        self.fsync_seconds.observe(elapsed);
    }
}

/// The whole server's metrics: one `ShardMetrics` per shard, and what a scrape needs besides.
pub struct Metrics {
    shards: Vec<Arc<ShardMetrics>>,
    /// The Maildir root whose file system's free space is exported (None: not a Maildir).
    spool: Option<PathBuf>,
    /// `ringmx_build_info`'s `backend` label: `uring` or `epoll`.
    backend: &'static str,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("shards", &self.shards.len())
            .field("spool", &self.spool)
            .field("backend", &self.backend)
            .finish()
    }
}

impl Metrics {
    /// Metrics for `shards` shards, a spool (if any) and the backend in use, all at zero.
    pub fn new(shards: usize, spool: Option<PathBuf>, backend: &'static str) -> Arc<Metrics> {
        Arc::new(Metrics {
            shards: (0..shards)
                .map(|_| Arc::new(ShardMetrics::default()))
                .collect(),
            spool,
            backend,
        })
    }

    /// Shard `id`'s counters, for that shard alone to write.
    pub fn shard(&self, id: usize) -> Arc<ShardMetrics> {
        Arc::clone(&self.shards[id])
    }

    /// The Prometheus text exposition of every metric, summed over the shards.
    pub fn render(self: &Arc<Metrics>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Scrape(Arc::clone(self))));
        let mut text = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry);
        text
    }

    /// The sum over shards of one counter.
    fn sum(&self, counter: impl Fn(&ShardMetrics) -> &Counter) -> u64 {
        self.shards
            .iter()
            .fold(0u64, |n, s| n.wrapping_add(counter(s).get()))
    }

    /// A histogram summed over shards: (sum in seconds, count, non-cumulative buckets).
    fn histogram(&self, pick: impl Fn(&ShardMetrics) -> &Histogram) -> (f64, u64, Vec<(f64, u64)>) {
        let mut buckets: Vec<(f64, u64)> = LATENCY_BOUNDS_SECONDS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .map(|bound| (bound, 0))
            .collect();
        let mut sum_ns = 0u64;
        for shard in &self.shards {
            let h = pick(shard);
            for (total, counter) in buckets.iter_mut().zip(&h.buckets) {
                total.1 += counter.get();
            }
            sum_ns = sum_ns.wrapping_add(h.sum_ns.get());
        }
        let count = buckets.iter().map(|b| b.1).sum();
        (sum_ns as f64 / 1e9, count, buckets)
    }
}

/// Free bytes for an unprivileged writer on the file system holding `path` (statvfs).
pub fn free_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: statvfs is plain data for which all zero bits is a valid value.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string and `stat` a valid, writable statvfs.
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The field types are u64 on 64-bit Linux but narrower on some 32-bit targets.
    #[allow(clippy::useless_conversion)]
    let free = u64::from(stat.f_bavail).saturating_mul(u64::from(stat.f_frsize));
    Ok(free)
}

/// The collector a scrape's registry runs: reads the shards and writes every metric.
#[derive(Debug)]
struct Scrape(Arc<Metrics>);

/// Writes one counter family with a `result` label over fixed values.
fn encode_results<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl Iterator<Item = (&'a str, u64)>,
) -> Result<(), fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (result, value) in values {
        let labels = [("result", result)];
        ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Writes one counter without labels.
fn encode_counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), fmt::Error> {
    let counter = ConstCounter::new(value);
    counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)
}

/// Writes one gauge without labels.
fn encode_gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), fmt::Error> {
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
}

/// Writes one latency histogram.
fn encode_histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    (sum, count, buckets): (f64, u64, Vec<(f64, u64)>),
) -> Result<(), fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    metric.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let m = &self.0;
        let e = &mut encoder;
        encode_results(
            e,
            "ringmx_connections",
            "Connections by how they ended at accept time.",
            Connection::ALL
                .iter()
                .map(|&c| (c.as_str(), m.sum(|s| &s.connections[c as usize]))),
        )?;
        let active: i64 = m
            .shards
            .iter()
            .map(|s| s.sessions_active.load(Ordering::Relaxed))
            .sum();
        encode_gauge(
            e,
            "ringmx_sessions_active",
            "SMTP sessions open now.",
            active.max(0),
        )?;
        {
            let mut metric = e.encode_descriptor(
                "ringmx_replies",
                "SMTP replies sent, by reply code.",
                None,
                MetricType::Counter,
            )?;
            for slot in 0..REPLY_CODE_SLOTS {
                let code = REPLY_CODE_MIN + slot as u16;
                let value = m.sum(|s| &s.replies[slot]);
                if value == 0 && !REPLY_CODES.contains(&code) {
                    continue;
                }
                let code = code.to_string();
                let labels = [("code", code.as_str())];
                ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
            }
        }
        encode_counter(
            e,
            "ringmx_messages",
            "Messages stored (acknowledged with 250).",
            m.sum(|s| &s.messages),
        )?;
        encode_counter(
            e,
            "ringmx_recipients",
            "Recipients of stored messages.",
            m.sum(|s| &s.recipients),
        )?;
        encode_counter(
            e,
            "ringmx_bytes_received",
            "Bytes read from SMTP clients.",
            m.sum(|s| &s.bytes_received),
        )?;
        encode_results(
            e,
            "ringmx_tls_handshakes",
            "STARTTLS handshakes by result.",
            Tls::ALL
                .iter()
                .map(|&t| (t.as_str(), m.sum(|s| &s.tls_handshakes[t as usize]))),
        )?;
        encode_results(
            e,
            "ringmx_proxy_headers",
            "PROXY protocol headers by result.",
            proxy::Outcome::ALL
                .iter()
                .enumerate()
                .map(|(i, o)| (o.as_str(), m.sum(|s| &s.proxy_headers[i]))),
        )?;
        encode_histogram(
            e,
            "ringmx_message_store_seconds",
            "Time from a message's end of data to its 250.",
            m.histogram(|s| &s.store_seconds),
        )?;
        encode_histogram(
            e,
            "ringmx_fsync_seconds",
            "Time each fsync of the spool took, with the rename into new/ (from the last write when that write carried the fsync); with RINGMX_FSYNC=syncfs, each shared syncfs.",
            m.histogram(|s| &s.fsync_seconds),
        )?;
        if let Some(spool) = &m.spool {
            if let Ok(free) = free_bytes(spool) {
                encode_gauge(
                    e,
                    "ringmx_spool_free_bytes",
                    "Bytes free for ringmx on the spool's file system.",
                    i64::try_from(free).unwrap_or(i64::MAX),
                )?;
            }
        }
        let info = [
            ("version", env!("CARGO_PKG_VERSION")),
            ("backend", m.backend),
        ];
        let mut metric = e.encode_descriptor(
            "ringmx_build",
            "ringmx build and backend.",
            None,
            MetricType::Info,
        )?;
        metric.encode_info(&info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample line `series` (name and labels exactly as written) in `text`.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().unwrap())
        })
    }

    #[test]
    fn every_fixed_series_is_there_at_zero() {
        let m = Metrics::new(2, None, "epoll");
        let text = m.render();
        for c in Connection::ALL {
            let series = format!("ringmx_connections_total{{result=\"{}\"}}", c.as_str());
            assert_eq!(sample(&text, &series), Some(0.0), "{series}\n{text}");
        }
        for t in Tls::ALL {
            let series = format!("ringmx_tls_handshakes_total{{result=\"{}\"}}", t.as_str());
            assert_eq!(sample(&text, &series), Some(0.0), "{series}");
        }
        for o in proxy::Outcome::ALL {
            let series = format!("ringmx_proxy_headers_total{{result=\"{}\"}}", o.as_str());
            assert_eq!(sample(&text, &series), Some(0.0), "{series}");
        }
        for code in REPLY_CODES {
            let series = format!("ringmx_replies_total{{code=\"{code}\"}}");
            assert_eq!(sample(&text, &series), Some(0.0), "{series}");
        }
        for name in [
            "ringmx_sessions_active",
            "ringmx_messages_total",
            "ringmx_recipients_total",
            "ringmx_bytes_received_total",
            "ringmx_message_store_seconds_count",
            "ringmx_message_store_seconds_sum",
            "ringmx_fsync_seconds_count",
        ] {
            assert_eq!(sample(&text, name), Some(0.0), "{name}");
        }
        assert_eq!(
            sample(&text, "ringmx_message_store_seconds_bucket{le=\"+Inf\"}"),
            Some(0.0)
        );
        let info = format!(
            "ringmx_build_info{{version=\"{}\",backend=\"epoll\"}}",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(sample(&text, &info), Some(1.0), "{text}");
        assert!(text.contains("# TYPE ringmx_connections_total counter\n"));
        assert!(text.contains("# TYPE ringmx_message_store_seconds histogram\n"));
        // No spool: no free-space gauge rather than a made-up one.
        assert!(!text.contains("ringmx_spool_free_bytes"));
    }

    #[test]
    fn a_scrape_sums_the_shards() {
        let m = Metrics::new(3, None, "uring");
        let (a, b, c) = (m.shard(0), m.shard(1), m.shard(2));
        a.connection(Connection::Accepted);
        b.connection(Connection::Accepted);
        c.connection(Connection::RefusedPerIp);
        a.session_started();
        b.session_started();
        b.session_started();
        b.session_ended();
        a.message_stored(3);
        c.message_stored(1);
        a.bytes_received(100);
        c.bytes_received(23);
        b.tls_handshake(Tls::Timeout);
        c.proxy_header(proxy::Outcome::Local);
        a.proxy_header(proxy::Outcome::Malformed);
        a.replies(b"220 mx ESMTP ringmx\r\n250-mx\r\n250-PIPELINING\r\n250 SMTPUTF8\r\n");
        b.replies(b"250 2.0.0 Ok\r\n354 go\r\n599 odd\r\n199 not smtp\r\n25 short\r\n");
        let text = m.render();
        let get = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series}"));
        assert_eq!(get("ringmx_connections_total{result=\"accepted\"}"), 2.0);
        assert_eq!(
            get("ringmx_connections_total{result=\"refused_per_ip\"}"),
            1.0
        );
        assert_eq!(
            get("ringmx_connections_total{result=\"refused_limit\"}"),
            0.0
        );
        assert_eq!(get("ringmx_sessions_active"), 2.0);
        assert_eq!(get("ringmx_messages_total"), 2.0);
        assert_eq!(get("ringmx_recipients_total"), 4.0);
        assert_eq!(get("ringmx_bytes_received_total"), 123.0);
        assert_eq!(get("ringmx_tls_handshakes_total{result=\"timeout\"}"), 1.0);
        assert_eq!(get("ringmx_proxy_headers_total{result=\"local\"}"), 1.0);
        assert_eq!(get("ringmx_proxy_headers_total{result=\"malformed\"}"), 1.0);
        assert_eq!(get("ringmx_proxy_headers_total{result=\"ok\"}"), 0.0);
        assert_eq!(get("ringmx_replies_total{code=\"220\"}"), 1.0);
        assert_eq!(get("ringmx_replies_total{code=\"250\"}"), 2.0);
        assert_eq!(get("ringmx_replies_total{code=\"354\"}"), 1.0);
        assert_eq!(get("ringmx_replies_total{code=\"599\"}"), 1.0);
        assert!(!text.contains("code=\"199\""));
        assert!(!text.contains("code=\"598\""));
    }

    #[test]
    fn histograms_bucket_and_sum() {
        let m = Metrics::new(2, None, "uring");
        m.shard(0).store_latency(Duration::from_micros(50));
        m.shard(1).store_latency(Duration::from_micros(100));
        m.shard(1).store_latency(Duration::from_millis(3));
        m.shard(0).store_latency(Duration::from_secs(60));
        m.shard(0).fsync_latency(Duration::from_millis(1));
        let text = m.render();
        let get = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series}"));
        assert_eq!(
            get("ringmx_message_store_seconds_bucket{le=\"0.0001\"}"),
            2.0
        );
        assert_eq!(
            get("ringmx_message_store_seconds_bucket{le=\"0.0025\"}"),
            2.0
        );
        assert_eq!(
            get("ringmx_message_store_seconds_bucket{le=\"0.005\"}"),
            3.0
        );
        assert_eq!(get("ringmx_message_store_seconds_bucket{le=\"10\"}"), 3.0);
        assert_eq!(get("ringmx_message_store_seconds_bucket{le=\"+Inf\"}"), 4.0);
        assert_eq!(get("ringmx_message_store_seconds_count"), 4.0);
        let sum = get("ringmx_message_store_seconds_sum");
        assert!((sum - 60.00315).abs() < 1e-9, "{sum}");
        assert_eq!(get("ringmx_fsync_seconds_bucket{le=\"0.001\"}"), 1.0);
        assert_eq!(get("ringmx_fsync_seconds_bucket{le=\"0.0005\"}"), 0.0);
    }

    #[test]
    fn spool_free_bytes_comes_from_statvfs() {
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics::new(1, Some(dir.path().to_path_buf()), "uring");
        let text = m.render();
        let free = sample(&text, "ringmx_spool_free_bytes").unwrap();
        assert!(free > 0.0, "{text}");
        assert!(free_bytes(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn bounds_in_seconds_and_nanoseconds_agree() {
        for (s, ns) in LATENCY_BOUNDS_SECONDS.iter().zip(LATENCY_BOUNDS_NS) {
            assert_eq!((s * 1e9).round() as u64, ns);
        }
        assert!(LATENCY_BOUNDS_NS.windows(2).all(|w| w[0] < w[1]));
    }
}
