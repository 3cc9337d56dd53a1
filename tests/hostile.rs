//! Hostile clients meet a named limit and its reply (SPEC §3, README "Limits and defences").
//!
//! Against the real binary: a slow-loris in DATA is cut by `RINGMX_MIN_DATA_RATE` (`421 4.4.2`)
//! though its idle timeout never fires; one in the command phase by
//! `RINGMX_MAX_JUNK_COMMANDS` (`421 4.7.0`); `RINGMX_MAX_CONNECTIONS_PER_IP` refuses the extra
//! connection (`421 4.7.0`) unless `RINGMX_LIMIT_EXEMPT` covers the client; an early talker is
//! refused under `RINGMX_GREET_DELAY_MS` + `RINGMX_REJECT_EARLY_TALKERS` (`554 5.5.1`);
//! `RINGMX_MAX_ERRORS` closes an erring session (`421 4.7.0`). Urgent data between two
//! commands stalls neither backend's reads. A client that never reads its replies, an endless
//! command line and an endless message cannot make the server's memory (VmRSS) grow without
//! bound, and others are served meanwhile. Many idle connections are held
//! while new sessions still get their 250: the RSS per idle connection and the p99 of the new
//! sessions are printed (`HARDENING_IDLE=n` connections, default 500). Each limit is also shown
//! not to fire when it is off or not reached, so every test can fail.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const SENDER: &str = "sender@origin.example";
const RCPTS: &[&str] = &["rcpt@rcpt.example"];

/// Raises this process's soft RLIMIT_NOFILE to the hard limit (children inherit it); returns
/// the new soft limit.
fn raise_nofile() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid resource and a valid, writable struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    limit.rlim_cur
}

/// Stores one message over a fresh session and quits: the server serves.
fn one_message(addr: SocketAddr, tag: &str) -> String {
    let mut client = Client::ehlo(addr);
    let id = send_lockstep(&mut client, SENDER, RCPTS, &sample_body(tag, 0, 0));
    client.send(b"QUIT\r\n");
    client.expect("221");
    id
}

/// Opens a transaction up to the 354.
fn start_data(client: &mut Client) {
    client.send(format!("MAIL FROM:<{SENDER}>\r\nRCPT TO:<{}>\r\nDATA\r\n", RCPTS[0]).as_bytes());
    client.expect("250 2.1.0");
    client.expect("250 2.1.5");
    client.expect("354 ");
}

/// Writes one byte every `every` from another thread until `stop`, a write error or `limit`;
/// returns the stop flag and the count of bytes written.
fn trickle(
    client: &Client,
    every: Duration,
    limit: Duration,
) -> (Arc<AtomicBool>, Arc<AtomicU64>, std::thread::JoinHandle<()>) {
    let mut writer = client.stream().try_clone().expect("clone");
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let (s, n) = (Arc::clone(&stop), Arc::clone(&sent));
    let handle = std::thread::spawn(move || {
        let deadline = Instant::now() + limit;
        while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
            if writer.write_all(b"x").is_err() {
                return;
            }
            n.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(every);
        }
    });
    (stop, sent, handle)
}

/// Slow-loris in DATA: one byte per 200 ms never trips the 2 s idle timeout, but the transfer
/// deadline (2 s + 1 s per 1 MB) does: `421 4.4.2` and close, within seconds.
#[test]
fn slow_loris_in_data_is_cut_by_min_data_rate() {
    let server = Server::start(&[
        ("RINGMX_DATA_TIMEOUT_SECS", "2"),
        ("RINGMX_MIN_DATA_RATE", "1000000"),
    ]);
    let mut client = Client::ehlo(server.addr());
    start_data(&mut client);
    let began = Instant::now();
    let (stop, sent, handle) = trickle(&client, Duration::from_millis(200), Duration::from_secs(9));
    client.expect("421 4.4.2");
    let took = began.elapsed();
    stop.store(true, Ordering::Relaxed);
    assert_eq!(client.read_until_closed(), "", "bytes after the 421");
    handle.join().unwrap();
    let bytes = sent.load(Ordering::Relaxed);
    // Several bytes went in before the cut: the idle timeout was never what fired.
    assert!(
        bytes >= 5,
        "only {bytes} byte(s) sent in {took:?}: idle timeout?"
    );
    assert!(took < Duration::from_secs(8), "cut only after {took:?}");
    assert!(server.tmp_files().is_empty() || server.wait_tmp_empty(Duration::from_secs(5)));
    assert!(server.new_files().is_empty(), "a cut message was stored");
    one_message(server.addr(), "after-loris");
}

/// A silent client is answered `421 4.4.2` at `RINGMX_COMMAND_TIMEOUT_SECS` and its connection
/// really closed, on both backends: the server's descriptor count returns to where it was.
/// (On io_uring the cancelled read once kept the socket open until the peer spoke.)
#[test]
fn silent_client_is_closed_after_command_timeout_on_both_backends() {
    for backend in ["epoll", "uring"] {
        let Some(server) = start_backend(
            backend,
            &[("RINGMX_COMMAND_TIMEOUT_SECS", "1"), ("RINGMX_SHARDS", "1")],
            "silent_client_is_closed_after_command_timeout_on_both_backends",
        ) else {
            continue;
        };
        let fd_dir = format!("/proc/{}/fd", server.pid());
        let fds = || std::fs::read_dir(&fd_dir).expect("proc fd").count();
        // The baseline once the shards are up (they open their rings after the first log line).
        one_message(server.addr(), "warm-up");
        let idle = fds();
        let silent: Vec<Client> = (0..5).map(|_| Client::greeted(server.addr())).collect();
        for mut client in silent {
            client.expect("421 4.4.2");
            assert_eq!(client.read_until_closed(), "", "{backend}");
        }
        assert!(
            poll(Duration::from_secs(5), || fds() <= idle),
            "{backend}: {} descriptors open after the timed-out sessions, {idle} before",
            fds()
        );
    }
}

/// The same trickle with the rate limit off (`RINGMX_MIN_DATA_RATE=0`) is not cut: the limit
/// above is what fired.
#[test]
fn slow_data_without_min_rate_is_not_cut() {
    let server = Server::start(&[
        ("RINGMX_DATA_TIMEOUT_SECS", "2"),
        ("RINGMX_MIN_DATA_RATE", "0"),
    ]);
    let mut client = Client::ehlo(server.addr());
    start_data(&mut client);
    // Longer than the 2 s the rate limit above allows.
    let (stop, sent, handle) = trickle(&client, Duration::from_millis(200), Duration::from_secs(4));
    handle.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    assert!(sent.load(Ordering::Relaxed) >= 15);
    client.send(b"\r\n.\r\n");
    client.expect_queued();
}

/// Slow-loris in the command phase: a NOOP every 600 ms never trips the 2 s command timeout;
/// the junk-command limit (3) does, and a stored message resets its count.
#[test]
fn slow_junk_commands_are_cut_by_max_junk_commands() {
    let server = Server::start(&[
        ("RINGMX_COMMAND_TIMEOUT_SECS", "2"),
        ("RINGMX_MAX_JUNK_COMMANDS", "3"),
    ]);
    let mut client = Client::ehlo(server.addr());
    let junk: [&[u8]; 3] = [b"NOOP\r\n", b"RSET\r\n", b"VRFY postmaster\r\n"];
    for line in junk {
        std::thread::sleep(Duration::from_millis(600));
        client.send(line);
        let reply = client.read_reply();
        assert!(reply.starts_with('2'), "{reply:?}");
    }
    // A stored message starts the count again.
    send_lockstep(&mut client, SENDER, RCPTS, &sample_body("junk", 0, 0));
    for line in junk {
        std::thread::sleep(Duration::from_millis(600));
        client.send(line);
        let reply = client.read_reply();
        assert!(reply.starts_with('2'), "{reply:?}");
    }
    std::thread::sleep(Duration::from_millis(600));
    client.send(b"HELP\r\n");
    client.expect("421 4.7.0");
    assert_eq!(client.read_until_closed(), "");
    one_message(server.addr(), "after-junk");
}

/// `RINGMX_MAX_CONNECTIONS_PER_IP=3` with no exemption: the 4th connection gets `421 4.7.0`
/// and is closed; once one closes, a new one is admitted.
#[test]
fn per_ip_limit_refuses_the_extra_connection() {
    let server = Server::start(&[
        ("RINGMX_MAX_CONNECTIONS_PER_IP", "3"),
        ("RINGMX_LIMIT_EXEMPT", ""),
    ]);
    let mut held: Vec<Client> = (0..3).map(|_| Client::greeted(server.addr())).collect();
    let mut extra = Client::connect(server.addr());
    extra.expect("421 4.7.0");
    assert_eq!(extra.read_until_closed(), "");
    // The held sessions still work.
    held[0].send(b"NOOP\r\n");
    held[0].expect("250");
    drop(held.pop());
    let admitted = poll(Duration::from_secs(5), || {
        let mut c = Client::connect(server.addr());
        c.read_reply().starts_with("220")
    });
    assert!(
        admitted,
        "no connection admitted after one of the three closed"
    );
}

/// With the default exemption (127.0.0.0/8), loopback clients are not limited per IP.
#[test]
fn per_ip_limit_spares_exempt_networks() {
    let server = Server::start(&[("RINGMX_MAX_CONNECTIONS_PER_IP", "3")]);
    let held: Vec<Client> = (0..6).map(|_| Client::greeted(server.addr())).collect();
    one_message(server.addr(), "exempt");
    drop(held);
}

/// A client that talks before the delayed greeting gets `554 5.5.1` and is closed; a polite
/// one waits and is greeted.
#[test]
fn early_talker_is_refused_polite_client_is_greeted() {
    let server = Server::start(&[
        ("RINGMX_GREET_DELAY_MS", "500"),
        ("RINGMX_REJECT_EARLY_TALKERS", "1"),
    ]);
    let mut talker = Client::connect(server.addr());
    talker.send(b"EHLO eager.example\r\n");
    talker.expect("554 5.5.1");
    assert_eq!(talker.read_until_closed(), "");

    let began = Instant::now();
    let mut polite = Client::connect(server.addr());
    polite.expect("220 ");
    assert!(
        began.elapsed() >= Duration::from_millis(400),
        "greeted after {:?}, before the 500 ms delay",
        began.elapsed()
    );
    polite.send(b"EHLO client.example\r\n");
    polite.expect("250");
    send_lockstep(&mut polite, SENDER, RCPTS, &sample_body("polite", 0, 0));
}

/// Without `RINGMX_REJECT_EARLY_TALKERS`, the same early talker is served after the delay.
#[test]
fn early_talker_is_served_when_not_rejected() {
    let server = Server::start(&[("RINGMX_GREET_DELAY_MS", "300")]);
    let mut talker = Client::connect(server.addr());
    talker.send(b"EHLO eager.example\r\n");
    talker.expect("220 ");
    talker.expect("250");
}

/// Urgent (out-of-band) data between two commands stalls nothing, on both backends: TCP's
/// recv stops at the urgent mark with the rest still queued, so a read that came back short
/// there must not be taken to have emptied the socket. The commands are queued before the
/// first read (the greeting is delayed), and the urgent byte itself is dropped from the stream.
#[test]
fn urgent_data_between_commands_stalls_nothing_on_both_backends() {
    for backend in ["epoll", "uring"] {
        let Some(server) = start_backend(
            backend,
            &[("RINGMX_SHARDS", "1"), ("RINGMX_GREET_DELAY_MS", "300")],
            "urgent_data_between_commands_stalls_nothing_on_both_backends",
        ) else {
            continue;
        };
        let mut client = Client::connect(server.addr());
        client.set_read_timeout(Duration::from_secs(10));
        client.send(b"NOOP\r\n");
        socket2::SockRef::from(client.stream())
            .send_out_of_band(b"!")
            .unwrap();
        client.send(b"NOOP again\r\n");
        client.expect("220 ");
        client.expect("250 ");
        client.expect("250 ");
    }
}

/// `RINGMX_MAX_ERRORS=3`: three errors are answered, the fourth gets `421 4.7.0` and close; a
/// stored message resets the count.
#[test]
fn errors_past_max_errors_close_the_session() {
    let server = Server::start(&[("RINGMX_MAX_ERRORS", "3")]);
    let mut client = Client::ehlo(server.addr());
    for _ in 0..3 {
        client.send(b"BOGUS\r\n");
        client.expect("500 5.5.1");
    }
    send_lockstep(&mut client, SENDER, RCPTS, &sample_body("errors", 0, 0));
    client.send(b"RCPT TO:<a@b.example>\r\n");
    client.expect("503 5.5.1");
    client.send(b"MAIL FROM:<not an address\r\n");
    client.expect("501");
    client.send(b"BOGUS\r\n");
    client.expect("500 5.5.1");
    client.send(b"BOGUS\r\n");
    client.expect("421 4.7.0");
    assert_eq!(client.read_until_closed(), "");
    one_message(server.addr(), "after-errors");
}

/// Writes `chunk` repeatedly until a write blocks for 3 s (the peer stopped reading) or
/// `total` bytes went; returns the bytes written.
fn flood(stream: &mut TcpStream, chunk: &[u8], total: usize) -> usize {
    stream
        .set_write_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut written = 0;
    while written < total {
        match stream.write(chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => written += n,
        }
    }
    written
}

/// A client that pipelines NOOPs and never reads the replies: the server stops reading when
/// its replies back up, its memory stays bounded, and another client is served meanwhile on
/// the same shard.
#[test]
fn client_that_never_reads_cannot_pin_memory() {
    let server = Server::start(&[
        ("RINGMX_SHARDS", "1"),
        ("RINGMX_MAX_JUNK_COMMANDS", "1000000"),
        ("RINGMX_MAX_ERRORS", "1000000"),
    ]);
    one_message(server.addr(), "warm-up");
    let before = rss_kib(server.pid());
    let mut hog = TcpStream::connect(server.addr()).unwrap();
    let chunk = b"NOOP\r\n".repeat(10_000);
    let total = 512 << 20;
    let written = flood(&mut hog, &chunk, total);
    assert!(
        written < total,
        "the server read {written} bytes of NOOPs whose replies nobody read"
    );
    let during = rss_kib(server.pid());
    // Served meanwhile, on the same (only) shard.
    one_message(server.addr(), "beside-hog");
    let grown = during.saturating_sub(before);
    println!(
        "HARDENING never-reading client: wrote {} KiB of NOOPs before blocking; server RSS \
         {before} KiB -> {during} KiB",
        written / 1024
    );
    assert!(
        grown < 64 * 1024,
        "RSS grew {grown} KiB for one client that does not read"
    );
    drop(hog);
    one_message(server.addr(), "after-hog");
}

/// Replies that back up past what the socket takes (a client that reads them only later,
/// through a small receive buffer) all arrive, whole and in order, on both backends: what a
/// non-blocking send leaves over goes out once the client reads.
#[test]
fn replies_that_back_up_past_the_socket_buffer_all_arrive_in_order_on_both_backends() {
    const NOOPS: usize = 1_000_000;
    for backend in ["epoll", "uring"] {
        let Some(server) = start_backend(
            backend,
            &[
                ("RINGMX_SHARDS", "1"),
                ("RINGMX_MAX_JUNK_COMMANDS", "1000000"),
                ("RINGMX_MAX_ERRORS", "1000000"),
            ],
            "replies_that_back_up_past_the_socket_buffer_all_arrive_in_order_on_both_backends",
        ) else {
            continue;
        };
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.connect(&server.addr().into()).unwrap();
        let stream: TcpStream = socket.into();
        let mut writer = stream.try_clone().unwrap();
        let sender = std::thread::spawn(move || {
            writer.write_all(b"EHLO backed-up.example\r\n").unwrap();
            let noops = b"NOOP\r\n".repeat(10_000);
            for _ in 0..NOOPS / 10_000 {
                writer.write_all(&noops).unwrap();
            }
            writer.write_all(b"QUIT\r\n").unwrap();
        });
        // Nothing is read for a while: the replies fill the client's window and the server's
        // send buffer.
        std::thread::sleep(Duration::from_millis(500));
        let mut reader = stream;
        reader
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut all = Vec::new();
        reader.read_to_end(&mut all).unwrap();
        sender.join().unwrap();
        let text = String::from_utf8(all).expect("replies are text");
        assert!(text.ends_with("\r\n"), "{backend}: the last reply is cut");
        let lines: Vec<&str> = text.trim_end_matches("\r\n").split("\r\n").collect();
        assert!(lines[0].starts_with("220 "), "{backend}: {}", lines[0]);
        // EHLO's reply: 250- lines, then one 250 line.
        let ehlo_end = lines
            .iter()
            .position(|l| l.starts_with("250 "))
            .expect("EHLO reply");
        assert!(lines[1..ehlo_end].iter().all(|l| l.starts_with("250-")));
        let noops = &lines[ehlo_end + 1..lines.len() - 1];
        assert_eq!(noops.len(), NOOPS, "{backend}: NOOP replies");
        assert!(
            noops.iter().all(|l| l.starts_with("250 ")),
            "{backend}: a NOOP reply is not a 250: {:?}",
            noops.iter().find(|l| !l.starts_with("250 "))
        );
        assert!(
            lines[lines.len() - 1].starts_with("221 "),
            "{backend}: {}",
            lines[lines.len() - 1]
        );
    }
}

/// An endless command line and an endless message are drained, not buffered: RSS stays
/// bounded, and the session answers `500 5.5.2` / `552 5.3.4` at their ends and goes on.
#[test]
fn endless_line_and_endless_message_are_drained() {
    let server = Server::start(&[
        ("RINGMX_SHARDS", "1"),
        ("RINGMX_MAX_MESSAGE_SIZE", "1048576"),
    ]);
    one_message(server.addr(), "warm-up");
    let before = rss_kib(server.pid());
    let mut client = Client::ehlo(server.addr());
    let mut stream = client.stream().try_clone().unwrap();
    let chunk = vec![b'A'; 1 << 16];
    let total = 64 << 20;
    assert_eq!(flood(&mut stream, &chunk, total), total, "line not drained");
    client.send(b"\r\nNOOP\r\n");
    client.expect("500 5.5.2");
    client.expect("250");
    start_data(&mut client);
    let mut line = vec![b'B'; (1 << 16) - 2];
    line.extend_from_slice(b"\r\n");
    assert_eq!(flood(&mut stream, &line, total), total, "data not drained");
    client.send(b".\r\n");
    client.expect("552 5.3.4");
    let after = rss_kib(server.pid());
    println!("HARDENING endless line + 64 MiB message: server RSS {before} KiB -> {after} KiB");
    assert!(
        after.saturating_sub(before) < 32 * 1024,
        "RSS grew from {before} to {after} KiB"
    );
    send_lockstep(
        &mut client,
        SENDER,
        RCPTS,
        &sample_body("after-endless", 0, 0),
    );
}

/// Reads from `stream` until CRLF (a greeting); true if it starts with 220.
fn read_greeting(stream: &mut TcpStream) -> bool {
    let mut got = Vec::new();
    let mut byte = [0u8; 256];
    while !got.ends_with(b"\r\n") {
        match stream.read(&mut byte) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got.extend_from_slice(&byte[..n]),
        }
    }
    got.starts_with(b"220 ")
}

/// Many idle connections (greeted, then silent) are held while new sessions store messages.
/// Prints the RSS per idle connection and the latency of the new sessions; asserts that they
/// are all served and that memory per idle connection stays under 64 KiB (the goal is 16).
#[test]
fn idle_connections_are_cheap_and_new_sessions_are_served() {
    let idle: usize = std::env::var("HARDENING_IDLE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let nofile = raise_nofile();
    assert!(
        nofile as usize > idle + 200,
        "RLIMIT_NOFILE hard limit {nofile} is too low for {idle} idle connections"
    );
    let max = (idle + 1000).to_string();
    let server = Server::start(&[("RINGMX_MAX_CONNECTIONS", &max)]);
    let addr = server.addr();
    for n in 0..20 {
        one_message(addr, &format!("warm-up-{n}"));
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(server.pid());
    let began = Instant::now();
    let mut held = Vec::with_capacity(idle);
    for n in 0..idle {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("idle connection {n}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        assert!(
            read_greeting(&mut stream),
            "idle connection {n} not greeted"
        );
        held.push(stream);
    }
    let opened = began.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let with = rss_kib(server.pid());
    let per_conn = (with.saturating_sub(before) * 1024) as f64 / idle as f64;

    let sessions = 100;
    let mut latencies: Vec<Duration> = (0..sessions)
        .map(|n| {
            let t = Instant::now();
            one_message(addr, &format!("beside-idle-{n}"));
            t.elapsed()
        })
        .collect();
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() as f64 * q).ceil() as usize).min(sessions) - 1];
    // The idle ones are still alive.
    for stream in held.iter_mut().step_by((idle / 10).max(1)) {
        stream.write_all(b"NOOP\r\n").unwrap();
        let mut reply = [0u8; 64];
        let n = stream.read(&mut reply).unwrap();
        assert!(reply[..n].starts_with(b"250"), "idle connection lost");
    }
    println!(
        "HARDENING idle: {idle} idle connections opened in {:.2} s; server RSS {before} KiB -> \
         {with} KiB = {:.1} KiB per idle connection; {sessions} new sessions (connect, EHLO, one \
         message, QUIT): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        opened.as_secs_f64(),
        per_conn / 1024.0,
        p(0.50).as_secs_f64() * 1e3,
        p(0.99).as_secs_f64() * 1e3,
        latencies[sessions - 1].as_secs_f64() * 1e3,
    );
    assert!(
        per_conn < 64.0 * 1024.0,
        "{per_conn:.0} bytes of RSS per idle connection"
    );
    drop(held);
}
