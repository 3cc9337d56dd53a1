//! Dot-stuffing of DATA (RFC 5321 4.5.2): a line that starts with `.` gets one more, and the
//! data ends with CRLF `.` CRLF. A line starts at the start of the data and right after CRLF,
//! never after a bare LF, as ringmx's scanner reads it. The stuffer appends into a caller's
//! `Vec`, so a sender that reserved the room allocates nothing.

/// Dot-stuffs data given in pieces; the state between pieces is where the last one ended.
#[derive(Clone, Copy, Debug)]
pub struct DotStuffer {
    line_start: bool,
    after_cr: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer::new()
    }
}

impl DotStuffer {
    /// A stuffer at the start of the data.
    pub const fn new() -> DotStuffer {
        DotStuffer {
            line_start: true,
            after_cr: false,
        }
    }

    /// Appends `bytes`, stuffed, to `out`.
    pub fn push(&mut self, out: &mut Vec<u8>, bytes: &[u8]) {
        for &b in bytes {
            if self.line_start && b == b'.' {
                out.push(b'.');
            }
            out.push(b);
            self.line_start = b == b'\n' && self.after_cr;
            self.after_cr = b == b'\r';
        }
    }

    /// Appends the end of the data: CRLF if the data so far does not end with one (and is not
    /// empty), then `.` CRLF.
    pub fn finish(self, out: &mut Vec<u8>) {
        if !self.line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

/// Appends `body` dot-stuffed and ended (see `DotStuffer::finish`) to `out`.
pub fn dot_stuff(out: &mut Vec<u8>, body: &[u8]) {
    let mut stuffer = DotStuffer::new();
    stuffer.push(out, body);
    stuffer.finish(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stuffed(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        dot_stuff(&mut out, body);
        out
    }

    #[test]
    fn leading_dots() {
        assert_eq!(
            stuffed(b".a\r\n..b\r\n.\r\nc.d\r\n"),
            b"..a\r\n...b\r\n..\r\nc.d\r\n.\r\n"
        );
    }

    #[test]
    fn bare_lf_starts_no_line() {
        assert_eq!(stuffed(b"a\n.b\r\n"), b"a\n.b\r\n.\r\n");
        assert_eq!(stuffed(b"a\r.b\r\n"), b"a\r.b\r\n.\r\n");
        assert_eq!(stuffed(b"a\r\n.b\n"), b"a\r\n..b\n\r\n.\r\n");
    }

    #[test]
    fn empty_body() {
        assert_eq!(stuffed(b""), b".\r\n");
    }

    #[test]
    fn body_not_ending_in_crlf() {
        assert_eq!(stuffed(b"a"), b"a\r\n.\r\n");
        assert_eq!(stuffed(b"a\r"), b"a\r\r\n.\r\n");
        assert_eq!(stuffed(b"."), b"..\r\n.\r\n");
    }

    #[test]
    fn pieces_equal_the_whole() {
        let body: &[u8] = b".one\r\n..two\r\nthree\r\n.\r\n\r\n.four\n.five\r\n";
        let whole = stuffed(body);
        for cut in 0..=body.len() {
            let mut out = Vec::new();
            let mut s = DotStuffer::new();
            s.push(&mut out, &body[..cut]);
            s.push(&mut out, &body[cut..]);
            s.finish(&mut out);
            assert_eq!(out, whole, "cut at {cut}");
        }
    }

    #[test]
    fn appends_without_reallocating_reserved_room() {
        let body = b"x\r\n.y\r\n";
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(b"DATA\r\n");
        let ptr = out.as_ptr();
        dot_stuff(&mut out, body);
        assert_eq!(out.as_ptr(), ptr);
        assert_eq!(out, b"DATA\r\nx\r\n..y\r\n.\r\n");
    }
}
