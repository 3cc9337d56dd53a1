//! The epoll driver: a tokio current-thread runtime per shard. Sockets are non-blocking and
//! driven by readiness; file work (create, write, fsync, rename) runs on tokio's blocking pool
//! so that one slow fsync never stalls the shard's other connections. It is the fallback where
//! io_uring is refused, and the baseline that shows what io_uring buys on a kernel.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use bytes::BytesMut;

use super::{BufResult, Driver};
use crate::scan::Part;

/// The epoll backend.
pub struct Epoll;

/// Runs blocking file work off the shard thread.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    }
}

impl Driver for Epoll {
    type Listener = tokio::net::TcpListener;
    type Stream = tokio::net::TcpStream;
    type File = Arc<std::fs::File>;
    const NAME: &'static str = "epoll";

    fn block_on<F: Future>(_ring_entries: u32, future: F) -> io::Result<F::Output> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(64)
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
        let (stream, peer) = listener.accept().await?;
        // Replies are whole and flushed on purpose; Nagle would hold them for an ACK.
        stream.set_nodelay(true)?;
        Ok((stream, peer))
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
        std::fs::File::open(path).map(Arc::new)
    }

    async fn write_parts_at(
        file: &Self::File,
        buf: BytesMut,
        parts: &[Part],
        base: usize,
        offset: u64,
    ) -> BufResult<u64, BytesMut> {
        // One hand-off to the blocking pool for the whole batch; the parts are small ranges.
        let file = Arc::clone(file);
        let parts = parts.to_vec();
        blocking(move || {
            let mut written = 0u64;
            for part in &parts {
                let bytes = match part {
                    Part::Input(r) => &buf[base + r.start..base + r.end],
                    Part::Static(bytes) => bytes,
                };
                if let Err(e) = file.write_all_at(bytes, offset + written) {
                    return (Err(e), buf);
                }
                written += bytes.len() as u64;
            }
            (Ok(written), buf)
        })
        .await
    }

    async fn sync_dir(dir: &Self::File) -> io::Result<()> {
        let dir = Arc::clone(dir);
        blocking(move || dir.sync_all()).await
    }

    async fn close(file: Self::File) -> io::Result<()> {
        // Dropping a std File closes it; close(2) errors after a successful fsync carry no
        // information about durability.
        blocking(move || drop(file)).await;
        Ok(())
    }

    async fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
        let (from, to) = (from.to_path_buf(), to.to_path_buf());
        blocking(move || super::rename_noreplace_now(&from, &to)).await
    }

    async fn remove(path: &Path) -> io::Result<()> {
        let path = path.to_path_buf();
        blocking(move || std::fs::remove_file(path)).await
    }

    async fn create_with(path: &Path, head: Vec<u8>) -> BufResult<Self::File, Vec<u8>> {
        let path = path.to_path_buf();
        blocking(move || {
            let created = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path);
            let file = match created {
                Ok(file) => file,
                Err(e) => return (Err(e), head),
            };
            match file.write_all_at(&head, 0) {
                Ok(()) => (Ok(Arc::new(file)), head),
                Err(e) => {
                    drop(file);
                    let _ = std::fs::remove_file(&path);
                    (Err(e), head)
                }
            }
        })
        .await
    }

    async fn persist(file: Self::File, sync: bool, from: &Path, to: &Path) -> io::Result<()> {
        let (from, to) = (from.to_path_buf(), to.to_path_buf());
        blocking(move || {
            let synced = if sync { file.sync_all() } else { Ok(()) };
            drop(file);
            let renamed = synced.and_then(|()| super::rename_noreplace_now(&from, &to));
            if matches!(&renamed, Err(e) if e.kind() != io::ErrorKind::AlreadyExists) {
                let _ = std::fs::remove_file(&from);
            }
            renamed
        })
        .await
    }
}
