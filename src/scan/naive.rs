//! Byte-at-a-time oracle for the scanner: obviously correct, slow, and used only to check the
//! fast paths (tests, fuzz targets, and benchmarks that verify answers before timing).

use super::BareLf;

/// What the oracle makes of a whole DATA stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unstuffed {
    /// Offset just past the terminator CRLF `.` CRLF, if the stream holds one.
    pub end: Option<usize>,
    /// The message bytes as stored: unstuffed, bare LF normalized in normalize mode.
    pub data: Vec<u8>,
    /// Reject mode only: a bare LF or bare CR was in the data.
    pub bare: bool,
}

/// Scans a whole DATA stream one byte at a time.
pub fn unstuff(stream: &[u8], mode: BareLf) -> Unstuffed {
    let mut data = Vec::new();
    let mut bare = false;
    let mut end = None;
    let mut p = 0;
    while p < stream.len() {
        // A line starts at the start of data or right after CRLF; never after a bare LF.
        let line_start = p == 0 || (p >= 2 && stream[p - 2] == b'\r' && stream[p - 1] == b'\n');
        let byte = stream[p];
        if line_start && stream[p..].starts_with(b".\r\n") {
            end = Some(p + 3);
            break;
        }
        if line_start && byte == b'.' {
            p += 1;
            continue;
        }
        let crlf_lf = byte == b'\n' && p > 0 && stream[p - 1] == b'\r';
        if byte == b'\n' && !crlf_lf {
            bare = true;
            match mode {
                BareLf::Reject => data.push(b'\n'),
                BareLf::Normalize => data.extend_from_slice(b"\r\n"),
            }
        } else {
            // A CR not followed by LF is bare; a CR at the very end is not yet known to be.
            if byte == b'\r' && p + 1 < stream.len() && stream[p + 1] != b'\n' {
                bare = true;
            }
            data.push(byte);
        }
        p += 1;
    }
    Unstuffed {
        end,
        data,
        bare: bare && mode == BareLf::Reject,
    }
}

/// The oracle's view of a command line at the front of `input`: `Some((text, consumed,
/// bare_lf))` for a complete line within the limit, `None` otherwise.
pub fn first_line(input: &[u8], limit: usize) -> Option<(&[u8], usize, bool)> {
    for (i, &b) in input.iter().enumerate().take(limit) {
        if b == b'\n' {
            let crlf = i > 0 && input[i - 1] == b'\r';
            let text = if crlf { &input[..i - 1] } else { &input[..i] };
            return Some((text, i + 1, !crlf));
        }
    }
    None
}
