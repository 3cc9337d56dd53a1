//! Harness for the operating tests: real peers (HAProxy, promtool, systemd-analyze), a plain
//! HTTP/1.1 GET for the metrics endpoint, and a sample reader for the Prometheus text.
//!
//! A peer that is missing skips its test with a `SKIP` line, except under `CI=true`, where it
//! fails it: CI installs every peer (scripts/test), so a missing one there is a broken set-up,
//! never a pass.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{find_program, run_bounded, Client, Server};

/// How long a peer may take to come up.
const PEER_START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one HTTP exchange may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// `program` on PATH (or at its absolute path); `None` after a SKIP line, or a panic under
/// `CI=true`.
pub fn peer(program: &str, package: &str, test: &str) -> Option<PathBuf> {
    let found = find_program(program).or_else(|| {
        ["/usr/sbin", "/usr/bin"]
            .iter()
            .map(|dir| Path::new(dir).join(program))
            .find(|path| path.is_file())
    });
    if found.is_none() {
        super::skip_or_fail(
            test,
            &format!("{program} is not installed (apt-get install {package})"),
        );
    }
    found
}

pub use super::free_port;

/// An HTTP response as read from the wire.
#[derive(Debug)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The header block, lines joined with `\n`.
    pub headers: String,
    /// The body.
    pub body: String,
}

/// Sends `method path` to `addr` as HTTP/1.1 and reads the response to the end (the endpoint
/// closes after each answer).
pub fn http(addr: SocketAddr, method: &str, path: &str) -> HttpResponse {
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: ringmx-test\r\n\r\n");
    http_raw(addr, request.as_bytes())
}

/// Sends `request` as given and reads the whole response.
pub fn http_raw(addr: SocketAddr, request: &[u8]) -> HttpResponse {
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT).expect("connect to metrics");
    stream.set_read_timeout(Some(HTTP_TIMEOUT)).unwrap();
    stream.write_all(request).expect("send request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read response");
    let raw = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a header block");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    HttpResponse {
        status,
        headers: head.replace("\r\n", "\n"),
        body: body.to_string(),
    }
}

/// The value of the sample whose name and labels are exactly `series` in Prometheus text.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().expect("a number"))
        })
}

/// Runs `promtool check metrics` on `text`; Err with its output when it finds a problem.
pub fn promtool_check(promtool: &Path, text: &str) -> Result<(), String> {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let output = child.wait_with_output().expect("promtool output");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("promtool: {:?}\n{said}", output.status))
    }
}

/// A HAProxy process in TCP mode, killed when dropped.
pub struct Haproxy {
    child: Child,
    /// Its configuration directory (kept for the life of the process).
    _dir: tempfile::TempDir,
}

/// How a HAProxy frontend announces clients to ringmx.
#[derive(Clone, Copy, Debug)]
pub enum SendProxy {
    /// `send-proxy`: a v1 (text) header.
    V1,
    /// `send-proxy-v2`: a v2 (binary) header.
    V2,
    /// `send-proxy-v2` with `proxy-v2-options ssl,unique-id,authority`: a v2 header with TLVs.
    V2Tlvs,
}

impl Haproxy {
    /// Starts HAProxy with one TCP frontend per entry of `frontends`, each relaying to
    /// `backend` with its kind of PROXY header; returns it and the frontends' addresses.
    pub fn start(
        program: &Path,
        backend: SocketAddr,
        frontends: &[SendProxy],
    ) -> (Haproxy, Vec<SocketAddr>) {
        let dir = tempfile::Builder::new()
            .prefix("ringmx-haproxy-")
            .tempdir()
            .unwrap();
        let mut config = String::from(
            "global\n    maxconn 1000\n\ndefaults\n    mode tcp\n    timeout connect 5s\n    \
             timeout client 60s\n    timeout server 60s\n",
        );
        let mut addrs = Vec::new();
        for (i, kind) in frontends.iter().enumerate() {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let option = match kind {
                SendProxy::V1 => "send-proxy",
                SendProxy::V2 => "send-proxy-v2",
                SendProxy::V2Tlvs => "send-proxy-v2 proxy-v2-options unique-id,crc32c",
            };
            config.push_str(&format!(
                "\nfrontend f{i}\n    bind {addr}\n    unique-id-format ringmx-test-%ci-%cp-%rt\n    \
                 default_backend b{i}\n\nbackend b{i}\n    server ringmx {backend} {option}\n"
            ));
            addrs.push(addr);
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, &config).unwrap();
        let (status, _, stderr) = run_bounded(
            {
                let mut c = Command::new(program);
                c.arg("-c").arg("-f").arg(&path);
                c
            },
            PEER_START_TIMEOUT,
        );
        assert!(status.success(), "haproxy -c refused:\n{config}\n{stderr}");
        let child = Command::new(program)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn haproxy");
        let haproxy = Haproxy { child, _dir: dir };
        let deadline = Instant::now() + PEER_START_TIMEOUT;
        for addr in &addrs {
            // The frontend is up once the kernel lists its port as listening (a probe
            // connection would reach ringmx as a session of its own and disturb the counts
            // under test).
            loop {
                if listening(addr.port()) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "haproxy did not listen on {addr}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        (haproxy, addrs)
    }
}

/// Whether some socket listens on TCP `port` (IPv4), from /proc/net/tcp.
pub fn listening(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let want = format!(":{port:04X}");
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // fields[1] is local_address (ADDR:PORT in hex), fields[3] the state (0A: LISTEN).
        fields.len() > 3 && fields[1].ends_with(&want) && fields[3] == "0A"
    })
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP connection to `to` from the local address `from` (such as 127.0.0.2).
pub fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    socket.bind(&local.into()).expect("bind the client address");
    socket
        .connect_timeout(&to.into(), HTTP_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect {from} -> {to}: {e}"));
    socket.into()
}

/// A `Client` over an already connected stream (such as one from `connect_from`).
pub fn client_on(stream: TcpStream) -> Client {
    Client::on(stream).unwrap()
}

/// The `Received:` header of a stored message, unfolded onto one line.
pub fn received(file: &[u8]) -> String {
    let text = String::from_utf8_lossy(file);
    let start = text.find("\r\nReceived: ").expect("a Received header") + 2;
    let mut header = String::new();
    for (i, line) in text[start..].split("\r\n").enumerate() {
        if i > 0 && !line.starts_with([' ', '\t']) {
            break;
        }
        header.push_str(line);
    }
    header
}

/// The metrics endpoint's address, from the server's log line `metrics endpoint at http://ADDR/metrics`.
pub fn metrics_addr(server: &Server) -> SocketAddr {
    let deadline = Instant::now() + PEER_START_TIMEOUT;
    loop {
        let found = server.log().iter().find_map(|line| {
            let rest = line.split("metrics endpoint at http://").nth(1)?;
            rest.split('/').next()?.parse().ok()
        });
        if let Some(addr) = found {
            return addr;
        }
        assert!(
            Instant::now() < deadline,
            "no metrics line in:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One scrape of the server's metrics.
pub fn scrape(server: &Server) -> String {
    let response = http(metrics_addr(server), "GET", "/metrics");
    assert_eq!(response.status, 200, "{response:?}");
    response.body
}
