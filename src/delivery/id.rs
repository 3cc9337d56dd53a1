//! Queue IDs: unique across shards, restarts, clock steps and hosts, and sortable by time.
//!
//! An ID is 14 hex digits of wall-clock microseconds, 2 of shard, 4 of a per-shard sequence and
//! 12 of a random number drawn once per process, all upper-case hex. Within a process IDs of a
//! shard strictly increase even when the clock stands still or steps back (the last time is kept
//! and the sequence counts on). Across processes — a restart with the clock set back, a second
//! instance on the same spool, another MX host publishing to the same stream — the random part
//! keeps them apart; the Maildir sink still refuses to overwrite a file (`RENAME_NOREPLACE`) and
//! takes a fresh ID if it must, so a collision can never replace a stored message.

use std::time::{SystemTime, UNIX_EPOCH};

/// Length of a queue ID in ASCII hex digits.
pub const QUEUE_ID_LEN: usize = 32;

/// A queue ID, as ASCII hex.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueId([u8; QUEUE_ID_LEN]);

impl QueueId {
    /// The ID as text.
    pub fn as_str(&self) -> &str {
        debug_assert!(self.0.is_ascii());
        // SAFETY: an ID is made only by `IdGenerator::next`, which writes hex digits, and by
        // `parse`, which takes nothing else: ASCII, so UTF-8. (Validating the 32 bytes on every
        // call cost a hundred instructions, twice per message.)
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    /// The queue ID written as `text`, if it is one.
    pub fn parse(text: &str) -> Option<QueueId> {
        let bytes: [u8; QUEUE_ID_LEN] = text.as_bytes().try_into().ok()?;
        bytes
            .iter()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b))
            .then_some(QueueId(bytes))
    }

    /// The ID as bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Makes strictly increasing queue IDs for one shard.
#[derive(Debug)]
pub struct IdGenerator {
    /// An ID with the shard and nonce digits written, which do not change.
    template: [u8; QUEUE_ID_LEN],
    last_micros: u64,
    seq: u16,
}

impl IdGenerator {
    /// A generator for `shard` whose IDs carry `nonce` (48 bits are used): draw it once per
    /// process with `process_nonce`.
    pub fn new(shard: usize, nonce: u64) -> IdGenerator {
        let mut template = [b'0'; QUEUE_ID_LEN];
        template[14..16].copy_from_slice(&hex16((shard % 256) as u64)[14..]);
        template[20..32].copy_from_slice(&hex16(nonce & 0xFFFF_FFFF_FFFF)[4..]);
        IdGenerator {
            template,
            last_micros: 0,
            seq: 0,
        }
    }

    /// The next ID at wall-clock time `now`.
    pub fn next(&mut self, now: SystemTime) -> QueueId {
        let micros = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64)
            & 0x00FF_FFFF_FFFF_FFFF;
        if micros > self.last_micros {
            self.last_micros = micros;
            self.seq = 0;
        } else if self.seq == u16::MAX {
            self.last_micros += 1;
            self.seq = 0;
        } else {
            self.seq += 1;
        }
        let mut id = self.template;
        id[0..14].copy_from_slice(&hex16(self.last_micros)[2..]);
        id[16..20].copy_from_slice(&hex16(u64::from(self.seq))[12..]);
        QueueId(id)
    }
}

/// `value` as 16 upper-case hex digits, most significant first, eight digits at a time in
/// a register (a digit per byte, then '0'-'9' or 'A'-'F' by adding to all eight at once).
fn hex16(value: u64) -> [u8; 16] {
    /// Eight nibbles, most significant first, as eight ASCII hex digits.
    fn eight(nibbles: u32) -> [u8; 8] {
        // Nibble i (from the least significant) into byte i.
        let mut v = u64::from(nibbles);
        v = (v | (v << 16)) & 0x0000_FFFF_0000_FFFF;
        v = (v | (v << 8)) & 0x00FF_00FF_00FF_00FF;
        v = (v | (v << 4)) & 0x0F0F_0F0F_0F0F_0F0F;
        // 1 in each byte whose digit is 10 or more.
        let letters = ((v + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
        let ascii = v + 0x3030_3030_3030_3030 + letters * 7;
        // The most significant digit was in the highest byte: first in memory.
        ascii.to_be_bytes()
    }
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&eight((value >> 32) as u32));
    out[8..].copy_from_slice(&eight(value as u32));
    out
}

/// A random number for this process's IDs, from the kernel's generator (getrandom(2)); the
/// time and PID if that fails, which still differs between restarts.
pub fn process_nonce() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: the buffer is 8 valid, writable bytes; getrandom writes at most that many.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n == bytes.len() as isize {
        return u64::from_ne_bytes(bytes);
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 40)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ids_increase_and_stay_unique_when_the_clock_stands_still_or_steps_back() {
        let mut ids = IdGenerator::new(3, 0xABC);
        let t = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let a = ids.next(t);
        let b = ids.next(t);
        let c = ids.next(t - Duration::from_secs(5));
        let d = ids.next(t + Duration::from_micros(1));
        assert!(a < b && b < c && c < d, "{a:?} {b:?} {c:?} {d:?}");
        assert_eq!(a.as_str().len(), QUEUE_ID_LEN);
        assert!(a.as_str().bytes().all(|x| x.is_ascii_hexdigit()));
        assert_eq!(&a.as_str()[14..16], "03");
        assert_eq!(&a.as_str()[20..], "000000000ABC");
    }

    #[test]
    fn two_processes_at_the_same_moment_make_different_ids() {
        let t = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut first = IdGenerator::new(0, process_nonce());
        let mut second = IdGenerator::new(0, process_nonce());
        assert_ne!(first.next(t), second.next(t));
    }

    #[test]
    fn a_sequence_that_wraps_moves_the_time_on() {
        let mut ids = IdGenerator::new(0, 1);
        let t = UNIX_EPOCH + Duration::from_secs(1);
        let mut last = ids.next(t);
        for _ in 0..70_000 {
            let next = ids.next(t);
            assert!(next > last);
            last = next;
        }
    }

    #[test]
    fn hex_digits_match_a_digit_at_a_time() {
        let mut rng = ringmx_wire::XorShift64Star::new(7);
        let edges = [0, 1, 9, 10, 15, 16, 0xA0, u64::MAX, 0x0123_4567_89AB_CDEF];
        for value in edges.into_iter().chain((0..10_000).map(|_| rng.next_u64())) {
            assert_eq!(
                std::str::from_utf8(&hex16(value)).unwrap(),
                format!("{value:016X}")
            );
        }
    }

    #[test]
    fn an_id_is_time_shard_sequence_and_nonce_in_fixed_width_hex() {
        let mut ids = IdGenerator::new(0x1AB, 0xFEDC_BA98_7654_3210);
        let at = UNIX_EPOCH + std::time::Duration::from_micros(0x00AB_CDEF_0123_4567);
        assert_eq!(ids.next(at).as_str(), "ABCDEF01234567AB0000BA9876543210");
        assert_eq!(ids.next(at).as_str(), "ABCDEF01234567AB0001BA9876543210");
    }
}
