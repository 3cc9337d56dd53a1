//! Shared harness for the tests that drive the real `ringmx` binary over loopback.
//!
//! `Server` starts the binary with a temporary Maildir spool, an ephemeral port and a clean
//! `RINGMX_*` environment, learns the bound address(es) from its first log line and keeps
//! draining its stderr into a log the test can read. `Client` is a raw SMTP client over one TCP
//! connection: it writes exactly the bytes it is given and reads whole (multi-line) replies.
//! The `check_stored` family compares a spool file byte for byte with what SPEC §4.4 says it
//! must hold. Every wait here is bounded: a hung server fails the test, never hangs it.

#![allow(dead_code)] // Each test crate uses a different part of the harness.

pub mod nats;
pub mod ops;

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringmx_wire::{dot_stuff, ReplyReader};

/// How long the server may take to print its "listening on" line.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client waits for any one reply.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The host name every test server uses, so file names and headers are predictable.
pub const HOSTNAME: &str = "mx.ringmx.test";
/// How often the polling helpers look again.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// A running `ringmx` process with its own spool.
pub struct Server {
    child: Option<Child>,
    vars: Vec<(String, String)>,
    spool: PathBuf,
    /// Holds the temporary spool alive (None when the test gave `RINGMX_SPOOL`).
    _spool_dir: Option<tempfile::TempDir>,
    addrs: Vec<SocketAddr>,
    log: Arc<Mutex<Vec<String>>>,
}

/// A server that did not come up: how it exited (if it did) and what it logged.
#[derive(Debug)]
pub struct StartError {
    pub status: Option<ExitStatus>,
    pub log: Vec<String>,
}

impl Server {
    /// Starts the server with `vars` on top of the harness defaults; panics with the log if it
    /// does not come up.
    pub fn start(vars: &[(&str, &str)]) -> Server {
        match Server::try_start(vars) {
            Ok(server) => server,
            Err(e) => panic!(
                "ringmx did not start (exit {:?}); log:\n{}",
                e.status,
                e.log.join("\n")
            ),
        }
    }

    /// Starts the server, or says why it did not come up.
    pub fn try_start(vars: &[(&str, &str)]) -> Result<Server, StartError> {
        let mut all: Vec<(String, String)> = vec![
            ("RINGMX_LISTEN".into(), "127.0.0.1:0".into()),
            ("RINGMX_SHARDS".into(), "2".into()),
            ("RINGMX_LOG".into(), "info".into()),
            ("RINGMX_HOSTNAME".into(), HOSTNAME.into()),
        ];
        for (name, value) in vars {
            all.retain(|(n, _)| n != name);
            all.push((name.to_string(), value.to_string()));
        }
        let (spool, spool_dir) = match all.iter().find(|(n, _)| n == "RINGMX_SPOOL") {
            Some((_, path)) => (PathBuf::from(path), None),
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("ringmx-spool-")
                    .tempdir()
                    .expect("temporary spool");
                let path = dir.path().to_path_buf();
                all.push(("RINGMX_SPOOL".into(), path.display().to_string()));
                (path, Some(dir))
            }
        };
        let mut server = Server {
            child: None,
            vars: all,
            spool,
            _spool_dir: spool_dir,
            addrs: Vec::new(),
            log: Arc::new(Mutex::new(Vec::new())),
        };
        server.spawn()?;
        Ok(server)
    }

    /// Spawns the binary with this server's variables and waits for its "listening on" line.
    fn spawn(&mut self) -> Result<(), StartError> {
        let mut command = command_with(&self.vars);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn ringmx");
        let stderr = child.stderr.take().expect("piped stderr");
        let (ready_tx, ready_rx) = mpsc::channel::<Option<String>>();
        let log = Arc::clone(&self.log);
        std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                log.lock().unwrap().push(line.clone());
                if line.contains("listening on") {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(Some(line));
                    }
                }
            }
            if let Some(tx) = ready.take() {
                let _ = tx.send(None);
            }
        });
        let line = ready_rx.recv_timeout(START_TIMEOUT).ok().flatten();
        let Some(line) = line else {
            // Either stderr closed (the process is exiting) or the timeout passed.
            let status = wait_child(&mut child, Duration::from_secs(2));
            if status.is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
            // Give the reader thread a moment to store the last lines.
            std::thread::sleep(Duration::from_millis(50));
            return Err(StartError {
                status,
                log: self.log(),
            });
        };
        self.addrs = parse_listening(&line);
        assert!(!self.addrs.is_empty(), "no address in: {line}");
        self.child = Some(child);
        Ok(())
    }

    /// The first listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Every listening address, as the first log line names them.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The spool root.
    pub fn spool(&self) -> &Path {
        &self.spool
    }

    /// Everything the server has written to stderr so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The log as one string, for assertion messages.
    pub fn log_text(&self) -> String {
        self.log().join("\n")
    }

    /// The files in `new/`: (name, contents), sorted by name.
    pub fn new_files(&self) -> Vec<(String, Vec<u8>)> {
        read_files(&self.spool.join("new"))
    }

    /// The files in `tmp/`: (name, contents), sorted by name.
    pub fn tmp_files(&self) -> Vec<(String, Vec<u8>)> {
        read_files(&self.spool.join("tmp"))
    }

    /// Waits (bounded) until `tmp/` is empty; returns whether it became so.
    pub fn wait_tmp_empty(&self, timeout: Duration) -> bool {
        poll(timeout, || self.tmp_files().is_empty())
    }

    /// Waits (bounded) until some log line contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        poll(timeout, || self.log().iter().any(|l| l.contains(needle)))
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("server running").id() as i32
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        // SAFETY: kill(2) with our own child's pid and a valid signal number.
        let rc = unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        assert_eq!(rc, 0, "kill SIGTERM: {}", io::Error::last_os_error());
    }

    /// Kills the server with SIGKILL and reaps it.
    pub fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits up to `timeout` for the server to exit; returns its status if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let status = wait_child(child, timeout);
        if status.is_some() {
            self.child = None;
        }
        status
    }

    /// Kills the server (SIGKILL) if it runs and starts it again on the same spool and
    /// variables. With port 0 the new process gets a new port: use `addr()` again.
    pub fn restart(&mut self) {
        self.sigkill();
        self.log.lock().unwrap().push("---- restart ----".into());
        if let Err(e) = self.spawn() {
            panic!(
                "ringmx did not restart (exit {:?}); log:\n{}",
                e.status,
                e.log.join("\n")
            );
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.sigkill();
        if std::thread::panicking() {
            // Shown with the failing test's output.
            eprintln!("---- ringmx log ----\n{}", self.log_text());
        }
    }
}

/// A `Command` for the binary with exactly `vars` as its `RINGMX_*` environment.
pub fn command_with(vars: &[(String, String)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringmx"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("RINGMX_") {
            command.env_remove(name);
        }
    }
    for (name, value) in vars {
        command.env(name, value);
    }
    command
}

/// Runs the binary with exactly `vars` (nothing else of ringmx's) until it exits, bounded by
/// `timeout`; returns its status and stderr lines. For start-up errors.
pub fn run_to_exit(vars: &[(&str, &str)], timeout: Duration) -> (ExitStatus, Vec<String>) {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    let mut child = command_with(&vars)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringmx");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let status = match wait_child(&mut child, timeout) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ringmx with {vars:?} did not exit within {timeout:?}");
        }
    };
    let text = reader.join().expect("stderr reader");
    (status, text.lines().map(str::to_string).collect())
}

/// Polls `child` until it exits or `timeout` passes.
fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL_INTERVAL),
            _ => return None,
        }
    }
}

/// The addresses in a "... listening on A,B, spool ..." line.
fn parse_listening(line: &str) -> Vec<SocketAddr> {
    let Some(start) = line.find("listening on ") else {
        return Vec::new();
    };
    let rest = &line[start + "listening on ".len()..];
    let list = rest.split(", ").next().unwrap_or("");
    list.split(',')
        .filter_map(|a| a.trim().parse().ok())
        .collect()
}

/// (name, contents) of every plain file in `dir`, sorted by name; empty if `dir` is missing.
pub fn read_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<(String, Vec<u8>)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            // A file may be renamed away between listing and reading.
            std::fs::read(e.path()).ok().map(|bytes| (name, bytes))
        })
        .collect();
    files.sort();
    files
}

/// A TCP port on 127.0.0.1 that nothing listens on now (bound and released; the caller binds it
/// again at once), never one this process was given before: two ports asked for in a row
/// (a peer's client and monitoring ports) could otherwise be the same one, which the kernel
/// hands out again as soon as it is released.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    // Held until a new port turns up, so that the kernel does not offer them again meanwhile.
    let mut held = Vec::new();
    for _ in 0..1000 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = listener.local_addr().expect("local address").port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
        held.push(listener);
    }
    panic!("no new ephemeral port in 1000 tries");
}

/// Calls `done` every few milliseconds until it is true or `timeout` passes.
pub fn poll(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Whether the exit status is a normal exit with `code`.
pub fn exited_with(status: ExitStatus, code: i32) -> bool {
    status.code() == Some(code) && status.signal().is_none()
}

/// A raw SMTP client on one TCP connection.
pub struct Client {
    stream: TcpStream,
    replies: ReplyReader,
}

impl Client {
    /// Connects (bounded) with a 10 s read timeout and TCP_NODELAY; does not read the greeting.
    pub fn connect(addr: SocketAddr) -> Client {
        Client::try_connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"))
    }

    /// Connects, or returns the error.
    pub fn try_connect(addr: SocketAddr) -> io::Result<Client> {
        Client::on(TcpStream::connect_timeout(&addr, Duration::from_secs(5))?)
    }

    /// A client over an already connected stream, with the same timeouts and TCP_NODELAY.
    pub fn on(stream: TcpStream) -> io::Result<Client> {
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        stream.set_write_timeout(Some(READ_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            replies: ReplyReader::exact(0),
        })
    }

    /// Connects and reads the 220 greeting.
    pub fn greeted(addr: SocketAddr) -> Client {
        let mut client = Client::connect(addr);
        client.expect("220 ");
        client
    }

    /// Connects, reads the greeting, says EHLO and reads its reply.
    pub fn ehlo(addr: SocketAddr) -> Client {
        let mut client = Client::greeted(addr);
        client.send(b"EHLO client.example\r\n");
        client.expect("250");
        client
    }

    /// The underlying stream (for socket options or a half close).
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Sets the read timeout.
    pub fn set_read_timeout(&self, timeout: Duration) {
        self.stream.set_read_timeout(Some(timeout)).unwrap();
    }

    /// Writes all of `bytes` in one call.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("send: {e}"));
    }

    /// Writes `bytes` one byte per write (TCP_NODELAY is on, so mostly one byte per segment).
    pub fn send_bytewise(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.stream
                .write_all(std::slice::from_ref(b))
                .unwrap_or_else(|e| panic!("send: {e}"));
        }
    }

    /// Reads one whole reply, with the line ends, checked to the letter of RFC 5321 (see
    /// `ringmx_wire::Strictness::Exact`). `Ok(None)` when the connection closed before any
    /// byte of it.
    pub fn try_read_reply(&mut self) -> io::Result<Option<String>> {
        loop {
            let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
            match self.replies.next_reply() {
                Ok(Some(reply)) => {
                    let text = self.replies.text(&reply);
                    return match std::str::from_utf8(text) {
                        Ok(text) => Ok(Some(text.to_string())),
                        Err(_) => Err(invalid(format!("reply not UTF-8: {text:?}"))),
                    };
                }
                Ok(None) => {}
                Err(e) => {
                    let text = String::from_utf8_lossy(self.replies.pending());
                    return Err(invalid(format!("bad reply ({e:?}): {text:?}")));
                }
            }
            // A read with a timeout ends with EINTR when the thread is notified (a signal, or
            // io_uring task work for a ring this thread used): read again.
            let n = match self.stream.read(self.replies.spare()) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                read => read?,
            };
            if n == 0 {
                if self.replies.is_empty() {
                    return Ok(None);
                }
                let text = String::from_utf8_lossy(self.replies.pending());
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed inside a reply: {text:?}"),
                ));
            }
            self.replies.filled(n);
        }
    }

    /// Reads one whole reply; panics on close, timeout or a malformed reply.
    pub fn read_reply(&mut self) -> String {
        match self.try_read_reply() {
            Ok(Some(reply)) => reply,
            Ok(None) => panic!("connection closed while a reply was expected"),
            Err(e) => panic!("reading a reply: {e}"),
        }
    }

    /// Reads one reply and asserts it starts with `prefix`; returns it.
    pub fn expect(&mut self, prefix: &str) -> String {
        let reply = self.read_reply();
        assert!(
            reply.starts_with(prefix),
            "expected a reply starting {prefix:?}, got {reply:?}"
        );
        reply
    }

    /// Reads one `250 ... queued as ID` reply and returns the ID.
    pub fn expect_queued(&mut self) -> String {
        let reply = self.expect("250 2.0.0 ");
        queue_id(&reply).unwrap_or_else(|| panic!("no queue ID in {reply:?}"))
    }

    /// Reads until the server closes the connection (bounded by the read timeout); returns
    /// what came before the close. A reset counts as a close.
    pub fn read_until_closed(&mut self) -> String {
        let mut rest = self.replies.pending().to_vec();
        self.replies.reset();
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => rest.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!(
                    "waiting for the server to close: {e}; read so far: {:?}",
                    String::from_utf8_lossy(&rest)
                ),
            }
        }
        String::from_utf8_lossy(&rest).into_owned()
    }

    /// Sets SO_LINGER to 0 so that dropping the client sends a RST instead of a FIN.
    pub fn set_linger_zero(&self) {
        use std::os::fd::AsRawFd;
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt on our own open socket with a correctly sized `linger` value.
        let rc = unsafe {
            libc::setsockopt(
                self.stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_LINGER: {}", io::Error::last_os_error());
    }

    /// Half-closes the sending side (the server sees end of input).
    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

/// The queue ID in a `250 2.0.0 Ok: queued as ID` reply.
pub fn queue_id(reply: &str) -> Option<String> {
    let id = reply.trim_end().rsplit(' ').next()?;
    (!id.is_empty() && reply.contains("queued as ")).then(|| id.to_string())
}

/// Dot-stuffs `body` (which must end with CRLF) and appends the end-of-data line.
pub fn dot_stuffed(body: &[u8]) -> Vec<u8> {
    assert!(body.ends_with(b"\r\n"), "test bodies end with CRLF");
    let mut out = Vec::with_capacity(body.len() + 8);
    dot_stuff(&mut out, body);
    out
}

/// The dot-stuffed `body` without the end-of-data line: a message still being sent.
pub fn unfinished(body: &[u8]) -> Vec<u8> {
    let mut out = dot_stuffed(body);
    out.truncate(out.len() - 3);
    out
}

/// One transaction, as a pipelining client sends it: MAIL, RCPTs, DATA, the stuffed body.
pub fn transaction(sender: &str, recipients: &[&str], body: &[u8]) -> Vec<u8> {
    let mut out = format!("MAIL FROM:<{sender}>\r\n").into_bytes();
    for rcpt in recipients {
        out.extend_from_slice(format!("RCPT TO:<{rcpt}>\r\n").as_bytes());
    }
    out.extend_from_slice(b"DATA\r\n");
    out.extend_from_slice(&dot_stuffed(body));
    out
}

/// Sends one transaction in lockstep (one command, one reply) and returns the queue ID.
pub fn send_lockstep(
    client: &mut Client,
    sender: &str,
    recipients: &[&str],
    body: &[u8],
) -> String {
    client.send(format!("MAIL FROM:<{sender}>\r\n").as_bytes());
    client.expect("250 2.1.0");
    for rcpt in recipients {
        client.send(format!("RCPT TO:<{rcpt}>\r\n").as_bytes());
        client.expect("250 2.1.5");
    }
    client.send(b"DATA\r\n");
    client.expect("354 ");
    client.send(&dot_stuffed(body));
    client.expect_queued()
}

/// A message body unique to (`tag`, `n`) with awkward content: header lines, a blank line,
/// lines starting with dots (one a lone dot), 8-bit UTF-8, a long line and `len_extra` more
/// bytes. Always ends with CRLF.
pub fn sample_body(tag: &str, n: usize, len_extra: usize) -> Vec<u8> {
    let mut body = format!(
        "From: <s@sender.example>\r\nTo: <r@rcpt.example>\r\nSubject: {tag} message {n}\r\n\r\n\
         Line one of {tag}/{n}.\r\n.leading dot\r\n..two dots\r\n.\r\nafter a lone dot\r\n\
         \u{e9}t\u{e9} \u{2014} \u{1F4EC}\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&[b'x'; 1200]);
    body.extend_from_slice(b"\r\n");
    let mut i = 0;
    while i < len_extra {
        let line = format!("{tag}:{n}:{i:08}\r\n");
        body.extend_from_slice(line.as_bytes());
        i += line.len();
    }
    body.extend_from_slice(b"end\r\n");
    body
}

/// What a stored message must hold.
pub struct Expected<'a> {
    pub sender: &'a str,
    pub recipients: &'a [&'a str],
    pub helo: &'a str,
    pub peer: &'a str,
    /// `ESMTP`, `SMTP` or `UTF8SMTP`.
    pub protocol: &'a str,
    pub body: &'a [u8],
}

/// Checks one spool file byte for byte against `want`: Return-Path, Delivered-To per
/// recipient, the folded Received header, then exactly the body. Returns the queue ID named in
/// the Received header; panics with a readable diff otherwise.
pub fn check_stored(name: &str, file: &[u8], want: &Expected<'_>) -> String {
    let (id, stored) = check_trace(name, file, want);
    if stored != want.body {
        let at = stored
            .iter()
            .zip(want.body)
            .position(|(a, b)| a != b)
            .unwrap_or(stored.len().min(want.body.len()));
        panic!(
            "{name}: message bytes differ at offset {at} (stored {} bytes, want {}).\n\
             stored from there: {:?}\nwant from there:   {:?}",
            stored.len(),
            want.body.len(),
            String::from_utf8_lossy(&stored[at..stored.len().min(at + 80)]),
            String::from_utf8_lossy(&want.body[at..want.body.len().min(at + 80)]),
        );
    }
    id
}

/// Checks the trace headers of one spool file against `want` (its `body` is ignored) and
/// returns the queue ID in the Received header and the message bytes that follow them.
pub fn check_trace<'f>(name: &str, file: &'f [u8], want: &Expected<'_>) -> (String, &'f [u8]) {
    let show = || String::from_utf8_lossy(file).into_owned();
    let mut head = format!("Return-Path: <{}>\r\n", want.sender);
    for rcpt in want.recipients {
        head.push_str(&format!("Delivered-To: {rcpt}\r\n"));
    }
    head.push_str(&format!(
        "Received: from {} ([{}])\r\n\tby {HOSTNAME} (ringmx) with {} id ",
        want.helo, want.peer, want.protocol
    ));
    assert!(
        file.starts_with(head.as_bytes()),
        "{name}: trace headers differ.\nwant prefix: {head:?}\nfile: {:?}",
        show()
    );
    let rest = &file[head.len()..];
    let id_len = rest
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(0);
    assert!(id_len > 0, "{name}: no queue ID in Received: {:?}", show());
    let id = String::from_utf8_lossy(&rest[..id_len]).into_owned();
    let mut rest = &rest[id_len..];
    if want.recipients.len() == 1 {
        let for_line = format!("\r\n\tfor <{}>", want.recipients[0]);
        assert!(
            rest.starts_with(for_line.as_bytes()),
            "{name}: want {for_line:?} in Received: {:?}",
            show()
        );
        rest = &rest[for_line.len()..];
    }
    // "; Tue, 03 Jun 2025 10:11:12 +0000\r\n"
    assert!(
        rest.starts_with(b"; "),
        "{name}: Received date: {:?}",
        show()
    );
    let end = rest
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or_else(|| panic!("{name}: unterminated Received: {:?}", show()));
    let date = String::from_utf8_lossy(&rest[2..end]).into_owned();
    assert!(
        date.ends_with(" +0000") && date.len() == "Tue, 03 Jun 2025 10:11:12 +0000".len(),
        "{name}: Received date {date:?}"
    );
    (id, &rest[end + 2..])
}

/// Checks that the files in `new/` are exactly the messages `ids` → bodies: every file is
/// named `<ID>.<HOSTNAME>` (or `<ID>-<n>.<HOSTNAME>` when the first name was taken), its Received header names the same ID, and its content is the
/// body sent under that ID.
pub fn check_spool_matches(
    files: &[(String, Vec<u8>)],
    sent: &HashMap<String, Vec<u8>>,
    template: &Expected<'_>,
) {
    assert_eq!(
        files.len(),
        sent.len(),
        "files in new/ vs messages acknowledged"
    );
    for (name, bytes) in files {
        let stem = name
            .strip_suffix(&format!(".{HOSTNAME}"))
            .unwrap_or_else(|| panic!("file name {name:?} is not <ID>.{HOSTNAME}"));
        // A name that was taken in new/ makes the spool try `<ID>-<n>`.
        let id = stem.split_once('-').map_or(stem, |(id, _)| id);
        let body = sent
            .get(id)
            .unwrap_or_else(|| panic!("file {name} has an ID no 250 reply named"));
        let want = Expected { body, ..*template };
        let header_id = check_stored(name, bytes, &want);
        assert_eq!(header_id, id, "{name}: Received names another ID");
    }
}

/// Whether this machine can listen on ::1.
pub fn ipv6_loopback_available() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

/// A test cannot run here because `why` (a peer program, io_uring, root, ::1 is missing).
/// Under `CI=true` that fails the test: CI installs every peer, so a missing one is a broken
/// set-up, never a pass. Elsewhere the test says so and returns.
pub fn skip_or_fail(test: &str, why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {why} (CI=true: a missing peer fails the test)");
    }
    eprintln!("SKIP {test}: {why}");
}

/// Whether this kernel takes `RINGMX_FSYNC=syncfs` (Linux 5.17 or later: see
/// `maildir::syncfs_handle`); prints a skip line (or fails, under CI) when not.
pub fn syncfs_works(test: &str) -> bool {
    use ringmx::delivery::maildir::{kernel_version, SYNCFS_MIN_KERNEL};
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    if kernel_version(release).is_some_and(|v| v >= SYNCFS_MIN_KERNEL) {
        return true;
    }
    skip_or_fail(
        test,
        &format!("RINGMX_FSYNC=syncfs needs Linux 5.17 or later; this kernel is {release:?}"),
    );
    false
}

/// The sender, HELO name and client address of the messages `Client::ehlo` sends on IPv4
/// loopback with `transaction`, as `check_stored` expects them.
pub fn expected(sender: &'static str, recipients: &'static [&'static str]) -> Expected<'static> {
    Expected {
        sender,
        recipients,
        helo: "client.example",
        peer: "127.0.0.1",
        protocol: "ESMTP",
        body: b"",
    }
}

/// The resident set size of process `pid`, in KiB.
pub fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

/// Sends `bodies` over one connection in a single write (EHLO `client.example`, every
/// transaction, QUIT), written from another thread, then reads every reply in order. Returns
/// queue ID → body.
pub fn pipelined_session(
    addr: SocketAddr,
    sender: &str,
    recipients: &[&str],
    bodies: Vec<Vec<u8>>,
) -> HashMap<String, Vec<u8>> {
    let mut client = Client::greeted(addr);
    let mut script = b"EHLO client.example\r\n".to_vec();
    for body in &bodies {
        script.extend_from_slice(&transaction(sender, recipients, body));
    }
    script.extend_from_slice(b"QUIT\r\n");
    // Written from another thread: the server's replies could fill our receive window first.
    let mut writer = client.stream().try_clone().unwrap();
    let sent = std::thread::spawn(move || writer.write_all(&script));
    let ehlo = client.expect("250-");
    assert!(ehlo.contains("PIPELINING"), "{ehlo}");
    let mut ids = HashMap::new();
    for body in bodies {
        client.expect("250 2.1.0");
        for _ in recipients {
            client.expect("250 2.1.5");
        }
        client.expect("354 ");
        let id = client.expect_queued();
        assert!(ids.insert(id.clone(), body).is_none(), "ID {id} repeated");
    }
    client.expect("221 2.0.0");
    assert_eq!(client.read_until_closed(), "");
    sent.join().unwrap().expect("pipelined write");
    ids
}

/// Whether the server refused to start because io_uring is unavailable (the test then skips).
pub fn uring_refused(error: &StartError) -> bool {
    error
        .log
        .iter()
        .any(|l| l.contains("io_uring cannot be set up"))
}

/// Starts a server on `backend` (`uring` or `epoll`) with `vars`; `None` (after printing a skip
/// line) when the machine refuses io_uring.
pub fn start_backend(backend: &str, vars: &[(&str, &str)], test: &str) -> Option<Server> {
    let mut all = vec![("RINGMX_BACKEND", backend)];
    all.extend_from_slice(vars);
    match Server::try_start(&all) {
        Ok(server) => {
            assert!(
                server.log_text().contains(&format!("backend {backend},")),
                "start-up line does not name backend {backend}:\n{}",
                server.log_text()
            );
            Some(server)
        }
        Err(e) if backend == "uring" && uring_refused(&e) => {
            let why = format!("io_uring is refused on this machine: {}", e.log.join(" | "));
            skip_or_fail(test, &why);
            None
        }
        Err(e) => panic!(
            "ringmx ({backend}) did not start (exit {:?}); log:\n{}",
            e.status,
            e.log.join("\n")
        ),
    }
}

/// Runs an external program to its end, bounded by `timeout` (killed and a panic past it);
/// returns its status, stdout and stderr.
pub fn run_bounded(mut command: Command, timeout: Duration) -> (ExitStatus, String, String) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let err = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let status = match wait_child(&mut child, timeout) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{command:?} did not finish within {timeout:?}; stderr: {}",
                err.join().unwrap_or_default()
            );
        }
    };
    (
        status,
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    )
}

/// The path of `program` if it is on PATH (or, for an absolute path, if it exists).
pub fn find_program(program: &str) -> Option<PathBuf> {
    if program.starts_with('/') {
        let path = PathBuf::from(program);
        return path.is_file().then_some(path);
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|path| path.is_file())
}
