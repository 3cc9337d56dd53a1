//! The open-loop pacer: waits until a message's intended send time with microsecond precision.
//!
//! tokio's timers run on a 1 ms wheel: a `sleep_until` wakes up to a millisecond (plus the
//! runtime's own delay) after its instant, and that lateness would be counted as server latency,
//! because open-loop latency is measured from the intended time. Here each connection slot owns
//! a timerfd (CLOCK_MONOTONIC, an hrtimer, nanosecond resolution) registered with the thread's
//! tokio reactor: it is armed for `due - margin`, and the last microseconds are spent yielding to
//! the runtime (other connections still run) until `due`. The margin follows how late this
//! machine's wake-ups really are (a decaying maximum of the observed overshoot, bounded), so an
//! idle host with deep C-states gets a wider margin and a busy one spins for only a few µs. The
//! spinning is also bounded in total: a thread that paces N messages per second spins at most
//! SPIN_SHARE of its time (the margin is capped at SPIN_SHARE / N), so at high rates the client
//! does not take CPU from a server on the same host; the lateness histogram shows the cost.
//! Worker threads also set their timer slack to 1 ns, so the kernel does not defer the wake-up
//! by its default 50 µs.
//!
//! How late each message really left is recorded by the caller in its own histogram (the pacer
//! lateness), so a run that fell behind its schedule says so instead of hiding it.
use rustix::time::{
    timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags,
    Timespec,
};
use std::num::NonZeroU64;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Bounds of the margin by which the timer fires before the due time. The margin covers the
/// wake-up path (hrtimer interrupt, C-state exit, epoll, the runtime's poll); the CPU spent
/// spinning is at most the margin per paced message.
const MARGIN_MIN_NS: u64 = 10_000;
const MARGIN_MAX_NS: u64 = 100_000;
/// Most of a thread's time spent spinning before due times.
pub const SPIN_SHARE: f64 = 0.05;
/// First margin, before any wake-up was observed.
const MARGIN_START_NS: u64 = 50_000;
/// Extra margin above the largest recent overshoot.
const MARGIN_PAD_NS: u64 = 5_000;
/// The overshoot estimate loses 1/DECAY of itself per wake-up, so one slow wake-up widens the
/// margin at once and is forgotten over a few hundred wake-ups.
const DECAY: u64 = 256;
/// Target of the pacer: a message leaves within this long of its intended time (p99).
pub const LATENESS_TARGET_US: u64 = 50;

/// One slot's timer.
pub struct Pacer {
    fd: AsyncFd<OwnedFd>,
    /// Decaying maximum of how late the timer woke after the instant it was armed for, in ns.
    overshoot_ns: u64,
    /// Largest margin allowed by the spin budget (SPIN_SHARE of this thread's time), in ns.
    margin_cap_ns: u64,
}

impl Pacer {
    /// A disarmed timer registered with the current tokio runtime's reactor (call it inside one);
    /// `paced_per_s` is how many messages this slot's thread paces per second.
    pub fn new(paced_per_s: f64) -> std::io::Result<Pacer> {
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        // SAFETY: the OwnedFd is moved into the AsyncFd, which owns it until it is dropped: the
        // descriptor stays open and names the same timer for the AsyncFd's whole life.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(std::io::Error::from)?;
        Ok(Pacer {
            fd,
            overshoot_ns: MARGIN_START_NS,
            margin_cap_ns: if paced_per_s > 0.0 {
                ((SPIN_SHARE / paced_per_s) * 1e9).min(MARGIN_MAX_NS as f64) as u64
            } else {
                MARGIN_MAX_NS
            },
        })
    }

    /// Returns at `due` (or as soon after as the machine allows), never before it.
    /// `limit` bounds one wait, so the caller can look at its stop flags in between; the
    /// return value says whether `due` was reached.
    pub async fn wait_until(&mut self, due: Instant, limit: Duration) -> bool {
        let margin = Duration::from_nanos(
            (self.overshoot_ns + MARGIN_PAD_NS)
                .clamp(MARGIN_MIN_NS, MARGIN_MAX_NS)
                .min(self.margin_cap_ns),
        );
        let now = Instant::now();
        if due > now + margin {
            let sleep = (due - now - margin).min(limit);
            let wake_at = now + sleep;
            if self.sleep(sleep).await.is_err() {
                // A timerfd that cannot be armed or read: fall back to the runtime's timer.
                tokio::time::sleep(sleep).await;
            }
            let woke = Instant::now();
            let over = u64::try_from(woke.saturating_duration_since(wake_at).as_nanos())
                .unwrap_or(u64::MAX);
            self.overshoot_ns = over.max(self.overshoot_ns - self.overshoot_ns / DECAY);
            if woke + margin < due {
                return false; // woken for the caller's limit, not yet near `due`
            }
        }
        while Instant::now() < due {
            tokio::task::yield_now().await;
        }
        true
    }

    /// One relative one-shot sleep on the timerfd.
    async fn sleep(&mut self, d: Duration) -> std::io::Result<()> {
        let d = d.max(Duration::from_nanos(1)); // zero would disarm the timer
        let spec = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: Timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: d.subsec_nanos() as _,
            },
        };
        timerfd_settime(self.fd.get_ref(), TimerfdTimerFlags::empty(), &spec)?;
        loop {
            let mut guard = self.fd.readable().await?;
            let mut expirations = [0u8; 8];
            match guard.try_io(|fd| Ok(rustix::io::read(fd.get_ref(), &mut expirations)?)) {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

/// Sets this thread's timer slack to 1 ns (the default 50 µs would delay every wake-up).
pub fn tighten_timer_slack() {
    // Failure only costs precision, which the lateness histogram then shows.
    let _ = rustix::thread::set_current_timer_slack(NonZeroU64::new(1));
}
