//! End-to-end tests of ringmx-loadgen against real SMTP servers on 127.0.0.1: a tiny SMTP sink
//! written here (std::net, one thread per connection) that counts what it accepted, and
//! Postfix's smtp-sink when it is installed. The count the load generator reports must equal
//! what the server saw, to the message. Every run is bounded by a message count and a duration,
//! and no test asserts on speed.
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the test sink behaves.
#[derive(Clone)]
struct SinkConfig {
    pipelining: bool,
    chunking: bool,
    /// Reply to every end of data (e.g. "250 2.0.0 Ok" or "552 5.3.4 Too big").
    final_reply: &'static str,
    /// Stall this long once, before answering the end of data of this message number (1-based).
    stall_at: Option<(u64, Duration)>,
    /// Expect a PROXY header ("v1" or "v2") first, naming the connection's real addresses.
    proxy: Option<&'static str>,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            pipelining: true,
            chunking: true,
            final_reply: "250 2.0.0 Ok: queued",
            stall_at: None,
            proxy: None,
        }
    }
}

/// A running test sink: its port and counters.
struct Sink {
    port: u16,
    accepted: Arc<AtomicU64>,
    ends_of_data: Arc<AtomicU64>,
    /// The client address of every connection, as the kernel reports it.
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    /// Connections whose PROXY header was missing or wrong (with `proxy` set), and good ones.
    bad_headers: Arc<AtomicU64>,
    good_headers: Arc<AtomicU64>,
}

/// Starts a sink on 127.0.0.1 with an ephemeral port; it runs until the test process ends.
fn start_sink(cfg: SinkConfig) -> Sink {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let port = l.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicU64::new(0));
    let ends = Arc::new(AtomicU64::new(0));
    let stalled = Arc::new(AtomicBool::new(false));
    let peers = Arc::new(Mutex::new(Vec::new()));
    let (bad, good) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (a, e, p, b, g) = (
        accepted.clone(),
        ends.clone(),
        peers.clone(),
        bad.clone(),
        good.clone(),
    );
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            if let Ok(addr) = conn.peer_addr() {
                p.lock().unwrap().push(addr);
            }
            let (cfg, a, e, st) = (cfg.clone(), a.clone(), e.clone(), stalled.clone());
            let (b, g) = (b.clone(), g.clone());
            std::thread::spawn(move || {
                let _ = serve(conn, &cfg, &a, &e, &st, (&b, &g));
            });
        }
    });
    Sink {
        port,
        accepted,
        ends_of_data: ends,
        peers,
        bad_headers: bad,
        good_headers: good,
    }
}

/// One SMTP session of the test sink; replies are flushed when no pipelined input is pending.
fn serve(
    conn: TcpStream,
    cfg: &SinkConfig,
    accepted: &AtomicU64,
    ends: &AtomicU64,
    stalled: &AtomicBool,
    (bad, good): (&AtomicU64, &AtomicU64),
) -> std::io::Result<()> {
    conn.set_nodelay(true)?;
    let (client, server) = (conn.peer_addr()?, conn.local_addr()?);
    let mut r = BufReader::new(conn.try_clone()?);
    let mut w = std::io::BufWriter::new(conn);
    if let Some(version) = cfg.proxy {
        // What HAProxy would send for this connection, built here independently of loadgen.
        let want: Vec<u8> = if version == "v1" {
            format!(
                "PROXY TCP4 {} {} {} {}\r\n",
                client.ip(),
                server.ip(),
                client.port(),
                server.port()
            )
            .into_bytes()
        } else {
            let (std::net::IpAddr::V4(c), std::net::IpAddr::V4(sv)) = (client.ip(), server.ip())
            else {
                panic!("the test sink listens on IPv4");
            };
            let mut h = vec![
                0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x11,
                0x00, 0x0c,
            ];
            h.extend_from_slice(&c.octets());
            h.extend_from_slice(&sv.octets());
            h.extend_from_slice(&client.port().to_be_bytes());
            h.extend_from_slice(&server.port().to_be_bytes());
            h
        };
        let mut got = vec![0u8; want.len()];
        if r.read_exact(&mut got).is_err() || got != want {
            bad.fetch_add(1, Ordering::SeqCst);
            w.write_all(b"554 5.7.0 bad PROXY header\r\n")?;
            w.flush()?;
            return Ok(());
        }
        good.fetch_add(1, Ordering::SeqCst);
    }
    w.write_all(b"220 test-sink ESMTP\r\n")?;
    w.flush()?;
    let mut line = Vec::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        let verb = text.split(' ').next().unwrap_or("").to_ascii_uppercase();
        let mut end_of_data = false;
        match verb.as_str() {
            "EHLO" => {
                w.write_all(b"250-test-sink\r\n")?;
                if cfg.pipelining {
                    w.write_all(b"250-PIPELINING\r\n")?;
                }
                if cfg.chunking {
                    w.write_all(b"250-CHUNKING\r\n")?;
                }
                w.write_all(b"250 8BITMIME\r\n")?;
            }
            "MAIL" => w.write_all(b"250 2.1.0 Ok\r\n")?,
            "RCPT" => w.write_all(b"250 2.1.5 Ok\r\n")?,
            "RSET" | "NOOP" => w.write_all(b"250 2.0.0 Ok\r\n")?,
            "QUIT" => {
                w.write_all(b"221 2.0.0 Bye\r\n")?;
                w.flush()?;
                return Ok(());
            }
            "DATA" => {
                w.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")?;
                w.flush()?;
                loop {
                    line.clear();
                    if r.read_until(b'\n', &mut line)? == 0 {
                        return Ok(());
                    }
                    assert!(line.ends_with(b"\r\n"), "loadgen sent a bare LF line");
                    if line == b".\r\n" {
                        break;
                    }
                }
                end_of_data = true;
            }
            "BDAT" => {
                let mut parts = text.split(' ').skip(1);
                let n: usize = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                let last = parts.next().is_some_and(|p| p.eq_ignore_ascii_case("LAST"));
                let mut chunk = vec![0u8; n];
                r.read_exact(&mut chunk)?;
                if last {
                    end_of_data = true;
                } else {
                    w.write_all(b"250 2.0.0 chunk Ok\r\n")?;
                }
            }
            _ => w.write_all(b"500 5.5.1 unknown command\r\n")?,
        }
        if end_of_data {
            let n = ends.fetch_add(1, Ordering::SeqCst) + 1;
            if let Some((at, pause)) = cfg.stall_at {
                if n >= at && !stalled.swap(true, Ordering::SeqCst) {
                    w.flush()?;
                    std::thread::sleep(pause);
                }
            }
            if cfg.final_reply.starts_with('2') {
                accepted.fetch_add(1, Ordering::SeqCst);
            }
            w.write_all(cfg.final_reply.as_bytes())?;
            w.write_all(b"\r\n")?;
        }
        if r.buffer().is_empty() {
            w.flush()?;
        }
    }
}

/// A fresh path for a JSON result.
fn json_path() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "ringmx-loadgen-test-{}-{}.json",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ))
}

/// Runs the load generator with `args` plus --json/--quiet and safety bounds; returns the JSON.
fn loadgen(port: u16, args: &[&str]) -> Value {
    loadgen_for(port, "20s", args)
}

/// As `loadgen`, with `duration` as --duration (the bound when `args` sets no message count).
fn loadgen_for(port: u16, duration: &str, args: &[&str]) -> Value {
    let path = json_path();
    let target = format!("127.0.0.1:{port}");
    let out = Command::new(env!("CARGO_BIN_EXE_ringmx-loadgen"))
        .args([
            "--target",
            &target,
            "--quiet",
            "--timeout",
            "10s",
            "--duration",
            duration,
        ])
        .args(args)
        .arg("--json")
        .arg(&path)
        .output()
        .expect("run ringmx-loadgen");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "loadgen failed: {stdout}\n{stderr}");
    assert!(stdout.contains("msgs/s"), "summary missing: {stdout}");
    let text = std::fs::read_to_string(&path).expect("JSON result written");
    let _ = std::fs::remove_file(&path);
    serde_json::from_str(&text).expect("valid JSON")
}

/// A counter of the JSON result.
fn counter(v: &Value, name: &str) -> u64 {
    v["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("counter {name} missing: {v}"))
}

/// Asserts the loadgen's count equals the sink's, and that nothing failed.
fn assert_exact(v: &Value, sink: &Sink, n: u64) {
    assert_eq!(counter(v, "messages_accepted"), n, "{v}");
    assert_eq!(sink.accepted.load(Ordering::SeqCst), n, "sink count");
    assert_eq!(counter(v, "messages_refused"), 0);
    assert_eq!(counter(v, "messages_failed"), 0);
    assert_eq!(v["latency_us"]["message"]["count"].as_u64(), Some(n));
}

#[test]
fn closed_loop_pipelined_count_matches_sink() {
    let sink = start_sink(SinkConfig::default());
    let v = loadgen(
        sink.port,
        &["-n", "2000", "-c", "4", "-t", "2", "--size", "1k..8k"],
    );
    assert_exact(&v, &sink, 2000);
    assert_eq!(v["settings"]["pipelining_used"][0], true);
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["targets"][0]["greeting"][0], "test-sink ESMTP");
    assert!(v["targets"][0]["ehlo_capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c == "PIPELINING"));
    assert!(v["histograms"]["message"].as_str().unwrap().len() > 20);
    assert!(v["host"]["kernel_release"].as_str().unwrap().len() > 1);
    // The facts scripts/compare reads, under the names scripts/bench gives them.
    let facts = &v["host"]["facts"];
    assert!(facts["net"]["somaxconn"].as_str().is_some(), "{facts}");
    assert!(
        facts["mitigations_boot_option"].as_str().is_some(),
        "{facts}"
    );
    assert!(facts["cpu_governor"].as_str().is_some(), "{facts}");
    assert!(
        facts["io_uring"]["disabled_sysctl"].as_str().is_some(),
        "{facts}"
    );
    assert_eq!(v["stopped_by"], "messages");
}

#[test]
fn closed_loop_lockstep_count_matches_sink() {
    let sink = start_sink(SinkConfig::default());
    let v = loadgen(
        sink.port,
        &[
            "-n",
            "1000",
            "-c",
            "3",
            "--no-pipelining",
            "--recipients",
            "2",
        ],
    );
    assert_exact(&v, &sink, 1000);
    assert_eq!(v["settings"]["pipelining_used"][0], false);
}

#[test]
fn lockstep_when_server_lacks_pipelining() {
    let sink = start_sink(SinkConfig {
        pipelining: false,
        ..SinkConfig::default()
    });
    let v = loadgen(sink.port, &["-n", "500", "-c", "2"]);
    assert_exact(&v, &sink, 500);
    assert_eq!(v["settings"]["pipelining_used"][0], false);
}

#[test]
fn open_loop_count_matches_sink() {
    for extra in [&[][..], &["--no-pipelining"][..]] {
        let sink = start_sink(SinkConfig::default());
        let mut args = vec!["-n", "600", "-c", "4", "--rate", "2000"];
        args.extend_from_slice(extra);
        let v = loadgen(sink.port, &args);
        assert_exact(&v, &sink, 600);
        assert_eq!(v["settings"]["mode"], "open");
    }
}

/// Open loop with --messages-per-session 0 keeps one session per connection for the whole run,
/// also on a connection whose next message is not due before the end (or never due at all):
/// such a connection used to end its session early and reconnect, empty session after empty
/// session, until the run's deadline.
#[test]
fn open_loop_keeps_one_session_per_connection() {
    let cases: [(&str, &[&str]); 5] = [
        ("1s", &["-c", "3", "--rate", "300"]),
        ("1s", &["-c", "3", "--rate", "300", "--no-pipelining"]),
        ("1s", &["-c", "3", "--rate", "300", "--bdat", "-t", "2"]),
        // 4 connections at 2 msg/s for 1 s: only two of them have a message to send.
        ("1s", &["-c", "4", "--rate", "2"]),
        // Bounded by a message count instead of the duration.
        ("20s", &["-c", "3", "--rate", "600", "-n", "300"]),
    ];
    for (duration, extra) in cases {
        let sink = start_sink(SinkConfig::default());
        let mut args = vec!["--messages-per-session", "0"];
        args.extend_from_slice(extra);
        let v = loadgen_for(sink.port, duration, &args);
        let n = counter(&v, "messages_accepted");
        assert!(n > 0, "{v}");
        assert_exact(&v, &sink, n);
        let conns: u64 = args[args.iter().position(|a| *a == "-c").unwrap() + 1]
            .parse()
            .unwrap();
        assert_eq!(counter(&v, "sessions"), conns, "{args:?}: {v}");
        assert_eq!(v["latency_us"]["session"]["count"].as_u64(), Some(conns));
        assert_eq!(v["settings"]["mode"], "open");
        let bound = if duration == "1s" {
            "duration"
        } else {
            "messages"
        };
        assert_eq!(v["stopped_by"], bound, "{args:?}: {v}");
    }
}

#[test]
fn bdat_count_matches_sink() {
    for extra in [&[][..], &["--no-pipelining"][..], &["--rate", "3000"][..]] {
        let sink = start_sink(SinkConfig::default());
        let mut args = vec!["-n", "700", "-c", "3", "--bdat", "--size", "100..20k"];
        args.extend_from_slice(extra);
        let v = loadgen(sink.port, &args);
        assert_exact(&v, &sink, 700);
    }
}

/// --depth: several whole BDAT transactions in flight per connection; the count still matches
/// the sink's to the message, in closed and open loop, with reconnects, and refusals (each
/// followed by RSET while later transactions are already on the wire) are counted by code.
#[test]
fn bdat_depth_count_matches_sink() {
    for extra in [
        &["--depth", "4"][..],
        &["--depth", "16", "--messages-per-session", "37"][..],
        &["--depth", "3", "--rate", "3000"][..],
    ] {
        let sink = start_sink(SinkConfig::default());
        let mut args = vec!["-n", "1000", "-c", "3", "--bdat", "--size", "100..20k"];
        args.extend_from_slice(extra);
        let v = loadgen(sink.port, &args);
        assert_exact(&v, &sink, 1000);
        let depth: u64 = extra[1].parse().unwrap();
        assert_eq!(v["settings"]["depth"].as_u64(), Some(depth));
    }
    let sink = start_sink(SinkConfig {
        final_reply: "552 5.3.4 Message too big",
        ..SinkConfig::default()
    });
    let v = loadgen(
        sink.port,
        &["-n", "300", "-c", "2", "--bdat", "--depth", "5"],
    );
    assert_eq!(counter(&v, "messages_refused"), 300, "{v}");
    assert_eq!(v["refused_by_code"]["552"].as_u64(), Some(300), "{v}");
    assert_eq!(counter(&v, "messages_failed"), 0, "{v}");
    assert_eq!(counter(&v, "protocol_errors"), 0, "{v}");
    // Without BDAT (a DATA transaction waits for its 354) depth is refused up front.
    let out = Command::new(env!("CARGO_BIN_EXE_ringmx-loadgen"))
        .args(["--target", &format!("127.0.0.1:{}", sink.port)])
        .args(["--depth", "4", "-n", "5", "-q"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bdat"));
}

#[test]
fn bdat_needs_chunking() {
    let sink = start_sink(SinkConfig {
        chunking: false,
        ..SinkConfig::default()
    });
    let out = Command::new(env!("CARGO_BIN_EXE_ringmx-loadgen"))
        .args([
            "--target",
            &format!("127.0.0.1:{}", sink.port),
            "--bdat",
            "-n",
            "10",
            "-q",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("CHUNKING"));
    assert_eq!(sink.ends_of_data.load(Ordering::SeqCst), 0);
}

#[test]
fn sessions_reconnect_and_count_matches() {
    let sink = start_sink(SinkConfig::default());
    let v = loadgen(
        sink.port,
        &[
            "-n",
            "500",
            "-c",
            "3",
            "--messages-per-session",
            "7",
            "--recipients",
            "3",
        ],
    );
    assert_exact(&v, &sink, 500);
    // 500 messages at 7 per session on each of 3 connections: at least 72 sessions.
    assert!(counter(&v, "sessions") >= 72, "{v}");
    assert_eq!(
        v["latency_us"]["session"]["count"].as_u64(),
        Some(counter(&v, "sessions"))
    );
}

#[test]
fn refused_messages_are_counted_by_code() {
    let sink = start_sink(SinkConfig {
        final_reply: "552 5.3.4 Message too big",
        ..SinkConfig::default()
    });
    for extra in [&[][..], &["--no-pipelining"][..], &["--bdat"][..]] {
        let before = sink.ends_of_data.load(Ordering::SeqCst);
        let mut args = vec!["-n", "200", "-c", "2"];
        args.extend_from_slice(extra);
        let v = loadgen(sink.port, &args);
        assert_eq!(counter(&v, "messages_accepted"), 0);
        assert_eq!(counter(&v, "messages_refused"), 200);
        assert_eq!(v["refused_by_code"]["552"].as_u64(), Some(200), "{v}");
        assert_eq!(v["replies_by_code"]["552"].as_u64(), Some(200), "{v}");
        assert_eq!(sink.ends_of_data.load(Ordering::SeqCst) - before, 200);
    }
    assert_eq!(sink.accepted.load(Ordering::SeqCst), 0);
}

#[test]
fn open_loop_shows_a_stall() {
    // One connection at 200 msg/s; the server stalls 500 ms once. Messages due during the stall
    // are measured from their due time, so ~20 of 400 (5%) wait 400 ms or more: p99 shows it.
    let sink = start_sink(SinkConfig {
        stall_at: Some((50, Duration::from_millis(500))),
        ..SinkConfig::default()
    });
    let v = loadgen(sink.port, &["-n", "400", "-c", "1", "--rate", "200"]);
    assert_exact(&v, &sink, 400);
    let p99 = v["latency_us"]["message"]["p99"].as_u64().unwrap();
    assert!(
        p99 >= 400_000,
        "open-loop p99 {p99} µs should show the 500 ms stall"
    );
    // The messages due during the stall found their connection busy: the report says so, and
    // does not blame the pacer for them.
    let pacer = &v["pacer"];
    let behind = pacer["behind"].as_u64().unwrap();
    assert!(behind >= 50, "{pacer}");
    assert_eq!(counter(&v, "messages_behind_schedule"), behind);
    assert_eq!(pacer["paced"].as_u64().unwrap() + behind, 400, "{pacer}");
    assert!(
        pacer["verdict"]
            .as_str()
            .unwrap()
            .contains("were already due when their connection became free"),
        "{pacer}"
    );
}

#[test]
fn closed_loop_hides_a_stall_as_expected() {
    // Same stall in closed loop: only the one stalled message waits (coordinated omission), so it
    // shows in max but it is 1 of 3000 messages, far above the p99 rank (30 from the top).
    let sink = start_sink(SinkConfig {
        stall_at: Some((50, Duration::from_millis(500))),
        ..SinkConfig::default()
    });
    let v = loadgen(sink.port, &["-n", "3000", "-c", "1"]);
    assert_exact(&v, &sink, 3000);
    let m = &v["latency_us"]["message"];
    let (p50, p99, max) = (
        m["p50"].as_u64().unwrap(),
        m["p99"].as_u64().unwrap(),
        m["max"].as_u64().unwrap(),
    );
    assert!(max >= 400_000, "the stalled message itself is in max: {m}");
    assert!(
        p99 < 400_000,
        "closed-loop p99 {p99} µs: one stalled message is below the p99 rank"
    );
    assert!(p50 < 100_000, "closed-loop p50 {p50} µs");
}

#[test]
fn postfix_smtp_sink_count_matches() {
    let bin = "/usr/sbin/smtp-sink";
    if !std::path::Path::new(bin).exists() {
        // Under CI the peer must be there (scripts/test installs it): a skip would pass silently.
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{bin} not installed and CI=true (apt-get install postfix)"
        );
        eprintln!("skipped: {bin} not installed (apt-get install postfix)");
        return;
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    let mut cmd = Command::new(bin);
    if root {
        cmd.args(["-u", "nobody"]);
    }
    // Its counters go to a file: a pipe nobody drains while the load runs could fill and block it.
    let counters_path = json_path().with_extension("smtp-sink.txt");
    let counters = std::fs::File::create(&counters_path).unwrap();
    let mut child = cmd
        .args(["-c", &format!("127.0.0.1:{port}"), "100"])
        .stdout(Stdio::from(counters))
        .stderr(Stdio::null())
        .spawn()
        .expect("start smtp-sink");
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "smtp-sink did not start listening"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let v = loadgen(port, &["-n", "3000", "-c", "4", "-t", "1", "--size", "1k"]);
    std::thread::sleep(Duration::from_millis(200));
    let _ = child.kill();
    let _ = child.wait();
    // smtp-sink -c prints "sess=.. quit=.. mesg=N" (CR-separated) as sessions end.
    let text = std::fs::read_to_string(&counters_path).unwrap_or_default();
    let _ = std::fs::remove_file(&counters_path);
    let mesg: u64 = text
        .rsplit("mesg=")
        .next()
        .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no mesg= counter in smtp-sink output: {text:?}"));
    assert_eq!(counter(&v, "messages_accepted"), 3000);
    assert_eq!(mesg, 3000, "smtp-sink counted {mesg}");
}

#[test]
fn interrupt_prints_summary_and_json() {
    let sink = start_sink(SinkConfig::default());
    let path = json_path();
    let child = Command::new(env!("CARGO_BIN_EXE_ringmx-loadgen"))
        .args([
            "--target",
            &format!("127.0.0.1:{}", sink.port),
            "-q",
            "-c",
            "2",
            "--rate",
            "500",
        ])
        .args(["--duration", "60s", "--json"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Ctrl-C only once the run is under way (a message arrived, so the handler, installed
    // before the probe, is surely in place), never after a guessed sleep.
    let t_wait = Instant::now();
    while sink.accepted.load(Ordering::SeqCst) == 0 {
        assert!(
            t_wait.elapsed() < Duration::from_secs(20),
            "no message arrived at the sink"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let t0 = Instant::now();
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let out = child.wait_with_output().unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "Ctrl-C should end the run promptly"
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("stopped by interrupt"));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(v["stopped_by"], "interrupt");
    assert_eq!(
        counter(&v, "messages_accepted"),
        sink.accepted.load(Ordering::SeqCst)
    );
}

/// Ctrl-C before the load even starts (while the target is probed) still ends the run cleanly
/// with a summary: the handler is installed before the probe.
#[test]
fn interrupt_during_probe_prints_summary() {
    // A listener that accepts and then says nothing: the probe waits for a greeting.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let conn = l.accept().map(|(c, _)| c);
        let _ = tx.send(());
        let mut c = conn.unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        let _ = c.write_all(b"220 slow ESMTP\r\n");
        let mut r = BufReader::new(c.try_clone().unwrap());
        let mut line = String::new();
        while r.read_line(&mut line).is_ok_and(|n| n > 0) {
            let reply: &[u8] = if line.starts_with("EHLO") {
                b"250 slow\r\n"
            } else {
                b"221 bye\r\n"
            };
            let _ = c.write_all(reply);
            line.clear();
        }
    });
    let child = Command::new(env!("CARGO_BIN_EXE_ringmx-loadgen"))
        .args(["--target", &format!("127.0.0.1:{port}"), "-q", "-c", "1"])
        .args(["--duration", "60s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    rx.recv_timeout(Duration::from_secs(20))
        .expect("the probe connected");
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("stopped by interrupt"), "{stdout}");
    assert!(stdout.contains("accepted 0"), "{stdout}");
}

/// Sessions opened during --warmup that stay open into the measured time are that time's
/// sessions: one persistent session per connection is counted once, not as zero.
#[test]
fn warmup_sessions_are_counted() {
    let sink = start_sink(SinkConfig::default());
    let v = loadgen_for(
        sink.port,
        "600ms",
        &["-c", "2", "--rate", "400", "--warmup", "400ms"],
    );
    assert_eq!(counter(&v, "sessions"), 2, "{v}");
    assert_eq!(counter(&v, "sessions_opened"), 0, "{v}");
    assert_eq!(v["latency_us"]["session"]["count"].as_u64(), Some(2), "{v}");
    // Warm-up messages count in no statistic; the sink saw them too.
    let n = counter(&v, "messages_accepted");
    assert!(n > 0 && sink.accepted.load(Ordering::SeqCst) > n, "{v}");
    let pacer = &v["pacer"];
    assert_eq!(
        pacer["paced"].as_u64().unwrap() + pacer["behind"].as_u64().unwrap(),
        n,
        "{v}"
    );
    assert!(v["histograms"]["pacer_lateness"].as_str().unwrap().len() > 20);
}

/// The progress line says "warming up" during warm-up, never a p99 of nothing.
#[test]
fn progress_line_says_warming_up() {
    let sink = start_sink(SinkConfig::default());
    let out = Command::new(env!("CARGO_BIN_EXE_ringmx-loadgen"))
        .args(["--target", &format!("127.0.0.1:{}", sink.port)])
        .args([
            "-c",
            "1",
            "--rate",
            "100",
            "--warmup",
            "2500ms",
            "--duration",
            "1200ms",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("s ")).collect();
    assert!(
        lines.iter().filter(|l| l.contains("warming up")).count() >= 2,
        "{err}"
    );
    assert!(!err.contains("p99     0.000"), "{err}");
    assert!(lines.iter().any(|l| l.contains("msg/s")), "{err}");
}

/// --proxy v1 and v2: every connection (the probe's too) starts with the header HAProxy would
/// send for it, the sink's own view of the addresses; a server expecting it accepts everything.
#[test]
fn proxy_header_names_the_real_addresses() {
    for version in ["v1", "v2"] {
        let sink = start_sink(SinkConfig {
            proxy: Some(version),
            ..SinkConfig::default()
        });
        let v = loadgen(sink.port, &["-n", "300", "-c", "3", "--proxy", version]);
        assert_exact(&v, &sink, 300);
        assert_eq!(v["settings"]["proxy"], version);
        // The probe's connection and every session of the run. A slot whose connection was
        // still being made when the 300th message was done opens none, so the run has one to
        // three sessions.
        let sessions = counter(&v, "sessions");
        assert!((1..=3).contains(&sessions), "{v}");
        assert_eq!(sink.bad_headers.load(Ordering::SeqCst), 0);
        assert_eq!(
            sink.good_headers.load(Ordering::SeqCst),
            1 + sessions,
            "{version}: {v}"
        );
    }
    // Without --proxy, a server that wants the header refuses: the sink's check can fail.
    let sink = start_sink(SinkConfig {
        proxy: Some("v1"),
        ..SinkConfig::default()
    });
    let out = Command::new(env!("CARGO_BIN_EXE_ringmx-loadgen"))
        .args([
            "--target",
            &format!("127.0.0.1:{}", sink.port),
            "-n",
            "5",
            "-q",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    // The sink waits for a header while the client waits for a greeting: it counts the bad
    // header when the client gives up and closes, which may come after the client has exited.
    let waited = std::time::Instant::now();
    while sink.bad_headers.load(Ordering::SeqCst) == 0
        && waited.elapsed() < std::time::Duration::from_secs(10)
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(sink.bad_headers.load(Ordering::SeqCst) >= 1);
}

/// --source: connections come from the given local addresses, round robin.
#[test]
fn source_addresses_are_used_round_robin() {
    let sink = start_sink(SinkConfig::default());
    let v = loadgen(
        sink.port,
        &[
            "-n",
            "400",
            "-c",
            "4",
            "--messages-per-session",
            "20",
            "--source",
            "127.0.0.2,127.0.0.3",
        ],
    );
    assert_exact(&v, &sink, 400);
    let peers = sink.peers.lock().unwrap().clone();
    let count = |ip: &str| peers.iter().filter(|p| p.ip().to_string() == ip).count();
    let (two, three) = (count("127.0.0.2"), count("127.0.0.3"));
    assert_eq!(
        two + three,
        peers.len(),
        "only the source addresses: {peers:?}"
    );
    // The run's 20-odd sessions alternate; the probe's connection comes from the first address.
    assert!(two >= 10 && three >= 10, "{two} vs {three}: {peers:?}");
    assert!(two.abs_diff(three) <= 2, "{two} vs {three}");
    assert_eq!(v["settings"]["sources"][1], "127.0.0.3");
    // A source of the wrong family is refused before anything is sent.
    let out = Command::new(env!("CARGO_BIN_EXE_ringmx-loadgen"))
        .args(["--target", &format!("127.0.0.1:{}", sink.port)])
        .args(["--source", "::1", "-n", "5", "-q"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("same family"));
}

#[test]
fn help_reads_well() {
    let out = Command::new(env!("CARGO_BIN_EXE_ringmx-loadgen"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let h = String::from_utf8_lossy(&out.stdout);
    for opt in [
        "--target",
        "--connections",
        "--rate",
        "--bdat",
        "--json",
        "--warmup",
        "--proxy",
        "--source",
        "hosts you own",
    ] {
        assert!(h.contains(opt), "--help lacks {opt}");
    }
}
