//! File threads for the epoll driver: blocking file work (create, write, fsync, rename) runs on
//! threads of the shard's own so that one slow fsync never stalls the shard's connections, and
//! many run at once so that their fsyncs overlap.
//!
//! Handing work over allocates nothing once the shard is warm: jobs go through a bounded
//! channel whose slots exist from the start, each job's result comes back in a completion slot
//! taken from a per-shard pool, and the buffers a job carries (paths, the head, the part list)
//! come back with its result for reuse. Threads are started as the work needs them, up to
//! `MAX_THREADS`, and end with the shard.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use bytes::BytesMut;
use crossbeam_channel::{Receiver, Sender};

use super::reuse::{CPath, Handle};
use crate::scan::Part;

/// Most file threads a shard starts (the most file operations it has in flight at once).
pub const MAX_THREADS: usize = 64;
/// Jobs waiting for a thread before a submitter waits for room (the disk is then saturated).
const QUEUE: usize = 1024;
/// Completion slots kept for reuse.
const SLOTS_KEPT: usize = 4096;

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
    /// fsync the file when `sync`, then move `from` to `to` without replacing `to`; on an error
    /// other than `to` existing, `from` is removed.
    Persist {
        file: Arc<Handle>,
        sync: bool,
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
    threads: usize,
    /// Threads waiting for a job.
    idle: Arc<AtomicUsize>,
    free: Vec<Arc<Slot>>,
    /// Slots whose job's thread may still hold them (a result just delivered, or a task that
    /// stopped waiting): reusable once it let go.
    pending: Vec<Arc<Slot>>,
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
                threads: 0,
                idle: Arc::new(AtomicUsize::new(0)),
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

    /// Starts a thread when every waiting one already has a job queued for it and the limit
    /// allows.
    fn ensure_thread(&mut self) {
        if self.jobs.len() < self.idle.load(Ordering::Acquire) || self.threads >= MAX_THREADS {
            return;
        }
        let receiver = self.receiver.clone();
        let idle = Arc::clone(&self.idle);
        let started = std::thread::Builder::new()
            .name("ringmx-file".into())
            .spawn(move || work(receiver, idle));
        // Without a new thread the ones running take the job in turn.
        if started.is_ok() {
            self.threads += 1;
        }
    }
}

/// Runs `job` on a file thread and waits for its result.
pub async fn run(job: Job) -> Done {
    let (slot, jobs) = FILES.with(|files| {
        let mut files = files.borrow_mut();
        let files = files.as_mut().expect("file work outside a shard's runtime");
        files.ensure_thread();
        (
            files.slot(),
            (files.threads > 0).then(|| files.jobs.clone()),
        )
    });
    let Some(jobs) = jobs else {
        // No thread could be started (a resource limit): the shard does the work itself
        // rather than wait for ever.
        drop(Waiting(Some(slot)));
        return execute(job);
    };
    let _ = jobs.send((job, Arc::clone(&slot)));
    drop(jobs);
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

/// A file thread: takes jobs until the shard is gone.
fn work(receiver: Receiver<(Job, Arc<Slot>)>, idle: Arc<AtomicUsize>) {
    loop {
        idle.fetch_add(1, Ordering::AcqRel);
        let next = receiver.recv();
        idle.fetch_sub(1, Ordering::AcqRel);
        let Ok((job, slot)) = next else {
            return;
        };
        let done = execute(job);
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
            let synced = if sync { fsync(file.fd()) } else { Ok(()) };
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

fn check(result: libc::c_int) -> io::Result<()> {
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
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

fn write_parts(fd: RawFd, buf: &[u8], parts: &[Part], base: usize, offset: u64) -> io::Result<u64> {
    // SAFETY: the descriptor is kept open by the job's handle; `ManuallyDrop` leaves it open.
    let file = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
    let mut written = 0u64;
    for part in parts {
        let bytes = match part {
            Part::Input(r) => &buf[base + r.start..base + r.end],
            Part::Static(bytes) => bytes,
        };
        file.write_all_at(bytes, offset + written)?;
        written += bytes.len() as u64;
    }
    Ok(written)
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

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        let _files = Scope::enter();
        tokio::runtime::Builder::new_current_thread()
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
                sync: true,
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
