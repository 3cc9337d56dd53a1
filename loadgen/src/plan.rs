//! What the parts of a run share, in one module that the others import (the run builds these,
//! the connection slots read the `Plan`, the report reads the `Outcome`): the read-only plan of
//! the load with its few shared flags, why the run stopped, and what it measured.
use crate::message::{AddressPool, MessageSet};
use crate::probe::TargetInfo;
use crate::proxy::ProxyVersion;
use crate::stats::{Progress, ThreadStats};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Flags and the message-count tickets shared by all threads.
pub struct Control {
    /// No new message may start (Ctrl-C).
    pub stop: AtomicBool,
    /// Threads return at once, dropping what is in flight (Ctrl-C plus grace).
    pub abort: AtomicBool,
    /// Measured messages claimed so far (for `--messages`).
    pub tickets: AtomicU64,
    /// Connections opened so far: picks the next `--source` address, round robin.
    pub source_next: AtomicUsize,
}

/// Everything the connection slots read: built once, shared read-only (plus `control`).
pub struct Plan {
    pub targets: Vec<SocketAddr>,
    /// Per target: whether commands are pipelined.
    pub pipelining: Vec<bool>,
    pub bdat: bool,
    pub recipients: usize,
    pub messages_per_session: u64,
    pub max_messages: Option<u64>,
    /// End of warm-up: messages due before it count in no statistic.
    pub measure_start: Instant,
    /// No message starts at or after this instant (duration bound).
    pub deadline: Option<Instant>,
    /// Open loop: time between two messages of one connection (zero in closed loop).
    pub interval: Duration,
    /// Open loop: messages per second paced by one worker thread (rate / threads).
    pub paced_per_thread_per_s: f64,
    pub timeout: Duration,
    pub ehlo_cmd: Box<[u8]>,
    /// `--proxy`: the PROXY header to send first on every connection.
    pub proxy: Option<ProxyVersion>,
    /// `--source`: local addresses to bind connections to, round robin.
    pub sources: Vec<IpAddr>,
    /// `--depth`: BDAT transactions in flight per connection.
    pub depth: usize,
    pub messages: MessageSet,
    pub pool: AddressPool,
    pub control: Control,
    pub progress: Progress,
}

impl Plan {
    /// The local address for the next connection to `target` (round robin over the `--source`
    /// addresses of its family), or None to let the kernel pick.
    pub fn next_source(&self, target: SocketAddr) -> Option<IpAddr> {
        let same: Vec<IpAddr> = self
            .sources
            .iter()
            .copied()
            .filter(|s| s.is_ipv4() == target.is_ipv4())
            .collect();
        if same.is_empty() {
            return None;
        }
        let k = self.control.source_next.fetch_add(1, Ordering::Relaxed);
        Some(same[k % same.len()])
    }
}

/// Why the run ended.
#[derive(Clone, Copy, Debug)]
pub enum StopReason {
    Messages,
    Duration,
    Interrupt,
    /// Every slot gave up after its target stayed unreachable for a whole `--timeout`.
    Unreachable,
}

impl StopReason {
    /// Name in the summary and JSON.
    pub fn name(self) -> &'static str {
        match self {
            StopReason::Messages => "messages",
            StopReason::Duration => "duration",
            StopReason::Interrupt => "interrupt",
            StopReason::Unreachable => "unreachable",
        }
    }
}

/// What the report needs besides the settings.
pub struct Outcome {
    pub argv: Vec<String>,
    pub targets: Vec<TargetInfo>,
    pub pipelining_used: Vec<bool>,
    pub message_sizes: Vec<usize>,
    pub start_wall: chrono::DateTime<chrono::Local>,
    pub end_wall: chrono::DateTime<chrono::Local>,
    /// Measured time: end of warm-up to the end of the run.
    pub elapsed: Duration,
    pub stopped_by: StopReason,
    pub stats: ThreadStats,
}
