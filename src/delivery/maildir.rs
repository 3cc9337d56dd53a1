//! The Maildir sink: the only code that decides which files hold mail.
//!
//! A message is written to `tmp/<id>.<pid>.<host>`, made durable, moved into `new/<id>.<host>`
//! with a rename that refuses to overwrite, and the move is made durable, all before the
//! session may say 250 (SPEC §4.4). Two ways, as `RINGMX_FSYNC` says:
//! - `1`: the file is fsync'd (by its last write where the driver can), and after its rename a
//!   fsync of `new/` is waited for;
//! - `syncfs`: after its last write the message waits for a `syncfs(2)` of the spool's file
//!   system, then collects its file's own write-back errors, and after its rename it waits for
//!   another `syncfs`. One `syncfs` writes every file and rename made before it in one pass
//!   and one journal commit, where a fsync each costs the file system a commit wait and a
//!   worker per message; it also flushes whatever else is on that file system, so it is for a
//!   spool on a file system of its own.
//!
//! Either way the waits are shared (`SharedSync`): a message waits for one sync that *started*
//! after its write or rename (group commit), so messages finishing together pay for one,
//! whichever shards they came through. Any failure removes what was written — nothing
//! half-written ever appears in `new/` — and the session answers 451.
//!
//! tmp names carry the writer's PID so that start-up (`prepare`) removes only the files of
//! writers that are gone (or older than 36 hours, the Maildir rule): a second ringmx started on
//! the same spool never deletes the first one's messages in progress.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use tokio::sync::Notify;

use super::{DeliveryError, MessageStart, QueueId, Sink};
use crate::driver::{Driver, FileSync};
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

/// How the Maildir makes messages durable (`RINGMX_FSYNC`).
#[derive(Clone, Debug)]
pub enum Durability {
    /// Not at all (`0`, benchmarks only).
    Off,
    /// A fsync per file, and a shared fsync of `new/` (`1`).
    Fsync,
    /// Shared `syncfs` of the file system that holds `new/`, for the files and for the renames
    /// (`syncfs`), through this descriptor on `new/` (see `syncfs_handle`).
    SyncFs(Arc<OwnedFd>),
}

/// The oldest Linux whose syncfs(2) reports write-back errors (5.8) and also the file system's
/// own sync errors, such as a failed journal commit (5.17): before that, a lost rename could
/// pass for durable.
pub const SYNCFS_MIN_KERNEL: (u32, u32) = (5, 17);

/// Major and minor version of a kernel release string (`6.1.0-18-amd64` → 6, 1).
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// For `RINGMX_FSYNC=syncfs`: one descriptor on `new/` for every shard, after checking that the
/// kernel (`release`, as uname(2) gives it) reports sync errors to syncfs. A distribution
/// kernel that carries the fix under an older number is refused too: its release string cannot
/// tell. `new/` rather than the spool's root: it is where the messages live (`tmp/` must be on
/// the same file system for the rename), and it must be readable anyway. One descriptor for the
/// process, because syncfs tells each open descriptor of a write-back error once: with one per
/// shard, one error would fail a batch through each of them.
///
/// A first syncfs made here may report an error from before this process (returned, to be
/// logged; otherwise the first batch of messages would be refused for it). A second one must
/// succeed: a file system that fails every sync (an aborted journal, remounted read-only) stops
/// start-up instead of refusing every message.
pub fn syncfs_handle(
    root: &Path,
    release: &str,
) -> Result<(Arc<OwnedFd>, Option<io::Error>), String> {
    match kernel_version(release) {
        Some(version) if version >= SYNCFS_MIN_KERNEL => {}
        _ => {
            return Err(format!(
                "RINGMX_FSYNC=syncfs: needs Linux {}.{} or later, whose syncfs reports write-back \
                 and journal errors; this kernel is {release} (use RINGMX_FSYNC=1)",
                SYNCFS_MIN_KERNEL.0, SYNCFS_MIN_KERNEL.1
            ))
        }
    }
    let new = root.join("new");
    let fd = std::fs::File::open(&new)
        .map(OwnedFd::from)
        .map_err(|e| format!("RINGMX_SPOOL: {}: {e}", new.display()))?;
    let sync = || {
        // SAFETY: syncfs(2) on the descriptor just opened, which lives across the call.
        crate::driver::check(unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&fd)) })
    };
    let earlier = sync().err();
    if earlier.is_some() {
        sync().map_err(|e| {
            format!(
                "RINGMX_FSYNC=syncfs: the file system of {} fails every sync: {e}",
                new.display()
            )
        })?;
    }
    Ok((Arc::new(fd), earlier))
}

/// One shard's Maildir: paths, the `new/` directory handle and the shared sync.
pub struct Maildir<D: Driver> {
    tmp: PathBuf,
    new: PathBuf,
    durability: Durability,
    /// `.<pid>.<host>`: what follows the ID in a tmp name.
    tmp_suffix: String,
    /// `.<host>`: what follows the ID in a name in `new/`.
    new_suffix: String,
    new_dir: D::File,
    /// Path buffers for reuse: a message's paths allocate nothing once the shard is warm.
    paths: RefCell<Vec<PathBuf>>,
    /// The sync that all shards share: fsyncs of `new/`, or syncfs calls.
    spool_sync: Arc<SharedSync>,
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
        durability: Durability,
        hostname: &str,
        spool_sync: Arc<SharedSync>,
        metrics: Option<Arc<ShardMetrics>>,
    ) -> io::Result<Maildir<D>> {
        let new = root.join("new");
        let new_dir = D::open_dir(&new)?;
        let host = file_host(hostname);
        Ok(Maildir {
            tmp: root.join("tmp"),
            new,
            durability,
            tmp_suffix: format!(".{}.{host}", std::process::id()),
            new_suffix: format!(".{host}"),
            new_dir,
            paths: RefCell::new(Vec::new()),
            spool_sync,
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
        let sync = match self.durability {
            Durability::Off => FileSync::Skip,
            Durability::Fsync => FileSync::Fsync,
            Durability::SyncFs(_) => FileSync::Check,
        };
        let started = self
            .metrics
            .as_ref()
            .filter(|_| sync == FileSync::Fsync)
            .map(|_| sync_started.unwrap_or_else(Instant::now));
        let mut result = D::persist(file, sync, tmp_path, &new_path).await;
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

    /// Waits until a sync that started after this call has completed (shared with the other
    /// shards: see `SharedSync`): a fsync of `new/` for a rename, or with `syncfs`, a syncfs
    /// for a file's writes or a rename alike.
    async fn shared_sync(&self) -> io::Result<()> {
        self.spool_sync
            .after_change(|| async {
                let started = self.metrics.as_ref().map(|_| Instant::now());
                let result = match &self.durability {
                    Durability::SyncFs(fs) => D::sync_fs(fs).await,
                    Durability::Off | Durability::Fsync => D::sync_dir(&self.new_dir).await,
                };
                if let (Some(metrics), Some(started)) = (&self.metrics, started) {
                    metrics.fsync_latency(started.elapsed());
                }
                result
            })
            .await
    }
}

/// A sync shared by the shards of one process: the fsync of `new/`, or with `syncfs` the
/// syncfs of the spool's file system. Every message's rename (and with `syncfs`, its file's
/// writes) must be made durable by a sync begun after it; one sync covers all the changes
/// before it, so the shards take turns: while one runs, changes queue up for the next. A sync
/// per shard instead would be as many journal commits at a time as there are shards. The price:
/// a sync completes on the shard that started it, so a shard that is slow to run its tasks
/// delays the 250s of the others by as much.
#[derive(Default)]
pub struct SharedSync {
    /// Changes done (each takes the next number).
    changes: AtomicU64,
    /// Every change up to this number is durable.
    synced: AtomicU64,
    /// A sync covering changes up to this number failed.
    failed_through: AtomicU64,
    /// A sync is running.
    syncing: AtomicBool,
    /// Wakes the waiters when a sync ends.
    done: Notify,
}

impl SharedSync {
    /// Called once a change (a rename into the directory, a file's last write) is done:
    /// returns once a sync that began after this call has succeeded (the change is durable),
    /// or with the error of the one that failed. One sync runs at a time, made by `sync` of
    /// the caller that finds none running; it covers every change counted before it began.
    pub async fn after_change<F>(&self, mut sync: impl FnMut() -> F) -> io::Result<()>
    where
        F: Future<Output = io::Result<()>>,
    {
        let mine = self.changes.fetch_add(1, Ordering::SeqCst) + 1;
        loop {
            // Registered before the checks, so that a sync ending between them and the wait
            // still wakes this one.
            let done = self.done.notified();
            let mut done = pin!(done);
            done.as_mut().enable();
            // A failure first: a change a failed sync covered is never reported durable, not
            // even when a later sync succeeds (the kernel may report a lost write-back to one
            // sync only, so the later one proves nothing about it).
            if self.failed_through.load(Ordering::SeqCst) >= mine {
                return Err(io::Error::other("spool sync failed"));
            }
            if self.synced.load(Ordering::SeqCst) >= mine {
                return Ok(());
            }
            if self
                .syncing
                .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                done.await;
                continue;
            }
            // This call leads the next sync. The guard hands the lead back (and wakes the
            // waiters, one of which leads next) even if this future is dropped on the way.
            let mut lead = Lead {
                dir: self,
                target: self.changes.load(Ordering::SeqCst),
                finished: false,
            };
            let result = sync().await;
            lead.finished = true;
            match &result {
                Ok(()) => self.synced.fetch_max(lead.target, Ordering::SeqCst),
                Err(_) => self.failed_through.fetch_max(lead.target, Ordering::SeqCst),
            };
            drop(lead);
            return result;
        }
    }
}

/// The lead of a shared sync: released, with the waiters woken, when dropped. A lead dropped
/// before its sync finished (its shard is stopping) counts as a failed sync for the changes it
/// covered: its outcome is unknown, and an error it may have had is not reported again to the
/// next one. A syncfs it started keeps running on its blocking thread, so the next one may run
/// beside it on the same descriptor, and either may be the one told of a write-back error:
/// each file's own check (`FileSync::Check`) still sees an error in its data.
struct Lead<'a> {
    dir: &'a SharedSync,
    /// Changes up to this number are covered by the sync.
    target: u64,
    /// The sync's outcome is recorded.
    finished: bool,
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.dir
                .failed_through
                .fetch_max(self.target, Ordering::SeqCst);
        }
        self.dir.syncing.store(false, Ordering::SeqCst);
        self.dir.done.notify_waiters();
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
        // With syncfs the file is not synced by itself: its writes wait for a shared syncfs.
        let sync = last && matches!(self.durability, Durability::Fsync);
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
        if matches!(self.durability, Durability::SyncFs(_)) {
            // Every write of the file is done: a syncfs begun from now on makes them durable.
            if let Err(e) = self.shared_sync().await {
                let _ = D::close(file).await;
                let _ = D::remove(&tmp_path).await;
                self.reuse(tmp_path);
                return Err(DeliveryError::Temporary(e));
            }
        }
        let published = self
            .publish(file, &tmp_path, id.as_str(), sync_started)
            .await;
        self.reuse(tmp_path);
        let new_path = published.map_err(DeliveryError::Temporary)?;
        let synced = if matches!(self.durability, Durability::Off) {
            Ok(())
        } else {
            self.shared_sync().await
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
    use std::os::fd::AsRawFd;
    use std::pin::Pin;
    use std::rc::Rc;

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
    fn kernel_versions_are_read_from_release_strings() {
        assert_eq!(kernel_version("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(kernel_version("5.17.0"), Some((5, 17)));
        assert_eq!(kernel_version("6.1.0-18-amd64"), Some((6, 1)));
        assert_eq!(kernel_version("5.4"), Some((5, 4)));
        assert_eq!(kernel_version("6"), None);
        assert_eq!(kernel_version(""), None);
        assert_eq!(kernel_version("linux"), None);
    }

    #[test]
    fn syncfs_is_refused_on_kernels_that_do_not_report_its_errors() {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path()).unwrap();
        for old in [
            "5.16.20",
            "5.10.0-28-amd64",
            "4.19.0",
            "3.10.0-1160.el7.x86_64",
            "",
            "x",
        ] {
            let e = syncfs_handle(dir.path(), old).unwrap_err();
            assert!(
                e.starts_with("RINGMX_FSYNC=syncfs: needs Linux 5.17"),
                "{e}"
            );
            assert!(e.contains(old), "{e}");
        }
        for new in ["5.17.0", "6.1.0-18-amd64", "6.18.44-fc-v657", "10.0"] {
            // (An error another process left on the file system may be reported once.)
            let (fd, _) = syncfs_handle(dir.path(), new).unwrap();
            // The descriptor is on new/.
            let on = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
            assert_eq!(on, dir.path().join("new").canonicalize().unwrap());
        }
        // No new/: a start-up error naming it.
        let bare = tempfile::tempdir().unwrap();
        let e = syncfs_handle(bare.path(), "6.1.0").unwrap_err();
        assert!(e.starts_with("RINGMX_SPOOL: ") && e.contains("new"), "{e}");
    }

    #[test]
    fn writer_pid_reads_only_ringmx_tmp_names() {
        assert_eq!(writer_pid(&tmp_name(42)), Some(42));
        assert_eq!(writer_pid("foo.42.host"), None);
        assert_eq!(writer_pid(&tmp_name(0)), None);
        assert_eq!(writer_pid("plain"), None);
    }

    /// A `SharedSync` fsync stand-in: counts the fsyncs begun, finishes one each time the test
    /// adds a permit, and fails the ones listed.
    struct GatedSync {
        started: std::cell::Cell<u32>,
        gate: Arc<tokio::sync::Semaphore>,
        failing: Vec<u32>,
    }

    impl GatedSync {
        fn new(failing: Vec<u32>) -> Rc<GatedSync> {
            Rc::new(GatedSync {
                started: std::cell::Cell::new(0),
                gate: Arc::new(tokio::sync::Semaphore::new(0)),
                failing,
            })
        }

        fn sync(&self) -> impl Future<Output = io::Result<()>> + 'static {
            let n = self.started.get() + 1;
            self.started.set(n);
            let gate = Arc::clone(&self.gate);
            let fail = self.failing.contains(&n);
            async move {
                gate.acquire().await.unwrap().forget();
                if fail {
                    Err(io::Error::other("injected"))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// A rename's wait for its directory fsync, as a task of its own.
    fn call(
        dir: &Arc<SharedSync>,
        fsync: &Rc<GatedSync>,
    ) -> tokio::task::JoinHandle<io::Result<()>> {
        let (dir, fsync) = (Arc::clone(dir), Rc::clone(fsync));
        tokio::task::spawn_local(async move { dir.after_change(|| fsync.sync()).await })
    }

    /// Polls `future` once, with a waker that does nothing.
    fn look<F: Future>(future: Pin<&mut F>) -> std::task::Poll<F::Output> {
        future.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    }

    /// Lets the spawned tasks run until they all wait.
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    /// Runs `test` with its spawned tasks on this thread; a test that hangs fails.
    fn local(test: impl Future<Output = ()>) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        tokio::task::LocalSet::new()
            .block_on(&runtime, async {
                tokio::time::timeout(Duration::from_secs(10), test).await
            })
            .expect("hung waiting for a directory fsync");
    }

    /// A rename waits for a fsync begun after it; those made while one runs share the next.
    #[test]
    fn renames_made_during_a_directory_fsync_share_the_next_one() {
        local(async {
            let dir = Arc::new(SharedSync::default());
            let fsync = GatedSync::new(vec![]);
            let a = call(&dir, &fsync);
            settle().await;
            assert_eq!(fsync.started.get(), 1);
            let b = call(&dir, &fsync);
            let c = call(&dir, &fsync);
            settle().await;
            // B and C wait: the fsync running began before their renames.
            assert_eq!(fsync.started.get(), 1);
            assert!(!b.is_finished() && !c.is_finished());
            fsync.gate.add_permits(1);
            settle().await;
            assert!(a.is_finished());
            assert!(!b.is_finished() && !c.is_finished());
            // One fsync for both.
            assert_eq!(fsync.started.get(), 2);
            fsync.gate.add_permits(1);
            for task in [a, b, c] {
                task.await.unwrap().unwrap();
            }
            assert_eq!(fsync.started.get(), 2);
        });
    }

    /// A failed fsync fails exactly the renames it covered; later ones get a fsync of their own.
    #[test]
    fn a_failed_directory_fsync_fails_the_renames_it_covered_and_no_others() {
        local(async {
            let dir = Arc::new(SharedSync::default());
            let fsync = GatedSync::new(vec![2]);
            let a = call(&dir, &fsync);
            settle().await;
            let (b, c) = (call(&dir, &fsync), call(&dir, &fsync));
            settle().await;
            fsync.gate.add_permits(1);
            settle().await;
            // The second fsync (B's and C's) is running; D's rename comes after it began.
            let d = call(&dir, &fsync);
            settle().await;
            fsync.gate.add_permits(2);
            assert!(a.await.unwrap().is_ok());
            assert!(b.await.unwrap().is_err());
            assert!(c.await.unwrap().is_err());
            assert!(d.await.unwrap().is_ok());
            assert_eq!(fsync.started.get(), 3);
        });
    }

    /// A rename covered by a fsync that failed is not reported durable, even when a later
    /// fsync succeeds before it looks; one covered by a lead dropped before its fsync ended
    /// fails too (that fsync's outcome is unknown).
    #[test]
    fn a_rename_covered_by_a_failed_or_abandoned_fsync_is_never_reported_durable() {
        local(async {
            let dir = Arc::new(SharedSync::default());
            let fsync = GatedSync::new(vec![2]);
            // A leads the first fsync; B waits; so does C, which is polled here by hand only.
            let a = call(&dir, &fsync);
            settle().await;
            let b = call(&dir, &fsync);
            settle().await;
            let mut c = Box::pin(dir.after_change(|| fsync.sync()));
            assert!(look(c.as_mut()).is_pending());
            // B leads the second, which covers C, and fails; D, renamed after it began, leads
            // a third that succeeds: all before C looks again. C still fails.
            fsync.gate.add_permits(1);
            settle().await;
            assert_eq!(fsync.started.get(), 2);
            let d = call(&dir, &fsync);
            settle().await;
            fsync.gate.add_permits(2);
            assert!(a.await.unwrap().is_ok());
            assert!(b.await.unwrap().is_err());
            assert!(d.await.unwrap().is_ok());
            assert_eq!(fsync.started.get(), 3);
            match look(c.as_mut()) {
                std::task::Poll::Ready(result) => assert!(result.is_err(), "covered by a failure"),
                std::task::Poll::Pending => panic!("C still waits"),
            }

            // E leads the fourth; F waits; G waits for the fifth, led by F, which is dropped
            // while its fsync runs: G fails, and H after it gets a fsync of its own.
            let e = call(&dir, &fsync);
            settle().await;
            let (f, g) = (call(&dir, &fsync), call(&dir, &fsync));
            settle().await;
            fsync.gate.add_permits(1);
            settle().await;
            assert!(e.await.unwrap().is_ok());
            assert_eq!(fsync.started.get(), 5);
            f.abort();
            settle().await;
            assert!(g.await.unwrap().is_err());
            let h = call(&dir, &fsync);
            settle().await;
            fsync.gate.add_permits(1);
            assert!(h.await.unwrap().is_ok());
            assert_eq!(fsync.started.get(), 6);
        });
    }

    /// A caller dropped while it leads a fsync hands the lead on: the others do not hang.
    #[test]
    fn a_dropped_lead_hands_the_directory_fsync_on() {
        local(async {
            let dir = Arc::new(SharedSync::default());
            let fsync = GatedSync::new(vec![]);
            let a = call(&dir, &fsync);
            settle().await;
            let b = call(&dir, &fsync);
            settle().await;
            a.abort();
            settle().await;
            assert_eq!(fsync.started.get(), 2);
            fsync.gate.add_permits(1);
            b.await.unwrap().unwrap();
        });
    }

    /// Shards on their own threads: every call returns only after a fsync that began after
    /// it was made and ended before it returned, never two fsyncs run at once, and calls share
    /// fsyncs.
    #[test]
    fn shards_on_several_threads_share_directory_fsyncs_and_each_waits_for_one_begun_after_it() {
        use std::sync::atomic::AtomicUsize;
        use std::sync::Mutex;
        const THREADS: usize = 3;
        const TASKS: usize = 6;
        const CALLS: usize = 15;
        let dir = Arc::new(SharedSync::default());
        let clock = Arc::new(AtomicU64::new(0));
        // (began, ended) of each fsync, in logical time.
        let syncs = Arc::new(Mutex::new(Vec::<(u64, u64)>::new()));
        let running = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let (dir, clock, syncs, running) = (
                    Arc::clone(&dir),
                    Arc::clone(&clock),
                    Arc::clone(&syncs),
                    Arc::clone(&running),
                );
                std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_time()
                        .build()
                        .unwrap();
                    let local = tokio::task::LocalSet::new();
                    for _ in 0..TASKS {
                        let (dir, clock, syncs, running) = (
                            Arc::clone(&dir),
                            Arc::clone(&clock),
                            Arc::clone(&syncs),
                            Arc::clone(&running),
                        );
                        local.spawn_local(async move {
                            for _ in 0..CALLS {
                                let made = clock.fetch_add(1, Ordering::SeqCst);
                                dir.after_change(|| {
                                    let (clock, syncs, running) = (
                                        Arc::clone(&clock),
                                        Arc::clone(&syncs),
                                        Arc::clone(&running),
                                    );
                                    async move {
                                        assert_eq!(running.fetch_add(1, Ordering::SeqCst), 0);
                                        let began = clock.fetch_add(1, Ordering::SeqCst);
                                        tokio::time::sleep(Duration::from_millis(1)).await;
                                        let ended = clock.fetch_add(1, Ordering::SeqCst);
                                        running.fetch_sub(1, Ordering::SeqCst);
                                        syncs.lock().unwrap().push((began, ended));
                                        Ok(())
                                    }
                                })
                                .await
                                .unwrap();
                                let returned = clock.fetch_add(1, Ordering::SeqCst);
                                let covered = syncs
                                    .lock()
                                    .unwrap()
                                    .iter()
                                    .any(|&(b, e)| b > made && e < returned);
                                assert!(covered, "returned without a fsync begun after it");
                            }
                        });
                    }
                    runtime.block_on(local);
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let syncs = syncs.lock().unwrap().len();
        assert!(
            syncs < THREADS * TASKS * CALLS,
            "{syncs} fsyncs: none shared"
        );
    }
}
