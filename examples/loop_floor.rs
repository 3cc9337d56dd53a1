//! The floor of the server's per-message cost on io_uring: the same SMTP session (`Session`,
//! its scanner and parser, queue IDs from `IdGenerator`) behind a bare ring loop of its own on
//! one thread, with none of the server's runtime: no tokio, no tokio-uring, no futures. It
//! stands beside `scripts/spool-ceiling` (the file system's ceiling with no SMTP in front) as a
//! measuring stick for `scripts/cost`, not as a server: it discards every message, keeps no
//! deadlines, has no TLS, PROXY, metrics, shutdown or limits on connections, and answers
//! only while the peer reads its replies (a reply the socket does not take at once is sent
//! blocking).
//!
//! The loop: one multishot accept; per connection one receive at a time into a 64 KiB buffer;
//! each completion's bytes fed to the session in place; replies sent with `send(2)`; the ring
//! set up with `IORING_SETUP_DEFER_TASKRUN` (completions run only when the loop asks for them,
//! in `io_uring_enter`, which also submits) — what tokio-uring 0.5 cannot do.
//!
//! `RINGMX_LISTEN=127.0.0.1:PORT cargo run --release --example loop_floor`, then e.g.
//! `ringmx-loadgen --target 127.0.0.1:PORT --threads 1 --connections 10 --size 1024`.

use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use ringmx::delivery::{process_nonce, IdGenerator};
use ringmx::proto::{Config, Output, Session, Step};

/// Receive buffer per connection.
const BUFFER: usize = 64 * 1024;
/// `user_data` of the accept.
const ACCEPT: u64 = u64::MAX;

struct Conn {
    fd: RawFd,
    buf: Vec<u8>,
    /// Bytes received and not yet consumed by the session, from the buffer's start.
    len: usize,
    session: Session,
    out: Output,
}

fn main() -> std::io::Result<()> {
    let listen = std::env::var("RINGMX_LISTEN").unwrap_or_else(|_| "127.0.0.1:2525".into());
    let listener = TcpListener::bind(&listen)?;
    set_nodelay(listener.as_raw_fd());
    let mut ring: IoUring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun()
        .build(1024)?;
    let config = Arc::new(Config {
        hostname: "floor.example".into(),
        ..Config::default()
    });
    let mut ids = IdGenerator::new(0, process_nonce());
    let mut conns: Vec<Option<Box<Conn>>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut done: Vec<(u64, i32, u32)> = Vec::with_capacity(1024);
    eprintln!("loop_floor listening on {listen}");
    push(&mut ring, accept(&listener));
    loop {
        ring.submit_and_wait(1)?;
        done.clear();
        done.extend(
            ring.completion()
                .map(|cqe| (cqe.user_data(), cqe.result(), cqe.flags())),
        );
        let now = Instant::now();
        for &(key, result, flags) in &done {
            if key == ACCEPT {
                if result >= 0 {
                    let mut conn = Box::new(Conn {
                        fd: result,
                        buf: vec![0; BUFFER],
                        len: 0,
                        session: Session::new(Arc::clone(&config), now),
                        out: Output::new(),
                    });
                    conn.session.greeting(&mut conn.out);
                    send_all(conn.fd, &conn.out.replies);
                    conn.out.replies.clear();
                    let slot = free.pop().unwrap_or_else(|| {
                        conns.push(None);
                        conns.len() - 1
                    });
                    push(&mut ring, recv(&mut conn, slot));
                    conns[slot] = Some(conn);
                }
                if !cqueue::more(flags) {
                    push(&mut ring, accept(&listener));
                }
                continue;
            }
            let slot = key as usize;
            let Some(conn) = conns[slot].as_mut() else {
                continue;
            };
            let open = result > 0 && {
                conn.len += result as usize;
                feed(conn, now, &mut ids)
            };
            if open {
                let entry = recv(conn, slot);
                push(&mut ring, entry);
            } else if let Some(conn) = conns[slot].take() {
                // SAFETY: the descriptor the accept gave this connection, closed once.
                unsafe { libc::close(conn.fd) };
                free.push(slot);
            }
        }
    }
}

/// Feeds what the connection received to its session and sends the replies; false when the
/// session is over.
fn feed(conn: &mut Conn, now: Instant, ids: &mut IdGenerator) -> bool {
    let mut pos = 0;
    let open = loop {
        let (n, step) = conn
            .session
            .handle_input(&conn.buf[pos..conn.len], now, &mut conn.out);
        conn.out.body.clear();
        pos += n;
        match step {
            Step::Read if conn.out.replies_full() => {
                send_all(conn.fd, &conn.out.replies);
                conn.out.replies.clear();
            }
            Step::Read => break true,
            Step::Begin | Step::Discard => {}
            Step::Store => {
                let id = ids.next(SystemTime::now());
                conn.session.handle_stored(Ok(id.as_str()), &mut conn.out);
            }
            Step::Close | Step::StartTls => break false,
        }
    };
    send_all(conn.fd, &conn.out.replies);
    conn.out.replies.clear();
    conn.buf.copy_within(pos..conn.len, 0);
    conn.len -= pos;
    open && conn.len < BUFFER
}

/// The multishot accept on `listener` (armed again whenever the kernel ends it).
fn accept(listener: &TcpListener) -> squeue::Entry {
    opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd()))
        .build()
        .user_data(ACCEPT)
}

/// The next receive of `conn`, into the free end of its buffer.
fn recv(conn: &mut Conn, slot: usize) -> squeue::Entry {
    let spare = &mut conn.buf[conn.len..];
    opcode::Recv::new(types::Fd(conn.fd), spare.as_mut_ptr(), spare.len() as u32)
        .build()
        .user_data(slot as u64)
}

fn push(ring: &mut IoUring, entry: squeue::Entry) {
    // SAFETY: every buffer an entry points into is a connection's, boxed and kept in `conns`
    // until its receive completed (a connection is dropped only on its own completion).
    while unsafe { ring.submission().push(&entry) }.is_err() {
        ring.submit().expect("io_uring_enter");
    }
}

/// Sends all of `bytes` (blocking on a full send buffer; errors end nothing here: the next
/// receive sees the connection fail).
fn send_all(fd: RawFd, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: `bytes` is valid for its length; `fd` is the connection's open socket.
        let sent =
            unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL) };
        if sent <= 0 {
            return;
        }
        bytes = &bytes[sent as usize..];
    }
}

/// Accepted connections inherit TCP_NODELAY from the listener, as the server's do.
fn set_nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on the listener with a c_int option value.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}
