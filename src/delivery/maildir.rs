//! The Maildir sink: the only code that decides which files hold mail.
//!
//! A message is written to `tmp/<id>.<pid>.<host>`, fsync'd, moved into `new/<id>.<host>` with
//! a rename that refuses to overwrite, and `new/` is fsync'd, all before the session may say
//! 250 (SPEC §4.4). Directory fsyncs are shared: a message whose rename is done waits for one
//! directory fsync that *started* after its rename (group commit), so messages finishing
//! together in a shard pay for one. Any failure removes what was written — nothing half-written
//! ever appears in `new/` — and the session answers 451.
//!
//! tmp names carry the writer's PID so that start-up (`prepare`) removes only the files of
//! writers that are gone (or older than 36 hours, the Maildir rule): a second ringmx started on
//! the same spool never deletes the first one's messages in progress.

use std::cell::{Cell, RefCell};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use tokio::sync::Notify;

use super::{DeliveryError, MessageStart, QueueId, Sink};
use crate::driver::Driver;
use crate::metrics::ShardMetrics;
use crate::scan::Part;

/// A tmp file older than this is removed at start-up whoever wrote it (the Maildir rule).
const TMP_MAX_AGE: Duration = Duration::from_secs(36 * 3600);
/// Fresh names tried when the name in `new/` is taken (another process's file).
const RENAME_ATTEMPTS: u32 = 8;
/// Longest file name most file systems take.
pub const FILE_NAME_MAX: usize = 255;
/// Octets of a file name that are not the host name: ID, the `.`s, a PID, a retry suffix.
pub const FILE_NAME_OVERHEAD: usize = super::QUEUE_ID_LEN + 1 + 10 + 1 + 3;

/// The host name as it appears in file names: `/` and `:` (which Maildir readers treat
/// specially) replaced by `_`.
pub fn file_host(hostname: &str) -> String {
    hostname
        .chars()
        .map(|c| if c == '/' || c == ':' { '_' } else { c })
        .collect()
}

/// Most path buffers a shard keeps for reuse.
const PATHS_KEPT: usize = 4096;

/// `dir/` followed by `pieces`, written into `path` (a reused buffer).
fn join_into(path: &mut PathBuf, dir: &Path, pieces: &[&str]) {
    let path = path.as_mut_os_string();
    path.clear();
    path.push(dir);
    path.push("/");
    for piece in pieces {
        path.push(piece);
    }
}

/// What `prepare` found in `tmp/`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Prepared {
    /// Files removed: their writer is gone, or they are older than 36 hours.
    pub removed: usize,
    /// Files kept: a running process (another ringmx on this spool) is writing them.
    pub kept: usize,
}

/// Creates `tmp/`, `new/` and `cur/` under `root` if missing and removes from `tmp/` the files
/// whose writer is no longer running (left by a crash; none of them was ever acknowledged) or
/// that are older than 36 hours.
pub fn prepare(root: &Path) -> io::Result<Prepared> {
    for dir in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    let mut prepared = Prepared::default();
    let now = SystemTime::now();
    for entry in std::fs::read_dir(root.join("tmp"))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if !meta.is_file() {
            continue;
        }
        let old = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age > TMP_MAX_AGE);
        let writer = entry.file_name().to_str().and_then(writer_pid);
        let live = writer.is_some_and(process_running);
        if old || (writer.is_some() && !live) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => prepared.removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        } else {
            prepared.kept += 1;
        }
    }
    Ok(prepared)
}

/// The PID in a tmp name `<id>.<pid>.<host>`; `None` for a name of another form (another
/// program's file, left alone unless it is old).
fn writer_pid(name: &str) -> Option<u32> {
    let mut fields = name.splitn(3, '.');
    let id = fields.next()?;
    let pid = fields.next()?;
    fields.next()?;
    if id.len() != super::QUEUE_ID_LEN || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    pid.parse().ok().filter(|&pid| pid > 0)
}

/// True when a process with this PID exists (kill(pid, 0): EPERM means it exists too).
fn process_running(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists and may be signalled; nothing is
    // sent.
    let result = unsafe { libc::kill(pid, 0) };
    result == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// One shard's Maildir: paths, the `new/` directory handle and the shared directory fsync.
pub struct Maildir<D: Driver> {
    tmp: PathBuf,
    new: PathBuf,
    fsync: bool,
    /// `.<pid>.<host>`: what follows the ID in a tmp name.
    tmp_suffix: String,
    /// `.<host>`: what follows the ID in a name in `new/`.
    new_suffix: String,
    new_dir: D::File,
    /// Path buffers for reuse: a message's paths allocate nothing once the shard is warm.
    paths: RefCell<Vec<PathBuf>>,
    renames: Cell<u64>,
    synced: Cell<u64>,
    failed_through: Cell<u64>,
    syncing: Cell<bool>,
    sync_done: Notify,
    /// The shard's counters, for fsync latency (None: metrics off).
    metrics: Option<Arc<ShardMetrics>>,
}

/// A message being written: its file, where the next byte goes, and its names.
pub struct Draft<D: Driver> {
    file: D::File,
    offset: u64,
    tmp_path: PathBuf,
    /// The queue ID, which names the file in `new/`.
    id: QueueId,
    /// The first write error; the draft is then doomed and its commit fails.
    failed: bool,
    /// When the last write began, if the driver made the file durable with it: the fsync
    /// metric then runs from there (the fsync is done by the time `persist` starts).
    sync_started: Option<Instant>,
}

impl<D: Driver> Maildir<D> {
    /// Opens shard's view of the Maildir at `root` (already `prepare`d).
    pub fn open(
        root: &Path,
        fsync: bool,
        hostname: &str,
        metrics: Option<Arc<ShardMetrics>>,
    ) -> io::Result<Maildir<D>> {
        let new = root.join("new");
        let new_dir = D::open_dir(&new)?;
        let host = file_host(hostname);
        Ok(Maildir {
            tmp: root.join("tmp"),
            new,
            fsync,
            tmp_suffix: format!(".{}.{host}", std::process::id()),
            new_suffix: format!(".{host}"),
            new_dir,
            paths: RefCell::new(Vec::new()),
            renames: Cell::new(0),
            synced: Cell::new(0),
            failed_through: Cell::new(0),
            syncing: Cell::new(false),
            sync_done: Notify::new(),
            metrics,
        })
    }

    /// `dir/` followed by `pieces`, in a buffer from the pool.
    fn path(&self, dir: &Path, pieces: &[&str]) -> PathBuf {
        let mut path = self.paths.borrow_mut().pop().unwrap_or_default();
        join_into(&mut path, dir, pieces);
        path
    }

    /// Gives a path buffer back to the pool.
    fn reuse(&self, path: PathBuf) {
        let mut paths = self.paths.borrow_mut();
        if paths.len() < PATHS_KEPT {
            paths.push(path);
        }
    }

    /// The path in `new/` for `id`, with retry suffix `-<attempt>` after the first.
    fn new_path(&self, id: &str, attempt: u32) -> PathBuf {
        const DIGITS: [&str; RENAME_ATTEMPTS as usize] =
            ["", "-1", "-2", "-3", "-4", "-5", "-6", "-7"];
        self.path(&self.new, &[id, DIGITS[attempt as usize], &self.new_suffix])
    }

    /// Moves a synced, closed file from `tmp/` to a free name in `new/`: the first name is
    /// tried by `persist` (with the fsync); a taken name is never replaced, a fresh one is
    /// tried instead.
    async fn publish(
        &self,
        file: D::File,
        tmp_path: &Path,
        id: &str,
        sync_started: Option<Instant>,
    ) -> io::Result<PathBuf> {
        let mut new_path = self.new_path(id, 0);
        let started = self
            .metrics
            .as_ref()
            .filter(|_| self.fsync)
            .map(|_| sync_started.unwrap_or_else(Instant::now));
        let mut result = D::persist(file, self.fsync, tmp_path, &new_path).await;
        if let (Some(metrics), Some(started)) = (&self.metrics, started) {
            // The file's fsync with its rename (one step for the driver), and with the last
            // write when the driver fsynced there.
            metrics.fsync_latency(started.elapsed());
        }
        let mut attempt = 0;
        while matches!(&result, Err(e) if e.kind() == io::ErrorKind::AlreadyExists) {
            attempt += 1;
            if attempt >= RENAME_ATTEMPTS {
                let _ = D::remove(tmp_path).await;
                break;
            }
            self.reuse(new_path);
            new_path = self.new_path(id, attempt);
            result = D::rename_noreplace(tmp_path, &new_path).await;
            if let Err(e) = &result {
                if e.kind() != io::ErrorKind::AlreadyExists {
                    let _ = D::remove(tmp_path).await;
                }
            }
        }
        match result {
            Ok(()) => Ok(new_path),
            Err(e) => {
                self.reuse(new_path);
                Err(e)
            }
        }
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
            let started = self.metrics.as_ref().map(|_| Instant::now());
            let result = D::sync_dir(&self.new_dir).await;
            if let (Some(metrics), Some(started)) = (&self.metrics, started) {
                metrics.fsync_latency(started.elapsed());
            }
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

impl<D: Driver> Sink for Maildir<D> {
    type Message = Draft<D>;

    async fn begin(
        &self,
        start: &MessageStart<'_>,
        head: Vec<u8>,
    ) -> (io::Result<Draft<D>>, Vec<u8>) {
        let Some(id) = QueueId::parse(start.id) else {
            return (Err(io::Error::other("not a queue ID")), head);
        };
        let tmp_path = self.path(&self.tmp, &[start.id, &self.tmp_suffix]);
        let (created, head) = D::create_with(&tmp_path, head).await;
        let file = match created {
            Ok(file) => file,
            Err(e) => {
                self.reuse(tmp_path);
                return (Err(e), head);
            }
        };
        let draft = Draft {
            file,
            offset: head.len() as u64,
            tmp_path,
            id,
            failed: false,
            sync_started: None,
        };
        (Ok(draft), head)
    }

    async fn append(
        &self,
        draft: &mut Draft<D>,
        buf: BytesMut,
        parts: &[Part],
        base: usize,
        last: bool,
    ) -> BytesMut {
        if draft.failed {
            return buf;
        }
        let sync = last && self.fsync;
        let started = self
            .metrics
            .as_ref()
            .filter(|_| sync)
            .map(|_| Instant::now());
        let (written, buf) =
            D::write_parts_at(&draft.file, buf, parts, base, draft.offset, sync).await;
        draft.sync_started = started.filter(|_| D::synced(&draft.file));
        match written {
            Ok(len) => draft.offset += len,
            Err(_) => draft.failed = true,
        }
        buf
    }

    async fn commit(&self, draft: Draft<D>) -> Result<(), DeliveryError> {
        let Draft {
            file,
            tmp_path,
            id,
            failed,
            sync_started,
            ..
        } = draft;
        if failed {
            let _ = D::close(file).await;
            let _ = D::remove(&tmp_path).await;
            self.reuse(tmp_path);
            return Err(DeliveryError::Temporary(io::Error::other(
                "spool write failed",
            )));
        }
        let published = self
            .publish(file, &tmp_path, id.as_str(), sync_started)
            .await;
        self.reuse(tmp_path);
        let new_path = published.map_err(DeliveryError::Temporary)?;
        let synced = if self.fsync {
            self.sync_new_dir().await
        } else {
            Ok(())
        };
        if synced.is_err() {
            // Not known to be durable: take it back so a retry cannot duplicate it.
            let _ = D::remove(&new_path).await;
        }
        self.reuse(new_path);
        synced.map_err(DeliveryError::Temporary)
    }

    async fn abort(&self, draft: Draft<D>) {
        let _ = D::close(draft.file).await;
        let _ = D::remove(&draft.tmp_path).await;
        self.reuse(draft.tmp_path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp_name(pid: u32) -> String {
        format!(
            "{}.{pid}.mx.example",
            "0".repeat(super::super::QUEUE_ID_LEN)
        )
    }

    #[test]
    fn prepare_creates_dirs_and_removes_only_files_of_writers_that_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(prepare(dir.path()).unwrap(), Prepared::default());
        // A PID that cannot be running (above the kernel's maximum of 2^22).
        let dead = tmp_name(4_194_305);
        let live = tmp_name(std::process::id());
        std::fs::write(dir.path().join("tmp").join(&dead), b"x").unwrap();
        std::fs::write(dir.path().join("tmp").join(&live), b"x").unwrap();
        std::fs::write(dir.path().join("tmp/foreign-file"), b"x").unwrap();
        std::fs::write(dir.path().join("new/kept"), b"x").unwrap();
        let prepared = prepare(dir.path()).unwrap();
        assert_eq!(
            prepared,
            Prepared {
                removed: 1,
                kept: 2
            }
        );
        assert!(dir.path().join("new/kept").exists());
        assert!(!dir.path().join("tmp").join(&dead).exists());
        assert!(dir.path().join("tmp").join(&live).exists());
        assert!(dir.path().join("tmp/foreign-file").exists());
    }

    #[test]
    fn prepare_removes_files_older_than_36_hours_whoever_wrote_them() {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path()).unwrap();
        let live = dir.path().join("tmp").join(tmp_name(std::process::id()));
        std::fs::write(&live, b"x").unwrap();
        let old = SystemTime::now() - Duration::from_secs(37 * 3600);
        let file = std::fs::File::options().write(true).open(&live).unwrap();
        file.set_modified(old).unwrap();
        drop(file);
        assert_eq!(prepare(dir.path()).unwrap().removed, 1);
        assert!(!live.exists());
    }

    #[test]
    fn writer_pid_reads_only_ringmx_tmp_names() {
        assert_eq!(writer_pid(&tmp_name(42)), Some(42));
        assert_eq!(writer_pid("foo.42.host"), None);
        assert_eq!(writer_pid(&tmp_name(0)), None);
        assert_eq!(writer_pid("plain"), None);
    }
}
