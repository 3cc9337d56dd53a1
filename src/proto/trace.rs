//! The trace headers that precede every stored message (SPEC §4.4): `Return-Path`, one
//! `Delivered-To` per recipient and `Received`. A pure function of the envelope, the client,
//! the server's name, the queue ID and the time, rendered by the protocol side and handed to
//! the delivery sink as bytes, so storage never needs to know SMTP.

use std::io::Write as _;
use std::net::IpAddr;

use super::Envelope;

/// The TLS facts a Received header names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsFacts {
    /// Protocol version as written in the header, e.g. `TLSv1.3`.
    pub version: &'static str,
    /// IANA name of the cipher suite, e.g. `TLS_AES_256_GCM_SHA384`.
    pub cipher: &'static str,
}

/// Everything the trace headers say.
#[derive(Clone, Copy, Debug)]
pub struct Trace<'a> {
    pub envelope: &'a Envelope<'a>,
    /// The client's address (after any PROXY header).
    pub peer: IpAddr,
    /// This server's host name.
    pub hostname: &'a str,
    /// The queue ID.
    pub id: &'a str,
    pub now: chrono::DateTime<chrono::Utc>,
    /// Present when the session runs inside TLS.
    pub tls: Option<TlsFacts>,
}

/// Appends the trace headers to `out`, every line ending in CRLF.
pub fn write_trace(out: &mut Vec<u8>, t: &Trace<'_>) {
    let envelope = t.envelope;
    let _ = write!(out, "Return-Path: <{}>\r\n", envelope.sender);
    for rcpt in envelope.recipients() {
        let _ = write!(out, "Delivered-To: {rcpt}\r\n");
    }
    let helo = if envelope.helo.is_empty() {
        "unknown"
    } else {
        envelope.helo
    };
    let _ = write!(out, "Received: from {helo} ([{}])\r\n\t", t.peer);
    if let Some(tls) = t.tls {
        // As Postfix writes it: the protocol version and the IANA name of the cipher suite.
        let _ = write!(
            out,
            "(using {} with cipher {})\r\n\t",
            tls.version, tls.cipher
        );
    }
    let _ = write!(
        out,
        "by {} (ringmx) with {} id {}",
        t.hostname, envelope.protocol, t.id
    );
    if envelope.recipient_count() == 1 {
        if let Some(rcpt) = envelope.recipients().next() {
            let _ = write!(out, "\r\n\tfor <{rcpt}>");
        }
    }
    let _ = write!(out, "; {}\r\n", t.now.format("%a, %d %b %Y %H:%M:%S +0000"));
}
