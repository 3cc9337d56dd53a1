//! Allocations per message on the whole server path: the real server in-process (both
//! backends, discard and Maildir delivery), one pipelining session. A counting global
//! allocator counts every allocation of every thread while switched on; the client allocates
//! nothing in that window (its script is built before, its replies read into a fixed buffer),
//! so what is counted is the server's. Two batches of N pipelined messages warm up; over a
//! third batch of N neither the discard path nor the Maildir path (file creation, vectored
//! writes, fsync, the move into new/, the shared directory fsync, on the ring or on epoll's
//! file threads) may allocate at all.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use ringmx::driver::{epoll::Epoll, uring, uring::Uring};

struct Counting;

static ON: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; counting
// touches only two atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ON.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: forwarded unchanged; the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if ON.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if ON.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: `ptr` came from this allocator, which is `System` underneath.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, which is `System` underneath.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// One test at a time: the counter is process-wide.
static LOCK: Mutex<()> = Mutex::new(());

const MESSAGES: usize = 200;

/// One pipelined transaction with a 1 KiB body.
fn transaction(n: usize) -> Vec<u8> {
    let mut t = format!(
        "MAIL FROM:<s@origin.example>\r\nRCPT TO:<r@dest.example>\r\nDATA\r\n\
         Subject: message {n}\r\n\r\n"
    )
    .into_bytes();
    for line in 0..16 {
        t.extend_from_slice(format!("{line:02} {}\r\n", "x".repeat(58)).as_bytes());
    }
    t.extend_from_slice(b".\r\n");
    t
}

/// Reads from `stream` into `buf` until `count` replies starting `250 2.0.0 Ok: queued` have
/// arrived since `seen`, without allocating; returns the new count.
fn wait_queued(stream: &mut TcpStream, buf: &mut [u8], mut seen: usize, count: usize) -> usize {
    const NEEDLE: &[u8] = b"queued as ";
    let mut carry = 0;
    while seen < count {
        let n = stream.read(&mut buf[carry..]).expect("read replies");
        assert!(n > 0, "server closed");
        let end = carry + n;
        let mut at = 0;
        while let Some(pos) = buf[at..end].windows(NEEDLE.len()).position(|w| w == NEEDLE) {
            seen += 1;
            at += pos + NEEDLE.len();
        }
        // Keep a possible partial needle at the end for the next read.
        let keep = (end - at).min(NEEDLE.len() - 1);
        buf.copy_within(end - keep..end, 0);
        carry = keep;
    }
    seen
}

/// Allocations over the third batch of `MESSAGES` for `D` and `delivery`.
fn allocations_per_session<D: ringmx::driver::Driver>(delivery: &str) -> u64 {
    ringmx::log::set_level(ringmx::log::Level::Warn);
    let spool = tempfile::tempdir().expect("spool");
    let vars: Vec<(String, String)> = vec![
        ("RINGMX_LISTEN".into(), "127.0.0.1:0".into()),
        ("RINGMX_SPOOL".into(), spool.path().display().to_string()),
        ("RINGMX_SHARDS".into(), "1".into()),
        ("RINGMX_PIN".into(), "0".into()),
        ("RINGMX_DELIVERY".into(), delivery.into()),
        ("RINGMX_HOSTNAME".into(), "mx.ringmx.test".into()),
    ];
    let config = ringmx::config::from_vars(vars, vec![0], "test.example").expect("config");
    let running = ringmx::server::start::<D>(config).expect("server starts");
    let mut stream = TcpStream::connect(running.addrs[0]).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    // Two batches warm up: buffers grow to their working sizes, pools and tables fill.
    let mut warm = b"EHLO client.example\r\n".to_vec();
    let mut counted = Vec::new();
    for n in 0..MESSAGES {
        warm.extend_from_slice(&transaction(n));
        counted.extend_from_slice(&transaction(MESSAGES + n));
    }
    stream.write_all(&warm).unwrap();
    let seen = wait_queued(&mut stream, &mut buf, 0, MESSAGES);
    std::thread::sleep(Duration::from_millis(200));
    stream
        .write_all(&warm[b"EHLO client.example\r\n".len()..])
        .unwrap();
    let seen = wait_queued(&mut stream, &mut buf, seen, 2 * MESSAGES);
    std::thread::sleep(Duration::from_millis(200));

    ALLOCATIONS.store(0, Ordering::Relaxed);
    ON.store(true, Ordering::Relaxed);
    stream.write_all(&counted).unwrap();
    wait_queued(&mut stream, &mut buf, seen, 3 * MESSAGES);
    ON.store(false, Ordering::Relaxed);
    let counted = ALLOCATIONS.load(Ordering::Relaxed);

    drop(stream);
    running.stop();
    assert!(running.join(), "a shard failed");
    counted
}

fn check<D: ringmx::driver::Driver>(name: &str) {
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let discard = allocations_per_session::<D>("discard");
    let maildir = allocations_per_session::<D>("maildir");
    eprintln!(
        "{name}: a third batch of {MESSAGES} messages: discard {discard} allocations, maildir {maildir}"
    );
    assert_eq!(discard, 0, "{name}: the discard path allocated");
    assert_eq!(maildir, 0, "{name}: the Maildir path allocated");
}

#[test]
fn server_path_allocations_epoll() {
    check::<Epoll>("epoll");
}

#[test]
fn server_path_allocations_uring() {
    if let Err(e) = uring::probe(256) {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("io_uring cannot be set up: {e}");
        }
        eprintln!("SKIP server_path_allocations_uring: {e}");
        return;
    }
    check::<Uring>("uring");
}
