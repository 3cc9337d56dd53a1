//! The epoll driver: a tokio current-thread runtime per shard. Sockets are non-blocking and
//! driven by readiness; file work (create, write, fsync, rename) runs on the shard's file threads
//! (`files`) so that one slow fsync never stalls the shard's other connections. It is the fallback where
//! io_uring is refused, and the baseline that shows what io_uring buys on a kernel.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::Path;

use bytes::BytesMut;

use super::files::{self, Done, Job};
use super::reuse::{CPath, File};
use super::{BufResult, Driver, FileSync};
use crate::scan::Part;

/// The epoll backend.
pub struct Epoll;

thread_local! {
    /// Part lists for file writes, reused.
    static PARTS: RefCell<Vec<Vec<Part>>> = const { RefCell::new(Vec::new()) };
}

/// The result of a job that finishes with `Done::Finished`; its paths go back to the pool.
fn finished(done: Done) -> io::Result<()> {
    match done {
        Done::Finished(result, a, b) => {
            a.into_iter().chain(b).for_each(CPath::reuse);
            result
        }
        _ => unreachable!("a job that finishes without data"),
    }
}

/// Closes a file on the shard's thread (close(2) of a regular file does no I/O), or leaves it
/// to the job still holding it.
fn close_now(file: File) {
    drop(file.into_fd());
}

impl Driver for Epoll {
    type Listener = tokio::net::TcpListener;
    type Stream = tokio::net::TcpStream;
    type File = File;
    const NAME: &'static str = "epoll";

    fn block_on<F: Future>(_ring_entries: u32, future: F) -> io::Result<F::Output> {
        let _files = files::Scope::enter();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let local = tokio::task::LocalSet::new();
        Ok(local.block_on(&runtime, future))
    }

    fn spawn<F: Future<Output = ()> + 'static>(future: F) {
        tokio::task::spawn_local(future);
    }

    fn listener(listener: std::net::TcpListener) -> io::Result<Self::Listener> {
        tokio::net::TcpListener::from_std(listener)
    }

    async fn accept(listener: &Self::Listener) -> io::Result<(Self::Stream, SocketAddr)> {
        // TCP_NODELAY comes from the listener (see `Driver::accept`).
        listener.accept().await
    }

    fn shutdown_listener(listener: &Self::Listener) {
        super::shutdown_fd(listener.as_raw_fd());
    }

    fn peer_has_sent(stream: &Self::Stream) -> bool {
        super::peek_fd(stream.as_raw_fd())
    }

    async fn read(stream: &Self::Stream, mut buf: BytesMut) -> BufResult<usize, BytesMut> {
        if buf.len() == buf.capacity() {
            buf.reserve(1);
        }
        loop {
            if let Err(e) = stream.readable().await {
                return (Err(e), buf);
            }
            match stream.try_read_buf(&mut buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return (result, buf),
            }
        }
    }

    fn try_write(stream: &Self::Stream, buf: &[u8]) -> io::Result<usize> {
        stream.try_write(buf)
    }

    async fn write_all(stream: &Self::Stream, buf: Vec<u8>) -> BufResult<(), Vec<u8>> {
        let mut written = 0;
        while written < buf.len() {
            if let Err(e) = stream.writable().await {
                return (Err(e), buf);
            }
            match stream.try_write(&buf[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }

    fn open_dir(path: &Path) -> io::Result<Self::File> {
        Ok(File::new(std::fs::File::open(path)?.into()))
    }

    async fn write_parts_at(
        file: &Self::File,
        buf: BytesMut,
        parts: &[Part],
        base: usize,
        offset: u64,
        _sync: bool,
    ) -> BufResult<u64, BytesMut> {
        // One hand-off to a file thread for the whole batch; the parts are small ranges. The
        // fsync stays with `persist`, in the same hand-off as the close and the rename.
        let mut list = PARTS
            .with(|pool| pool.borrow_mut().pop())
            .unwrap_or_default();
        list.clear();
        list.extend_from_slice(parts);
        let job = Job::Write {
            file: file.handle(),
            buf,
            parts: list,
            base,
            offset,
        };
        match files::run(job).await {
            Done::Written(result, buf, list) => {
                PARTS.with(|pool| pool.borrow_mut().push(list));
                (result, buf)
            }
            _ => unreachable!("a write job ends written"),
        }
    }

    async fn sync_dir(dir: &Self::File) -> io::Result<()> {
        finished(files::run(Job::Sync { file: dir.handle() }).await)
    }

    async fn close(file: Self::File) -> io::Result<()> {
        // close(2) errors after a successful fsync carry no information about durability.
        close_now(file);
        Ok(())
    }

    async fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
        let from = CPath::new(from)?;
        let to = match CPath::new(to) {
            Ok(to) => to,
            Err(e) => {
                from.reuse();
                return Err(e);
            }
        };
        finished(files::run(Job::Rename { from, to }).await)
    }

    async fn remove(path: &Path) -> io::Result<()> {
        let path = CPath::new(path)?;
        finished(files::run(Job::Remove { path }).await)
    }

    async fn create_with(path: &Path, head: Vec<u8>) -> BufResult<Self::File, Vec<u8>> {
        let path = match CPath::new(path) {
            Ok(path) => path,
            Err(e) => return (Err(e), head),
        };
        match files::run(Job::Create { path, head }).await {
            Done::Created(result, path, head) => {
                path.reuse();
                (result.map(File::new), head)
            }
            _ => unreachable!("a create job ends created"),
        }
    }

    async fn persist(file: Self::File, sync: FileSync, from: &Path, to: &Path) -> io::Result<()> {
        let paths = CPath::new(from).and_then(|from| match CPath::new(to) {
            Ok(to) => Ok((from, to)),
            Err(e) => {
                from.reuse();
                Err(e)
            }
        });
        let (from, to) = match paths {
            Ok(paths) => paths,
            Err(e) => {
                close_now(file);
                return Err(e);
            }
        };
        let job = Job::Persist {
            file: file.handle(),
            sync,
            from,
            to,
        };
        let done = files::run(job).await;
        close_now(file);
        finished(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::tests::persist_on_pipe;

    /// `persist` syncs as it is told: Skip syncs nothing, Fsync fsyncs, Check only collects
    /// write-back errors (sync_file_range).
    #[test]
    fn persist_syncs_as_it_is_told() {
        let run = |sync| persist_on_pipe::<Epoll>(sync, b"", |fd, _| File::new(fd));
        let errno =
            |(result, _): (io::Result<()>, bool)| result.err().and_then(|e| e.raw_os_error());
        let (skipped, moved) = run(FileSync::Skip);
        assert!(skipped.is_ok() && moved, "{skipped:?}");
        assert_eq!(errno(run(FileSync::Fsync)), Some(libc::EINVAL));
        assert_eq!(errno(run(FileSync::Check)), Some(libc::ESPIPE));
    }
}
