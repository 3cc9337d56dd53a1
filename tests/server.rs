//! The real `ringmx` binary on loopback, driven by raw sockets (SPEC §3–§4).
//!
//! Each test starts its own server with a temporary spool and checks the spool byte for byte:
//! many messages per session (pipelined in one write, lockstep, byte at a time), many
//! concurrent sessions over two shards, both backends, IPv6, the limits, the timeouts, a client
//! that vanishes mid-DATA, `kill -9` after acknowledged messages, SIGTERM draining, a full
//! spool (451) and start-up errors. Every wait is bounded; nothing asserts on speed.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;

const SENDER: &str = "sender@origin.example";
/// Two recipients, one in mixed case: Delivered-To keeps each exactly as written.
const RCPTS: &[&str] = &["alice@rcpt.example", "Bob.Smith@Rcpt.Example"];
const HELO: &str = "client.example";

/// The expected trace headers for messages from `Client::ehlo` on IPv4 loopback.
fn template(recipients: &'static [&'static str]) -> Expected<'static> {
    expected(SENDER, recipients)
}

/// Sends `count` messages over one connection in a single write; returns ID → body.
fn pipelined(
    addr: SocketAddr,
    count: usize,
    tag: &str,
    recipients: &[&str],
) -> HashMap<String, Vec<u8>> {
    let bodies: Vec<Vec<u8>> = (0..count).map(|n| sample_body(tag, n, n * 7)).collect();
    pipelined_session(addr, SENDER, recipients, bodies)
}

/// Sends `count` messages over one connection, one command and one reply at a time.
fn lockstep_session(
    addr: SocketAddr,
    count: usize,
    tag: &str,
    recipients: &[&str],
) -> HashMap<String, Vec<u8>> {
    let mut client = Client::ehlo(addr);
    let mut ids = HashMap::new();
    for n in 0..count {
        let body = sample_body(tag, n, n * 3);
        let id = send_lockstep(&mut client, SENDER, recipients, &body);
        assert!(ids.insert(id.clone(), body).is_none(), "ID {id} repeated");
    }
    client.send(b"QUIT\r\n");
    client.expect("221 2.0.0");
    ids
}

/// The core test on one backend: 200 pipelined then 200 lockstep messages over one
/// connection each, a byte-at-a-time session, and 40 concurrent sessions.
fn core(backend: &str, test: &str) {
    let Some(server) = start_backend(backend, &[], test) else {
        return;
    };
    let mut sent = pipelined(server.addr(), 200, "pipelined", RCPTS);
    check_spool_matches(&server.new_files(), &sent, &template(RCPTS));
    sent.extend(lockstep_session(
        server.addr(),
        200,
        "lockstep",
        &RCPTS[..1],
    ));
    // Check all 400 together: each file's ID picks its body; the recipients differ per half.
    let files = server.new_files();
    assert_eq!(files.len(), 400);
    let (two, one): (Vec<_>, Vec<_>) = files
        .into_iter()
        .partition(|(_, bytes)| bytes.windows(9).any(|w| w == b"Bob.Smith"));
    let pipelined: HashMap<_, _> = sent
        .iter()
        .filter(|(_, b)| b.windows(9).any(|w| w == b"pipelined"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let lockstep: HashMap<_, _> = sent
        .iter()
        .filter(|(_, b)| b.windows(8).any(|w| w == b"lockstep"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    check_spool_matches(&two, &pipelined, &template(RCPTS));
    check_spool_matches(&one, &lockstep, &template(&RCPTS[..1]));
    assert!(server.tmp_files().is_empty(), "tmp/ not empty");
}

#[test]
fn core_uring() {
    core("uring", "core_uring");
}

#[test]
fn core_epoll() {
    core("epoll", "core_epoll");
}

/// A whole session sent one byte per write stores the same bytes as the same session sent in
/// one write.
fn bytewise(backend: &str, test: &str) {
    let Some(server) = start_backend(backend, &[], test) else {
        return;
    };
    let bodies: Vec<Vec<u8>> = (0..3).map(|n| sample_body("bytewise", n, 500)).collect();
    let mut script = format!("EHLO {HELO}\r\n").into_bytes();
    for body in &bodies {
        script.extend_from_slice(&transaction(SENDER, RCPTS, body));
    }
    script.extend_from_slice(b"QUIT\r\n");

    let mut client = Client::greeted(server.addr());
    client.send_bytewise(&script);
    client.expect("250-");
    let mut sent = HashMap::new();
    for body in &bodies {
        client.expect("250 2.1.0");
        client.expect("250 2.1.5");
        client.expect("250 2.1.5");
        client.expect("354 ");
        sent.insert(client.expect_queued(), body.clone());
    }
    client.expect("221 ");
    check_spool_matches(&server.new_files(), &sent, &template(RCPTS));

    // The same session in one write: the same message bytes.
    let mut client = Client::greeted(server.addr());
    client.send(&script);
    client.expect("250-");
    for body in &bodies {
        for _ in 0..3 {
            client.expect("250 2.1.");
        }
        client.expect("354 ");
        sent.insert(client.expect_queued(), body.clone());
    }
    client.expect("221 ");
    check_spool_matches(&server.new_files(), &sent, &template(RCPTS));
}

#[test]
fn bytewise_uring() {
    bytewise("uring", "bytewise_uring");
}

#[test]
fn bytewise_epoll() {
    bytewise("epoll", "bytewise_epoll");
}

/// 40 concurrent sessions of 20 messages each over two shards: every message stored once,
/// exactly, and both shards served some.
fn concurrent(backend: &str, test: &str) {
    let Some(server) = start_backend(backend, &[("RINGMX_SHARDS", "2")], test) else {
        return;
    };
    let addr = server.addr();
    let threads: Vec<_> = (0..40)
        .map(|t| {
            std::thread::spawn(move || {
                let tag = format!("conc{t}");
                if t % 2 == 0 {
                    pipelined(addr, 20, &tag, RCPTS)
                } else {
                    lockstep_session(addr, 20, &tag, RCPTS)
                }
            })
        })
        .collect();
    let mut sent = HashMap::new();
    for thread in threads {
        for (id, body) in thread.join().expect("client thread") {
            assert!(sent.insert(id.clone(), body).is_none(), "ID {id} twice");
        }
    }
    assert_eq!(sent.len(), 800);
    check_spool_matches(&server.new_files(), &sent, &template(RCPTS));
    // Queue IDs carry the shard in hex digits 14..16 (src/delivery/id.rs): with 40 connections spread
    // by SO_REUSEPORT, both shards must have stored mail (all on one: chance 2^-39).
    let shards: std::collections::BTreeSet<&str> = sent.keys().map(|id| &id[14..16]).collect();
    assert_eq!(
        shards.into_iter().collect::<Vec<_>>(),
        ["00", "01"],
        "both shards should serve connections"
    );
    assert!(server.tmp_files().is_empty());
}

#[test]
fn concurrent_uring() {
    concurrent("uring", "concurrent_uring");
}

#[test]
fn concurrent_epoll() {
    concurrent("epoll", "concurrent_epoll");
}

#[test]
fn ipv6_loopback() {
    if !ipv6_loopback_available() {
        skip_or_fail("ipv6_loopback", "cannot bind [::1] on this machine");
        return;
    }
    let server = Server::start(&[("RINGMX_LISTEN", "[::1]:0,127.0.0.1:0")]);
    assert_eq!(server.addrs().len(), 2, "{}", server.log_text());
    let v6 = server.addrs()[0];
    assert!(v6.is_ipv6(), "{v6}");
    let v4 = server.addrs()[1];
    assert!(v4.is_ipv4(), "{v4}");

    let mut client = Client::ehlo(v6);
    let body = sample_body("ipv6", 0, 100);
    let id = send_lockstep(&mut client, SENDER, RCPTS, &body);
    let files = server.new_files();
    assert_eq!(files.len(), 1);
    let want = Expected {
        peer: "IPv6:::1",
        body: &body,
        ..template(RCPTS)
    };
    assert_eq!(check_stored(&files[0].0, &files[0].1, &want), id);

    // The IPv4 listener of the same server works too.
    let mut client = Client::ehlo(v4);
    send_lockstep(&mut client, SENDER, RCPTS, &body);
    assert_eq!(server.new_files().len(), 2);
}

#[test]
fn message_size_limit() {
    let server = Server::start(&[("RINGMX_MAX_MESSAGE_SIZE", "4096")]);
    let mut client = Client::greeted(server.addr());
    client.send(b"EHLO client.example\r\n");
    let ehlo = client.expect("250-");
    assert!(ehlo.contains("250-SIZE 4096\r\n"), "{ehlo}");

    // Declared too big: refused at MAIL.
    client.send(format!("MAIL FROM:<{SENDER}> SIZE=4097\r\n").as_bytes());
    client.expect("552 5.3.4");
    // Actually too big: refused after the end of data, nothing stored.
    let big = sample_body("big", 0, 5000);
    client.send(format!("MAIL FROM:<{SENDER}> SIZE=100\r\n").as_bytes());
    client.expect("250 2.1.0");
    client.send(format!("RCPT TO:<{}>\r\n", RCPTS[0]).as_bytes());
    client.expect("250 2.1.5");
    client.send(b"DATA\r\n");
    client.expect("354 ");
    client.send(&dot_stuffed(&big));
    client.expect("552 5.3.4");
    assert!(server.new_files().is_empty());
    assert!(
        server.wait_tmp_empty(Duration::from_secs(5)),
        "tmp/ not empty"
    );

    // The session goes on: a message within the limit is stored.
    let small = sample_body("small", 0, 0);
    let id = send_lockstep(&mut client, SENDER, &RCPTS[..1], &small);
    let files = server.new_files();
    assert_eq!(files.len(), 1);
    let want = Expected {
        body: &small,
        ..template(&RCPTS[..1])
    };
    assert_eq!(check_stored(&files[0].0, &files[0].1, &want), id);
    assert!(server.tmp_files().is_empty());
}

#[test]
fn recipient_limit() {
    let server = Server::start(&[("RINGMX_MAX_RECIPIENTS", "3")]);
    let mut client = Client::ehlo(server.addr());
    client.send(format!("MAIL FROM:<{SENDER}>\r\n").as_bytes());
    client.expect("250 2.1.0");
    let rcpts = ["r1@rcpt.example", "r2@rcpt.example", "r3@rcpt.example"];
    for rcpt in rcpts {
        client.send(format!("RCPT TO:<{rcpt}>\r\n").as_bytes());
        client.expect("250 2.1.5");
    }
    client.send(b"RCPT TO:<r4@rcpt.example>\r\n");
    client.expect("452 4.5.3");
    client.send(b"DATA\r\n");
    client.expect("354 ");
    let body = sample_body("rcpts", 0, 0);
    client.send(&dot_stuffed(&body));
    let id = client.expect_queued();
    let files = server.new_files();
    assert_eq!(files.len(), 1);
    let want = Expected {
        recipients: &rcpts,
        body: &body,
        ..template(RCPTS)
    };
    assert_eq!(check_stored(&files[0].0, &files[0].1, &want), id);
}

#[test]
fn domain_limit() {
    let server = Server::start(&[("RINGMX_DOMAINS", "rcpt.example,other.example")]);
    let mut client = Client::ehlo(server.addr());
    client.send(format!("MAIL FROM:<{SENDER}>\r\n").as_bytes());
    client.expect("250 2.1.0");
    client.send(b"RCPT TO:<x@elsewhere.example>\r\n");
    client.expect("550 5.7.1");
    client.send(b"RCPT TO:<x@sub.rcpt.example>\r\n");
    client.expect("550 5.7.1");
    client.send(b"RCPT TO:<x@Other.Example>\r\n");
    client.expect("250 2.1.5");
    client.send(b"DATA\r\n");
    client.expect("354 ");
    let body = sample_body("domains", 0, 0);
    client.send(&dot_stuffed(&body));
    let id = client.expect_queued();
    let files = server.new_files();
    assert_eq!(files.len(), 1);
    let want = Expected {
        body: &body,
        ..template(&["x@Other.Example"])
    };
    assert_eq!(check_stored(&files[0].0, &files[0].1, &want), id);
}

#[test]
fn connection_limit() {
    let server = Server::start(&[("RINGMX_MAX_CONNECTIONS", "2")]);
    let first = Client::greeted(server.addr());
    let mut second = Client::greeted(server.addr());
    let mut third = Client::connect(server.addr());
    third.expect("421 4.3.2");
    assert_eq!(third.read_until_closed(), "");
    // The two admitted sessions still work.
    second.send(b"NOOP\r\n");
    second.expect("250 ");
    // A freed slot is given to the next client (the server notices the close soon).
    drop(first);
    let admitted = poll(Duration::from_secs(5), || {
        let mut client = Client::connect(server.addr());
        client.read_reply().starts_with("220 ")
    });
    assert!(admitted, "slot not released:\n{}", server.log_text());
}

#[test]
fn command_timeout() {
    let server = Server::start(&[("RINGMX_COMMAND_TIMEOUT_SECS", "1")]);
    let mut client = Client::ehlo(server.addr());
    let started = Instant::now();
    client.expect("421 4.4.2");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(client.read_until_closed(), "");
}

#[test]
fn data_timeout_leaves_nothing() {
    let server = Server::start(&[("RINGMX_DATA_TIMEOUT_SECS", "1")]);
    let mut client = Client::ehlo(server.addr());
    client.send(format!("MAIL FROM:<{SENDER}>\r\nRCPT TO:<{}>\r\nDATA\r\n", RCPTS[0]).as_bytes());
    client.expect("250 2.1.0");
    client.expect("250 2.1.5");
    client.expect("354 ");
    client.send(b"Subject: stalled\r\n\r\nhalf a message\r\n");
    client.expect("421 4.4.2");
    assert_eq!(client.read_until_closed(), "");
    assert!(
        server.wait_tmp_empty(Duration::from_secs(5)),
        "tmp/ not empty"
    );
    assert!(server.new_files().is_empty(), "new/ not empty");
}

/// A client that vanishes mid-DATA (a FIN, or a RST) leaves nothing in new/ or tmp/, and a
/// later session on the same server is stored normally.
#[test]
fn dropped_mid_data_leaves_nothing() {
    let server = Server::start(&[]);
    for reset in [false, true] {
        let mut client = Client::ehlo(server.addr());
        client
            .send(format!("MAIL FROM:<{SENDER}>\r\nRCPT TO:<{}>\r\nDATA\r\n", RCPTS[0]).as_bytes());
        client.expect("250 2.1.0");
        client.expect("250 2.1.5");
        client.expect("354 ");
        client.send(&unfinished(&sample_body("dropped", 0, 20_000)));
        // Give the server the chance to start the file (not required: it may buffer).
        poll(Duration::from_millis(500), || {
            !server.tmp_files().is_empty()
        });
        if reset {
            client.set_linger_zero();
        }
        drop(client);
        assert!(
            server.wait_tmp_empty(Duration::from_secs(5)),
            "tmp/ still holds {:?} (reset {reset})",
            server.tmp_files().iter().map(|f| &f.0).collect::<Vec<_>>()
        );
        assert!(
            server.new_files().is_empty(),
            "new/ not empty (reset {reset})"
        );
    }
    let mut client = Client::ehlo(server.addr());
    let body = sample_body("after", 0, 0);
    send_lockstep(&mut client, SENDER, RCPTS, &body);
    assert_eq!(server.new_files().len(), 1);
}

/// kill -9 right after 50 pipelined messages were acknowledged (and while a 51st is half
/// sent): all 50 are complete in new/, and after a restart tmp/ is empty.
#[test]
fn kill_9_keeps_acknowledged_messages() {
    let mut server = Server::start(&[]);
    let mut client = Client::greeted(server.addr());
    let bodies: Vec<Vec<u8>> = (0..50).map(|n| sample_body("kill9", n, n * 40)).collect();
    let mut script = format!("EHLO {HELO}\r\n").into_bytes();
    for body in &bodies {
        script.extend_from_slice(&transaction(SENDER, RCPTS, body));
    }
    // A 51st message, unfinished.
    script.extend_from_slice(
        format!("MAIL FROM:<{SENDER}>\r\nRCPT TO:<{}>\r\nDATA\r\n", RCPTS[0]).as_bytes(),
    );
    script.extend_from_slice(&unfinished(&sample_body("unfinished", 0, 30_000)));
    client.send(&script);
    client.expect("250-");
    let mut sent = HashMap::new();
    for body in bodies {
        client.expect("250 2.1.0");
        client.expect("250 2.1.5");
        client.expect("250 2.1.5");
        client.expect("354 ");
        sent.insert(client.expect_queued(), body);
    }
    client.expect("250 2.1.0");
    client.expect("250 2.1.5");
    client.expect("354 ");
    let partial = poll(Duration::from_secs(2), || !server.tmp_files().is_empty());
    server.sigkill();
    // Right after the kill, before anything could clean up.
    check_spool_matches(&server.new_files(), &sent, &template(RCPTS));

    server.restart();
    assert!(
        server.tmp_files().is_empty(),
        "tmp/ not cleaned at start-up"
    );
    if partial {
        assert!(
            server.log_text().contains("removed 1 stale file(s)"),
            "{}",
            server.log_text()
        );
    }
    check_spool_matches(&server.new_files(), &sent, &template(RCPTS));
    // The restarted server takes mail on the same spool.
    let mut client = Client::ehlo(server.addr());
    let body = sample_body("after-restart", 0, 0);
    let id = send_lockstep(&mut client, SENDER, RCPTS, &body);
    sent.insert(id, body);
    check_spool_matches(&server.new_files(), &sent, &template(RCPTS));
}

/// SIGTERM: an idle session gets 421 4.3.2 at once; a session in DATA finishes its message
/// (250, then 421); new connections are refused; the server exits 0 within the grace.
fn sigterm_drains(backend: &str, test: &str) {
    let Some(mut server) = start_backend(backend, &[("RINGMX_SHUTDOWN_GRACE_SECS", "5")], test)
    else {
        return;
    };
    let mut idle = Client::ehlo(server.addr());
    let mut busy = Client::ehlo(server.addr());
    busy.send(format!("MAIL FROM:<{SENDER}>\r\nRCPT TO:<{}>\r\nDATA\r\n", RCPTS[0]).as_bytes());
    busy.expect("250 2.1.0");
    busy.expect("250 2.1.5");
    busy.expect("354 ");
    let body = sample_body("sigterm", 0, 10_000);
    let stuffed = dot_stuffed(&body);
    let (first, second) = stuffed.split_at(stuffed.len() / 2);
    busy.send(first);

    server.sigterm();
    idle.expect("421 4.3.2");
    assert_eq!(idle.read_until_closed(), "");

    // New connections are refused: each connect fails, or its connection is closed without a
    // greeting. Several tries, so that both shards' listeners are likely to be met.
    for _ in 0..8 {
        let Ok(mut late) = Client::try_connect(server.addr()) else {
            continue;
        };
        late.set_read_timeout(Duration::from_secs(2));
        match late.try_read_reply() {
            Ok(None) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("a connection after SIGTERM was neither refused nor closed: {e}"),
            Ok(Some(reply)) => panic!("a connection after SIGTERM was answered: {reply:?}"),
        }
    }

    // The session in DATA finishes its message.
    busy.send(second);
    let id = busy.expect_queued();
    busy.expect("421 4.3.2");
    assert_eq!(busy.read_until_closed(), "");

    let status = server.wait_exit(Duration::from_secs(7));
    let status =
        status.unwrap_or_else(|| panic!("no exit within the grace:\n{}", server.log_text()));
    assert!(exited_with(status, 0), "exit {status:?}");
    let files = server.new_files();
    assert_eq!(files.len(), 1);
    let want = Expected {
        body: &body,
        ..template(&RCPTS[..1])
    };
    assert_eq!(check_stored(&files[0].0, &files[0].1, &want), id);
    assert!(server.tmp_files().is_empty());
}

#[test]
fn sigterm_drains_uring() {
    sigterm_drains("uring", "sigterm_drains_uring");
}

#[test]
fn sigterm_drains_epoll() {
    sigterm_drains("epoll", "sigterm_drains_epoll");
}

/// A SIGTERM as soon as the server says it listens drains and exits 0: the handler must be in
/// place before the first connection can be served. Repeated to meet the race.
#[test]
fn sigterm_right_after_start() {
    for _ in 0..10 {
        let mut server = Server::start(&[]);
        server.sigterm();
        let status = server.wait_exit(Duration::from_secs(5));
        let status = status.unwrap_or_else(|| panic!("no exit:\n{}", server.log_text()));
        assert!(
            exited_with(status, 0),
            "exit {status:?} (killed by the signal?):\n{}",
            server.log_text()
        );
    }
}

/// Past the grace period a session still in DATA is closed and its message dropped.
#[test]
fn sigterm_grace_expires() {
    let mut server = Server::start(&[("RINGMX_SHUTDOWN_GRACE_SECS", "1")]);
    let mut busy = Client::ehlo(server.addr());
    busy.send(format!("MAIL FROM:<{SENDER}>\r\nRCPT TO:<{}>\r\nDATA\r\n", RCPTS[0]).as_bytes());
    busy.expect("250 2.1.0");
    busy.expect("250 2.1.5");
    busy.expect("354 ");
    busy.send(&unfinished(&sample_body("grace", 0, 10_000)));
    server.sigterm();
    let status = server.wait_exit(Duration::from_secs(5));
    let status =
        status.unwrap_or_else(|| panic!("no exit after the grace:\n{}", server.log_text()));
    assert!(exited_with(status, 0), "exit {status:?}");
    busy.read_until_closed();
    assert!(server.new_files().is_empty());
    assert!(
        server.tmp_files().is_empty(),
        "tmp/ not cleaned on shutdown"
    );
}

/// A tmpfs mounted over a directory, unmounted when dropped.
struct TinyTmpfs {
    dir: tempfile::TempDir,
}

impl TinyTmpfs {
    /// Mounts a tmpfs of `size` on a fresh directory; `None` when that is not possible.
    fn mount(size: &str) -> Option<TinyTmpfs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let dir = tempfile::tempdir().ok()?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then_some(TinyTmpfs { dir })
    }
}

impl Drop for TinyTmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// A full spool answers 451 4.3.0, leaves nothing half-written, and the session goes on.
#[test]
fn spool_full_gives_451() {
    let Some(tmpfs) = TinyTmpfs::mount("64k") else {
        skip_or_fail("spool_full_gives_451", "not root or cannot mount a tmpfs");
        return;
    };
    let spool = tmpfs.dir.path().display().to_string();
    let server = Server::start(&[("RINGMX_SPOOL", &spool)]);
    let mut client = Client::ehlo(server.addr());
    client.send(format!("MAIL FROM:<{SENDER}>\r\nRCPT TO:<{}>\r\nDATA\r\n", RCPTS[0]).as_bytes());
    client.expect("250 2.1.0");
    client.expect("250 2.1.5");
    client.expect("354 ");
    client.send(&dot_stuffed(&sample_body("huge", 0, 256 * 1024)));
    client.expect("451 4.3.0");
    assert!(server.new_files().is_empty(), "new/ holds a partial file");
    assert!(server.tmp_files().is_empty(), "tmp/ holds a partial file");

    // The session goes on, and a small message fits.
    let body = sample_body("fits", 0, 0);
    let id = send_lockstep(&mut client, SENDER, &RCPTS[..1], &body);
    let files = server.new_files();
    assert_eq!(files.len(), 1);
    let want = Expected {
        body: &body,
        ..template(&RCPTS[..1])
    };
    assert_eq!(check_stored(&files[0].0, &files[0].1, &want), id);
    drop(server); // Before the unmount.
}

#[test]
fn bad_value_exits_2_with_one_line() {
    let (status, lines) = run_to_exit(
        &[("RINGMX_SHARDS", "abc"), ("RINGMX_LISTEN", "127.0.0.1:0")],
        Duration::from_secs(5),
    );
    assert!(exited_with(status, 2), "exit {status:?}: {lines:?}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("RINGMX_SHARDS"), "{lines:?}");
    assert!(lines[0].contains("abc"), "{lines:?}");
}

#[test]
fn unknown_variable_exits_2_with_suggestion() {
    let (status, lines) = run_to_exit(
        &[("RINGMX_SHRADS", "2"), ("RINGMX_LISTEN", "127.0.0.1:0")],
        Duration::from_secs(5),
    );
    assert!(exited_with(status, 2), "exit {status:?}: {lines:?}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("RINGMX_SHRADS"), "{lines:?}");
    assert!(lines[0].contains("did you mean RINGMX_SHARDS"), "{lines:?}");
}

#[test]
fn discard_delivery_stores_nothing() {
    let server = Server::start(&[("RINGMX_DELIVERY", "discard")]);
    assert!(server.log_text().contains("delivery discard"));
    let mut client = Client::ehlo(server.addr());
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(send_lockstep(
            &mut client,
            SENDER,
            RCPTS,
            &sample_body("discard", n, 100),
        ));
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 5, "IDs not unique: {ids:?}");
    assert!(server.new_files().is_empty());
    assert!(server.tmp_files().is_empty());
}
