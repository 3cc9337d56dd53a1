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
    shard: u8,
    nonce: u64,
    last_micros: u64,
    seq: u16,
}

impl IdGenerator {
    /// A generator for `shard` whose IDs carry `nonce` (48 bits are used): draw it once per
    /// process with `process_nonce`.
    pub fn new(shard: usize, nonce: u64) -> IdGenerator {
        IdGenerator {
            shard: (shard % 256) as u8,
            nonce: nonce & 0xFFFF_FFFF_FFFF,
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
        let mut id = [0u8; QUEUE_ID_LEN];
        put_hex(&mut id[0..14], self.last_micros);
        put_hex(&mut id[14..16], u64::from(self.shard));
        put_hex(&mut id[16..20], u64::from(self.seq));
        put_hex(&mut id[20..32], self.nonce);
        QueueId(id)
    }
}

/// Writes the low digits of `value` into `out` as fixed-width upper-case hex.
fn put_hex(out: &mut [u8], mut value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    for byte in out.iter_mut().rev() {
        *byte = DIGITS[(value & 0xF) as usize];
        value >>= 4;
    }
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
}
