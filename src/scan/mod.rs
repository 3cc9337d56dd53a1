//! The scanner: finds command lines and the end of message data in the receive buffer.
//!
//! Everything here returns ranges into the caller's bytes and copies nothing. Message data is
//! scanned for `\n` a 64-byte block at a time (`LfFinder`: SSE2 compares into a bit mask, each
//! block compared once, its LFs handed out with `trailing_zeros`), because a memchr call per
//! line pays its set-up cost every ~78 bytes and ran at a fifth of a plain memchr pass on
//! 76-character lines; bare CRs are counted with memchr's count. Dot-unstuffing is a split of
//! ranges (the stuffed `.` is simply left out of the next range), and the only pieces of output
//! that are not ranges are two constants: the CRLF that replaces a bare LF in normalize mode and
//! a CR held back across a read boundary.
//!
//! End of data is recognised only as CRLF `.` CRLF. A bare LF or bare CR never starts or ends a
//! line for that purpose, so `\n.\n`, `\n.\r\n`, `\r.\r\n` and friends are plain data (the SMTP
//! smuggling family, CVE-2023-51764). State carries across calls, so a terminator or a CRLF split
//! over two reads at any byte position is found exactly once.
//!
//! `naive` holds the byte-at-a-time oracle every fast path here is tested against.

pub mod naive;

use std::ops::Range;

/// What to do with a bare LF (and bare CR) in message data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BareLf {
    /// The message is refused after its end of data; a command line ended by LF is refused.
    Reject,
    /// A bare LF ends a line and is stored as CRLF; a bare CR is kept as data.
    Normalize,
}

/// One piece of unstuffed message data, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    /// Bytes of the input slice given to the call that produced this part.
    Input(Range<usize>),
    /// Bytes that are not in the input as they must be stored (a CRLF for a bare LF, or a CR
    /// held back from an earlier read).
    Static(&'static [u8]),
}

/// Where the data scanner stands relative to the last line start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Just after CRLF (or at the start of data): a `.` here is stuffing or the terminator.
    LineStart,
    /// Inside a line.
    Mid,
    /// Inside a line, and the last byte of the previous input was CR.
    MidCr,
    /// After CRLF `.`: the dot is dropped whatever follows.
    Dot,
    /// After CRLF `.` CR: an LF now ends the data; anything else makes the CR data.
    DotCr,
}

/// Incremental scanner of DATA message bytes (dot-stuffed, ended by CRLF `.` CRLF).
#[derive(Clone, Debug)]
pub struct DataScanner {
    state: State,
    mode: BareLf,
    /// CR bytes seen in this message's data (including the terminator's).
    cr_count: u64,
    /// LF bytes seen that were preceded by CR.
    crlf_count: u64,
    /// A bare LF was seen.
    bare_lf: bool,
}

/// The result of one `DataScanner::scan` call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scan {
    /// All input was consumed; the data goes on.
    More,
    /// The terminator ends at this offset of the input (the bytes after it are not data).
    End(usize),
}

const CRLF: &[u8] = b"\r\n";
const CR: &[u8] = b"\r";

impl DataScanner {
    /// A scanner positioned at the start of message data (a line start).
    pub fn new(mode: BareLf) -> DataScanner {
        DataScanner {
            state: State::LineStart,
            mode,
            cr_count: 0,
            crlf_count: 0,
            bare_lf: false,
        }
    }

    /// Starts a new message with the same mode.
    pub fn reset(&mut self) {
        *self = DataScanner::new(self.mode);
    }

    /// In reject mode, true when the data so far held a bare LF or a bare CR (a CR at the very
    /// end of the input so far is not yet known to be bare and is not counted). Always false in
    /// normalize mode, where neither is an error.
    pub fn saw_bare_line_ending(&self) -> bool {
        let pending_cr = matches!(self.state, State::MidCr | State::DotCr) as u64;
        self.mode == BareLf::Reject
            && (self.bare_lf || self.cr_count - pending_cr != self.crlf_count)
    }

    /// Scans `input`, appending the unstuffed data to `parts` as ranges of `input` offset by
    /// `base`. Stops right after the terminator.
    pub fn scan(&mut self, input: &[u8], base: usize, parts: &mut Vec<Part>) -> Scan {
        let len = input.len();
        let mut lfs = LfFinder::new(input);
        let mut i = 0; // next byte to examine
        let mut seg = 0; // start of the range of data not yet pushed
                         // A bare CR never ends anything, so CRs need no per-byte look; in reject mode they are
                         // counted once per call over the bytes consumed and compared with the CRLFs found.
        let result = loop {
            match self.state {
                State::LineStart => {
                    if i == len {
                        break Scan::More;
                    }
                    if input[i] == b'.' {
                        push(parts, base, seg, i);
                        i += 1;
                        seg = i;
                        self.state = State::Dot;
                    } else {
                        self.state = State::Mid;
                    }
                }
                State::Dot => {
                    if i == len {
                        break Scan::More;
                    }
                    if input[i] == b'\r' {
                        i += 1;
                        self.state = State::DotCr;
                    } else {
                        self.state = State::Mid;
                    }
                }
                State::DotCr => {
                    if i == len {
                        // The CR may belong to the terminator: hold it back, not yet data.
                        seg = len;
                        break Scan::More;
                    }
                    if input[i] == b'\n' {
                        self.crlf_count += 1;
                        i += 1;
                        self.state = State::LineStart;
                        break Scan::End(i);
                    }
                    // The CR after the dot is a bare CR: it is data.
                    if i == 0 {
                        parts.push(Part::Static(CR));
                    } else {
                        seg = i - 1;
                    }
                    self.state = State::Mid;
                }
                State::MidCr => {
                    if i == len {
                        break Scan::More;
                    }
                    if input[i] == b'\n' {
                        self.crlf_count += 1;
                        i += 1;
                        self.state = State::LineStart;
                    } else {
                        self.state = State::Mid;
                    }
                }
                State::Mid => match lfs.next(i) {
                    None => {
                        self.state = if input.get(len.wrapping_sub(1)) == Some(&b'\r') && len > i {
                            State::MidCr
                        } else {
                            State::Mid
                        };
                        break Scan::More;
                    }
                    Some(lf) => {
                        if lf > i && input[lf - 1] == b'\r' {
                            self.crlf_count += 1;
                            i = lf + 1;
                            // The common case, a line that does not start with a dot, stays
                            // in this state and goes straight on to the next LF.
                            if i == len || input[i] == b'.' {
                                self.state = State::LineStart;
                            }
                        } else {
                            self.on_bare_lf(parts, base, &mut seg, lf);
                            i = lf + 1;
                        }
                    }
                },
            }
        };
        let consumed = match result {
            Scan::More => {
                // Everything not held back is data (a held-back CR set `seg` to the end).
                push(parts, base, seg, len);
                len
            }
            // The terminator's `.` CR LF is not data, and nothing before it is pending: `seg`
            // sits just after the dropped dot.
            Scan::End(n) => n,
        };
        if self.mode == BareLf::Reject {
            self.cr_count += memchr::memchr_iter(b'\r', &input[..consumed]).count() as u64;
        }
        result
    }

    /// Handles an LF at `lf` that is not preceded by CR.
    fn on_bare_lf(&mut self, parts: &mut Vec<Part>, base: usize, seg: &mut usize, lf: usize) {
        match self.mode {
            BareLf::Reject => self.bare_lf = true,
            BareLf::Normalize => {
                push(parts, base, *seg, lf);
                parts.push(Part::Static(CRLF));
                *seg = lf + 1;
            }
        }
    }
}

/// Finds the LFs of one input in order, one 64-byte block at a time: each block is compared
/// once into a bit mask, and the LFs in it are handed out from the mask.
struct LfFinder<'a> {
    input: &'a [u8],
    /// Offset of the block `mask` describes (a multiple of 64), or `usize::MAX` before the first.
    block: usize,
    /// Bit `j` set: `input[block + j]` is LF.
    mask: u64,
}

impl<'a> LfFinder<'a> {
    fn new(input: &'a [u8]) -> LfFinder<'a> {
        LfFinder {
            input,
            block: usize::MAX,
            mask: 0,
        }
    }

    /// The offset of the first LF at or after `from`, if any.
    #[inline]
    fn next(&mut self, from: usize) -> Option<usize> {
        let mut block = from & !63;
        if block != self.block {
            self.block = block;
            self.mask = lf_mask(self.input, block);
        }
        // `from - block` < 64, so the shift cannot overflow.
        let mut mask = self.mask & (u64::MAX << (from - block));
        loop {
            if mask != 0 {
                return Some(block + mask.trailing_zeros() as usize);
            }
            block += 64;
            if block >= self.input.len() {
                return None;
            }
            self.block = block;
            self.mask = lf_mask(self.input, block);
            mask = self.mask;
        }
    }
}

/// Bit `j` set when `input[at + j]` is LF, for the (up to) 64 bytes from `at`.
#[inline]
fn lf_mask(input: &[u8], at: usize) -> u64 {
    let rest = input.get(at..).unwrap_or_default();
    match rest.first_chunk::<64>() {
        Some(block) => lf_mask_64(block),
        None => {
            // The last, partial block: compared from a zero-padded copy (zeros are not LF).
            let mut padded = [0u8; 64];
            padded[..rest.len()].copy_from_slice(rest);
            lf_mask_64(&padded)
        }
    }
}

/// Bit `j` set when `block[j]` is LF.
#[cfg(target_arch = "x86_64")]
#[inline]
fn lf_mask_64(block: &[u8; 64]) -> u64 {
    use std::arch::x86_64::{_mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8};
    let p = block.as_ptr().cast::<std::arch::x86_64::__m128i>();
    // SAFETY: SSE2 is part of the x86_64 baseline, and the four unaligned 16-byte loads read
    // bytes 0..64 of a 64-byte array.
    unsafe {
        let lf = _mm_set1_epi8(b'\n' as i8);
        let m = |k: usize| {
            let v = _mm_loadu_si128(p.add(k));
            u64::from(_mm_movemask_epi8(_mm_cmpeq_epi8(v, lf)) as u16)
        };
        m(0) | m(1) << 16 | m(2) << 32 | m(3) << 48
    }
}

/// Bit `j` set when `block[j]` is LF (portable; the compiler may vectorize it).
#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn lf_mask_64(block: &[u8; 64]) -> u64 {
    lf_mask_scalar(block)
}

/// Bit `j` set when `bytes[j]` is LF, one byte at a time (at most 64 bytes).
#[cfg(any(test, not(target_arch = "x86_64")))]
#[inline]
fn lf_mask_scalar(bytes: &[u8]) -> u64 {
    debug_assert!(bytes.len() <= 64);
    bytes
        .iter()
        .enumerate()
        .fold(0, |m, (j, &b)| m | (u64::from(b == b'\n') << j))
}

/// Pushes `input[from..to]` (offset by `base`) unless it is empty.
#[inline]
fn push(parts: &mut Vec<Part>, base: usize, from: usize, to: usize) {
    if from < to {
        parts.push(Part::Input(base + from..base + to));
    }
}

/// The longest command line RFC 5321 4.5.3.1.4 requires us to take, CRLF included.
pub const COMMAND_LINE_MAX: usize = 512;

/// One result of `split_line`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line: the range of its text (line ending excluded), the bytes consumed, and
    /// whether it ended with a bare LF.
    Complete {
        text: Range<usize>,
        consumed: usize,
        bare_lf: bool,
    },
    /// The line is over `COMMAND_LINE_MAX`: `consumed` bytes (the first `COMMAND_LINE_MAX`)
    /// were dropped; the caller drains until the next LF (with `drain_line`), then answers
    /// `500 5.5.2`. Only the limit is consumed, so the LF and any pipelined commands after it
    /// are left for the drain and the next line.
    TooLong { consumed: usize },
    /// No LF yet and still within the limit: read more.
    Partial,
}

/// Splits one command line off the front of `input`.
pub fn split_line(input: &[u8]) -> Line {
    let window = &input[..input.len().min(COMMAND_LINE_MAX)];
    match memchr::memchr(b'\n', window) {
        Some(lf) => {
            let crlf = lf > 0 && input[lf - 1] == b'\r';
            let text_end = if crlf { lf - 1 } else { lf };
            Line::Complete {
                text: 0..text_end,
                consumed: lf + 1,
                bare_lf: !crlf,
            }
        }
        None if input.len() >= COMMAND_LINE_MAX => Line::TooLong {
            consumed: COMMAND_LINE_MAX,
        },
        None => Line::Partial,
    }
}

/// Drops the rest of an over-long line: returns the bytes consumed and whether its LF was found.
pub fn drain_line(input: &[u8]) -> (usize, bool) {
    match memchr::memchr(b'\n', input) {
        Some(lf) => (lf + 1, true),
        None => (input.len(), false),
    }
}

#[cfg(test)]
mod tests;
