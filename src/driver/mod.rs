//! The driver interface: the one narrow seam between the server and the operating system.
//!
//! Everything the server does to sockets and files goes through `Driver`: accept, read into an
//! owned buffer, write, create a file, write a file from buffers, fsync, rename, remove. Each
//! operation takes its buffer by value and hands it back with the result (tokio-uring's
//! `BufResult` shape), because an io_uring operation owns its buffer until the kernel is done.
//! Two implementations exist: `uring` (tokio-uring) and `epoll` (a tokio current-thread runtime,
//! with blocking file work on tokio's blocking pool so it never stalls the shard). No module
//! outside this one names tokio-uring or tokio's network types.

pub mod epoll;
pub mod faulty;
pub mod uring;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::path::Path;

use bytes::BytesMut;

use crate::scan::Part;

/// A buffer and the result of the operation that used it.
pub type BufResult<T, B> = (io::Result<T>, B);

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
    /// Accepts one connection.
    async fn accept(listener: &Self::Listener) -> io::Result<(Self::Stream, SocketAddr)>;
    /// The socket's descriptor (for non-blocking peeks and socket options).
    fn stream_fd(stream: &Self::Stream) -> RawFd;
    /// Reads into the spare capacity of `buf` (after its length), extending its length.
    async fn read(stream: &Self::Stream, buf: BytesMut) -> BufResult<usize, BytesMut>;
    /// Writes all of `buf`.
    async fn write_all(stream: &Self::Stream, buf: Vec<u8>) -> BufResult<(), Vec<u8>>;
    /// Creates a new file (it must not exist yet) for writing.
    async fn create(path: &Path) -> io::Result<Self::File>;
    /// Opens a directory so that it can be fsync'd.
    fn open_dir(path: &Path) -> io::Result<Self::File>;
    /// Writes all of `buf` at `offset`.
    async fn write_vec_at(file: &Self::File, buf: Vec<u8>, offset: u64) -> BufResult<(), Vec<u8>>;
    /// Flushes the file's data and metadata to stable storage.
    async fn sync(file: &Self::File) -> io::Result<()>;
    /// Flushes a directory opened with `open_dir` (its entries: renames into it).
    async fn sync_dir(dir: &Self::File) -> io::Result<()> {
        Self::sync(dir).await
    }
    /// Closes the file, reporting any error.
    async fn close(file: Self::File) -> io::Result<()>;
    /// Renames `from` to `to` (atomically, same file system).
    async fn rename(from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    async fn remove(path: &Path) -> io::Result<()>;

    /// Writes message parts (ranges of `buf` offset by `base`, and constants) back to back at
    /// `offset`; returns the bytes written. Backends with vectored writes do it in one
    /// operation (a message body split by dot-unstuffing is many parts).
    async fn write_parts_at(
        file: &Self::File,
        buf: BytesMut,
        parts: &[Part],
        base: usize,
        offset: u64,
    ) -> BufResult<u64, BytesMut>;

    /// Creates a new file and writes `head` at its start, as one step for drivers that pay per
    /// operation (epoll's hand-off to a blocking thread). On error nothing is left at `path`.
    async fn create_with(path: &Path, head: Vec<u8>) -> BufResult<Self::File, Vec<u8>> {
        let file = match Self::create(path).await {
            Ok(file) => file,
            Err(e) => return (Err(e), head),
        };
        let (written, head) = Self::write_vec_at(&file, head, 0).await;
        match written {
            Ok(()) => (Ok(file), head),
            Err(e) => {
                let _ = Self::close(file).await;
                let _ = Self::remove(path).await;
                (Err(e), head)
            }
        }
    }

    /// Finishes a file written in place: fsync (when `sync`), close, rename `from` to `to`, as
    /// one step. On error the file is closed and nothing is left at `from` or `to`.
    async fn persist(file: Self::File, sync: bool, from: &Path, to: &Path) -> io::Result<()> {
        let synced = if sync {
            Self::sync(&file).await
        } else {
            Ok(())
        };
        let closed = Self::close(file).await;
        let renamed = match synced.and(closed) {
            Ok(()) => Self::rename(from, to).await,
            Err(e) => Err(e),
        };
        if renamed.is_err() {
            let _ = Self::remove(from).await;
        }
        renamed
    }
}

/// True when data is waiting on the socket (a non-blocking peek).
pub fn peer_has_sent(fd: RawFd) -> bool {
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
