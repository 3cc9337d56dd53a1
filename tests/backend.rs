//! Backend choice when io_uring is refused: the server is started under a seccomp filter that
//! makes io_uring_setup fail with EPERM, as a container runtime's default profile does.
//! `RINGMX_BACKEND=auto` must then serve on epoll, name it in the first log line and say why in
//! one warning; `RINGMX_BACKEND=uring` must fail start-up with exit status 1 and that reason.

#![cfg(target_arch = "x86_64")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Installs a seccomp filter in the calling process: io_uring_setup fails with EPERM.
fn refuse_io_uring() -> std::io::Result<()> {
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JMP_JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const RET_ERRNO: u32 = 0x0005_0000;
    const RET_ALLOW: u32 = 0x7fff_0000;
    let filter = [
        // seccomp_data.nr is at offset 0.
        libc::sock_filter {
            code: LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: JMP_JEQ_K,
            jt: 0,
            jf: 1,
            k: libc::SYS_io_uring_setup as u32,
        },
        libc::sock_filter {
            code: RET_K,
            jt: 0,
            jf: 0,
            k: RET_ERRNO | libc::EPERM as u32,
        },
        libc::sock_filter {
            code: RET_K,
            jt: 0,
            jf: 0,
            k: RET_ALLOW,
        },
    ];
    let program = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: prctl with valid arguments; `program` points to `filter`, both alive for the call.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &program) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Starts ringmx under the filter with `backend`; returns the child and its stderr lines.
fn spawn(backend: &str, spool: &std::path::Path) -> (Child, std::sync::mpsc::Receiver<String>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringmx"));
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("RINGMX_")) {
        command.env_remove(name);
    }
    command
        .env("RINGMX_BACKEND", backend)
        .env("RINGMX_LISTEN", "127.0.0.1:0")
        .env("RINGMX_SHARDS", "1")
        .env("RINGMX_SPOOL", spool)
        .env("RINGMX_HOSTNAME", "mx.ringmx.test")
        .stderr(Stdio::piped())
        .stdout(Stdio::null());
    // SAFETY: the closure only calls prctl (async-signal-safe) between fork and exec.
    unsafe {
        command.pre_exec(refuse_io_uring);
    }
    let mut child = command.spawn().expect("spawn ringmx");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Collects stderr lines until `done` says so or 10 s pass.
fn lines_until(
    rx: &std::sync::mpsc::Receiver<String>,
    done: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut lines = Vec::new();
    while !done(&lines) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => break,
        }
    }
    lines
}

#[test]
fn auto_falls_back_to_epoll_with_one_warning() {
    let spool = tempfile::tempdir().unwrap();
    let (mut child, rx) = spawn("auto", spool.path());
    let lines = lines_until(&rx, |l| l.iter().any(|x| x.contains("running on epoll")));
    let _ = child.kill();
    let _ = child.wait();
    assert!(lines.len() >= 2, "log: {lines:#?}");
    assert!(
        lines[0].contains("ringmx starting: backend epoll"),
        "first line: {}",
        lines[0]
    );
    let warnings: Vec<_> = lines.iter().filter(|l| l.contains(" WARN ")).collect();
    assert_eq!(warnings.len(), 1, "log: {lines:#?}");
    assert!(
        warnings[0].contains("io_uring cannot be set up"),
        "{}",
        warnings[0]
    );
    assert!(
        warnings[0].contains("seccomp"),
        "the reason names the likely cause: {}",
        warnings[0]
    );
}

#[test]
fn auto_fallback_serves_mail() {
    let spool = tempfile::tempdir().unwrap();
    let (mut child, rx) = spawn("auto", spool.path());
    let lines = lines_until(&rx, |l| l.iter().any(|x| x.contains("listening on")));
    let addr = lines
        .iter()
        .find_map(|l| l.split("listening on ").nth(1))
        .and_then(|rest| rest.split([',', ' ']).next())
        .unwrap_or_else(|| panic!("no address in {lines:#?}"))
        .to_string();
    let mut stream = TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"EHLO t\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n")
        .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 1024];
    while !seen.contains("354 ") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    stream
        .write_all(b"Subject: t\r\n\r\nhello\r\n.\r\nQUIT\r\n")
        .unwrap();
    while !seen.contains("221 ") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen.contains("250 2.0.0 Ok: queued as "), "{seen}");
    assert_eq!(
        std::fs::read_dir(spool.path().join("new")).unwrap().count(),
        1
    );
}

#[test]
fn uring_required_fails_start_up() {
    let spool = tempfile::tempdir().unwrap();
    let (mut child, rx) = spawn("uring", spool.path());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "ringmx did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    let lines = lines_until(&rx, |_| false);
    assert_eq!(status.code(), Some(1), "log: {lines:#?}");
    assert_eq!(lines.len(), 1, "one line: {lines:#?}");
    assert!(
        lines[0].contains("RINGMX_BACKEND=uring: io_uring cannot be set up"),
        "{}",
        lines[0]
    );
}
