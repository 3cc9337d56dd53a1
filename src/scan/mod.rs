//! The scanner: finds command lines and the end of message data in the receive buffer.
//!
//! Everything here returns ranges into the caller's bytes and copies nothing. Message data is
//! looked at a 64-byte block at a time: each block is compared once for LF, CR and `.` into three
//! bit masks (`Masks`: AVX2 where the CPU has it, else SSE2), and the few places that need a
//! byte-at-a-time look — a CRLF followed by `.` or ending the input, and in normalize mode a bare
//! LF — are picked out of the masks with shifts and handed out with `trailing_zeros`. A block of
//! ordinary lines costs the same whatever its number of lines; a memchr call per line paid its
//! set-up every ~78 bytes. In reject mode bare LFs and bare CRs come out of the same masks.
//! Dot-unstuffing is a split of ranges (the stuffed `.` is simply left out of the next range), and
//! the only pieces of output that are not ranges are two constants: the CRLF that replaces a bare
//! LF in normalize mode and a CR held back across a read boundary.
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
    /// Reject mode: a bare LF or a bare CR was seen in the data consumed so far.
    bare: bool,
    /// Blocks are compared with AVX2 (32 bytes at a time) rather than the baseline 16.
    avx2: bool,
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
    /// A scanner positioned at the start of message data (a line start), comparing with the
    /// widest vectors the CPU has.
    pub fn new(mode: BareLf) -> DataScanner {
        DataScanner {
            avx2: avx2(),
            ..DataScanner::baseline(mode)
        }
    }

    /// A scanner that compares with the instruction set's baseline vectors only (SSE2 on
    /// x86_64), whatever the CPU has: the same answers as `new`, for tests that check both.
    pub fn baseline(mode: BareLf) -> DataScanner {
        DataScanner {
            state: State::LineStart,
            mode,
            bare: false,
            avx2: false,
        }
    }

    /// Starts a new message with the same mode (and vectors).
    pub fn reset(&mut self) {
        self.state = State::LineStart;
        self.bare = false;
    }

    /// In reject mode, true when the data so far held a bare LF or a bare CR (a CR at the very
    /// end of the input so far is not yet known to be bare and is not counted). Always false in
    /// normalize mode, where neither is an error.
    pub fn saw_bare_line_ending(&self) -> bool {
        self.mode == BareLf::Reject && self.bare
    }

    /// Scans `input`, appending the unstuffed data to `parts` as ranges of `input` offset by
    /// `base`. Stops right after the terminator.
    pub fn scan(&mut self, input: &[u8], base: usize, parts: &mut Vec<Part>) -> Scan {
        let len = input.len();
        let mut i = 0; // next byte to examine
        let mut seg = 0; // start of the range of data not yet pushed
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
                        i += 1;
                        self.state = State::LineStart;
                        break Scan::End(i);
                    }
                    // The CR after the dot is a bare CR: it is data.
                    self.bare = true;
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
                        i += 1;
                        self.state = State::LineStart;
                    } else {
                        // The CR that ended the last input was bare.
                        self.bare = true;
                        self.state = State::Mid;
                    }
                }
                State::Mid => match self.mid(input, i, base, &mut seg, parts) {
                    Some(next) => {
                        i = next;
                        self.state = State::LineStart;
                    }
                    None => {
                        self.state = if input.get(len.wrapping_sub(1)) == Some(&b'\r') && len > i {
                            State::MidCr
                        } else {
                            State::Mid
                        };
                        break Scan::More;
                    }
                },
            }
        };
        match result {
            // Everything not held back is data (a held-back CR set `seg` to the end).
            Scan::More => push(parts, base, seg, len),
            // The terminator's `.` CR LF is not data, and nothing before it is pending: `seg`
            // sits just after the dropped dot.
            Scan::End(_) => {}
        }
        result
    }

    /// Scans from `from`, inside a line, a block at a time, to the next line start where a
    /// byte-at-a-time look is needed (returned): just after a CRLF that is followed by the
    /// terminator's `.` CR LF, by a `.` too near the input's end to tell, or by the input's end.
    /// `None`: the input ended inside a line. Other line starts stay inside this loop, and a
    /// stuffed dot at one is left out of the data on the way. In normalize mode each bare LF
    /// on the way is replaced by CRLF; in reject mode bare LFs and bare CRs up to the returned
    /// line start are noted.
    ///
    /// Entering here at `from`, the byte before `from` (if any) never forms CRLF with an LF at
    /// `from`: every state that hands over to `Mid` has either just passed an LF or a `.`, or
    /// found that the byte at `from` is not LF. So nothing before `from` is looked at, and a
    /// CR there (always a bare one, already noted) is not carried in.
    #[inline]
    fn mid(
        &mut self,
        input: &[u8],
        from: usize,
        base: usize,
        seg: &mut usize,
        parts: &mut Vec<Part>,
    ) -> Option<usize> {
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: `avx2` is set only when the CPU has AVX2.
            return unsafe { self.mid_avx2(input, from, base, seg, parts) };
        }
        self.mid_with(input, from, base, seg, parts, Masks::of_64)
    }

    /// `mid` with the blocks compared by AVX2.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn mid_avx2(
        &mut self,
        input: &[u8],
        from: usize,
        base: usize,
        seg: &mut usize,
        parts: &mut Vec<Part>,
    ) -> Option<usize> {
        // SAFETY: this function runs only where the CPU has AVX2.
        self.mid_with(input, from, base, seg, parts, |block| unsafe {
            Masks::of_64_avx2(block)
        })
    }

    /// `mid`, with the block comparison given (inlined into each caller, so that each
    /// compiles with its own instruction set).
    #[inline(always)]
    fn mid_with(
        &mut self,
        input: &[u8],
        from: usize,
        base: usize,
        seg: &mut usize,
        parts: &mut Vec<Part>,
        of_64: impl Fn(&[u8; 64]) -> Masks,
    ) -> Option<usize> {
        let len = input.len();
        let mut block = from & !63;
        // Bits of the first block before `from` were already dealt with.
        let mut live = u64::MAX << (from - block);
        // From the block before: its last byte was CR; a CRLF ended it (a line starts at bit 0).
        let (mut cr_in, mut line_in) = (0u64, 0u64);
        while block < len {
            let m = Masks::at(input, block, &of_64);
            let (lf, cr, dot) = (m.lf & live, m.cr & live, m.dot & live);
            let after_cr = cr << 1 | cr_in;
            let crlf = lf & after_cr;
            // Line starts (just after a CRLF) that hold a `.`.
            let dots = (crlf << 1 | line_in) & dot;
            // Where a CR is not followed by LF, or an LF not preceded by CR, the two masks
            // differ.
            let odd = lf ^ after_cr;
            if (dots | odd) != 0 {
                // A CR that is the input's last byte is not known yet: bits past the input are
                // not compared.
                let odd = odd & (u64::MAX >> (64 - (len - block).min(64)));
                let mut stops = match self.mode {
                    BareLf::Reject => dots,
                    BareLf::Normalize => dots | (lf & !after_cr),
                };
                while stops != 0 {
                    let bit = stops & stops.wrapping_neg();
                    let at = block + bit.trailing_zeros() as usize;
                    if dots & bit != 0 {
                        if input.get(at + 1..at + 3).is_none_or(|next| next == CRLF) {
                            // The terminator, or a `.` too near the input's end to tell: the
                            // byte-at-a-time states take it from this line start.
                            self.bare |=
                                self.mode == BareLf::Reject && odd & (bit | (bit - 1)) != 0;
                            return Some(at);
                        }
                        // A stuffed dot: left out of the data.
                        push(parts, base, *seg, at);
                    } else {
                        // A bare LF (normalize mode): stored as CRLF.
                        push(parts, base, *seg, at);
                        parts.push(Part::Static(CRLF));
                    }
                    *seg = at + 1;
                    stops ^= bit;
                }
                self.bare |= self.mode == BareLf::Reject && odd != 0;
            }
            cr_in = cr >> 63;
            line_in = crlf >> 63;
            block += 64;
            live = u64::MAX;
        }
        // A CRLF that ends the input: a line starts where the next input begins.
        (len > from && input[len - 1] == b'\n' && len >= 2 && input[len - 2] == b'\r')
            .then_some(len)
    }
}

/// The bytes of one 64-byte block that the data scanner acts on: bit `j` of each mask is set
/// when byte `j` of the block is that byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Masks {
    lf: u64,
    cr: u64,
    dot: u64,
}

impl Masks {
    /// The masks of the (up to) 64 bytes of `input` from `at`; bits past the input are clear.
    #[inline(always)]
    fn at(input: &[u8], at: usize, of_64: impl Fn(&[u8; 64]) -> Masks) -> Masks {
        let rest = input.get(at..).unwrap_or_default();
        if let Some(block) = rest.first_chunk::<64>() {
            return of_64(block);
        }
        if let (Some(tail), false) = (input.last_chunk::<64>(), rest.is_empty()) {
            // The last, partial block: the input's last 64 bytes, shifted so that bit 0 is
            // byte `at` (the shift is 1..=63, and zeros come in from the top).
            let shift = at + 64 - input.len();
            let m = of_64(tail);
            return Masks {
                lf: m.lf >> shift,
                cr: m.cr >> shift,
                dot: m.dot >> shift,
            };
        }
        // A whole input under 64 bytes: compared from a zero-padded copy (a zero byte is none
        // of LF, CR and `.`).
        let mut padded = [0u8; 64];
        padded[..rest.len()].copy_from_slice(rest);
        of_64(&padded)
    }

    /// The masks of one whole block.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    fn of_64(block: &[u8; 64]) -> Masks {
        use std::arch::x86_64::{
            _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8,
        };
        let p = block.as_ptr().cast::<std::arch::x86_64::__m128i>();
        // SAFETY: SSE2 is part of the x86_64 baseline, and the four unaligned 16-byte loads
        // read bytes 0..64 of a 64-byte array.
        unsafe {
            let (lf, cr, dot) = (
                _mm_set1_epi8(b'\n' as i8),
                _mm_set1_epi8(b'\r' as i8),
                _mm_set1_epi8(b'.' as i8),
            );
            let mut m = Masks {
                lf: 0,
                cr: 0,
                dot: 0,
            };
            for k in 0..4 {
                let v = _mm_loadu_si128(p.add(k));
                let bits =
                    |x| u64::from(_mm_movemask_epi8(_mm_cmpeq_epi8(v, x)) as u16) << (16 * k);
                m.lf |= bits(lf);
                m.cr |= bits(cr);
                m.dot |= bits(dot);
            }
            m
        }
    }

    /// The masks of one whole block, 32 bytes at a time.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn of_64_avx2(block: &[u8; 64]) -> Masks {
        use std::arch::x86_64::{
            _mm256_cmpeq_epi8, _mm256_loadu_si256, _mm256_movemask_epi8, _mm256_set1_epi8,
        };
        let p = block.as_ptr().cast::<std::arch::x86_64::__m256i>();
        // SAFETY: the two unaligned 32-byte loads read bytes 0..64 of a 64-byte array; the
        // caller vouches for AVX2.
        unsafe {
            let (lf, cr, dot) = (
                _mm256_set1_epi8(b'\n' as i8),
                _mm256_set1_epi8(b'\r' as i8),
                _mm256_set1_epi8(b'.' as i8),
            );
            let (lo, hi) = (_mm256_loadu_si256(p), _mm256_loadu_si256(p.add(1)));
            let bits = |x| {
                let mask = |v| u64::from(_mm256_movemask_epi8(_mm256_cmpeq_epi8(v, x)) as u32);
                mask(lo) | mask(hi) << 32
            };
            Masks {
                lf: bits(lf),
                cr: bits(cr),
                dot: bits(dot),
            }
        }
    }

    /// The masks of one whole block (portable; the compiler may vectorize it).
    #[cfg(not(target_arch = "x86_64"))]
    #[inline]
    fn of_64(block: &[u8; 64]) -> Masks {
        Masks::scalar(block)
    }

    /// The masks of up to 64 bytes, one byte at a time.
    #[cfg(any(test, not(target_arch = "x86_64")))]
    fn scalar(bytes: &[u8]) -> Masks {
        debug_assert!(bytes.len() <= 64);
        let bit = |want: u8| {
            bytes
                .iter()
                .enumerate()
                .fold(0, |m, (j, &b)| m | (u64::from(b == want) << j))
        };
        Masks {
            lf: bit(b'\n'),
            cr: bit(b'\r'),
            dot: bit(b'.'),
        }
    }
}

/// Whether the CPU has AVX2 (the answer is cached by the standard library).
fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
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
