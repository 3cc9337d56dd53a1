//! The io_uring driver, on tokio-uring: every socket and file operation is a ring submission
//! that owns its buffer until completion. tokio-uring has no active maintainer, which is why
//! it is confined to this file.

use std::ffi::CString;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::rc::Rc;

use bytes::BytesMut;
use tokio_uring::buf::BoundedBuf;

use super::{BufResult, Driver};
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

/// A connected socket that is shut down when dropped. tokio-uring closes a descriptor only
/// once no operation holds it, and a read cancelled by a timeout or by shutdown stays in the
/// kernel until the peer sends or closes: a silent peer would keep the connection (and the
/// descriptor) open for ever after our 421. shutdown(2) completes such operations at once, so
/// the descriptor is closed and the peer sees the close.
pub struct Stream(tokio_uring::net::TcpStream);

impl Drop for Stream {
    fn drop(&mut self) {
        // SAFETY: shutdown(2) on the descriptor this stream still owns; it frees nothing.
        unsafe {
            libc::shutdown(self.0.as_raw_fd(), libc::SHUT_RDWR);
        }
    }
}

/// Most pieces one vectored write takes (the kernel's IOV_MAX).
const IOV_MAX: usize = 1024;

/// One piece of a vectored file write: a range of a receive buffer shared by all the pieces of
/// the write (so the buffer is not copied), or a constant.
enum Piece {
    Shared(Rc<BytesMut>, Range<usize>),
    Static(&'static [u8]),
}

impl Piece {
    /// The piece's bytes.
    fn bytes(&self) -> &[u8] {
        match self {
            Piece::Shared(buf, range) => &buf[range.clone()],
            Piece::Static(bytes) => bytes,
        }
    }
}

// SAFETY: the bytes a piece points to live as long as the piece (its `Rc` keeps the buffer
// alive and nobody can mutate a buffer that is shared), and they are all initialised.
unsafe impl tokio_uring::buf::IoBuf for Piece {
    fn stable_ptr(&self) -> *const u8 {
        self.bytes().as_ptr()
    }

    fn bytes_init(&self) -> usize {
        self.bytes().len()
    }

    fn bytes_total(&self) -> usize {
        self.bytes().len()
    }
}

/// Drops the first `n` bytes of `pieces` (the part a short vectored write did write).
fn consume(pieces: &mut Vec<Piece>, mut n: usize) {
    let mut whole = 0;
    for piece in pieces.iter_mut() {
        let len = piece.bytes().len();
        if n >= len {
            n -= len;
            whole += 1;
            continue;
        }
        match piece {
            Piece::Shared(_, range) => range.start += n,
            Piece::Static(bytes) => *bytes = &bytes[n..],
        }
        break;
    }
    pieces.drain(..whole);
}

impl Driver for Uring {
    type Listener = tokio_uring::net::TcpListener;
    type Stream = Stream;
    type File = tokio_uring::fs::File;
    const NAME: &'static str = "uring";

    fn block_on<F: Future>(ring_entries: u32, future: F) -> io::Result<F::Output> {
        Ok(runtime(ring_entries)?.block_on(future))
    }

    fn spawn<F: Future<Output = ()> + 'static>(future: F) {
        tokio_uring::spawn(future);
    }

    fn listener(listener: std::net::TcpListener) -> io::Result<Self::Listener> {
        Ok(tokio_uring::net::TcpListener::from_std(listener))
    }

    async fn accept(listener: &Self::Listener) -> io::Result<(Self::Stream, SocketAddr)> {
        let (stream, peer) = listener.accept().await?;
        // Replies are whole and flushed on purpose; Nagle would hold them for an ACK.
        stream.set_nodelay(true)?;
        Ok((Stream(stream), peer))
    }

    fn shutdown_listener(listener: &Self::Listener) {
        super::shutdown_fd(listener.as_raw_fd());
    }

    fn peer_has_sent(stream: &Self::Stream) -> bool {
        super::peek_fd(stream.0.as_raw_fd())
    }

    async fn read(stream: &Self::Stream, mut buf: BytesMut) -> BufResult<usize, BytesMut> {
        let (len, cap) = (buf.len(), buf.capacity());
        if len == cap {
            buf.reserve(1);
        }
        let cap = cap.max(buf.capacity());
        let (result, slice) = stream.0.read(buf.slice(len..cap)).await;
        (result, slice.into_inner())
    }

    async fn write_all(stream: &Self::Stream, buf: Vec<u8>) -> BufResult<(), Vec<u8>> {
        stream.0.write_all(buf).await
    }

    fn open_dir(path: &Path) -> io::Result<Self::File> {
        Ok(tokio_uring::fs::File::from_std(std::fs::File::open(path)?))
    }

    async fn create_with(path: &Path, head: Vec<u8>) -> BufResult<Self::File, Vec<u8>> {
        let created = tokio_uring::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .await;
        let file = match created {
            Ok(file) => file,
            Err(e) => return (Err(e), head),
        };
        let (written, head) = file.write_all_at(head, 0).await;
        match written {
            Ok(()) => (Ok(file), head),
            Err(e) => {
                let _ = file.close().await;
                let _ = tokio_uring::fs::remove_file(path).await;
                (Err(e), head)
            }
        }
    }

    async fn write_parts_at(
        file: &Self::File,
        buf: BytesMut,
        parts: &[Part],
        base: usize,
        offset: u64,
    ) -> BufResult<u64, BytesMut> {
        let shared = Rc::new(buf);
        let mut written = 0u64;
        let mut result = Ok(());
        for chunk in parts.chunks(IOV_MAX) {
            let mut pieces: Vec<Piece> = chunk
                .iter()
                .map(|part| match part {
                    Part::Input(r) => {
                        Piece::Shared(Rc::clone(&shared), base + r.start..base + r.end)
                    }
                    Part::Static(bytes) => Piece::Static(bytes),
                })
                .filter(|piece| !piece.bytes().is_empty())
                .collect();
            // A short write (a full disk) leaves the rest to write again: drop what was
            // written and go on, until all is written or the kernel reports an error.
            while !pieces.is_empty() {
                let (done, back) = file.writev_at(pieces, offset + written).await;
                pieces = back;
                let n = match done {
                    Ok(0) => Err(io::Error::from(io::ErrorKind::WriteZero)),
                    other => other,
                };
                match n {
                    Ok(n) => {
                        written += n as u64;
                        consume(&mut pieces, n);
                    }
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            if result.is_err() {
                break;
            }
        }
        // Every piece is dropped: the buffer is ours alone again (the copy cannot happen).
        let buf = Rc::try_unwrap(shared).unwrap_or_else(|shared| BytesMut::from(&shared[..]));
        (result.map(|()| written), buf)
    }

    async fn persist(file: Self::File, sync: bool, from: &Path, to: &Path) -> io::Result<()> {
        let synced = if sync { file.sync_all().await } else { Ok(()) };
        let closed = file.close().await;
        let renamed = match synced.and(closed) {
            Ok(()) => rename_noreplace(from, to).await,
            Err(e) => Err(e),
        };
        if matches!(&renamed, Err(e) if e.kind() != io::ErrorKind::AlreadyExists) {
            let _ = tokio_uring::fs::remove_file(from).await;
        }
        renamed
    }

    async fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
        rename_noreplace(from, to).await
    }

    async fn sync_dir(dir: &Self::File) -> io::Result<()> {
        dir.sync_all().await
    }

    async fn close(file: Self::File) -> io::Result<()> {
        file.close().await
    }

    async fn remove(path: &Path) -> io::Result<()> {
        tokio_uring::fs::remove_file(path).await
    }
}

/// The paths a rename in flight points to; the ring reads them until it completes.
struct RenamePaths {
    _from: CString,
    _to: CString,
}

/// Turns a rename's completion into a result.
struct RenameDone;

impl tokio_uring::OneshotOutputTransform for RenameDone {
    type Output = io::Result<()>;
    type StoredData = RenamePaths;

    fn transform_oneshot_output(
        self,
        _paths: RenamePaths,
        cqe: io_uring::cqueue::Entry,
    ) -> Self::Output {
        match cqe.result() {
            n if n >= 0 => Ok(()),
            n => Err(io::Error::from_raw_os_error(-n)),
        }
    }
}

/// renameat2(RENAME_NOREPLACE) through the ring (IORING_OP_RENAMEAT with its flags, which
/// tokio-uring's own rename does not pass).
async fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use io_uring::{opcode, types};
    use std::os::unix::ffi::OsStrExt;
    let from = CString::new(from.as_os_str().as_bytes())?;
    let to = CString::new(to.as_os_str().as_bytes())?;
    let entry = opcode::RenameAt::new(
        types::Fd(libc::AT_FDCWD),
        from.as_ptr(),
        types::Fd(libc::AT_FDCWD),
        to.as_ptr(),
    )
    .flags(libc::RENAME_NOREPLACE)
    .build();
    // The strings' bytes are on the heap: moving the CStrings into the operation keeps the
    // pointers above valid until the completion.
    let paths = RenamePaths {
        _from: from,
        _to: to,
    };
    tokio_uring::UnsubmittedOneshot::new(paths, RenameDone, entry)
        .submit()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes left in `pieces`, concatenated.
    fn left(pieces: &[Piece]) -> Vec<u8> {
        pieces.iter().flat_map(|p| p.bytes().to_vec()).collect()
    }

    #[test]
    fn consume_drops_exactly_what_a_short_write_wrote() {
        let buf = Rc::new(BytesMut::from(&b"0123456789"[..]));
        let make = || {
            vec![
                Piece::Shared(Rc::clone(&buf), 0..4),
                Piece::Static(b"\r\n"),
                Piece::Shared(Rc::clone(&buf), 6..10),
            ]
        };
        let all = left(&make());
        for n in 0..=all.len() {
            let mut pieces = make();
            consume(&mut pieces, n);
            assert_eq!(left(&pieces), all[n..], "n = {n}");
            assert!(pieces.iter().all(|p| !p.bytes().is_empty()), "n = {n}");
        }
    }
}
