//! Measurements: one `ThreadStats` per worker thread (no sharing, no locks on the message path),
//! merged once at the end. Latencies go into HdrHistograms with 3 significant digits, in
//! microseconds; counters count outcomes, and every non-2xx/3xx reply is counted by its code.
//! `Progress` is the only shared state: a few atomics and a once-a-second histogram snapshot per
//! thread, read by the live progress line.
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Highest latency a histogram tracks (one hour, in µs); longer values are clamped to it.
pub const LATENCY_MAX_US: u64 = 3_600_000_000;
/// Reply codes are three digits, so a flat array indexes them without a map.
pub const CODES: usize = 600;

/// A fresh latency histogram (1 µs .. 1 h, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts; failure would be a programming error.
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("constant histogram bounds are valid")
}

/// Microseconds in `d`, saturating.
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Microseconds in `d`, rounded up (a lateness of 0.3 µs is not "on time").
pub fn micros_ceil(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1000)).unwrap_or(u64::MAX)
}

/// Everything one thread measured.
pub struct ThreadStats {
    /// TCP connect until the greeting is read.
    pub connect: Histogram<u64>,
    /// MAIL written (or its intended time in open loop) until the reply after the data.
    pub message: Histogram<u64>,
    /// TCP connect until QUIT's reply.
    pub session: Histogram<u64>,
    /// Open loop: how late the pacer sent a message it had waited for (intended time to send).
    pub lateness: Histogram<u64>,
    /// Open loop: messages already due when their connection became free (the previous
    /// message's replies came later than the schedule allowed): not the pacer's lateness.
    pub behind: u64,
    pub accepted: u64,
    pub refused: u64,
    pub failed: u64,
    pub bytes_sent: u64,
    /// Sessions that were open in the measured time (opened in it, or opened during warm-up and
    /// still open when it began).
    pub sessions: u64,
    /// Sessions opened in the measured time (sessions per second counts these).
    pub sessions_opened: u64,
    pub connect_errors: u64,
    pub timeouts: u64,
    pub io_errors: u64,
    pub protocol_errors: u64,
    pub closed_by_server: u64,
    /// Messages refused, by the code that refused them.
    pub refused_by_code: Box<[u64; CODES]>,
    /// Every reply outside 2xx/3xx, by code (a refused RCPT of an accepted message included).
    pub replies_by_code: Box<[u64; CODES]>,
}

impl ThreadStats {
    /// Empty statistics.
    pub fn new() -> ThreadStats {
        ThreadStats {
            connect: new_histogram(),
            message: new_histogram(),
            session: new_histogram(),
            lateness: new_histogram(),
            behind: 0,
            accepted: 0,
            refused: 0,
            failed: 0,
            bytes_sent: 0,
            sessions: 0,
            sessions_opened: 0,
            connect_errors: 0,
            timeouts: 0,
            io_errors: 0,
            protocol_errors: 0,
            closed_by_server: 0,
            refused_by_code: Box::new([0; CODES]),
            replies_by_code: Box::new([0; CODES]),
        }
    }

    /// Adds another thread's statistics into this one.
    pub fn merge(&mut self, o: &ThreadStats) {
        // Histograms of identical bounds always add; a failure would be a programming error.
        self.connect.add(&o.connect).expect("same histogram bounds");
        self.message.add(&o.message).expect("same histogram bounds");
        self.session.add(&o.session).expect("same histogram bounds");
        self.lateness
            .add(&o.lateness)
            .expect("same histogram bounds");
        self.behind += o.behind;
        self.accepted += o.accepted;
        self.refused += o.refused;
        self.failed += o.failed;
        self.bytes_sent += o.bytes_sent;
        self.sessions += o.sessions;
        self.sessions_opened += o.sessions_opened;
        self.connect_errors += o.connect_errors;
        self.timeouts += o.timeouts;
        self.io_errors += o.io_errors;
        self.protocol_errors += o.protocol_errors;
        self.closed_by_server += o.closed_by_server;
        for i in 0..CODES {
            self.refused_by_code[i] += o.refused_by_code[i];
            self.replies_by_code[i] += o.replies_by_code[i];
        }
    }

    /// Counts a reply outside 2xx/3xx.
    pub fn count_reply(&mut self, code: u16) {
        if !(200..400).contains(&code) {
            if let Some(c) = self.replies_by_code.get_mut(code as usize) {
                *c += 1;
            }
        }
    }

    /// Counts a message refused with `code`.
    pub fn count_refused(&mut self, code: u16) {
        self.refused += 1;
        if let Some(c) = self.refused_by_code.get_mut(code as usize) {
            *c += 1;
        }
    }

    /// Non-zero entries of a by-code table, in code order.
    pub fn codes(table: &[u64; CODES]) -> Vec<(u16, u64)> {
        table
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(c, &n)| (c as u16, n))
            .collect()
    }
}

/// Live numbers for the progress line, shared by all threads.
pub struct Progress {
    pub accepted: AtomicU64,
    pub errors: AtomicU64,
    /// Per thread: a copy of its message histogram, refreshed once a second.
    pub snapshots: Vec<Mutex<Histogram<u64>>>,
}

impl Progress {
    /// Counters at zero and one empty snapshot per thread.
    pub fn new(threads: usize) -> Progress {
        Progress {
            accepted: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            snapshots: (0..threads).map(|_| Mutex::new(new_histogram())).collect(),
        }
    }

    /// Adds one accepted message.
    pub fn add_accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds one error (refused, failed, connect error, timeout).
    pub fn add_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// p99 of the message latency over all snapshots, in µs (0 when empty).
    pub fn p99_us(&self) -> u64 {
        let mut all = new_histogram();
        for s in &self.snapshots {
            if let Ok(h) = s.lock() {
                let _ = all.add(&*h);
            }
        }
        if all.is_empty() {
            0
        } else {
            all.value_at_quantile(0.99)
        }
    }
}
