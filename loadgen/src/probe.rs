//! One blocking session per target before the run: read the greeting, send EHLO, QUIT.
//! It records what the server says about itself (greeting line, EHLO capabilities) for the JSON
//! result, decides whether pipelining is used, and fails early when `--bdat` needs CHUNKING the
//! server does not offer. It is not counted in any statistic.
use crate::proxy::{header, ProxyVersion};
use ringmx_wire::reply::{lines, ReplyReader};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

/// What one target said about itself.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TargetInfo {
    pub target: String,
    pub address: String,
    /// The greeting line(s) after the 220 code.
    pub greeting: Vec<String>,
    /// The EHLO reply lines after the first (the capabilities), as sent.
    pub ehlo_capabilities: Vec<String>,
    pub pipelining_advertised: bool,
    pub chunking_advertised: bool,
}

/// Reads one reply with a blocking socket, returning its code and lines.
fn read_reply(s: &mut TcpStream, r: &mut ReplyReader) -> Result<(u16, Vec<String>), String> {
    loop {
        match r.next_reply() {
            Ok(Some(rep)) => return Ok((rep.code, lines(r.text(&rep)))),
            Ok(None) => {}
            Err(e) => return Err(format!("bad reply from server: {e:?}")),
        }
        // A Ctrl-C interrupts a read with a timeout even under SA_RESTART: read again (the
        // handler has set its flag; a second Ctrl-C exits at once).
        let n = loop {
            match s.read(r.spare()) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other.map_err(|e| format!("read: {e}"))?,
            }
        };
        if n == 0 {
            return Err("server closed the connection".into());
        }
        r.filled(n);
    }
}

/// A blocking connection to `addr`, bound to `source` first when given.
fn connect(
    addr: SocketAddr,
    timeout: Duration,
    source: Option<IpAddr>,
) -> std::io::Result<TcpStream> {
    let Some(ip) = source else {
        return TcpStream::connect_timeout(&addr, timeout);
    };
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    sock.bind(&SocketAddr::new(ip, 0).into())?;
    sock.connect_timeout(&addr.into(), timeout)?;
    Ok(sock.into())
}

/// Connects to `addr` (from `source` when given; a PROXY header first when asked), reads
/// greeting and EHLO, and says QUIT.
pub fn probe(
    target: &str,
    addr: SocketAddr,
    ehlo: &str,
    timeout: Duration,
    source: Option<IpAddr>,
    proxy: Option<ProxyVersion>,
) -> Result<TargetInfo, String> {
    let ctx = |e: String| format!("probe of {target}: {e}");
    let mut s = connect(addr, timeout, source).map_err(|e| ctx(format!("connect: {e}")))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| ctx(e.to_string()))?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| ctx(e.to_string()))?;
    if let Some(v) = proxy {
        let h = header(v, s.local_addr().map_err(|e| ctx(e.to_string()))?, addr);
        s.write_all(&h).map_err(|e| ctx(format!("write: {e}")))?;
    }
    let mut r = ReplyReader::new(0);
    let (code, greeting) = read_reply(&mut s, &mut r).map_err(ctx)?;
    if code != 220 {
        return Err(ctx(format!("greeting {code} {}", greeting.join(" / "))));
    }
    s.write_all(format!("EHLO {ehlo}\r\n").as_bytes())
        .map_err(|e| ctx(format!("write: {e}")))?;
    let (code, ehlo_lines) = read_reply(&mut s, &mut r).map_err(ctx)?;
    if code != 250 {
        return Err(ctx(format!(
            "EHLO answered {code} {}",
            ehlo_lines.join(" / ")
        )));
    }
    let caps: Vec<String> = ehlo_lines
        .into_iter()
        .skip(1)
        .filter(|c| !c.trim().is_empty())
        .collect();
    let has = |kw: &str| {
        caps.iter().any(|c| {
            c.split_ascii_whitespace()
                .next()
                .is_some_and(|w| w.eq_ignore_ascii_case(kw))
        })
    };
    let info = TargetInfo {
        target: target.to_string(),
        address: addr.to_string(),
        greeting,
        pipelining_advertised: has("PIPELINING"),
        chunking_advertised: has("CHUNKING"),
        ehlo_capabilities: caps,
    };
    // QUIT politely; its answer does not matter for the probe.
    if s.write_all(b"QUIT\r\n").is_ok() {
        let _ = read_reply(&mut s, &mut r);
    }
    Ok(info)
}
