//! Incremental SMTP reply reader (RFC 5321 4.2): keeps state between reads, so a reply split
//! across reads, several replies in one read (pipelining) and multi-line `250-` continuations are
//! all handled by the same loop. It owns one receive buffer, allocated once per connection.
//!
//! Two strictnesses: `Tolerant`, as a client takes replies (the load generator), and `Exact`,
//! as ringmx must write them (its tests): every line ends in CRLF, the code is followed by a
//! space or a hyphen, and all lines of a reply carry the same code. `check_replies` validates a
//! whole byte stream of replies at once.
use std::ops::Range;

/// Longest reply we accept (all lines together; RFC 5321 lines are <= 512 octets): a longer one
/// is a protocol error, and the receive buffer stays small enough for 100k connections.
pub const REPLY_MAX_BYTES: usize = 4096;

/// A complete reply: its code and where its lines sit in the buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub range: Range<usize>,
}

/// Why bytes from the server are not a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyError {
    /// A line does not start with three digits (200 to 599) followed by space, `-` or the line
    /// end (`Exact`: space or `-` only).
    Malformed,
    /// No reply ended within REPLY_MAX_BYTES.
    TooLong,
    /// `Exact` only: a line does not end in CRLF, or holds a CR before it.
    LineEnd,
    /// `Exact` only: a line of a multi-line reply carries another code than the first.
    CodeChanged,
    /// `check_replies` only: the bytes end inside a reply.
    Incomplete,
}

/// How strictly reply lines are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strictness {
    /// A line ends in LF (a CR before it is optional) and may hold its code alone.
    Tolerant,
    /// RFC 5321 to the letter: CRLF, no other CR, a space or `-` after the code, one code per
    /// reply.
    Exact,
}

/// Receive buffer plus the parse position.
pub struct ReplyReader {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    strictness: Strictness,
}

impl ReplyReader {
    /// A `Tolerant` reader whose buffer holds `cap` bytes (at least REPLY_MAX_BYTES + a read's
    /// worth).
    pub fn new(cap: usize) -> ReplyReader {
        ReplyReader::with_strictness(cap, Strictness::Tolerant)
    }

    /// An `Exact` reader, as `new`.
    pub fn exact(cap: usize) -> ReplyReader {
        ReplyReader::with_strictness(cap, Strictness::Exact)
    }

    fn with_strictness(cap: usize, strictness: Strictness) -> ReplyReader {
        ReplyReader {
            buf: vec![0u8; cap.max(REPLY_MAX_BYTES * 2)].into_boxed_slice(),
            start: 0,
            end: 0,
            strictness,
        }
    }

    /// True when no received byte waits to be parsed.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The received bytes not yet taken as a reply.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Forgets buffered bytes (a new session on the same buffer).
    pub fn reset(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Takes the next complete reply off the buffer, or `Ok(None)` if more bytes are needed.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ReplyError> {
        let Some((code, len)) = parse_reply(self.pending(), self.strictness)? else {
            return Ok(None);
        };
        let r = Reply {
            code,
            range: self.start..self.start + len,
        };
        self.start += len;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        Ok(Some(r))
    }

    /// The bytes of a reply just returned (valid until the next `spare`).
    pub fn text(&self, r: &Reply) -> &[u8] {
        &self.buf[r.range.clone()]
    }

    /// Free space to read into, after moving unparsed bytes to the front when that is needed.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start > 0 && self.buf.len() - self.end < REPLY_MAX_BYTES {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were read into `spare()`.
    pub fn filled(&mut self, n: usize) {
        self.end += n;
        debug_assert!(self.end <= self.buf.len());
    }
}

/// The first complete reply at the front of `bytes`: its code and length in bytes, or `Ok(None)`
/// if more bytes are needed.
pub fn parse_reply(
    bytes: &[u8],
    strictness: Strictness,
) -> Result<Option<(u16, usize)>, ReplyError> {
    let mut pos = 0;
    let mut first_code = None;
    loop {
        let Some(nl) = memchr::memchr(b'\n', &bytes[pos..]) else {
            if bytes.len() > REPLY_MAX_BYTES {
                return Err(ReplyError::TooLong);
            }
            return Ok(None);
        };
        let line_end = pos + nl + 1;
        let (code, last) = parse_line(&bytes[pos..line_end], strictness)?;
        if strictness == Strictness::Exact && *first_code.get_or_insert(code) != code {
            return Err(ReplyError::CodeChanged);
        }
        if last {
            return Ok(Some((code, line_end)));
        }
        pos = line_end;
    }
}

/// Parses one reply line (ending in LF): its code and whether it is the last line of the reply.
fn parse_line(line: &[u8], strictness: Strictness) -> Result<(u16, bool), ReplyError> {
    if line.len() < 4 || !line[..3].iter().all(u8::is_ascii_digit) {
        return Err(ReplyError::Malformed);
    }
    let code =
        (line[0] - b'0') as u16 * 100 + (line[1] - b'0') as u16 * 10 + (line[2] - b'0') as u16;
    if !(200..=599).contains(&code) {
        return Err(ReplyError::Malformed);
    }
    let last = match (line[3], strictness) {
        (b'-', _) => false,
        (b' ', _) | (b'\r' | b'\n', Strictness::Tolerant) => true,
        _ => return Err(ReplyError::Malformed),
    };
    if strictness == Strictness::Exact {
        let Some(text) = line.strip_suffix(b"\r\n") else {
            return Err(ReplyError::LineEnd);
        };
        if text.contains(&b'\r') {
            return Err(ReplyError::LineEnd);
        }
    }
    Ok((code, last))
}

/// Checks that `bytes` is a sequence of whole, `Exact` replies; returns how many. The error
/// names the offset of the reply it is about.
pub fn check_replies(bytes: &[u8]) -> Result<usize, (usize, ReplyError)> {
    let mut pos = 0;
    let mut count = 0;
    while pos < bytes.len() {
        match parse_reply(&bytes[pos..], Strictness::Exact) {
            Ok(Some((_, len))) => {
                pos += len;
                count += 1;
            }
            Ok(None) => return Err((pos, ReplyError::Incomplete)),
            Err(e) => return Err((pos, e)),
        }
    }
    Ok(count)
}

/// Splits a reply into its text lines without codes or line ends (for greeting and EHLO).
pub fn lines(text: &[u8]) -> Vec<String> {
    text.split(|&b| b == b'\n')
        .filter(|l| l.len() >= 3)
        .map(|l| {
            let l = l.strip_suffix(b"\r").unwrap_or(l);
            String::from_utf8_lossy(l.get(4..).unwrap_or(b"")).into_owned()
        })
        .collect()
}

/// The enhanced status code (RFC 3463) that opens a reply's first line after its code, such
/// as `2.1.0` in `250 2.1.0 Ok`: class (2, 4 or 5), subject and detail (1 to 3 digits each).
pub fn enhanced_status(text: &[u8]) -> Option<(u8, u16, u16)> {
    let rest = text.get(4..)?;
    let word_len = rest
        .iter()
        .position(|&b| matches!(b, b' ' | b'\r' | b'\n'))
        .unwrap_or(rest.len());
    let mut parts = rest[..word_len].split(|&b| b == b'.');
    let mut number = |max_digits: usize| -> Option<u16> {
        let p = parts.next()?;
        if p.is_empty() || p.len() > max_digits || !p.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(p.iter().fold(0, |n, &d| n * 10 + u16::from(d - b'0')))
    };
    let class = number(1)?;
    let subject = number(3)?;
    let detail = number(3)?;
    if parts.next().is_some() || !matches!(class, 2 | 4 | 5) {
        return None;
    }
    Some((class as u8, subject, detail))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(r: &mut ReplyReader, bytes: &[u8]) {
        r.spare()[..bytes.len()].copy_from_slice(bytes);
        r.filled(bytes.len());
    }

    #[test]
    fn multiline_split_across_reads() {
        let mut r = ReplyReader::new(0);
        feed(&mut r, b"250-mx.example\r\n250-PIPE");
        assert_eq!(r.next_reply(), Ok(None));
        feed(&mut r, b"LINING\r\n250 CHUNKING\r");
        assert_eq!(r.next_reply(), Ok(None));
        feed(&mut r, b"\n");
        let rep = r.next_reply().unwrap().unwrap();
        assert_eq!(rep.code, 250);
        assert_eq!(
            lines(r.text(&rep)),
            vec!["mx.example", "PIPELINING", "CHUNKING"]
        );
        assert!(r.is_empty());
    }

    #[test]
    fn pipelined_replies_in_one_read() {
        let mut r = ReplyReader::new(0);
        feed(&mut r, b"250 2.1.0 Ok\r\n550 5.1.1 no\r\n354 go\r\n221");
        let codes: Vec<u16> =
            std::iter::from_fn(|| r.next_reply().unwrap().map(|x| x.code)).collect();
        assert_eq!(codes, vec![250, 550, 354]);
        assert_eq!(r.pending(), b"221");
        feed(&mut r, b"\n");
        assert_eq!(r.next_reply().unwrap().unwrap().code, 221);
    }

    #[test]
    fn bare_code_and_lf_only() {
        let mut r = ReplyReader::new(0);
        feed(&mut r, b"250\r\n220 hi\n");
        assert_eq!(r.next_reply().unwrap().unwrap().code, 250);
        assert_eq!(r.next_reply().unwrap().unwrap().code, 220);
    }

    #[test]
    fn garbage_is_malformed() {
        for bad in [
            &b"hello\r\n"[..],
            b"25x ok\r\n",
            b"2500ok\r\n",
            b"099 x\r\n",
        ] {
            let mut r = ReplyReader::new(0);
            feed(&mut r, bad);
            assert_eq!(r.next_reply(), Err(ReplyError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn endless_reply_is_too_long() {
        let mut r = ReplyReader::new(0);
        let line =
            b"250-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n";
        let mut result = Ok(None);
        for _ in 0..2000 {
            if r.spare().len() < line.len() {
                break;
            }
            feed(&mut r, line);
            result = r.next_reply();
            if result.is_err() {
                break;
            }
        }
        feed(&mut r, b"250-partial");
        if result.is_ok() {
            result = r.next_reply();
        }
        assert_eq!(result, Err(ReplyError::TooLong));
    }

    #[test]
    fn compaction_keeps_partial_bytes() {
        let mut r = ReplyReader::new(0);
        let total = r.buf.len();
        // Fill most of the buffer with complete replies, leave a partial one at the end.
        let n = (total - REPLY_MAX_BYTES / 2) / 8;
        for _ in 0..n {
            feed(&mut r, b"250 ok\r\n");
        }
        feed(&mut r, b"25");
        for _ in 0..n {
            assert_eq!(r.next_reply().unwrap().unwrap().code, 250);
        }
        assert!(r.spare().len() >= REPLY_MAX_BYTES);
        feed(&mut r, b"1 x\r\n");
        assert_eq!(r.next_reply().unwrap().unwrap().code, 251);
    }

    /// Both strictnesses: each complete reply's code, or the error that stopped the reading.
    fn read_all(bytes: &[u8], strictness: Strictness) -> Result<Vec<u16>, ReplyError> {
        let mut r = ReplyReader::with_strictness(0, strictness);
        feed(&mut r, bytes);
        std::iter::from_fn(|| r.next_reply().transpose())
            .map(|rep| rep.map(|rep| rep.code))
            .collect()
    }

    #[test]
    fn bad_continuation() {
        // A continuation line that is not a reply line at all.
        for strictness in [Strictness::Tolerant, Strictness::Exact] {
            assert_eq!(
                read_all(b"250-first\r\nsecond\r\n", strictness),
                Err(ReplyError::Malformed)
            );
            assert_eq!(
                read_all(b"250-first\r\n250x\r\n", strictness),
                Err(ReplyError::Malformed)
            );
        }
        // A continuation with another code: the tolerant reader takes the last line's code.
        let changed = b"250-first\r\n550 second\r\n";
        assert_eq!(read_all(changed, Strictness::Tolerant), Ok(vec![550]));
        assert_eq!(
            read_all(changed, Strictness::Exact),
            Err(ReplyError::CodeChanged)
        );
    }

    #[test]
    fn bad_code() {
        for strictness in [Strictness::Tolerant, Strictness::Exact] {
            for bad in [
                &b"199 low\r\n"[..],
                b"600 high\r\n",
                b"2a0 x\r\n",
                b"25\r\n",
            ] {
                assert_eq!(
                    read_all(bad, strictness),
                    Err(ReplyError::Malformed),
                    "{bad:?}"
                );
            }
        }
    }

    #[test]
    fn exact_wants_crlf_and_a_separator() {
        use Strictness::Exact;
        assert_eq!(read_all(b"250 ok\r\n", Exact), Ok(vec![250]));
        assert_eq!(read_all(b"250 ok\n", Exact), Err(ReplyError::LineEnd));
        assert_eq!(read_all(b"250 o\rk\r\n", Exact), Err(ReplyError::LineEnd));
        assert_eq!(read_all(b"250\r\n", Exact), Err(ReplyError::Malformed));
        assert_eq!(read_all(b"250\n", Exact), Err(ReplyError::Malformed));
        assert_eq!(
            read_all(b"250-a\n250 b\r\n", Exact),
            Err(ReplyError::LineEnd)
        );
    }

    #[test]
    fn split_at_every_byte() {
        let stream: &[u8] = b"220 mx.example ESMTP\r\n250-mx.example\r\n250-PIPELINING\r\n\
            250 CHUNKING\r\n250 2.1.0 Ok\r\n354 go ahead\r\n250 2.0.0 Ok: queued as 1A2B\r\n";
        let want = vec![220, 250, 250, 354, 250];
        for strictness in [Strictness::Tolerant, Strictness::Exact] {
            for cut in 0..=stream.len() {
                let mut r = ReplyReader::with_strictness(0, strictness);
                let mut codes = Vec::new();
                let mut texts = Vec::new();
                for part in [&stream[..cut], &stream[cut..]] {
                    feed(&mut r, part);
                    while let Some(rep) = r.next_reply().unwrap() {
                        codes.push(rep.code);
                        texts.extend_from_slice(r.text(&rep));
                    }
                }
                assert_eq!(codes, want, "cut at {cut}");
                assert_eq!(texts, stream, "cut at {cut}");
                assert!(r.is_empty());
            }
        }
    }

    #[test]
    fn check_replies_takes_whole_exact_streams() {
        assert_eq!(check_replies(b""), Ok(0));
        assert_eq!(check_replies(b"250-a\r\n250 b\r\n221 bye\r\n"), Ok(2));
        assert_eq!(
            check_replies(b"250 a\r\n250-b\r\n"),
            Err((7, ReplyError::Incomplete))
        );
        assert_eq!(
            check_replies(b"250 a\r\n250 b"),
            Err((7, ReplyError::Incomplete))
        );
        assert_eq!(
            check_replies(b"250 a\r\n250-b\r\n251 c\r\n"),
            Err((7, ReplyError::CodeChanged))
        );
        assert_eq!(
            check_replies(b"250 a\r\n250 b\n"),
            Err((7, ReplyError::LineEnd))
        );
    }

    #[test]
    fn enhanced_status_codes() {
        assert_eq!(enhanced_status(b"250 2.1.0 Ok\r\n"), Some((2, 1, 0)));
        assert_eq!(
            enhanced_status(b"550-5.7.1 no\r\n550 5.7.1 really\r\n"),
            Some((5, 7, 1))
        );
        assert_eq!(enhanced_status(b"421 4.4.2\r\n"), Some((4, 4, 2)));
        assert_eq!(enhanced_status(b"452 4.5.123 x\n"), Some((4, 5, 123)));
        for none in [
            &b"220 mx.example ESMTP\r\n"[..],
            b"250\r\n",
            b"250 2.1 Ok\r\n",
            b"250 3.1.0 Ok\r\n",
            b"250 2.1.0.0 Ok\r\n",
            b"250 2.1234.0 Ok\r\n",
            b"250 2..0 Ok\r\n",
        ] {
            assert_eq!(enhanced_status(none), None, "{none:?}");
        }
    }
}
