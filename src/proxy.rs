//! The PROXY protocol, v1 (text) and v2 (binary), as sent by HAProxy and other L4 balancers
//! (SPEC §4.6): a connection from a `RINGMX_PROXY_FROM` network begins with a header that names
//! the real client, and from then on that client is the client everywhere.
//!
//! Sans-IO like the SMTP session: `parse` looks at the bytes received so far and says whether
//! the header is complete (and how long it is, so that the bytes after it in the same read go to
//! the SMTP session), needs more bytes, or is malformed. The `ppp` crate does the parsing; this
//! module bounds the header (v1: 107 bytes by the protocol; v2: 16 bytes plus
//! `V2_PAYLOAD_BYTES_MAX`) so a peer can never make ringmx buffer more than `HEADER_BYTES_MAX`
//! waiting for a header that does not end, and it decides what the header means for ringmx:
//! which address is the client, and which `Outcome` the metrics count.

use std::net::{IpAddr, SocketAddr};

use ppp::v2;
use ppp::PartialResult as _;

/// Longest v1 header, CRLF included (the protocol's own limit).
pub const V1_BYTES_MAX: usize = 107;
/// Fixed part of a v2 header: the 12-byte signature, version/command, family, length.
pub const V2_FIXED_BYTES: usize = 16;
/// Most bytes after a v2 header's fixed part: addresses (216 for the largest family) and TLVs.
/// HAProxy's largest TLV sets (SSL details, unique ID, AWS and Azure endpoint IDs) stay well
/// under 1 KiB; 2 KiB leaves room and keeps a header inside a connection's idle buffer.
pub const V2_PAYLOAD_BYTES_MAX: usize = 2048;
/// The most bytes any accepted header takes; a connection never buffers more waiting for one.
pub const HEADER_BYTES_MAX: usize = V2_FIXED_BYTES + V2_PAYLOAD_BYTES_MAX;

/// How a connection's PROXY header ended, as counted by `ringmx_proxy_headers_total{result}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A header naming the client: the client is the header's source address.
    Ok,
    /// A v2 `LOCAL` (health check), a v1 `UNKNOWN`, or a family without an IP address: the
    /// client is the socket's own peer.
    Local,
    /// Not a PROXY header, or over the size bound: closed without a reply.
    Malformed,
    /// No complete header within `RINGMX_PROXY_TIMEOUT_SECS`: closed without a reply.
    Timeout,
}

impl Outcome {
    /// Every outcome, in the order the metrics export them.
    pub const ALL: [Outcome; 4] = [
        Outcome::Ok,
        Outcome::Local,
        Outcome::Malformed,
        Outcome::Timeout,
    ];

    /// The `result` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Local => "local",
            Outcome::Malformed => "malformed",
            Outcome::Timeout => "timeout",
        }
    }
}

/// What the bytes received so far amount to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A header may still come: read more (within the deadline).
    Incomplete,
    /// A whole header of `len` bytes; the bytes after it are the SMTP session's input.
    Header {
        /// Bytes the header took at the start of the input.
        len: usize,
        /// The client it names; None keeps the socket's peer (v2 LOCAL, v1 UNKNOWN, ...).
        client: Option<SocketAddr>,
    },
    /// Not a valid header: close without a reply. The text says why, for the log.
    Malformed(&'static str),
}

impl Parsed {
    /// The metric outcome of a finished parse; None while incomplete.
    pub fn outcome(&self) -> Option<Outcome> {
        match self {
            Parsed::Incomplete => None,
            Parsed::Header {
                client: Some(_), ..
            } => Some(Outcome::Ok),
            Parsed::Header { client: None, .. } => Some(Outcome::Local),
            Parsed::Malformed(_) => Some(Outcome::Malformed),
        }
    }
}

/// The start of every v1 header.
const V1_PREFIX: &[u8] = b"PROXY ";

/// Looks at the first bytes of a connection from a trusted balancer. Pure: call it again with
/// the same bytes plus what came next until it no longer answers `Incomplete`.
pub fn parse(input: &[u8]) -> Parsed {
    // The v2 signature begins with CR, which no v1 header does.
    match input.first() {
        None => Parsed::Incomplete,
        Some(b'\r') => parse_v2(input),
        Some(_) => parse_v1(input),
    }
}

/// A v1 header: `PROXY TCP4|TCP6|UNKNOWN ...` CRLF, at most `V1_BYTES_MAX` bytes. ppp parses
/// the line once its LF is in; until then only the prefix and the length are checked (ppp
/// misjudges some cut-off lines, such as one ending in the middle of a port, as complete).
fn parse_v1(input: &[u8]) -> Parsed {
    let n = input.len().min(V1_PREFIX.len());
    if input[..n] != V1_PREFIX[..n] {
        return Parsed::Malformed("not a PROXY v1 or v2 header");
    }
    let window = &input[..input.len().min(V1_BYTES_MAX)];
    // Only the line is looked at: the bytes after it are the client's and decide nothing.
    let lf = memchr::memchr(b'\n', window);
    let line_end = lf.unwrap_or(window.len());
    // A CR may only come right before the final LF (or be the last byte so far).
    let cr = memchr::memchr(b'\r', &window[..line_end]);
    if cr.is_some_and(|cr| cr + 1 != line_end) {
        return Parsed::Malformed("malformed PROXY v1 header");
    }
    let Some(lf) = lf else {
        return if input.len() >= V1_BYTES_MAX {
            Parsed::Malformed("PROXY v1 header longer than 107 bytes")
        } else {
            Parsed::Incomplete
        };
    };
    if cr.is_none() {
        return Parsed::Malformed("PROXY v1 header not ended by CRLF");
    }
    let line = &input[..=lf];
    let Ok(header) = ppp::v1::Header::try_from(line) else {
        return Parsed::Malformed("malformed PROXY v1 header");
    };
    if header.header.len() != line.len() {
        return Parsed::Malformed("malformed PROXY v1 header");
    }
    let client = match header.addresses {
        ppp::v1::Addresses::Tcp4(a) => {
            Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
        }
        ppp::v1::Addresses::Tcp6(a) => {
            Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
        }
        ppp::v1::Addresses::Unknown => None,
    };
    Parsed::Header {
        len: line.len(),
        client,
    }
}

/// A v2 header: the 16-byte fixed part, then as many bytes as its length field says (at most
/// `V2_PAYLOAD_BYTES_MAX`, checked before waiting for them).
fn parse_v2(input: &[u8]) -> Parsed {
    if input.len() >= V2_FIXED_BYTES && input.starts_with(v2::PROTOCOL_PREFIX) {
        let payload = usize::from(u16::from_be_bytes([input[14], input[15]]));
        if payload > V2_PAYLOAD_BYTES_MAX {
            return Parsed::Malformed("PROXY v2 header longer than ringmx accepts");
        }
    }
    match v2::Header::try_from(input) {
        Ok(header) => v2_meaning(&header),
        Err(e) if e.is_incomplete() => {
            debug_assert!(input.len() < HEADER_BYTES_MAX);
            Parsed::Incomplete
        }
        Err(_) => Parsed::Malformed("malformed PROXY v2 header"),
    }
}

/// What a complete, well-formed v2 header means for ringmx.
fn v2_meaning(header: &v2::Header<'_>) -> Parsed {
    let len = header.header.len();
    // TLVs are not used, but a header whose TLV list does not parse is not trusted either.
    if header.tlvs().any(|tlv| tlv.is_err()) {
        return Parsed::Malformed("malformed TLV in PROXY v2 header");
    }
    if header.command == v2::Command::Local {
        return Parsed::Header { len, client: None };
    }
    let client = match header.addresses {
        v2::Addresses::IPv4(a) => SocketAddr::new(IpAddr::V4(a.source_address), a.source_port),
        v2::Addresses::IPv6(a) => SocketAddr::new(IpAddr::V6(a.source_address), a.source_port),
        // No IP to use: as the protocol says, the connection's own addresses stay in force.
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => {
            return Parsed::Header { len, client: None }
        }
    };
    if header.protocol == v2::Protocol::Datagram {
        return Parsed::Malformed("PROXY v2 header for a datagram protocol on a TCP port");
    }
    Parsed::Header {
        len,
        client: Some(client),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// A v2 PROXY header for TCP from `src` to `dst`, with `tlvs` as (type, value).
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

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_tcp4_names_the_client_and_keeps_the_bytes_after_it() {
        let mut input = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\n".to_vec();
        let header_len = input.len();
        input.extend_from_slice(b"EHLO x\r\n");
        assert_eq!(
            parse(&input),
            Parsed::Header {
                len: header_len,
                client: Some(addr("192.0.2.7:40000"))
            }
        );
        assert_eq!(parse(&input).outcome(), Some(Outcome::Ok));
    }

    #[test]
    fn v1_tcp6_and_unknown() {
        let input = b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 25\r\n";
        assert_eq!(
            parse(input),
            Parsed::Header {
                len: input.len(),
                client: Some(addr("[2001:db8::7]:40000"))
            }
        );
        let unknown = b"PROXY UNKNOWN\r\n";
        assert_eq!(
            parse(unknown),
            Parsed::Header {
                len: unknown.len(),
                client: None
            }
        );
        assert_eq!(parse(unknown).outcome(), Some(Outcome::Local));
        // UNKNOWN may carry addresses, which are ignored.
        let unknown = b"PROXY UNKNOWN ffff:f::1 ffff:f::2 1 2\r\nQUIT\r\n";
        assert_eq!(
            parse(unknown),
            Parsed::Header {
                len: unknown.len() - 6,
                client: None
            }
        );
    }

    #[test]
    fn v1_line_must_end_in_crlf_and_what_follows_it_decides_nothing() {
        // A bare LF does not end a header, whatever comes after it.
        for input in [
            &b"PROXY UNKNOWN  K \n"[..],
            b"PROXY UNKNOWN  K \n\r-\n",
            b"PROXY UNKNOWN\nQUIT\r\n",
        ] {
            assert!(matches!(parse(input), Parsed::Malformed(_)), "{input:?}");
        }
        // A CR (even one not followed by LF) in the client's bytes after the header.
        let input = b"PROXY UNKNOWN\r\n\r-\r\n";
        assert_eq!(
            parse(input),
            Parsed::Header {
                len: 15,
                client: None
            }
        );
        // A CR inside the line is malformed; one at the end of the bytes so far waits.
        assert!(matches!(
            parse(b"PROXY UNK\rNOWN\r\n"),
            Parsed::Malformed(_)
        ));
        assert_eq!(parse(b"PROXY UNKNOWN\r"), Parsed::Incomplete);
    }

    #[test]
    fn every_prefix_of_a_header_is_incomplete() {
        let v1 = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\n".to_vec();
        let v2 = v2_header(
            addr("[2001:db8::7]:40000"),
            addr("[2001:db8::1]:25"),
            &[(0x01, b"smtp"), (0x05, b"unique-id-1234")],
        );
        for header in [v1, v2] {
            for cut in 0..header.len() {
                assert_eq!(
                    parse(&header[..cut]),
                    Parsed::Incomplete,
                    "cut at {cut} of {}",
                    header.len()
                );
            }
            assert!(matches!(parse(&header), Parsed::Header { len, .. } if len == header.len()));
        }
    }

    #[test]
    fn v2_with_tlvs_over_ipv4_and_ipv6() {
        let header = v2_header(
            addr("127.0.0.2:5555"),
            addr("127.0.0.1:25"),
            &[(0x03, &[1, 2, 3, 4]), (0x20, &[0, 0, 0, 0, 0])],
        );
        let mut input = header.clone();
        input.extend_from_slice(b"EHLO");
        assert_eq!(
            parse(&input),
            Parsed::Header {
                len: header.len(),
                client: Some(addr("127.0.0.2:5555"))
            }
        );
        let header = v2_header(addr("[::2]:5555"), addr("[::1]:25"), &[]);
        assert_eq!(
            parse(&header),
            Parsed::Header {
                len: header.len(),
                client: Some(SocketAddr::new(
                    IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 2)),
                    5555
                ))
            }
        );
    }

    #[test]
    fn v2_local_and_unspecified_keep_the_socket_address() {
        let local = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Local,
            v2::Protocol::Unspecified,
            v2::Addresses::Unspecified,
        )
        .build()
        .unwrap();
        assert_eq!(
            parse(&local),
            Parsed::Header {
                len: V2_FIXED_BYTES,
                client: None
            }
        );
        assert_eq!(parse(&local).outcome(), Some(Outcome::Local));
        // LOCAL with addresses (some balancers send them): still the socket's address.
        let mut local_with = v2_header(addr("10.0.0.1:1"), addr("10.0.0.2:2"), &[]);
        local_with[12] = 0x20;
        assert!(matches!(
            parse(&local_with),
            Parsed::Header { client: None, .. }
        ));
    }

    #[test]
    fn malformed_headers() {
        let cases: &[&[u8]] = &[
            b"EHLO example.com\r\n",
            b"GET / HTTP/1.1\r\n",
            b"PROXY TCP4 1.2.3.4\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
            b"PROXY TCP4 ::1 ::2 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
            b"PROXY TCP4 1.2.3.\xff 5.6.7.8 1 2\r\n",
        ];
        for case in cases {
            assert!(
                matches!(parse(case), Parsed::Malformed(_)),
                "{:?}: {:?}",
                String::from_utf8_lossy(case),
                parse(case)
            );
        }
    }

    #[test]
    fn v1_that_never_ends_is_malformed_at_the_bound() {
        let mut input = b"PROXY UNKNOWN ".to_vec();
        while input.len() < V1_BYTES_MAX - 1 {
            input.push(b'a');
            assert_eq!(parse(&input), Parsed::Incomplete);
        }
        input.push(b'a');
        assert!(matches!(parse(&input), Parsed::Malformed(_)));
        let mut long = b"PROXY TCP6 ".to_vec();
        long.resize(200, b'1');
        long.extend_from_slice(b"\r\n");
        assert!(matches!(parse(&long), Parsed::Malformed(_)));
    }

    #[test]
    fn v2_over_the_bound_is_malformed_before_its_payload_arrives() {
        let mut header = v2_header(addr("10.0.0.1:1"), addr("10.0.0.2:2"), &[]);
        header.truncate(V2_FIXED_BYTES);
        let payload = (V2_PAYLOAD_BYTES_MAX + 1) as u16;
        header[14..16].copy_from_slice(&payload.to_be_bytes());
        assert!(matches!(parse(&header), Parsed::Malformed(_)));
        // At the bound exactly: accepted once complete (a NOOP TLV pads it).
        let filler = vec![0u8; V2_PAYLOAD_BYTES_MAX - 12 - 3];
        let header = v2_header(addr("10.0.0.1:1"), addr("10.0.0.2:2"), &[(0x04, &filler)]);
        assert_eq!(header.len(), HEADER_BYTES_MAX);
        assert_eq!(parse(&header[..HEADER_BYTES_MAX - 1]), Parsed::Incomplete);
        assert_eq!(
            parse(&header),
            Parsed::Header {
                len: HEADER_BYTES_MAX,
                client: Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 1))
            }
        );
    }

    #[test]
    fn v2_bad_fields_are_malformed() {
        let good = v2_header(addr("10.0.0.1:1"), addr("10.0.0.2:2"), &[(0x04, b"x")]);
        // Version 1 in the binary form, command 2, family 4, transport 3.
        for (at, value) in [(12, 0x11), (12, 0x22), (13, 0x41), (13, 0x13)] {
            let mut bad = good.clone();
            bad[at] = value;
            assert!(matches!(parse(&bad), Parsed::Malformed(_)), "{at}={value}");
        }
        // A length too short for the family's addresses.
        let mut bad = good.clone();
        bad[14..16].copy_from_slice(&4u16.to_be_bytes());
        assert!(matches!(parse(&bad), Parsed::Malformed(_)));
        // A TLV whose length runs past the header.
        let mut bad = good.clone();
        let n = bad.len();
        bad[n - 2] = 0x09;
        assert!(matches!(parse(&bad), Parsed::Malformed(_)));
        // UDP from a balancer on a TCP port.
        let mut bad = good.clone();
        bad[13] = 0x12;
        assert!(matches!(parse(&bad), Parsed::Malformed(_)));
        // A signature off by one byte.
        let mut bad = good;
        bad[5] ^= 1;
        assert!(matches!(parse(&bad), Parsed::Malformed(_)));
    }

    proptest::proptest! {
        /// Any bytes: no panic; `Incomplete` only below the bound; a header's length is within
        /// the input and the bound.
        #[test]
        fn arbitrary_bytes(input in proptest::collection::vec(proptest::num::u8::ANY, 0..2200)) {
            match parse(&input) {
                Parsed::Incomplete => proptest::prop_assert!(input.len() < HEADER_BYTES_MAX),
                Parsed::Header { len, .. } => {
                    proptest::prop_assert!(len <= input.len() && len <= HEADER_BYTES_MAX)
                }
                Parsed::Malformed(_) => {}
            }
        }

        /// A valid header followed by anything: every cut before its end is `Incomplete`, and
        /// from its end on the answer is the header, whatever follows.
        #[test]
        fn valid_header_then_anything(
            v2_form in proptest::bool::ANY,
            a in proptest::num::u32::ANY,
            port in proptest::num::u16::ANY,
            tail in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        ) {
            let src = SocketAddr::new(IpAddr::V4(a.into()), port);
            let dst: SocketAddr = "192.0.2.1:25".parse().unwrap();
            let header = if v2_form {
                v2_header(src, dst, &[(0x04, &tail)])
            } else {
                format!("PROXY TCP4 {} {} {} 25\r\n", src.ip(), dst.ip(), port).into_bytes()
            };
            let mut input = header.clone();
            input.extend_from_slice(&tail);
            for cut in 0..header.len() {
                proptest::prop_assert_eq!(parse(&input[..cut]), Parsed::Incomplete);
            }
            for end in header.len()..=input.len() {
                proptest::prop_assert_eq!(
                    parse(&input[..end]),
                    Parsed::Header { len: header.len(), client: Some(src) }
                );
            }
        }
    }

    #[test]
    fn any_input_gives_an_answer_without_panicking() {
        // Every short input over a few interesting bytes: never a panic, and Incomplete only
        // while a header could still come.
        let alphabet = [b'P', b'\r', b'\n', 0x00, 0x21, 0x11, b' ', 0xff];
        let mut input = Vec::new();
        for n in 0..6u32 {
            for code in 0..alphabet.len().pow(n) {
                input.clear();
                let mut c = code;
                for _ in 0..n {
                    input.push(alphabet[c % alphabet.len()]);
                    c /= alphabet.len();
                }
                let _ = parse(&input);
            }
        }
        let mut sig = v2::PROTOCOL_PREFIX.to_vec();
        sig.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(parse(&sig), Parsed::Malformed(_)));
    }
}
