//! The server: start-up, shards, listeners, connection limits and graceful shutdown.
//!
//! `run` binds every listener (so address errors are start-up errors), prepares the spool,
//! picks the backend, then starts one shard thread per configured shard, each pinned to its
//! CPU, with its own runtime, its own SO_REUSEPORT listener per address, its own spool state and
//! its own buffers. The kernel spreads connections over the shards. The only state shared
//! between shards is per connection, never per message: the connection counters and the
//! shutdown signal. SIGTERM/SIGINT close the listeners, answer `421 4.3.2` at the next command
//! boundary, give transactions in flight `RINGMX_SHUTDOWN_GRACE_SECS`, then exit 0.

mod conn;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::BytesMut;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::{watch, Notify};

use crate::config::{Backend, Delivery, ServerConfig};
use crate::delivery::{jetstream, maildir, AnySink, IdGenerator, Jetstream, Maildir, QueueId};
use crate::driver::{epoll::Epoll, uring, uring::Uring, Driver};
use crate::metrics::http::Endpoint;
use crate::metrics::{Metrics, ShardMetrics};
use crate::{log_error, log_event, log_info, log_warn};

/// Listen backlog of every listener (the kernel caps it at net.core.somaxconn).
const LISTEN_BACKLOG: i32 = 4096;
/// Receive buffer of a connection waiting for commands: small, so idle connections are cheap.
const SMALL_BUFFER: usize = 4 * 1024;
/// Receive buffer while message data flows.
const LARGE_BUFFER: usize = 64 * 1024;
/// Large buffers kept for reuse per shard; past it they are freed.
const POOLED_BUFFERS_MAX: usize = 256;
/// Large buffers in use per shard at once (64 MiB): the hard cap on receive memory; past it a
/// connection receives its data through its small buffer.
const LARGE_BUFFERS_MAX: usize = 1024;

/// After shutdown begins, how long an accept in flight may take to finish (it ends at once).
const ACCEPT_DRAIN: std::time::Duration = std::time::Duration::from_secs(1);

/// Where shutdown stands; sent to every shard and connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    Running,
    /// Stop accepting; sessions end at their next command boundary.
    Draining,
    /// The grace period is over: close everything now.
    Stopping,
}

/// Counters shared by all shards (touched once per connection, never per message).
pub(crate) struct Shared {
    connections: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// The STARTTLS certificate store, when TLS is offered (read once per handshake).
    tls: Option<Arc<crate::tls::CertStore>>,
    /// The Maildir's sync (of `new/`, or syncfs), shared by the shards.
    spool_sync: Arc<maildir::SharedSync>,
    /// How the Maildir makes messages durable (with syncfs, the one descriptor for it).
    durability: maildir::Durability,
}

/// What a connection holds while it counts against the limits; releases them when dropped.
pub(crate) struct Admission<'a> {
    shared: &'a Shared,
    ip: Option<IpAddr>,
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.shared.connections.fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.ip {
            let mut per_ip = self.shared.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(count) = per_ip.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }
}

/// Why a connection was refused at accept time.
pub(crate) enum Refused {
    TooManyConnections,
    TooManyFromAddress,
}

impl Shared {
    /// Counts a new connection against the server-wide and per-address limits.
    fn admit(&self, config: &ServerConfig, ip: IpAddr) -> Result<Admission<'_>, Refused> {
        let total = self.connections.fetch_add(1, Ordering::Relaxed) + 1;
        let mut admission = Admission {
            shared: self,
            ip: None,
        };
        if total > config.max_connections {
            return Err(Refused::TooManyConnections);
        }
        if !config.limit_exempt.iter().any(|net| net.contains(ip)) {
            let ip = crate::config::client_of(ip, config.ipv6_prefix);
            let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            let count = per_ip.entry(ip).or_insert(0);
            *count += 1;
            admission.ip = Some(ip);
            if *count > config.max_connections_per_ip {
                return Err(Refused::TooManyFromAddress);
            }
        }
        Ok(admission)
    }
}

/// One shard's state, shared by its connection tasks (single-threaded, hence `Rc`/`Cell`).
pub(crate) struct Shard<D: Driver> {
    pub id: usize,
    pub config: Arc<ServerConfig>,
    pub session_config: Arc<crate::proto::Config>,
    pub shared: Arc<Shared>,
    pub sink: AnySink<D>,
    /// The STARTTLS certificate store, when TLS is offered.
    pub tls: Option<Arc<crate::tls::CertStore>>,
    pub phase: watch::Receiver<Phase>,
    /// This shard's copy of `phase`, which its connections and accept loops wait on.
    pub local_phase: LocalPhase,
    /// This shard's counters, when `RINGMX_METRICS_LISTEN` is set (written only here).
    pub metrics: Option<Arc<ShardMetrics>>,
    pool: RefCell<Vec<BytesMut>>,
    large_in_use: Cell<usize>,
    ids: RefCell<IdGenerator>,
    active: Cell<usize>,
    idle: Notify,
}

impl<D: Driver> Shard<D> {
    /// A fresh queue ID from this shard.
    pub fn next_id(&self) -> QueueId {
        self.ids.borrow_mut().next(std::time::SystemTime::now())
    }

    /// A large receive buffer from the pool (or a new one), unless the shard's cap of large
    /// buffers in use is reached: the connection then carries on with its small one.
    pub fn take_large(&self) -> Option<BytesMut> {
        if self.large_in_use.get() >= LARGE_BUFFERS_MAX {
            return None;
        }
        self.large_in_use.set(self.large_in_use.get() + 1);
        Some(
            self.pool
                .borrow_mut()
                .pop()
                .unwrap_or_else(|| BytesMut::with_capacity(LARGE_BUFFER)),
        )
    }

    /// Returns a large buffer taken with `take_large` (kept for reuse while the pool has room).
    pub fn give_large(&self, mut buf: BytesMut) {
        self.large_in_use.set(self.large_in_use.get() - 1);
        let mut pool = self.pool.borrow_mut();
        if pool.len() < POOLED_BUFFERS_MAX {
            // A buffer read from has its start advanced; clearing and reserving takes the
            // whole allocation back without a new one.
            buf.clear();
            buf.reserve(LARGE_BUFFER);
            if buf.capacity() >= LARGE_BUFFER {
                pool.push(buf);
            }
        }
    }
}

/// The shutdown phase as one shard's tasks see it. One task per shard follows the server's
/// `watch` channel and copies each change here (`follow_phase`); connections and accept loops
/// wait on the copy, which takes no lock and no atomic. (Waiting on the channel itself takes
/// its lock to register, on every poll after that, and to deregister: several times per
/// message on a busy connection.)
pub(crate) struct LocalPhase {
    phase: Cell<Phase>,
    waiters: RefCell<Waiters>,
}

/// The wakers of the tasks waiting for a phase change, in slots reused once freed (at most
/// one per task waiting: bounded by the connection limit).
#[derive(Default)]
struct Waiters {
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl LocalPhase {
    fn new(phase: Phase) -> LocalPhase {
        LocalPhase {
            phase: Cell::new(phase),
            waiters: RefCell::new(Waiters::default()),
        }
    }

    /// Sets the phase and wakes every waiter when it changed.
    fn set(&self, phase: Phase) {
        if phase == self.phase.get() {
            return;
        }
        self.phase.set(phase);
        // Taken out first: a waker may run code that polls a waiter.
        let wakers: Vec<Waker> = self
            .waiters
            .borrow_mut()
            .slots
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        for waker in wakers {
            waker.wake();
        }
    }

    /// The phase now.
    pub fn get(&self) -> Phase {
        self.phase.get()
    }

    /// Completes with the phase once it is other than `seen`.
    pub fn after(&self, seen: Phase) -> PhaseAfter<'_> {
        PhaseAfter {
            local: self,
            seen,
            slot: None,
        }
    }
}

/// The future of `LocalPhase::after`.
pub(crate) struct PhaseAfter<'a> {
    local: &'a LocalPhase,
    seen: Phase,
    /// Its slot among the waiters, once it has waited.
    slot: Option<usize>,
}

impl Future for PhaseAfter<'_> {
    type Output = Phase;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Phase> {
        let this = self.get_mut();
        let now = this.local.phase.get();
        if now != this.seen {
            return Poll::Ready(now);
        }
        let mut waiters = this.local.waiters.borrow_mut();
        match this.slot {
            Some(slot) => match &mut waiters.slots[slot] {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                waker => *waker = Some(cx.waker().clone()),
            },
            None => {
                let waker = Some(cx.waker().clone());
                let slot = match waiters.free.pop() {
                    Some(slot) => {
                        waiters.slots[slot] = waker;
                        slot
                    }
                    None => {
                        waiters.slots.push(waker);
                        waiters.slots.len() - 1
                    }
                };
                this.slot = Some(slot);
            }
        }
        Poll::Pending
    }
}

impl Drop for PhaseAfter<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            let mut waiters = self.local.waiters.borrow_mut();
            waiters.slots[slot] = None;
            waiters.free.push(slot);
        }
    }
}

/// Copies the server's phase into the shard's `local_phase` until it is `Stopping`.
async fn follow_phase<D: Driver>(shard: Rc<Shard<D>>) {
    let mut phase = shard.phase.clone();
    loop {
        let now = *phase.borrow_and_update();
        shard.local_phase.set(now);
        if now == Phase::Stopping {
            return;
        }
        if phase.changed().await.is_err() {
            shard.local_phase.set(Phase::Stopping);
            return;
        }
    }
}

/// Starts the server and blocks until it has shut down. Returns the process exit status.
pub fn run(config: ServerConfig) -> ExitCode {
    crate::log::set_level(config.log_level);
    crate::log::set_format(config.log_format);
    // The handlers go in before the first connection can be served, so that a SIGTERM at any
    // moment after start-up drains instead of killing.
    let signals = match signal_hook::iterator::Signals::new([libc::SIGTERM, libc::SIGINT]) {
        Ok(signals) => signals,
        Err(e) => {
            log_error!("cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    // SIGHUP reloads the TLS certificate (its watcher takes it when TLS is on); with nothing
    // to reload it must not end the process (`systemctl reload` sends it).
    let sighup = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Err(e) = signal_hook::flag::register(libc::SIGHUP, sighup) {
        log_error!("cannot install signal handlers: {e}");
        return ExitCode::from(1);
    }
    let (started, warning) = match choose_backend(&config) {
        Ok((Uring::NAME, warning)) => (start::<Uring>(config), warning),
        Ok((_, warning)) => (start::<Epoll>(config), warning),
        Err(line) => (Err(line), None),
    };
    if let (Ok(_), Some(warning)) = (&started, warning) {
        log_warn!("{warning}");
    }
    let server = match started {
        Ok(server) => server,
        Err(line) => {
            log_error!("{line}");
            return ExitCode::from(1);
        }
    };
    let signal_handle = signals.handle();
    let phase = server.phase.clone();
    let grace = server.grace;
    let signal_thread = std::thread::spawn(move || {
        let mut signals = signals;
        if let Some(signal) = signals.forever().next() {
            log_info!("signal {signal}: draining (grace {} s)", grace.as_secs());
            let _ = phase.send_replace(Phase::Draining);
            let deadline = Instant::now() + grace;
            // A second signal, or the end of the grace period, stops everything.
            while Instant::now() < deadline && *phase.borrow() != Phase::Stopping {
                if signals.pending().next().is_some() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let _ = phase.send_replace(Phase::Stopping);
        }
    });
    let ok = server.join();
    signal_handle.close();
    let _ = signal_thread.join();
    log_info!("ringmx stopped");
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// A started server: its shard threads and the handle that shuts it down.
pub struct Running {
    /// The addresses listened on (port 0 resolved), in `RINGMX_LISTEN` order.
    pub addrs: Vec<SocketAddr>,
    phase: watch::Sender<Phase>,
    grace: std::time::Duration,
    done: crossbeam_channel::Receiver<(usize, io::Result<()>)>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// The metrics endpoint, when `RINGMX_METRICS_LISTEN` is set (stops when dropped).
    metrics: Option<Endpoint>,
}

impl Running {
    /// Stops everything now: sessions are closed, unfinished messages removed.
    pub fn stop(&self) {
        let _ = self.phase.send_replace(Phase::Stopping);
    }

    /// Waits for every shard to finish. False when a shard failed.
    pub fn join(self) -> bool {
        let _metrics = self.metrics;
        let mut ok = true;
        for _ in 0..self.threads.len() {
            match self.done.recv() {
                Ok((_, Ok(()))) => {}
                Ok((id, Err(e))) => {
                    log_error!("shard {id} failed: {e}");
                    ok = false;
                    let _ = self.phase.send_replace(Phase::Stopping);
                }
                Err(_) => break,
            }
        }
        let _ = self.phase.send_replace(Phase::Stopping);
        for thread in self.threads {
            ok &= thread.join().is_ok();
        }
        ok
    }
}

/// Binds the listeners, prepares the spool, logs the first line and starts the shards on
/// driver `D`. Errors are start-up errors, as one line.
pub fn start<D: Driver>(mut config: ServerConfig) -> Result<Running, String> {
    crate::driver::remember_process_cpus();
    let listeners = bind_all(&config)?;
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(
            Endpoint::bind(addr)
                .map_err(|e| format!("RINGMX_METRICS_LISTEN: cannot listen on {addr}: {e}"))?,
        ),
        None => None,
    };
    // JetStream: the server must answer and a stream capture the subject; SIZE shrinks to
    // what one stream message can hold.
    let jetstream = match config.delivery {
        Delivery::Jetstream => {
            let probe = jetstream::probe(&config.nats)?;
            config.session.max_message_size =
                jetstream::size_limit(config.session.max_message_size, probe.message_max)?;
            Some(Arc::new(probe))
        }
        Delivery::Maildir | Delivery::Discard => None,
    };
    if config.delivery == Delivery::Maildir {
        match maildir::prepare(&config.spool) {
            Ok(prepared) => {
                if prepared.removed > 0 {
                    log_info!(
                        "removed {} stale file(s) from {}",
                        prepared.removed,
                        config.spool.join("tmp").display()
                    );
                }
                if prepared.kept > 0 {
                    log_info!(
                        "kept {} file(s) in {} that running processes are writing",
                        prepared.kept,
                        config.spool.join("tmp").display()
                    );
                }
            }
            Err(e) => return Err(format!("RINGMX_SPOOL: {}: {e}", config.spool.display())),
        }
    }
    let durability = match (config.fsync, config.syncfs) {
        (false, _) => maildir::Durability::Off,
        (true, true) if config.delivery == Delivery::Maildir => {
            let (fs, earlier) = maildir::syncfs_handle(&config.spool, &kernel_release())?;
            if let Some(e) = earlier {
                log_warn!(
                    "the file system of {} reported an error from before this start (syncfs: \
                     {e}); a second syncfs succeeded, so messages are checked afresh",
                    config.spool.join("new").display()
                );
            }
            maildir::Durability::SyncFs(fs)
        }
        (true, _) => maildir::Durability::Fsync,
    };
    let addrs: Vec<SocketAddr> = listeners[0]
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    let shown: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    let listen = shown.join(",");
    log_event!(
        Info,
        "start",
        {
            backend: D::NAME,
            shards: config.shards,
            pin: config.pin,
            listen: listen,
            spool: config.spool.display(),
            delivery: config.delivery.as_str(),
            fsync: config.fsync,
            syncfs: config.syncfs,
        },
        "ringmx starting: backend {}, {} shard(s), pin {}, listening on {}, spool {}, delivery {}, fsync {}",
        D::NAME,
        config.shards,
        if config.pin { "on" } else { "off" },
        listen,
        config.spool.display(),
        config.delivery.as_str(),
        match (config.fsync, config.syncfs) {
            (false, _) => "off",
            (true, false) => "on",
            (true, true) => "syncfs",
        },
    );
    if let Some(probe) = &jetstream {
        log_info!(
            "jetstream: subject {} on stream {} at {} (nats-server {}), largest message {} bytes, SIZE {}",
            config.nats.subject,
            probe.stream,
            config.nats.url,
            probe.server_version,
            probe.message_max,
            config.session.max_message_size,
        );
        if let Some(warning) = &probe.warning {
            log_warn!("{warning}");
        }
    }
    let spool = (config.delivery == Delivery::Maildir).then(|| config.spool.clone());
    let metrics =
        metrics_listener.map(|listener| (listener, Metrics::new(config.shards, spool, D::NAME)));
    let shard_metrics = |id: usize| metrics.as_ref().map(|(_, m)| m.shard(id));

    let tls = match &config.tls {
        Some(files) => {
            let store = crate::tls::CertStore::open(&files.cert, &files.key)
                .map_err(|e| format!("RINGMX_TLS_CERT/RINGMX_TLS_KEY: {e}"))?;
            let store = Arc::new(store);
            store
                .spawn_watcher()
                .map_err(|e| format!("TLS certificate watcher: {e}"))?;
            Some(store)
        }
        None => None,
    };

    let grace = config.shutdown_grace;
    let nonce = crate::delivery::process_nonce();
    let config = Arc::new(config);
    let shared = Arc::new(Shared {
        connections: AtomicUsize::new(0),
        per_ip: Mutex::new(HashMap::new()),
        tls,
        spool_sync: Arc::default(),
        durability,
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<(usize, io::Result<()>)>();
    let mut threads = Vec::new();
    for (id, shard_listeners) in listeners.into_iter().enumerate() {
        let config = Arc::clone(&config);
        let shared = Arc::clone(&shared);
        let phase = phase_rx.clone();
        let done = done_tx.clone();
        let metrics = shard_metrics(id);
        let jetstream = jetstream.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("ringmx-shard-{id}"))
            .spawn(move || {
                if config.pin && !config.cpus.is_empty() {
                    pin_to_cpu(config.cpus[id % config.cpus.len()]);
                }
                // A panic is a bug: it is reported like a failed shard, which stops the whole
                // server with exit status 1 for its supervisor to restart (acknowledged mail is
                // on disk), rather than leaving the server running one shard short.
                let run = std::panic::AssertUnwindSafe(|| {
                    run_shard::<D>(
                        id,
                        nonce,
                        config,
                        shared,
                        phase,
                        shard_listeners,
                        ShardExtras { metrics, jetstream },
                    )
                });
                let result = std::panic::catch_unwind(run)
                    .unwrap_or_else(|_| Err(io::Error::other("the shard panicked")));
                let _ = done.send((id, result));
            });
        match spawned {
            Ok(handle) => threads.push(handle),
            Err(e) => {
                let _ = phase_tx.send_replace(Phase::Stopping);
                return Err(format!("cannot start shard thread {id}: {e}"));
            }
        }
    }
    let endpoint = match metrics {
        Some((listener, metrics)) => {
            let endpoint = Endpoint::start(listener, metrics).map_err(|e| {
                let _ = phase_tx.send_replace(Phase::Stopping);
                format!("RINGMX_METRICS_LISTEN: cannot start the endpoint: {e}")
            })?;
            let addr = endpoint.local_addr();
            log_event!(Info, "metrics", { listen: addr }, "metrics endpoint at http://{addr}/metrics");
            Some(endpoint)
        }
        None => None,
    };
    Ok(Running {
        addrs,
        phase: phase_tx,
        grace,
        done: done_rx,
        threads,
        metrics: endpoint,
    })
}

/// Picks the backend the configuration asks for; `auto` falls back to epoll with a warning.
/// With `auto` and no io_uring, also returns the warning to log (after the first log line,
/// which names the backend in use).
fn choose_backend(config: &ServerConfig) -> Result<(&'static str, Option<String>), String> {
    match config.backend {
        Backend::Epoll => Ok((Epoll::NAME, None)),
        Backend::Uring => uring::probe(config.ring_entries)
            .map(|()| (Uring::NAME, None))
            .map_err(|e| {
                format!(
                    "RINGMX_BACKEND=uring: io_uring cannot be set up: {e}{}",
                    uring_hint(&e)
                )
            }),
        Backend::Auto => match uring::probe(config.ring_entries) {
            Ok(()) => Ok((Uring::NAME, None)),
            Err(e) => {
                let warning = format!(
                    "io_uring cannot be set up ({e}{}); running on epoll",
                    uring_hint(&e)
                );
                Ok((Epoll::NAME, Some(warning)))
            }
        },
    }
}

/// Says why io_uring is commonly refused.
fn uring_hint(error: &io::Error) -> &'static str {
    match error.raw_os_error() {
        Some(libc::ENOSYS) => ": the kernel has no io_uring (older than 5.1) or a seccomp profile blocks it",
        Some(libc::EPERM) => ": kernel.io_uring_disabled or a seccomp profile (e.g. a container runtime's default) forbids it",
        Some(libc::ENOMEM) => ": locked-memory limit too low (ulimit -l) for the ring size",
        _ => "",
    }
}

/// Binds one listener per shard per address, all with SO_REUSEPORT. The first shard's bind of
/// a port-0 address fixes the port the others use.
fn bind_all(config: &ServerConfig) -> Result<Vec<Vec<std::net::TcpListener>>, String> {
    let mut per_shard: Vec<Vec<std::net::TcpListener>> =
        (0..config.shards).map(|_| Vec::new()).collect();
    for &addr in &config.listen {
        let mut resolved = addr;
        for shard in per_shard.iter_mut() {
            let listener = bind(resolved)
                .map_err(|e| format!("RINGMX_LISTEN: cannot listen on {addr}: {e}"))?;
            resolved = listener
                .local_addr()
                .map_err(|e| format!("RINGMX_LISTEN: {addr}: {e}"))?;
            shard.push(listener);
        }
    }
    Ok(per_shard)
}

/// Builds a listening socket with every option set explicitly.
fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // Restart without waiting for TIME_WAIT to clear.
    socket.set_reuse_address(true)?;
    // One listener per shard on the same address; the kernel spreads connections.
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        // `[::]` must not also take IPv4: `0.0.0.0` is listed separately when wanted.
        socket.set_only_v6(true)?;
    }
    // Accepted connections inherit it: replies go out at once, with no setsockopt per
    // connection.
    socket.set_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// The running kernel's release (uname -r); `unknown` if uname fails.
fn kernel_release() -> String {
    // SAFETY: utsname is plain bytes, valid zeroed; uname(2) fills it, and its fields are
    // NUL-terminated within their arrays.
    unsafe {
        let mut name: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut name) != 0 {
            return "unknown".to_string();
        }
        std::ffi::CStr::from_ptr(name.release.as_ptr())
            .to_string_lossy()
            .into_owned()
    }
}

/// Pins the calling thread to one CPU (failure only costs locality, so it is logged).
fn pin_to_cpu(cpu: usize) {
    // SAFETY: `set` is a plain bit set on the stack, zeroed then filled with CPU_SET for a CPU
    // index the kernel reported as allowed; sched_setaffinity only reads it.
    let result = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if result != 0 {
        log_warn!(
            "cannot pin shard to CPU {cpu}: {}",
            io::Error::last_os_error()
        );
    }
}

/// What a shard gets beside its configuration: its metric counters and the JetStream probe.
struct ShardExtras {
    metrics: Option<Arc<ShardMetrics>>,
    jetstream: Option<Arc<jetstream::Probe>>,
}

/// Runs one shard: its runtime, its listeners' accept loops and its connections.
fn run_shard<D: Driver>(
    id: usize,
    nonce: u64,
    config: Arc<ServerConfig>,
    shared: Arc<Shared>,
    phase: watch::Receiver<Phase>,
    listeners: Vec<std::net::TcpListener>,
    extras: ShardExtras,
) -> io::Result<()> {
    let ShardExtras { metrics, jetstream } = extras;
    D::block_on(config.ring_entries, async move {
        let sink = match config.delivery {
            Delivery::Maildir => AnySink::Maildir(Maildir::<D>::open(
                &config.spool,
                shared.durability.clone(),
                &config.session.hostname,
                Arc::clone(&shared.spool_sync),
                metrics.clone(),
            )?),
            Delivery::Jetstream => {
                let probe = jetstream.ok_or_else(|| io::Error::other("no JetStream probe"))?;
                let sink = Jetstream::connect(&config.nats, &probe, id)
                    .await
                    .map_err(io::Error::other)?;
                AnySink::Jetstream(Box::new(sink))
            }
            Delivery::Discard => AnySink::Discard,
        };
        let tls = shared.tls.clone();
        let initial_phase = *phase.borrow();
        let shard = Rc::new(Shard {
            id,
            session_config: Arc::new(config.session.clone()),
            config,
            shared,
            sink,
            tls,
            local_phase: LocalPhase::new(initial_phase),
            phase,
            metrics,
            pool: RefCell::new(Vec::new()),
            large_in_use: Cell::new(0),
            ids: RefCell::new(IdGenerator::new(id, nonce)),
            active: Cell::new(0),
            idle: Notify::new(),
        });
        D::spawn(follow_phase(Rc::clone(&shard)));
        let mut accepting = Vec::new();
        for listener in listeners {
            let listener = D::listener(listener)?;
            let shard = Rc::clone(&shard);
            let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
            accepting.push(stopped_rx);
            D::spawn(async move {
                accept_loop(listener, shard).await;
                let _ = stopped_tx.send(());
            });
        }
        for stopped in accepting {
            let _ = stopped.await;
        }
        // Listeners are closed; wait for the connections (they obey the phase themselves).
        while shard.active.get() > 0 {
            let idle = shard.idle.notified();
            if shard.active.get() == 0 {
                break;
            }
            idle.await;
        }
        Ok(())
    })?
}

/// Accepts connections until shutdown begins, then shuts the listener down.
async fn accept_loop<D: Driver>(listener: D::Listener, shard: Rc<Shard<D>>) {
    let phase = &shard.local_phase;
    loop {
        if phase.get() != Phase::Running {
            D::shutdown_listener(&listener);
            return;
        }
        let accept = D::accept(&listener);
        tokio::pin!(accept);
        let accepted = tokio::select! {
            biased;
            accepted = &mut accept => accepted,
            _ = phase.after(Phase::Running) => {
                // Dropping the accept is not enough on io_uring: the socket stays open while
                // the accept is in the kernel, and a connection it takes then is never closed.
                // Shut the listener down, which ends the accept, and close what it returns.
                D::shutdown_listener(&listener);
                let _ = tokio::time::timeout(ACCEPT_DRAIN, accept).await;
                return;
            }
        };
        match accepted {
            // Accepted as shutdown began: dropping the stream closes it unanswered. The shared
            // phase decides, not the shard's copy: that copy is updated by a task of this
            // shard that may not have run yet when the accept completes in the same turn.
            Ok(_) if *shard.phase.borrow() != Phase::Running => {
                if let Some(metrics) = &shard.metrics {
                    metrics.connection(crate::metrics::Connection::RefusedShutdown);
                }
                continue;
            }
            Ok((stream, peer)) => {
                let shard = Rc::clone(&shard);
                shard.active.set(shard.active.get() + 1);
                // Boxed: a connection's future is several KiB, and the runtime moves a task's
                // future by value when it spawns it and each time the task changes stage; a
                // box makes each of those moves a pointer.
                D::spawn(Box::pin(async move {
                    conn::serve(stream, peer, &shard).await;
                    shard.active.set(shard.active.get() - 1);
                    if shard.active.get() == 0 {
                        shard.idle.notify_waiters();
                    }
                }));
            }
            Err(e) => {
                // EMFILE and friends: back off briefly rather than spin.
                log_warn!("shard {}: accept failed: {e}", shard.id);
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_connections_inherit_nodelay_from_the_listener() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        listener.set_nonblocking(false).unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(accepted.nodelay().unwrap());
    }

    fn config(vars: &[(&str, &str)]) -> ServerConfig {
        let vars = vars.iter().map(|(n, v)| (n.to_string(), v.to_string()));
        crate::config::from_vars(vars, vec![0], "mx.example").expect("config")
    }

    fn shared() -> Shared {
        Shared {
            connections: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            tls: None,
            spool_sync: Arc::default(),
            durability: maildir::Durability::Fsync,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_clients_count_per_prefix() {
        let config = config(&[("RINGMX_MAX_CONNECTIONS_PER_IP", "2")]);
        let shared = shared();
        let a = shared.admit(&config, ip("2001:db8::1")).ok().unwrap();
        let b = shared.admit(&config, ip("2001:db8::ffff:2")).ok().unwrap();
        // A third address of the same /64 is the same client.
        assert!(matches!(
            shared.admit(&config, ip("2001:db8::3")),
            Err(Refused::TooManyFromAddress)
        ));
        // The next /64 is another client.
        let c = shared.admit(&config, ip("2001:db8:0:1::1")).ok().unwrap();
        drop((a, b, c));
        assert_eq!(shared.per_ip.lock().unwrap().len(), 0);

        // With /128, every address is its own client.
        let config = self::config(&[
            ("RINGMX_MAX_CONNECTIONS_PER_IP", "1"),
            ("RINGMX_IPV6_PREFIX", "128"),
        ]);
        let a = shared.admit(&config, ip("2001:db8::1")).ok().unwrap();
        let b = shared.admit(&config, ip("2001:db8::2")).ok().unwrap();
        drop((a, b));
    }

    #[test]
    fn local_phase_wakes_its_waiters_and_reuses_their_slots() {
        struct Count(AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        let local = LocalPhase::new(Phase::Running);
        let mut a = Box::pin(local.after(Phase::Running));
        let mut b = Box::pin(local.after(Phase::Running));
        assert!(a.as_mut().poll(&mut cx).is_pending());
        assert!(b.as_mut().poll(&mut cx).is_pending());
        assert!(a.as_mut().poll(&mut cx).is_pending());
        drop(b);
        let mut c = Box::pin(local.after(Phase::Running));
        assert!(c.as_mut().poll(&mut cx).is_pending());
        assert_eq!(
            local.waiters.borrow().slots.len(),
            2,
            "a freed slot is reused"
        );
        local.set(Phase::Draining);
        assert_eq!(count.0.load(Ordering::Relaxed), 2, "each waiter woken once");
        assert_eq!(a.as_mut().poll(&mut cx), Poll::Ready(Phase::Draining));
        assert_eq!(c.as_mut().poll(&mut cx), Poll::Ready(Phase::Draining));
        let mut d = Box::pin(local.after(Phase::Draining));
        assert!(d.as_mut().poll(&mut cx).is_pending());
        local.set(Phase::Stopping);
        assert_eq!(d.as_mut().poll(&mut cx), Poll::Ready(Phase::Stopping));
        drop((a, c, d));
        assert_eq!(local.waiters.borrow().free.len(), 3);
    }

    #[test]
    fn ipv4_mapped_clients_count_as_ipv4() {
        let config = config(&[("RINGMX_MAX_CONNECTIONS_PER_IP", "1")]);
        let shared = shared();
        let _a = shared.admit(&config, ip("192.0.2.7")).ok().unwrap();
        assert!(matches!(
            shared.admit(&config, ip("::ffff:192.0.2.7")),
            Err(Refused::TooManyFromAddress)
        ));
        let _b = shared.admit(&config, ip("192.0.2.8")).ok().unwrap();
    }
}
