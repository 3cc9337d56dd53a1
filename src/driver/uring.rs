//! The io_uring driver, on tokio-uring: accepts, socket reads and file operations are ring
//! submissions that own their buffers until completion; a write to a socket is first offered
//! to it with a non-blocking send(2), and the ring takes what its send buffer cannot (see
//! `write_all`). tokio-uring has no active maintainer, which is why it is confined to this file.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::rc::Rc;

use bytes::BytesMut;
use io_uring::{opcode, types};

use super::reuse::{CPath, File};
use super::{writeback_errors, BufResult, Driver, FileSync};
use crate::scan::Part;

/// The io_uring backend.
pub struct Uring;

/// Checks that this process may create an io_uring (kernel support, `io_uring_disabled`,
/// seccomp), by building one.
pub fn probe(ring_entries: u32) -> io::Result<()> {
    runtime(ring_entries).map(drop)
}

/// Builds a shard's ring. Task work is run cooperatively, when the shard enters the kernel
/// anyway, instead of by interrupting it (IORING_SETUP_COOP_TASKRUN, Linux 5.19), and only the
/// shard's thread submits (IORING_SETUP_SINGLE_ISSUER, 6.0). Older kernels refuse these flags
/// with EINVAL; the ring is then built without them.
fn runtime(ring_entries: u32) -> io::Result<tokio_uring::Runtime> {
    let mut ring = tokio_uring::uring_builder();
    ring.setup_coop_taskrun().setup_single_issuer();
    let mut tuned = tokio_uring::builder();
    tuned.entries(ring_entries).uring_builder(&ring);
    match tokio_uring::Runtime::new(&tuned) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            tokio_uring::Runtime::new(tokio_uring::builder().entries(ring_entries))
        }
        built => built,
    }
}

/// Lets the kernel run up to `max` blocking file operations of this thread's rings at once
/// (IORING_REGISTER_IOWQ_MAX_WORKERS, Linux 5.15), as many as the epoll backend's file threads.
///
/// The kernel does an open with O_CREAT, an fsync and a rename on its io-wq workers, and by
/// default a thread gets at most min(its first ring's entries, four per CPU) of those: with two
/// CPUs and fifty connections in the middle of a durable 250, at most eight fsyncs wait on the
/// journal together, where the epoll backend has fifty, and a journal commit serves all fsyncs
/// waiting on it. The limit
/// belongs to the thread (one io-wq serves all of a thread's rings), and tokio-uring does not
/// expose its ring, so it is set through a one-entry ring of our own, dropped right after. On a
/// kernel without the call the default stays.
fn raise_file_workers(max: u32) {
    let raised = io_uring::IoUring::new(1)
        .and_then(|ring| ring.submitter().register_iowq_max_workers(&mut [max, 0]));
    if let Err(e) = raised {
        crate::log_debug!("io-wq worker limit left at the kernel's default: {e}");
    }
}

/// A connected socket that is shut down when dropped with an operation still in flight.
/// Ring reads and writes are IORING_OP_RECV and IORING_OP_SEND (the socket layer directly, not
/// the file read and write path), and each holds the socket (an `Rc`) until its completion, so
/// the descriptor is closed only once no operation holds it: never while a submission that
/// names it may still be waiting in the ring, where a reused number would name another
/// connection. A read (or a write to a peer that does not read) cancelled by a timeout or by
/// shutdown stays in the kernel until the peer sends, reads or closes: a silent peer would
/// keep the connection (and the descriptor) open for ever after our 421. shutdown(2) completes
/// such operations at once, so the descriptor is closed and the peer sees the close. A
/// connection that ends with nothing in flight (the usual end: QUIT, 221) is simply closed.
pub struct Stream {
    socket: Rc<tokio_uring::net::TcpStream>,
    /// Reads and writes started and not seen to complete.
    in_flight: Cell<u8>,
}

impl Stream {
    /// Runs `operation` on the socket, counted as in flight until it completes (a dropped
    /// operation stays counted).
    async fn counted<T>(&self, operation: impl Future<Output = T>) -> T {
        self.in_flight.set(self.in_flight.get() + 1);
        let done = operation.await;
        self.in_flight.set(self.in_flight.get() - 1);
        done
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if self.in_flight.get() > 0 {
            // SAFETY: shutdown(2) on the descriptor this stream still owns; it frees nothing.
            unsafe {
                libc::shutdown(self.socket.as_raw_fd(), libc::SHUT_RDWR);
            }
        }
    }
}

/// A file of this backend: the descriptor, and the head given to `create_with` until it goes
/// out as the first piece of the first write (one write, and one hand-off to the kernel's
/// workers, fewer per message), and whether everything written so far is known to be on disk
/// (the last write was a whole-file write with RWF_SYNC), so `persist` need not fsync again.
pub struct SpoolFile {
    file: File,
    /// The head not yet written (empty once written, and for a directory).
    head: Cell<Vec<u8>>,
    /// Every byte written is durable: the file's only write was made with RWF_SYNC.
    synced: Cell<bool>,
}

impl SpoolFile {
    fn new(file: File, head: Vec<u8>) -> SpoolFile {
        SpoolFile {
            file,
            head: Cell::new(head),
            synced: Cell::new(false),
        }
    }
}

thread_local! {
    /// Buffers for heads waiting to be written, reused.
    static HEADS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// Heads kept for reuse.
const HEADS_KEPT: usize = 1024;

/// A copy of `head` in a reused buffer.
fn copy_head(head: &[u8]) -> Vec<u8> {
    let mut copy = HEADS
        .with(|pool| pool.borrow_mut().pop())
        .unwrap_or_default();
    copy.extend_from_slice(head);
    copy
}

/// Gives a head buffer back for reuse.
fn reuse_head(mut head: Vec<u8>) {
    if head.capacity() > 0 {
        head.clear();
        HEADS.with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.len() < HEADS_KEPT {
                pool.push(head);
            }
        });
    }
}

/// Most pieces one vectored write takes (the kernel's IOV_MAX).
const IOV_MAX: usize = 1024;

thread_local! {
    /// iovec arrays for vectored writes, reused.
    static IOVECS: RefCell<Vec<Vec<libc::iovec>>> = const { RefCell::new(Vec::new()) };
}

/// Drops the first `n` bytes of `iovecs[*first..]` (what a short vectored write wrote),
/// advancing `first` past the pieces written whole.
fn consume(iovecs: &mut [libc::iovec], first: &mut usize, mut n: usize) {
    while *first < iovecs.len() && n > 0 {
        let iov = &mut iovecs[*first];
        if n >= iov.iov_len {
            n -= iov.iov_len;
            *first += 1;
        } else {
            // SAFETY: `n` < the piece's length, so the pointer stays inside it.
            iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(n) }.cast();
            iov.iov_len -= n;
            n = 0;
        }
    }
}

/// Turns a completion into its result and hands back what the operation owned.
struct Done<T>(PhantomData<fn() -> T>);

impl<T> tokio_uring::OneshotOutputTransform for Done<T> {
    type Output = (io::Result<u32>, T);
    type StoredData = T;

    fn transform_oneshot_output(self, data: T, cqe: io_uring::cqueue::Entry) -> Self::Output {
        let result = match cqe.result() {
            n if n >= 0 => Ok(n as u32),
            n => Err(io::Error::from_raw_os_error(-n)),
        };
        (result, data)
    }
}

/// Submits `entry`, whose pointers point into `data` (heap memory that does not move with
/// it), now; the future waits for its completion. `data` stays with the operation until the
/// kernel is done, even if the future is dropped. A plain function rather than an `async` one:
/// the caller's future holds the operation itself, with no layer to move it into.
fn submit<T: Unpin + 'static>(
    data: T,
    entry: io_uring::squeue::Entry,
) -> tokio_uring::InFlightOneshot<T, Done<T>> {
    tokio_uring::UnsubmittedOneshot::new(data, Done(PhantomData), entry).submit()
}

/// Writes `bytes[done..]` through the ring, one operation after another until all is
/// written or one fails; `entry` builds each operation from `holder` (what keeps the
/// descriptor open), the bytes left and how many are already written.
async fn write_rest<H: Unpin + 'static>(
    holder: H,
    bytes: Vec<u8>,
    mut done: usize,
    entry: impl Fn(&H, &[u8], usize) -> io_uring::squeue::Entry,
) -> BufResult<(), Vec<u8>> {
    let mut data = (holder, bytes);
    while done < data.1.len() {
        let op = entry(&data.0, &data.1[done..], done);
        let (result, back) = submit(data, op).await;
        data = back;
        match result {
            Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), data.1),
            Ok(n) => done += n as usize,
            Err(e) => return (Err(e), data.1),
        }
    }
    (Ok(()), data.1)
}

/// At most `u32::MAX` bytes of `rest`, the most one operation takes.
fn op_len(rest: &[u8]) -> u32 {
    rest.len().min(u32::MAX as usize) as u32
}

/// Writes all of `bytes` at `offset`.
async fn write_all_at(file: &File, bytes: Vec<u8>, offset: u64) -> BufResult<(), Vec<u8>> {
    write_rest(file.handle(), bytes, 0, |handle, rest, done| {
        opcode::Write::new(types::Fd(handle.fd()), rest.as_ptr(), op_len(rest))
            .offset(offset + done as u64)
            .build()
    })
    .await
}

/// fsync(2) through the ring.
async fn fsync(file: &File) -> io::Result<()> {
    let entry = opcode::Fsync::new(types::Fd(file.fd())).build();
    submit(file.handle(), entry).await.0.map(drop)
}

/// Closes a file through the ring (or leaves it to the operation still holding it).
async fn close(file: File) -> io::Result<()> {
    let Some(fd) = file.into_fd() else {
        return Ok(());
    };
    let entry = opcode::Close::new(types::Fd(fd.into_raw_fd())).build();
    submit((), entry).await.0.map(drop)
}

/// unlink(2) through the ring.
async fn remove(path: &Path) -> io::Result<()> {
    let path = CPath::new(path)?;
    let entry = opcode::UnlinkAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr()).build();
    let (result, path) = submit(path, entry).await;
    path.reuse();
    result.map(drop)
}

/// renameat2(RENAME_NOREPLACE) through the ring (IORING_OP_RENAMEAT with its flags).
async fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let paths = (CPath::new(from)?, CPath::new(to)?);
    let entry = opcode::RenameAt::new(
        types::Fd(libc::AT_FDCWD),
        paths.0.as_ptr(),
        types::Fd(libc::AT_FDCWD),
        paths.1.as_ptr(),
    )
    .flags(libc::RENAME_NOREPLACE)
    .build();
    let (result, (from, to)) = submit(paths, entry).await;
    from.reuse();
    to.reuse();
    result.map(drop)
}

impl Driver for Uring {
    type Listener = tokio_uring::net::TcpListener;
    type Stream = Stream;
    type File = SpoolFile;
    const NAME: &'static str = "uring";

    fn block_on<F: Future>(ring_entries: u32, future: F) -> io::Result<F::Output> {
        let runtime = runtime(ring_entries)?;
        raise_file_workers(super::files::MAX_THREADS as u32);
        Ok(runtime.block_on(future))
    }

    fn spawn<F: Future<Output = ()> + 'static>(future: F) {
        tokio_uring::spawn(future);
    }

    fn listener(listener: std::net::TcpListener) -> io::Result<Self::Listener> {
        Ok(tokio_uring::net::TcpListener::from_std(listener))
    }

    async fn accept(listener: &Self::Listener) -> io::Result<(Self::Stream, SocketAddr)> {
        // TCP_NODELAY comes from the listener (see `Driver::accept`).
        let (socket, peer) = listener.accept().await?;
        let stream = Stream {
            socket: Rc::new(socket),
            in_flight: Cell::new(0),
        };
        Ok((stream, peer))
    }

    fn shutdown_listener(listener: &Self::Listener) {
        super::shutdown_fd(listener.as_raw_fd());
    }

    fn peer_has_sent(stream: &Self::Stream) -> bool {
        super::peek_fd(stream.socket.as_raw_fd())
    }

    async fn read(stream: &Self::Stream, mut buf: BytesMut) -> BufResult<usize, BytesMut> {
        let (len, cap) = (buf.len(), buf.capacity());
        if len == cap {
            buf.reserve(1);
        }
        let cap = cap.max(buf.capacity());
        let spare = buf.spare_capacity_mut();
        let entry = opcode::Recv::new(
            types::Fd(stream.socket.as_raw_fd()),
            spare.as_mut_ptr().cast(),
            (cap - len).min(u32::MAX as usize) as u32,
        )
        .build();
        // Counted in flight as `counted` does, written out: the read is the one operation of
        // every message, and a wrapping future would be one more layer to move and poll.
        stream.in_flight.set(stream.in_flight.get() + 1);
        let (result, (_, mut buf)) = submit((Rc::clone(&stream.socket), buf), entry).await;
        stream.in_flight.set(stream.in_flight.get() - 1);
        match result {
            Ok(n) => {
                // SAFETY: the kernel wrote `n` bytes into the spare capacity after `len`.
                unsafe { buf.set_len(len + n as usize) };
                (Ok(n as usize), buf)
            }
            Err(e) => (Err(e), buf),
        }
    }

    fn try_write(stream: &Self::Stream, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: the buffer is `buf.len()` valid bytes, and the descriptor is this stream's
        // open socket; send(2) only reads them.
        let sent = unsafe {
            libc::send(
                stream.socket.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(sent as usize)
    }

    async fn write_all(stream: &Self::Stream, buf: Vec<u8>) -> BufResult<(), Vec<u8>> {
        // Offered to the socket first: a reply almost always fits its send buffer, and a
        // non-blocking send(2) then finishes the write with no ring operation, completion and
        // task wake-up for it. What does not fit goes through the ring, which waits for room.
        let mut done = 0usize;
        match Self::try_write(stream, &buf) {
            Ok(sent) if sent == buf.len() => return (Ok(()), buf),
            Ok(sent) => done = sent,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return (Err(e), buf),
        }
        let socket = Rc::clone(&stream.socket);
        let rest = write_rest(socket, buf, done, |socket, rest, _| {
            opcode::Send::new(types::Fd(socket.as_raw_fd()), rest.as_ptr(), op_len(rest))
                .flags(libc::MSG_NOSIGNAL)
                .build()
        });
        stream.counted(rest).await
    }

    fn open_dir(path: &Path) -> io::Result<Self::File> {
        let dir = File::new(std::fs::File::open(path)?.into());
        Ok(SpoolFile::new(dir, Vec::new()))
    }

    async fn create_with(path: &Path, head: Vec<u8>) -> BufResult<Self::File, Vec<u8>> {
        let path = match CPath::new(path) {
            Ok(path) => path,
            Err(e) => return (Err(e), head),
        };
        let entry = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr())
            .flags(libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC)
            .mode(0o666)
            .build();
        let (opened, path) = submit(path, entry).await;
        let file = match opened {
            // SAFETY: the kernel returned a new descriptor that nothing else owns.
            Ok(fd) => File::new(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }),
            Err(e) => {
                path.reuse();
                return (Err(e), head);
            }
        };
        path.reuse();
        // The head goes out with the first write (or with `persist`, if no write comes).
        (Ok(SpoolFile::new(file, copy_head(&head))), head)
    }

    async fn write_parts_at(
        file: &Self::File,
        buf: BytesMut,
        parts: &[Part],
        base: usize,
        offset: u64,
        sync: bool,
    ) -> BufResult<u64, BytesMut> {
        // A head still waiting goes first, at the file's start: the caller's offset counts it.
        let head = file.head.take();
        if !head.is_empty() && offset != head.len() as u64 {
            reuse_head(head);
            file.synced.set(false);
            let wrong = io::Error::new(io::ErrorKind::InvalidInput, "first write not after head");
            return (Err(wrong), buf);
        }
        let start = offset - head.len() as u64;
        // The file's first write that is also its last, and fits one vectored write: written
        // with RWF_SYNC (an fsync of the range written, here the whole file, made by the same
        // kernel worker right after the write), it leaves nothing for `persist` to fsync. If
        // the write comes back short, what is left goes without the flag and `persist` fsyncs:
        // one fsync per message either way.
        let mut sync = sync && !head.is_empty() && parts.len() < IOV_MAX;
        let iovecs = IOVECS
            .with(|pool| pool.borrow_mut().pop())
            .unwrap_or_default();
        let mut data = (file.file.handle(), buf, iovecs, head);
        let mut written = 0u64;
        let mut result = Ok(());
        let mut head_taken = false;
        let mut next = 0;
        'batches: loop {
            let (_, buf, iovecs, head) = &mut data;
            iovecs.clear();
            if !head_taken {
                head_taken = true;
                if !head.is_empty() {
                    iovecs.push(libc::iovec {
                        iov_base: head.as_ptr().cast_mut().cast(),
                        iov_len: head.len(),
                    });
                }
            }
            while next < parts.len() && iovecs.len() < IOV_MAX {
                let bytes: &[u8] = match &parts[next] {
                    Part::Input(r) => &buf[base + r.start..base + r.end],
                    Part::Static(bytes) => bytes,
                };
                next += 1;
                if !bytes.is_empty() {
                    iovecs.push(libc::iovec {
                        iov_base: bytes.as_ptr().cast_mut().cast(),
                        iov_len: bytes.len(),
                    });
                }
            }
            if iovecs.is_empty() {
                break;
            }
            // A short write (a full disk) leaves the rest to write again: drop what was
            // written and go on, until all is written or the kernel reports an error.
            let mut first = 0;
            while first < data.2.len() {
                let rest = &data.2[first..];
                let entry =
                    opcode::Writev::new(types::Fd(data.0.fd()), rest.as_ptr(), rest.len() as u32)
                        .offset(start + written)
                        .rw_flags(if sync { libc::RWF_SYNC } else { 0 })
                        .build();
                // The iovecs point into the receive buffer's and the head's heap memory and
                // at constants; all stay where they are while `data` moves into the operation.
                let (done, back) = submit(data, entry).await;
                data = back;
                match done {
                    Ok(0) => {
                        result = Err(io::ErrorKind::WriteZero.into());
                        break 'batches;
                    }
                    Ok(n) => {
                        written += u64::from(n);
                        consume(&mut data.2, &mut first, n as usize);
                        if first < data.2.len() {
                            sync = false;
                        }
                    }
                    Err(e) => {
                        result = Err(e);
                        break 'batches;
                    }
                }
            }
        }
        let (_, buf, mut iovecs, head) = data;
        let head_len = head.len() as u64;
        reuse_head(head);
        // Pointers into the buffers must not outlive this write.
        iovecs.clear();
        IOVECS.with(|pool| pool.borrow_mut().push(iovecs));
        file.synced.set(sync && result.is_ok());
        (result.map(|()| written - head_len), buf)
    }

    async fn persist(file: Self::File, sync: FileSync, from: &Path, to: &Path) -> io::Result<()> {
        // A message with no body still has its head to write. Written here, it came after any
        // syncfs the caller waited for, so it needs an fsync of its own.
        let head = file.head.take();
        let mut written = Ok(());
        let mut sync = sync;
        if !head.is_empty() {
            let (done, head) = write_all_at(&file.file, head, 0).await;
            reuse_head(head);
            written = done;
            if sync == FileSync::Check {
                sync = FileSync::Fsync;
            }
        }
        let synced = match (written, sync) {
            (Ok(()), FileSync::Fsync) if !file.synced.get() => fsync(&file.file).await,
            (Ok(()), FileSync::Check) => writeback_errors(file.file.fd()),
            (done, _) => done,
        };
        let closed = close(file.file).await;
        let renamed = match synced.and(closed) {
            Ok(()) => rename_noreplace(from, to).await,
            Err(e) => Err(e),
        };
        if matches!(&renamed, Err(e) if e.kind() != io::ErrorKind::AlreadyExists) {
            let _ = remove(from).await;
        }
        renamed
    }

    fn synced(file: &Self::File) -> bool {
        file.synced.get()
    }

    async fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
        rename_noreplace(from, to).await
    }

    async fn sync_dir(dir: &Self::File) -> io::Result<()> {
        fsync(&dir.file).await
    }

    async fn close(file: Self::File) -> io::Result<()> {
        reuse_head(file.head.take());
        close(file.file).await
    }

    async fn remove(path: &Path) -> io::Result<()> {
        remove(path).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::tests::persist_on_pipe;

    /// The thread's io-wq limits for blocking work (bounded, unbounded), read back through a
    /// ring of its own: the call with zeros changes nothing and answers the limits in force.
    fn file_worker_limits() -> io::Result<[u32; 2]> {
        let mut limits = [0, 0];
        io_uring::IoUring::new(1)?
            .submitter()
            .register_iowq_max_workers(&mut limits)?;
        Ok(limits)
    }

    #[test]
    fn a_shard_may_run_as_many_blocking_file_operations_as_epoll_has_file_threads() {
        // The kernel's default is min(ring entries, four per CPU): 8 with an 8-entry ring on any
        // machine, raised on the shard's thread.
        let limits = Uring::block_on(8, async { file_worker_limits() })
            .unwrap()
            .expect("IORING_REGISTER_IOWQ_MAX_WORKERS (Linux 5.15)");
        assert_eq!(limits[0], crate::driver::files::MAX_THREADS as u32);
    }

    /// Creates `name` in `dir` with `head`, writes `writes` (each a list of parts of one
    /// buffer, and whether it is the last, synced write), persists it into `done`, and
    /// returns the file's bytes and whether `persist` found the file already synced.
    fn round_trip(head: &[u8], writes: &[(Vec<&'static [u8]>, bool)]) -> (Vec<u8>, bool) {
        let dir = tempfile::tempdir().unwrap();
        let (tmp, new) = (dir.path().join("tmp-file"), dir.path().join("new-file"));
        let writes = writes.to_vec();
        let head = head.to_vec();
        let synced = Uring::block_on(64, async move {
            let (file, head) = Uring::create_with(&tmp, head).await;
            let file = file.unwrap();
            let mut offset = head.len() as u64;
            for (pieces, sync) in writes {
                let parts: Vec<Part> = pieces.iter().map(|p| Part::Static(p)).collect();
                let (written, _) =
                    Uring::write_parts_at(&file, BytesMut::new(), &parts, 0, offset, sync).await;
                let len: usize = pieces.iter().map(|p| p.len()).sum();
                assert_eq!(written.unwrap(), len as u64);
                offset += len as u64;
            }
            let synced = file.synced.get();
            Uring::persist(file, FileSync::Fsync, &tmp, &new)
                .await
                .unwrap();
            synced
        })
        .unwrap();
        (std::fs::read(dir.path().join("new-file")).unwrap(), synced)
    }

    /// `persist` syncs as it is told: Skip syncs nothing, Fsync fsyncs, Check only collects
    /// write-back errors (sync_file_range), unless the head is still unwritten: then it fsyncs.
    #[test]
    fn persist_syncs_as_it_is_told() {
        let run = |sync, head: &[u8]| {
            persist_on_pipe::<Uring>(sync, head, |fd, head| SpoolFile::new(File::new(fd), head))
        };
        let errno =
            |(result, _): (io::Result<()>, bool)| result.err().and_then(|e| e.raw_os_error());
        let (skipped, moved) = run(FileSync::Skip, b"");
        assert!(skipped.is_ok() && moved, "{skipped:?}");
        assert_eq!(errno(run(FileSync::Fsync, b"")), Some(libc::EINVAL));
        assert_eq!(errno(run(FileSync::Check, b"")), Some(libc::ESPIPE));
        assert_eq!(errno(run(FileSync::Check, b"Head\r\n")), Some(libc::EINVAL));
    }

    #[test]
    fn the_head_goes_out_with_the_first_write_and_a_last_first_write_is_synced() {
        // One write that ends the message: head and body in one synced write.
        let (bytes, synced) = round_trip(b"Head: 1\r\n", &[(vec![b"body\r\n"], true)]);
        assert_eq!(bytes, b"Head: 1\r\nbody\r\n");
        assert!(synced);
        // The same write, not the last: persist fsyncs.
        let (bytes, synced) = round_trip(b"Head: 1\r\n", &[(vec![b"body\r\n"], false)]);
        assert_eq!(bytes, b"Head: 1\r\nbody\r\n");
        assert!(!synced);
        // Two writes: the last one alone does not cover the head, so persist fsyncs.
        let (bytes, synced) = round_trip(
            b"H\r\n",
            &[(vec![b"a", b"b"], false), (vec![b"c\r\n"], true)],
        );
        assert_eq!(bytes, b"H\r\nabc\r\n");
        assert!(!synced);
        // No body: persist writes the head itself.
        let (bytes, synced) = round_trip(b"Head: only\r\n", &[]);
        assert_eq!(bytes, b"Head: only\r\n");
        assert!(!synced);
    }

    #[test]
    fn a_first_write_that_does_not_follow_the_head_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        Uring::block_on(8, async move {
            let (file, _) = Uring::create_with(&path, b"Head\r\n".to_vec()).await;
            let file = file.unwrap();
            let parts = [Part::Static(b"body")];
            let (wrote, _) =
                Uring::write_parts_at(&file, BytesMut::new(), &parts, 0, 0, true).await;
            assert_eq!(wrote.unwrap_err().kind(), io::ErrorKind::InvalidInput);
            assert!(!Uring::synced(&file));
            Uring::close(file).await.unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), b"", "nothing was written");
        })
        .unwrap();
    }

    #[test]
    fn a_head_and_more_parts_than_one_vectored_write_takes_all_arrive_in_order() {
        const DIGITS: [&[u8]; 10] = [b"0", b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"8", b"9"];
        let pieces: Vec<&'static [u8]> = (0..IOV_MAX * 2 + 5).map(|i| DIGITS[i % 10]).collect();
        let mut want = b"Head\r\n".to_vec();
        want.extend(pieces.iter().flat_map(|p| p.iter()));
        let (bytes, synced) = round_trip(b"Head\r\n", &[(pieces, true)]);
        assert_eq!(bytes, want);
        assert!(
            !synced,
            "several writes: one fsync in persist, not one per write"
        );
        // The most parts that still fit one write with the head.
        let pieces: Vec<&'static [u8]> = (0..IOV_MAX - 1).map(|i| DIGITS[i % 10]).collect();
        let (_, synced) = round_trip(b"Head\r\n", &[(pieces, true)]);
        assert!(synced);
    }

    /// The bytes left in `iovecs[first..]`, concatenated.
    fn left(iovecs: &[libc::iovec], first: usize) -> Vec<u8> {
        iovecs[first..]
            .iter()
            // SAFETY: every iovec points into `ALL`, a constant, within its bounds.
            .flat_map(|v| {
                unsafe { std::slice::from_raw_parts(v.iov_base.cast::<u8>(), v.iov_len) }.to_vec()
            })
            .collect()
    }

    #[test]
    fn consume_drops_exactly_what_a_short_write_wrote() {
        const ALL: &[u8] = b"0123456789";
        let make = || {
            [0..4, 4..6, 6..10].map(|r: std::ops::Range<usize>| libc::iovec {
                iov_base: ALL[r.clone()].as_ptr().cast_mut().cast(),
                iov_len: r.len(),
            })
        };
        for n in 0..=ALL.len() {
            let mut iovecs = make();
            let mut first = 0;
            consume(&mut iovecs, &mut first, n);
            assert_eq!(left(&iovecs, first), ALL[n..], "n = {n}");
            assert!(iovecs[first..].iter().all(|v| v.iov_len > 0), "n = {n}");
        }
    }
}
