//! The Maildir spool: the only module that writes files.
//!
//! A message is written to `tmp/<id>.<host>`, fsync'd, renamed into `new/`, and `new/` is
//! fsync'd, all before the session may say 250 (SPEC §4.4). The file starts with
//! `Return-Path:`, one `Delivered-To:` per recipient and a `Received:` header, then the message
//! bytes exactly as the client meant them. Directory fsyncs are shared: a message whose rename
//! is done waits for one directory fsync that *started* after its rename (group commit), so
//! messages finishing together in a shard pay for one. Any failure removes what was written —
//! nothing half-written ever appears in `new/` — and the session answers 451.
//!
//! Queue IDs are unique and sortable: microseconds since the epoch, then the shard, then a
//! sequence number, in fixed-width upper-case hex.

use std::cell::Cell;
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use tokio::sync::Notify;

use crate::driver::Driver;
use crate::proto::{Envelope, Part};

/// Length of a queue ID: 14 hex digits of microseconds, 2 of shard, 4 of sequence.
pub const QUEUE_ID_LEN: usize = 20;

/// A queue ID, as ASCII.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct QueueId([u8; QUEUE_ID_LEN]);

impl QueueId {
    /// The ID as text.
    pub fn as_str(&self) -> &str {
        // The bytes are ASCII hex digits by construction.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

/// Makes strictly increasing queue IDs for one shard.
#[derive(Debug)]
pub struct IdGenerator {
    shard: u8,
    last_micros: u64,
    seq: u16,
}

impl IdGenerator {
    /// A generator for `shard` (IDs of different shards never collide).
    pub fn new(shard: usize) -> IdGenerator {
        IdGenerator {
            shard: (shard % 256) as u8,
            last_micros: 0,
            seq: 0,
        }
    }

    /// The next ID at wall-clock time `now`. A clock that stands still or steps back keeps the
    /// last time and counts on, so IDs stay unique and increasing within the process.
    pub fn next(&mut self, now: SystemTime) -> QueueId {
        let micros = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
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
        let mut cursor = &mut id[..];
        let _ = write!(
            cursor,
            "{:014X}{:02X}{:04X}",
            self.last_micros, self.shard, self.seq
        );
        QueueId(id)
    }
}

/// Creates `tmp/`, `new/` and `cur/` under `root` if missing and removes stale files from
/// `tmp/` (left by a crash; none of them was ever acknowledged). Returns how many were removed.
pub fn prepare(root: &Path) -> io::Result<usize> {
    for dir in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    let mut removed = 0;
    for entry in std::fs::read_dir(root.join("tmp"))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Writes the trace headers that precede the message bytes.
pub fn write_headers(
    out: &mut Vec<u8>,
    envelope: &Envelope<'_>,
    id: QueueId,
    peer: IpAddr,
    hostname: &str,
    now: chrono::DateTime<chrono::Utc>,
) {
    let _ = write!(out, "Return-Path: <{}>\r\n", envelope.sender);
    for rcpt in envelope.recipients() {
        let _ = write!(out, "Delivered-To: {rcpt}\r\n");
    }
    let helo = if envelope.helo.is_empty() {
        "unknown"
    } else {
        envelope.helo
    };
    let _ = write!(out, "Received: from {helo} ([{peer}])\r\n\t");
    if let Some(tls) = envelope.tls {
        // As Postfix writes it: the protocol version and the IANA name of the cipher suite.
        let _ = write!(
            out,
            "(using {} with cipher {})\r\n\t",
            tls.version, tls.cipher
        );
    }
    let _ = write!(
        out,
        "by {hostname} (ringmx) with {} id {}",
        envelope.protocol,
        id.as_str()
    );
    if envelope.recipient_count() == 1 {
        if let Some(rcpt) = envelope.recipients().next() {
            let _ = write!(out, "\r\n\tfor <{rcpt}>");
        }
    }
    let _ = write!(out, "; {}\r\n", now.format("%a, %d %b %Y %H:%M:%S +0000"));
}

/// One shard's spool: paths, ID generator and the shared directory fsync.
pub struct Spool<D: Driver> {
    tmp: PathBuf,
    new: PathBuf,
    fsync: bool,
    hostname: String,
    /// File-name suffix: `.` and the host name with `/` and `:` replaced.
    suffix: String,
    new_dir: D::File,
    renames: Cell<u64>,
    synced: Cell<u64>,
    failed_through: Cell<u64>,
    syncing: Cell<bool>,
    sync_done: Notify,
}

/// A message being written: its file, where the next byte goes, and its paths.
pub struct Draft<D: Driver> {
    file: D::File,
    offset: u64,
    id: QueueId,
    tmp_path: PathBuf,
    /// The first write error; the draft is then doomed and its commit fails.
    failed: bool,
}

impl<D: Driver> Spool<D> {
    /// Opens shard `shard`'s view of the spool at `root` (already `prepare`d).
    pub fn open(root: &Path, fsync: bool, hostname: &str) -> io::Result<Spool<D>> {
        let new = root.join("new");
        let new_dir = D::open_dir(&new)?;
        let clean: String = hostname
            .chars()
            .map(|c| if c == '/' || c == ':' { '_' } else { c })
            .collect();
        Ok(Spool {
            tmp: root.join("tmp"),
            new,
            fsync,
            hostname: hostname.to_string(),
            suffix: format!(".{clean}"),
            new_dir,
            renames: Cell::new(0),
            synced: Cell::new(0),
            failed_through: Cell::new(0),
            syncing: Cell::new(false),
            sync_done: Notify::new(),
        })
    }

    /// Starts a message: creates its file in `tmp/` and writes the trace headers (built in
    /// `scratch`, a buffer the caller reuses).
    pub async fn begin(
        &self,
        id: QueueId,
        envelope: &Envelope<'_>,
        peer: IpAddr,
        scratch: Vec<u8>,
    ) -> (io::Result<Draft<D>>, Vec<u8>) {
        let mut tmp_path = self.tmp.clone();
        tmp_path.push(format!("{}{}", id.as_str(), self.suffix));
        let mut headers = scratch;
        headers.clear();
        write_headers(
            &mut headers,
            envelope,
            id,
            peer,
            &self.hostname,
            chrono::Utc::now(),
        );
        let (created, headers) = D::create_with(&tmp_path, headers).await;
        let file = match created {
            Ok(file) => file,
            Err(e) => return (Err(e), headers),
        };
        let offset = headers.len() as u64;
        let draft = Draft {
            file,
            offset,
            id,
            tmp_path,
            failed: false,
        };
        (Ok(draft), headers)
    }

    /// Appends message parts (ranges of `buf`, offset by `base`) to the draft. A write error
    /// dooms the draft (its commit will fail) but the buffer always comes back.
    pub async fn append(
        &self,
        draft: &mut Draft<D>,
        parts: &[Part],
        base: usize,
        buf: BytesMut,
    ) -> BytesMut {
        if draft.failed {
            return buf;
        }
        let (written, buf) = D::write_parts_at(&draft.file, buf, parts, base, draft.offset).await;
        match written {
            Ok(len) => draft.offset += len,
            Err(_) => draft.failed = true,
        }
        buf
    }

    /// Makes the draft durable in `new/`: fsync, close, rename, directory fsync (shared).
    /// On any failure nothing of it is left in `tmp/` or `new/`.
    pub async fn commit(&self, draft: Draft<D>) -> io::Result<QueueId> {
        let Draft {
            file,
            id,
            tmp_path,
            failed,
            ..
        } = draft;
        let mut new_path = self.new.clone();
        new_path.push(tmp_path.file_name().unwrap_or_default());
        if failed {
            let _ = D::close(file).await;
            let _ = D::remove(&tmp_path).await;
            return Err(io::Error::other("spool write failed"));
        }
        D::persist(file, self.fsync, &tmp_path, &new_path).await?;
        if self.fsync {
            if let Err(e) = self.sync_new_dir().await {
                // Not known to be durable: take it back so a retry cannot duplicate it.
                let _ = D::remove(&new_path).await;
                return Err(e);
            }
        }
        Ok(id)
    }

    /// Drops a draft: closes and removes its file.
    pub async fn abort(&self, draft: Draft<D>) {
        let _ = D::close(draft.file).await;
        let _ = D::remove(&draft.tmp_path).await;
    }

    /// Waits until a fsync of `new/` that started after this call's rename has completed.
    async fn sync_new_dir(&self) -> io::Result<()> {
        let mine = self.renames.get() + 1;
        self.renames.set(mine);
        loop {
            if self.synced.get() >= mine {
                return Ok(());
            }
            if self.failed_through.get() >= mine {
                return Err(io::Error::other("spool directory fsync failed"));
            }
            if self.syncing.get() {
                let done = self.sync_done.notified();
                done.await;
                continue;
            }
            self.syncing.set(true);
            let target = self.renames.get();
            let result = D::sync_dir(&self.new_dir).await;
            self.syncing.set(false);
            match &result {
                Ok(()) => self.synced.set(self.synced.get().max(target)),
                Err(_) => self.failed_through.set(target),
            }
            self.sync_done.notify_waiters();
            return result;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ids_increase_and_stay_unique_when_the_clock_stands_still_or_steps_back() {
        let mut ids = IdGenerator::new(3);
        let t = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let a = ids.next(t);
        let b = ids.next(t);
        let c = ids.next(t - Duration::from_secs(5));
        let d = ids.next(t + Duration::from_micros(1));
        assert!(a < b && b < c && c < d, "{a:?} {b:?} {c:?} {d:?}");
        assert_eq!(a.as_str().len(), QUEUE_ID_LEN);
        assert!(a.as_str().bytes().all(|x| x.is_ascii_hexdigit()));
        assert_eq!(&a.as_str()[14..16], "03");
    }

    #[test]
    fn prepare_creates_dirs_and_clears_tmp() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(prepare(dir.path()).unwrap(), 0);
        std::fs::write(dir.path().join("tmp/stale"), b"x").unwrap();
        std::fs::write(dir.path().join("new/kept"), b"x").unwrap();
        assert_eq!(prepare(dir.path()).unwrap(), 1);
        assert!(dir.path().join("new/kept").exists());
        assert!(!dir.path().join("tmp/stale").exists());
    }
}
