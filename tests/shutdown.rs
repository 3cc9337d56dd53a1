//! Shutdown at its edges (SPEC §4.7): a session still open when the grace ends gets
//! `421 4.3.2` before it is closed and leaves nothing behind; a session still in
//! `RINGMX_GREET_DELAY_MS` when SIGTERM arrives gets `421 4.3.2` at once, not a greeting.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// A client mid-DATA when the grace ends is told 421 4.3.2, and its message leaves nothing.
fn grace_end_says_421(backend: &str) {
    let test = format!("grace_end_says_421/{backend}");
    let vars = [("RINGMX_SHUTDOWN_GRACE_SECS", "1")];
    let Some(mut server) = start_backend(backend, &vars, &test) else {
        return;
    };
    let mut client = Client::ehlo(server.addr());
    client.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n");
    client.expect("250 ");
    client.expect("250 ");
    client.expect("354 ");
    client.send(&unfinished(&sample_body("grace", 0, 5_000)));
    assert!(poll(Duration::from_secs(5), || server.tmp_files().len() == 1));
    let signalled = Instant::now();
    server.sigterm();
    let reply = client.read_reply();
    assert!(reply.starts_with("421 4.3.2 "), "{test}: {reply:?}");
    // After the grace (1 s), not before: the transaction was given its time.
    assert!(signalled.elapsed() >= Duration::from_millis(900), "{test}");
    assert_eq!(client.read_until_closed(), "", "{test}");
    let status = server.wait_exit(Duration::from_secs(10)).expect("exit");
    assert!(status.success(), "{test}: {status:?}");
    assert!(server.tmp_files().is_empty(), "{test}: tmp/ not clean");
    assert!(server.new_files().is_empty(), "{test}: new/ not empty");
}

#[test]
fn grace_end_says_421_epoll() {
    grace_end_says_421("epoll");
}

#[test]
fn grace_end_says_421_uring() {
    grace_end_says_421("uring");
}

/// SIGTERM during the greeting delay answers 421 4.3.2 within a second, never 220.
fn sigterm_in_greet_delay_says_421(backend: &str) {
    let test = format!("sigterm_in_greet_delay_says_421/{backend}");
    let vars = [("RINGMX_GREET_DELAY_MS", "20000")];
    let Some(mut server) = start_backend(backend, &vars, &test) else {
        return;
    };
    let mut client = Client::connect(server.addr());
    client.set_read_timeout(Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    let signalled = Instant::now();
    server.sigterm();
    let reply = client.read_reply();
    assert!(reply.starts_with("421 4.3.2 "), "{test}: {reply:?}");
    assert!(
        signalled.elapsed() < Duration::from_secs(2),
        "{test}: 421 came after {:?}",
        signalled.elapsed()
    );
    assert_eq!(client.read_until_closed(), "", "{test}");
    let status = server.wait_exit(Duration::from_secs(10)).expect("exit");
    assert!(status.success(), "{test}: {status:?}");
}

#[test]
fn sigterm_in_greet_delay_says_421_epoll() {
    sigterm_in_greet_delay_says_421("epoll");
}

#[test]
fn sigterm_in_greet_delay_says_421_uring() {
    sigterm_in_greet_delay_says_421("uring");
}

/// SIGHUP (what `systemctl reload` sends) never ends the server, with or without TLS.
#[test]
fn sighup_does_not_stop_the_server() {
    let server = Server::start(&[]);
    // SAFETY: kill(2) with our own child's pid and a valid signal number.
    let rc = unsafe { libc::kill(server.pid(), libc::SIGHUP) };
    assert_eq!(rc, 0);
    std::thread::sleep(Duration::from_millis(300));
    let mut client = Client::connect(server.addr());
    client.expect("220 ");
}
