//! The session allocates nothing per message in steady state (SPEC §5).
//!
//! A counting global allocator wraps the system one and counts, on the test's own thread only,
//! every allocation and reallocation. A session (bare, and inside the in-memory driver `Sim`)
//! takes one warm-up message, then messages 2..N arrive pipelined, one whole transaction per
//! read, DATA and BDAT alike, and the count over them must be zero.

use std::sync::Arc;
use std::time::Instant;

use ringmx::proto::sim::Sim;
use ringmx::proto::{Config, Output, Part, Session, Step};
use ringmx_wire::dot_stuff;

mod counting;

use counting::allocations_during;

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

/// Messages after the warm-up one.
const MESSAGES: usize = 200;

/// One pipelined transaction: envelope with three recipients and a 1 KiB body sent with DATA
/// (dot-stuffed lines included) or as two BDAT chunks.
fn transaction(bdat: bool) -> Vec<u8> {
    let mut body = Vec::new();
    let mut line = 0;
    while body.len() < 1024 - 80 {
        if line % 7 == 3 {
            body.push(b'.');
        }
        body.extend_from_slice(format!("{line:04} {}\r\n", "x".repeat(70)).as_bytes());
        line += 1;
    }
    let mut t = b"MAIL FROM:<sender@client.example> BODY=8BITMIME SIZE=2000\r\n\
                  RCPT TO:<one@ringmx.example>\r\nRCPT TO:<two@ringmx.example>\r\n\
                  RCPT TO:<three@ringmx.example>\r\n"
        .to_vec();
    if bdat {
        let (a, b) = body.split_at(500);
        t.extend_from_slice(format!("BDAT {}\r\n", a.len()).as_bytes());
        t.extend_from_slice(a);
        t.extend_from_slice(format!("BDAT {} LAST\r\n", b.len()).as_bytes());
        t.extend_from_slice(b);
    } else {
        t.extend_from_slice(b"DATA\r\n");
        dot_stuff(&mut t, &body);
    }
    t
}

/// Feeds one whole transaction to a bare session, as a real driver would (Store → report
/// stored with a fixed queue ID), and returns the body bytes it handed out.
fn drive(session: &mut Session, out: &mut Output, input: &[u8], now: Instant) -> usize {
    let mut pos = 0;
    let mut body_bytes = 0;
    loop {
        let (n, step) = session.handle_input(&input[pos..], now, out);
        for part in &out.body {
            body_bytes += match part {
                Part::Input(r) => r.len(),
                Part::Static(s) => s.len(),
            };
        }
        out.body.clear();
        pos += n;
        match step {
            Step::Read => break,
            Step::Begin => {}
            Step::Store => {
                assert_eq!(session.handle_stored(Ok("0123456789AB"), out), Step::Read);
            }
            Step::Discard | Step::Close | Step::StartTls => panic!("unexpected {step:?}"),
        }
    }
    assert_eq!(pos, input.len(), "the whole transaction is consumed");
    out.replies.clear();
    body_bytes
}

#[test]
fn bare_session_allocates_nothing_per_message() {
    for bdat in [false, true] {
        let now = Instant::now();
        let mut session = Session::new(Arc::new(Config::default()), now);
        let mut out = Output::new();
        let input = transaction(bdat);
        let hello = b"EHLO client.example\r\n";
        let (n, step) = session.handle_input(hello, now, &mut out);
        assert_eq!((n, step), (hello.len(), Step::Read));
        out.replies.clear();
        let warm = drive(&mut session, &mut out, &input, now);
        assert!(warm > 900, "the body came through");
        let mut total = 0;
        let count = allocations_during(|| {
            for _ in 0..MESSAGES {
                total += drive(&mut session, &mut out, &input, now);
            }
        });
        assert_eq!(total, warm * MESSAGES);
        assert_eq!(session.messages_stored(), 1 + MESSAGES as u64);
        assert_eq!(
            count, 0,
            "allocations over {MESSAGES} messages (bdat: {bdat})"
        );
    }
}

#[test]
fn sim_allocates_nothing_per_message() {
    for bdat in [false, true] {
        let mut sim = Sim::new(Config::default());
        sim.keep_messages = false;
        sim.feed(b"EHLO client.example\r\n");
        let input = transaction(bdat);
        sim.feed(&input);
        sim.replies.clear();
        assert_eq!(sim.stored_count, 1);
        let count = allocations_during(|| {
            for _ in 0..MESSAGES {
                sim.feed(&input);
                // Replies are "sent": the buffer keeps its capacity.
                sim.replies.clear();
            }
        });
        assert_eq!(sim.stored_count, 1 + MESSAGES as u64);
        assert!(!sim.closed);
        assert_eq!(
            count, 0,
            "allocations over {MESSAGES} messages (bdat: {bdat})"
        );
    }
}
