//! Validation of ringmx-loadgen's latencies against a server whose service time is known.
//!
//! The server here (std::net, one thread per connection) answers every command at once except
//! the end of a message's data: that reply is held until exactly the service time after the
//! message's MAIL command arrived (2 ms; in the second variant 20 ms for a seeded 5% of the
//! messages). It timestamps each MAIL with the time the kernel received it (SO_TIMESTAMPNS, as
//! the load generator does for replies) and each final reply when its write returned, and
//! records the difference: the truth (of the messages the load generator measured: the last ones
//! to arrive, after its warm-up). The
//! load generator's p50 and p99 per message must be within 5% + 50 µs of the truth's, in closed
//! and in open loop (where the pacer's lateness must also stay within its 50 µs target).
//!
//! The machine is shared and noisy; a run that misses is repeated once, and the lateness
//! histogram of the load generator tells whether its own timing was to blame. The bounds are
//! never widened. Where allowed (root, util-linux's chrt), the server's connection threads and the
//! load generator run under SCHED_FIFO (else at nice -10), so other work on the machine delays
//! them less: what is validated is the instrument, not the scheduler of a shared machine.
use hdrhistogram::Histogram;
use ringmx_wire::XorShift64Star;
use serde_json::Value;
use std::collections::VecDeque;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Relative part of the allowed error.
const TOLERANCE_REL: f64 = 0.05;
/// Absolute part of the allowed error, in µs.
const TOLERANCE_ABS_US: f64 = 50.0;
/// How many times a validation runs before it fails (the first run plus four retries): on a
/// shared 2-vCPU machine the pacer alone misses its 50 µs p99 in a run now and then (another
/// tenant's burst), with the latencies still within bounds, and such a burst once outlasted
/// three attempts (lateness p99 77-88 µs where it is 25-40 µs otherwise); the bounds
/// themselves are never widened.
const ATTEMPTS: usize = 5;

/// Service time of the validation server.
#[derive(Clone, Copy, Debug)]
struct Service {
    base: Duration,
    /// (probability, service time) of the slow messages.
    slow: Option<(f64, Duration)>,
}

/// Every message's MAIL arrival and its truth (MAIL arrival to final reply sent, in µs).
type Samples = Arc<Mutex<Vec<(Instant, u64)>>>;

/// The validation server: its port and its samples.
struct Truth {
    port: u16,
    samples: Samples,
}

/// Starts the validation server on 127.0.0.1 with an ephemeral port.
fn start_server(service: Service) -> Truth {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().unwrap().port();
    let samples: Samples = Arc::new(Mutex::new(Vec::new()));
    let h = samples.clone();
    let seq = Arc::new(AtomicU64::new(0));
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let (h, n) = (h.clone(), seq.fetch_add(1, Ordering::SeqCst));
            std::thread::spawn(move || {
                // Sleeps end when asked, not up to 50 µs later (the default timer slack).
                let _ = rustix::thread::set_current_timer_slack(std::num::NonZeroU64::new(1));
                // Where allowed, this connection's thread runs under SCHED_FIFO like the load
                // generator, so it answers on time on a busy machine.
                let tid = rustix::thread::gettid().as_raw_nonzero().to_string();
                let _ = Command::new("chrt")
                    .args(["-f", "-p", "10", &tid])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status();
                let _ = serve(conn, service, n, &h);
            });
        }
    });
    Truth { port, samples }
}

/// A reader that remembers when each byte arrived (the instant its read returned).
struct TimedReader {
    s: TcpStream,
    buf: Vec<u8>,
    /// Offset in `buf` of the first unconsumed byte.
    pos: usize,
    /// Absolute offset of buf[0].
    base: u64,
    /// (absolute end offset, instant) of each read still covering unconsumed bytes.
    reads: VecDeque<(u64, Instant)>,
}

impl TimedReader {
    /// The next line (with its CRLF) and the instant its first byte arrived; None at EOF.
    fn line(&mut self) -> std::io::Result<Option<(Vec<u8>, Instant)>> {
        loop {
            if let Some(i) = self.buf[self.pos..].iter().position(|&b| b == b'\n') {
                let start_abs = self.base + self.pos as u64;
                let at = self
                    .reads
                    .iter()
                    .find(|(end, _)| *end > start_abs)
                    .map(|r| r.1)
                    .expect("a read covers every buffered byte");
                let line = self.buf[self.pos..self.pos + i + 1].to_vec();
                self.consume(i + 1);
                return Ok(Some((line, at)));
            }
            if !self.fill()? {
                return Ok(None);
            }
        }
    }

    /// Exactly `n` bytes (a BDAT chunk).
    fn exact(&mut self, n: usize) -> std::io::Result<()> {
        while self.buf.len() - self.pos < n {
            if !self.fill()? {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        self.consume(n);
        Ok(())
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        let abs = self.base + self.pos as u64;
        while self.reads.front().is_some_and(|(end, _)| *end <= abs) {
            self.reads.pop_front();
        }
        if self.pos == self.buf.len() {
            self.base += self.pos as u64;
            self.buf.clear();
            self.pos = 0;
        }
    }

    /// One read; false at EOF. The bytes are stamped with the time the kernel received them.
    fn fill(&mut self) -> std::io::Result<bool> {
        let mut chunk = [0u8; 65536];
        let (n, at) = read_stamped(&self.s, &mut chunk)?;
        if n == 0 {
            return Ok(false);
        }
        self.buf.extend_from_slice(&chunk[..n]);
        self.reads
            .push_back((self.base + self.buf.len() as u64, at));
        Ok(true)
    }

    /// Whether bytes are buffered that were not parsed yet (pipelined input).
    fn pending(&self) -> bool {
        self.pos < self.buf.len()
    }
}

/// A blocking recvmsg returning the byte count and the kernel's receive time as an `Instant`
/// (the time the read returned when the socket gives no timestamp).
fn read_stamped(s: &TcpStream, buf: &mut [u8]) -> std::io::Result<(usize, Instant)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec);
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let msg = loop {
        match recvmsg::<()>(
            std::os::fd::AsRawFd::as_raw_fd(s),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other.map_err(std::io::Error::from)?,
        }
    };
    let now = Instant::now();
    let mut at = now;
    for c in msg.cmsgs().into_iter().flatten() {
        if let ControlMessageOwned::ScmTimestampns(t) = c {
            let rx = std::time::UNIX_EPOCH + Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32);
            if let Ok(age) = std::time::SystemTime::now().duration_since(rx) {
                at = now.checked_sub(age).unwrap_or(now);
            }
        }
    }
    Ok((msg.bytes, at))
}

/// One session: replies at once, except the end of data, held until MAIL's arrival + service.
fn serve(
    conn: TcpStream,
    service: Service,
    conn_no: u64,
    truth: &Mutex<Vec<(Instant, u64)>>,
) -> std::io::Result<()> {
    conn.set_nodelay(true)?;
    nix::sys::socket::setsockopt(&conn, nix::sys::socket::sockopt::ReceiveTimestampns, &true)
        .map_err(std::io::Error::from)?;
    let mut w = conn.try_clone()?;
    let mut r = TimedReader {
        s: conn,
        buf: Vec::new(),
        pos: 0,
        base: 0,
        reads: VecDeque::new(),
    };
    let mut rng = XorShift64Star::spread(conn_no);
    let mut out: Vec<u8> = b"220 validation ESMTP\r\n".to_vec();
    w.write_all(&out)?;
    out.clear();
    let mut mail_at: Option<Instant> = None;
    while let Some((line, at)) = r.line()? {
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        let verb = text.split(' ').next().unwrap_or("").to_ascii_uppercase();
        let mut end_of_data = false;
        match verb.as_str() {
            "EHLO" => {
                out.extend_from_slice(b"250-validation\r\n250-PIPELINING\r\n250 CHUNKING\r\n")
            }
            "MAIL" => {
                mail_at = Some(at);
                out.extend_from_slice(b"250 2.1.0 Ok\r\n");
            }
            "RCPT" => out.extend_from_slice(b"250 2.1.5 Ok\r\n"),
            "RSET" | "NOOP" => out.extend_from_slice(b"250 2.0.0 Ok\r\n"),
            "QUIT" => {
                out.extend_from_slice(b"221 2.0.0 Bye\r\n");
                w.write_all(&out)?;
                return Ok(());
            }
            "DATA" => {
                out.extend_from_slice(b"354 go on\r\n");
                w.write_all(&out)?;
                out.clear();
                while let Some((l, _)) = r.line()? {
                    if l == b".\r\n" {
                        break;
                    }
                }
                end_of_data = true;
            }
            "BDAT" => {
                let mut parts = text.split(' ').skip(1);
                let n: usize = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                let last = parts.next().is_some_and(|p| p.eq_ignore_ascii_case("LAST"));
                r.exact(n)?;
                if last {
                    end_of_data = true;
                } else {
                    out.extend_from_slice(b"250 2.0.0 chunk Ok\r\n");
                }
            }
            _ => out.extend_from_slice(b"500 5.5.1 unknown\r\n"),
        }
        if end_of_data {
            // Replies queued before this one go out first, at once.
            w.write_all(&out)?;
            out.clear();
            let roll = rng.next_u64() % 1_000_000;
            let slow = service.slow.is_some_and(|(p, _)| roll as f64 / 1e6 < p);
            let t = if slow {
                service.slow.unwrap().1
            } else {
                service.base
            };
            let start = mail_at.take().expect("end of data after MAIL");
            let until = start + t;
            let now = Instant::now();
            if until > now {
                std::thread::sleep(until - now);
            }
            // On loopback the reply reaches the client's socket inside this write: the truth
            // ends as it starts (a preemption after the write would otherwise count).
            let us = start.elapsed().as_micros() as u64;
            w.write_all(b"250 2.0.0 Ok: queued\r\n")?;
            truth.lock().unwrap().push((start, us));
        } else if !r.pending() {
            w.write_all(&out)?;
            out.clear();
        }
    }
    Ok(())
}

/// Runs the load generator against `port`; returns its JSON result.
fn loadgen(port: u16, args: &[&str]) -> Value {
    static N: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "ringmx-loadgen-validate-{}-{}.json",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    // Where allowed (root, util-linux's chrt), the load generator runs under SCHED_FIFO: its
    // thread then runs as soon as a timer or a reply wakes it, whatever else the machine runs.
    // Its CPU use here is small (one thread, a few hundred messages per second), and the kernel
    // keeps 5% of each second for everything else (sched_rt_runtime_us).
    let bin = env!("CARGO_BIN_EXE_ringmx-loadgen");
    let realtime = Command::new("chrt")
        .args(["-f", "10", "true"])
        .status()
        .is_ok_and(|s| s.success());
    let mut cmd = if realtime {
        let mut c = Command::new("chrt");
        c.args(["-f", "10", bin]);
        c
    } else {
        Command::new(bin)
    };
    let out = cmd
        .args(["--target", &format!("127.0.0.1:{port}"), "-q", "-t", "1"])
        .args(["--timeout", "10s", "--duration", "60s", "--size", "1k"])
        .args(args)
        .arg("--json")
        .arg(&path)
        .output()
        .expect("run ringmx-loadgen");
    assert!(
        out.status.success(),
        "loadgen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&path).expect("JSON written");
    let _ = std::fs::remove_file(&path);
    serde_json::from_str(&text).expect("valid JSON")
}

/// One validation run: what was compared, and whether it passed.
struct Verdict {
    ok: bool,
    report: String,
}

/// Runs the load against a fresh server and compares p50 and p99 with the truth.
fn validate_once(service: Service, args: &[&str], open_loop: bool) -> Verdict {
    let truth = start_server(service);
    let v = loadgen(truth.port, args);
    let m = &v["latency_us"]["message"];
    let n = v["counters"]["messages_accepted"].as_u64().unwrap();
    // The truth of the measured messages: the last n to arrive (the warm-up's came first).
    let mut samples = truth.samples.lock().unwrap().clone();
    samples.sort_by_key(|s| s.0);
    let mut t = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
    for (_, us) in samples
        .iter()
        .skip(samples.len().saturating_sub(n as usize))
    {
        t.saturating_record(*us);
    }
    let mut ok = n > 0 && m["count"].as_u64() == Some(n);
    let mut report = format!(
        "{args:?}: {n} messages measured; the server saw {}\n",
        samples.len()
    );
    for (name, q) in [("p50", 0.50), ("p99", 0.99)] {
        let truth_us = t.value_at_quantile(q) as f64;
        let got_us = m[name].as_u64().unwrap() as f64;
        let allowed = TOLERANCE_REL * truth_us + TOLERANCE_ABS_US;
        let err = got_us - truth_us;
        let pass = err.abs() <= allowed;
        ok &= pass;
        report += &format!(
            "  {name}: loadgen {got_us:.0} µs, truth {truth_us:.0} µs, error {err:+.0} µs, allowed ±{allowed:.0} µs{}\n",
            if pass { "" } else { "  MISS" }
        );
    }
    // The server kept its promise (a sanity check of the test itself, not of the load generator).
    let base_us = service.base.as_micros() as f64;
    let truth_p50 = t.value_at_quantile(0.5) as f64;
    assert!(
        truth_p50 >= base_us && truth_p50 < base_us * 3.0,
        "the validation server's own p50 is {truth_p50} µs for a {base_us} µs service time"
    );
    if open_loop {
        let p = &v["pacer"];
        let late = p["lateness_us"]["p99"].as_u64().unwrap();
        let kept = p["kept"].as_bool().unwrap();
        report += &format!(
            "  pacer: {} paced, {} behind schedule, lateness p99 {late} µs (max {} µs){}\n",
            p["paced"],
            p["behind"],
            p["lateness_us"]["max"],
            if kept {
                ""
            } else {
                "  MISS: the client's own timing was off"
            }
        );
        ok &= kept;
    }
    Verdict { ok, report }
}

/// Validations run one at a time: two at once would load the machine they measure.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Validates, retrying when a run misses (a noisy moment on a shared machine), up to
/// `ATTEMPTS` runs.
fn validate(service: Service, args: &[&str], open_loop: bool) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // What is validated is the instrument, not the scheduler: where allowed (root), this thread,
    // the server threads it starts and the load generator it spawns (both inherit it) run at a
    // higher priority than other builds on a shared machine. The bounds stay the same.
    let _ = rustix::process::setpriority_process(None, -10);
    let mut reports = String::new();
    for attempt in 1..=ATTEMPTS {
        let v = validate_once(service, args, open_loop);
        reports += &format!("attempt {attempt}: {}", v.report);
        if v.ok {
            eprintln!("{reports}");
            return;
        }
        // A miss on a shared machine is most often a burst of other work: let it pass first.
        std::thread::sleep(Duration::from_secs(2));
    }
    panic!("loadgen's latencies are off the truth in {ATTEMPTS} runs:\n{reports}");
}

const FIXED_2MS: Service = Service {
    base: Duration::from_millis(2),
    slow: None,
};
const SLOW_5PCT_20MS: Service = Service {
    base: Duration::from_millis(2),
    slow: Some((0.05, Duration::from_millis(20))),
};

#[test]
fn closed_loop_matches_a_2ms_server() {
    validate(FIXED_2MS, &["-c", "1", "-n", "1500"], false);
}

#[test]
fn closed_loop_matches_a_server_slow_5pct_of_the_time() {
    validate(SLOW_5PCT_20MS, &["-c", "1", "-n", "1500"], false);
}

/// Open loop at 320 msg/s over 8 connections: one message per connection every 25 ms, longer
/// than the slowest service time, so no message waits for another and the truth is the
/// service time alone. A warm-up keeps the first messages, due while connections are still
/// being opened, out of the figures.
#[test]
fn open_loop_matches_a_2ms_server() {
    validate(
        FIXED_2MS,
        &[
            "-c", "8", "--rate", "320", "--warmup", "300ms", "-n", "1500",
        ],
        true,
    );
}

#[test]
fn open_loop_matches_a_server_slow_5pct_of_the_time() {
    validate(
        SLOW_5PCT_20MS,
        &[
            "-c", "8", "--rate", "320", "--warmup", "300ms", "-n", "1500",
        ],
        true,
    );
}

#[test]
fn bdat_closed_and_open_loop_match_a_2ms_server() {
    validate(FIXED_2MS, &["-c", "1", "-n", "800", "--bdat"], false);
    validate(
        FIXED_2MS,
        &[
            "-c", "8", "--rate", "320", "--warmup", "300ms", "-n", "800", "--bdat",
        ],
        true,
    );
}
