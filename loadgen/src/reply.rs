//! Incremental SMTP reply reader (RFC 5321 4.2): keeps state between reads, so a reply split
//! across reads, several replies in one read (pipelining) and multi-line `250-` continuations are
//! all handled by the same loop. It owns one receive buffer, allocated once per connection.
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
    /// A line does not start with three digits followed by space, `-` or the line end.
    Malformed,
    /// No reply ended within REPLY_MAX_BYTES.
    TooLong,
}

/// Receive buffer plus the parse position.
pub struct ReplyReader {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl ReplyReader {
    /// A reader whose buffer holds `cap` bytes (at least REPLY_MAX_BYTES + a read's worth).
    pub fn new(cap: usize) -> ReplyReader {
        ReplyReader {
            buf: vec![0u8; cap.max(REPLY_MAX_BYTES * 2)].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// True when no received byte waits to be parsed.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Forgets buffered bytes (a new session on the same buffer).
    pub fn reset(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Takes the next complete reply off the buffer, or `Ok(None)` if more bytes are needed.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ReplyError> {
        let mut pos = self.start;
        loop {
            let Some(nl) = self.buf[pos..self.end].iter().position(|&b| b == b'\n') else {
                if self.end - self.start > REPLY_MAX_BYTES {
                    return Err(ReplyError::TooLong);
                }
                return Ok(None);
            };
            let line_end = pos + nl + 1;
            let line = &self.buf[pos..line_end];
            let (code, last) = parse_line(line)?;
            if last {
                let r = Reply {
                    code,
                    range: self.start..line_end,
                };
                self.start = line_end;
                if self.start == self.end {
                    self.start = 0;
                    self.end = 0;
                }
                return Ok(Some(r));
            }
            pos = line_end;
        }
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

    /// True when bytes that are not yet a whole reply are buffered.
    #[cfg(test)]
    pub fn has_partial(&self) -> bool {
        self.end > self.start
    }
}

/// Parses one reply line: its code and whether it is the last line of the reply.
fn parse_line(line: &[u8]) -> Result<(u16, bool), ReplyError> {
    if line.len() < 4 || !line[..3].iter().all(u8::is_ascii_digit) {
        return Err(ReplyError::Malformed);
    }
    let code =
        (line[0] - b'0') as u16 * 100 + (line[1] - b'0') as u16 * 10 + (line[2] - b'0') as u16;
    if !(200..=599).contains(&code) {
        return Err(ReplyError::Malformed);
    }
    match line[3] {
        b'-' => Ok((code, false)),
        b' ' | b'\r' | b'\n' => Ok((code, true)),
        _ => Err(ReplyError::Malformed),
    }
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
        assert!(!r.has_partial());
    }

    #[test]
    fn pipelined_replies_in_one_read() {
        let mut r = ReplyReader::new(0);
        feed(&mut r, b"250 2.1.0 Ok\r\n550 5.1.1 no\r\n354 go\r\n221");
        let codes: Vec<u16> =
            std::iter::from_fn(|| r.next_reply().unwrap().map(|x| x.code)).collect();
        assert_eq!(codes, vec![250, 550, 354]);
        assert!(r.has_partial());
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
}
