//! The trace headers a stored message starts with, rendered as a pure function.
//!
//! `write_trace` writes `Return-Path:`, one `Delivered-To:` per recipient (in RCPT order, each
//! exactly as the client wrote it) and a `Received:` header (RFC 5321 4.4, protocol names of
//! RFC 3848 and RFC 6531), every line ending in CRLF (SPEC §4.4). It does no I/O and
//! allocates nothing: the caller passes a buffer it reuses, the time and the facts of the
//! connection (client address, TLS), so every byte is testable.
//!
//! The HELO name is the one client-chosen text in the `Received:` header that the session
//! does not validate as an address: characters that would break the header's syntax (comment
//! and angle-bracket delimiters, quotes, backslash, `;`, anything outside printable ASCII) are
//! written as `?`. A domain or an address literal has none of them and passes unchanged.

use std::io::Write as _;
use std::net::IpAddr;

use chrono::{DateTime, Datelike, Timelike, Utc};

use super::Envelope;

/// What a TLS session negotiated, for the `Received:` header: the protocol version as TLS
/// libraries print it (`TLSv1.3`, `TLSv1.2`) and the IANA name of the cipher suite
/// (`TLS_AES_256_GCM_SHA384`, `TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsFacts {
    pub version: &'static str,
    pub cipher: &'static str,
}

/// Everything the trace headers say about one message.
#[derive(Clone, Copy, Debug)]
pub struct Trace<'a> {
    /// The envelope: HELO name, sender, recipients, protocol.
    pub envelope: &'a Envelope<'a>,
    /// The client's address (from a PROXY header where one is trusted).
    pub peer: IpAddr,
    /// This server's name.
    pub hostname: &'a str,
    /// The queue ID, as in the `250` reply and the file name.
    pub id: &'a str,
    /// When the message was received.
    pub now: DateTime<Utc>,
    /// Set when the session runs inside TLS.
    pub tls: Option<TlsFacts>,
}

const WEEKDAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Appends the trace headers for `t` to `out`.
pub fn write_trace(out: &mut Vec<u8>, t: &Trace<'_>) {
    let envelope = t.envelope;
    out.extend_from_slice(b"Return-Path: <");
    out.extend_from_slice(envelope.sender.as_bytes());
    out.extend_from_slice(b">\r\n");
    for rcpt in envelope.recipients() {
        out.extend_from_slice(b"Delivered-To: ");
        out.extend_from_slice(rcpt.as_bytes());
        out.extend_from_slice(b"\r\n");
    }

    out.extend_from_slice(b"Received: from ");
    if envelope.helo.is_empty() {
        out.extend_from_slice(b"unknown");
    } else {
        write_sanitized(out, envelope.helo);
    }
    out.extend_from_slice(b" (");
    write_address_literal(out, t.peer);
    out.extend_from_slice(b")\r\n");
    if let Some(tls) = &t.tls {
        out.extend_from_slice(b"\t(using ");
        write_sanitized(out, tls.version);
        out.extend_from_slice(b" with cipher ");
        write_sanitized(out, tls.cipher);
        out.extend_from_slice(b")\r\n");
    }
    out.extend_from_slice(b"\tby ");
    out.extend_from_slice(t.hostname.as_bytes());
    out.extend_from_slice(b" (ringmx) with ");
    out.extend_from_slice(envelope.protocol.as_bytes());
    if t.tls.is_some() {
        // RFC 3848 ESMTPS, RFC 6531 UTF8SMTPS.
        out.push(b'S');
    }
    out.extend_from_slice(b" id ");
    out.extend_from_slice(t.id.as_bytes());
    if envelope.recipient_count() == 1 {
        if let Some(rcpt) = envelope.recipients().next() {
            out.extend_from_slice(b"\r\n\tfor <");
            out.extend_from_slice(rcpt.as_bytes());
            out.push(b'>');
        }
    }
    out.extend_from_slice(b"; ");
    write_date(out, t.now);
    out.extend_from_slice(b"\r\n");
}

/// True for a character the `Received:` header may carry as the client wrote it.
fn header_safe(c: char) -> bool {
    c.is_ascii_graphic() && !matches!(c, '(' | ')' | '\\' | ';' | '"' | '<' | '>')
}

/// Writes `text` with every character that would break the header written as `?`.
fn write_sanitized(out: &mut Vec<u8>, text: &str) {
    for c in text.chars() {
        out.push(if header_safe(c) { c as u8 } else { b'?' });
    }
}

/// Writes the client address as an RFC 5321 address literal: `[192.0.2.1]`,
/// `[IPv6:2001:db8::1]`. An IPv4 client seen on an IPv6 socket (`::ffff:192.0.2.1`) is the
/// IPv4 client it is.
fn write_address_literal(out: &mut Vec<u8>, client: IpAddr) {
    // `Display` of an address writes straight into the buffer, no temporary string.
    let _ = match client.to_canonical() {
        IpAddr::V4(v4) => write!(out, "[{v4}]"),
        IpAddr::V6(v6) => write!(out, "[IPv6:{v6}]"),
    };
}

/// Writes an RFC 5322 date in UTC: `Tue, 03 Jun 2025 10:11:12 +0000`. Written field by field:
/// chrono's formatter would build a temporary string.
fn write_date(out: &mut Vec<u8>, time: DateTime<Utc>) {
    let weekday = WEEKDAYS[time.weekday().num_days_from_monday() as usize];
    let month = MONTHS[time.month0() as usize];
    let _ = write!(
        out,
        "{weekday}, {:02} {month} {:04} {:02}:{:02}:{:02} +0000",
        time.day(),
        time.year(),
        time.hour(),
        time.minute(),
        time.second()
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Config, Output, Session, Step};
    use chrono::TimeZone;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::Arc;
    use std::time::Instant;

    /// Drives a session to `Step::Store` with `input` (through its `Step::Begin`) and
    /// returns it.
    fn stored(input: &str) -> Session {
        let mut session = Session::new(Arc::new(Config::default()), Instant::now());
        let mut out = Output::new();
        let (begun, step) = session.handle_input(input.as_bytes(), Instant::now(), &mut out);
        assert_eq!(step, Step::Begin, "{:?}", out.replies);
        let rest = &input.as_bytes()[begun..];
        let (n, step) = session.handle_input(rest, Instant::now(), &mut out);
        assert_eq!(
            (begun + n, step),
            (input.len(), Step::Store),
            "{:?}",
            out.replies
        );
        session
    }

    fn time() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 6, 3, 10, 11, 12).unwrap()
    }

    /// Renders the trace of `session` with the usual facts and `client`/`tls`.
    fn render(session: &Session, client: IpAddr, tls: Option<TlsFacts>) -> String {
        let mut out = Vec::new();
        write_trace(
            &mut out,
            &Trace {
                envelope: &session.envelope(),
                peer: client,
                hostname: "mx.example",
                id: "0123ABCD",
                now: time(),
                tls,
            },
        );
        String::from_utf8(out).unwrap()
    }

    const V4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

    #[test]
    fn one_recipient_esmtp() {
        let s = stored(
            "EHLO client.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n\
             DATA\r\n.\r\n",
        );
        assert_eq!(
            render(&s, V4, None),
            "Return-Path: <a@b.example>\r\nDelivered-To: c@d.example\r\n\
             Received: from client.example ([192.0.2.1])\r\n\
             \tby mx.example (ringmx) with ESMTP id 0123ABCD\r\n\
             \tfor <c@d.example>; Tue, 03 Jun 2025 10:11:12 +0000\r\n"
        );
    }

    #[test]
    fn several_recipients_in_order_no_for_clause_null_sender_helo() {
        let s = stored(
            "HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<\"x y\"@C.example>\r\nRCPT TO:<Postmaster>\r\n\
             DATA\r\n.\r\n",
        );
        assert_eq!(
            render(&s, V4, None),
            "Return-Path: <>\r\nDelivered-To: \"x y\"@C.example\r\nDelivered-To: Postmaster\r\n\
             Received: from c ([192.0.2.1])\r\n\
             \tby mx.example (ringmx) with SMTP id 0123ABCD; Tue, 03 Jun 2025 10:11:12 +0000\r\n"
        );
    }

    #[test]
    fn ipv6_clients_are_ipv6_address_literals() {
        let s =
            stored("EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n.\r\n");
        let cases: [(IpAddr, &str); 4] = [
            (IpAddr::V6(Ipv6Addr::LOCALHOST), "([IPv6:::1])"),
            ("2001:db8::1".parse().unwrap(), "([IPv6:2001:db8::1])"),
            ("::ffff:192.0.2.7".parse().unwrap(), "([192.0.2.7])"),
            ("fe80::1:2:3:4".parse().unwrap(), "([IPv6:fe80::1:2:3:4])"),
        ];
        for (client, want) in cases {
            let text = render(&s, client, None);
            assert!(
                text.contains(&format!("Received: from c {want}\r\n")),
                "{client}: {text:?}"
            );
        }
    }

    #[test]
    fn helo_names_that_would_break_the_header_are_sanitized() {
        let cases = [
            ("client.example", "client.example"),
            ("mail_1.Example-host.", "mail_1.Example-host."),
            ("[192.0.2.1]", "[192.0.2.1]"),
            ("[IPv6:2001:db8::1]", "[IPv6:2001:db8::1]"),
            ("x(y;z)<>\"\\", "x?y?z?????"),
            ("a)b", "a?b"),
            ("(comment", "?comment"),
        ];
        for (helo, want) in cases {
            let s = stored(&format!(
                "EHLO {helo}\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n.\r\n"
            ));
            let text = render(&s, V4, None);
            assert!(
                text.contains(&format!("Received: from {want} ([192.0.2.1])\r\n")),
                "{helo:?}: {text:?}"
            );
        }
        // The function itself, for characters no HELO line can carry (a HELO name is one
        // word of printable ASCII, so these never reach it through the session).
        let mut out = Vec::new();
        write_sanitized(&mut out, "a b\tc\r\nd\u{e9}\u{7f}\u{85}");
        assert_eq!(out, b"a?b?c??d???");
    }

    #[test]
    fn tls_sessions_say_esmtps_with_version_and_cipher() {
        let s = stored(
            "EHLO client.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n\
             RCPT TO:<e@d.example>\r\nDATA\r\n.\r\n",
        );
        let tls = TlsFacts {
            version: "TLSv1.3",
            cipher: "TLS_AES_256_GCM_SHA384",
        };
        assert_eq!(
            render(&s, V4, Some(tls)),
            "Return-Path: <a@b.example>\r\nDelivered-To: c@d.example\r\nDelivered-To: e@d.example\r\n\
             Received: from client.example ([192.0.2.1])\r\n\
             \t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384)\r\n\
             \tby mx.example (ringmx) with ESMTPS id 0123ABCD; Tue, 03 Jun 2025 10:11:12 +0000\r\n"
        );
        let s = stored(
            "EHLO c\r\nMAIL FROM:<\u{e9}@b.example> SMTPUTF8\r\nRCPT TO:<c@d.example>\r\nDATA\r\n.\r\n",
        );
        let tls12 = TlsFacts {
            version: "TLSv1.2",
            cipher: "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        };
        let text = render(&s, V4, Some(tls12));
        assert!(
            text.contains(
                "\t(using TLSv1.2 with cipher TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)\r\n\
                 \tby mx.example (ringmx) with UTF8SMTPS id 0123ABCD\r\n"
            ),
            "{text:?}"
        );
        assert!(render(&s, V4, None).contains(" with UTF8SMTP id "));
    }

    #[test]
    fn dates_are_rfc_5322_in_utc() {
        let cases = [
            (
                Utc.with_ymd_and_hms(2025, 6, 3, 10, 11, 12),
                "Tue, 03 Jun 2025 10:11:12 +0000",
            ),
            (
                Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0),
                "Sat, 01 Jan 2000 00:00:00 +0000",
            ),
            (
                Utc.with_ymd_and_hms(2024, 2, 29, 23, 59, 59),
                "Thu, 29 Feb 2024 23:59:59 +0000",
            ),
            (
                Utc.with_ymd_and_hms(2026, 12, 6, 9, 5, 7),
                "Sun, 06 Dec 2026 09:05:07 +0000",
            ),
        ];
        for (time, want) in cases {
            let time = time.unwrap();
            let mut out = Vec::new();
            write_date(&mut out, time);
            assert_eq!(String::from_utf8(out).unwrap(), want);
            // The same text as chrono's own formatter.
            assert_eq!(want, time.format("%a, %d %b %Y %H:%M:%S +0000").to_string());
        }
    }
}
