//! Fuzzes the SMTP session through the in-memory driver `Sim`: arbitrary client bytes, cut
//! into reads at arbitrary points, under a configuration chosen by the input. Properties: no
//! panic; every reply line is well-formed (three digits, space or hyphen, CRLF); the cut run
//! equals the uncut run (replies, stored messages, their trace headers, closed); one `queued
//! as` reply per stored message; every stored message's `Delivered-To:` lines (rendered when
//! its file would have been created) are exactly the recipients its transaction got `250`
//! for; and every stored message, relayed as DATA (dot-stuffed, terminated), ends exactly at
//! its own terminator, so no stored message holds a terminator that was not one.
//! With STARTTLS offered (flag 8), nothing after an accepted STARTTLS in the same read ever
//! runs (CVE-2011-0411): the uncut run, one read, ends with the `220` of the handshake; cut
//! runs, whose later reads arrive after the handshake, must equal the uncut run only up to it.
//!
//! Input layout: byte 0 picks the configuration, byte 1 the number of cuts (mod 16), then two
//! bytes per cut (little-endian offset, taken modulo the length), then the client's bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmx::proto::sim::Sim;
use ringmx::proto::{BareLf, Config};
use ringmx::scan::naive;
use ringmx_wire::dot_stuff;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Some((&ncuts, rest)) = rest.split_first() else {
        return;
    };
    let ncuts = usize::from(ncuts % 16);
    if rest.len() < 2 * ncuts {
        return;
    }
    let (cut_bytes, input) = rest.split_at(2 * ncuts);
    let config = config(flags);
    let mut cuts: Vec<usize> = cut_bytes
        .chunks_exact(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (input.len() + 1))
        .collect();
    cuts.sort_unstable();

    let whole = run(&config, input, &[]);
    check_replies(&whole.replies);
    if whole.tls_handshakes > 0 {
        assert!(config.starttls);
        assert_eq!(whole.tls_handshakes, 1, "a second handshake from one read");
        assert!(
            whole.replies.ends_with(b"220 2.0.0 Ready to start TLS\r\n"),
            "a reply after STARTTLS in the same read"
        );
        assert!(!whole.closed);
    }
    let queued = whole
        .replies
        .windows(10)
        .filter(|w| w == b"queued as ")
        .count();
    assert_eq!(queued as u64, whole.stored_count);
    assert_eq!(whole.messages.len() as u64, whole.stored_count);
    for message in &whole.messages {
        assert!(message.len() as u64 <= config.max_message_size);
        check_relayed(message);
    }
    check_recipients(&whole);

    let split = run(&config, input, &cuts);
    check_replies(&split.replies);
    if whole.tls_handshakes > 0 || split.tls_handshakes > 0 {
        // Reads after STARTTLS are the TLS session's: the runs agree up to the handshake.
        let n = whole.replies.len().min(split.replies.len());
        assert_eq!(split.replies[..n], whole.replies[..n]);
        return;
    }
    assert_eq!(
        split.replies, whole.replies,
        "replies differ with cuts {cuts:?}"
    );
    assert_eq!(
        split.messages, whole.messages,
        "messages differ with cuts {cuts:?}"
    );
    assert_eq!(
        split.headers, whole.headers,
        "trace headers differ with cuts {cuts:?}"
    );
    assert_eq!(split.closed, whole.closed);
});

/// The configuration picked by `flags`: bare-LF mode, small or default limits, a domain list.
fn config(flags: u8) -> Config {
    let small = flags & 2 != 0;
    Config {
        bare_lf: if flags & 1 != 0 {
            BareLf::Normalize
        } else {
            BareLf::Reject
        },
        max_message_size: if small { 64 } else { 26_214_400 },
        max_recipients: if small { 2 } else { 100 },
        max_errors: if small { 3 } else { 10 },
        max_junk_commands: if small { 3 } else { 100 },
        domains: if flags & 4 != 0 {
            vec!["d.example".to_string()]
        } else {
            Vec::new()
        },
        starttls: flags & 8 != 0,
        ..Config::default()
    }
}

/// Runs `input` through a fresh `Sim`, cut into reads at the sorted offsets `cuts`.
fn run(config: &Config, input: &[u8], cuts: &[usize]) -> Sim {
    let mut sim = Sim::new(config.clone());
    let mut from = 0;
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        sim.feed(&input[from..cut]);
        from = cut;
    }
    sim
}

/// Asserts that each stored message's `Delivered-To:` lines equal the recipients in the
/// session's envelope when it was stored, and that their number equals the `250 2.1.5` replies
/// its transaction got (counted from its last `250 2.1.0`): a recipient that got `250` is
/// never missing from the file, and no refused one is in it.
fn check_recipients(sim: &Sim) {
    let mut oks_per_message = Vec::new();
    let mut oks = 0;
    for line in sim.replies.split(|&b| b == b'\n') {
        if line.starts_with(b"250 2.1.0") {
            oks = 0;
        } else if line.starts_with(b"250 2.1.5") {
            oks += 1;
        } else if line.windows(10).any(|w| w == b"queued as ") {
            oks_per_message.push(oks);
        }
    }
    assert_eq!(oks_per_message.len(), sim.headers.len());
    for ((headers, recipients), oks) in sim.headers.iter().zip(&sim.recipients).zip(oks_per_message)
    {
        let text = String::from_utf8_lossy(headers);
        let delivered: Vec<&str> = text
            .split("\r\n")
            .filter_map(|line| line.strip_prefix("Delivered-To: "))
            .collect();
        assert_eq!(
            &delivered, recipients,
            "Delivered-To vs the envelope at the store"
        );
        assert_eq!(delivered.len(), oks, "Delivered-To vs RCPTs answered 250");
    }
}

/// Asserts that `replies` is a sequence of whole replies written to the letter of RFC 5321.
fn check_replies(replies: &[u8]) {
    if let Err((at, e)) = ringmx_wire::check_replies(replies) {
        panic!(
            "bad reply ({e:?}): {:?}",
            String::from_utf8_lossy(&replies[at..])
        );
    }
}

/// Relays `message` as DATA would (CRLF added if missing, dot-stuffed, terminated) and checks
/// with the oracle that the data ends exactly at that terminator and, where the message has no
/// bare LF to normalize, reads back as the same bytes.
fn check_relayed(message: &[u8]) {
    let mut body = message.to_vec();
    if !body.is_empty() && !body.ends_with(b"\r\n") {
        body.extend_from_slice(b"\r\n");
    }
    let mut wire = Vec::with_capacity(body.len() + 16);
    dot_stuff(&mut wire, &body);
    let read = naive::unstuff(&wire, BareLf::Normalize);
    assert_eq!(
        read.end,
        Some(wire.len()),
        "stored message ends early when relayed"
    );
    let has_bare_lf = body
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || body[i - 1] != b'\r'));
    if !has_bare_lf {
        assert_eq!(read.data, body, "relayed message reads back differently");
    }
}
