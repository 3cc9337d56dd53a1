//! Spool faults never lose or half-store a message (SPEC §4.2 `451 4.3.0`, §4.4).
//!
//! An in-process server runs on the fault-injecting driver (`Faulty<Epoll>`, and
//! `Faulty<Uring>` where io_uring works), with `RINGMX_FSYNC=1` and `syncfs`, whose create,
//! write, fsync (or write-back error check), rename, directory fsync and syncfs
//! fail with ENOSPC or EIO — at random from a seed, or at the n-th call of each operation.
//! Several sessions, pipelined and lockstep, send messages with unique bodies. For every
//! message the reply is either `250 ... queued as ID` with the file `ID.host` complete and
//! byte-exact in `new/`, or `451 4.3.0` with nothing of it in `new/`; `tmp/` is empty once the
//! sessions end, and a clean message afterwards is accepted. A real full file system (a tiny
//! tmpfs, when root) gets the same checks against the real binary, and takes mail again once
//! space is freed. `HARDENING_SEEDS=n` runs n seeds per backend (default 10).

mod common;

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use ringmx::driver::epoll::Epoll;
use ringmx::driver::faulty::{self, Faulty, FileOp, Plan};
use ringmx::driver::uring::{self, Uring};
use ringmx::server::Running;

const SENDER: &str = "sender@origin.example";
const RCPT: &str = "rcpt@rcpt.example";
const RCPTS: &[&str] = &[RCPT];
const OPS: [FileOp; faulty::OPS] = [
    FileOp::Create,
    FileOp::Write,
    FileOp::Sync,
    FileOp::Rename,
    FileOp::SyncDir,
    FileOp::Exists,
    FileOp::SyncFs,
];

/// `set_plan` is process-global: the in-process cases take turns.
static PLAN_LOCK: Mutex<()> = Mutex::new(());

/// The trace headers every message from `Client::ehlo` on 127.0.0.1 carries.
fn template() -> Expected<'static> {
    expected(SENDER, RCPTS)
}

#[derive(Clone, Copy, Debug)]
enum Backend {
    Epoll,
    Uring,
}

/// How messages are made durable: `RINGMX_FSYNC`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sync {
    /// `1`: a fsync per file and shared fsyncs of `new/`.
    Fsync,
    /// `syncfs`: shared syncfs calls.
    SyncFs,
}

/// Starts an in-process server on the faulty driver over `spool`.
fn start(backend: Backend, sync: Sync, spool: &Path, shards: usize) -> Running {
    ringmx::log::set_level(ringmx::log::Level::Warn);
    let vars: Vec<(String, String)> = vec![
        ("RINGMX_LISTEN".into(), "127.0.0.1:0".into()),
        ("RINGMX_SPOOL".into(), spool.display().to_string()),
        ("RINGMX_SHARDS".into(), shards.to_string()),
        ("RINGMX_PIN".into(), "0".into()),
        ("RINGMX_HOSTNAME".into(), HOSTNAME.into()),
        (
            "RINGMX_FSYNC".into(),
            match sync {
                Sync::Fsync => "1",
                Sync::SyncFs => "syncfs",
            }
            .into(),
        ),
    ];
    let config = ringmx::config::from_vars(vars, vec![0], "test.example").expect("config");
    let started = match backend {
        Backend::Epoll => ringmx::server::start::<Faulty<Epoll>>(config),
        Backend::Uring => ringmx::server::start::<Faulty<Uring>>(config),
    };
    started.expect("in-process server starts")
}

/// Whether io_uring can be set up here; prints a skip line when not.
fn uring_works(test: &str) -> bool {
    match uring::probe(256) {
        Ok(()) => true,
        Err(e) => {
            skip_or_fail(test, &format!("io_uring cannot be set up: {e}"));
            false
        }
    }
}

/// What the server answered to the end of one message's data.
#[derive(Debug)]
enum Verdict {
    Queued(String),
    Refused,
}

/// Classifies an end-of-data reply; anything but 250-queued or 451 4.3.0 fails the test.
fn verdict(reply: &str, what: &str) -> Verdict {
    if reply.starts_with("250 2.0.0 ") {
        Verdict::Queued(queue_id(reply).unwrap_or_else(|| panic!("{what}: no ID in {reply:?}")))
    } else if reply.starts_with("451 4.3.0") {
        Verdict::Refused
    } else {
        panic!("{what}: end of data answered {reply:?}, want 250 or 451 4.3.0")
    }
}

/// Sends one message in lockstep and returns the verdict on it.
fn lockstep_message(client: &mut Client, body: &[u8], what: &str) -> Verdict {
    client.send(format!("MAIL FROM:<{SENDER}>\r\n").as_bytes());
    client.expect("250 2.1.0");
    client.send(format!("RCPT TO:<{RCPT}>\r\n").as_bytes());
    client.expect("250 2.1.5");
    client.send(b"DATA\r\n");
    client.expect("354 ");
    client.send(&dot_stuffed(body));
    let reply = client.read_reply();
    verdict(&reply, what)
}

/// One session's messages: every body sent, with the verdict on each.
type Results = Vec<(Vec<u8>, Verdict)>;

/// Sends `bodies` over one session, lockstep or all in one pipelined write, then QUIT.
fn session(addr: SocketAddr, bodies: Vec<Vec<u8>>, pipelined: bool, what: &str) -> Results {
    let mut client = Client::ehlo(addr);
    let mut results = Vec::with_capacity(bodies.len());
    if pipelined {
        let mut script = Vec::new();
        for body in &bodies {
            script.extend_from_slice(&transaction(SENDER, RCPTS, body));
        }
        script.extend_from_slice(b"QUIT\r\n");
        let mut writer = client.stream().try_clone().expect("clone stream");
        // Another thread writes, so that our unread replies can never stall the server.
        let sent = std::thread::spawn(move || writer.write_all(&script));
        for (n, body) in bodies.into_iter().enumerate() {
            client.expect("250 2.1.0");
            client.expect("250 2.1.5");
            client.expect("354 ");
            let reply = client.read_reply();
            results.push((body, verdict(&reply, &format!("{what} pipelined #{n}"))));
        }
        sent.join().expect("writer").expect("pipelined write");
    } else {
        for (n, body) in bodies.into_iter().enumerate() {
            let v = lockstep_message(&mut client, &body, &format!("{what} lockstep #{n}"));
            results.push((body, v));
        }
        client.send(b"QUIT\r\n");
    }
    client.expect("221 2.0.0");
    assert_eq!(client.read_until_closed(), "", "{what}: bytes after 221");
    results
}

/// Checks the invariant over everything sent: the acknowledged messages are exactly the files
/// in `new/`, byte for byte; refused ones left nothing; `tmp/` is empty. Returns (acked, refused).
fn check_spool(spool: &Path, results: &[(Vec<u8>, Verdict)], what: &str) -> (usize, usize) {
    let mut acked: HashMap<String, Vec<u8>> = HashMap::new();
    let mut refused = 0;
    for (body, v) in results {
        match v {
            Verdict::Queued(id) => {
                assert!(
                    acked.insert(id.clone(), body.clone()).is_none(),
                    "{what}: ID {id} acknowledged twice"
                );
            }
            Verdict::Refused => refused += 1,
        }
    }
    let files = read_files(&spool.join("new"));
    check_spool_matches(&files, &acked, &template());
    let tmp = read_files(&spool.join("tmp"));
    assert!(
        tmp.is_empty(),
        "{what}: files left in tmp/: {:?}",
        tmp.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    (acked.len(), refused)
}

/// Runs sessions against a server with `plan` installed, then a clean message with no faults;
/// checks the invariant. Returns (acknowledged, refused, injected failures).
fn run_case(
    backend: Backend,
    sync: Sync,
    plan: Plan,
    shards: usize,
    sessions: usize,
    per_session: usize,
    what: &str,
) -> (usize, usize, u64) {
    let spool = tempfile::Builder::new()
        .prefix("ringmx-faults-")
        .tempdir()
        .expect("spool");
    faulty::set_plan(Plan::default());
    let running = start(backend, sync, spool.path(), shards);
    let addr = running.addrs[0];
    faulty::set_plan(plan.clone());
    let mut results: Results = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..sessions)
            .map(|s| {
                let bodies: Vec<Vec<u8>> = (0..per_session)
                    .map(|n| sample_body(&format!("{what}/s{s}"), n, (n * 3779 + s * 911) % 20_000))
                    .collect();
                let what = format!("{what} session {s}");
                scope.spawn(move || session(addr, bodies, s % 2 == 0, &what))
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("session thread"))
            .collect()
    });
    let injected: u64 = faulty::counts().failed.iter().sum();
    // Sessions are over: what they left in tmp/ must be gone (bounded wait: aborts run on the
    // server's tasks after the close).
    let tmp = spool.path().join("tmp");
    assert!(
        poll(Duration::from_secs(5), || read_files(&tmp).is_empty()),
        "{what}: tmp/ not emptied after the sessions ended: {:?}",
        read_files(&tmp).iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    // The server keeps serving: a clean message is stored.
    faulty::set_plan(Plan::default());
    let mut client = Client::ehlo(addr);
    let body = sample_body(&format!("{what}/clean"), 0, 100);
    let v = lockstep_message(&mut client, &body, &format!("{what} clean"));
    assert!(
        matches!(v, Verdict::Queued(_)),
        "{what}: clean message after faults: {v:?}"
    );
    results.push((body, v));
    client.send(b"QUIT\r\n");
    client.expect("221");
    running.stop();
    assert!(running.join(), "{what}: a shard failed");
    let (acked, refused) = check_spool(spool.path(), &results, what);
    (acked, refused, injected)
}

/// A small deterministic generator (splitmix64) for the per-seed plans.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The random plan for `seed`: each operation fails with one of a few rates, at least one > 0.
fn plan_for(seed: u64) -> (Plan, usize) {
    let mut s = seed;
    let rates = [0u16, 0, 10, 50, 150, 400];
    let mut per_mille = [0u16; faulty::OPS];
    for rate in per_mille.iter_mut() {
        *rate = rates[(splitmix(&mut s) % rates.len() as u64) as usize];
    }
    if per_mille.iter().all(|&r| r == 0) {
        per_mille[(splitmix(&mut s) % faulty::OPS as u64) as usize] = 100;
    }
    let plan = Plan {
        seed: splitmix(&mut s) | 1,
        per_mille,
        nth: None,
        eio: seed % 2 == 1,
    };
    (plan, 1 + (seed % 2) as usize)
}

/// The number of seeds per backend: `HARDENING_SEEDS`, default 10.
fn seeds() -> u64 {
    std::env::var("HARDENING_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

/// Random faults over many seeds: the invariant holds for every message of every seed.
fn random_faults(backend: Backend, sync: Sync) {
    let _guard = PLAN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let (mut acked, mut refused, mut injected) = (0, 0, 0);
    let n = seeds();
    for seed in 1..=n {
        let (plan, shards) = plan_for(seed);
        let what = format!("{backend:?} {sync:?} seed {seed} {plan:?} shards {shards}");
        let (a, r, i) = run_case(backend, sync, plan, shards, 4, 6, &what);
        acked += a;
        refused += r;
        injected += i;
    }
    println!(
        "HARDENING faults {backend:?} {sync:?}: {n} seeds, {acked} acknowledged, {refused} refused 451, \
         {injected} injected failures, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // The test proves something only if both outcomes happened.
    assert!(injected > 0, "no fault was injected over {n} seeds");
    assert!(refused > 0, "no 451 over {n} seeds");
    assert!(acked > n as usize, "hardly any message acknowledged");
}

#[test]
fn random_faults_epoll() {
    random_faults(Backend::Epoll, Sync::Fsync);
}

#[test]
fn random_faults_uring() {
    if uring_works("random_faults_uring") {
        random_faults(Backend::Uring, Sync::Fsync);
    }
}

#[test]
fn random_faults_syncfs_epoll() {
    if syncfs_works("random_faults_syncfs_epoll") {
        random_faults(Backend::Epoll, Sync::SyncFs);
    }
}

#[test]
fn random_faults_syncfs_uring() {
    if uring_works("random_faults_syncfs_uring") && syncfs_works("random_faults_syncfs_uring") {
        random_faults(Backend::Uring, Sync::SyncFs);
    }
}

/// The n-th call of each operation fails (ENOSPC and EIO): exactly that message gets 451, the
/// others and a later clean one are stored.
fn nth_faults(backend: Backend, sync: Sync) {
    let _guard = PLAN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // The operations the mode makes: the directory fsync or the syncfs.
    let unused = match sync {
        Sync::Fsync => FileOp::SyncFs,
        Sync::SyncFs => FileOp::SyncDir,
    };
    for op in OPS.into_iter().filter(|&op| op != unused) {
        for n in 1..=3u64 {
            let plan = Plan {
                seed: 1,
                per_mille: [0; faulty::OPS],
                nth: Some((op, n)),
                eio: n % 2 == 0,
            };
            let what = format!("{backend:?} {sync:?} {op:?} call {n}");
            // One lockstep session: no group commit merges two messages' fate.
            let spool = tempfile::Builder::new()
                .prefix("ringmx-faults-nth-")
                .tempdir()
                .expect("spool");
            faulty::set_plan(Plan::default());
            let running = start(backend, sync, spool.path(), 1);
            let addr = running.addrs[0];
            faulty::set_plan(plan);
            let bodies: Vec<Vec<u8>> = (0..4).map(|i| sample_body(&what, i, i * 5000)).collect();
            let mut results = session(addr, bodies, false, &what);
            let counts = faulty::counts();
            assert_eq!(counts.failed[op as usize], 1, "{what}: {counts:?}");
            faulty::set_plan(Plan::default());
            let mut client = Client::ehlo(addr);
            let body = sample_body(&format!("{what}/clean"), 9, 10);
            let v = lockstep_message(&mut client, &body, &what);
            assert!(matches!(v, Verdict::Queued(_)), "{what}: clean: {v:?}");
            results.push((body, v));
            drop(client);
            running.stop();
            assert!(running.join(), "{what}: a shard failed");
            let (acked, refused) = check_spool(spool.path(), &results, &what);
            if op == FileOp::Exists {
                // A taken name in new/ is never replaced: the message moves under a fresh
                // name and is acknowledged.
                assert_eq!((acked, refused), (5, 0), "{what}: acknowledged, refused");
                let renamed = read_files(&spool.path().join("new"))
                    .iter()
                    .filter(|(name, _)| name.contains("-1."))
                    .count();
                assert_eq!(renamed, 1, "{what}: files under a fresh name");
            } else {
                assert_eq!((acked, refused), (4, 1), "{what}: acknowledged, refused");
            }
        }
    }
}

#[test]
fn nth_faults_epoll() {
    nth_faults(Backend::Epoll, Sync::Fsync);
}

#[test]
fn nth_faults_uring() {
    if uring_works("nth_faults_uring") {
        nth_faults(Backend::Uring, Sync::Fsync);
    }
}

#[test]
fn nth_faults_syncfs_epoll() {
    if syncfs_works("nth_faults_syncfs_epoll") {
        nth_faults(Backend::Epoll, Sync::SyncFs);
    }
}

#[test]
fn nth_faults_syncfs_uring() {
    if uring_works("nth_faults_syncfs_uring") && syncfs_works("nth_faults_syncfs_uring") {
        nth_faults(Backend::Uring, Sync::SyncFs);
    }
}

/// The steps of each message, in order, in a lockstep session with no faults: with
/// `RINGMX_FSYNC=1` the file is fsync'd before its rename, and `new/` after; with `syncfs` a
/// syncfs runs after the file's last write and before its rename (whose write-back error
/// check comes with the rename), and another after the rename.
fn steps_in_order(backend: Backend, sync: Sync) {
    let _guard = PLAN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let what = format!("{backend:?} {sync:?} steps");
    let spool = tempfile::Builder::new()
        .prefix("ringmx-faults-steps-")
        .tempdir()
        .expect("spool");
    faulty::set_plan(Plan::default());
    let running = start(backend, sync, spool.path(), 1);
    let addr = running.addrs[0];
    faulty::set_plan(Plan::default());
    let bodies: Vec<Vec<u8>> = (0..3).map(|i| sample_body(&what, i, 500)).collect();
    let results = session(addr, bodies, false, &what);
    let mut log: Vec<String> = faulty::log()
        .iter()
        .map(|call| match call.sync {
            Some(sync) => format!("{:?}({sync:?})", call.op),
            None => format!("{:?}", call.op),
        })
        .collect();
    // A message arrives in one or more reads, each a write.
    log.dedup_by(|a, b| a == b && a == "Write");
    running.stop();
    assert!(running.join(), "{what}: a shard failed");
    assert_eq!(check_spool(spool.path(), &results, &what), (3, 0));
    // persist makes the file durable (Sync: the fsync, or the write-back error check), then
    // moves it (Rename, Exists).
    let one: &[&str] = match sync {
        Sync::Fsync => &[
            "Create",
            "Write",
            "Sync(Fsync)",
            "Rename",
            "Exists",
            "SyncDir",
        ],
        Sync::SyncFs => &[
            "Create",
            "Write",
            "SyncFs",
            "Sync(Check)",
            "Rename",
            "Exists",
            "SyncFs",
        ],
    };
    assert_eq!(log, one.repeat(3), "{what}");
}

#[test]
fn steps_in_order_epoll() {
    steps_in_order(Backend::Epoll, Sync::Fsync);
}

#[test]
fn steps_in_order_uring() {
    if uring_works("steps_in_order_uring") {
        steps_in_order(Backend::Uring, Sync::Fsync);
    }
}

#[test]
fn steps_in_order_syncfs_epoll() {
    if syncfs_works("steps_in_order_syncfs_epoll") {
        steps_in_order(Backend::Epoll, Sync::SyncFs);
    }
}

#[test]
fn steps_in_order_syncfs_uring() {
    if uring_works("steps_in_order_syncfs_uring") && syncfs_works("steps_in_order_syncfs_uring") {
        steps_in_order(Backend::Uring, Sync::SyncFs);
    }
}

/// A tmpfs mounted on a fresh directory, unmounted (and the directory removed) when dropped.
struct TinyTmpfs {
    dir: PathBuf,
}

impl TinyTmpfs {
    /// Mounts a tmpfs of `size`; `None` when not root or the mount fails.
    fn mount(size: &str) -> Option<TinyTmpfs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let dir = std::env::temp_dir().join(format!(
            "ringmx-full-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&dir).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = std::fs::remove_dir(&dir);
            return None;
        }
        Some(TinyTmpfs { dir })
    }
}

impl Drop for TinyTmpfs {
    fn drop(&mut self) {
        let unmounted = std::process::Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.dir)
                .status();
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A real full file system: the real binary on a 256 KiB tmpfs answers 451 once it is full,
/// keeps the invariant, and accepts mail again after files are deleted.
#[test]
fn full_filesystem_then_space_freed() {
    let Some(tmpfs) = TinyTmpfs::mount("256k") else {
        skip_or_fail(
            "full_filesystem_then_space_freed",
            "not root or cannot mount a tmpfs",
        );
        return;
    };
    let spool = tmpfs.dir.display().to_string();
    // Declared after the mount, so it is dropped (killed) before the unmount.
    let server = Server::start(&[("RINGMX_SPOOL", &spool), ("RINGMX_SHARDS", "1")]);
    let mut results: Results = Vec::new();
    let mut client = Client::ehlo(server.addr());
    let mut refused = 0;
    // Bounded: 200 messages of ~9 KB are far more than 256 KiB.
    for n in 0..200 {
        let body = sample_body("full", n, 8000);
        let v = lockstep_message(&mut client, &body, &format!("full #{n}"));
        if matches!(v, Verdict::Refused) {
            refused += 1;
        }
        results.push((body, v));
        if refused >= 3 {
            break;
        }
    }
    assert!(refused >= 3, "the 256 KiB spool never filled up");
    assert!(
        poll(Duration::from_secs(5), || server.tmp_files().is_empty()),
        "tmp/ not empty after 451s"
    );
    let (acked, _) = check_spool(server.spool(), &results, "full");
    assert!(acked > 0, "nothing fitted in the spool");
    // Free space: delete the first half of the stored files (a delivery agent would).
    let files = server.new_files();
    let mut deleted = Vec::new();
    for (name, _) in files.iter().take(files.len().div_ceil(2)) {
        std::fs::remove_file(server.spool().join("new").join(name)).expect("delete");
        deleted.push(name.trim_end_matches(&format!(".{HOSTNAME}")).to_string());
    }
    results.retain(|(_, v)| !matches!(v, Verdict::Queued(id) if deleted.contains(id)));
    for n in 0..3 {
        let body = sample_body("after-free", n, 8000);
        let v = lockstep_message(&mut client, &body, &format!("after free #{n}"));
        assert!(
            matches!(v, Verdict::Queued(_)),
            "after freeing space, message {n}: {v:?}"
        );
        results.push((body, v));
    }
    client.send(b"QUIT\r\n");
    client.expect("221");
    check_spool(server.spool(), &results, "after free");
    drop(server);
    drop(tmpfs);
}

/// Every name in `new/` is taken (another process's files, as far as the spool can tell): the
/// first move and every fresh name's `rename_noreplace` answer EEXIST, the message gets 451
/// after its attempts, nothing is left in `tmp/` or `new/`, and no file is ever replaced.
fn names_always_taken(backend: Backend) {
    let _guard = PLAN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let what = format!("{backend:?} names always taken");
    let spool = tempfile::Builder::new()
        .prefix("ringmx-faults-taken-")
        .tempdir()
        .expect("spool");
    faulty::set_plan(Plan::default());
    let running = start(backend, Sync::Fsync, spool.path(), 1);
    let addr = running.addrs[0];
    let mut per_mille = [0u16; faulty::OPS];
    per_mille[FileOp::Exists as usize] = 1000;
    faulty::set_plan(Plan {
        seed: 7,
        per_mille,
        nth: None,
        eio: false,
    });
    let bodies: Vec<Vec<u8>> = (0..3).map(|i| sample_body(&what, i, 100)).collect();
    let results = session(addr, bodies, false, &what);
    let counts = faulty::counts();
    faulty::set_plan(Plan::default());
    running.stop();
    assert!(running.join(), "{what}: a shard failed");
    // Each message: one persist and seven fresh names, all taken.
    assert_eq!(
        counts.failed[FileOp::Exists as usize],
        3 * 8,
        "{what}: {counts:?}"
    );
    let (acked, refused) = check_spool(spool.path(), &results, &what);
    assert_eq!((acked, refused), (0, 3), "{what}: acknowledged, refused");
}

#[test]
fn names_always_taken_epoll() {
    names_always_taken(Backend::Epoll);
}

#[test]
fn names_always_taken_uring() {
    if uring_works("names_always_taken_uring") {
        names_always_taken(Backend::Uring);
    }
}
