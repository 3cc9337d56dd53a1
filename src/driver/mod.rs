//! The driver interface: the one narrow seam between the server and the operating system.
//!
//! Everything the server does to sockets and files goes through `Driver`: accept, read into an
//! owned buffer, write, peek, shut down a listener, create a file with its head, write a file
//! from buffers, persist it (fsync, close, move without replacing), fsync a directory, syncfs a
//! file system, remove. Each
//! operation takes its buffer by value and hands it back with the result (tokio-uring's
//! `BufResult` shape), because an io_uring operation owns its buffer until the kernel is done.
//! Two implementations exist: `uring` (tokio-uring) and `epoll` (a tokio current-thread runtime,
//! with blocking file work on file threads of the shard's own so it never stalls the shard). No module
//! outside this one names tokio-uring or tokio's network types.

pub mod epoll;
pub mod faulty;
mod files;
pub mod reuse;
pub mod uring;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::Arc;

use bytes::BytesMut;

use crate::scan::Part;

/// A buffer and the result of the operation that used it.
pub type BufResult<T, B> = (io::Result<T>, B);

/// How `persist` makes a file's bytes durable before it moves the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileSync {
    /// Not at all (fsync is off).
    Skip,
    /// fsync the file, unless its last write already made it durable.
    Fsync,
    /// A `syncfs` of the file's file system that began after its last write has succeeded
    /// (`Driver::sync_fs`): what is left is to collect the file's own write-back errors, which
    /// the kernel reports on the file, not to every `syncfs` caller. A driver that still holds
    /// bytes of the file (io_uring: the head of a message with no body) writes and fsyncs them.
    Check,
}

/// One shard's I/O runtime and operations. All methods run on the shard's own thread.
#[allow(async_fn_in_trait)]
pub trait Driver: Sized + 'static {
    /// A listening socket.
    type Listener;
    /// A connected socket.
    type Stream;
    /// An open file (a spool file, or the spool directory for fsync).
    type File;
    /// The backend's name in logs and results.
    const NAME: &'static str;

    /// Runs `future` to completion on a new runtime for this thread; spawned tasks run with it.
    fn block_on<F: Future>(ring_entries: u32, future: F) -> io::Result<F::Output>;
    /// Spawns a task on the current shard's runtime.
    fn spawn<F: Future<Output = ()> + 'static>(future: F);
    /// Wraps a bound, listening, non-blocking socket built by the caller.
    fn listener(listener: std::net::TcpListener) -> io::Result<Self::Listener>;
    /// Accepts one connection. Its socket has TCP_NODELAY (replies are whole and flushed on
    /// purpose; Nagle would hold them for an ACK) because the listener has it and Linux copies
    /// a listener's TCP options to the connections it accepts: no setsockopt per connection.
    async fn accept(listener: &Self::Listener) -> io::Result<(Self::Stream, SocketAddr)>;
    /// Shuts a listener down (shutdown(2)): an accept in flight ends, and no connection is
    /// taken any more. The descriptor stays open until the listener is dropped.
    fn shutdown_listener(listener: &Self::Listener);
    /// True when the peer has sent something not yet read (a non-blocking peek).
    fn peer_has_sent(stream: &Self::Stream) -> bool;
    /// Reads into the spare capacity of `buf` (after its length), extending its length.
    async fn read(stream: &Self::Stream, buf: BytesMut) -> BufResult<usize, BytesMut>;
    /// Writes what the socket takes now without waiting (a non-blocking send): the number of
    /// bytes written, or `WouldBlock` when it takes none. A reply almost always fits the send
    /// buffer, so the connection loop offers it here first and needs no write in flight.
    fn try_write(stream: &Self::Stream, buf: &[u8]) -> io::Result<usize>;
    /// Writes all of `buf`.
    async fn write_all(stream: &Self::Stream, buf: Vec<u8>) -> BufResult<(), Vec<u8>>;
    /// Opens a directory so that it can be fsync'd.
    fn open_dir(path: &Path) -> io::Result<Self::File>;
    /// Creates a new file (it must not exist yet) that starts with `head`, as one step for
    /// drivers that pay per operation (epoll's hand-off to a blocking thread). A driver may
    /// instead keep the head and write it with the first `write_parts_at` (io_uring: one write
    /// fewer); either way it is in the file once `persist` returns (and durable when `persist`
    /// was asked to fsync). On error nothing is left at `path`.
    async fn create_with(path: &Path, head: Vec<u8>) -> BufResult<Self::File, Vec<u8>>;
    /// Writes message parts (ranges of `buf` offset by `base`, and constants) back to back at
    /// `offset`; returns the bytes written. Backends with vectored writes do it in one
    /// operation (a message body split by dot-unstuffing is many parts). `sync`: these are the
    /// file's last bytes, and `persist` will be asked to fsync it; a driver may make the whole
    /// file durable with this write, so that `persist` has no fsync left to do.
    async fn write_parts_at(
        file: &Self::File,
        buf: BytesMut,
        parts: &[Part],
        base: usize,
        offset: u64,
        sync: bool,
    ) -> BufResult<u64, BytesMut>;
    /// Finishes a file written in place: makes it durable as `sync` says, closes it, then moves
    /// `from` to `to` without ever replacing an existing `to` (renameat2 RENAME_NOREPLACE), as
    /// one step. If `to` exists the error is `AlreadyExists` and `from` is kept (closed) for
    /// another name; on any other error nothing is left at `from` or `to`.
    async fn persist(file: Self::File, sync: FileSync, from: &Path, to: &Path) -> io::Result<()>;
    /// True when the last `write_parts_at` (asked to `sync`) made the whole file durable, so
    /// that `persist` has no fsync left to do.
    fn synced(_file: &Self::File) -> bool {
        false
    }
    /// Moves `from` to `to` unless `to` exists (`AlreadyExists`); `from` is kept on error.
    async fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()>;
    /// Flushes a directory opened with `open_dir` (its entries: renames into it).
    async fn sync_dir(dir: &Self::File) -> io::Result<()>;
    /// `syncfs(2)` of the file system that holds `fs` (any descriptor on it): every write,
    /// create and rename on it made before the call is durable when it returns `Ok`. No ring
    /// has it, so it runs on a blocking thread of the runtime's, one call at a time per process
    /// (the callers share it: see `maildir::SharedSync`).
    async fn sync_fs(fs: &Arc<OwnedFd>) -> io::Result<()> {
        let fs = Arc::clone(fs);
        let synced = move || {
            float_thread();
            // SAFETY: syncfs(2) on a descriptor the Arc keeps open for the call.
            check(unsafe { libc::syncfs(fs.as_raw_fd()) })
        };
        match tokio::task::spawn_blocking(synced).await {
            Ok(result) => result,
            Err(e) => Err(io::Error::other(e)),
        }
    }
    /// Closes the file, reporting any error.
    async fn close(file: Self::File) -> io::Result<()>;
    /// Removes a file.
    async fn remove(path: &Path) -> io::Result<()>;
}

/// Lets the calling thread run on every CPU the process may use (`process_cpus`), once per
/// thread. Threads a pinned shard starts (`RINGMX_PIN`), a runtime's blocking threads and the
/// epoll backend's file threads, inherit its one CPU, where their file work (a syncfs's
/// write-back, every create, write and fsync) would compete with the shard's own.
pub(crate) fn float_thread() {
    thread_local!(static FLOATING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
    if FLOATING.get() {
        return;
    }
    let floating = process_cpus().is_some_and(|set| {
        // SAFETY: sched_setaffinity(2) of the calling thread reads only `set`, of the size
        // given.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0 }
    });
    FLOATING.set(floating);
}

/// The CPUs of the thread that started the server, recorded before any shard pins itself.
static PROCESS_CPUS: std::sync::OnceLock<libc::cpu_set_t> = std::sync::OnceLock::new();

/// Records the calling thread's CPUs as the ones threads of pinned shards float onto (the
/// server calls it as it starts, before pinning anything; the first call counts).
pub fn remember_process_cpus() {
    if let Some(set) = thread_cpus(0) {
        let _ = PROCESS_CPUS.set(set);
    }
}

/// The CPUs the process may use: those recorded by `remember_process_cpus`, else the main
/// thread's.
pub(crate) fn process_cpus() -> Option<libc::cpu_set_t> {
    PROCESS_CPUS.get().copied().or_else(|| {
        // SAFETY: getpid(2) has no preconditions.
        thread_cpus(unsafe { libc::getpid() })
    })
}

/// The CPUs of thread `tid` (0: the calling thread).
fn thread_cpus(tid: libc::pid_t) -> Option<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain bits, valid zeroed; sched_getaffinity(2) writes only `set`,
    // of the size given.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let size = std::mem::size_of::<libc::cpu_set_t>();
        (libc::sched_getaffinity(tid, size, &mut set) == 0).then_some(set)
    }
}

/// A libc return value as a result (anything but 0: the thread's errno).
pub(crate) fn check(result: libc::c_int) -> io::Result<()> {
    if result != 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The write-back errors of an open file since it was opened, once a `syncfs` that began after
/// its last write has succeeded. `sync_file_range(2)` with only `SYNC_FILE_RANGE_WAIT_AFTER`
/// waits for write-back in flight on the file (there is none left: `syncfs` waited for it) and
/// reports the file's own error sequence (`file_fdatawait_range`), so it neither writes nor
/// blocks. `syncfs` alone is not enough: it reports an error once per descriptor, so a write-back
/// of this file that failed while an earlier `syncfs` ran would be told to that one only.
pub(crate) fn writeback_errors(fd: RawFd) -> io::Result<()> {
    // SAFETY: sync_file_range(2) on a descriptor the caller keeps open for the call; it only
    // reads the kernel's state of the file.
    check(unsafe { libc::sync_file_range(fd, 0, 0, libc::SYNC_FILE_RANGE_WAIT_AFTER) })
}

/// shutdown(2) of both directions on a socket descriptor the caller keeps open.
pub(crate) fn shutdown_fd(fd: RawFd) {
    // SAFETY: shutdown(2) on a descriptor the caller owns and keeps open for the call; it
    // frees nothing.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

/// True when data is waiting on the socket (a non-blocking peek).
pub(crate) fn peek_fd(fd: RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: `fd` is an open socket owned by the caller for the duration of the call, and the
    // buffer is one valid, writable byte.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n > 0
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `persist` on a pipe, for the backends' tests: a pipe tells the ways of syncing apart, as
    /// fsync(2) of a pipe fails with EINVAL and sync_file_range(2) with ESPIPE. `from` is a real
    /// file, so a persist that syncs nothing moves it to `to`. Returns persist's result and
    /// whether the file moved.
    pub(crate) fn persist_on_pipe<D: Driver>(
        sync: FileSync,
        head: &[u8],
        wrap: impl FnOnce(OwnedFd, Vec<u8>) -> D::File + 'static,
    ) -> (io::Result<()>, bool) {
        use std::os::fd::FromRawFd;
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("from"), dir.path().join("to"));
        std::fs::write(&from, b"x").unwrap();
        let mut fds = [0; 2];
        // SAFETY: pipe2(2) writes two descriptors into the array, each then owned once.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both descriptors were just opened by pipe2 and are owned by nothing else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let head = head.to_vec();
        let (from2, to2) = (from.clone(), to.clone());
        let result = D::block_on(8, async move {
            let file = wrap(write, head);
            D::persist(file, sync, &from2, &to2).await
        })
        .unwrap();
        drop(read);
        (result, to.exists())
    }

    /// The calling thread's CPUs, as a list.
    fn cpus_of_this_thread() -> Vec<usize> {
        // SAFETY: as in `process_cpus`, for the calling thread.
        let set = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            assert_eq!(
                libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set),
                0
            );
            set
        };
        (0..libc::CPU_SETSIZE as usize)
            // SAFETY: reads one bit of a set it owns, `cpu` within its size.
            .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
            .collect()
    }

    /// A thread started by a pinned shard floats back onto every CPU of the process.
    #[test]
    fn a_thread_of_a_pinned_shard_floats_onto_the_process_cpus() {
        let all = std::thread::spawn(cpus_of_this_thread).join().unwrap();
        if all.len() < 2 {
            println!("one CPU: floating cannot be told from pinning here");
            return;
        }
        let first = all[0];
        let (pinned, floated) = std::thread::spawn(move || {
            // SAFETY: plain bits, then sched_setaffinity(2) of this thread with one CPU it may
            // use.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(first, &mut set);
                assert_eq!(
                    libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
                    0
                );
            }
            // What the shard's own threads start with, then what floating gives them.
            std::thread::spawn(|| {
                let pinned = cpus_of_this_thread();
                float_thread();
                (pinned, cpus_of_this_thread())
            })
            .join()
            .unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(pinned, vec![first]);
        assert_eq!(floated, all);
    }
}
