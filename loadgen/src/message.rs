//! Messages and envelope addresses, generated once at start and shared read-only by all threads.
//! A message is valid RFC 5322 (From, To, Subject, Date, Message-ID, MIME-Version), its body
//! lines are at most 78 characters and some start with `.` so the server's dot-stuffing is
//! exercised. The wire form is pre-stuffed and ends in CRLF.CRLF (or is raw for BDAT). Its
//! Message-ID holds a fixed-width run of digits that the sender overwrites in its own copy, so a
//! unique ID per message costs no allocation.

use ringmx_wire::{DotStuffer, XorShift64Star};

/// Width of the per-message number inside the Message-ID (a u64 in decimal).
pub const ID_DIGITS: usize = 20;
/// Envelope addresses precomputed per template with `{n}`: 0..ADDRESS_POOL.
pub const ADDRESS_POOL: usize = 1024;
/// Distinct message sizes drawn for a `MIN..MAX` range.
pub const SIZE_VARIANTS: usize = 16;

/// One pregenerated message.
pub struct Variant {
    /// Bytes sent after DATA's 354 (dot-stuffed, ends CRLF.CRLF) or after the BDAT command.
    pub wire: Box<[u8]>,
    /// Offset in `wire` of the ID_DIGITS digits to overwrite per message.
    pub id_offset: usize,
    /// `BDAT <len> LAST\r\n` for this variant (empty in DATA mode).
    pub bdat_cmd: Box<[u8]>,
    /// Size of the message itself (unstuffed, without terminator).
    pub message_bytes: usize,
}

/// The pregenerated messages of a run.
pub struct MessageSet {
    pub variants: Vec<Variant>,
}

/// Writes `n` as ID_DIGITS zero-padded decimal digits into `dst`.
pub fn write_id(dst: &mut [u8], mut n: u64) {
    debug_assert_eq!(dst.len(), ID_DIGITS);
    for d in dst.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

const WORDS: &[&str] = &[
    "ringmx",
    "load",
    "test",
    "message",
    "throughput",
    "latency",
    "percentile",
    "mailbox",
    "spool",
    "durable",
    "pipelining",
    "chunking",
    "session",
    "envelope",
    "recipient",
    "sender",
    "histogram",
    "capacity",
    "planning",
    "kernel",
    "uring",
    "shard",
    "queue",
    "delivery",
];

/// Builds the set: one variant for a fixed size, SIZE_VARIANTS drawn uniformly for a range.
pub fn generate(
    size_min: usize,
    size_max: usize,
    bdat: bool,
    from: &str,
    to: &str,
    run_tag: u64,
) -> MessageSet {
    let mut rng = XorShift64Star::spread(0x5EED ^ size_min as u64 ^ ((size_max as u64) << 20));
    let mut sizes: Vec<usize> = if size_min == size_max {
        vec![size_min]
    } else {
        (0..SIZE_VARIANTS)
            .map(|_| rng.range(size_min, size_max))
            .collect()
    };
    sizes.sort_unstable();
    let date = chrono::Local::now().to_rfc2822();
    let from_h = if from.is_empty() {
        "loadgen@loadgen.example".to_string()
    } else {
        expand(from, 0)
    };
    let to_h = expand(to, 0);
    let variants = sizes
        .iter()
        .map(|&size| build_variant(size, bdat, &from_h, &to_h, &date, run_tag, &mut rng))
        .collect();
    MessageSet { variants }
}

/// Builds one message of `size` bytes (headers included; never below the header size).
fn build_variant(
    size: usize,
    bdat: bool,
    from: &str,
    to: &str,
    date: &str,
    run_tag: u64,
    rng: &mut XorShift64Star,
) -> Variant {
    let id_prefix = format!("Message-ID: <{run_tag:016x}.");
    let mut raw = Vec::with_capacity(size + 512);
    raw.extend_from_slice(format!("From: <{from}>\r\nTo: <{to}>\r\n").as_bytes());
    raw.extend_from_slice(
        format!("Subject: ringmx-loadgen test message ({size} bytes)\r\n").as_bytes(),
    );
    raw.extend_from_slice(format!("Date: {date}\r\n").as_bytes());
    raw.extend_from_slice(id_prefix.as_bytes());
    let id_raw_offset = raw.len();
    raw.extend_from_slice(&[b'0'; ID_DIGITS]);
    raw.extend_from_slice(b"@loadgen.ringmx.invalid>\r\n");
    raw.extend_from_slice(
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n",
    );
    let mut line_no = 0usize;
    while raw.len() < size {
        let remaining = size - raw.len();
        // A line is its text plus CRLF; never leave a single byte that no line can fill.
        let mut text_len = rng.range(20, 78).min(remaining.saturating_sub(2));
        if remaining >= 2 && remaining - (text_len + 2) == 1 {
            text_len -= 1;
        }
        if remaining < 2 {
            break;
        }
        line_no += 1;
        if line_no % 9 == 3 && remaining >= 3 && remaining != 4 {
            text_len = 1; // a line holding a lone dot, the terminator's look-alike
        }
        let start = raw.len();
        match line_no % 9 {
            // Dot-lines: a lone dot, a double dot and a dot-led sentence exercise stuffing.
            3 if text_len >= 1 => raw.push(b'.'),
            6 if text_len >= 2 => raw.extend_from_slice(b".."),
            0 if text_len >= 4 => raw.extend_from_slice(b". . "),
            _ => {}
        }
        while raw.len() - start < text_len {
            let w = WORDS[(rng.next_u64() % WORDS.len() as u64) as usize].as_bytes();
            let room = text_len - (raw.len() - start);
            let take = w.len().min(room);
            raw.extend_from_slice(&w[..take]);
            if raw.len() - start < text_len {
                raw.push(b' ');
            }
        }
        raw.extend_from_slice(b"\r\n");
    }
    let message_bytes = raw.len();
    if bdat {
        let bdat_cmd = format!("BDAT {message_bytes} LAST\r\n")
            .into_bytes()
            .into_boxed_slice();
        return Variant {
            wire: raw.into_boxed_slice(),
            id_offset: id_raw_offset,
            bdat_cmd,
            message_bytes,
        };
    }
    // Dot-stuffed in two pieces, to learn where the Message-ID digits land.
    let mut wire = Vec::with_capacity(raw.len() + raw.len() / 20 + 8);
    let mut stuffer = DotStuffer::new();
    stuffer.push(&mut wire, &raw[..id_raw_offset]);
    let id_offset = wire.len();
    stuffer.push(&mut wire, &raw[id_raw_offset..]);
    stuffer.finish(&mut wire);
    Variant {
        wire: wire.into_boxed_slice(),
        id_offset,
        bdat_cmd: Box::new([]),
        message_bytes,
    }
}

/// Replaces each `{n}` in `template` with `n`.
pub fn expand(template: &str, n: usize) -> String {
    template.replace("{n}", &n.to_string())
}

/// Precomputed envelope command lines, so a message's commands are copied, never formatted.
pub struct AddressPool {
    /// `MAIL FROM:<addr>\r\n` lines.
    pub mail: Vec<Box<[u8]>>,
    /// `RCPT TO:<addr>\r\n` lines.
    pub rcpt: Vec<Box<[u8]>>,
}

impl AddressPool {
    /// Expands both templates into up to ADDRESS_POOL command lines each.
    pub fn new(from: &str, to: &str) -> AddressPool {
        let lines = |template: &str, verb: &str| -> Vec<Box<[u8]>> {
            let n = if template.contains("{n}") {
                ADDRESS_POOL
            } else {
                1
            };
            (0..n)
                .map(|i| {
                    format!("{verb}:<{}>\r\n", expand(template, i))
                        .into_bytes()
                        .into_boxed_slice()
                })
                .collect()
        };
        AddressPool {
            mail: lines(from, "MAIL FROM"),
            rcpt: lines(to, "RCPT TO"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Undoes dot-stuffing and checks the terminator, as a server would.
    fn unstuff(wire: &[u8]) -> Vec<u8> {
        assert!(wire.ends_with(b"\r\n.\r\n"));
        let body = &wire[..wire.len() - 3];
        let mut out = Vec::new();
        for line in body.split_inclusive(|&b| b == b'\n') {
            assert!(line.ends_with(b"\r\n"), "every line ends in CRLF");
            assert_ne!(line, b".\r\n", "no terminator inside the body");
            out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
        }
        out
    }

    #[test]
    fn data_variant_is_stuffed_and_exact_size() {
        for size in [1, 100, 1024, 4096, 65_536] {
            let set = generate(size, size, false, "a{n}@x.example", "b{n}@y.example", 7);
            let v = &set.variants[0];
            let raw = unstuff(&v.wire);
            assert_eq!(raw.len(), v.message_bytes);
            if size > 400 {
                assert_eq!(raw.len(), size, "size {size}");
            }
            let text = String::from_utf8(raw).unwrap();
            for h in [
                "From: ",
                "To: ",
                "Subject: ",
                "Date: ",
                "Message-ID: <",
                "MIME-Version: 1.0",
            ] {
                assert!(text.contains(h), "{h} missing");
            }
            for line in text.split("\r\n") {
                assert!(line.len() <= 78, "line too long: {line}");
            }
            if size > 1000 {
                assert!(text.contains("\r\n.") && v.wire.windows(3).any(|w| w == b"\n.."));
            }
            assert_eq!(
                &v.wire[v.id_offset..v.id_offset + ID_DIGITS],
                &[b'0'; ID_DIGITS]
            );
        }
    }

    #[test]
    fn bdat_variant_is_raw() {
        let set = generate(2048, 2048, true, "", "b@y.example", 1);
        let v = &set.variants[0];
        assert_eq!(v.wire.len(), 2048);
        assert_eq!(&*v.bdat_cmd, b"BDAT 2048 LAST\r\n");
        assert!(!v.wire.ends_with(b"\r\n.\r\n"));
    }

    #[test]
    fn range_draws_sizes_in_bounds() {
        let set = generate(1024, 100 * 1024, false, "a@x", "b@y", 1);
        assert_eq!(set.variants.len(), SIZE_VARIANTS);
        for v in &set.variants {
            assert!((1024..=100 * 1024).contains(&v.message_bytes));
        }
    }

    #[test]
    fn ids_are_fixed_width() {
        let mut d = [0u8; ID_DIGITS];
        write_id(&mut d, 42);
        assert_eq!(&d, b"00000000000000000042");
        write_id(&mut d, u64::MAX);
        assert_eq!(&d, b"18446744073709551615");
    }

    #[test]
    fn pool_expands_templates() {
        let p = AddressPool::new("s{n}@x", "fixed@y");
        assert_eq!(p.mail.len(), ADDRESS_POOL);
        assert_eq!(&*p.mail[5], b"MAIL FROM:<s5@x>\r\n");
        assert_eq!(p.rcpt.len(), 1);
        assert_eq!(&*p.rcpt[0], b"RCPT TO:<fixed@y>\r\n");
    }
}
