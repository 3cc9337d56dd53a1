//! The PROXY protocol header (HAProxy's proxy-protocol.txt, versions 1 and 2) that
//! `--proxy v1|v2` sends first on every connection, as a TCP balancer in front of the server
//! would: the source is this connection's local address, the destination the address it is
//! connected to. A server behind such a balancer reads the header before its greeting.
use std::net::SocketAddr;

/// Which header to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyVersion {
    /// Text: `PROXY TCP4 src dst sport dport\r\n`.
    V1,
    /// Binary: 12-byte signature, version/command, family, length, addresses, ports.
    V2,
}

impl ProxyVersion {
    /// Parses `v1` or `v2`.
    pub fn parse(s: &str) -> Result<ProxyVersion, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "v1" | "1" => Ok(ProxyVersion::V1),
            "v2" | "2" => Ok(ProxyVersion::V2),
            _ => Err("expected v1 or v2".into()),
        }
    }

    /// Name in the summary and JSON.
    pub fn name(self) -> &'static str {
        match self {
            ProxyVersion::V1 => "v1",
            ProxyVersion::V2 => "v2",
        }
    }
}

/// The version 2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The header for a connection from `src` (local) to `dst` (peer). A v4 address paired with a v6
/// one (which one socket cannot have) is sent as v6, the v4 one mapped.
pub fn header(v: ProxyVersion, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src, dst) = match (src, dst) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_)) => {
            (src, dst)
        }
        _ => (to_v6(src), to_v6(dst)),
    };
    match v {
        ProxyVersion::V1 => {
            let fam = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {fam} {} {} {} {}\r\n",
                src.ip(),
                dst.ip(),
                src.port(),
                dst.port()
            )
            .into_bytes()
        }
        ProxyVersion::V2 => {
            let mut h = Vec::with_capacity(16 + 36);
            h.extend_from_slice(&V2_SIGNATURE);
            h.push(0x21); // version 2, command PROXY
            match (src, dst) {
                (SocketAddr::V4(s), SocketAddr::V4(d)) => {
                    h.push(0x11); // AF_INET, STREAM
                    h.extend_from_slice(&12u16.to_be_bytes());
                    h.extend_from_slice(&s.ip().octets());
                    h.extend_from_slice(&d.ip().octets());
                }
                (SocketAddr::V6(s), SocketAddr::V6(d)) => {
                    h.push(0x21); // AF_INET6, STREAM
                    h.extend_from_slice(&36u16.to_be_bytes());
                    h.extend_from_slice(&s.ip().octets());
                    h.extend_from_slice(&d.ip().octets());
                }
                _ => unreachable!("both addresses were made the same family above"),
            }
            h.extend_from_slice(&src.port().to_be_bytes());
            h.extend_from_slice(&dst.port().to_be_bytes());
            h
        }
    }
}

/// `a` as an IPv6 socket address (v4-mapped when it is v4).
fn to_v6(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        v6 => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_text() {
        let h = header(
            ProxyVersion::V1,
            "127.0.0.2:40000".parse().unwrap(),
            "127.0.0.1:25".parse().unwrap(),
        );
        assert_eq!(h, b"PROXY TCP4 127.0.0.2 127.0.0.1 40000 25\r\n");
        let h = header(
            ProxyVersion::V1,
            "[::1]:40000".parse().unwrap(),
            "[2001:db8::1]:25".parse().unwrap(),
        );
        assert_eq!(h, b"PROXY TCP6 ::1 2001:db8::1 40000 25\r\n");
    }

    #[test]
    fn v2_binary() {
        let h = header(
            ProxyVersion::V2,
            "10.0.0.1:513".parse().unwrap(),
            "192.168.1.2:25".parse().unwrap(),
        );
        let mut want = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0, 12, 10, 0, 0, 1, 192, 168, 1, 2, 2, 1, 0, 25]);
        assert_eq!(h, want);
        let h = header(
            ProxyVersion::V2,
            "[::1]:1".parse().unwrap(),
            "[::2]:2".parse().unwrap(),
        );
        assert_eq!(h.len(), 16 + 36);
        assert_eq!(&h[12..16], &[0x21, 0x21, 0, 36]);
        assert_eq!(&h[48..], &[0, 1, 0, 2]);
    }

    #[test]
    fn versions_parse() {
        assert_eq!(ProxyVersion::parse("v2"), Ok(ProxyVersion::V2));
        assert_eq!(ProxyVersion::parse("V1"), Ok(ProxyVersion::V1));
        assert!(ProxyVersion::parse("v3").is_err());
    }
}
