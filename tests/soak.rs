//! Resource bounds under sustained load: RSS stays flat and file descriptors are released.
//!
//! The real binary (two shards, fsync on) takes pipelined sessions from several client threads
//! for `HARDENING_SOAK_SECS` seconds (default 5; `scripts/hardening` runs minutes), while the
//! test samples its VmRSS and open descriptors (/proc/PID/fd) every second and deletes
//! delivered files (as a delivery agent would) to bound the disk. It asserts that RSS after the
//! first quarter grows by less than 16 MiB to the end, that every reply was as expected, and
//! that the descriptor count returns to its idle baseline once the sessions end. Figures are
//! printed on a `HARDENING soak` line.

mod common;

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const SENDER: &str = "sender@origin.example";
const RCPTS: &[&str] = &["rcpt@rcpt.example"];
const WORKERS: usize = 8;
const MESSAGES_PER_SESSION: usize = 20;

/// The server's open file descriptors.
fn fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("proc fd")
        .count()
}

/// One pipelined session of `MESSAGES_PER_SESSION` messages; returns how many were queued.
fn session(addr: SocketAddr, worker: usize, round: u64) -> u64 {
    let mut client = Client::ehlo(addr);
    let mut script = Vec::new();
    for n in 0..MESSAGES_PER_SESSION {
        let body = sample_body(&format!("soak/w{worker}/r{round}"), n, (n * 97) % 4000);
        script.extend_from_slice(&transaction(SENDER, RCPTS, &body));
    }
    script.extend_from_slice(b"QUIT\r\n");
    client.stream().write_all(&script).expect("write session");
    for _ in 0..MESSAGES_PER_SESSION {
        client.expect("250 2.1.0");
        client.expect("250 2.1.5");
        client.expect("354 ");
        client.expect_queued();
    }
    client.expect("221 2.0.0");
    assert_eq!(client.read_until_closed(), "");
    MESSAGES_PER_SESSION as u64
}

#[test]
fn sustained_load_keeps_rss_flat_and_releases_fds() {
    let secs: u64 = std::env::var("HARDENING_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let server = Server::start(&[("RINGMX_SHARDS", "2")]);
    let (addr, pid) = (server.addr(), server.pid());
    let new_dir = server.spool().join("new");
    // Warm up, then take the idle baselines.
    session(addr, 99, 0);
    std::thread::sleep(Duration::from_millis(200));
    let fds_idle = fds(pid);
    let rss_idle = rss_kib(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let messages = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (stop, messages) = (Arc::clone(&stop), Arc::clone(&messages));
            std::thread::spawn(move || {
                let mut round = 0;
                while !stop.load(Ordering::Relaxed) {
                    round += 1;
                    messages.fetch_add(session(addr, w, round), Ordering::Relaxed);
                }
            })
        })
        .collect();
    let began = Instant::now();
    let mut samples: Vec<(f64, u64, u64, usize)> = Vec::new(); // (s, msgs, rss KiB, fds)
    while began.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(1));
        for entry in std::fs::read_dir(&new_dir).expect("new/").flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
        samples.push((
            began.elapsed().as_secs_f64(),
            messages.load(Ordering::Relaxed),
            rss_kib(pid),
            fds(pid),
        ));
        assert!(
            workers.iter().all(|w| !w.is_finished()),
            "a load thread failed"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("load thread");
    }
    let total = messages.load(Ordering::Relaxed);
    let elapsed = began.elapsed().as_secs_f64();
    let fds_back = poll(Duration::from_secs(10), || fds(pid) <= fds_idle);
    let fds_end = fds(pid);

    let quarter = samples[samples.len() / 4];
    let last = *samples.last().unwrap();
    let rss_max = samples.iter().map(|s| s.2).max().unwrap();
    let fds_max = samples.iter().map(|s| s.3).max().unwrap();
    let grown_kib = last.2 as i64 - quarter.2 as i64;
    let per_msg = grown_kib as f64 * 1024.0 / (last.1 - quarter.1).max(1) as f64;
    println!(
        "HARDENING soak: {secs} s, {WORKERS} pipelining clients, {total} messages \
         ({:.0}/s); RSS idle {rss_idle} KiB, at {:.0} s {} KiB, end {} KiB, max {rss_max} KiB \
         (growth after the first quarter {grown_kib} KiB = {per_msg:.3} B/message); fds idle \
         {fds_idle}, max under load {fds_max}, after the sessions {fds_end}",
        total as f64 / elapsed,
        quarter.0,
        quarter.2,
        last.2,
    );
    assert!(total > 0, "no message went through");
    assert!(
        fds_back,
        "descriptors not released: {fds_end} open, {fds_idle} when idle"
    );
    assert!(
        grown_kib < 16 * 1024,
        "RSS grew {grown_kib} KiB after the first quarter: {samples:?}"
    );
}
