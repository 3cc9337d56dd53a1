//! The run: probe the targets, build the shared read-only plan (messages, addresses, schedule),
//! start one thread per `--threads` with its own current-thread tokio runtime and its share of
//! the connection slots, print the progress line once a second, stop on the bound or Ctrl-C, and
//! merge the per-thread statistics into the summary and the JSON result.
use crate::cli::{PipeMode, Settings};
use crate::client::Slot;
use crate::message::{self, AddressPool};
use crate::pacer;
use crate::plan::{Control, Outcome, Plan, StopReason};
use crate::probe::probe;
use crate::report;
use crate::stats::{Progress, ThreadStats};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long in-flight messages may finish after Ctrl-C before the threads are cut off.
const INTERRUPT_GRACE: Duration = Duration::from_secs(1);

/// Installs the SIGINT handler: the first Ctrl-C sets the returned flag (a clean stop: messages
/// in flight finish, the summary is printed), a second one exits at once with status 130.
/// Called first thing, before the targets are probed, so an early Ctrl-C is never lost.
pub fn install_sigint() -> std::io::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    // Registered first, so it sees the flag as the previous Ctrl-C left it.
    signal_hook::flag::register_conditional_shutdown(
        signal_hook::consts::SIGINT,
        130,
        flag.clone(),
    )?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, flag.clone())?;
    Ok(flag)
}

/// Runs the whole load test and reports it; `interrupted` is set by Ctrl-C.
pub fn run(s: Settings, argv: Vec<String>, interrupted: Arc<AtomicBool>) -> Result<(), String> {
    let mut infos = Vec::with_capacity(s.targets.len());
    let mut pipelining = Vec::with_capacity(s.targets.len());
    for (t, &addr) in s.targets.iter().zip(&s.target_addrs) {
        let source = s
            .sources
            .iter()
            .copied()
            .find(|a| a.is_ipv4() == addr.is_ipv4());
        let info = probe(t, addr, &s.ehlo, s.timeout, source, s.proxy)?;
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
        paced_per_thread_per_s: s.rate_per_s.map_or(0.0, |r| r / s.threads as f64),
        timeout: s.timeout,
        ehlo_cmd: format!("EHLO {}\r\n", s.ehlo)
            .into_bytes()
            .into_boxed_slice(),
        proxy: s.proxy,
        sources: s.sources.clone(),
        depth: s.depth,
        messages,
        pool: AddressPool::new(&s.from, &s.to),
        control: Control {
            stop: AtomicBool::new(false),
            abort: AtomicBool::new(false),
            tickets: AtomicU64::new(0),
            source_next: AtomicUsize::new(0),
        },
        progress: Progress::new(s.threads),
    });
    if interrupted.load(Ordering::SeqCst) {
        // Ctrl-C while probing: start nothing new; the summary still comes.
        plan.control.stop.store(true, Ordering::SeqCst);
    }

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

    let stopped_by = watch(&plan, &handles, &s, t0, &interrupted);
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
    interrupted: &AtomicBool,
) -> Option<StopReason> {
    let mut interrupted_at: Option<Instant> = None;
    let mut next_tick = t0 + Duration::from_secs(1);
    let mut last_accepted = 0u64;
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(20));
        let now = Instant::now();
        if interrupted.load(Ordering::SeqCst) {
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
                let secs = now.duration_since(t0).as_secs_f64();
                let rate = accepted - last_accepted;
                let errors = plan.progress.errors.load(Ordering::Relaxed);
                if now < plan.measure_start {
                    // Nothing is measured yet: no percentile to show, only that it runs.
                    eprintln!(
                        "{secs:>6.1}s  warming up ({:.1} s left)",
                        (plan.measure_start - now).as_secs_f64()
                    );
                } else {
                    eprintln!(
                        "{secs:>6.1}s  {rate:>9} msg/s  p99 {:>9.3} ms  accepted {accepted:>10}  errors {errors}",
                        plan.progress.p99_us() as f64 / 1000.0,
                    );
                }
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
    pacer::tighten_timer_slack();
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
