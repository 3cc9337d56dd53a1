//! Rendering the trace headers allocates nothing (SPEC §5: no per-message allocation).
//!
//! A counting global allocator wraps the system one and counts, on the test's own thread
//! only, every allocation and reallocation. `proto::trace::write_trace` renders the headers of
//! real envelopes (ESMTP, SMTPUTF8, several recipients, IPv4/IPv6 clients, TLS facts) into a
//! buffer with room reserved, and the count must be zero; a control shows the counter counts.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use chrono::{TimeZone, Utc};
use ringmx::proto::trace::{write_trace, TlsFacts, Trace};
use ringmx::proto::{Config, Output, Session, Step};

mod counting;

use counting::allocations_during;

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

/// A session driven to `Step::Store` with `input` (through its `Step::Begin`).
fn at_store(input: &str) -> Session {
    let mut session = Session::new(Arc::new(Config::default()), Instant::now());
    let mut out = Output::new();
    let (begun, step) = session.handle_input(input.as_bytes(), Instant::now(), &mut out);
    assert_eq!(step, Step::Begin);
    let rest = &input.as_bytes()[begun..];
    let (n, step) = session.handle_input(rest, Instant::now(), &mut out);
    assert_eq!((begun + n, step), (input.len(), Step::Store));
    session
}

#[test]
fn write_trace_allocates_nothing() {
    let sessions = [
        at_store("EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n.\r\n"),
        at_store(
            "EHLO x(y;z)<>\r\nMAIL FROM:<\u{e9}@b.example> SMTPUTF8\r\nRCPT TO:<\u{f1}@d.example>\r\n\
             RCPT TO:<\"q r\"@d.example>\r\nRCPT TO:<Postmaster>\r\nDATA\r\n.\r\n",
        ),
    ];
    let clients: [IpAddr; 3] = [
        "192.0.2.1".parse().unwrap(),
        "2001:db8::1".parse().unwrap(),
        "::ffff:192.0.2.9".parse().unwrap(),
    ];
    let tls = [
        None,
        Some(TlsFacts {
            version: "TLSv1.3",
            cipher: "TLS_AES_256_GCM_SHA384",
        }),
    ];
    let time = Utc.with_ymd_and_hms(2026, 11, 29, 21, 0, 0).unwrap();
    let mut out = Vec::with_capacity(4096);
    let mut rendered = 0;
    let count = allocations_during(|| {
        for session in &sessions {
            for &client in &clients {
                for &tls in &tls {
                    out.clear();
                    let envelope = session.envelope();
                    let trace = Trace {
                        envelope: &envelope,
                        peer: client,
                        hostname: "mx.ringmx.test",
                        id: "0123456789ABCDEF0000",
                        now: time,
                        tls,
                    };
                    write_trace(&mut out, &trace);
                    rendered += out.len();
                }
            }
        }
    });
    assert!(
        rendered > 12 * 150,
        "headers were rendered ({rendered} bytes)"
    );
    assert_eq!(count, 0, "allocations while rendering trace headers");
    // And what was rendered is what it should be.
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("Received: from x?y?z??? ([192.0.2.9])\r\n"),
        "{text:?}"
    );
    assert!(text
        .contains(" with UTF8SMTPS id 0123456789ABCDEF0000; Sun, 29 Nov 2026 21:00:00 +0000\r\n"));
}
