//! Reusable pieces of file operations, so that storing a message allocates nothing once a shard
//! is warm: NUL-terminated path buffers and file handles come from per-thread pools and go back
//! to them when an operation is done with them.
//!
//! An operation in flight owns what it points to (a path buffer, a clone of the file handle)
//! until it completes, also when the future that started it is dropped: the kernel (io_uring)
//! or a file thread (epoll) may still be using them. Such a buffer is then freed instead of
//! reused, which only happens when a connection is torn down mid-operation.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

/// Most buffers of one kind a thread keeps for reuse (enough for every message in flight on a
/// busy shard; more are freed when given back).
const POOL_MAX: usize = 4096;

thread_local! {
    static PATHS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static HANDLES: RefCell<Vec<Arc<Handle>>> = const { RefCell::new(Vec::new()) };
}

/// A path as the kernel takes it: its bytes and a NUL, in a buffer from this thread's pool.
/// Give it back with `CPath::reuse` when the operation that used it is done.
pub struct CPath(Vec<u8>);

impl CPath {
    /// Copies `path` into a pooled buffer; a path with a NUL in it is refused.
    pub fn new(path: &Path) -> io::Result<CPath> {
        let bytes = path.as_os_str().as_bytes();
        if memchr::memchr(0, bytes).is_some() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "path contains a NUL byte",
            ));
        }
        let mut buf = PATHS
            .with(|pool| pool.borrow_mut().pop())
            .unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(bytes);
        buf.push(0);
        Ok(CPath(buf))
    }

    /// The NUL-terminated string; valid while this `CPath` lives (moving it does not move the
    /// bytes).
    pub fn as_ptr(&self) -> *const libc::c_char {
        self.0.as_ptr().cast()
    }

    /// Hands the buffer back to this thread's pool.
    pub fn reuse(self) {
        give(&PATHS, self.0);
    }
}

fn give<T>(pool: &'static std::thread::LocalKey<RefCell<Vec<T>>>, item: T) {
    pool.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < POOL_MAX {
            pool.push(item);
        }
    });
}

/// The descriptor behind a `File`; closed when the last holder drops it.
pub struct Handle {
    fd: AtomicI32,
}

impl Handle {
    /// The descriptor (-1 once it was taken for closing).
    pub fn fd(&self) -> RawFd {
        self.fd.load(Ordering::Acquire)
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let fd = *self.fd.get_mut();
        if fd >= 0 {
            // SAFETY: the handle owned this descriptor and nobody else closes it.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
}

/// An open file whose handle operations in flight may share (a clone of `handle()`), so that a
/// descriptor is never closed (and its number reused) while an operation still names it.
pub struct File(Arc<Handle>);

impl File {
    /// Takes ownership of `fd`.
    pub fn new(fd: OwnedFd) -> File {
        let fd = fd.into_raw_fd();
        let handle = match HANDLES.with(|pool| pool.borrow_mut().pop()) {
            Some(handle) => {
                handle.fd.store(fd, Ordering::Release);
                handle
            }
            None => Arc::new(Handle {
                fd: AtomicI32::new(fd),
            }),
        };
        File(handle)
    }

    /// A shared reference for an operation in flight.
    pub fn handle(&self) -> Arc<Handle> {
        Arc::clone(&self.0)
    }

    /// The descriptor.
    pub fn fd(&self) -> RawFd {
        self.0.fd()
    }

    /// Gives up the file: returns its descriptor for the caller to close when no operation
    /// holds it any more (the handle then goes back to the pool); `None` when one still does
    /// (its completion closes the descriptor).
    pub fn into_fd(self) -> Option<OwnedFd> {
        let mut handle = self.0;
        let fd = Arc::get_mut(&mut handle)?.fd.swap(-1, Ordering::AcqRel);
        give(&HANDLES, handle);
        // SAFETY: the handle owned `fd`, and it no longer names it.
        (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

impl AsRawFd for File {
    fn as_raw_fd(&self) -> RawFd {
        self.fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_with_a_nul_is_refused_and_others_are_nul_terminated() {
        use std::ffi::OsStr;
        assert!(CPath::new(Path::new(OsStr::from_bytes(b"a\0b"))).is_err());
        let path = CPath::new(Path::new("/tmp/x")).unwrap();
        // SAFETY: the pointer is to a NUL-terminated buffer that `path` keeps alive.
        let back = unsafe { std::ffi::CStr::from_ptr(path.as_ptr()) };
        assert_eq!(back.to_bytes(), b"/tmp/x");
        path.reuse();
        let again = CPath::new(Path::new("/y")).unwrap();
        // SAFETY: as above.
        let back = unsafe { std::ffi::CStr::from_ptr(again.as_ptr()) };
        assert_eq!(back.to_bytes(), b"/y");
    }

    #[test]
    fn a_file_is_closed_by_its_last_holder() {
        let fd = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let file = File::new(fd);
        let raw = file.fd();
        let in_flight = file.handle();
        // An operation still holds it: nothing to close yet.
        assert!(file.into_fd().is_none());
        assert_eq!(in_flight.fd(), raw);
        // SAFETY: fcntl(F_GETFD) only queries the descriptor.
        assert!(unsafe { libc::fcntl(raw, libc::F_GETFD) } >= 0);
        // The operation's completion closes it.
        drop(in_flight);

        let file = File::new(OwnedFd::from(std::fs::File::open("/dev/null").unwrap()));
        let fd = file.into_fd().expect("no operation holds it");
        assert!(fd.as_raw_fd() >= 0);
    }
}
