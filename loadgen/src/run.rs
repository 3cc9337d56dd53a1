//! The run: probe the targets, build the shared read-only plan (messages, addresses, schedule),
//! start one thread per `--threads` with its own current-thread tokio runtime and its share of
//! the connection slots, print the progress line once a second, stop on the bound or Ctrl-C, and
//! merge the per-thread statistics into the summary and the JSON result.
use crate::cli::{PipeMode, Settings, StartTls};
use crate::client::Slot;
use crate::message::{self, AddressPool, MessageSet};
use crate::probe::{probe, TargetInfo};
use crate::report;
use crate::stats::{Progress, ThreadStats};
use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long in-flight messages may finish after Ctrl-C before the threads are cut off.
const INTERRUPT_GRACE: Duration = Duration::from_secs(1);

/// Flags and the message-count tickets shared by all threads.
pub struct Control {
    /// No new message may start (Ctrl-C).
    pub stop: AtomicBool,
    /// Threads return at once, dropping what is in flight (Ctrl-C plus grace).
    pub abort: AtomicBool,
    /// Measured messages claimed so far (for `--messages`).
    pub tickets: AtomicU64,
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
    pub timeout: Duration,
    pub ehlo_cmd: Box<[u8]>,
    /// Per target: whether sessions begin with STARTTLS; and the TLS client when any does.
    pub starttls: Vec<bool>,
    pub tls: Option<crate::tls::TlsClient>,
    pub messages: MessageSet,
    pub pool: AddressPool,
    pub control: Control,
    pub progress: Progress,
}

/// Set by the SIGINT handler; read by the main loop.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// SIGINT handler: the first Ctrl-C asks for a clean stop, a second one exits at once.
extern "C" fn on_sigint(_: libc::c_int) {
    if INTERRUPTED.swap(true, Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe and takes no pointers.
        unsafe { libc::_exit(130) };
    }
}

/// Installs the SIGINT handler.
fn install_sigint() {
    // SAFETY: the handler only touches an atomic and calls _exit, both async-signal-safe; the
    // function pointer has the C ABI signal() expects.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
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

/// Runs the whole load test and reports it.
pub fn run(s: Settings, argv: Vec<String>) -> Result<(), String> {
    let mut infos = Vec::with_capacity(s.targets.len());
    let mut pipelining = Vec::with_capacity(s.targets.len());
    let mut starttls = Vec::with_capacity(s.targets.len());
    for (t, &addr) in s.targets.iter().zip(&s.target_addrs) {
        let info = probe(t, addr, &s.ehlo, s.timeout)?;
        if s.bdat && !info.chunking_advertised {
            return Err(format!(
                "--bdat: {t} does not advertise CHUNKING in its EHLO reply"
            ));
        }
        let pipe = match s.pipelining {
            PipeMode::Off => false,
            PipeMode::Auto => info.pipelining_advertised,
            PipeMode::Require if info.pipelining_advertised => true,
            PipeMode::Require => {
                return Err(format!("--pipelining: {t} does not advertise PIPELINING"));
            }
        };
        let offers_tls = info.ehlo_capabilities.iter().any(|c| {
            c.split_ascii_whitespace()
                .next()
                .is_some_and(|w| w.eq_ignore_ascii_case("STARTTLS"))
        });
        if s.starttls == StartTls::Require && !offers_tls {
            return Err(format!(
                "--starttls=require: {t} does not advertise STARTTLS in its EHLO reply"
            ));
        }
        starttls.push(s.starttls != StartTls::Off && offers_tls);
        pipelining.push(pipe);
        infos.push(info);
    }
    let start_wall = chrono::Local::now();
    let run_tag = u64::try_from(start_wall.timestamp_nanos_opt().unwrap_or(0)).unwrap_or(0);
    let messages = message::generate(
        s.size_min_bytes,
        s.size_max_bytes,
        s.bdat,
        &s.from,
        &s.to,
        run_tag,
    );
    let message_sizes = messages.variants.iter().map(|v| v.message_bytes).collect();
    let t0 = Instant::now();
    let measure_start = t0 + s.warmup;
    let interval = s.rate_per_s.map_or(Duration::ZERO, |r| {
        Duration::from_secs_f64(s.connections as f64 / r)
    });
    let plan = Arc::new(Plan {
        targets: s.target_addrs.clone(),
        pipelining: pipelining.clone(),
        bdat: s.bdat,
        recipients: s.recipients,
        messages_per_session: s.messages_per_session,
        max_messages: s.messages,
        measure_start,
        deadline: s.duration.map(|d| measure_start + d),
        interval,
        timeout: s.timeout,
        ehlo_cmd: format!("EHLO {}\r\n", s.ehlo)
            .into_bytes()
            .into_boxed_slice(),
        tls: if starttls.contains(&true) {
            Some(crate::tls::TlsClient::new(s.tls_ca.as_deref(), &s.targets)?)
        } else {
            None
        },
        starttls,
        messages,
        pool: AddressPool::new(&s.from, &s.to),
        control: Control {
            stop: AtomicBool::new(false),
            abort: AtomicBool::new(false),
            tickets: AtomicU64::new(0),
        },
        progress: Progress::new(s.threads),
    });
    install_sigint();

    let mut handles = Vec::with_capacity(s.threads);
    for t in 0..s.threads {
        let slots: Vec<usize> = (t..s.connections).step_by(s.threads).collect();
        let plan = plan.clone();
        let rate = s.rate_per_s;
        let h = std::thread::Builder::new()
            .name(format!("loadgen-{t}"))
            .spawn(move || thread_main(t, plan, slots, rate, t0))
            .map_err(|e| format!("cannot start thread: {e}"))?;
        handles.push(h);
    }

    let stopped_by = watch(&plan, &handles, &s, t0);
    let mut stats = ThreadStats::new();
    for h in handles {
        match h.join() {
            Ok(ts) => stats.merge(&ts),
            Err(_) => return Err("a worker thread panicked".into()),
        }
    }
    let end = Instant::now();
    let end_wall = chrono::Local::now();
    let stopped_by = match stopped_by {
        Some(r) => r,
        None if plan
            .max_messages
            .is_some_and(|m| plan.control.tickets.load(Ordering::Relaxed) >= m) =>
        {
            StopReason::Messages
        }
        None if plan.deadline.is_some_and(|d| end >= d) => StopReason::Duration,
        None => StopReason::Unreachable,
    };
    let outcome = Outcome {
        argv,
        targets: infos,
        pipelining_used: pipelining,
        message_sizes,
        start_wall,
        end_wall,
        elapsed: end.saturating_duration_since(measure_start),
        stopped_by,
        stats,
    };
    report::print_summary(&s, &outcome);
    if let Some(path) = &s.json {
        report::write_json(path, &s, &outcome)
            .map_err(|e| format!("--json {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Main-thread loop until all workers end: progress line, Ctrl-C handling.
fn watch(
    plan: &Plan,
    handles: &[std::thread::JoinHandle<ThreadStats>],
    s: &Settings,
    t0: Instant,
) -> Option<StopReason> {
    let mut interrupted_at: Option<Instant> = None;
    let mut next_tick = t0 + Duration::from_secs(1);
    let mut last_accepted = 0u64;
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(20));
        let now = Instant::now();
        if INTERRUPTED.load(Ordering::SeqCst) {
            let at = *interrupted_at.get_or_insert_with(|| {
                plan.control.stop.store(true, Ordering::SeqCst);
                if !s.quiet {
                    eprintln!(
                        "interrupted: finishing messages in flight (Ctrl-C again to quit at once)"
                    );
                }
                now
            });
            if now >= at + INTERRUPT_GRACE {
                plan.control.abort.store(true, Ordering::SeqCst);
            }
        }
        if now >= next_tick {
            next_tick += Duration::from_secs(1);
            let accepted = plan.progress.accepted.load(Ordering::Relaxed);
            if !s.quiet {
                let phase = if now < plan.measure_start {
                    " (warm-up)"
                } else {
                    ""
                };
                eprintln!(
                    "{:>6.1}s{phase}  {:>9} msg/s  p99 {:>9.3} ms  accepted {:>10}  errors {}",
                    now.duration_since(t0).as_secs_f64(),
                    accepted - last_accepted,
                    plan.progress.p99_us() as f64 / 1000.0,
                    accepted,
                    plan.progress.errors.load(Ordering::Relaxed),
                );
            }
            last_accepted = accepted;
        }
    }
    interrupted_at.map(|_| StopReason::Interrupt)
}

/// One worker thread: a current-thread runtime running its slots; returns what they measured.
fn thread_main(
    idx: usize,
    plan: Arc<Plan>,
    slots: Vec<usize>,
    rate: Option<f64>,
    t0: Instant,
) -> ThreadStats {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ringmx-loadgen: thread {idx}: cannot start its runtime: {e}");
            return ThreadStats::new();
        }
    };
    let stats = Rc::new(RefCell::new(ThreadStats::new()));
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let mut tasks = Vec::with_capacity(slots.len());
        for &slot in &slots {
            // Open loop: slot k's first message is due k/rate after the start, so the total
            // rate is spread evenly over time, not sent in bursts of one per connection.
            let first_due = rate.map(|r| t0 + Duration::from_secs_f64(slot as f64 / r));
            let slot = Slot::new(slot, plan.clone(), stats.clone(), first_due);
            tasks.push(tokio::task::spawn_local(slot.run()));
        }
        let snap_stats = stats.clone();
        let snap_plan = plan.clone();
        let ticker = tokio::task::spawn_local(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if let Ok(mut snap) = snap_plan.progress.snapshots[idx].lock() {
                    snap.reset();
                    let _ = snap.add(&snap_stats.borrow().message);
                }
            }
        });
        let all = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        let abort = async {
            while !plan.control.abort.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::select! {
            _ = all => {}
            _ = abort => {}
        }
        ticker.abort();
    });
    drop(local);
    let taken = std::mem::replace(&mut *stats.borrow_mut(), ThreadStats::new());
    taken
}
