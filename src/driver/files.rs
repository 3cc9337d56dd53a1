//! File threads for the epoll driver: blocking file work (create, write, fsync, rename) runs on
//! threads of the shard's own so that one slow fsync never stalls the shard's connections, and
//! many run at once so that their fsyncs overlap.
//!
//! Handing work over allocates nothing once the shard is warm: jobs go through a bounded
//! channel whose slots exist from the start, each job's result comes back in a completion slot
//! taken from a per-shard pool, and the buffers a job carries (paths, the head, the part list)
//! come back with its result for reuse. Threads are started as the work needs them, up to
//! `MAX_THREADS`; one that found no work for `IDLE_EXIT` ends (as tokio's blocking pool does),
//! and all end with the shard.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::reuse::{CPath, Handle};
use super::{check, float_thread, writeback_errors, FileSync};
use crate::scan::Part;

/// Most file threads a shard starts (the most file operations it has in flight at once).
pub const MAX_THREADS: usize = 64;
/// Jobs waiting for a thread before a submitter waits for room (the disk is then saturated).
const QUEUE: usize = 1024;
/// Completion slots kept for reuse.
const SLOTS_KEPT: usize = 4096;
/// A file thread with no work for this long ends (shorter in unit tests, which watch it).
const IDLE_EXIT: Duration = if cfg!(test) {
    Duration::from_millis(100)
} else {
    Duration::from_secs(10)
};

/// A piece of file work.
pub enum Job {
    /// Create a new file at the path and write the head at its start; on error nothing is
    /// left at the path.
    Create { path: CPath, head: Vec<u8> },
    /// Write the parts (ranges of `buf` offset by `base`, and constants) at `offset`.
    Write {
        file: Arc<Handle>,
        buf: BytesMut,
        parts: Vec<Part>,
        base: usize,
        offset: u64,
    },
    /// Make the file durable as `sync` says, then move `from` to `to` without replacing `to`;
    /// on an error other than `to` existing, `from` is removed.
    Persist {
        file: Arc<Handle>,
        sync: FileSync,
        from: CPath,
        to: CPath,
    },
    /// Move `from` to `to` without replacing `to`.
    Rename { from: CPath, to: CPath },
    /// fsync a file or directory.
    Sync { file: Arc<Handle> },
    /// Remove a file.
    Remove { path: CPath },
}

/// A job's result, with everything it carried.
pub enum Done {
    Created(io::Result<OwnedFd>, CPath, Vec<u8>),
    Written(io::Result<u64>, BytesMut, Vec<Part>),
    /// Persist, Rename, Remove, Sync: the paths it used.
    Finished(io::Result<()>, Option<CPath>, Option<CPath>),
}

/// Where a job's result waits for the task that submitted it.
#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    done: Option<Done>,
    waker: Option<Waker>,
}

/// A shard's file threads and the pool of completion slots.
struct Files {
    jobs: Sender<(Job, Arc<Slot>)>,
    receiver: Receiver<(Job, Arc<Slot>)>,
    counts: Arc<Counts>,
    free: Vec<Arc<Slot>>,
    /// Slots whose job's thread may still hold them (a result just delivered, or a task that
    /// stopped waiting): reusable once it let go.
    pending: Vec<Arc<Slot>>,
}

/// How many file threads a shard has, and how many are free for another job.
#[derive(Default)]
struct Counts {
    threads: AtomicUsize,
    /// Threads free for a job (waiting, or done and on their way back to the queue) less the
    /// jobs queued that no thread is counted for yet; below zero when jobs wait for a thread.
    /// One number, changed by one atomic step on each side, so that a submitter never counts
    /// a thread that just took another job as free, nor the other way round.
    spare: AtomicIsize,
}

thread_local! {
    static FILES: RefCell<Option<Files>> = const { RefCell::new(None) };
}

/// Sets up the current thread (a shard) to hand file work to threads of its own.
pub struct Scope(());

impl Scope {
    pub fn enter() -> Scope {
        let (jobs, receiver) = crossbeam_channel::bounded(QUEUE);
        FILES.with(|files| {
            *files.borrow_mut() = Some(Files {
                jobs,
                receiver,
                counts: Arc::default(),
                free: Vec::new(),
                pending: Vec::new(),
            });
        });
        Scope(())
    }
}

impl Drop for Scope {
    /// The file threads end once the jobs queued are done (the channel is then closed).
    fn drop(&mut self) {
        FILES.with(|files| files.borrow_mut().take());
    }
}

impl Files {
    fn slot(&mut self) -> Arc<Slot> {
        if let Some(slot) = self.free.pop() {
            return slot;
        }
        if let Some(i) = self.pending.iter().position(|s| Arc::strong_count(s) == 1) {
            let slot = self.pending.swap_remove(i);
            *slot.state.lock().unwrap_or_else(|e| e.into_inner()) = SlotState::default();
            return slot;
        }
        Arc::new(Slot::default())
    }

    fn give_back(&mut self, slot: Arc<Slot>) {
        if Arc::strong_count(&slot) == 1 {
            if self.free.len() < SLOTS_KEPT {
                self.free.push(slot);
            }
        } else if self.pending.len() < SLOTS_KEPT {
            self.pending.push(slot);
        }
    }

    /// Counts a job just queued against the free threads, and starts a thread when none was
    /// free and the limit allows (past the limit, the job waits for the first thread done).
    /// Counted after the send, against a thread that ends for idleness at the same moment:
    /// either that thread sees this job counted and stays, or this sees it gone (see `work`).
    fn ensure_thread(&mut self) {
        let counts = &self.counts;
        if counts.spare.fetch_sub(1, Ordering::SeqCst) > 0
            || counts.threads.load(Ordering::SeqCst) >= MAX_THREADS
        {
            return;
        }
        let receiver = self.receiver.clone();
        let shared = Arc::clone(counts);
        counts.threads.fetch_add(1, Ordering::SeqCst);
        let started = std::thread::Builder::new()
            .name("ringmx-file".into())
            .spawn(move || work(receiver, shared));
        if started.is_err() {
            // The ones running take the job in turn; with none, `run` does it.
            counts.threads.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Runs `job` on a file thread and waits for its result.
pub async fn run(job: Job) -> Done {
    let slot = FILES.with(|files| {
        let mut files = files.borrow_mut();
        let files = files.as_mut().expect("file work outside a shard's runtime");
        let slot = files.slot();
        // Never blocks long: the threads are taking jobs (or there are none, below).
        let _ = files.jobs.send((job, Arc::clone(&slot)));
        files.ensure_thread();
        if files.counts.threads.load(Ordering::SeqCst) == 0 {
            // No thread could be started (a resource limit): the shard does the queued work
            // itself rather than wait for ever.
            while let Ok((job, slot)) = files.receiver.try_recv() {
                let done = execute(job);
                files.counts.spare.fetch_add(1, Ordering::SeqCst);
                deliver(slot, done);
            }
        }
        slot
    });
    let waiting = Waiting(Some(slot));
    poll_fn(|cx| {
        let slot = waiting.0.as_ref().expect("polled after completion");
        let mut state = slot.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.done.take() {
            Some(done) => Poll::Ready(done),
            None => {
                match &mut state.waker {
                    Some(waker) if waker.will_wake(cx.waker()) => {}
                    waker => *waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
        }
    })
    .await
}

/// Hands a job's result to the task waiting in `slot`, letting go of the slot before waking
/// it (so that the task finds the slot free for reuse).
fn deliver(slot: Arc<Slot>, done: Done) {
    let waker = {
        let mut state = slot.state.lock().unwrap_or_else(|e| e.into_inner());
        state.done = Some(done);
        state.waker.take()
    };
    drop(slot);
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// The slot of a job being waited for; back to the pool when the wait ends, also when the
/// waiting task is dropped (the slot is then reused once the job is done with it).
struct Waiting(Option<Arc<Slot>>);

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            FILES.with(|files| {
                if let Some(files) = files.borrow_mut().as_mut() {
                    files.give_back(slot);
                }
            });
        }
    }
}

/// A file thread: takes jobs until the shard is gone, or until it had none for `IDLE_EXIT`.
fn work(receiver: Receiver<(Job, Arc<Slot>)>, counts: Arc<Counts>) {
    // Started by the shard, the thread would run only on the shard's CPU when it is pinned, and
    // every file operation of the shard would wait for that one CPU.
    float_thread();
    counts.spare.fetch_add(1, Ordering::SeqCst);
    loop {
        let (job, slot) = match receiver.recv_timeout(IDLE_EXIT) {
            // Taking a job changes nothing: its submitter counted it against this thread.
            Ok(next) => next,
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                // Leave only while more threads are free than jobs are queued: a job queued
                // and counted meanwhile keeps this thread, which then takes it; one queued and
                // not yet counted finds this thread gone and starts another, or, when none can
                // be started, sees no thread left and is done by `run` itself (the thread
                // count drops first for that).
                counts.threads.fetch_sub(1, Ordering::SeqCst);
                let left = counts
                    .spare
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |spare| {
                        (spare > 0).then(|| spare - 1)
                    })
                    .is_ok();
                if left {
                    return;
                }
                counts.threads.fetch_add(1, Ordering::SeqCst);
                continue;
            }
        };
        let done = execute(job);
        // Free again before the result wakes its task, whose next job (a session's next
        // step) then finds this thread on its way back to the queue instead of starting
        // another.
        counts.spare.fetch_add(1, Ordering::SeqCst);
        deliver(slot, done);
    }
    counts.threads.fetch_sub(1, Ordering::SeqCst);
}

fn execute(job: Job) -> Done {
    match job {
        Job::Create { path, head } => {
            let created = create_with(&path, &head);
            Done::Created(created, path, head)
        }
        Job::Write {
            file,
            buf,
            parts,
            base,
            offset,
        } => {
            let written = write_parts(file.fd(), &buf, &parts, base, offset);
            Done::Written(written, buf, parts)
        }
        Job::Persist {
            file,
            sync,
            from,
            to,
        } => {
            let synced = match sync {
                FileSync::Skip => Ok(()),
                FileSync::Fsync => fsync(file.fd()),
                FileSync::Check => writeback_errors(file.fd()),
            };
            let renamed = synced.and_then(|()| rename_noreplace(&from, &to));
            if matches!(&renamed, Err(e) if e.kind() != io::ErrorKind::AlreadyExists) {
                let _ = unlink(&from);
            }
            Done::Finished(renamed, Some(from), Some(to))
        }
        Job::Rename { from, to } => {
            Done::Finished(rename_noreplace(&from, &to), Some(from), Some(to))
        }
        Job::Sync { file } => Done::Finished(fsync(file.fd()), None, None),
        Job::Remove { path } => Done::Finished(unlink(&path), Some(path), None),
    }
}

fn create_with(path: &CPath, head: &[u8]) -> io::Result<OwnedFd> {
    // SAFETY: `path` is NUL-terminated and lives across the call.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
            0o666,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let file = std::fs::File::from(fd);
    match file.write_all_at(head, 0) {
        Ok(()) => Ok(file.into()),
        Err(e) => {
            drop(file);
            let _ = unlink(path);
            Err(e)
        }
    }
}

/// Most pieces one vectored write takes (the kernel's IOV_MAX).
const IOV_MAX: usize = 1024;

thread_local! {
    /// The iovec array of this file thread's vectored writes, reused.
    static IOVECS: RefCell<Vec<libc::iovec>> = const { RefCell::new(Vec::new()) };
}

/// Writes the parts in order at `offset` with `pwritev(2)`, up to `IOV_MAX` parts a call (a
/// dot-stuffed message has a part per stuffed line, and a `pwrite` per part cost a syscall
/// each), going on from where a short write stopped. Returns the bytes written.
fn write_parts(fd: RawFd, buf: &[u8], parts: &[Part], base: usize, offset: u64) -> io::Result<u64> {
    let bytes = |part: &Part| -> &[u8] {
        match part {
            Part::Input(r) => &buf[base + r.start..base + r.end],
            Part::Static(bytes) => bytes,
        }
    };
    IOVECS.with(|iovecs| {
        let mut iovecs = iovecs.borrow_mut();
        let mut at = Resume::default();
        let mut written = 0u64;
        at.skip_empty(parts.iter().map(|p| bytes(p).len()));
        while at.next < parts.len() {
            iovecs.clear();
            iovecs.extend(
                parts[at.next..]
                    .iter()
                    .take(IOV_MAX)
                    .enumerate()
                    .map(|(k, part)| {
                        let piece = &bytes(part)[if k == 0 { at.skip } else { 0 }..];
                        libc::iovec {
                            iov_base: piece.as_ptr().cast_mut().cast(),
                            iov_len: piece.len(),
                        }
                    }),
            );
            let position = libc::off_t::try_from(offset + written)
                .map_err(|_| io::Error::from(io::ErrorKind::FileTooLarge))?;
            // SAFETY: every iovec points into `buf` or a static part, both alive across the
            // call; the descriptor is kept open by the job's handle.
            let n = unsafe { libc::pwritev(fd, iovecs.as_ptr(), iovecs.len() as i32, position) };
            let n = match n {
                n if n > 0 => n as usize,
                0 => return Err(io::ErrorKind::WriteZero.into()),
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(e);
                }
            };
            written += n as u64;
            at.advance(n, parts.iter().map(|p| bytes(p).len()));
        }
        Ok(written)
    })
}

/// Where a vectored write goes on: the first part not wholly written, and how many of its
/// bytes were.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Resume {
    next: usize,
    skip: usize,
}

impl Resume {
    /// Moves past `n` more bytes written, over parts of the lengths given (all of them, from
    /// the first), and past any empty parts after them.
    fn advance(&mut self, mut n: usize, lens: impl Iterator<Item = usize> + Clone) {
        let mut rest = lens.clone().skip(self.next);
        while n > 0 {
            let Some(len) = rest.next() else { break };
            let left = len - self.skip;
            if n >= left {
                n -= left;
                self.next += 1;
                self.skip = 0;
            } else {
                self.skip += n;
                n = 0;
            }
        }
        self.skip_empty(lens);
    }

    /// Moves past empty parts (and a part wholly written) at `next`.
    fn skip_empty(&mut self, lens: impl Iterator<Item = usize>) {
        for len in lens.skip(self.next) {
            if len != self.skip {
                break;
            }
            self.next += 1;
            self.skip = 0;
        }
    }
}

fn fsync(fd: RawFd) -> io::Result<()> {
    // SAFETY: fsync(2) on a descriptor the job's handle keeps open.
    check(unsafe { libc::fsync(fd) })
}

fn rename_noreplace(from: &CPath, to: &CPath) -> io::Result<()> {
    // SAFETY: both paths are NUL-terminated and live across the call.
    check(unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    })
}

fn unlink(path: &CPath) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated and lives across the call.
    check(unsafe { libc::unlink(path.as_ptr()) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn parts_past_iov_max_are_written_whole_and_in_order() {
        // 3,000 parts (three vectored writes), of every length from 0 to 7 including empty
        // ones and static ones, at an offset, read back against the parts put together.
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::create(dir.path().join("m")).unwrap();
        let buf: Vec<u8> = (0..20_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let mut parts = Vec::new();
        let mut want = Vec::new();
        let mut at = 3;
        for i in 0..3_000usize {
            if i % 7 == 3 {
                parts.push(Part::Static(b"\r\n"));
                want.extend_from_slice(b"\r\n");
            } else {
                let len = i % 8;
                parts.push(Part::Input(at - 3..at - 3 + len));
                want.extend_from_slice(&buf[at..at + len]);
                at += len;
            }
        }
        let written = write_parts(file.as_raw_fd(), &buf, &parts, 3, 5).unwrap();
        assert_eq!(written, want.len() as u64);
        let got = std::fs::read(dir.path().join("m")).unwrap();
        assert_eq!(&got[..5], &[0; 5]);
        assert_eq!(&got[5..], &want[..]);
    }

    #[test]
    fn a_short_write_goes_on_from_the_byte_it_stopped_at() {
        let lens = [3usize, 0, 5, 0, 0, 2, 4];
        let mut at = Resume::default();
        at.skip_empty(lens.iter().copied());
        assert_eq!(at, Resume { next: 0, skip: 0 });
        at.advance(2, lens.iter().copied());
        assert_eq!(at, Resume { next: 0, skip: 2 });
        // The rest of the first part, and the empty one after it.
        at.advance(1, lens.iter().copied());
        assert_eq!(at, Resume { next: 2, skip: 0 });
        // Across the end of a part into the middle of the next, past two empty ones.
        at.advance(6, lens.iter().copied());
        assert_eq!(at, Resume { next: 5, skip: 1 });
        at.advance(5, lens.iter().copied());
        assert_eq!(at, Resume { next: 7, skip: 0 });
        // Leading empty parts are skipped before the first write.
        let mut at = Resume::default();
        at.skip_empty([0usize, 0, 4].into_iter());
        assert_eq!(at, Resume { next: 2, skip: 0 });
        // Byte by byte over every length ends where the whole does.
        let lens = [1usize, 0, 2, 3, 0, 1];
        let mut at = Resume::default();
        at.skip_empty(lens.iter().copied());
        for _ in 0..lens.iter().sum::<usize>() {
            at.advance(1, lens.iter().copied());
        }
        assert_eq!(
            at,
            Resume {
                next: lens.len(),
                skip: 0
            }
        );
    }

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        let _files = Scope::enter();
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(future)
    }

    #[test]
    fn jobs_run_on_file_threads_and_hand_back_what_they_carried() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("a.tmp");
        let new = dir.path().join("a");
        block_on(async {
            let head = b"head\r\n".to_vec();
            let Done::Created(fd, path, head) = run(Job::Create {
                path: CPath::new(&tmp).unwrap(),
                head,
            })
            .await
            else {
                panic!("not a create")
            };
            path.reuse();
            assert_eq!(head, b"head\r\n");
            let file = super::super::reuse::File::new(fd.unwrap());
            let job = Job::Write {
                file: file.handle(),
                buf: BytesMut::from(&b"xxbody"[..]),
                parts: vec![Part::Input(2..6), Part::Static(b"\r\n")],
                base: 0,
                offset: 6,
            };
            let Done::Written(written, _, _) = run(job).await else {
                panic!("not a write")
            };
            assert_eq!(written.unwrap(), 6);
            // Many at once: each waits for its own result.
            let syncs = (0..20).map(|_| {
                run(Job::Sync {
                    file: file.handle(),
                })
            });
            for done in futures_join(syncs).await {
                assert!(matches!(done, Done::Finished(Ok(()), None, None)));
            }
            let job = Job::Persist {
                file: file.handle(),
                sync: FileSync::Fsync,
                from: CPath::new(&tmp).unwrap(),
                to: CPath::new(&new).unwrap(),
            };
            assert!(matches!(
                run(job).await,
                Done::Finished(Ok(()), Some(_), Some(_))
            ));
            drop(file.into_fd());
        });
        assert_eq!(std::fs::read(&new).unwrap(), b"head\r\nbody\r\n");
        assert!(!Path::new(&tmp).exists());
    }

    #[test]
    fn a_wait_given_up_leaves_its_slot_for_later_reuse() {
        block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let file =
                super::super::reuse::File::new(std::fs::File::open(dir.path()).unwrap().into());
            // Polled once, then dropped while the job may still run.
            let mut first = Box::pin(run(Job::Sync {
                file: file.handle(),
            }));
            let _ = futures_poll_once(first.as_mut()).await;
            drop(first);
            for _ in 0..10 {
                assert!(matches!(
                    run(Job::Sync {
                        file: file.handle()
                    })
                    .await,
                    Done::Finished(Ok(()), None, None)
                ));
            }
        });
    }

    /// This shard's file threads now.
    fn threads() -> usize {
        FILES.with(|files| {
            let files = files.borrow();
            files
                .as_ref()
                .unwrap()
                .counts
                .threads
                .load(Ordering::SeqCst)
        })
    }

    /// This shard's count of free threads less queued jobs.
    fn spare() -> isize {
        FILES.with(|files| {
            let files = files.borrow();
            files.as_ref().unwrap().counts.spare.load(Ordering::SeqCst)
        })
    }

    #[test]
    fn bursts_around_the_idle_exit_strand_no_job_and_the_counts_return_to_zero() {
        block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let file =
                super::super::reuse::File::new(std::fs::File::open(dir.path()).unwrap().into());
            // Bursts of 1 to 24 jobs at once, with pauses just under, at and just over the
            // time a thread waits before it leaves: threads leave while jobs arrive.
            let mut seed = 0x2545_f491_u32;
            for round in 0..40 {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                let burst = 1 + (seed % 24) as usize;
                let jobs = (0..burst).map(|_| {
                    run(Job::Sync {
                        file: file.handle(),
                    })
                });
                let done = tokio::time::timeout(Duration::from_secs(10), futures_join(jobs))
                    .await
                    .unwrap_or_else(|_| panic!("round {round}: a job of {burst} was stranded"));
                assert!(done
                    .iter()
                    .all(|d| matches!(d, Done::Finished(Ok(()), None, None))));
                assert!(threads() <= MAX_THREADS);
                let pause = IDLE_EXIT + Duration::from_millis(u64::from(seed % 7))
                    - Duration::from_millis(3);
                std::thread::sleep(pause);
            }
            // Once every thread has left, no job is queued and none is free: the count is
            // back at zero, or it drifted on the way.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while threads() > 0 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            assert_eq!((threads(), spare()), (0, 0));
        });
    }

    #[test]
    fn idle_threads_end_and_new_work_starts_one_again() {
        block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let file =
                super::super::reuse::File::new(std::fs::File::open(dir.path()).unwrap().into());
            let syncs = (0..8).map(|_| {
                run(Job::Sync {
                    file: file.handle(),
                })
            });
            futures_join(syncs).await;
            assert!(threads() >= 1);
            // Idle past IDLE_EXIT: every thread ends.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while threads() > 0 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            assert_eq!(threads(), 0);
            // Work after that starts a thread again; a job queued while a thread leaves is
            // never stranded.
            for _ in 0..20 {
                assert!(matches!(
                    run(Job::Sync {
                        file: file.handle()
                    })
                    .await,
                    Done::Finished(Ok(()), None, None)
                ));
                std::thread::sleep(IDLE_EXIT - Duration::from_millis(2));
            }
        });
    }

    #[test]
    fn one_job_at_a_time_keeps_to_one_thread() {
        // The submitter polls without waiting to be woken, so it sees each result the moment
        // it is handed over and queues the next job at once, while the thread that did the
        // last one may still be on its way back to the queue: that thread must count as free.
        block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let file =
                super::super::reuse::File::new(std::fs::File::open(dir.path()).unwrap().into());
            // A second thread would leave again after `IDLE_EXIT` without work: look after
            // every job, not only at the end.
            let mut most = 0;
            for _ in 0..5000 {
                let mut job = std::pin::pin!(run(Job::Sync {
                    file: file.handle()
                }));
                let mut spins = 0u32;
                let done = loop {
                    if let Poll::Ready(done) = futures_poll_once(job.as_mut()).await {
                        break done;
                    }
                    // Spinning catches the hand-over at once; on a single CPU the thread
                    // needs the CPU back to do the job at all.
                    spins += 1;
                    if spins % 4096 == 0 {
                        std::thread::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
                };
                assert!(matches!(done, Done::Finished(Ok(()), None, None)));
                most = most.max(threads());
            }
            assert_eq!(most, 1);
        });
    }

    /// Runs all `futures` concurrently on this task and returns their outputs in order.
    async fn futures_join<F: std::future::Future>(
        futures: impl Iterator<Item = F>,
    ) -> Vec<F::Output> {
        let mut futures: Vec<_> = futures.map(|f| Some(Box::pin(f))).collect();
        let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
        poll_fn(|cx| {
            for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
                if let Some(f) = future {
                    if let Poll::Ready(value) = f.as_mut().poll(cx) {
                        *output = Some(value);
                        *future = None;
                    }
                }
            }
            if futures.iter().all(Option::is_none) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        outputs.into_iter().map(Option::unwrap).collect()
    }

    /// Polls `future` once.
    async fn futures_poll_once<F: std::future::Future>(
        mut future: std::pin::Pin<&mut F>,
    ) -> Poll<F::Output> {
        poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await
    }
}
