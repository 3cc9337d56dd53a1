//! PROXY protocol (SPEC §4.6) against the real server: behind a real HAProxy (`send-proxy`,
//! `send-proxy-v2`, v2 with TLVs) a client bound to 127.0.0.2 is 127.0.0.2 in the stored
//! `Received:` header and for the per-IP limit and its exemptions, although ringmx's socket
//! peer is HAProxy at 127.0.0.1. Byte-level tests send headers by hand: split across reads,
//! with the session's first bytes in the same packet, truncated, never ending, late, v2 LOCAL,
//! v1 UNKNOWN, v2 naming IPv6 clients, over IPv6, and a `PROXY` line from a network that is not
//! trusted (an unknown command there).

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::ops::{client_on, connect_from, peer, received, sample, scrape, Haproxy, SendProxy};
use common::{ipv6_loopback_available, transaction, Client, Server};
use ppp::v2;

/// A server that expects PROXY headers from `from`, with a 1 s header timeout and metrics on.
fn server(from: &str, extra: &[(&str, &str)]) -> Server {
    let mut vars = vec![
        ("RINGMX_PROXY_FROM", from),
        ("RINGMX_PROXY_TIMEOUT_SECS", "1"),
        ("RINGMX_METRICS_LISTEN", "127.0.0.1:0"),
    ];
    vars.extend_from_slice(extra);
    Server::start(&vars)
}

/// A v2 PROXY header for TCP from `src` to `dst` with `tlvs`.
fn v2_header(src: SocketAddr, dst: SocketAddr, tlvs: &[(u8, &[u8])]) -> Vec<u8> {
    let mut builder = v2::Builder::with_addresses(
        v2::Version::Two | v2::Command::Proxy,
        v2::Protocol::Stream,
        (src, dst),
    );
    for (kind, value) in tlvs {
        builder = builder.write_tlv(*kind, value).unwrap();
    }
    builder.build().unwrap()
}

/// Sends one message on `client` (already past EHLO) and returns the stored file's Received.
fn send_one(server: &Server, client: &mut Client, tag: &str) -> String {
    let body = format!("Subject: {tag}\r\n\r\nvia a balancer\r\n");
    client.send(&transaction(
        "s@sender.example",
        &["r@rcpt.example"],
        body.as_bytes(),
    ));
    client.expect("250 2.1.0");
    client.expect("250 2.1.5");
    client.expect("354 ");
    let id = client.expect_queued();
    let file = server
        .new_files()
        .into_iter()
        .find(|(name, _)| name.starts_with(&id))
        .unwrap_or_else(|| panic!("{id} not in new/"));
    received(&file.1)
}

/// Whether the server closed `stream` without sending a byte (within a few seconds).
fn closed_silently(stream: &mut TcpStream) -> Result<(), String> {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut got = Vec::new();
    match stream.read_to_end(&mut got) {
        Ok(_) if got.is_empty() => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && got.is_empty() => Ok(()),
        Ok(_) => Err(format!("server sent {:?}", String::from_utf8_lossy(&got))),
        Err(e) => Err(format!(
            "not closed: {e}; got {:?}",
            String::from_utf8_lossy(&got)
        )),
    }
}

/// The PROXY header counter for `result` in a scrape.
fn proxy_count(text: &str, result: &str) -> f64 {
    let series = format!("ringmx_proxy_headers_total{{result=\"{result}\"}}");
    sample(text, &series).unwrap_or_else(|| panic!("{series} missing:\n{text}"))
}

#[test]
fn haproxy_v1_v2_and_tlvs_carry_the_client_address() {
    let Some(haproxy) = peer(
        "haproxy",
        "haproxy",
        "haproxy_v1_v2_and_tlvs_carry_the_client_address",
    ) else {
        return;
    };
    let server = server("127.0.0.1/32", &[("RINGMX_LIMIT_EXEMPT", "")]);
    let kinds = [SendProxy::V1, SendProxy::V2, SendProxy::V2Tlvs];
    let (_haproxy, fronts) = Haproxy::start(&haproxy, server.addr(), &kinds);
    for (kind, front) in kinds.iter().zip(&fronts) {
        let mut client = client_on(connect_from("127.0.0.2", *front));
        client.expect("220 ");
        client.send(b"EHLO client.example\r\n");
        client.expect("250");
        let header = send_one(&server, &mut client, &format!("{kind:?}"));
        assert!(header.contains("[127.0.0.2]"), "{kind:?}: {header}");
        assert!(!header.contains("127.0.0.1"), "{kind:?}: {header}");
        client.send(b"QUIT\r\n");
        client.expect("221");
    }
    let text = scrape(&server);
    assert_eq!(proxy_count(&text, "ok"), 3.0, "{text}");
    assert_eq!(proxy_count(&text, "malformed"), 0.0);
}

#[test]
fn haproxy_per_ip_limit_and_exemption_see_the_header_address() {
    let Some(haproxy) = peer(
        "haproxy",
        "haproxy",
        "haproxy_per_ip_limit_and_exemption_see_the_header_address",
    ) else {
        return;
    };
    // Every connection reaches ringmx from HAProxy at 127.0.0.1: only the header tells the
    // clients apart.
    let server = server(
        "127.0.0.1/32",
        &[
            ("RINGMX_MAX_CONNECTIONS_PER_IP", "2"),
            ("RINGMX_LIMIT_EXEMPT", "127.0.0.4/32"),
        ],
    );
    let (_haproxy, fronts) = Haproxy::start(&haproxy, server.addr(), &[SendProxy::V2]);
    let front = fronts[0];
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut client = client_on(connect_from("127.0.0.2", front));
        client.expect("220 ");
        held.push(client);
    }
    let mut third = client_on(connect_from("127.0.0.2", front));
    third.expect("421 4.7.0");
    // Another client address is not affected, and an exempt one has no limit.
    let mut other = client_on(connect_from("127.0.0.3", front));
    other.expect("220 ");
    for _ in 0..3 {
        let mut client = client_on(connect_from("127.0.0.4", front));
        client.expect("220 ");
        held.push(client);
    }
    // Once one of 127.0.0.2's sessions ends, it may connect again.
    let mut first = held.remove(0);
    first.send(b"QUIT\r\n");
    first.expect("221");
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = client_on(connect_from("127.0.0.2", front));
        let reply = again.read_reply();
        if reply.starts_with("220 ") {
            break;
        }
        assert!(reply.starts_with("421 4.7.0"), "{reply}");
        assert!(
            Instant::now() < deadline,
            "the per-IP slot was never released"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = scrape(&server);
    let refused = sample(&text, "ringmx_connections_total{result=\"refused_per_ip\"}").unwrap();
    assert!(refused >= 1.0, "{text}");
}

#[test]
fn header_with_the_session_in_the_same_packet_and_split_across_reads() {
    let server = server("127.0.0.0/8", &[]);
    let dst = server.addr();
    // v1 and the first command in one write.
    let mut client = Client::connect(dst);
    client.send(b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\nEHLO client.example\r\n");
    client.expect("220 ");
    client.expect("250");
    let header = send_one(&server, &mut client, "v1-pipelined");
    assert!(header.contains("[192.0.2.7]"), "{header}");
    // v2 with TLVs, one byte per write, then the session.
    let mut client = Client::connect(dst);
    let src: SocketAddr = "198.51.100.9:5555".parse().unwrap();
    let v2 = v2_header(
        src,
        dst,
        &[(0x01, b"smtp"), (0x05, b"id-1"), (0x04, &[0; 40])],
    );
    client.send_bytewise(&v2);
    client.expect("220 ");
    client.send_bytewise(b"EHLO client.example\r\n");
    client.expect("250");
    let header = send_one(&server, &mut client, "v2-bytewise");
    assert!(header.contains("[198.51.100.9]"), "{header}");
    // v1 split in the middle of an address, with a pause.
    let mut client = Client::connect(dst);
    client.send(b"PROXY TCP4 203.0.11");
    std::thread::sleep(Duration::from_millis(200));
    client.send(b"3.5 198.51.100.1 1 25\r");
    std::thread::sleep(Duration::from_millis(100));
    client.send(b"\nEHLO c.example\r\n");
    client.expect("220 ");
    client.expect("250");
    let header = send_one(&server, &mut client, "v1-split");
    assert!(header.contains("[203.0.113.5]"), "{header}");
    let text = scrape(&server);
    assert_eq!(proxy_count(&text, "ok"), 3.0, "{text}");
}

#[test]
fn no_greeting_before_the_header() {
    let server = server("127.0.0.0/8", &[]);
    let mut client = Client::connect(server.addr());
    client.set_read_timeout(Duration::from_millis(500));
    let mut byte = [0u8; 1];
    let early = client.stream().peek(&mut byte);
    assert!(
        matches!(&early, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
            || e.kind() == std::io::ErrorKind::TimedOut),
        "the server spoke before the header: {early:?}"
    );
    client.set_read_timeout(Duration::from_secs(10));
    client.send(b"PROXY UNKNOWN\r\n");
    client.expect("220 ");
}

#[test]
fn local_unknown_and_ipv6_clients() {
    let server = server("127.0.0.0/8", &[]);
    let dst = server.addr();
    // v2 LOCAL (a health check): the socket's own address stays.
    let local = v2::Builder::with_addresses(
        v2::Version::Two | v2::Command::Local,
        v2::Protocol::Unspecified,
        v2::Addresses::Unspecified,
    )
    .build()
    .unwrap();
    let mut client = Client::connect(dst);
    client.send(&local);
    client.expect("220 ");
    client.send(b"EHLO c.example\r\n");
    client.expect("250");
    let header = send_one(&server, &mut client, "local");
    assert!(header.contains("127.0.0.1"), "{header}");
    // v1 UNKNOWN: the same.
    let mut client = Client::connect(dst);
    client.send(b"PROXY UNKNOWN\r\nEHLO c.example\r\n");
    client.expect("220 ");
    client.expect("250");
    let header = send_one(&server, &mut client, "unknown");
    assert!(header.contains("127.0.0.1"), "{header}");
    // A v2 header naming an IPv6 client over an IPv4 connection.
    let mut client = Client::connect(dst);
    let src: SocketAddr = "[2001:db8::7]:40000".parse().unwrap();
    let far: SocketAddr = "[2001:db8::1]:25".parse().unwrap();
    client.send(&v2_header(src, far, &[(0x02, b"mx.example")]));
    client.expect("220 ");
    client.send(b"EHLO c.example\r\n");
    client.expect("250");
    let header = send_one(&server, &mut client, "v2-ipv6");
    assert!(header.contains("2001:db8::7"), "{header}");
    assert!(!header.contains("127.0.0.1"), "{header}");
    // A v1 TCP6 header.
    let mut client = Client::connect(dst);
    client.send(b"PROXY TCP6 2001:db8::8 2001:db8::1 40000 25\r\nEHLO c.example\r\n");
    client.expect("220 ");
    client.expect("250");
    let header = send_one(&server, &mut client, "v1-ipv6");
    assert!(header.contains("2001:db8::8"), "{header}");
    let text = scrape(&server);
    assert_eq!(proxy_count(&text, "local"), 2.0, "{text}");
    assert_eq!(proxy_count(&text, "ok"), 2.0, "{text}");
}

#[test]
fn v2_over_an_ipv6_connection() {
    if !ipv6_loopback_available() {
        common::skip_or_fail("v2_over_an_ipv6_connection", "no IPv6 loopback");
        return;
    }
    let server = server("::1/128", &[("RINGMX_LISTEN", "[::1]:0")]);
    let dst = server.addr();
    let mut client = Client::connect(dst);
    let src: SocketAddr = "[2001:db8::42]:1234".parse().unwrap();
    client.send(&v2_header(src, dst, &[]));
    client.expect("220 ");
    client.send(b"EHLO c.example\r\n");
    client.expect("250");
    let header = send_one(&server, &mut client, "ipv6-socket");
    assert!(header.contains("2001:db8::42"), "{header}");
    assert!(!header.contains("::1]"), "{header}");
}

#[test]
fn missing_malformed_truncated_endless_and_late_headers_close_without_a_reply() {
    let server = server("127.0.0.0/8", &[]);
    let dst = server.addr();
    let connect = || TcpStream::connect(dst).unwrap();
    use std::io::Write;
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "smtp instead of a header",
            b"EHLO client.example\r\n".to_vec(),
        ),
        ("http", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
        (
            "bad v1 address",
            b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n".to_vec(),
        ),
        (
            "v1 with LF only",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\nEHLO x\r\n".to_vec(),
        ),
        (
            "lowercase v1",
            b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
        ),
    ];
    // A header that never ends: past 107 bytes without CRLF.
    let mut endless = b"PROXY TCP4 ".to_vec();
    endless.resize(300, b'9');
    cases.push(("endless v1", endless));
    // v2 whose length says more than ringmx accepts.
    let mut long = v2_header("10.0.0.1:1".parse().unwrap(), dst, &[]);
    long.truncate(16);
    long[14..16].copy_from_slice(&60000u16.to_be_bytes());
    cases.push(("oversized v2", long));
    // v2 with a broken TLV.
    let mut broken = v2_header("10.0.0.1:1".parse().unwrap(), dst, &[(0x04, b"abc")]);
    // The TLV is its last 6 bytes: type, length (2 bytes), "abc"; make it claim 0x30 bytes.
    let n = broken.len();
    broken[n - 4] = 0x30;
    cases.push(("v2 TLV past the end", broken));
    let malformed = cases.len();
    for (what, bytes) in &cases {
        let mut stream = connect();
        stream.write_all(bytes).unwrap();
        closed_silently(&mut stream).unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    // Truncated, then the client goes away: nothing is sent; counted as malformed.
    let truncated = [1, 6, 20];
    for cut in truncated {
        let mut stream = connect();
        stream
            .write_all(&b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"[..cut])
            .unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        closed_silently(&mut stream).unwrap_or_else(|e| panic!("truncated at {cut}: {e}"));
    }
    // Truncated and then silent, and no header at all: closed at the 1 s timeout.
    let started = Instant::now();
    let mut half = connect();
    half.write_all(b"PROXY TCP4 1.2.3.4 5.6.").unwrap();
    let mut silent = connect();
    let mut v2_half = v2_header("10.0.0.1:1".parse().unwrap(), dst, &[]);
    v2_half.truncate(20);
    let mut v2_partial = connect();
    v2_partial.write_all(&v2_half).unwrap();
    for stream in [&mut half, &mut silent, &mut v2_partial] {
        closed_silently(stream).unwrap();
    }
    assert!(started.elapsed() >= Duration::from_millis(900));
    let text = scrape(&server);
    assert_eq!(
        proxy_count(&text, "malformed"),
        (malformed + truncated.len()) as f64,
        "{text}"
    );
    assert_eq!(proxy_count(&text, "ok"), 0.0, "{text}");
    assert_eq!(proxy_count(&text, "timeout"), 3.0, "{text}");
    // Still serving headers after all that.
    let mut client = Client::connect(dst);
    client.send(b"PROXY TCP4 192.0.2.1 192.0.2.2 1 25\r\n");
    client.expect("220 ");
}

#[test]
fn outside_the_trusted_networks_proxy_is_an_unknown_command() {
    let server = server("10.0.0.0/8", &[]);
    let mut client = Client::greeted(server.addr());
    client.send(b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\n");
    client.expect("500 5.5.1");
    client.send(b"EHLO c.example\r\n");
    client.expect("250");
    let header = send_one(&server, &mut client, "untrusted");
    assert!(header.contains("[127.0.0.1]"), "{header}");
    assert!(!header.contains("192.0.2.7"), "{header}");
    let text = scrape(&server);
    for result in ["ok", "local", "malformed", "timeout"] {
        assert_eq!(proxy_count(&text, result), 0.0, "{result}");
    }
}

#[test]
fn on_epoll_too() {
    let server = server("127.0.0.0/8", &[("RINGMX_BACKEND", "epoll")]);
    let dst = server.addr();
    let mut client = Client::connect(dst);
    let src: SocketAddr = "198.51.100.10:5555".parse().unwrap();
    let mut bytes = v2_header(src, dst, &[(0x05, b"id-2")]);
    bytes.extend_from_slice(b"EHLO c.example\r\n");
    let (first, rest) = bytes.split_at(10);
    client.send(first);
    std::thread::sleep(Duration::from_millis(100));
    client.send(rest);
    client.expect("220 ");
    client.expect("250");
    let header = send_one(&server, &mut client, "epoll");
    assert!(header.contains("[198.51.100.10]"), "{header}");
    let mut late = TcpStream::connect(dst).unwrap();
    closed_silently(&mut late).unwrap();
    let text = scrape(&server);
    assert_eq!(proxy_count(&text, "ok"), 1.0, "{text}");
    assert_eq!(proxy_count(&text, "timeout"), 1.0, "{text}");
    assert!(server.log_text().contains("backend epoll"));
}
