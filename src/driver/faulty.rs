//! A fault-injecting driver for tests: wraps another driver and makes chosen file operations
//! fail with ENOSPC or EIO — at the n-th call of an operation, or at random from a seed — as a
//! full or failing disk would, or makes the move into `new/` find its name taken. It is a
//! separate type, so the real drivers pay nothing for it; tests start the server with
//! `server::start::<Faulty<Epoll>>` after `set_plan`.
//!
//! Every file method of `Driver` is wrapped, and a fault always goes through the wrapped
//! backend's own method, so its own clean-up runs: a failing fsync or rename inside `persist`
//! is made by asking the backend to move the file into a directory that does not exist (the
//! rename really fails after the real fsync, and the backend removes the tmp file itself); a
//! taken name by asking it to move the file onto itself (RENAME_NOREPLACE answers EEXIST).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use ringmx_wire::XorShift64Star;

use super::{BufResult, Driver, FileSync};
use crate::scan::Part;

/// A file operation that can be made to fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileOp {
    Create,
    Write,
    Sync,
    Rename,
    SyncDir,
    /// The name in `new/` is taken (another process's file): the move answers EEXIST.
    Exists,
    /// The `syncfs` shared by the messages of `RINGMX_FSYNC=syncfs`.
    SyncFs,
}

/// Number of `FileOp`s.
pub const OPS: usize = 7;

/// Which operations fail, and how.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Seed of the random failures (xorshift64*; 0 is replaced by a fixed odd constant).
    pub seed: u64,
    /// Per operation, the chance of failing in parts per thousand.
    pub per_mille: [u16; OPS],
    /// Fail exactly the n-th call (1-based) of this operation.
    pub nth: Option<(FileOp, u64)>,
    /// Fail with EIO instead of ENOSPC.
    pub eio: bool,
}

/// What the plan did so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    /// Calls per operation.
    pub calls: [u64; OPS],
    /// Injected failures per operation.
    pub failed: [u64; OPS],
}

struct State {
    plan: Plan,
    rng: XorShift64Star,
    counts: Counts,
    /// The calls in the order made, up to `LOG_MAX`.
    log: Vec<Call>,
}

/// A call in the log: the operation, and for `persist`'s `Sync` how it was asked to make the
/// file durable (a fsync, or only the write-back error check after a syncfs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call {
    pub op: FileOp,
    pub sync: Option<FileSync>,
}

/// Calls kept in the log.
const LOG_MAX: usize = 100_000;

static STATE: Mutex<Option<State>> = Mutex::new(None);

/// Installs a plan for every `Faulty` driver in the process (and resets the counts).
pub fn set_plan(plan: Plan) {
    let rng = XorShift64Star::new(plan.seed);
    *STATE.lock().unwrap_or_else(|e| e.into_inner()) = Some(State {
        plan,
        rng,
        counts: Counts::default(),
        log: Vec::new(),
    });
}

/// The calls since the last `set_plan`, in the order they were made (the first `LOG_MAX`):
/// what a test reads to check the order of a message's steps.
pub fn log() -> Vec<Call> {
    STATE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map_or_else(Vec::new, |s| s.log.clone())
}

/// The counts since the last `set_plan`.
pub fn counts() -> Counts {
    STATE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map_or_else(Counts::default, |s| s.counts)
}

/// Decides whether this call of `op` fails, and with which error.
fn inject(op: FileOp) -> io::Result<()> {
    inject_call(Call { op, sync: None })
}

/// `inject` for a call logged with how it syncs.
fn inject_call(call: Call) -> io::Result<()> {
    let op = call.op;
    let mut guard = STATE.lock().unwrap_or_else(|e| e.into_inner());
    let Some(state) = guard.as_mut() else {
        return Ok(());
    };
    let i = op as usize;
    state.counts.calls[i] += 1;
    if state.log.len() < LOG_MAX {
        state.log.push(call);
    }
    let nth = state
        .plan
        .nth
        .is_some_and(|(o, n)| o == op && n == state.counts.calls[i]);
    // Enough randomness to vary the failure points from seed to seed.
    let roll = (state.rng.next_u64() >> 33) % 1000;
    if nth || roll < u64::from(state.plan.per_mille[i]) {
        state.counts.failed[i] += 1;
        let errno = if state.plan.eio {
            libc::EIO
        } else {
            libc::ENOSPC
        };
        return Err(io::Error::from_raw_os_error(errno));
    }
    Ok(())
}

/// A driver whose file operations fail as the installed `Plan` says.
pub struct Faulty<D>(std::marker::PhantomData<D>);

impl<D: Driver> Driver for Faulty<D> {
    type Listener = D::Listener;
    type Stream = D::Stream;
    type File = D::File;
    const NAME: &'static str = D::NAME;

    fn block_on<F: Future>(ring_entries: u32, future: F) -> io::Result<F::Output> {
        D::block_on(ring_entries, future)
    }

    fn spawn<F: Future<Output = ()> + 'static>(future: F) {
        D::spawn(future)
    }

    fn listener(listener: std::net::TcpListener) -> io::Result<Self::Listener> {
        D::listener(listener)
    }

    async fn accept(listener: &Self::Listener) -> io::Result<(Self::Stream, SocketAddr)> {
        D::accept(listener).await
    }

    fn shutdown_listener(listener: &Self::Listener) {
        D::shutdown_listener(listener)
    }

    fn peer_has_sent(stream: &Self::Stream) -> bool {
        D::peer_has_sent(stream)
    }

    async fn read(stream: &Self::Stream, buf: BytesMut) -> BufResult<usize, BytesMut> {
        D::read(stream, buf).await
    }

    fn try_write(stream: &Self::Stream, buf: &[u8]) -> io::Result<usize> {
        D::try_write(stream, buf)
    }

    async fn write_all(stream: &Self::Stream, buf: Vec<u8>) -> BufResult<(), Vec<u8>> {
        D::write_all(stream, buf).await
    }

    fn open_dir(path: &Path) -> io::Result<Self::File> {
        D::open_dir(path)
    }

    async fn create_with(path: &Path, head: Vec<u8>) -> BufResult<Self::File, Vec<u8>> {
        if let Err(e) = inject(FileOp::Create) {
            return (Err(e), head);
        }
        let (created, head) = D::create_with(path, head).await;
        let file = match created {
            Ok(file) => file,
            Err(e) => return (Err(e), head),
        };
        // A failed head write (for a backend that writes the head here; io_uring writes it with
        // the first write, where `write_parts_at` injects): the backend's file is closed and
        // removed as its own failure path would.
        if let Err(e) = inject(FileOp::Write) {
            let _ = D::close(file).await;
            let _ = D::remove(path).await;
            return (Err(e), head);
        }
        (Ok(file), head)
    }

    async fn write_parts_at(
        file: &Self::File,
        buf: BytesMut,
        parts: &[Part],
        base: usize,
        offset: u64,
        sync: bool,
    ) -> BufResult<u64, BytesMut> {
        if let Err(e) = inject(FileOp::Write) {
            return (Err(e), buf);
        }
        D::write_parts_at(file, buf, parts, base, offset, sync).await
    }

    async fn persist(file: Self::File, sync: FileSync, from: &Path, to: &Path) -> io::Result<()> {
        let fault = inject_call(Call {
            op: FileOp::Sync,
            sync: Some(sync),
        })
        .and_then(|()| inject(FileOp::Rename));
        if let Err(e) = fault {
            // The backend fsyncs, closes, then fails to move the file into a directory that
            // does not exist, and cleans up after itself.
            let nowhere = from.with_file_name("no-such-directory").join("x");
            let moved = D::persist(file, sync, from, &nowhere).await;
            assert!(
                moved.is_err(),
                "a move into a missing directory cannot succeed"
            );
            return Err(e);
        }
        if inject(FileOp::Exists).is_err() {
            // RENAME_NOREPLACE onto the file itself: EEXIST, and the file stays in tmp/.
            return D::persist(file, sync, from, from).await;
        }
        D::persist(file, sync, from, to).await
    }

    fn synced(file: &Self::File) -> bool {
        D::synced(file)
    }

    async fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
        inject(FileOp::Rename)?;
        if inject(FileOp::Exists).is_err() {
            return D::rename_noreplace(from, from).await;
        }
        D::rename_noreplace(from, to).await
    }

    async fn sync_dir(dir: &Self::File) -> io::Result<()> {
        inject(FileOp::SyncDir)?;
        D::sync_dir(dir).await
    }

    async fn sync_fs(fs: &Arc<OwnedFd>) -> io::Result<()> {
        inject(FileOp::SyncFs)?;
        D::sync_fs(fs).await
    }

    async fn close(file: Self::File) -> io::Result<()> {
        D::close(file).await
    }

    async fn remove(path: &Path) -> io::Result<()> {
        D::remove(path).await
    }
}
